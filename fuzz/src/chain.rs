//! The `chain` target: a valid chain of signed [`KvDoc`] operations built
//! from the input, some of its signatures stripped (the last kept, so
//! every operation is covered by a later head), sent as one gossip page
//! with one input-chosen bit flipped, to a fresh replica
//! (`sync::apply_gossip`).
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | signer (modulo 3: one of the peers' keys) |
//! | 1 | bits 0-2: operations, 1 to 8; bit 3: flip no bit |
//! | 2 | signatures to strip: bit `i` strips operation `i`'s (never the last's) |
//! | 3, 4 | the bit to flip (u16 LE, modulo the page's bits) |
//! | 5.. | two bytes per operation: shape and seen bytes of an [`OpSpec`](crate::harness::OpSpec) (bit 1 of the shape, a forged put, is cleared) |
//!
//! Checks:
//! - the unflipped page is applied in full: every operation, the state of
//!   all of them;
//! - a flipped page that decodes to exactly the same operations is applied
//!   in full too;
//! - any other flipped page is refused or applies only what the author
//!   wrote: the replica ends holding the author's first `k` operations
//!   (its version vector names nobody else, and its state is exactly
//!   theirs), for some `k`, and no more buffered than the rest;
//! - nothing panics.

use crdts::CmRDT;
use serde_bytes::ByteBuf;
use walrus::internals;
use walrus::replica::{ChainHash, Document, KvDoc, KvOp, OpEnvelope};
use walrus::sync::{self, Gossip};

use crate::harness::{actor, from_template, key, kv_op, limits, observe, open_as, options, DOC, LOCAL_SEED};
use crate::Bytes;

/// Most operations in a chain.
pub const MAX_OPS: usize = 8;

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let mut input = Bytes::new(data);
    let signer = input.u8() % 3;
    let b = input.u8();
    let n = usize::from(b & 7) + 1;
    let no_flip = b & 8 != 0;
    let strip = input.u8();
    let bit = usize::from(input.u16());
    let mut envs: Vec<OpEnvelope<KvOp>> = Vec::with_capacity(n);
    let mut prev = ChainHash::ZERO;
    for i in 0..n {
        let (shape, seen) = (input.u8() & !2, input.u8());
        let seq = i as u64 + 1;
        let op = kv_op(shape, seen, actor(signer), actor(signer + 1), seq);
        let env = OpEnvelope::signed::<KvDoc>(key(signer), DOC, seq, prev, op).expect("signing an operation");
        prev = env.hash();
        let env = if i + 1 < n && strip >> i & 1 == 1 { env.with_signature(None) } else { env };
        envs.push(env);
    }
    let page = internals::page_of(&envs);
    let mut flipped = page.clone();
    if !no_flip {
        let at = bit % (flipped.len() * 8);
        flipped[at / 8] ^= 1 << (at % 8);
    }
    let limits = limits();
    let same =
        internals::decode_page::<KvDoc>(&flipped, limits.max_gossip, limits.max_op, DOC).is_ok_and(|got| got == envs);
    let msg = sync::encode(&Gossip { doc: DOC.to_string(), page: ByteBuf::from(flipped) });

    let tmp = crate::temp_dir();
    let dir = tmp.path().join("replica");
    from_template(&dir, "empty", |d| open_as(d, LOCAL_SEED, options()).close().expect("closing a replica"));
    let mut r = open_as(&dir, LOCAL_SEED, options());
    let result = sync::apply_gossip(&mut r, DOC, &msg, &limits);
    let after = observe(&r);
    let author = actor(signer);
    let state_of = |k: usize| {
        let mut doc = KvDoc::default();
        for env in &envs[..k] {
            doc.apply(env.op().clone());
        }
        doc
    };
    if no_flip || same {
        let report = match result {
            Ok(report) => report,
            Err(e) => panic!("a valid chain was refused: {e}"),
        };
        assert_eq!(report.applied, n, "a valid chain was not applied in full: {report:?}");
        assert_eq!(after.clock.get(&author), n as u64, "the version vector after a valid chain");
        assert!(after.state.canonical() == state_of(n).canonical(), "the state after a valid chain");
        return;
    }
    let k = after.clock.get(&author);
    assert!(k <= n as u64, "the replica holds {k} operations of an author who wrote {n}");
    assert!(after.clock.iter().all(|(a, _)| *a == author), "a damaged page made up an actor: {:?}", after.clock);
    let k = k as usize;
    assert!(
        after.state.canonical() == state_of(k).canonical(),
        "a damaged page applied something its author did not write ({result:?})"
    );
    assert!(after.buffered <= n - k, "a damaged page left {} buffered operations", after.buffered);
}
