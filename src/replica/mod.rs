//! Durable CRDT replicas on the log.
//!
//! A [`Replica`] holds one [`Document`] (any `crdts` CmRDT + CvRDT with
//! serde, or one of the ready-made [`KvDoc`], [`SetDoc`], [`CounterDoc`],
//! [`RegisterDoc`]). Every operation is wrapped in an [`OpEnvelope`]
//! (actor, per-actor sequence number, op), written to the log and made
//! durable before it is applied. Remote operations go through a
//! [`CausalBuffer`] so each actor's operations apply in order. A
//! [`VersionVector`] says what was applied; [`Replica::ops_since`] answers
//! what a peer is missing, falling back to a snapshot when the log was
//! truncated by a checkpoint.

mod actor;
mod causal;
mod checkpoint;
mod clock;
mod docs;
mod document;
mod envelope;
mod kv;
mod machine;

pub use actor::{ActorId, ParseActorIdError};
pub use causal::{BufferFull, CausalBuffer, Offer};
pub use clock::VersionVector;
pub use docs::{CounterDoc, Hlc, RegisterDoc, SetDoc};
pub use document::{canonical_cbor, Document};
pub use envelope::{EnvelopeError, OpEnvelope};
pub use kv::{CausalContext, Dot, KvDoc, KvDocExt, KvOp};
pub use machine::{
    Catchup, Change, Origin, Received, Replica, ReplicaError, ReplicaOptions, Result, ACTOR_FILE, WAL_DIR,
};
