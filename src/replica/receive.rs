//! The remote receive pipeline: operations from peers are verified,
//! admitted (new, repeated, conflicting, or not a writer's), held until
//! their predecessors arrive, then logged, applied and announced.

use std::collections::BTreeSet;

use tracing::warn;

use super::proof::{EquivocationProof, SignedRun};
use super::run::Run;
use super::verify::verify_runs;
use super::ActorId;
use super::{
    Document, EnvelopeError, Equivocation, Offer, OpEnvelope, Origin, PeerError, ReceiveError, Received, Replica,
    StorageError,
};
use crate::wal::Lsn;

/// Most equivocations kept for [`Replica::take_equivocations`].
const MAX_HELD_EQUIVOCATIONS: usize = 1024;
/// Largest equivocation proof kept (both runs' operation bytes).
const MAX_PROOF_BYTES: usize = 256 << 10;

/// Where `receive` is in a batch: the operations after the current one,
/// what it did so far.
struct Batch<'a, O> {
    rest: &'a [Option<OpEnvelope<O>>],
    report: &'a mut Received,
    staged: &'a mut Vec<OpEnvelope<O>>,
    own: &'a mut Vec<OpEnvelope<O>>,
}

/// The run `env` starts in the batch, up to its signed head: one side of
/// an equivocation's proof.
fn incoming_run<O>(env: &OpEnvelope<O>, rest: &[Option<OpEnvelope<O>>]) -> Option<SignedRun> {
    let mut ops = vec![env.op_bytes().to_vec()];
    let mut last = env;
    for next in rest.iter().flatten() {
        if last.signature().is_some() {
            break;
        }
        if next.follows(last) {
            ops.push(next.op_bytes().to_vec());
            last = next;
        }
    }
    let sig = *last.signature()?;
    Some(SignedRun { first: env.seq(), prev: env.prev(), succeeds: env.succeeds().copied(), ops, sig })
}

/// What to do with a remote operation, decided before it is buffered or
/// logged.
pub(super) enum Admit {
    New,
    Duplicate,
    Equivocation,
    NotAWriter,
}

impl<D: Document> Replica<D> {
    /// Whether (`env.actor`, `env.seq`) is already here: `Some(true)` with
    /// the same hash, `Some(false)` with another one, `None` if not.
    fn known(&self, env: &OpEnvelope<D::Operation>) -> Option<bool> {
        if env.seq() <= self.clock.get(&env.actor()) {
            // Applied. Without a record of it (truncated, or merged from a
            // snapshot) a conflict cannot be told: treat it as a repeat.
            Some(self.index.get(&env.actor(), env.seq()).is_none_or(|e| e.hash == env.hash()))
        } else {
            self.buffer.get(&env.actor(), env.seq()).map(|held| held.hash() == env.hash())
        }
    }

    /// Keeps the error `receive` reports for a batch: the first, unless a
    /// later one matters more. A local failure that poisoned the replica
    /// comes first (the document has stopped), then the sender's fault (so
    /// an error that blames nobody, such as a full buffer, cannot hide a
    /// forgery that followed it).
    fn keep_error(&self, kept: &mut Option<ReceiveError>, e: ReceiveError) {
        let rank = |e: &ReceiveError| match e {
            ReceiveError::Local(_) if self.poisoned => 2,
            e if e.is_peer_fault() => 1,
            _ => 0,
        };
        if kept.as_ref().is_none_or(|k| rank(&e) > rank(k)) {
            *kept = Some(e);
        }
    }

    /// Decides whether a remote operation is new, a repeat, or a second
    /// signed operation for a taken (actor, seq). Every operation from a
    /// writer must carry its actor's valid signature (`verified`: the result
    /// of checking it already, if known), repeats included: so a bad
    /// signature ends a batch at the same place on every replica, whatever
    /// each already holds.
    fn admit(&mut self, env: &OpEnvelope<D::Operation>, verified: Option<bool>) -> Result<Admit, ReceiveError> {
        if let Some(c) = &env.succeeds() {
            // The operation's signature covers the certificate: check it
            // first, so nobody but the actor can attach one; then the
            // certificate itself. Either failing ends the batch.
            if env.seq() != 1 || c.to != env.actor() {
                return Err(EnvelopeError::BadSuccession { from: c.from, to: c.to }.into());
            }
            if verified != Some(true) {
                return Err(EnvelopeError::BadSignature { actor: env.actor(), seq: env.seq() }.into());
            }
            c.verify(&self.document)?;
            self.learn_succession(c);
        }
        if self.check_writer(&env.actor(), env.seq()).is_err() {
            return Ok(Admit::NotAWriter);
        }
        if verified != Some(true) {
            return Err(EnvelopeError::BadSignature { actor: env.actor(), seq: env.seq() }.into());
        }
        match self.known(env) {
            Some(true) => return Ok(Admit::Duplicate),
            Some(false) => return Ok(Admit::Equivocation),
            None => {}
        }
        // Signed by its actor, but it may still name another actor inside.
        D::check_author(env.op(), &env.actor()).map_err(|reason| PeerError::Rejected {
            actor: env.actor(),
            seq: env.seq(),
            reason,
        })?;
        Ok(Admit::New)
    }

