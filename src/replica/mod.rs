//! Building blocks of CRDT replicas on the log: actor identities, version
//! vectors, the operation envelope stored in log records, and per-actor
//! causal delivery.

mod actor;
mod causal;
mod clock;
mod envelope;

pub use actor::{ActorId, ParseActorIdError};
pub use causal::{BufferFull, CausalBuffer, Offer};
pub use clock::VersionVector;
pub use envelope::{EnvelopeError, OpEnvelope};
