//! The replica: one document, its operations written ahead to the log.
//! This module holds its state, opening and replay; the sibling modules
//! `write`, `receive`, `catchup`, `checkpointing` and `retire` add the
//! write path, the receive pipeline, catch-up answers, checkpoints and
//! actor retirement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tracing::{info, info_span, warn};

use super::checkpoint;
use super::dir::{load_or_create_document, load_or_create_key, ACTOR_FILE, WAL_DIR};
use super::index::{Entry, OpIndex};
use super::load::{decode_record, load_base, replay_step, Recovered, Step};
use super::succession::{self, RetireReason, Succession, MAX_SUCCESSIONS};
use super::{
    ActorId, ActorKey, CausalBuffer, ChainHash, ChainKey, Change, Document, Equivocation, OpEnvelope, OpenError,
    ReplicaOptions, StorageError, VersionVector, WriteError,
};
use crate::wal::durable::{self, Files};
use crate::wal::{Lsn, Wal};

/// Longest chain of successions followed to find a writer: as many as
/// are kept (the walk ends on a cycle too).
const MAX_SUCCESSION_CHAIN: usize = MAX_SUCCESSIONS;

/// A retirement of this replica's actor that is due.
pub(super) struct PendingRetire {
    pub(super) reason: RetireReason,
    /// Own operations that peers hold other versions of: from this
    /// sequence number up to the last one this replica wrote before it
    /// found out. They are written again under the new actor.
    pub(super) forked: Option<(u64, u64)>,
    /// Whether those operations were forked (else: a rebuilt replica's own
    /// operations, which other replicas hold the same).
    pub(super) distrust: bool,
}

/// A durable replica of one document.
///
/// ```
/// use walrus::replica::{KvDoc, Replica, ReplicaOptions};
/// let dir = tempfile::tempdir()?;
/// let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
/// r.update(|doc, actor| doc.put_op(actor, "greeting", "hello"))?; // durable on return
/// assert_eq!(r.doc().values_of("greeting"), vec!["hello"]);
/// drop(r);
/// let r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
/// assert_eq!(r.doc().values_of("greeting"), vec!["hello"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Replica<D: Document> {
    pub(super) dir: PathBuf,
    pub(super) opts: ReplicaOptions,
    pub(super) wal: Wal,
    pub(super) doc: D,
    pub(super) clock: VersionVector,
    pub(super) key: ActorKey,
    pub(super) actor: ActorId,
    pub(super) document: String,
    /// The document's chain hashing keys.
    pub(super) chain: ChainKey,
    /// The hash of each actor's last applied operation, where known (not
    /// for actors only a format-2 checkpoint or a snapshot without heads
    /// holds): what its next operation must chain to.
    pub(super) heads: BTreeMap<ActorId, ChainHash>,
    pub(super) buffer: CausalBuffer<D::Operation>,
    /// Where each applied operation still in the log is.
    pub(super) index: OpIndex,
    pub(super) checkpoint_lsn: Lsn,
    /// LSN of the checkpoint generation before the newest (0 if none): the
    /// log is truncated only up to it, so either generation can restore.
    pub(super) older_checkpoint_lsn: Lsn,
    /// Opened from an older generation: operations whose predecessors only
    /// the lost generation held are skipped on replay (peers send them again).
    pub(super) tolerant_replay: bool,
    /// What was found wrong and worked around on open.
    pub(super) recovered: Vec<Recovered>,
    pub(super) files: Files,
    /// Known successions, by new actor: who may write because a writer
    /// named it its successor. Always holds this directory's own chain, so
    /// the current actor's certificate (carried by its first operation) is
    /// the entry under it.
    pub(super) successions: BTreeMap<ActorId, Succession>,
    /// This replica found itself behind its own actor's history: the actor
    /// is retired before anything else is written.
    pub(super) retire: Option<PendingRetire>,
    /// Operations of its actor this replica held when it was opened: those
    /// it wrote since are the ones a rollback before the open could fork.
    pub(super) own_at_open: u64,
    /// A snapshot's claim already retired an actor since the replica opened.
    pub(super) snapshot_retired: bool,
    /// A rewrite is in progress: nothing is truncated or checkpointed
    /// automatically until it is done.
    pub(super) rewriting: bool,
    pub(super) bytes_since_checkpoint: u64,
    pub(super) subscribers: Vec<mpsc::Sender<Change<D::Operation>>>,
    /// Equivocations seen and not yet taken ([`Replica::take_equivocations`]).
    pub(super) equivocations: Vec<Equivocation>,
    /// Proofs of them, where they could be made.
    pub(super) proofs: Vec<super::EquivocationProof>,
    pub(super) poisoned: bool,
    /// Operations are applied in memory but not yet logged: if the code
    /// that set it never cleared it (a document's code panicked), state and
    /// log may differ, and the replica refuses everything like a poisoned one.
    pub(super) staging: bool,
    /// Test hook: stop a checkpoint after this many steps.
    pub(super) checkpoint_stop: Option<u8>,
    /// An open group commit ([`Replica::grouped`]).
    pub(super) group: Option<super::group::Group<D::Operation>>,
}

