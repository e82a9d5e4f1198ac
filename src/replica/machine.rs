//! The replica: one document, its operations written ahead to the log,
//! causal delivery of remote operations, catch-up answers and checkpoints.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use tracing::{info, info_span, warn};

use super::checkpoint::{self, Checkpoint};
use super::load::{load_base, replay_step, Recovered, Step};
use super::succession::{self, RetireReason, Succession, MAX_SUCCESSIONS};
use super::{
    ActorId, ActorKey, CausalBuffer, Document, EnvelopeError, Offer, OpEnvelope, ReplicaError, ReplicaOptions, Result,
    VersionVector,
};
use crate::wal::durable::{self, Files};
use crate::wal::{self, Lsn, Wal};

mod retire;

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

/// What [`Replica::receive`] did with a set of operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Applied now (including buffered ones they unblocked).
    pub applied: usize,
    /// Held until their predecessors arrive.
    pub buffered: usize,
    /// Already known.
    pub duplicates: usize,
    /// Operations of actors not in [`ReplicaOptions::writers`], skipped
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

/// File holding a replica's actor key (its ed25519 secret), inside its
/// directory.
pub const ACTOR_FILE: &str = "actor.key";

/// File holding the document id (UTF-8), inside a replica directory.
pub const DOCUMENT_FILE: &str = "document";

/// Longest document id.
const MAX_DOCUMENT_ID: u64 = 4096;

/// The file in which replicas of earlier versions (without signatures)
/// kept their actor id.
const OLD_ACTOR_FILE: &str = "actor";

/// What is kept in memory of an applied operation's signature to tell a
/// repeat from a conflicting one: its second half, the scalar
/// `S = r + H(R, A, M)·a` of RFC 8032, which depends on the message even if
/// a cheating signer reuses its nonce (`R`, the first half, need not).
type SigDigest = [u8; 32];

/// Longest chain of successions followed to find a writer: as many as
/// are kept (the walk ends on a cycle too).
const MAX_SUCCESSION_CHAIN: usize = MAX_SUCCESSIONS;

/// A retirement of this replica's actor that is due.
struct PendingRetire {
    reason: RetireReason,
    /// Own operations that peers hold other versions of: from this
    /// sequence number up to the last one this replica wrote before it
    /// found out. They are written again under the new actor.
    forked: Option<(u64, u64)>,
    /// Whether those operations were forked (else: a rebuilt replica's own
    /// operations, which other replicas hold the same).
    distrust: bool,
}

/// Most equivocations kept for [`Replica::take_equivocations`].
const MAX_HELD_EQUIVOCATIONS: usize = 1024;

/// Batches of remote operations at least this large are verified on
/// several threads.
const PARALLEL_VERIFY_MIN: usize = 64;
/// Remote operations are verified in rounds of this many, so a batch with a
/// bad signature costs at most one more round.
const VERIFY_ROUND: usize = 1024;
/// Most threads verifying one batch.
const MAX_VERIFY_THREADS: usize = 8;

fn sig_digest<O>(env: &OpEnvelope<O>) -> SigDigest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&env.sig.0[32..]);
    d
}

/// What to do with a remote operation, decided before it is buffered or
/// logged.
enum Admit {
    New,
    Duplicate,
    Equivocation,
    NotAWriter,
}
/// The replica's write-ahead log directory, inside its directory.
pub const WAL_DIR: &str = "wal";

