//! Building blocks of CRDT replicas on the log: actor identities, version
//! vectors, the operation envelope stored in log records, and per-actor
//! causal delivery.

mod actor;
mod causal;
mod clock;
mod docs;
mod document;
mod envelope;

pub use actor::{ActorId, ParseActorIdError};
pub use causal::{BufferFull, CausalBuffer, Offer};
pub use clock::VersionVector;
pub use docs::{CounterDoc, Hlc, KvDoc, KvDocExt, RegisterDoc, SetDoc};
pub use document::{canonical_cbor, Document};
pub use envelope::{EnvelopeError, OpEnvelope};
