//! Retiring the replica's actor: noticing that it is behind its own
//! history, rotating to a certified successor, rewriting forked
//! operations, and rebuilding a replica no checkpoint restores. The rules
//! are in docs/REPLICA.md ("Actor retirement and succession").

use std::collections::BTreeSet;

use tracing::warn;

use super::checkpoint;
use super::dir::ACTOR_FILE;
use super::load::{decode_record, replay_step, Recovered, Step};
use super::receive::Admit;
use super::replica::PendingRetire;
use super::succession::{self, RetireReason, Succession, MAX_SUCCESSIONS};
use super::{ActorId, Change, Document, OpEnvelope, ReceiveError, Replica, VersionVector, WriteError};

impl<D: Document> Replica<D> {
    /// Retires this replica's actor now: a new key, certified by the old
    /// one, signs everything written from here on. Call it after restoring
    /// the directory by means that keep its files (a filesystem snapshot, a
    /// VM rollback) or after discarding damaged log records, when peers
    /// may hold operations of the actor that this replica lacks. (A copied
    /// or restored directory is noticed on open, and a peer holding more of
    /// the actor as soon as its operations arrive.)
    pub fn retire_actor(&mut self) -> Result<ActorId, WriteError> {
        self.check()?;
        self.retire.get_or_insert(PendingRetire { reason: RetireReason::Requested, forked: None, distrust: true });
        self.complete_retire()?;
        Ok(self.actor)
    }

    pub(super) fn retire_actor_for(&mut self, reason: RetireReason) -> Result<(), WriteError> {
        self.retire.get_or_insert(PendingRetire { reason, forked: None, distrust: true });
        self.complete_retire()
    }

    /// The successions this replica knows (the certificates that let
    /// retired writers' successors write), for a snapshot's receiver.
    pub fn successions(&self) -> Vec<Succession> {
        self.succession_list()
    }

    pub(super) fn succession_list(&self) -> Vec<Succession> {
        self.successions.values().copied().collect()
    }

    /// Learns successions from a peer (sent with a snapshot, whose version
    /// vector may name successors of writers). Each is checked; a bad one
    /// is an error and none after it is learned.
    pub fn learn_successions(&mut self, certs: &[Succession]) -> Result<usize, ReceiveError> {
        let mut learned = 0;
        for c in certs {
            c.verify(&self.document)?;
        }
        // In any order: a link may certify one that comes later in `certs`.
        let mut left: Vec<&Succession> = certs.iter().collect();
        loop {
            let before = left.len();
            left.retain(|c| !self.learn_succession(c));
            learned += before - left.len();
            if left.len() == before {
                return Ok(learned);
            }
        }
    }

    /// Remembers a verified certificate if it matters: under a writer list,
    /// from an actor that may write (so nobody else can claim a successor
    /// first), and while there is room. True if it was new.
    pub(super) fn learn_succession(&mut self, c: &Succession) -> bool {
        if self.opts.writers.is_none()
            || self.successions.contains_key(&c.to)
            || self.successions.len() >= MAX_SUCCESSIONS
            || self.check_writer(&c.from, 0).is_err()
        {
            return false;
        }
        self.successions.insert(c.to, *c);
        true
    }

    /// A peer sent an operation of this replica's own actor: one beyond
    /// what it holds means it is behind its own history; another version
    /// of one it wrote means two copies of it wrote.
    pub(super) fn note_own(&mut self, env: &OpEnvelope<D::Operation>, admitted: &Result<Admit, ReceiveError>) {
        let had = self.clock.get(&self.actor);
        let reason = match admitted {
            // The peer's next operation does not follow the last one here:
            // this copy's operation `had` (at least) was forked.
            Ok(Admit::New)
                if had > 0
                    && had.checked_add(1) == Some(env.seq())
                    && self.head_of(&self.actor).is_some_and(|h| h != env.prev()) =>
            {
                RetireReason::Forked { seq: had }
            }
            Ok(Admit::New) if env.seq() > had => RetireReason::Behind { had, seen: env.seq() },
            Ok(Admit::Equivocation) if env.seq() <= had => RetireReason::Forked { seq: env.seq() },
            _ => return,
        };
        self.behind_own(reason, had);
    }