impl<D: Document> Replica<D> {
    /// Opens (creating if needed) the replica in `dir`: loads the latest
    /// checkpoint and replays the log after it.
    pub fn open(dir: impl AsRef<Path>, opts: ReplicaOptions) -> Result<Replica<D>, OpenError> {
        Self::open_inner(dir.as_ref(), opts, false)
    }

    /// Opens a replica that no intact checkpoint can restore (both
    /// generations damaged, the log truncated behind them): it starts from
    /// an empty state and the log that is left, and peers refill the rest.
    /// Its actor is retired (its last sequence number was in the damaged
    /// checkpoints), and its own operations still in the log are written
    /// again under the new actor (where the document can, see
    /// [`Document::reissue`]), so none of them is lost. Other actors'
    /// operations come back from peers. The damaged checkpoints are kept
    /// as `checkpoint.damaged`. On a replica that opens normally, this is
    /// [`open`](Self::open).
    pub fn rebuild(dir: impl AsRef<Path>, opts: ReplicaOptions) -> Result<Replica<D>, OpenError> {
        Self::open_inner(dir.as_ref(), opts, true)
    }

    fn open_inner(dir: &Path, opts: ReplicaOptions, rebuild: bool) -> Result<Replica<D>, OpenError> {
        let dir = dir.to_path_buf();
        let span = info_span!("replica_open", dir = %dir.display(), doc = tracing::field::Empty);
        let _g = span.enter();
        let files = Files::new(opts.wal.faults.clone());
        files.create_dir_all(&dir)?;
        let wal = Wal::open(dir.join(WAL_DIR), opts.wal.clone())?;
        // A checkpoint interrupted by a crash leaves its temporary file. One
        // interrupted after the older generation was moved aside is whole
        // and synced: it becomes the newest generation, so two remain.
        checkpoint::promote_interrupted::<D>(&files, &dir, opts.max_checkpoint_size)?;
        durable::remove_stale(&files, &dir.join(checkpoint::CHECKPOINT_FILE))?;
        // Temp files of an interrupted key write hold a secret: remove them.
        durable::remove_stale(&files, &dir.join(ACTOR_FILE))?;
        let key = load_or_create_key(&files, &dir)?;
        let document = load_or_create_document(&files, &dir, opts.document.as_deref())?;
        span.record("doc", document.as_str());
        let base = load_base::<D>(&dir, &opts, wal.first_lsn(), wal.last_lsn(), rebuild)?;
        let rebuilding = base.rebuilt;
        // A damaged generation is moved aside (kept for inspection), so the
        // next checkpoint does not take it for one.
        let mut recovered = base.recovered;
        for note in &mut recovered {
            if let Recovered::DamagedCheckpoint { path, moved_to, .. } = note {
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(checkpoint::DAMAGED_SUFFIX);
                let to = path.with_file_name(name);
                files.rename(path, &to)?;
                *moved_to = Some(to);
            }
        }
        for note in &recovered {
            warn!("{note}");
        }
        let (doc, clock, checkpoint_lsn) = (base.doc, base.clock, base.lsn);
        // This directory's own chain of actors is always known: its first
        // operations carry it to peers with writer lists.
        let chain = succession::load_chain(&dir, &document);
        let mut successions: BTreeMap<ActorId, Succession> = base.successions.into_iter().map(|c| (c.to, c)).collect();
        successions.extend(chain.into_iter().map(|c| (c.to, c)));
        let mut r = Replica {
            buffer: CausalBuffer::new(opts.buffer_limit).per_actor(opts.buffer_per_actor).max_bytes(opts.buffer_bytes),
            actor: key.actor(),
            key,
            chain: ChainKey::new(&document),
            heads: base.heads.into_iter().collect(),
            document,
            dir,
            opts,
            wal,
            doc,
            clock,
            index: OpIndex::default(),
            checkpoint_lsn,
            older_checkpoint_lsn: base.older_lsn,
            tolerant_replay: base.tolerant,
            recovered,
            files,
            successions,
            retire: None,
            own_at_open: 0,
            snapshot_retired: false,
            rewriting: false,
            bytes_since_checkpoint: 0,
            subscribers: Vec::new(),
            equivocations: Vec::new(),
            proofs: Vec::new(),
            poisoned: false,
            staging: false,
            checkpoint_stop: None,
            group: None,
        };
        r.replay()?;
        if rebuilding {
            r.finish_rebuild()?;
        }
        r.own_at_open = r.clock.get(&r.actor);
        // A directory whose key file is not the one the actor was made in
        // was copied or restored: peers may hold operations of the actor
        // that it lacks, so it goes on under a new one.
        let key_file = r.dir.join(ACTOR_FILE);
        match succession::at_home(&r.dir, &key_file) {
            Some(true) => {}
            None => succession::record_home(&r.files, &r.dir, &key_file)?,
            // A retirement that stopped after the new key was in place but
            // before its home was recorded is not a copy.
            Some(false)
                if r.successions.contains_key(&r.actor)
                    && succession::retire_requested(&r.dir, &r.actor) == Some(false) =>
            {
                succession::record_home(&r.files, &r.dir, &key_file)?
            }
            Some(false) => r.retire_actor_for(RetireReason::Moved)?,
        }
        // A fork rewrite that a crash or a failure interrupted.
        if let Some(job) = succession::load_rewrite(&r.dir)? {
            if r.actor == job.old {
                // Not even retired yet.
                r.retire = Some(PendingRetire {
                    reason: RetireReason::Forked { seq: job.from },
                    forked: Some((job.from, job.to)),
                    distrust: job.forked,
                });
                r.complete_retire()?;
            } else {
                r.finish_rewrite(job)?;
            }
        }
        match succession::retire_requested(&r.dir, &r.actor) {
            Some(true) => r.retire_actor_for(RetireReason::Requested)?,
            Some(false) => r.files.remove(&r.dir.join(succession::RETIRE_FILE))?,
            None => {}
        }
        info!(actor = %r.actor, ops = r.clock.total(), "replica opened");
        Ok(r)
    }

