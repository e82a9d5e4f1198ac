//! The `gossip` target: gossip messages from a hostile peer, applied by the
//! replica under test with `sync::apply_gossip` (replica, limits and oracle:
//! see [`crate::harness`]).
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | mode: even = raw, odd = structured |
//! | 1 | [`Setup`] of the replica |
//! | 2.. | raw: one gossip message as it comes off the network; structured: up to [`MAX_MESSAGES`](crate::harness::MAX_MESSAGES) [`MessageSpec`](crate::harness::MessageSpec)s, whose operations the harness signs (and damages as told) before encoding each as a gossip message |
//!
//! Checks, after every message: nothing panics, and the oracle of
//! [`crate::harness`] holds (a message refused as a whole or without a valid
//! operation changes neither version vector, state nor buffer; a mixed one
//! does exactly what its operations before the first one no valid head
//! covers do; valid operations are
//! not refused as a peer fault; the version vector grows by the number of
//! operations reported applied). At the end, if anything was applied, the
//! replica reopens to the same version vector and state.

use serde_bytes::ByteBuf;
use walrus::sync::{self, Gossip};

use crate::harness::{
    check_reopen, judge_page, limits, observe, options, parse_messages, replica, Chains, Setup, Twin, Verdict, DOC,
    LOCAL_SEED,
};
use crate::Bytes;

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let mut input = Bytes::new(data);
    let structured = input.u8() & 1 == 1;
    let setup = Setup::parse(input.u8());
    let body = input.rest();
    let limits = limits();
    // Each message with what the oracle says of it: for structured ones
    // known by construction, for raw ones judged by decoding and verifying.
    let messages: Vec<(Vec<u8>, Verdict)> = if structured {
        let mut chains = Chains::default();
        parse_messages(body)
            .iter()
            .map(|m| {
                let (page, verdict) = m.build(&mut chains, limits.max_gossip);
                let msg = sync::encode(&Gossip { doc: m.doc().to_string(), page: ByteBuf::from(page) });
                // Else the verdict would be wrong: the message is refused as too large.
                assert!(msg.len() <= limits.max_gossip, "a structured message exceeds the gossip limit");
                (msg, verdict)
            })
            .collect()
    } else {
        // A message that does not decode never reaches a replica (decoding
        // is all there is to check): skip setting one up.
        let Ok(msg) = sync::decode::<Gossip>(body, limits.max_gossip, "gossip") else { return };
        vec![(body.to_vec(), judge_page(&msg.doc, &msg.page, limits.max_gossip))]
    };
    let tmp = crate::temp_dir();
    let mut r = replica(&tmp.path().join("replica"), setup);
    let mut twin = Twin::new(tmp.path().join("twin"), setup);
    let initial = observe(&r);
    for (msg, verdict) in messages {
        let before = observe(&r);
        let result = sync::apply_gossip(&mut r, DOC, &msg, &limits);
        twin.check(&r, &before, verdict, &result);
    }
    let end = observe(&r);
    if end.clock != initial.clock || end.state != initial.state {
        check_reopen(r, LOCAL_SEED, options());
    }
}
