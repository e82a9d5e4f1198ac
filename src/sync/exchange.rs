//! What to send and what to do with what arrives: pure functions over a
//! [`Replica`], no sockets. A transport (the `net` layer, or a test wiring
//! replicas together) moves the bytes.

use serde_bytes::ByteBuf;
use tracing::debug;

use super::message::{self, check_doc_name, Gossip, Limits, MessageError, SyncRequest, SyncResponse};
use super::page;
use crate::replica::run::{split_runs, Run, RUN_SPLIT_BYTES, RUN_SPLIT_OPS};
use crate::replica::{Document, EnvelopeError, OpEnvelope, ReceiveError, Received, Replica};

/// Why an incoming message was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The message itself is bad: too large, malformed, wrong document.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// An operation inside it is malformed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The message names another document than the one it was routed to.
    #[error("message for document {got:?} arrived for {expected:?}")]
    WrongDoc {
        /// Where it was routed.
        expected: String,
        /// What it names.
        got: String,
    },
    /// The replica refused what the message carried, or failed taking it
    /// (a rejected operation, a log error):
    /// [`ReceiveError::is_peer_fault`] tells which.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// A request of this replica would exceed the request size limit (its
    /// version vector names too many actors): a peer with the same limit
    /// would refuse it, so it is not sent.
    #[error("sync request for {doc:?} of {len} bytes ({actors} actors) exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// Document.
        doc: String,
        /// Encoded length.
        len: usize,
        /// `Limits::max_request`.
        limit: usize,
        /// Actors in the version vector.
        actors: usize,
    },
    /// The peer answered that it cannot serve the request.
    #[error("peer cannot serve document {doc:?}: {reason}")]
    Remote {
        /// Document.
        doc: String,
        /// The peer's reason.
        reason: String,
    },
}

impl SyncError {
    /// True if the message proves the sender faulty or hostile (as opposed
    /// to a local failure or a peer that merely lacks the document).
    pub fn is_peer_fault(&self) -> bool {
        match self {
            SyncError::Message(_) | SyncError::Envelope(_) | SyncError::WrongDoc { .. } => true,
            SyncError::Receive(e) => e.is_peer_fault(),
            SyncError::RequestTooLarge { .. } | SyncError::Remote { .. } => false,
        }
    }
}

/// Most bytes a sync page may expand to: [`MAX_PAGE`] of operations, the
/// one run that may go on past it to its head (1 MiB), and the framing.
pub const MAX_PAGE_BODY: usize = 8 << 20;

/// Most operation bytes served in one page, whatever the requester asks:
/// bounds what one request can make the responder hold.
pub const MAX_PAGE: usize = 4 << 20;

/// What applying a sync response did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Operations applied, buffered and already known.
    pub received: Received,
    /// A snapshot with something new was merged.
    pub snapshot: bool,
    /// The peer has more: send another request (built after this one was applied).
    pub more: bool,
}

/// The request to send to a peer that replicates `doc`.
pub fn request<D: Document>(replica: &Replica<D>, doc: &str, budget: u64) -> SyncRequest {
    SyncRequest { doc: doc.to_string(), clock: replica.clock().clone(), budget }
}

/// [`request`], encoded, if it is within `limits.max_request` (the limit a
/// peer with the same settings holds requests to).
pub fn encode_request<D: Document>(
    replica: &Replica<D>,
    doc: &str,
    budget: u64,
    limits: &Limits,
) -> Result<Vec<u8>, SyncError> {
    let bytes = message::encode(&request(replica, doc, budget));
    if bytes.len() > limits.max_request {
        return Err(SyncError::RequestTooLarge {
            doc: doc.to_string(),
            len: bytes.len(),
            limit: limits.max_request,
            actors: replica.clock().len(),
        });
    }
    Ok(bytes)
}

/// A peer's sync request, decoded: at most `limits.max_request` bytes, and
/// naming a valid document. An error means the peer sent something no
/// honest node sends (a fault), and the request gets no answer.
pub fn decode_request(bytes: &[u8], limits: &Limits) -> Result<SyncRequest, MessageError> {
    let req: SyncRequest = message::decode(bytes, limits.max_request, "sync request")?;
    check_doc_name(&req.doc)?;
    Ok(req)
}

/// The reason given to a peer that asks with the previous protocol
/// (`/walrus/sync/1`), whose operations this version no longer reads.
pub const PREVIOUS_PROTOCOL_REFUSAL: &str =
    "this node speaks /walrus/sync/2 (chained, compact operations); upgrade walrus to sync with it";

