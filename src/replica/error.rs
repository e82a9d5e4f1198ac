//! The errors of replicas: one type per kind of operation, and
//! [`ReplicaError`], the union of them all.
//!
//! Which operation returns which is on [`ReplicaError`].

use std::path::PathBuf;

use super::{ActorId, KeyError};
use crate::wal;

/// A local failure: the log, a file of the replica directory, the actor
/// key, or an earlier failure that poisoned the replica. Never the fault
/// of a peer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The log failed (an I/O error, a full disk, damage, a lock held by
    /// another process).
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// A file of the replica directory is damaged or inconsistent.
    #[error("corrupt replica file {path}: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The actor key could not be read or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// State could not be serialized.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// An operation of this replica could not be encoded or signed, or a
    /// record of its own log is not a valid operation.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// An earlier failure left memory ahead of disk; reopen the replica.
    #[error("replica is poisoned by an earlier failure; reopen it")]
    Poisoned,
}

impl StorageError {
    /// The log's error, if the log failed.
    pub fn as_wal(&self) -> Option<&wal::Error> {
        match self {
            StorageError::Wal(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a replica (or a view of one) could not be opened: by
/// [`Replica::open`](super::Replica::open),
/// [`Replica::rebuild`](super::Replica::rebuild) and
/// [`ReplicaView::open`](super::ReplicaView::open).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The replica's files could not be read, created or recovered.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A document id over 4096 bytes or with control characters.
    #[error("invalid document id {0:?}: at most 4096 bytes, no control characters")]
    InvalidDocumentId(String),
    /// Finishing a retirement of the actor that opening found due (a
    /// rebuild, or a rewrite a crash interrupted) failed to write the
    /// actor's operations again under its successor.
    #[error(transparent)]
    Write(WriteError),
}

impl From<WriteError> for OpenError {
    fn from(e: WriteError) -> OpenError {
        match e {
            WriteError::Storage(s) => OpenError::Storage(s),
            other => OpenError::Write(other),
        }
    }
}

impl From<wal::Error> for OpenError {
    fn from(e: wal::Error) -> OpenError {
        OpenError::Storage(e.into())
    }
}

impl OpenError {
    /// The local failure, if that is what this is.
    pub fn as_storage(&self) -> Option<&StorageError> {
        match self {
            OpenError::Storage(e) | OpenError::Write(WriteError::Storage(e)) => Some(e),
            _ => None,
        }
    }
}

/// Why a local write failed: [`Replica::update`](super::Replica::update),
/// [`Replica::update_many`](super::Replica::update_many) and
/// [`Replica::retire_actor`](super::Replica::retire_actor).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The log or a file failed, or the replica is poisoned.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// This replica's actor is not in
    /// [`ReplicaOptions::writers`](super::ReplicaOptions::writers).
    #[error("operation ({actor}, {seq}) rejected: the actor may not write to this document")]
    NotAWriter {
        /// Author.
        actor: ActorId,
        /// Sequence number.
        seq: u64,
    },
    /// The document refused the operation (its `Document::check_op` or
    /// `Document::check_author` failed).
    #[error("operation ({actor}, {seq}) rejected: {reason}")]
    Rejected {
        /// Author.
        actor: ActorId,
        /// Sequence number.
        seq: u64,
        /// The document's reason.
        reason: String,
    },
    /// The actor has written `u64::MAX` operations (only a merged hostile
    /// snapshot can claim so many): retire it to write on.
    #[error("operation ({actor}, {seq}) rejected: this actor's sequence numbers are exhausted")]
    SequenceExhausted {
        /// The actor.
        actor: ActorId,
        /// Its last sequence number.
        seq: u64,
    },
    /// The operation is larger than `ReplicaOptions::max_op_size`.
    #[error("operation of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its encoded size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl From<wal::Error> for WriteError {
    fn from(e: wal::Error) -> WriteError {
        WriteError::Storage(e.into())
    }
}

/// A local operation that cannot be encoded or signed is a local failure.
impl From<EnvelopeError> for WriteError {
    fn from(e: EnvelopeError) -> WriteError {
        WriteError::Storage(e.into())
    }
}

/// What a peer sent that no honest peer sends: the sender is at fault.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Bytes that are not a valid operation, or an operation (or a
    /// succession certificate) whose signature is not its actor's.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The document refused the operation (its `Document::check_op` or
    /// `Document::check_author` failed).
    #[error("operation ({actor}, {seq}) rejected: {reason}")]
    Rejected {
        /// Author.
        actor: ActorId,
        /// Sequence number.
        seq: u64,
        /// The document's reason.
        reason: String,
    },
    /// A snapshot could not be merged (`Document::check_merge` failed, or
    /// it claims this replica's own actor again).
    #[error("snapshot rejected: {0}")]
    SnapshotRejected(String),
}

/// Why what a peer sent was not (fully) taken:
/// [`Replica::receive`](super::Replica::receive),
/// [`Replica::merge_snapshot`](super::Replica::merge_snapshot) and
/// [`Replica::learn_successions`](super::Replica::learn_successions).
///
/// [`Peer`](ReceiveError::Peer) is the sender's fault; every other variant
/// is not ([`is_peer_fault`](ReceiveError::is_peer_fault)).
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The sender sent something no honest peer sends.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Too many early operations are waiting for their predecessors.
    #[error(transparent)]
    BufferFull(#[from] BufferFull),
    /// A snapshot includes operations of an actor that may not write here.
    /// No fault of the sender: an honest peer's state may hold them
    /// (written before the writer list changed).
    #[error("operation ({actor}, {seq}) rejected: the actor may not write to this document")]
    NotAWriter {
        /// Author.
        actor: ActorId,
        /// Sequence number.
        seq: u64,
    },
    /// An operation is larger than this replica's
    /// `ReplicaOptions::max_op_size`. No fault of the sender: its limit
    /// may be larger.
    #[error("operation of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its encoded size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A write of this replica's own failed while taking what was
    /// received: the retirement of its actor that the operations called
    /// for (see [`Replica::retire_actor`](super::Replica::retire_actor))
    /// could not write the actor's operations again.
    #[error(transparent)]
    Write(WriteError),
    /// The log or a file failed, or the replica is poisoned.
    #[error(transparent)]
    Local(#[from] StorageError),
}

impl ReceiveError {
    /// True if the sender is at fault (a malformed or forged operation,
    /// one the document rejects, a snapshot that cannot be merged), as
    /// opposed to a local failure or a refusal no honest peer can avoid.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, ReceiveError::Peer(_))
    }
}

impl From<WriteError> for ReceiveError {
    fn from(e: WriteError) -> ReceiveError {
        match e {
            WriteError::Storage(s) => ReceiveError::Local(s),
            WriteError::TooLarge { len, limit } => ReceiveError::TooLarge { len, limit },
            other => ReceiveError::Write(other),
        }
    }
}

impl From<wal::Error> for ReceiveError {
    fn from(e: wal::Error) -> ReceiveError {
        ReceiveError::Local(e.into())
    }
}

/// An envelope that fails to decode or verify is what a sender sent: the
/// sender's fault. (This replica's own encoding failures are
/// [`StorageError::Envelope`].)
impl From<EnvelopeError> for ReceiveError {
    fn from(e: EnvelopeError) -> ReceiveError {
        ReceiveError::Peer(e.into())
    }
}

/// Any error of a replica: the union of [`OpenError`], [`WriteError`],
/// [`ReceiveError`] and [`StorageError`], flattened, for callers that
/// handle every operation's errors in one place. Each converts into it
/// with `?`; a variant keeps its kind's message.
///
/// | Operation | Error |
/// |---|---|
/// | [`Replica::open`], [`Replica::rebuild`], [`ReplicaView::open`] | [`OpenError`] |
/// | [`Replica::update`], [`Replica::update_many`], [`Replica::retire_actor`] | [`WriteError`] |
/// | [`Replica::receive`], [`Replica::merge_snapshot`], [`Replica::learn_successions`] | [`ReceiveError`] |
/// | [`Replica::checkpoint`], [`Replica::ops_since`], [`Replica::close`], [`checkpointed_lsn`] | [`StorageError`] |
///
/// Each of them holds a [`StorageError`] for what failed locally (the log,
/// a file, a damaged replica file). A [`ReceiveError`] tells the sender's
/// fault ([`ReceiveError::Peer`], see [`ReceiveError::is_peer_fault`]) from
/// a local failure. Every one converts into [`ReplicaError`] with `?`, for
/// callers that want a single type.
///
/// [`Replica::open`]: super::Replica::open
/// [`Replica::rebuild`]: super::Replica::rebuild
/// [`ReplicaView::open`]: super::ReplicaView::open
/// [`Replica::update`]: super::Replica::update
/// [`Replica::update_many`]: super::Replica::update_many
/// [`Replica::retire_actor`]: super::Replica::retire_actor
/// [`Replica::receive`]: super::Replica::receive
/// [`Replica::merge_snapshot`]: super::Replica::merge_snapshot
/// [`Replica::learn_successions`]: super::Replica::learn_successions
/// [`Replica::checkpoint`]: super::Replica::checkpoint
/// [`Replica::ops_since`]: super::Replica::ops_since
/// [`Replica::close`]: super::Replica::close
/// [`checkpointed_lsn`]: super::checkpointed_lsn
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The log failed.
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// A file of the replica directory is damaged or inconsistent.
    #[error("corrupt replica file {path}: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Bytes that are not a valid operation, or an operation whose
    /// signature is not its actor's (from a peer: [`PeerError::Envelope`]),
    /// or one of this replica's that could not be encoded
    /// ([`StorageError::Envelope`]).
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
    /// This replica's actor has no sequence numbers left
    /// ([`WriteError::SequenceExhausted`]).
    #[error("operation ({actor}, {seq}) rejected: this actor's sequence numbers are exhausted")]
    SequenceExhausted {
        /// The actor.
        actor: ActorId,
        /// Its last sequence number.
        seq: u64,
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

impl From<StorageError> for ReplicaError {
    fn from(e: StorageError) -> ReplicaError {
        match e {
            StorageError::Wal(e) => ReplicaError::Wal(e),
            StorageError::Corrupt { path, reason } => ReplicaError::Corrupt { path, reason },
            StorageError::Key(e) => ReplicaError::Key(e),
            StorageError::Encode(e) => ReplicaError::Encode(e),
            StorageError::Envelope(e) => ReplicaError::Envelope(e),
            StorageError::Poisoned => ReplicaError::Poisoned,
        }
    }
}

impl From<OpenError> for ReplicaError {
    fn from(e: OpenError) -> ReplicaError {
        match e {
            OpenError::Storage(e) => e.into(),
            OpenError::InvalidDocumentId(id) => ReplicaError::InvalidDocumentId(id),
            OpenError::Write(e) => e.into(),
        }
    }
}

impl From<WriteError> for ReplicaError {
    fn from(e: WriteError) -> ReplicaError {
        match e {
            WriteError::Storage(e) => e.into(),
            WriteError::NotAWriter { actor, seq } => ReplicaError::NotAWriter { actor, seq },
            WriteError::Rejected { actor, seq, reason } => ReplicaError::Rejected { actor, seq, reason },
            WriteError::SequenceExhausted { actor, seq } => ReplicaError::SequenceExhausted { actor, seq },
            WriteError::TooLarge { len, limit } => ReplicaError::TooLarge { len, limit },
        }
    }
}

impl From<PeerError> for ReplicaError {
    fn from(e: PeerError) -> ReplicaError {
        match e {
            PeerError::Envelope(e) => ReplicaError::Envelope(e),
            PeerError::Rejected { actor, seq, reason } => ReplicaError::Rejected { actor, seq, reason },
            PeerError::SnapshotRejected(reason) => ReplicaError::SnapshotRejected(reason),
        }
    }
}

impl From<ReceiveError> for ReplicaError {
    fn from(e: ReceiveError) -> ReplicaError {
        match e {
            ReceiveError::Peer(e) => e.into(),
            ReceiveError::BufferFull(e) => ReplicaError::BufferFull(e),
            ReceiveError::NotAWriter { actor, seq } => ReplicaError::NotAWriter { actor, seq },
            ReceiveError::TooLarge { len, limit } => ReplicaError::TooLarge { len, limit },
            ReceiveError::Write(e) => e.into(),
            ReceiveError::Local(e) => e.into(),
        }
    }
}

/// Result alias for replicas.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;

/// The buffer is full, in all or for this actor; the operation was not
/// kept. Ask the peer again later (anti-entropy resends what is still
/// missing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("causal buffer full ({held} operations held, limit {limit}); dropped ({actor}, {seq})")]
pub struct BufferFull {
    /// Author of the dropped operation.
    pub actor: ActorId,
    /// Its sequence number.
    pub seq: u64,
    /// Operations held (in all, or of this actor if that limit was hit).
    pub held: usize,
    /// The limit that was hit.
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::ActorKey;

    fn actor() -> ActorId {
        ActorKey::from_seed([7; 32]).actor()
    }

    fn storage() -> StorageError {
        StorageError::Corrupt { path: "x".into(), reason: "damaged".into() }
    }

    #[test]
    fn only_the_peer_variant_is_the_senders_fault() {
        let peer = [
            PeerError::Envelope(EnvelopeError::ZeroSeq),
            PeerError::Envelope(EnvelopeError::BadSignature { actor: actor(), seq: 1 }),
            PeerError::Rejected { actor: actor(), seq: 1, reason: "no".into() },
            PeerError::SnapshotRejected("no".into()),
        ];
        for e in peer {
            assert!(ReceiveError::from(e).is_peer_fault());
        }
        // A malformed envelope converts to the peer's fault.
        assert!(ReceiveError::from(EnvelopeError::ZeroSeq).is_peer_fault());
        let not_peer = [
            ReceiveError::Local(storage()),
            ReceiveError::Local(StorageError::Poisoned),
            ReceiveError::from(wal::Error::Poisoned("fsync".into())),
            ReceiveError::BufferFull(BufferFull { actor: actor(), seq: 9, held: 1, limit: 1 }),
            ReceiveError::NotAWriter { actor: actor(), seq: 3 },
            ReceiveError::from(WriteError::TooLarge { len: 2, limit: 1 }),
            ReceiveError::TooLarge { len: 2, limit: 1 },
            ReceiveError::from(WriteError::Rejected { actor: actor(), seq: 1, reason: "no".into() }),
        ];
        for e in not_peer {
            assert!(!e.is_peer_fault(), "{e:?}");
        }
        // A local write's storage failure is a local failure of the receive.
        assert!(matches!(ReceiveError::from(WriteError::Storage(storage())), ReceiveError::Local(_)));
    }

    #[test]
    fn every_kind_converts_into_the_union_with_question_mark() {
        fn open() -> Result<()> {
            Err(OpenError::InvalidDocumentId("x\n".into()))?
        }
        fn write() -> Result<()> {
            Err(WriteError::SequenceExhausted { actor: actor(), seq: u64::MAX })?
        }
        fn receive() -> Result<()> {
            Err(ReceiveError::Peer(PeerError::SnapshotRejected("no".into())))?
        }
        fn local() -> Result<()> {
            Err(storage())?
        }
        assert!(matches!(open(), Err(ReplicaError::InvalidDocumentId(_))));
        assert!(matches!(write(), Err(ReplicaError::SequenceExhausted { .. })));
        assert!(matches!(receive(), Err(ReplicaError::SnapshotRejected(_))));
        assert!(matches!(local(), Err(ReplicaError::Corrupt { .. })));
        // Storage failures nested in a write flatten to the same variant.
        let nested: ReplicaError = OpenError::from(WriteError::Storage(StorageError::Poisoned)).into();
        assert!(matches!(nested, ReplicaError::Poisoned));
        // The messages are the union's too.
        let e = WriteError::Rejected { actor: actor(), seq: 4, reason: "bad".into() };
        let text = e.to_string();
        assert_eq!(ReplicaError::from(e).to_string(), text);
    }
}

/// Why bytes are not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than the limit; not decoded at all.
    #[error("operation of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// Not the CBOR of an envelope of this document type.
    #[error("malformed operation: {0}")]
    Malformed(String),
    /// The operation could not be serialized.
    #[error("cannot encode operation: {0}")]
    Encode(String),
    /// Sequence numbers start at 1.
    #[error("operation has sequence number 0")]
    ZeroSeq,
    /// A succession certificate that is not `from`'s signature naming `to`
    /// in this document, or that is not on the first operation of `to`.
    #[error("succession of {to} from {from} is not validly signed for this document and position")]
    BadSuccession {
        /// The actor it says retired.
        from: ActorId,
        /// The actor it names.
        to: ActorId,
    },
    /// The signature is not the named actor's signature of this operation
    /// in this document.
    #[error("operation ({actor}, {seq}) has a bad signature")]
    BadSignature {
        /// The actor it claims.
        actor: ActorId,
        /// Its sequence number.
        seq: u64,
    },
}
