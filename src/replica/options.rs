//! How a replica is opened.

use std::collections::BTreeSet;

use super::ActorId;
use crate::wal::{SyncPolicy, WalOptions};

/// Options of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Options of the underlying log (`Batch` group commit by default).
    /// With `SyncPolicy::None` a machine crash can lose operations that
    /// were already handed to peers, and this replica may then reuse their
    /// sequence numbers: use a durable policy for data you replicate.
    pub wal: WalOptions,
    /// Largest encoded operation accepted, local or remote (at most the
    /// log's `wal.max_record_size`, whichever is smaller).
    pub max_op_size: usize,
    /// Most early (out-of-order) operations held at once.
    pub buffer_limit: usize,
    /// Checkpoint automatically once this many log bytes were written since
    /// the last checkpoint (0: never automatically).
    pub checkpoint_bytes: u64,
    /// Largest checkpoint file read back.
    pub max_checkpoint_size: u64,
    /// Most early operations held for any one actor, so that one actor (or
    /// a peer relaying it) cannot fill the whole buffer.
    pub buffer_per_actor: usize,
    /// Most bytes of early operations held at once (their encoded size).
    pub buffer_bytes: usize,
    /// The document id that every operation's signature binds (see
    /// "Signature" in `docs/REPLICA.md`). All replicas of a document
    /// must use the same id; `walrus::net` uses the document name. It is
    /// stored in the replica directory when the replica is created (`None`
    /// then means `""`); opening it later with another id is an error, and
    /// `None` means "whatever is stored".
    pub document: Option<String>,
    /// If set, only these actors may write: operations of any other actor
    /// are rejected (a local write with
    /// [`WriteError::NotAWriter`](super::WriteError::NotAWriter); a received
    /// one is skipped and counted in
    /// [`Received::not_writers`](super::Received::not_writers)), and
    /// snapshots that include any are refused
    /// ([`ReceiveError::NotAWriter`](super::ReceiveError::NotAWriter)). Give every replica of the document the same set, so that
    /// all of them reject the same operations and still converge.
    pub writers: Option<BTreeSet<ActorId>>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            wal: WalOptions::new(SyncPolicy::batch()),
            max_op_size: 1 << 20,
            buffer_limit: 100_000,
            checkpoint_bytes: 64 << 20,
            max_checkpoint_size: 4 << 30,
            buffer_per_actor: 10_000,
            buffer_bytes: 64 << 20,
            document: None,
            writers: None,
        }
    }
}