/// The encoded answer refusing a request for `doc` without serving it;
/// `reason` tells the peer why (busy, over its rate limit, unavailable).
pub fn encode_refusal(doc: &str, reason: &str) -> Vec<u8> {
    message::encode(&SyncResponse::Refused { doc: doc.to_string(), reason: reason.to_string() })
}

/// The encoded answer to a request for a document this node does not
/// replicate.
pub fn encode_unknown_doc(doc: &str) -> Vec<u8> {
    message::encode(&SyncResponse::UnknownDoc { doc: doc.to_string() })
}

/// The answer to `req`, for a replica of document `doc`. Pages are at most
/// `min(req.budget, limits.max_response / 2, MAX_PAGE)` operation bytes (always at
/// least one operation); a snapshot answer whose encoding exceeds
/// `limits.max_response` is refused rather than sent.
pub fn respond<D: Document>(replica: &Replica<D>, doc: &str, req: &SyncRequest, limits: &Limits) -> SyncResponse {
    if req.doc != doc {
        return SyncResponse::UnknownDoc { doc: req.doc.clone() };
    }
    let budget = usize::try_from(req.budget).unwrap_or(usize::MAX).min(limits.max_response / 2).clamp(1, MAX_PAGE);
    let refused = |reason: String| SyncResponse::Refused { doc: doc.to_string(), reason };
    // Operations go out as stored: no decoding and re-encoding.
    match replica.runs_since(&req.clock, budget) {
        Ok(Some((runs, more))) => {
            SyncResponse::Ops { doc: doc.to_string(), page: ByteBuf::from(page::encode_page(&runs)), more }
        }
        Ok(None) => {
            // Some missing operations were truncated: the whole state.
            // Sized from its parts (an upper bound of their CBOR), so the
            // state is encoded once and the answer once, when it is sent.
            let state = page::frame(&message::encode(replica.doc()));
            let (clock, successions, heads) = (replica.clock().clone(), replica.successions(), replica.chain_heads());
            let len = 64 + doc.len() + state.len() + clock.len() * 44 + successions.len() * 160 + heads.len() * 72;
            if len > limits.max_response {
                return refused(format!("a snapshot answer of about {len} bytes exceeds the response limit"));
            }
            SyncResponse::Snapshot { doc: doc.to_string(), state: ByteBuf::from(state), clock, successions, heads }
        }
        Err(e) => refused(e.to_string()),
    }
}

/// The operations of a page (`limit`: most bytes it may expand to), each
/// decoded and chained under `replica`'s document: checked for form only;
/// the replica checks the chains and their heads.
fn decode_page<D: Document>(
    replica: &Replica<D>,
    bytes: &[u8],
    limit: usize,
    limits: &Limits,
    what: &'static str,
) -> Result<Vec<OpEnvelope<D::Operation>>, SyncError> {
    let body = page::unframe(bytes, limit, what)?;
    let runs = page::decode_runs(&body, limits.max_op, what)?;
    let mut out = Vec::with_capacity(runs.iter().map(|r| r.ops.len()).sum());
    for run in &runs {
        out.extend(run.envelopes::<D>(replica.chain_key())?);
    }
    Ok(out)
}

fn expect_doc(expected: &str, got: &str) -> Result<(), SyncError> {
    check_doc_name(got)?;
    if expected != got {
        return Err(SyncError::WrongDoc { expected: expected.to_string(), got: got.to_string() });
    }
    Ok(())
}