    /// Accepts operations from peers, in any order and with duplicates.
    /// Each must be signed by its actor for this document (checked before
    /// it is buffered or logged), and come from an allowed writer. Each is
    /// applied once its author's earlier operations are; early ones wait in
    /// a bounded buffer. Applied operations are durable when this returns.
    ///
    /// Operations of actors that are not writers are skipped and counted
    /// ([`Received::not_writers`]). A bad signature ends the call: the
    /// operations after it are not even looked at (a sender of forged
    /// operations gets no more work done), those before it stay applied,
    /// and the error is returned. An operation the document rejects is
    /// reported as an error after the other valid operations are applied,
    /// and drops the rest of that author's buffered operations. A validly
    /// signed operation that conflicts with one already held for its
    /// (actor, seq) is not applied and is reported in
    /// [`Received::equivocations`] (and kept for
    /// [`take_equivocations`](Self::take_equivocations)). An automatic
    /// checkpoint that fails afterwards is no error of the call: the
    /// operations are durable and applied; it is logged, and the next
    /// write tries it again.
    ///
    /// What the sender did wrong (a bad signature or succession, an
    /// operation the document rejects) is a [`ReceiveError::Peer`]; a
    /// full buffer, an operation over `max_op_size` and a local failure
    /// are not ([`ReceiveError::is_peer_fault`]). Of several errors in one
    /// call, the one returned is a local failure that poisoned the replica
    /// if there is one, else the first fault of the sender's, else the
    /// first error.
    pub fn receive<I>(&mut self, ops: I) -> Result<Received, ReceiveError>
    where
        I: IntoIterator<Item = OpEnvelope<D::Operation>>,
    {
        // Hashes made under another document's key are made again here.
        let mut ops: Vec<OpEnvelope<D::Operation>> = ops.into_iter().collect();
        for env in &mut ops {
            env.rechain(&self.chain);
        }
        self.receive_checked(ops, false)
    }

