//! Catch-up answers: what a peer with a given version vector is missing
//! (operations from the log, or a snapshot), and merging a peer's snapshot.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info_span, warn};

use super::checkpoint::{self, Checkpoint};
use super::succession::RetireReason;
use super::run::{OwnedRun, Run};
use super::{
    ActorId, Catchup, ChainHash, Change, Document, EnvelopeError, PeerError, ReceiveError, Replica, StorageError,
    VersionVector, WriteError,
};

impl<D: Document> Replica<D> {
    /// What a peer whose version vector is `theirs` is missing: operations
    /// in an order it can apply, at most about `byte_budget` encoded bytes
    /// (always at least one run), or a snapshot if some were truncated.
    pub fn ops_since(&self, theirs: &VersionVector, byte_budget: usize) -> Result<Catchup<D>, StorageError> {
        match self.runs_since(theirs, byte_budget)? {
            Some((runs, more)) => {
                let mut ops = Vec::new();
                for run in &runs {
                    ops.extend(run.as_run().envelopes::<D>(&self.chain)?);
                }
                Ok(Catchup::Ops { ops, more })
            }
            None => Ok(self.snapshot()),
        }
    }

    /// Like [`ops_since`](Self::ops_since), as runs of the operations'
    /// bytes as stored, one per actor, each ending at a signed head,
    /// ready to send without decoding them; `None` means a snapshot is
    /// needed. Past the budget, an actor's run goes on to its next signed
    /// operation (a stretch without one is at most one page: it arrived
    /// in one).
    #[allow(clippy::type_complexity)]
    pub(crate) fn runs_since(
        &self,
        theirs: &VersionVector,
        byte_budget: usize,
    ) -> Result<Option<(Vec<OwnedRun>, bool)>, StorageError> {
        self.check()?;
        // Per actor: the operations wanted, and the run being built.
        let mut wanted: BTreeMap<ActorId, (u64, u64)> = BTreeMap::new();
        let mut runs: BTreeMap<ActorId, OwnedRun> = BTreeMap::new();
        let mut lsns = BTreeSet::new();
        for (actor, &have) in self.clock.iter() {
            let from = theirs.get(actor).saturating_add(1);
            if from > have {
                continue;
            }
            let Some((before, entries)) = self.index.range(actor, from, have) else {
                return Ok(None);
            };
            // Its last operation here is no signed head (a later one was
            // refused): nothing can prove the run to the peer.
            if !entries.last().is_some_and(|e| e.signed) {
                return Ok(None);
            }
            lsns.extend(entries.iter().map(|e| e.lsn));
            wanted.insert(*actor, (from, have));
            runs.insert(
                *actor,
                OwnedRun { actor: *actor, first: from, prev: before, succeeds: None, ops: Vec::new(), sig: None },
            );
        }
        let Some(&start) = lsns.first() else {
            return Ok(Some((Vec::new(), false)));
        };
        if start < self.wal.first_lsn() {
            return Ok(None);
        }
        let mut used = 0usize;
        // Past the budget, only actors whose run lacks its head go on.
        let mut cut = false;
        let mut order: Vec<ActorId> = Vec::new();
        for record in self.wal.iter_from(start)? {
            let record = record?;
            if !lsns.contains(&record.lsn) {
                continue;
            }
            let run = Run::from_block(&record.payload).map_err(|e| {
                StorageError::Envelope(EnvelopeError::Malformed(format!("log record {}: {e}", record.lsn)))
            })?;
            let (Some(&(from, have)), Some(out)) = (wanted.get(&run.actor), runs.get_mut(&run.actor)) else {
                continue;
            };
            let next = out.first + out.ops.len() as u64;
            let open = !cut || (!out.ops.is_empty() && out.sig.is_none());
            if !open {
                continue;
            }
            for (i, bytes) in run.ops.iter().enumerate() {
                let seq = run.first + i as u64;
                if seq < next.max(from) || seq > have {
                    continue;
                }
                if seq == 1 {
                    out.succeeds = run.succeeds;
                }
                if out.ops.is_empty() {
                    order.push(run.actor);
                }
                out.ops.push(bytes.to_vec());
                used += bytes.len();
                out.sig = if i + 1 == run.ops.len() { run.sig } else { None };
            }
            if used >= byte_budget {
                cut = true;
            }
            if cut && runs.values().all(|r| r.ops.is_empty() || r.sig.is_some()) {
                break;
            }
        }
        let mut more = false;
        let mut out = Vec::new();
        for actor in order {
            if let Some(run) = runs.remove(&actor) {
                let (_, have) = wanted[&actor];
                more |= run.first + (run.ops.len() as u64) <= have;
                if run.sig.is_none() {
                    // The log ended before the head: it changed under us.
                    return Err(StorageError::Envelope(EnvelopeError::Malformed(format!(
                        "the log holds no signed head after operation {} of {actor}",
                        run.first + run.ops.len() as u64 - 1
                    ))));
                }
                out.push(run);
            }
        }
        more |= !runs.is_empty();
        Ok(Some((out, more)))
    }

    /// The chain heads a snapshot of this replica carries.
    pub(crate) fn chain_heads(&self) -> Vec<(ActorId, ChainHash)> {
        self.head_list()
    }

    fn snapshot(&self) -> Catchup<D> {
        Catchup::Snapshot { state: self.doc.clone(), clock: self.clock.clone() }
    }

    /// Merges a peer's snapshot (state + the operations it includes). The
    /// merged state is checkpointed before it becomes visible.
    pub fn merge_snapshot(&mut self, state: D, clock: VersionVector) -> Result<(), ReceiveError> {
        self.merge_snapshot_heads(state, clock, Vec::new())
    }

    /// [`merge_snapshot`](Self::merge_snapshot) with the chain heads the
    /// snapshot's sender gave: the hash each actor's next operation must
    /// follow (where not given, it is not checked).
    pub(crate) fn merge_snapshot_heads(
        &mut self,
        state: D,
        clock: VersionVector,
        heads: Vec<(ActorId, ChainHash)>,
    ) -> Result<(), ReceiveError> {
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
        let given: BTreeMap<ActorId, ChainHash> = heads.into_iter().collect();
        for (actor, &seq) in clock.iter() {
            if seq > self.clock.get(actor) {
                match given.get(actor) {
                    Some(h) => self.heads.insert(*actor, *h),
                    None => self.heads.remove(actor),
                };
            }
        }
        let lsn = self.wal.sync()?;
        let cp = Checkpoint {
            lsn,
            clock: merged_clock,
            state: merged,
            successions: self.succession_list(),
            heads: self.head_list(),
        };
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
