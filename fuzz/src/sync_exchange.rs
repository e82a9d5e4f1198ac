//! The `sync_exchange` target: anti-entropy requests and answers from a
//! hostile peer. The replica under test (see [`crate::harness`]) answers
//! requests with `sync::respond` and applies answers with
//! `sync::apply_response`.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | kind, modulo 3: 0 = a raw request, 1 = a raw answer, 2 = structured pages |
//! | 1 | [`Setup`] of the replica (a checkpoint makes it answer with snapshots) |
//! | 2.. | raw: one `SyncRequest` or `SyncResponse` as it comes off the network; structured: up to [`MAX_MESSAGES`](crate::harness::MAX_MESSAGES) [`MessageSpec`](crate::harness::MessageSpec)s, each sent as a `SyncResponse::Ops` page (through the codec) of operations the harness signs and damages as told |
//!
//! Checks:
//! - nothing panics;
//! - a request that decodes gets an answer that fits the response limit
//!   and decodes back to itself; `UnknownDoc` exactly when the request
//!   names another document; a page holds at most the budget (unless it is
//!   one operation), every operation in it decodes and verifies, and they
//!   continue the requester's version vector in order; a page without
//!   `more` leaves the requester covering the replica, one with `more` is
//!   not empty; a snapshot only comes from a truncated log and is exactly
//!   the replica's state and version vector;
//! - a page of operations is checked like a gossip message (the oracle of
//!   [`crate::harness`]), and its `more` is honoured only if it brought
//!   progress;
//! - a snapshot answer does exactly what the model in [`check_snapshot`]
//!   says: refused (changing nothing) if misaddressed, undecodable or
//!   claiming operations of the replica's own actor it never wrote; a no-op
//!   if the replica already covers it; else the replica ends with the merge
//!   of both states and version vectors;
//! - `UnknownDoc` and `Refused` answers change nothing;
//! - if anything was applied, the replica reopens to the same version
//!   vector and state.

use serde_bytes::ByteBuf;
use walrus::internals;
use walrus::replica::{Document, KvDoc, PeerError, ReceiveError, Replica};
use walrus::sync::{self, SyncError, SyncRequest, SyncResponse};

use crate::harness::{
    check_reopen, coverage, is_refusal, judge_page, limits, observe, options, parse_messages, replica, Chains, Setup,
    Twin, Verdict, DOC, LOCAL_SEED,
};
use crate::Bytes;

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let mut input = Bytes::new(data);
    let kind = input.u8() % 3;
    let setup = Setup::parse(input.u8());
    let body = input.rest();
    let limits = limits();
    // Cheap refusals first: a raw message that does not decode never
    // reaches a replica, so there is nothing to set up.
    let request = match kind {
        0 => match sync::decode::<SyncRequest>(body, limits.max_request, "request") {
            Ok(req) => Some(req),
            Err(_) => return,
        },
        _ => None,
    };
    // Each answer with, for structured pages, the oracle's verdict known by
    // construction (raw answers are judged when applied).
    let answers: Vec<(SyncResponse, Option<Verdict>)> = match kind {
        0 => Vec::new(),
        1 => match sync::decode::<SyncResponse>(body, limits.max_response, "response") {
            Ok(resp) => vec![(resp, None)],
            Err(_) => return,
        },
        _ => {
            let mut chains = Chains::default();
            parse_messages(body)
                .iter()
                .map(|m| {
                    let (page, verdict) = m.build(&mut chains, limits.max_response);
                    let page = SyncResponse::Ops { doc: m.doc().to_string(), page: ByteBuf::from(page), more: m.more };
                    // Through the codec, as a requester receives it.
                    let page = sync::decode(&sync::encode(&page), limits.max_response, "response")
                        .expect("a page of 7 operations decodes");
                    (page, Some(verdict))
                })
                .collect()
        }
    };
    let tmp = crate::temp_dir();
    let mut r = replica(&tmp.path().join("replica"), setup);
    if let Some(req) = request {
        check_request(&r, setup, &req);
        return;
    }
    let mut twin = Twin::new(tmp.path().join("twin"), setup);
    let initial = observe(&r);
    for (resp, verdict) in answers {
        check_answer(&mut r, &mut twin, resp, verdict);
    }
    let end = observe(&r);
    if end.clock != initial.clock || end.state != initial.state {
        check_reopen(r, LOCAL_SEED, options());
    }
}

