//! Catch-up answers: what a peer with a given version vector is missing
//! (operations from the log, or a snapshot), and merging a peer's snapshot.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info_span, warn};

use super::checkpoint::{self, Checkpoint};
use super::index::Entry;
use super::run::{OwnedRun, Run, PAGE_CUT_OPS, RUN_SPLIT_BYTES, RUN_SPLIT_OPS};
use super::succession::RetireReason;
use super::{
    ActorId, Catchup, ChainHash, ChainKey, Change, Document, EnvelopeError, PeerError, ReceiveError, Replica,
    StorageError, VersionVector, WriteError,
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
    /// bytes as stored, each ending at a signed head, ready to send without
    /// decoding them; `None` means a snapshot is needed. An actor's
    /// operations are one run, split at signed heads every
    /// [`RUN_SPLIT_OPS`] operations or [`RUN_SPLIT_BYTES`] bytes. Past the
    /// budget (or [`PAGE_CUT_OPS`] operations), an actor's run goes on to
    /// its next signed operation: a stretch without one is at most one
    /// received run ([`MAX_RUN_OPS`]).
    #[allow(clippy::type_complexity)]
    pub(crate) fn runs_since(
        &self,
        theirs: &VersionVector,
        byte_budget: usize,
    ) -> Result<Option<(Vec<OwnedRun>, bool)>, StorageError> {
        self.check()?;
        struct Wanted {
            from: u64,
            have: u64,
            entries: Vec<Entry>,
            done: Vec<OwnedRun>,
            open: OwnedRun,
            /// The next sequence number to take, and the open run's bytes.
            next: u64,
            open_bytes: usize,
        }
        let mut wanted: BTreeMap<ActorId, Wanted> = BTreeMap::new();
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
            let open =
                OwnedRun { actor: *actor, first: from, prev: before, succeeds: None, ops: Vec::new(), sig: None };
            wanted.insert(*actor, Wanted { from, have, entries, done: Vec::new(), open, next: from, open_bytes: 0 });
        }
        let Some(&start) = lsns.first() else {
            return Ok(Some((Vec::new(), false)));
        };
        if start < self.wal.first_lsn() {
            return Ok(None);
        }
        let (mut used, mut count) = (0usize, 0usize);
        // Past the budget, only actors whose run lacks its head go on.
        let mut cut = false;
        let mut order: Vec<ActorId> = Vec::new();
        let corrupt =
            |lsn, e: String| StorageError::Envelope(EnvelopeError::Malformed(format!("log record {lsn}: {e}")));
        for record in self.wal.iter_from(start)? {
            let record = record?;
            if !lsns.contains(&record.lsn) {
                continue;
            }
            let run = Run::from_block(&record.payload).map_err(|e| corrupt(record.lsn, e))?;
            let Some(w) = wanted.get_mut(&run.actor) else { continue };
            for (i, bytes) in run.ops.iter().enumerate() {
                let seq = run.first + i as u64;
                if seq != w.next || seq > w.have {
                    continue;
                }
                if cut && (w.open.ops.is_empty() || w.open.sig.is_some()) {
                    break;
                }
                let Some(entry) = w.entries.get((seq - w.from) as usize) else {
                    return Err(corrupt(record.lsn, format!("operation {seq} of {} is not indexed", run.actor)));
                };
                if seq == 1 {
                    w.open.succeeds = run.succeeds;
                }
                if w.open.ops.is_empty() && w.done.is_empty() {
                    order.push(run.actor);
                }
                w.open.ops.push(bytes.to_vec());
                w.next += 1;
                w.open_bytes += bytes.len();
                used += bytes.len() + 1;
                count += 1;
                w.open.sig = if entry.signed && i + 1 == run.ops.len() { run.sig } else { None };
                let big = w.open.ops.len() >= RUN_SPLIT_OPS || w.open_bytes >= RUN_SPLIT_BYTES;
                if w.open.sig.is_some() && big {
                    let prev = entry.hash;
                    let next_run =
                        OwnedRun { actor: run.actor, first: seq + 1, prev, succeeds: None, ops: Vec::new(), sig: None };
                    w.done.push(std::mem::replace(&mut w.open, next_run));
                    w.open_bytes = 0;
                }
            }
            if used >= byte_budget || count >= PAGE_CUT_OPS {
                cut = true;
            }
            if cut && wanted.values().all(|w| w.open.ops.is_empty() || w.open.sig.is_some()) {
                break;
            }
        }
        let mut more = false;
        let mut out = Vec::new();
        for actor in order {
            let Some(mut w) = wanted.remove(&actor) else { continue };
            if !w.open.ops.is_empty() {
                if w.open.sig.is_none() {
                    // The log ended before the head: it changed under us.
                    return Err(StorageError::Envelope(EnvelopeError::Malformed(format!(
                        "the log holds no signed head after operation {} of {actor}",
                        w.open.first + w.open.ops.len() as u64 - 1
                    ))));
                }
                w.done.push(w.open);
            }
            let last = w.done.last().map_or(0, |r| r.first + r.ops.len() as u64 - 1);
            more |= last < w.have;
            out.extend(w.done);
        }
        more |= !wanted.is_empty();
        Ok(Some((out, more)))
    }

    /// The document's chain hashing keys.
    pub(crate) fn chain_key(&self) -> &ChainKey {
        &self.chain
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
            // Checked when they were held (a held run may have lost its
            // head to a full buffer).
            match self.receive_checked(released, true) {
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