    /// [`receive`](Self::receive); with `verified`, the operations were
    /// checked up to their heads already (held operations released later,
    /// which may have been separated from their heads).
    pub(super) fn receive_checked(
        &mut self,
        ops: Vec<OpEnvelope<D::Operation>>,
        verified: bool,
    ) -> Result<Received, ReceiveError> {
        self.check()?;
        let mut report = Received::default();
        let mut ready = Vec::with_capacity(ops.len());
        let mut first_error = None;
        let mut own = Vec::new();
        // Operations whose signatures will matter: writers', and a run
        // that may carry a certificate making its actor one.
        let verified = if verified {
            vec![Some(true); ops.len()]
        } else {
            // Every operation of such an actor: a certificate on its
            // operation 1 may make it a writer for the rest.
            let actors: BTreeSet<ActorId> = ops
                .iter()
                .filter(|env| env.seq() == 1 || self.check_writer(&env.actor(), env.seq()).is_ok())
                .map(|env| env.actor())
                .collect();
            let todo: Vec<bool> = ops.iter().map(|env| actors.contains(&env.actor())).collect();
            verify_runs(&ops, &todo)
        };
        let mut staged = Vec::with_capacity(ops.len());
        // Taken one by one; the rest stay visible (an equivocation's proof
        // takes the run up to its head).
        let mut slots: Vec<Option<OpEnvelope<D::Operation>>> = ops.into_iter().map(Some).collect();
        // Until they are logged, applied operations make the replica
        // refuse everything if this call never returns (a document's code
        // panicking).
        self.staging = true;
        for i in 0..slots.len() {
            if self.poisoned {
                break;
            }
            let Some(env) = slots[i].take() else { continue };
            let verified = verified.get(i).copied().flatten();
            let cx = Batch { rest: &slots[i + 1..], report: &mut report, staged: &mut staged, own: &mut own };
            if self.receive_one(env, verified, cx, &mut first_error) {
                break;
            }
        }
        if let Err(e) = self.log_staged(&mut staged, false, &mut ready) {
            self.keep_error(&mut first_error, e.into());
        }
        self.staging = false;
        report.applied = ready.len();
        if self.poisoned {
            // The state holds operations that may not be logged.
            return Err(first_error.unwrap_or(ReceiveError::Local(StorageError::Poisoned)));
        }
        let last = ready.last().map(|(lsn, _)| *lsn);
        self.commit(Origin::Remote, last, ready.iter().map(|(_, env)| env))?;
        if self.retire.is_some() {
            self.complete_retire()?;
        }
        if !own.is_empty() {
            // The retired actor's operations, now another actor's.
            // Checked already, in this call.
            let later = self.receive_checked(own, true)?;
            report.applied += later.applied;
            report.buffered += later.buffered;
            report.duplicates += later.duplicates;
            report.not_writers += later.not_writers;
            report.rejected += later.rejected;
            report.equivocations.extend(later.equivocations);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Admits, buffers or logs and applies one remote operation. True if
    /// its signature is bad: the sender is forging, and the rest of what
    /// it sent is not looked at.
    fn receive_one(
        &mut self,
        env: OpEnvelope<D::Operation>,
        verified: Option<bool>,
        batch: Batch<'_, D::Operation>,
        first_error: &mut Option<ReceiveError>,
    ) -> bool {
        let Batch { rest, report, staged: ready, own } = batch;
        let admitted = self.admit(&env, verified);
        if env.actor() == self.actor {
            self.note_own(&env, &admitted);
            // Behind its own actor's history: the peer's later operations
            // of the actor are taken once it is retired (and its forked
            // operations rewritten), as another actor's. Logged now, they
            // would count as written here (and be written again as forked),
            // and a crash before the retirement is durable would leave the
            // log level with the peer's, the fork out of sight.
            if self.retire.is_some() && matches!(admitted, Ok(Admit::New)) {
                own.push(env);
                return false;
            }
        }
        match admitted {
            Ok(Admit::New) => {}
            Ok(Admit::Duplicate) => {
                report.duplicates += 1;
                return false;
            }
            Ok(Admit::NotAWriter) => {
                report.not_writers += 1;
                return false;
            }
            // This replica's own actor: a restored or rolled-back copy wrote
            // too; the actor is being retired (`note_own`), which is the
            // remedy, not an offence of the peer's or the actor's.
            Ok(Admit::Equivocation) if env.actor() == self.actor => {
                report.duplicates += 1;
                return false;
            }
            Ok(Admit::Equivocation) => {
                warn!(actor = %env.actor(), seq = env.seq(), "equivocation: two signed operations for one sequence number");
                let found = Equivocation { actor: env.actor(), seq: env.seq() };
                // At most one proof per actor held, each at most
                // MAX_PROOF_BYTES: a hostile actor's forks cost little.
                let held = self.proofs.iter().any(|p| p.actor == env.actor());
                if self.proofs.len() < MAX_HELD_EQUIVOCATIONS && !held {
                    if let (Some(a), Some(b)) = (self.logged_run(&env.actor(), env.seq()), incoming_run(&env, rest)) {
                        let size: usize = a.ops.iter().chain(&b.ops).map(Vec::len).sum();
                        if size <= MAX_PROOF_BYTES {
                            self.proofs.push(EquivocationProof { actor: env.actor(), seq: env.seq(), a, b });
                        }
                    }
                }
                self.hold_equivocation(found.clone());
                report.equivocations.push(found);
                return false;
            }
            Err(e) => {
                // Decided here, not from `first_error`: an earlier
                // operation's error may already be held there.
                let forged = matches!(
                    e,
                    ReceiveError::Peer(PeerError::Envelope(
                        EnvelopeError::BadSignature { .. } | EnvelopeError::BadSuccession { .. }
                    ))
                );
                self.keep_error(first_error, e);
                return forged;
            }
        }
        // Only an operation that must wait is measured, for the
        // buffer's byte limit.
        let next = self.clock.get(&env.actor()).saturating_add(1);
        if env.seq() == next && !self.buffer.holds(&env.actor()) {
            // The actor's next, nothing held behind it: the usual case.
            if let Err(e) = self.write_remote(std::iter::once(env), ready, report) {
                self.keep_error(first_error, e);
            }
            return false;
        }
        let early = env.seq() > next;
        let size = if early { env.op_bytes().len() + 128 } else { 0 };
        match self.buffer.offer_sized(env, &self.clock, size) {
            Ok(Offer::Ready(list)) => {
                // Apply now so later offers see the advanced clock.
                if let Err(e) = self.write_remote(list.into_iter(), ready, report) {
                    self.keep_error(first_error, e);
                }
            }
            Ok(Offer::Buffered) => report.buffered += 1,
            Ok(Offer::Duplicate) => report.duplicates += 1,
            Err(full) => self.keep_error(first_error, full.into()),
        }
        false
    }

    /// Validates and applies ready remote operations, staging them to be
    /// logged (by `receive`, before anything is published; `&mut self`
    /// keeps the state unobserved meanwhile).
    ///
    /// `list` is the delivered operation followed by held successors it
    /// unblocked. The delivered one refused is an error (its sender's
    /// fault); a successor refused is counted in `report.rejected`, and it
    /// and the rest of its actor's held operations are dropped. One that
    /// does not follow its actor's last operation here (another hash)
    /// shows that the actor signed two histories: an equivocation.
    fn write_remote(
        &mut self,
        list: impl ExactSizeIterator<Item = OpEnvelope<D::Operation>>,
        staged: &mut Vec<OpEnvelope<D::Operation>>,
        report: &mut Received,
    ) -> Result<(), ReceiveError> {
        let count = list.len();
        let limit = self.op_limit();
        for (i, env) in list.enumerate() {
            if self.head_of(&env.actor()).is_some_and(|h| h != env.prev()) {
                let dropped = self.buffer.discard_actor(&env.actor());
                let found = Equivocation { actor: env.actor(), seq: env.seq() - 1 };
                warn!(actor = %found.actor, seq = found.seq, "equivocation: an operation follows another history of its actor");
                self.hold_equivocation(found.clone());
                report.equivocations.push(found);
                report.rejected += count - i - 1 + dropped;
                return Ok(());
            }
            let checked = match self.doc.check_op(env.op()) {
                Ok(()) if env.op_bytes().len() > limit => {
                    Err(ReceiveError::TooLarge { len: env.op_bytes().len(), limit })
                }
                Ok(()) => Ok(()),
                Err(reason) => Err(PeerError::Rejected { actor: env.actor(), seq: env.seq(), reason }.into()),
            };
            if let Err(e) = checked {
                let dropped = self.buffer.discard_actor(&env.actor());
                if i == 0 {
                    return Err(e);
                }
                warn!(actor = %env.actor(), seq = env.seq(), error = %e, "a held operation was refused once its predecessors arrived");
                report.rejected += count - i + dropped;
                return Ok(());
            }
            self.apply_staged(&env);
            staged.push(env);
        }
        Ok(())
    }

    /// This replica's run of `actor` from operation `seq` up to the next
    /// signed head, read from its log (one side of an equivocation's
    /// proof); `None` if it is not in the log.
    fn logged_run(&self, actor: &ActorId, seq: u64) -> Option<SignedRun> {
        let (prev, entries) = self.index.range(actor, seq, self.clock.get(actor))?;
        let k = entries.iter().position(|e| e.signed)?;
        let last = seq + k as u64;
        let lsns: BTreeSet<Lsn> = entries[..=k].iter().map(|e| e.lsn).collect();
        let mut ops = Vec::new();
        let (mut sig, mut succeeds) = (None, None);
        for record in self.wal.iter_from(*lsns.first()?).ok()? {
            let record = record.ok()?;
            if record.lsn > *lsns.last()? {
                break;
            }
            if !lsns.contains(&record.lsn) {
                continue;
            }
            let run = Run::from_block(&record.payload).ok()?;
            for (i, bytes) in run.ops.iter().enumerate() {
                let n = run.first + i as u64;
                if n == seq {
                    succeeds = if i == 0 { run.succeeds } else { None };
                }
                if (seq..=last).contains(&n) && n == seq + ops.len() as u64 {
                    ops.push(bytes.to_vec());
                    if n == last {
                        sig = if i + 1 == run.ops.len() { run.sig } else { None };
                    }
                }
            }
        }
        Some(SignedRun { first: seq, prev, succeeds, ops, sig: sig? })
    }

    /// The proofs of the equivocations [`receive`](Self::receive) found
    /// since the last call, where it could make one (both histories'
    /// operations up to a signed head: the replica's own from its log, the
    /// other from what it was sent). At most 1024 are kept.
    pub fn take_equivocation_proofs(&mut self) -> Vec<EquivocationProof> {
        std::mem::take(&mut self.proofs)
    }

    /// Keeps an equivocation for [`take_equivocations`](Self::take_equivocations).
    fn hold_equivocation(&mut self, found: Equivocation) {
        if self.equivocations.len() < MAX_HELD_EQUIVOCATIONS {
            self.equivocations.push(found);
        }
    }
}
