//! Catch-up answers: what a peer with a given version vector is missing
//! (operations from the log, or a snapshot), and merging a peer's snapshot.

use std::collections::BTreeSet;

use tracing::{info_span, warn};

use super::checkpoint::{self, Checkpoint};
use super::succession::RetireReason;
use super::{
    Catchup, Change, Document, OpEnvelope, PeerError, ReceiveError, Replica, StorageError, VersionVector, WriteError,
};

impl<D: Document> Replica<D> {
    /// What a peer whose version vector is `theirs` is missing: operations
    /// in an order it can apply, at most about `byte_budget` encoded bytes
    /// (always at least one operation), or a snapshot if some were truncated.
    pub fn ops_since(&self, theirs: &VersionVector, byte_budget: usize) -> Result<Catchup<D>, StorageError> {
        match self.encoded_ops_since(theirs, byte_budget)? {
            Some((records, more)) => {
                let mut ops = Vec::with_capacity(records.len());
                for bytes in records {
                    ops.push(OpEnvelope::decode(&bytes, self.opts.max_op_size)?);
                }
                Ok(Catchup::Ops { ops, more })
            }
            None => Ok(self.snapshot()),
        }
    }

    /// Like [`ops_since`](Self::ops_since), but the operations are returned
    /// as stored (each the encoding [`OpEnvelope::encode`] gives), ready to
    /// send without decoding and re-encoding them; `None` means a snapshot
    /// is needed.
    #[allow(clippy::type_complexity)]
    pub(crate) fn encoded_ops_since(
        &self,
        theirs: &VersionVector,
        byte_budget: usize,
    ) -> Result<Option<(Vec<Vec<u8>>, bool)>, StorageError> {
        self.check()?;
        let mut wanted = BTreeSet::new();
        for (actor, &have) in self.clock.iter() {
            let from = theirs.get(actor).saturating_add(1);
            if from > have {
                continue;
            }
            let Some(lsns) = self.index.lsns(actor, from, have) else {
                return Ok(None);
            };
            wanted.extend(lsns);
        }
        let Some(&start) = wanted.first() else {
            return Ok(Some((Vec::new(), false)));
        };
        if start < self.wal.first_lsn() {
            return Ok(None);
        }
        let mut ops = Vec::new();
        let mut used = 0usize;
        for record in self.wal.iter_from(start)? {
            let record = record?;
            if !wanted.contains(&record.lsn) {
                continue;
            }
            if !ops.is_empty() && used + record.payload.len() > byte_budget {
                break;
            }
            used += record.payload.len();
            ops.push(record.payload);
            if ops.len() == wanted.len() {
                break;
            }
        }
        let more = ops.len() < wanted.len();
        Ok(Some((ops, more)))
    }

    fn snapshot(&self) -> Catchup<D> {
        Catchup::Snapshot { state: self.doc.clone(), clock: self.clock.clone() }
    }

    /// Merges a peer's snapshot (state + the operations it includes). The
    /// merged state is checkpointed before it becomes visible.
    pub fn merge_snapshot(&mut self, state: D, clock: VersionVector) -> Result<(), ReceiveError> {
        self.check()?;
        let span = info_span!("replica_merge_snapshot", actors = clock.len());
        let _g = span.enter();
        self.doc.check_merge(&state).map_err(PeerError::SnapshotRejected)?;
        // Not `SnapshotRejected`: an honest peer's state may hold them
        // (written before the list changed), so it is no fault.
        if let Some((actor, seq)) = clock.iter().find(|(a, s)| self.check_writer(a, **s).is_err()) {
            return Err(ReceiveError::NotAWriter { actor: *actor, seq: *seq });
        }
        if clock.get(&self.actor) > self.clock.get(&self.actor) {
            // A peer holds more of this replica's actor than it does: the
            // replica was restored or rolled back. Never write under it
            // again. What it wrote since it opened is rewritten first, so
            // the merge does not take those operations for ones the peer
            // deleted. A snapshot's clock is not signed: once per open, so
            // lying snapshots cannot make it retire actor after actor.
            if self.snapshot_retired {
                return Err(PeerError::SnapshotRejected(format!(
                    "it claims {} operations of this replica's actor, which has {}, again",
                    clock.get(&self.actor),
                    self.clock.get(&self.actor)
                ))
                .into());
            }
            let (had, seen) = (self.clock.get(&self.actor), clock.get(&self.actor));
            self.behind_own(RetireReason::Behind { had, seen }, had);
            self.complete_retire()?;
            self.snapshot_retired = true;
        }
        if self.clock.covers(&clock) {
            // A late or repeated snapshot: nothing new, no checkpoint to pay for.
            return Ok(());
        }
        let mut merged = self.doc.clone();
        merged.merge(state);
        let mut merged_clock = self.clock.clone();
        merged_clock.merge(&clock);
        let lsn = self.wal.sync()?;
        let cp = Checkpoint { lsn, clock: merged_clock, state: merged, successions: self.succession_list() };
        checkpoint::write(&self.files, &self.dir, &cp, None)?;
        self.doc = cp.state;
        self.clock = cp.clock;
        self.after_checkpoint(lsn)?;
        let clock = self.clock.clone();
        self.notify(|| Change::Snapshot { clock });
        // Buffered operations the snapshot made ready (or redundant).
        let held: Vec<_> = self.buffer.gaps(&self.clock).into_iter().map(|(a, _)| a).collect();
        let mut released = Vec::new();
        for actor in held {
            released.extend(self.buffer.take_actor(&actor));
        }
        if !released.is_empty() {
            match self.receive(released) {
                Ok(_) => {}
                // Their actor's doing, not the snapshot's: the snapshot
                // stays merged; a refused operation is dropped, and its
                // actor's later ones wait for it again.
                Err(
                    e @ (ReceiveError::Peer(PeerError::Rejected { .. })
                    | ReceiveError::TooLarge { .. }
                    | ReceiveError::Write(WriteError::Rejected { .. } | WriteError::SequenceExhausted { .. })),
                ) if !self.poisoned => {
                    warn!(error = %e, "an operation held until a snapshot was refused");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
