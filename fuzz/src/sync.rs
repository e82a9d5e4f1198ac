//! The `sync_message` target: a sync message from a hostile peer, handled by
//! a replica of a key-value document.
//!
//! Input: a kind byte (taken modulo 3: 0 gossip, 1 sync request, 2 sync
//! response) and the message bytes. The replica (fresh per input, in a temp
//! directory) holds [`LOCAL_OPS`] operations of its own. Small [`limits`]
//! let inputs reach every limit.
//!
//! Checks:
//! - nothing panics;
//! - a message refused as malformed (too large, bad CBOR, wrong document, a
//!   bad operation inside) leaves the replica's clock and state unchanged;
//! - the answer to any decodable request fits the response limit and
//!   decodes back to itself; if it is a page, its operations decode.

use walrus::replica::{Document, KvDoc, KvDocExt, OpEnvelope, Replica, ReplicaOptions, VersionVector};
use walrus::sync::{self, Limits, SyncError, SyncRequest, SyncResponse};
use walrus::wal::{SyncPolicy, WalOptions};

use crate::recover::temp_base;
use crate::Bytes;

/// The document's name.
pub const DOC: &str = "doc";
/// Operations the replica wrote itself before the message arrives.
pub const LOCAL_OPS: usize = 3;

/// The limits the target runs with.
pub fn limits() -> Limits {
    Limits { max_gossip: 4096, max_request: 4096, max_response: 16 << 10, max_op: 1024 }
}

/// A replica in `dir` with [`LOCAL_OPS`] operations of its own.
pub fn replica(dir: &std::path::Path) -> Replica<KvDoc> {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    let opts = ReplicaOptions { wal, checkpoint_bytes: 0, max_op_size: limits().max_op, ..ReplicaOptions::default() };
    let mut r: Replica<KvDoc> = Replica::open(dir, opts).expect("opening a replica");
    for i in 0..LOCAL_OPS {
        r.update(|d: &KvDoc, a| d.put_op(a, &format!("key{i}"), "value")).expect("a local write");
    }
    r
}

fn state(r: &Replica<KvDoc>) -> (VersionVector, Vec<u8>) {
    (r.clock().clone(), r.doc().canonical())
}

/// True for the errors that must leave the replica as it was.
fn malformed(e: &SyncError) -> bool {
    matches!(e, SyncError::Message(_) | SyncError::Envelope(_) | SyncError::WrongDoc { .. })
}

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    let mut input = Bytes::new(data);
    let kind = input.u8() % 3;
    let msg = input.rest();
    let tmp = tempfile::Builder::new().prefix("walrus-fuzz-").tempdir_in(temp_base()).expect("creating a temp dir");
    let mut r = replica(tmp.path());
    let limits = limits();
    let before = state(&r);
    match kind {
        0 => {
            if let Err(e) = sync::apply_gossip(&mut r, DOC, msg, &limits) {
                if malformed(&e) {
                    assert_eq!(state(&r), before, "refused gossip changed the replica: {e}");
                }
            }
        }
        1 => {
            let Ok(req) = sync::decode::<SyncRequest>(msg, limits.max_request, "request") else { return };
            let resp = sync::respond(&r, DOC, &req, &limits);
            let bytes = sync::encode(&resp);
            assert!(bytes.len() <= limits.max_response, "an answer of {} bytes", bytes.len());
            let back: SyncResponse = sync::decode(&bytes, limits.max_response, "response").expect("own answer decodes");
            assert_eq!(back, resp);
            if let SyncResponse::Ops { ops, .. } = &resp {
                for op in ops {
                    OpEnvelope::<<KvDoc as Document>::Operation>::decode(op, limits.max_op).expect("served op decodes");
                }
            }
        }
        _ => {
            let Ok(resp) = sync::decode::<SyncResponse>(msg, limits.max_response, "response") else {
                assert_eq!(state(&r), before);
                return;
            };
            if let Err(e) = sync::apply_response(&mut r, DOC, resp, &limits) {
                if malformed(&e) {
                    assert_eq!(state(&r), before, "refused answer changed the replica: {e}");
                }
            }
        }
    }
}