/// The replica's answer to a peer's request.
fn check_request(r: &Replica<KvDoc>, setup: Setup, req: &SyncRequest) {
    let limits = limits();
    let resp = sync::respond(r, DOC, req, &limits);
    let bytes = sync::encode(&resp);
    assert!(bytes.len() <= limits.max_response, "an answer of {} bytes exceeds the limit", bytes.len());
    let back: SyncResponse = sync::decode(&bytes, limits.max_response, "response").expect("an answer decodes");
    assert_eq!(back, resp, "an answer does not decode to itself");
    if req.doc != DOC {
        assert_eq!(resp, SyncResponse::UnknownDoc { doc: req.doc.clone() });
        return;
    }
    match resp {
        SyncResponse::Ops { doc, page, more } => {
            assert_eq!(doc, DOC);
            let ops = internals::decode_page::<KvDoc>(&page, limits.max_response, limits.max_op, DOC)
                .expect("a served page decodes");
            // The page budget `respond` documents; past it, a page only
            // finishes its last run (up to that actor's next signed head).
            let budget =
                usize::try_from(req.budget).unwrap_or(usize::MAX).min(limits.max_response / 2).clamp(1, sync::MAX_PAGE);
            let heads: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].signature().is_some()).collect();
            let last_run = heads.len().checked_sub(2).map_or(0, |i| heads[i] + 1);
            let size: usize = ops[..last_run].iter().map(|op| op.op_bytes().len()).sum();
            assert!(size <= budget, "a page with {size} bytes before its last run, for a budget of {budget}");
            assert!(coverage(&ops).into_iter().all(|c| c), "a served operation no valid head covers");
            // The requester's version vector as it applies the page in order.
            let mut theirs = req.clock.clone();
            for env in &ops {
                assert!(
                    KvDoc::check_author(env.op(), &env.actor()).is_ok(),
                    "a served operation fails its author check"
                );
                assert_eq!(
                    theirs.get(&env.actor()).checked_add(1),
                    Some(env.seq()),
                    "a page is not in an order the requester can apply"
                );
                assert!(env.seq() <= r.clock().get(&env.actor()), "a served operation the replica does not have");
                theirs.observe(env.actor(), env.seq());
            }
            if more {
                assert!(!ops.is_empty(), "an empty page that claims more");
            } else {
                assert!(theirs.covers(r.clock()), "the last page leaves the requester missing operations");
            }
        }
        SyncResponse::Snapshot { doc, state, clock, .. } => {
            assert!(setup.checkpoint, "a snapshot answer from a log that was never truncated");
            assert_eq!(doc, DOC);
            assert_eq!(&clock, r.clock(), "a snapshot's version vector is not the replica's");
            let state = internals::unframe_page(&state, limits.max_response).expect("a snapshot's frame");
            let state: KvDoc = sync::decode(&state, limits.max_response, "snapshot").expect("a snapshot decodes");
            assert!(state.canonical() == r.doc().canonical(), "a snapshot is not the replica's state");
        }
        other => panic!("the replica could not answer a request for its own document: {other:?}"),
    }
}

/// A peer's answer, applied to the replica. `verdict`: what the oracle says
/// of a page, if known already.
fn check_answer(r: &mut Replica<KvDoc>, twin: &mut Twin, resp: SyncResponse, verdict: Option<Verdict>) {
    let limits = limits();
    let before = observe(r);
    match resp {
        SyncResponse::Ops { ref doc, ref page, more } => {
            let verdict = verdict.unwrap_or_else(|| judge_page(doc, page, limits.max_response));
            let result = sync::apply_response(r, DOC, resp.clone(), &limits);
            if let Ok(applied) = &result {
                assert!(!applied.snapshot, "a page reported as a snapshot");
                let progress = applied.received.applied + applied.received.buffered > 0;
                assert_eq!(applied.more, more && progress, "a page's `more` mishandled");
            }
            twin.check(r, &before, verdict, &result.map(|a| a.received));
        }
        SyncResponse::Snapshot { .. } => check_snapshot(r, resp),
        SyncResponse::UnknownDoc { .. } | SyncResponse::Refused { .. } => {
            let result = sync::apply_response(r, DOC, resp, &limits);
            assert!(
                matches!(result, Err(SyncError::Remote { .. })) || result.as_ref().is_err_and(is_refusal),
                "a refusal from the peer gave {result:?}"
            );
            assert_eq!(observe(r), before, "a refusal from the peer changed the replica");
        }
    }
}

/// A snapshot answer, against a model of `Replica::merge_snapshot`.
fn check_snapshot(r: &mut Replica<KvDoc>, resp: SyncResponse) {
    let limits = limits();
    let SyncResponse::Snapshot { doc, state, clock, .. } = &resp else { unreachable!("called with a snapshot") };
    let before = observe(r);
    let before_doc = r.doc().clone();
    let own = r.actor();
    let addressed = sync::check_doc_name(doc).is_ok() && doc == DOC;
    let decoded = internals::unframe_page(state, limits.max_response)
        .ok()
        .and_then(|s| sync::decode::<KvDoc>(&s, limits.max_response, "snapshot").ok());
    let clock = clock.clone();
    let result = sync::apply_response(r, DOC, resp, &limits);
    let after = observe(r);
    let Some(state) = decoded.filter(|_| addressed) else {
        assert!(result.as_ref().is_err_and(is_refusal), "a misaddressed or undecodable snapshot gave {result:?}");
        assert_eq!(after, before, "a refused snapshot changed the replica");
        return;
    };
    if clock.get(&own) > before.clock.get(&own) {
        assert!(
            matches!(result, Err(SyncError::Receive(ReceiveError::Peer(PeerError::SnapshotRejected(_))))),
            "a snapshot claiming unwritten operations of the replica's own actor gave {result:?}"
        );
        assert_eq!(after, before, "a rejected snapshot changed the replica");
        return;
    }
    let applied = match result {
        Ok(a) => a,
        Err(e) => panic!("a well-formed snapshot was refused: {e}"),
    };
    if before.clock.covers(&clock) {
        assert!(!applied.snapshot && !applied.more, "a covered snapshot reported as new: {applied:?}");
        assert_eq!(after, before, "a covered snapshot changed the replica");
        return;
    }
    assert!(applied.snapshot && applied.more, "a new snapshot not reported as one: {applied:?}");
    let mut merged = before_doc;
    crdts::CvRDT::merge(&mut merged, state);
    let mut merged_clock = before.clock.clone();
    merged_clock.merge(&clock);
    assert_eq!(after.clock, merged_clock, "the version vector after a snapshot is not the merge");
    assert!(after.state.canonical() == merged.canonical(), "the state after a snapshot is not the merge");
    assert_eq!(after.buffered, before.buffered, "a snapshot changed the buffer of an idle replica");
}
