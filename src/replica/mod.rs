//! Durable CRDT replicas on the log.
//!
//! A [`Replica`] holds one [`Document`] (any `crdts` CmRDT + CvRDT with
//! serde, or one of the ready-made [`KvDoc`], [`SetDoc`], [`CounterDoc`],
//! [`RegisterDoc`]). Every operation is wrapped in an [`OpEnvelope`]
//! (actor, per-actor sequence number, op, its place in the actor's hash
//! chain and, on a run's last operation, the actor's signature), written to
//! the log and made durable before it is applied. The actor id is the
//! public half of the replica's [`ActorKey`]; remote operations are checked
//! against it before they are buffered or logged. Remote operations wait in a
//! bounded buffer until each actor's earlier operations have applied. A
//! [`VersionVector`] says what was applied; [`Replica::ops_since`] answers
//! what a peer is missing, falling back to a snapshot when the log was
//! truncated by a checkpoint.
//!
//! Each kind of operation has its own error: [`OpenError`], [`WriteError`],
//! [`ReceiveError`] (which tells a peer's fault, [`PeerError`], from a
//! local failure) and [`StorageError`] for what failed locally.
//! [`ReplicaError`] is their union; its documentation lists which
//! operation returns which.

mod actor;
mod catchup;
pub(crate) mod causal;
pub(crate) mod chain;
mod change;
mod checkpoint;
mod checkpointing;
mod clock;
pub(crate) mod dir;
mod docs;
pub(crate) mod document;
pub mod engines;
pub(crate) mod envelope;
mod error;
mod group;
mod index;
mod key;
mod kv;
pub(crate) mod legacy;
mod load;
mod options;
mod proof;
mod receive;
pub(crate) mod varint;
// The `Replica` type, named as what it is; the modules around it add the
// rest of its methods.
#[allow(clippy::module_inception)]
mod replica;
mod retire;
pub(crate) mod run;
mod succession;
mod verify;
mod view;
mod write;

pub use actor::{ActorId, ParseActorIdError, ACTOR_ID_LEN};
pub(crate) use causal::{CausalBuffer, Offer};
pub use chain::{ChainHash, ChainKey};
pub use change::{Catchup, Change, Equivocation, Origin, Received};
pub use checkpoint::checkpointed_lsn;
pub use clock::VersionVector;
pub use dir::{ACTOR_FILE, WAL_DIR};
pub use docs::{CounterDoc, Hlc, RegisterDoc, SetDoc};
pub use document::{canonical_cbor, Document, OpContext};
pub use envelope::OpEnvelope;
pub use error::{
    BufferFull, EnvelopeError, OpenError, PeerError, ReceiveError, ReplicaError, Result, StorageError, WriteError,
};
pub use key::{ActorKey, KeyError, Signature};
pub use kv::{CausalContext, Dot, KvDoc, KvOp};
pub use load::Recovered;
pub use options::ReplicaOptions;
pub use proof::{EquivocationProof, SignedRun};
pub use replica::Replica;
pub use succession::{request_retirement, RetireReason, Succession, MAX_SUCCESSIONS};
pub use view::ReplicaView;