/// Applies a peer's answer to a request for `doc`. A malformed answer is
/// refused as a whole before anything is applied.
pub fn apply_response<D: Document>(
    replica: &mut Replica<D>,
    doc: &str,
    resp: SyncResponse,
    limits: &Limits,
) -> Result<Applied, SyncError> {
    expect_doc(doc, resp.doc())?;
    match resp {
        SyncResponse::Ops { page, more, .. } => {
            let envs = decode_page(replica, &page, limits.max_response.min(MAX_PAGE_BODY), limits, "sync page")?;
            let received = replica.receive(envs)?;
            debug!(doc, applied = received.applied, more, "sync page applied");
            // A page that brought nothing new but claims more would make us
            // ask again and again at once.
            let progress = received.applied + received.buffered > 0;
            Ok(Applied { received, snapshot: false, more: more && progress })
        }
        // Its chain heads are not used: a snapshot carries no signatures, so
        // they are not held against anybody's next operation.
        SyncResponse::Snapshot { state, clock, successions, .. } => {
            let state = page::unframe(&state, limits.max_response, "snapshot")?;
            let state: D = message::decode(&state, limits.max_response, "snapshot")?;
            replica.learn_successions(&successions)?;
            // A snapshot with nothing new is not progress: no "more", or a
            // peer repeating it would keep us pulling without pause.
            let new = !replica.clock().covers(&clock);
            replica.merge_snapshot(state, clock)?;
            debug!(doc, new, "sync snapshot merged");
            // Operations after the snapshot's clock may still be missing.
            Ok(Applied { received: Received::default(), snapshot: new, more: new })
        }
        SyncResponse::UnknownDoc { doc } => {
            Err(SyncError::Remote { doc, reason: "the peer does not replicate this document".into() })
        }
        SyncResponse::Refused { doc, reason } => Err(SyncError::Remote { doc, reason }),
    }
}