/// A durable replica of one document.
///
/// ```
/// use walrus::replica::{KvDoc, KvDocExt, Replica, ReplicaOptions};
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
    dir: PathBuf,
    opts: ReplicaOptions,
    wal: Wal,
    doc: D,
    clock: VersionVector,
    key: ActorKey,
    actor: ActorId,
    document: String,
    buffer: CausalBuffer<D::Operation>,
    /// Per actor: sequence number of the first indexed op and the LSN and
    /// signature prefix of that op and its successors, as long as they are
    /// in the log.
    index: BTreeMap<ActorId, (u64, VecDeque<(Lsn, SigDigest)>)>,
    checkpoint_lsn: Lsn,
    /// LSN of the checkpoint generation before the newest (0 if none): the
    /// log is truncated only up to it, so either generation can restore.
    older_checkpoint_lsn: Lsn,
    /// Opened from an older generation: operations whose predecessors only
    /// the lost generation held are skipped on replay (peers send them again).
    tolerant_replay: bool,
    /// What was found wrong and worked around on open.
    recovered: Vec<Recovered>,
    files: Files,
    /// Known successions, by new actor: who may write because a writer
    /// named it its successor. Always holds this directory's own chain, so
    /// the current actor's certificate (carried by its first operation) is
    /// the entry under it.
    successions: BTreeMap<ActorId, Succession>,
    /// This replica found itself behind its own actor's history: the actor
    /// is retired before anything else is written.
    retire: Option<PendingRetire>,
    /// Operations of its actor this replica held when it was opened: those
    /// it wrote since are the ones a rollback before the open could fork.
    own_at_open: u64,
    /// A snapshot's claim already retired an actor since the replica opened.
    snapshot_retired: bool,
    /// A rewrite is in progress: nothing is truncated or checkpointed
    /// automatically until it is done.
    rewriting: bool,
    bytes_since_checkpoint: u64,
    subscribers: Vec<mpsc::Sender<Change<D::Operation>>>,
    /// Equivocations seen and not yet taken ([`Replica::take_equivocations`]).
    equivocations: Vec<Equivocation>,
    poisoned: bool,
    /// Test hook: stop a checkpoint after this many steps.
    checkpoint_stop: Option<u8>,
}

