//! What a replica hands out: changes to subscribers, catch-up answers,
//! the report of a receive, and equivocations.

use super::{ActorId, Document, OpEnvelope, VersionVector};

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written through this replica.
    Local,
    /// Received from a peer.
    Remote,
}

/// A change applied to the document, as seen by subscribers.
#[derive(Debug, Clone)]
pub enum Change<O> {
    /// One operation was applied (after it became durable).
    Op {
        /// Local or remote.
        origin: Origin,
        /// The operation.
        op: OpEnvelope<O>,
    },
    /// A peer's snapshot was merged; the version vector after the merge.
    Snapshot {
        /// The replica's version vector after merging.
        clock: VersionVector,
    },
}

/// What a peer with a given version vector is missing.
#[derive(Debug, Clone)]
pub enum Catchup<D: Document> {
    /// Operations to apply in this order; `more` if the byte budget cut the
    /// page short (ask again with the updated version vector).
    Ops {
        /// The page.
        ops: Vec<OpEnvelope<D::Operation>>,
        /// More remain.
        more: bool,
    },
    /// Some needed operations were truncated after a checkpoint: merge this
    /// state instead.
    Snapshot {
        /// Document state.
        state: D,
        /// Operations the state includes.
        clock: VersionVector,
    },
}

/// What [`Replica::receive`](super::Replica::receive) did with a set of operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Applied now (including buffered ones they unblocked).
    pub applied: usize,
    /// Held until their predecessors arrive.
    pub buffered: usize,
    /// Already known.
    pub duplicates: usize,
    /// Operations of actors not in [`ReplicaOptions::writers`](super::ReplicaOptions::writers), skipped
    /// (every replica with the same list skips the same ones; they are not
    /// an error, so peers whose logs still hold them are not at fault).
    pub not_writers: usize,
    /// Equivocations seen: validly signed operations for an (actor, seq)
    /// that already has a different one here. They were not applied (the
    /// first one stays); the actor's key signed two histories.
    pub equivocations: Vec<Equivocation>,
    /// Operations that waited for their predecessors, then were refused by
    /// the document once those arrived (`Document::check_op`), with the
    /// actor's later operations held behind them. Not an error: the peer
    /// that delivered the predecessor is not at fault (every replica
    /// refuses the same ones; their signing actor is).
    pub rejected: usize,
}

/// Proof that an actor signed two different operations for one sequence
/// number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    /// The actor whose key signed both.
    pub actor: ActorId,
    /// The sequence number.
    pub seq: u64,
}