    /// Schedules the retirement of the actor, whose history peers hold
    /// more of than this replica (`had` operations).
    pub(super) fn behind_own(&mut self, reason: RetireReason, had: u64) {
        warn!(actor = %self.actor, %reason, "this replica is behind its own actor's history; retiring the actor");
        // What it wrote since it was opened may have been forked: the peer
        // holds operations for those numbers too, the same or (after a
        // rollback before the open) others. Without asking, treat them as
        // forked: written again under the new actor, nothing is lost.
        let suspect = match reason {
            RetireReason::Forked { seq } => Some((seq.min(self.own_at_open + 1), had)),
            _ if had > self.own_at_open => Some((self.own_at_open + 1, had)),
            _ => None,
        };
        let pending = self.retire.get_or_insert(PendingRetire { reason: reason.clone(), forked: None, distrust: true });
        if let Some((from, to)) = suspect {
            pending.forked = Some(match pending.forked {
                Some((f, t)) => (f.min(from), t.max(to)),
                None => (from, to),
            });
            pending.reason = reason;
        }
    }

    /// Retires the actor (see [`retire_actor`](Self::retire_actor)). If
    /// this replica wrote operations that peers hold other versions of,
    /// its state is rebuilt without them (from a checkpoint generation
    /// older than they are) and each is written again under the new actor,
    /// where the document can ([`Document::reissue`]).
    pub(super) fn complete_retire(&mut self) -> Result<(), WriteError> {
        if self.retire.is_none() {
            return Ok(());
        }
        // What a group logged so far is durable before anything is
        // retired, and the retirement's own writes (operations written
        // again under the new actor) wait for the disk themselves: its
        // records of what is left to do are removed only after them.
        self.settle()?;
        let group = self.group.take();
        let done = self.retire_now();
        self.group = group;
        done
    }

    /// [`complete_retire`](Self::complete_retire), outside any group.
    fn retire_now(&mut self) -> Result<(), WriteError> {
        let Some(pending) = self.retire.take() else { return Ok(()) };
        let old = self.actor;
        let key_file = self.dir.join(ACTOR_FILE);
        // What is to be rewritten, and what is retired, is recorded before
        // anything changes, so a crash or a failure part-way is finished by
        // the next open. The rewrite first: `actor.retire` alone is finished
        // as a plain retirement, which would leave the fork in place.
        let job = pending.forked.map(|(from, to)| succession::Rewrite { old, from, to, forked: pending.distrust });
        if let Some(job) = &job {
            if let Err(e) = succession::save_rewrite(&self.files, &self.dir, job) {
                self.retire = Some(pending);
                return Err(e.into());
            }
        }
        if let Err(e) = succession::mark_retiring(&self.files, &self.dir, &old) {
            self.retire = Some(pending);
            return Err(e.into());
        }
        let current = match succession::rotate(&self.files, &self.dir, &key_file, &self.key, &self.document) {
            Ok(c) => c,
            Err(e) => {
                self.retire = Some(pending);
                return Err(e.into());
            }
        };
        self.key = current.key;
        self.actor = self.key.actor();
        self.own_at_open = 0;
        if let Some(c) = current.cert {
            self.successions.insert(c.to, c);
        }
        warn!(old = %old, new = %self.actor, reason = %pending.reason, "actor retired");
        self.recovered.push(Recovered::ActorRetired { old, new: self.actor, reason: pending.reason.clone() });
        if let Some(job) = job {
            self.finish_rewrite(job)?;
        }
        self.files.remove(&self.dir.join(succession::RETIRE_FILE))?;
        Ok(())
    }

    /// Rewrites a fork and clears its record. A failure poisons the
    /// replica: the record stays, and the next open finishes the job
    /// before anything else is written.
    pub(super) fn finish_rewrite(&mut self, job: succession::Rewrite) -> Result<(), WriteError> {
        // While the record exists, the log keeps the operations to rewrite:
        // no truncation, no automatic checkpoint.
        self.rewriting = true;
        let done = self.rewrite_fork(job).and_then(|()| Ok(succession::clear_rewrite(&self.files, &self.dir)?));
        self.rewriting = false;
        if done.is_err() {
            self.poisoned = true;
        }
        done
    }