    fn replay(&mut self) -> Result<(), StorageError> {
        let from = self.checkpoint_lsn + 1;
        for record in self.wal.iter_from(from)? {
            let record = record?;
            let (envs, legacy) = decode_record::<D>(&self.chain, &record.payload, record.lsn, self.opts.max_op_size)?;
            self.bytes_since_checkpoint += record.payload.len() as u64;
            for env in envs {
                if let Some(c) =
                    env.succeeds().copied().filter(|c| c.to == env.actor() && c.verify(&self.document).is_ok())
                {
                    self.learn_succession(&c);
                }
                match replay_step(&self.clock, &env, record.lsn, self.tolerant_replay, &self.dir)? {
                    Step::Apply => self.apply_env(env, record.lsn, legacy),
                    Step::Skip => {}
                }
            }
        }
        Ok(())
    }

    /// What was found wrong, and worked around, when the replica was
    /// opened (a damaged checkpoint generation, say). Empty normally.
    pub fn recovered(&self) -> &[Recovered] {
        &self.recovered
    }

    /// This replica's actor id.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// The document id its operations' signatures bind
    /// ([`ReplicaOptions::document`]).
    pub fn document(&self) -> &str {
        &self.document
    }

    /// The document.
    pub fn doc(&self) -> &D {
        &self.doc
    }

