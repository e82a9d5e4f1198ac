//! The errors of a node.

use std::path::PathBuf;

use crate::replica::{OpenError, ReceiveError, ReplicaError, StorageError, WriteError};
use crate::wal::IoError;

/// Errors of a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file operation failed.
    #[error(transparent)]
    Io(IoError),
    /// The identity file is unusable.
    #[error("identity {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the data directory could not be created, written or read.
    #[error(transparent)]
    Storage(#[from] crate::wal::Error),
    /// Another node holds the data directory (its lock file, `LOCK`): a
    /// data directory is one node's, since two nodes on it would share one
    /// peer id.
    #[error("data directory {} is locked by another node{}", dir.display(), holder(*pid))]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The process id the holder wrote in the lock file, if readable:
        /// for display only, it may be stale.
        pid: Option<u32>,
    },
    /// A replica failed (any of its operation errors, converted into the
    /// union [`ReplicaError`]).
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The document's replica failed (its log could not be written, for
    /// example on a full disk) and is being reopened
    /// ([`NodeEvent::DocumentFailed`](super::NodeEvent::DocumentFailed)); try again after
    /// [`NodeEvent::DocumentReopened`](super::NodeEvent::DocumentReopened).
    #[error("document {doc:?} is unavailable until it is reopened: {reason}")]
    DocUnavailable {
        /// The document.
        doc: String,
        /// The failure that took it down.
        reason: String,
    },
    /// A document name that cannot be used locally.
    #[error("bad document name {0:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with '.')")]
    BadDocName(String),
    /// The document is not open on this node.
    #[error("document {0:?} is not open")]
    UnknownDoc(String),
    /// The document is already open.
    #[error("document {0:?} is already open")]
    DocOpen(String),
    /// Listening or dialing failed.
    #[error("network: {0}")]
    Transport(String),
    /// The pre-shared key file is unusable.
    #[error("pre-shared key file {path}: {reason}")]
    Psk {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration is inconsistent or out of range.
    #[error("configuration: {0}")]
    Config(String),
    /// The node has shut down, or dropped the request (its closure panicked).
    #[error("the node has shut down or dropped the request")]
    Stopped,
}

/// Each kind of replica error converts, through [`ReplicaError`], so `?`
/// works on any replica operation.
macro_rules! from_replica {
    ($($t:ty),*) => {$(
        impl From<$t> for NodeError {
            fn from(e: $t) -> NodeError {
                NodeError::Replica(e.into())
            }
        }
    )*};
}

from_replica!(OpenError, WriteError, ReceiveError, StorageError);

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| " (its process id is unknown)".to_string(), |p| format!(" (process {p})"))
}