/// Applies a gossip message that arrived on `doc`'s topic. A malformed
/// message is refused as a whole before anything is applied.
pub fn apply_gossip<D: Document>(
    replica: &mut Replica<D>,
    doc: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Received, SyncError> {
    let msg: Gossip = message::decode(bytes, limits.max_gossip, "gossip")?;
    expect_doc(doc, &msg.doc)?;
    let envs = decode_page(replica, &msg.page, limits.max_gossip, limits, "gossip page")?;
    Ok(replica.receive(envs)?)
}

/// Encoded gossip messages carrying `ops` (already durable locally, in the
/// order written), split so that each is at most `max_gossip` bytes. Each
/// message holds whole runs, each ending at a signed operation; operations
/// no signed one follows, and a run too large for a message on its own,
/// are left to anti-entropy. Runs of one actor that follow one another in
/// a message are sent as one, under the last one's signature (its hash
/// chain covers the rest): a receiver checks one signature per actor and
/// message, however many writes were batched into it.
pub fn gossip_messages<O>(doc: &str, ops: &[OpEnvelope<O>], max_gossip: usize) -> Vec<Vec<u8>> {
    // Room for the map, the document name, the page's frame and counts.
    let overhead = 64 + doc.len();
    let room = max_gossip.saturating_sub(overhead);
    // Runs that end at a signed operation; the others are left out.
    let runs = split_runs(ops).into_iter().filter(|r| r.last().is_some_and(|e| e.signature().is_some()));
    // A run's share: its actor in the table (at most), index, numbers,
    // previous hash, flags, certificate if any, signature, and per
    // operation its bytes and length.
    let size = |r: &[OpEnvelope<O>]| {
        let cert = if r.first().is_some_and(|e| e.succeeds().is_some()) { 128 } else { 0 };
        33 + 3 + 20 + 32 + 1 + cert + 64 + r.iter().map(|e| e.op_bytes().len() + 3).sum::<usize>()
    };
    let mut out = Vec::new();
    let mut batch: Vec<Run<'_>> = Vec::new();
    // The last operation of the batch's last run, and that run's bytes.
    let mut tail: Option<(&OpEnvelope<O>, usize)> = None;
    let mut used = 0;
    for r in runs {
        let len = size(r);
        if len > room {
            continue;
        }
        if used + len > room && !batch.is_empty() {
            let body = page::encode_runs(std::mem::take(&mut batch));
            out.push(message::encode(&Gossip { doc: doc.to_string(), page: ByteBuf::from(page::frame(&body)) }));
            used = 0;
            tail = None;
        }
        used += len;
        let (Some(run), Some(first), Some(last)) = (Run::of(r), r.first(), r.last()) else { continue };
        let bytes: usize = run.ops.iter().map(|o| o.len()).sum();
        match (batch.last_mut(), tail) {
            // Within the limits a receiver splits runs at, so the merged
            // run is one it takes and can serve on.
            (Some(open), Some((end, open_bytes)))
                if first.follows(end)
                    && first.succeeds().is_none()
                    && open.ops.len() + run.ops.len() <= RUN_SPLIT_OPS
                    && open_bytes + bytes <= RUN_SPLIT_BYTES =>
            {
                open.ops.extend(run.ops);
                open.sig = run.sig;
                tail = Some((last, open_bytes + bytes));
            }
            _ => {
                batch.push(run);
                tail = Some((last, bytes));
            }
        }
    }
    if !batch.is_empty() {
        let body = page::encode_runs(batch);
        out.push(message::encode(&Gossip { doc: doc.to_string(), page: ByteBuf::from(page::frame(&body)) }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{KvDoc, ReplicaOptions};

    fn open(dir: &std::path::Path) -> Replica<KvDoc> {
        Replica::open(dir, ReplicaOptions::default()).unwrap()
    }

    #[test]
    fn pull_pages_until_covered_then_nothing() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, mut b) = (open(da.path()), open(db.path()));
        for i in 0..50 {
            a.update(|d, act| d.put_op(act, &format!("k{i}"), "value")).unwrap();
        }
        let limits = Limits::default();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let resp = respond(&a, "d", &request(&b, "d", 100), &limits);
            let applied = apply_response(&mut b, "d", resp, &limits).unwrap();
            if !applied.more {
                break;
            }
        }
        assert!(rounds > 5, "a 100-byte budget must page: {rounds} rounds");
        assert!(b.clock().covers(a.clock()));
        assert_eq!(b.doc().values_of("k49"), vec!["value"]);
        // A second round transfers nothing.
        match respond(&a, "d", &request(&b, "d", 300), &limits) {
            SyncResponse::Ops { page, more, .. } => {
                let body = page::unframe(&page, 1 << 20, "page").unwrap();
                assert!(page::decode_runs(&body, 1 << 20, "page").unwrap().is_empty() && !more)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_doc_and_garbage_change_nothing() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, mut b) = (open(da.path()), open(db.path()));
        let env = a.update(|d, act| d.put_op(act, "k", "v")).unwrap();
        let limits = Limits::default();
        let msgs = gossip_messages("d", &[env], limits.max_gossip);
        assert!(matches!(apply_gossip(&mut b, "other", &msgs[0], &limits), Err(SyncError::WrongDoc { .. })));
        assert!(matches!(apply_gossip(&mut b, "d", b"\xff\x00garbage", &limits), Err(SyncError::Message(_))));
        let bad = message::encode(&Gossip { doc: "d".into(), page: ByteBuf::from(vec![0x00, 0x02, 0xa1, 0x01]) });
        let err = apply_gossip(&mut b, "d", &bad, &limits).unwrap_err();
        assert!(err.is_peer_fault(), "{err}");
        assert!(b.clock().is_empty());
        assert_eq!(apply_gossip(&mut b, "d", &msgs[0], &limits).unwrap().applied, 1);
        assert_eq!(respond(&a, "d", &request(&b, "x", 10), &limits), SyncResponse::UnknownDoc { doc: "x".into() });
    }

    #[test]
    fn heads_a_snapshot_names_are_held_against_nobody() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, mut b) = (open(da.path()), open(db.path()));
        a.update(|d, act| d.put_op(act, "k1", "v")).unwrap();
        a.update(|d, act| d.put_op(act, "k2", "v")).unwrap();
        let limits = Limits::default();
        // A snapshot of A's state that lies about A's chain.
        let lying = SyncResponse::Snapshot {
            doc: "d".into(),
            state: ByteBuf::from(page::frame(&message::encode(a.doc()))),
            clock: a.clock().clone(),
            successions: Vec::new(),
            heads: vec![(a.actor(), crate::replica::ChainHash([7; 32]))],
        };
        apply_response(&mut b, "d", lying, &limits).unwrap();
        assert!(b.clock().covers(a.clock()));
        // A's next operation is taken, and A is not accused.
        let env = a.update(|d, act| d.put_op(act, "k3", "v")).unwrap();
        let msgs = gossip_messages("d", &[env], limits.max_gossip);
        let got = apply_gossip(&mut b, "d", &msgs[0], &limits).unwrap();
        assert_eq!(got.applied, 1);
        assert!(got.equivocations.is_empty() && b.take_equivocations().is_empty());
    }

    #[test]
    fn gossip_splits_by_size() {
        let d = tempfile::tempdir().unwrap();
        let mut a = open(d.path());
        let envs: Vec<_> = (0..100).map(|i| a.update(|d, act| d.put_op(act, &format!("{i}"), "v")).unwrap()).collect();
        let msgs = gossip_messages("d", &envs, 2000);
        assert!(msgs.len() > 5);
        let mut total = 0;
        for m in &msgs {
            assert!(m.len() <= 2000, "{}", m.len());
            let g = message::decode::<Gossip>(m, 2000, "gossip").unwrap();
            let body = page::unframe(&g.page, 1 << 20, "page").unwrap();
            total += page::decode_runs(&body, 1 << 20, "page").unwrap().iter().map(|r| r.ops.len()).sum::<usize>();
        }
        assert_eq!(total, 100);
    }

    #[test]
    fn writes_batched_into_one_message_carry_one_signature_per_actor() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(da.path());
        // 20 single writes: each signed on its own.
        let envs: Vec<_> = (0..20).map(|i| a.update(|d, act| d.put_op(act, &format!("{i}"), "v")).unwrap()).collect();
        assert!(envs.iter().all(|e| e.signature().is_some()));
        let msgs = gossip_messages("d", &envs, 1 << 20);
        assert_eq!(msgs.len(), 1);
        let g = message::decode::<Gossip>(&msgs[0], 1 << 20, "gossip").unwrap();
        let body = page::unframe(&g.page, 1 << 20, "page").unwrap();
        let runs = page::decode_runs(&body, 1 << 20, "page").unwrap();
        assert_eq!(runs.len(), 1, "one run under the last signature");
        assert_eq!(runs[0].ops.len(), 20);
        assert_eq!(runs[0].sig.as_ref(), envs[19].signature());
        // A receiver takes all of it, checking the one head.
        let mut b = open(db.path());
        let got = apply_gossip(&mut b, "d", &msgs[0], &Limits::default()).unwrap();
        assert_eq!(got.applied, 20);
        assert_eq!(b.doc().values_of("19"), vec!["v"]);
        // Another actor's writes in between end the run: each keeps its own.
        let dc = tempfile::tempdir().unwrap();
        let mut c = open(dc.path());
        let theirs = c.update(|d, act| d.put_op(act, "c", "v")).unwrap();
        let mixed = vec![envs[0].clone(), envs[1].clone(), theirs, envs[2].clone()];
        let msgs = gossip_messages("d", &mixed, 1 << 20);
        let g = message::decode::<Gossip>(&msgs[0], 1 << 20, "gossip").unwrap();
        let body = page::unframe(&g.page, 1 << 20, "page").unwrap();
        let runs = page::decode_runs(&body, 1 << 20, "page").unwrap();
        assert_eq!(runs.iter().map(|r| r.ops.len()).collect::<Vec<_>>(), [2, 1, 1]);
    }

    #[test]
    fn requests_decode_within_limits_and_name_a_document() {
        let d = tempfile::tempdir().unwrap();
        let a = open(d.path());
        let limits = Limits::default();
        let bytes = message::encode(&request(&a, "d", 10));
        assert_eq!(decode_request(&bytes, &limits).unwrap().doc, "d");
        let small = Limits { max_request: bytes.len() - 1, ..limits };
        assert!(decode_request(&bytes, &small).is_err());
        assert!(decode_request(b"\xff\x00garbage", &limits).is_err());
        let bad_name = message::encode(&request(&a, "", 10));
        assert!(decode_request(&bad_name, &limits).is_err());
    }

    #[test]
    fn a_receive_error_is_a_peer_fault_only_when_the_replica_says_so() {
        use crate::replica::{PeerError, StorageError};
        let peer = SyncError::from(ReceiveError::Peer(PeerError::SnapshotRejected("no".into())));
        assert!(peer.is_peer_fault(), "{peer}");
        let local = SyncError::from(ReceiveError::Local(StorageError::Poisoned));
        assert!(!local.is_peer_fault(), "{local}");
        let large = SyncError::from(ReceiveError::TooLarge { len: 2, limit: 1 });
        assert!(!large.is_peer_fault(), "{large}");
        let remote = SyncError::Remote { doc: "d".into(), reason: "busy".into() };
        assert!(!remote.is_peer_fault());
    }

    #[test]
    fn answers_without_a_replica() {
        let limits = Limits::default();
        let refused: SyncResponse = message::decode(&encode_refusal("d", "busy"), limits.max_response, "r").unwrap();
        assert_eq!(refused, SyncResponse::Refused { doc: "d".into(), reason: "busy".into() });
        let unknown: SyncResponse = message::decode(&encode_unknown_doc("d"), limits.max_response, "r").unwrap();
        assert_eq!(unknown, SyncResponse::UnknownDoc { doc: "d".into() });
    }
}