    /// Own operations (`job.old`, `job.from..=job.to`) are written again
    /// under the current actor. If they were forked (peers hold other
    /// operations for those numbers), the state is first rebuilt without
    /// `old`'s operations from `from` on (peers send theirs again).
    /// Idempotent: after a crash it rebuilds only if the state still holds
    /// them, and writes again only what the current actor has not.
    fn rewrite_fork(&mut self, job: succession::Rewrite) -> Result<(), WriteError> {
        let succession::Rewrite { old, from, to, forked: distrust } = job;
        // The operations, from the log (the first record of each number:
        // the one this replica wrote).
        let mut forked: Vec<OpEnvelope<D::Operation>> = Vec::new();
        let mut fork_lsn = None;
        let mut seen = BTreeSet::new();
        for record in self.wal.iter_from(self.wal.first_lsn())? {
            let record = record?;
            let (envs, _) = decode_record::<D>(&self.chain, &record.payload, record.lsn, self.opts.max_op_size)?;
            for env in envs {
                if env.actor() == old && (from..=to).contains(&env.seq()) && seen.insert(env.seq()) {
                    fork_lsn.get_or_insert(record.lsn);
                    forked.push(env);
                }
            }
        }
        let Some(fork_lsn) = fork_lsn else {
            warn!(actor = %old, from, to, "the operations to write again are no longer in the log");
            return Ok(());
        };
        if !distrust {
            // A rebuilt replica's own operations: nothing to take out of the
            // state. Then a checkpoint, so later opens start from it.
            self.reissue(forked, false)?;
            return Ok(self.checkpoint()?);
        }
        if self.clock.get(&old) < from {
            // Taken out already, before a crash.
            return self.reissue(forked, true);
        }
        let below = checkpoint::read_generations_below::<D>(&self.dir, self.opts.max_checkpoint_size, fork_lsn)?;
        let base = match below {
            Some(cp) => (cp.state, cp.clock, cp.lsn, cp.heads),
            // The whole log is there: replay it from the start.
            None if self.wal.first_lsn() <= 1 => (D::default(), VersionVector::default(), 0, Vec::new()),
            None => {
                warn!(actor = %old, from, to, "no state predates the forked operations; they stay in this replica's state");
                return self.reissue(forked, true);
            }
        };
        // Replay onto the older state, leaving out `old` from `from` on.
        let (doc, clock, base_lsn, heads) = base;
        self.doc = doc;
        self.clock = clock;
        self.heads = heads.into_iter().collect();
        self.index.clear();
        for record in self.wal.iter_from(base_lsn + 1)? {
            let record = record?;
            let (envs, legacy) = decode_record::<D>(&self.chain, &record.payload, record.lsn, self.opts.max_op_size)?;
            for env in envs {
                if env.actor() == old && env.seq() >= from {
                    continue;
                }
                if let Step::Apply = replay_step(&self.clock, &env, record.lsn, true, &self.dir)? {
                    self.apply_env(env, record.lsn, legacy);
                }
            }
        }
        // Until the next checkpoint, reopening must replay the same way.
        self.checkpoint()?;
        let clock = self.clock.clone();
        self.notify(|| Change::Snapshot { clock });
        self.reissue(forked, true)
    }

    /// After opening from an empty state: retires the actor and writes
    /// its operations that are still in the log again, then checkpoints,
    /// so the next open starts from this state.
    pub(super) fn finish_rebuild(&mut self) -> Result<(), WriteError> {
        // An interrupted rebuild left its record: the open finishes it.
        if succession::load_rewrite(&self.dir)?.is_none() {
            let old = self.actor;
            self.retire = Some(PendingRetire {
                reason: RetireReason::Rebuilt,
                forked: Some((self.clock.get(&old).saturating_add(1), u64::MAX)),
                distrust: false,
            });
            self.complete_retire()?;
        }
        Ok(())
    }

    /// Writes forked operations again under the current actor.
    ///
    /// `forked`: whether other replicas may hold other operations under the
    /// same numbers (then what they saw of their old actor that this state
    /// lacks is not trusted). A rebuilt replica's own operations were not
    /// forked: everything they saw stands.
    fn reissue(&mut self, ops: Vec<OpEnvelope<D::Operation>>, forked: bool) -> Result<(), WriteError> {
        // Those the current actor wrote already (before a crash) are not
        // written twice: it writes nothing else while a rewrite is recorded.
        let mut skip = self.clock.get(&self.actor);
        for env in ops {
            let distrusted = if forked { env.actor() } else { self.actor };
            match self.doc.reissue(env.op(), distrusted, self.actor) {
                Some(_) if skip > 0 => skip -= 1,
                Some(op) => {
                    self.update(|_, _| op)?;
                }
                None => {
                    warn!(actor = %env.actor(), seq = env.seq(), "an operation cannot be written again by this document type")
                }
            }
        }
        Ok(())
    }
}