impl<D: Document> Replica<D> {
    /// Opens (creating if needed) the replica in `dir`: loads the latest
    /// checkpoint and replays the log after it.
    pub fn open(dir: impl AsRef<Path>, opts: ReplicaOptions) -> Result<Replica<D>> {
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
    pub fn rebuild(dir: impl AsRef<Path>, opts: ReplicaOptions) -> Result<Replica<D>> {
        Self::open_inner(dir.as_ref(), opts, true)
    }

    fn open_inner(dir: &Path, opts: ReplicaOptions, rebuild: bool) -> Result<Replica<D>> {
        let dir = dir.to_path_buf();
        let span = info_span!("replica_open", dir = %dir.display());
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
            document,
            dir,
            opts,
            wal,
            doc,
            clock,
            index: BTreeMap::new(),
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
            poisoned: false,
            checkpoint_stop: None,
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

    fn replay(&mut self) -> Result<()> {
        let from = self.checkpoint_lsn + 1;
        for record in self.wal.iter_from(from)? {
            let record = record?;
            let env = OpEnvelope::<D::Operation>::decode(&record.payload, self.opts.max_op_size)?;
            if let Some(c) =
                env.succeeds.as_deref().copied().filter(|c| c.to == env.actor && c.verify(&self.document).is_ok())
            {
                self.learn_succession(&c);
            }
            match replay_step(&self.clock, &env, record.lsn, self.tolerant_replay, &self.dir)? {
                Step::Apply => {
                    self.bytes_since_checkpoint += record.payload.len() as u64;
                    self.apply_env(env, record.lsn);
                }
                Step::Skip => {}
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
    /// replica: it then refuses everything with [`ReplicaError::Poisoned`]
    /// until it is dropped and opened again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The equivocations [`receive`](Self::receive) found since the last
    /// call (at most 1024 are kept), including those in calls that
    /// returned an error, whose [`Received`] report was lost.
    pub fn take_equivocations(&mut self) -> Vec<Equivocation> {
        std::mem::take(&mut self.equivocations)
    }

    /// A receiver of every change applied from now on.
    pub fn subscribe(&mut self) -> mpsc::Receiver<Change<D::Operation>> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.push(tx);
        rx
    }

    fn check(&self) -> Result<()> {
        if self.poisoned {
            return Err(ReplicaError::Poisoned);
        }
        Ok(())
    }

    fn notify(&mut self, change: impl FnOnce() -> Change<D::Operation>) {
        if self.subscribers.is_empty() {
            return;
        }
        let change = change();
        self.subscribers.retain(|s| s.send(change.clone()).is_ok());
    }

    fn apply_env(&mut self, env: OpEnvelope<D::Operation>, lsn: Lsn) {
        self.clock.observe(env.actor, env.seq);
        let entry = self.index.entry(env.actor).or_insert_with(|| (env.seq, VecDeque::new()));
        if entry.0 + entry.1.len() as u64 != env.seq {
            *entry = (env.seq, VecDeque::new());
        }
        entry.1.push_back((lsn, sig_digest(&env)));
        self.doc.apply(env.op);
    }

    /// This replica's next sequence number (a merged hostile snapshot could
    /// claim the last one).
    fn next_seq(&self) -> Result<u64> {
        let have = self.clock.get(&self.actor);
        have.checked_add(1).ok_or(ReplicaError::Rejected {
            actor: self.actor,
            seq: have,
            reason: "this actor's sequence numbers are exhausted".into(),
        })
    }

    fn encode_checked(&self, env: &OpEnvelope<D::Operation>) -> Result<Vec<u8>> {
        let bytes = env.encode()?;
        if bytes.len() > self.opts.max_op_size {
            return Err(ReplicaError::TooLarge { len: bytes.len(), limit: self.opts.max_op_size });
        }
        Ok(bytes)
    }

    /// Checks a local operation and signs it as `seq` of this replica's actor.
    fn sign_local(&self, seq: u64, op: D::Operation) -> Result<OpEnvelope<D::Operation>> {
        self.check_writer(&self.actor, seq)?;
        if let Err(reason) = D::check_author(&op, &self.actor) {
            return Err(ReplicaError::Rejected { actor: self.actor, seq, reason });
        }
        if let Err(reason) = self.doc.check_op(&op) {
            return Err(ReplicaError::Rejected { actor: self.actor, seq, reason });
        }
        let cert = if seq == 1 { self.successions.get(&self.actor).copied() } else { None };
        Ok(OpEnvelope::signed_succeeding(&self.key, &self.document, seq, op, cert)?)
    }

    fn check_writer(&self, actor: &ActorId, seq: u64) -> Result<()> {
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
        Err(ReplicaError::NotAWriter { actor: *actor, seq })
    }

    /// The signature prefix of the applied operation (`actor`, `seq`), if it
    /// is still in the log.
    fn indexed_sig(&self, actor: &ActorId, seq: u64) -> Option<&SigDigest> {
        let (first, entries) = self.index.get(actor)?;
        let i = usize::try_from(seq.checked_sub(*first)?).ok()?;
        entries.get(i).map(|(_, sig)| sig)
    }

    /// Whether (`env.actor`, `env.seq`) is already here: `Some(true)` with
    /// the same signature, `Some(false)` with another one, `None` if not.
    fn known(&self, env: &OpEnvelope<D::Operation>) -> Option<bool> {
        if env.seq <= self.clock.get(&env.actor) {
            // Applied. Without a record of it (truncated, or merged from a
            // snapshot) a conflict cannot be told: treat it as a repeat.
            match self.indexed_sig(&env.actor, env.seq) {
                Some(sig) => Some(*sig == sig_digest(env)),
                None => Some(true),
            }
        } else {
            self.buffer.get(&env.actor, env.seq).map(|held| held.sig == env.sig)
        }
    }

    /// Checks the signatures of the operations in `ops` that will need it
    /// (those from a writer), on several threads if there are many:
    /// verification costs far more than applying. `None` where it was not
    /// checked.
    #[allow(clippy::type_complexity)]
    fn verify_batch(&self, ops: Vec<OpEnvelope<D::Operation>>) -> Vec<(OpEnvelope<D::Operation>, Option<bool>)> {
        let todo: Vec<bool> = ops.iter().map(|env| self.check_writer(&env.actor, env.seq).is_ok()).collect();
        let count = todo.iter().filter(|&&t| t).count();
        if count < PARALLEL_VERIFY_MIN {
            return ops.into_iter().map(|env| (env, None)).collect();
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_VERIFY_THREADS);
        if threads < 2 {
            return ops.into_iter().map(|env| (env, None)).collect();
        }
        let doc = self.document.as_str();
        let per_thread = ops.len().div_ceil(threads);
        // Operations are `Send` but need not be `Sync`: each thread takes
        // its own share out of a slot.
        type Share<O> = Vec<(OpEnvelope<O>, bool)>;
        let mut slots: Vec<Mutex<Option<Share<D::Operation>>>> = Vec::new();
        let mut items = ops.into_iter().zip(todo);
        loop {
            let share: Share<D::Operation> = items.by_ref().take(per_thread).collect();
            if share.is_empty() {
                break;
            }
            slots.push(Mutex::new(Some(share)));
        }
        let take = |slots: &[Mutex<Option<Share<D::Operation>>>], i: usize| {
            slots.get(i).and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take())
        };
        let verify = move |share: Share<D::Operation>| -> Vec<(OpEnvelope<D::Operation>, Option<bool>)> {
            share
                .into_iter()
                .map(|(env, check)| (check.then(|| env.verify(doc).is_ok()), env))
                .map(|(ok, env)| (env, ok))
                .collect()
        };
        let results = std::thread::scope(|scope| {
            let slots = &slots;
            // Share 0 on this thread, the others on their own. A thread that
            // cannot be created (resource limits) leaves its share in its
            // slot: verified inline later, in order.
            let handles: Vec<_> = (1..slots.len())
                .map(|i| std::thread::Builder::new().spawn_scoped(scope, move || take(slots, i).map(verify)).ok())
                .collect();
            let mut results = vec![take(slots, 0).map(verify)];
            for h in handles {
                results.push(match h.map(|h| h.join()) {
                    Some(Ok(r)) => r,
                    // Only an operation type's `Serialize` could panic here:
                    // pass it on, as verifying on this thread would.
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    None => None,
                });
            }
            results
        });
        let mut out = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Some(part) => out.extend(part),
                None => out.extend(take(&slots, i).into_iter().flatten().map(|(env, _)| (env, None))),
            }
        }
        out
    }

    /// Decides whether a remote operation is new, a repeat, or a second
    /// signed operation for a taken (actor, seq). Every operation from a
    /// writer must carry its actor's valid signature (`verified`: the result
    /// of checking it already, if known), repeats included: so a bad
    /// signature ends a batch at the same place on every replica, whatever
    /// each already holds.
    fn admit(&mut self, env: &OpEnvelope<D::Operation>, mut verified: Option<bool>) -> Result<Admit> {
        if let Some(c) = &env.succeeds {
            // The operation's signature covers the certificate: check it
            // first, so nobody but the actor can attach one; then the
            // certificate itself. Either failing ends the batch.
            if env.seq != 1 || c.to != env.actor {
                return Err(EnvelopeError::BadSuccession { from: c.from, to: c.to }.into());
            }
            match verified {
                Some(true) => {}
                Some(false) => return Err(EnvelopeError::BadSignature { actor: env.actor, seq: env.seq }.into()),
                None => env.verify(&self.document)?,
            }
            verified = Some(true);
            c.verify(&self.document)?;
            self.learn_succession(c);
        }
        if self.check_writer(&env.actor, env.seq).is_err() {
            return Ok(Admit::NotAWriter);
        }
        match verified {
            Some(true) => {}
            Some(false) => return Err(EnvelopeError::BadSignature { actor: env.actor, seq: env.seq }.into()),
            None => env.verify(&self.document)?,
        }
        match self.known(env) {
            Some(true) => return Ok(Admit::Duplicate),
            Some(false) => return Ok(Admit::Equivocation),
            None => {}
        }
        // Signed by its actor, but it may still name another actor inside.
        D::check_author(&env.op, &env.actor).map_err(|reason| ReplicaError::Rejected {
            actor: env.actor,
            seq: env.seq,
            reason,
        })?;
        Ok(Admit::New)
    }

    /// Writes a local operation: `make` builds it from the current state and
    /// this replica's actor. The operation is durable in the log before it
    /// is applied and before this returns; the returned envelope is what to
    /// send to peers.
    pub fn update<F>(&mut self, make: F) -> Result<OpEnvelope<D::Operation>>
    where
        F: FnOnce(&D, ActorId) -> D::Operation,
    {
        self.check()?;
        if self.retire.is_some() {
            self.complete_retire()?;
        }
        let op = make(&self.doc, self.actor);
        let seq = self.next_seq()?;
        let env = self.sign_local(seq, op)?;
        let bytes = self.encode_checked(&env)?;
        let lsn = self.wal.append(&bytes)?;
        self.bytes_since_checkpoint += bytes.len() as u64;
        self.apply_env(env.clone(), lsn);
        self.notify(|| Change::Op { origin: Origin::Local, op: env.clone() });
        if let Err(e) = self.maybe_checkpoint() {
            // The operation is committed: report it as written. A failed
            // checkpoint only delays truncation (and was logged).
            warn!(error = %e, "automatic checkpoint after a committed write failed");
        }
        Ok(env)
    }

    /// Writes several local operations with one wait for durability (one
    /// group commit instead of one per operation). Each `make` sees the
    /// state with the earlier ones applied. Returns one result per maker,
    /// in order; operations are durable before any is visible to
    /// subscribers and before this returns.
    ///
    /// ```
    /// use walrus::replica::{KvDoc, KvDocExt, Replica, ReplicaOptions};
    /// let dir = tempfile::tempdir()?;
    /// let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
    /// let makers = (0..3).map(|i| move |d: &KvDoc, a| d.put_op(a, &format!("k{i}"), "v"));
    /// let done = r.update_many(makers);
    /// assert!(done.iter().all(|r| r.is_ok()));
    /// assert_eq!(r.clock().get(&r.actor()), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_many<I, F>(&mut self, makes: I) -> Vec<Result<OpEnvelope<D::Operation>>>
    where
        I: IntoIterator<Item = F>,
        F: FnOnce(&D, ActorId) -> D::Operation,
    {
        let mut results = Vec::new();
        let mut last_lsn = None;
        if self.retire.is_some() {
            if let Err(e) = self.complete_retire() {
                results.push(Err(e));
                return results;
            }
        }
        for make in makes {
            if let Err(e) = self.check() {
                results.push(Err(e));
                continue;
            }
            let op = make(&self.doc, self.actor);
            let seq = match self.next_seq() {
                Ok(s) => s,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let env = match self.sign_local(seq, op) {
                Ok(env) => env,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let bytes = match self.encode_checked(&env) {
                Ok(b) => b,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            match self.wal.append_nowait(&bytes) {
                Ok(lsn) => {
                    self.bytes_since_checkpoint += bytes.len() as u64;
                    self.apply_env(env.clone(), lsn);
                    last_lsn = Some(lsn);
                    results.push(Ok(env));
                }
                Err(e) => {
                    self.poisoned = true;
                    results.push(Err(e.into()));
                }
            }
        }
        if let Some(lsn) = last_lsn {
            if let Err(e) = self.wal.wait_durable(lsn) {
                // Applied in memory but not durable: nothing may be acknowledged.
                self.poisoned = true;
                let mut first = Some(ReplicaError::from(e));
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(first.take().unwrap_or(ReplicaError::Poisoned));
                }
                return results;
            }
        }
        for env in results.iter().filter_map(|r| r.as_ref().ok()) {
            self.notify(|| Change::Op { origin: Origin::Local, op: env.clone() });
        }
        if let Err(e) = self.maybe_checkpoint() {
            // The operations are committed; a failed checkpoint only delays truncation.
            warn!(error = %e, "automatic checkpoint after a committed batch failed");
        }
        results
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
    /// [`take_equivocations`](Self::take_equivocations)).
    pub fn receive<I>(&mut self, ops: I) -> Result<Received>
    where
        I: IntoIterator<Item = OpEnvelope<D::Operation>>,
    {
        self.check()?;
        let mut report = Received::default();
        let mut ready = Vec::new();
        let mut first_error = None;
        let mut ops = ops.into_iter().peekable();
        let mut forged = false;
        let mut own = Vec::new();
        while ops.peek().is_some() && !forged && !self.poisoned {
            let round: Vec<_> = ops.by_ref().take(VERIFY_ROUND).collect();
            for (env, verified) in self.verify_batch(round) {
                if forged || self.poisoned {
                    break;
                }
                forged = self.receive_one(env, verified, &mut report, &mut ready, &mut own, &mut first_error);
            }
        }
        report.applied = ready.len();
        if let Some(last) = ready.last().map(|(lsn, _)| *lsn) {
            if let Err(e) = self.wal.wait_durable(last) {
                self.poisoned = true;
                return Err(e.into());
            }
        }
        for (_, env) in ready {
            self.notify(|| Change::Op { origin: Origin::Remote, op: env });
        }
        if self.retire.is_some() {
            self.complete_retire()?;
        }
        if !own.is_empty() {
            // The retired actor's operations, now another actor's.
            let later = self.receive(own)?;
            report.applied += later.applied;
            report.buffered += later.buffered;
            report.duplicates += later.duplicates;
            report.not_writers += later.not_writers;
            report.rejected += later.rejected;
            report.equivocations.extend(later.equivocations);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.maybe_checkpoint()?;
        Ok(report)
    }

    /// Admits, buffers or logs and applies one remote operation. True if
    /// its signature is bad: the sender is forging, and the rest of what
    /// it sent is not looked at.
    fn receive_one(
        &mut self,
        env: OpEnvelope<D::Operation>,
        verified: Option<bool>,
        report: &mut Received,
        ready: &mut Vec<(Lsn, OpEnvelope<D::Operation>)>,
        own: &mut Vec<OpEnvelope<D::Operation>>,
        first_error: &mut Option<ReplicaError>,
    ) -> bool {
        let admitted = self.admit(&env, verified);
        if env.actor == self.actor {
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
            Ok(Admit::Equivocation) if env.actor == self.actor => {
                report.duplicates += 1;
                return false;
            }
            Ok(Admit::Equivocation) => {
                warn!(actor = %env.actor, seq = env.seq, "equivocation: two signed operations for one sequence number");
                let found = Equivocation { actor: env.actor, seq: env.seq };
                if self.equivocations.len() < MAX_HELD_EQUIVOCATIONS {
                    self.equivocations.push(found.clone());
                }
                report.equivocations.push(found);
                return false;
            }
            Err(e) => {
                // Decided here, not from `first_error`: an earlier
                // operation's error may already be held there.
                let forged = matches!(
                    e,
                    ReplicaError::Envelope(EnvelopeError::BadSignature { .. } | EnvelopeError::BadSuccession { .. })
                );
                first_error.get_or_insert(e);
                return forged;
            }
        }
        // Only an operation that must wait is measured, for the
        // buffer's byte limit.
        let early = env.seq > self.clock.get(&env.actor).saturating_add(1);
        let size = if early { env.encode().map_or(usize::MAX, |b| b.len()) } else { 0 };
        match self.buffer.offer_sized(env, &self.clock, size) {
            Ok(Offer::Ready(list)) => {
                // Apply now so later offers see the advanced clock.
                if let Err(e) = self.write_remote(list, ready, report) {
                    first_error.get_or_insert(e);
                }
            }
            Ok(Offer::Buffered) => report.buffered += 1,
            Ok(Offer::Duplicate) => report.duplicates += 1,
            Err(full) => {
                first_error.get_or_insert(full.into());
            }
        }
        false
    }

    /// Validates, logs (without waiting for durability) and applies ready
    /// remote operations. The caller waits for durability before anything
    /// is published; `&mut self` keeps the state unobserved meanwhile.
    ///
    /// `list` is the delivered operation followed by held successors it
    /// unblocked. The delivered one refused is an error (its sender's
    /// fault); a successor refused is counted in `report.rejected`, and it
    /// and the rest of its actor's held operations are dropped.
    fn write_remote(
        &mut self,
        list: Vec<OpEnvelope<D::Operation>>,
        done: &mut Vec<(Lsn, OpEnvelope<D::Operation>)>,
        report: &mut Received,
    ) -> Result<()> {
        let count = list.len();
        for (i, env) in list.into_iter().enumerate() {
            let checked = match self.doc.check_op(&env.op) {
                Ok(()) => self.encode_checked(&env),
                Err(reason) => Err(ReplicaError::Rejected { actor: env.actor, seq: env.seq, reason }),
            };
            let bytes = match checked {
                Ok(b) => b,
                Err(e) => {
                    let dropped = self.buffer.discard_actor(&env.actor);
                    if i == 0 {
                        return Err(e);
                    }
                    warn!(actor = %env.actor, seq = env.seq, error = %e, "a held operation was refused once its predecessors arrived");
                    report.rejected += count - i + dropped;
                    return Ok(());
                }
            };
            let lsn = match self.wal.append_nowait(&bytes) {
                Ok(lsn) => lsn,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e.into());
                }
            };
            self.bytes_since_checkpoint += bytes.len() as u64;
            self.apply_env(env.clone(), lsn);
            done.push((lsn, env));
        }
        Ok(())
    }

    /// What a peer whose version vector is `theirs` is missing: operations
    /// in an order it can apply, at most about `byte_budget` encoded bytes
    /// (always at least one operation), or a snapshot if some were truncated.
    pub fn ops_since(&self, theirs: &VersionVector, byte_budget: usize) -> Result<Catchup<D>> {
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
    pub fn encoded_ops_since(
        &self,
        theirs: &VersionVector,
        byte_budget: usize,
    ) -> Result<Option<(Vec<Vec<u8>>, bool)>> {
        self.check()?;
        let mut wanted = BTreeSet::new();
        for (actor, &have) in self.clock.iter() {
            let from = theirs.get(actor).saturating_add(1);
            if from > have {
                continue;
            }
            let Some((first, lsns)) = self.index.get(actor) else {
                return Ok(None);
            };
            if from < *first || first + lsns.len() as u64 <= have {
                return Ok(None);
            }
            wanted.extend(lsns.iter().skip((from - first) as usize).map(|(lsn, _)| *lsn));
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
    pub fn merge_snapshot(&mut self, state: D, clock: VersionVector) -> Result<()> {
        self.check()?;
        let span = info_span!("replica_merge_snapshot", actors = clock.len());
        let _g = span.enter();
        self.doc.check_merge(&state).map_err(ReplicaError::SnapshotRejected)?;
        // Not `SnapshotRejected`: an honest peer's state may hold them
        // (written before the list changed), so it is no fault.
        if let Some((actor, seq)) = clock.iter().find(|(a, s)| self.check_writer(a, **s).is_err()) {
            return Err(ReplicaError::NotAWriter { actor: *actor, seq: *seq });
        }
        if clock.get(&self.actor) > self.clock.get(&self.actor) {
            // A peer holds more of this replica's actor than it does: the
            // replica was restored or rolled back. Never write under it
            // again. What it wrote since it opened is rewritten first, so
            // the merge does not take those operations for ones the peer
            // deleted. A snapshot's clock is not signed: once per open, so
            // lying snapshots cannot make it retire actor after actor.
            if self.snapshot_retired {
                return Err(ReplicaError::SnapshotRejected(format!(
                    "it claims {} operations of this replica's actor, which has {}, again",
                    clock.get(&self.actor),
                    self.clock.get(&self.actor)
                )));
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
                Err(e @ (ReplicaError::Rejected { .. } | ReplicaError::TooLarge { .. })) => {
                    warn!(error = %e, "an operation held until a snapshot was refused");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes a checkpoint of the current state and deletes the log
    /// segments it makes redundant.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.check()?;
        let span = info_span!("replica_checkpoint");
        let _g = span.enter();
        let lsn = self.wal.sync()?;
        let cp =
            Checkpoint { lsn, clock: self.clock.clone(), state: self.doc.clone(), successions: self.succession_list() };
        checkpoint::write(&self.files, &self.dir, &cp, self.checkpoint_stop)?;
        if self.checkpoint_stop.is_some() {
            return Ok(());
        }
        self.after_checkpoint(lsn)
    }

    fn after_checkpoint(&mut self, lsn: Lsn) -> Result<()> {
        // The generation that was newest is now the older one: the log is
        // kept from just after it, so a damaged newest checkpoint still
        // leaves a way back to every acknowledged write.
        self.older_checkpoint_lsn = self.checkpoint_lsn;
        self.checkpoint_lsn = lsn;
        self.tolerant_replay = false;
        self.bytes_since_checkpoint = 0;
        let removed = if self.rewriting { 0 } else { self.wal.truncate_before(self.older_checkpoint_lsn + 1)? };
        let first = self.wal.first_lsn();
        for (seq, lsns) in self.index.values_mut() {
            while lsns.front().is_some_and(|&(l, _)| l < first) {
                lsns.pop_front();
                *seq += 1;
            }
        }
        info!(lsn, removed, "checkpoint written");
        Ok(())
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
        if !self.rewriting
            && self.opts.checkpoint_bytes > 0
            && self.bytes_since_checkpoint >= self.opts.checkpoint_bytes
        {
            if let Err(e) = self.checkpoint() {
                warn!(error = %e, "automatic checkpoint failed");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Test hook: make the next checkpoints stop after `step` steps (1:
    /// header written, 2: body written, 3: temp file synced, 4: renamed),
    /// as if the process crashed there.
    #[doc(hidden)]
    pub fn set_checkpoint_crash_point(&mut self, step: Option<u8>) {
        self.checkpoint_stop = step;
    }

    /// Makes everything durable and closes the log.
    pub fn close(self) -> Result<()> {
        self.wal.close()?;
        Ok(())
    }
}

/// The document id stored in the replica directory `dir`, if any.
pub(crate) fn read_document(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(DOCUMENT_FILE);
    let corrupt = |reason: String| ReplicaError::Corrupt { path: path.clone(), reason };
    match durable::read_bounded(&path, MAX_DOCUMENT_ID) {
        Ok(Some(bytes)) => Ok(Some(String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?)),
        Ok(None) => Ok(None),
        Err(wal::Error::Corrupt { reason, .. }) => Err(corrupt(format!("too long for a document id: {reason}"))),
        Err(e) => Err(e.into()),
    }
}

fn load_or_create_document(files: &Files, dir: &Path, wanted: Option<&str>) -> Result<String> {
    match read_document(dir)? {
        Some(stored) => match wanted {
            Some(w) if w != stored => Err(ReplicaError::Corrupt {
                path: dir.join(DOCUMENT_FILE),
                reason: format!(
                    "this replica belongs to document {stored:?}, not {w:?}: operations signed for one are invalid in the other"
                ),
            }),
            _ => Ok(stored),
        },
        None => {
            let id = wanted.unwrap_or_default().to_string();
            if id.len() as u64 > MAX_DOCUMENT_ID || id.chars().any(char::is_control) {
                return Err(ReplicaError::InvalidDocumentId(id.chars().take(64).collect()));
            }
            files.write_atomic(&dir.join(DOCUMENT_FILE), id.as_bytes(), false)?;
            Ok(id)
        }
    }
}

fn load_or_create_key(files: &Files, dir: &Path) -> Result<ActorKey> {
    let path = dir.join(ACTOR_FILE);
    if !path.exists() && dir.join(OLD_ACTOR_FILE).exists() {
        return Err(ReplicaError::Corrupt {
            path: dir.join(OLD_ACTOR_FILE),
            reason: "this replica was written by an earlier version without signed operations; \
                     start a new replica directory and sync it from peers"
                .into(),
        });
    }
    Ok(ActorKey::load_or_create_in(files, &path)?)
}
