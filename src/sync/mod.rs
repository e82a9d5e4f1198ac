//! The sync protocol, without I/O: wire messages, the answers a replica
//! gives, how answers and gossip are applied, and the anti-entropy
//! schedule.
//!
//! Two mechanisms deliver operations. *Gossip* pushes newly written
//! operations eagerly; it may lose, duplicate or reorder them. *Anti-entropy*
//! pulls: a node sends its version vector ([`SyncRequest`]) and the peer
//! answers with the missing operations, page by page, or with a snapshot
//! when it no longer has them ([`SyncResponse`]). Anti-entropy alone
//! guarantees convergence; gossip only makes it fast.
//!
//! ```
//! use walrus::replica::{KvDoc, Replica, ReplicaOptions};
//! use walrus::sync::{apply_response, request, respond, Limits};
//! let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let mut a: Replica<KvDoc> = Replica::open(da.path(), ReplicaOptions::default())?;
//! let mut b: Replica<KvDoc> = Replica::open(db.path(), ReplicaOptions::default())?;
//! a.update(|d, actor| d.put_op(actor, "k", "v"))?;
//! let limits = Limits::default();
//! loop {
//!     let answer = respond(&a, "doc", &request(&b, "doc", 64 << 10), &limits);
//!     if !apply_response(&mut b, "doc", answer, &limits)?.more {
//!         break;
//!     }
//! }
//! assert!(b.clock().covers(a.clock()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod exchange;
mod message;
pub(crate) mod page;
pub(crate) mod schedule;

pub use exchange::{
    apply_gossip, apply_response, decode_request, encode_refusal, encode_request, encode_unknown_doc, gossip_messages,
    request, respond, Applied, SyncError, MAX_PAGE, MAX_PAGE_BODY, PREVIOUS_PROTOCOL_REFUSAL,
};
pub use message::{
    check_doc_name, decode, encode, Gossip, Limits, MessageError, SyncRequest, SyncResponse, MAX_DOC_NAME,
    MAX_OPS_PER_MESSAGE,
};
pub use schedule::Schedule;
