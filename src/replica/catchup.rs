//! Catch-up answers: what a peer with a given version vector is missing
//! (operations from the log, or a snapshot), and merging a peer's snapshot.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info_span, warn};

use super::checkpoint::{self, Checkpoint};
use super::index::Entry;
use super::run::{OwnedRun, Run, MAX_RUN_BYTES, MAX_RUN_OPS, PAGE_CUT_OPS, RUN_SPLIT_BYTES, RUN_SPLIT_OPS};
use super::succession::RetireReason;
use super::Signature;
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
    /// decoding them; `None` means a snapshot is needed.
    ///
    /// An actor's operations are taken in log order and cut into runs at
    /// signed heads: at the first head after [`RUN_SPLIT_OPS`] operations
    /// or [`RUN_SPLIT_BYTES`] bytes, and always at the last head before a
    /// run would pass [`MAX_RUN_OPS`] or [`MAX_RUN_BYTES`] (a stretch with
    /// no head within those limits cannot be served: a snapshot answers).
    /// Once the budget or [`PAGE_CUT_OPS`] operations are reached, each
    /// actor's operations are cut back to their last head; only if that
    /// leaves the page empty does one actor's run go on to its next head.
    /// So a page holds at most `PAGE_CUT_OPS + MAX_RUN_OPS` operations.
    #[allow(clippy::type_complexity)]
    pub(crate) fn runs_since(
        &self,
        theirs: &VersionVector,
        byte_budget: usize,
    ) -> Result<Option<(Vec<OwnedRun>, bool)>, StorageError> {
        self.check()?;
        let mut wanted: BTreeMap<ActorId, Taking> = BTreeMap::new();
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
            wanted.insert(*actor, Taking::new(*actor, from, have, before, entries));
        }
        let Some(&start) = lsns.first() else {
            return Ok(Some((Vec::new(), false)));
        };
        if start < self.wal.first_lsn() {
            return Ok(None);
        }
        let (mut used, mut count, mut cut) = (0usize, 0usize, false);
        let mut order: Vec<ActorId> = Vec::new();
        let corrupt =
            |lsn, e: String| StorageError::Envelope(EnvelopeError::Malformed(format!("log record {lsn}: {e}")));
        for record in self.wal.iter_from(start)? {
            let record = record?;
            if !lsns.contains(&record.lsn) {
                continue;
            }
            let run = Run::from_block(&record.payload).map_err(|e| corrupt(record.lsn, e))?;
            if !wanted.contains_key(&run.actor) {
                continue;
            }
            for (i, bytes) in run.ops.iter().enumerate() {
                let Some(w) = wanted.get_mut(&run.actor) else { break };
                let seq = run.first + i as u64;
                if w.stop || seq != w.next || seq > w.have {
                    continue;
                }
                let Some(entry) = w.entries.get((seq - w.from) as usize).copied() else {
                    return Err(corrupt(record.lsn, format!("operation {seq} of {} is not indexed", run.actor)));
                };
                // The operation applied is the one in this record (after a
                // fork rewrite, an older record may hold a disowned one).
                if entry.lsn != record.lsn {
                    continue;
                }
                if w.would_overflow(bytes.len()) && !w.split_at_head() {
                    // No head within a run's limits: a snapshot answers.
                    return Ok(None);
                }
                if !order.contains(&run.actor) {
                    order.push(run.actor);
                }
                let sig = if entry.signed && i + 1 == run.ops.len() { run.sig } else { None };
                if seq == 1 {
                    w.open.succeeds = run.succeeds;
                }
                w.take(bytes, sig);
                used += bytes.len() + 1;
                count += 1;
                if cut && (w.head.is_some() || !w.done.is_empty()) {
                    // The one run that went on past the cut reached its head.
                    w.split_at_head();
                    w.stop = true;
                }
                if !cut && (used >= byte_budget || count >= PAGE_CUT_OPS) {
                    cut = true;
                    cut_back(&mut wanted);
                }
            }
            if cut && wanted.values().all(|w| w.stop) {
                break;
            }
        }
        let mut more = false;
        let mut out = Vec::new();
        for actor in order {
            let Some(mut w) = wanted.remove(&actor) else { continue };
            if !w.open.ops.is_empty() && !w.split_at_head() {
                // The log ended before the head: it changed under us.
                return Err(StorageError::Envelope(EnvelopeError::Malformed(format!(
                    "the log holds no signed head after operation {} of {actor}",
                    w.next - 1
                ))));
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
        // A snapshot carries no signatures: the heads it names are not
        // checked against (an actor's next operation is accepted whatever
        // it follows), so a lying snapshot cannot make an honest actor look
        // like an equivocator. Its actors' heads here become unknown.
        let mut merged_heads = self.heads.clone();
        for (actor, &seq) in clock.iter() {
            if seq > self.clock.get(actor) {
                merged_heads.remove(actor);
            }
        }
        let lsn = self.wal.sync()?;
        let cp = Checkpoint {
            lsn,
            clock: merged_clock,
            state: merged,
            successions: self.succession_list(),
            heads: merged_heads.iter().map(|(a, h)| (*a, *h)).collect(),
        };
        checkpoint::write(&self.files, &self.dir, &cp, None)?;
        // Only once the checkpoint is durable.
        self.heads = merged_heads;
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

/// One actor's operations being taken for a page: the runs made, and the
/// open run after them with its last signed head.
struct Taking {
    from: u64,
    have: u64,
    entries: Vec<Entry>,
    done: Vec<OwnedRun>,
    open: OwnedRun,
    open_bytes: usize,
    /// The open run's last signed operation: how many operations and bytes
    /// of it up to there, and the signature.
    head: Option<(usize, usize, Signature)>,
    /// The next sequence number to take; operations taken so far.
    next: u64,
    taken: usize,
    /// Take nothing more for this page.
    stop: bool,
}

impl Taking {
    fn new(actor: ActorId, from: u64, have: u64, before: ChainHash, entries: Vec<Entry>) -> Taking {
        let open = OwnedRun { actor, first: from, prev: before, succeeds: None, ops: Vec::new(), sig: None };
        Taking {
            from,
            have,
            entries,
            done: Vec::new(),
            open,
            open_bytes: 0,
            head: None,
            next: from,
            taken: 0,
            stop: false,
        }
    }

    /// Whether one more operation of `len` bytes would make the open run
    /// longer than a receiver accepts under one signature.
    fn would_overflow(&self, len: usize) -> bool {
        self.open.ops.len() + 1 > MAX_RUN_OPS || self.open_bytes + len > MAX_RUN_BYTES
    }

    fn take(&mut self, bytes: &[u8], sig: Option<Signature>) {
        self.open.ops.push(bytes.to_vec());
        self.open_bytes += bytes.len();
        self.next += 1;
        self.taken += 1;
        if let Some(sig) = sig {
            self.head = Some((self.open.ops.len(), self.open_bytes, sig));
            if self.open.ops.len() >= RUN_SPLIT_OPS || self.open_bytes >= RUN_SPLIT_BYTES {
                self.split_at_head();
            }
        }
    }

    /// Closes the open run at its last signed head; the operations after
    /// it open the next run. False if it has no head.
    fn split_at_head(&mut self) -> bool {
        let Some((n, bytes, sig)) = self.head.take() else { return false };
        let tail = self.open.ops.split_off(n);
        let head_seq = self.open.first + n as u64 - 1;
        let prev = self.entries.get((head_seq - self.from) as usize).map_or(ChainHash::ZERO, |e| e.hash);
        let next = OwnedRun { actor: self.open.actor, first: head_seq + 1, prev, succeeds: None, ops: tail, sig: None };
        let mut closed = std::mem::replace(&mut self.open, next);
        closed.sig = Some(sig);
        self.done.push(closed);
        self.open_bytes -= bytes;
        true
    }
}

/// At a page's cut: every actor's operations end at their last signed
/// head. If no actor has one yet, the first with operations taken keeps its
/// run open and goes on to its next head (the others stop).
fn cut_back(wanted: &mut BTreeMap<ActorId, Taking>) {
    let any_head = wanted.values().any(|w| !w.done.is_empty() || w.head.is_some());
    let mut going_on = false;
    for w in wanted.values_mut() {
        if !any_head && !going_on && !w.open.ops.is_empty() {
            going_on = true;
            continue;
        }
        w.split_at_head();
        let n = w.open.ops.len();
        w.next -= n as u64;
        w.taken -= n;
        w.open.ops.clear();
        w.open_bytes = 0;
        w.stop = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{ActorKey, KvDoc, KvOp, OpEnvelope, ReplicaOptions};

    fn open(dir: &std::path::Path) -> Replica<KvDoc> {
        Replica::open(dir, ReplicaOptions::default()).unwrap()
    }

    fn check_page(runs: &[OwnedRun]) {
        let total: usize = runs.iter().map(|r| r.ops.len()).sum();
        assert!(total <= 65_536, "a page of {total} operations");
        for r in runs {
            assert!(r.sig.is_some(), "a run without its head");
            assert!(r.ops.len() <= MAX_RUN_OPS, "a run of {} operations", r.ops.len());
            assert!(r.ops.iter().map(Vec::len).sum::<usize>() <= MAX_RUN_BYTES, "a run over the byte limit");
        }
    }

    #[test]
    fn a_run_never_passes_what_a_receiver_accepts_under_one_signature() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        r.update(|d, a| d.put_op(a, "a", "x")).unwrap();
        let big = "v".repeat(1_048_560);
        r.update(|d, a| d.put_op(a, "b", &big)).unwrap();
        let (runs, more) = r.runs_since(&VersionVector::default(), 8 << 20).unwrap().unwrap();
        check_page(&runs);
        assert!(!more);
        assert_eq!(runs.len(), 2, "split at the first operation's head");
    }

    #[test]
    fn many_actors_interleaved_still_make_pages_a_receiver_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        // 7 actors' runs of 600 operations, each signed only at its end,
        // received interleaved one operation at a time: every block the
        // replica logs ends unsigned but the last of each actor. Small
        // budgets cut pages where no actor has a head yet.
        const N: u64 = 600;
        let keys: Vec<ActorKey> = (0..7u8).map(|i| ActorKey::from_seed([i + 1; 32])).collect();
        let mut chains: Vec<Vec<OpEnvelope<KvOp>>> = Vec::new();
        for key in &keys {
            let mut prev = ChainHash::ZERO;
            let mut out = Vec::new();
            for seq in 1..=N {
                let op = KvOp::Del { key: String::new(), seen: Vec::new() };
                let mut env = OpEnvelope::encode::<KvDoc>(&r.chain, key.actor(), seq, prev, op, None).unwrap();
                if seq == N {
                    env.sign(key);
                }
                prev = env.hash();
                out.push(env);
            }
            chains.push(out);
        }
        let mut batch = Vec::new();
        for i in 0..N as usize {
            for c in &chains {
                batch.push(c[i].clone());
            }
        }
        assert_eq!(r.receive(batch).unwrap().applied, 7 * N as usize);
        // A fresh peer pulls page after page: each acceptable, and it gets
        // everything.
        let mut theirs = VersionVector::default();
        for _ in 0..100 {
            let (runs, more) = r.runs_since(&theirs, 500).unwrap().unwrap();
            check_page(&runs);
            // Past the cut, one actor's run at most goes on to its head.
            let ops: usize = runs.iter().map(|r| r.ops.len()).sum();
            assert!(ops <= 500 + N as usize, "{ops} operations for a budget of 500 bytes");
            assert!(!runs.is_empty(), "a page with nothing in it");
            for run in &runs {
                assert_eq!(run.first, theirs.get(&run.actor) + 1);
                theirs.observe(run.actor, run.first + run.ops.len() as u64 - 1);
            }
            if !more {
                break;
            }
        }
        assert!(theirs.covers(r.clock()), "{theirs:?}");
    }
}