    /// Operations applied, per actor.
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// The replica directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Operations waiting for their predecessors.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether an earlier failure (of the log, typically) poisoned this
    /// replica: it then refuses everything with [`StorageError::Poisoned`]
    /// until it is dropped and opened again.
    pub fn is_poisoned(&self) -> bool {
        // Left half-staged (a document's code panicked while operations
        // were applied but not logged) counts too: it refuses everything.
        self.poisoned || self.staging
    }

    /// The equivocations [`receive`](Self::receive) found since the last
    /// call (at most 1024 are kept), including those in calls that
    /// returned an error, whose [`Received`](super::Received) report was lost.
    pub fn take_equivocations(&mut self) -> Vec<Equivocation> {
        std::mem::take(&mut self.equivocations)
    }

    /// A receiver of every change applied from now on.
    pub fn subscribe(&mut self) -> mpsc::Receiver<Change<D::Operation>> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.push(tx);
        rx
    }

    pub(super) fn check(&self) -> Result<(), StorageError> {
        if self.poisoned || self.staging {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    pub(super) fn notify(&mut self, change: impl FnOnce() -> Change<D::Operation>) {
        if self.subscribers.is_empty() {
            return;
        }
        let change = change();
        self.subscribers.retain(|s| s.send(change.clone()).is_ok());
    }

    /// Applies a logged operation (from record `lsn`; `legacy` if that
    /// record is of format 2): state, version vector, chain head, index.
    pub(super) fn apply_env(&mut self, env: OpEnvelope<D::Operation>, lsn: Lsn, legacy: bool) {
        let actor = env.actor();
        self.clock.observe(actor, env.seq());
        // After a format-2 operation the chain is not checked: its writer
        // may not know that operation's hash (a format-2 checkpoint may
        // have covered it), so its next operation follows the zero hash.
        if legacy {
            self.heads.remove(&actor);
        } else {
            self.heads.insert(actor, env.hash());
        }
        let entry = Entry { lsn, hash: env.hash(), signed: env.signature().is_some(), legacy };
        self.index.insert(actor, env.seq(), env.prev(), entry);
        self.doc.apply(env.into_op());
    }

    /// The hash `actor`'s next operation must follow, if known.
    pub(super) fn head_of(&self, actor: &ActorId) -> Option<ChainHash> {
        match self.clock.get(actor) {
            0 => Some(ChainHash::ZERO),
            _ => self.heads.get(actor).copied(),
        }
    }

    /// The chain heads known, for a checkpoint or a snapshot.
    pub(super) fn head_list(&self) -> Vec<(ActorId, ChainHash)> {
        self.heads.iter().map(|(a, h)| (*a, *h)).collect()
    }

    /// Whether `actor` may write operation `seq`: under a writer list, if
    /// it is on it or succeeds (through certified retirements) one that is.
    pub(super) fn check_writer(&self, actor: &ActorId, seq: u64) -> Result<(), WriteError> {
        let Some(writers) = &self.opts.writers else { return Ok(()) };
        // A writer's successor may write too, however many times it was
        // retired (bounded: a cycle or a long chain ends the search).
        let mut at = *actor;
        for _ in 0..=MAX_SUCCESSION_CHAIN {
            if writers.contains(&at) {
                return Ok(());
            }
            match self.successions.get(&at) {
                Some(c) => at = c.from,
                None => break,
            }
        }
        Err(WriteError::NotAWriter { actor: *actor, seq })
    }

    /// Makes everything durable and closes the log.
    pub fn close(self) -> Result<(), StorageError> {
        self.wal.close()?;
        Ok(())
    }
}
