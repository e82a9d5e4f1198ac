//! The error type of replicas.

use std::path::PathBuf;

use super::{ActorId, BufferFull, EnvelopeError, KeyError};
use crate::wal;

/// Errors of a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The log failed.
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// A file operation outside the log failed.
    #[error(transparent)]
    Io(wal::IoError),
    /// A file of the replica directory is damaged or inconsistent.
    #[error("corrupt replica file {path}: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Bytes that are not a valid operation, or an operation whose
    /// signature is not its actor's.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The actor key could not be read or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The operation's actor is not in [`ReplicaOptions::writers`](super::ReplicaOptions::writers).
    #[error("operation ({actor}, {seq}) rejected: the actor may not write to this document")]
    NotAWriter {
        /// Author.
        actor: ActorId,
        /// Sequence number.
        seq: u64,
    },
    /// State or operation could not be serialized.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The document refused the operation (its `Document::check_op` failed).
    #[error("operation ({actor}, {seq}) rejected: {reason}")]
    Rejected {
        /// Author.
        actor: ActorId,
        /// Sequence number.
        seq: u64,
        /// The document's reason.
        reason: String,
    },
    /// A snapshot could not be merged (`Document::check_merge` failed).
    #[error("snapshot rejected: {0}")]
    SnapshotRejected(String),
    /// Too many early operations are waiting.
    #[error(transparent)]
    BufferFull(#[from] BufferFull),
    /// An operation is larger than `ReplicaOptions::max_op_size`.
    #[error("operation of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its encoded size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A document id over 4096 bytes or with control characters.
    #[error("invalid document id {0:?}: at most 4096 bytes, no control characters")]
    InvalidDocumentId(String),
    /// An earlier failure left memory ahead of disk; reopen the replica.
    #[error("replica is poisoned by an earlier failure; reopen it")]
    Poisoned,
}

/// Result alias for replicas.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;
