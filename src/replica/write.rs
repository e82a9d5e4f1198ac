//! The local write path: operations this replica writes, signed under
//! its actor, logged, applied and announced.

use tracing::warn;

use super::index::Entry;
use super::run::{Run, RUN_SPLIT_BYTES, RUN_SPLIT_OPS};
use super::{ActorId, ChainHash, Change, Document, OpEnvelope, Origin, Replica, StorageError, WriteError};
use crate::wal::Lsn;

/// Largest log record (block) the write paths make: a batch of local
/// operations, or received ones, is logged in runs of at most this many
/// bytes of operations (one operation larger than it is a block alone).
const BLOCK_BYTES: usize = RUN_SPLIT_BYTES;
/// Most operations in one block.
const BLOCK_OPS: usize = RUN_SPLIT_OPS;
/// What a block adds to its operations, at most: tag, actor, sequence
/// number, count, previous hash, flags, certificate, signature.
const BLOCK_OVERHEAD: usize = 1 + 32 + 10 + 10 + 32 + 1 + 128 + 64;

impl<D: Document> Replica<D> {
    /// This replica's next sequence number (a merged hostile snapshot could
    /// claim the last one).
    fn next_seq(&self) -> Result<u64, WriteError> {
        let have = self.clock.get(&self.actor);
        have.checked_add(1).ok_or(WriteError::SequenceExhausted { actor: self.actor, seq: have })
    }

    /// Largest operation encoding accepted: the option, and what fits in
    /// one log record with its block's framing (a refused append would
    /// poison the replica, so it is refused before anything is written).
    pub(super) fn op_limit(&self) -> usize {
        self.opts.max_op_size.min((self.opts.wal.max_record_size as usize).saturating_sub(BLOCK_OVERHEAD + 10))
    }

    /// Checks a local operation and chains it as `seq` of this replica's
    /// actor (unsigned: the block it ends up last in is signed).
    fn chain_local(&self, seq: u64, op: D::Operation) -> Result<OpEnvelope<D::Operation>, WriteError> {
        self.check_writer(&self.actor, seq)?;
        if let Err(reason) = D::check_author(&op, &self.actor) {
            return Err(WriteError::Rejected { actor: self.actor, seq, reason });
        }
        if let Err(reason) = self.doc.check_op(&op) {
            return Err(WriteError::Rejected { actor: self.actor, seq, reason });
        }
        let cert = if seq == 1 { self.successions.get(&self.actor).copied().map(Box::new) } else { None };
        let prev = self.heads.get(&self.actor).copied().unwrap_or(ChainHash::ZERO);
        let env = OpEnvelope::encode::<D>(&self.chain, self.actor, seq, prev, op, cert)?;
        let limit = self.op_limit();
        if env.op_bytes().len() > limit {
            return Err(WriteError::TooLarge { len: env.op_bytes().len(), limit });
        }
        Ok(env)
    }

    /// Writes a local operation: `make` builds it from the current state and
    /// this replica's actor. The operation is durable in the log before
    /// anyone sees it applied and before this returns; the returned
    /// envelope (signed: it is its own chain head) is what to send to peers.
    ///
    /// It is [`update_many`](Self::update_many) of one operation.
    pub fn update<F>(&mut self, make: F) -> Result<OpEnvelope<D::Operation>, WriteError>
    where
        F: FnOnce(&D, ActorId) -> D::Operation,
    {
        // One maker gives one result; the fallback is never taken.
        self.update_many([make]).pop().unwrap_or(Err(WriteError::Storage(StorageError::Poisoned)))
    }

    /// Writes several local operations with one wait for durability (one
    /// group commit instead of one per operation) and one signature per
    /// log record of them: they form a run of this replica's chain, and
    /// the last operation of each record is signed. Each `make` sees the
    /// state with the earlier ones applied. Returns one result per maker,
    /// in order; operations are durable before any is visible to
    /// subscribers and before this returns. Send the written operations
    /// to peers together: those without a signature are authenticated by
    /// the signed one after them.
    ///
    /// ```
    /// use walrus::replica::{KvDoc, Replica, ReplicaOptions};
    /// let dir = tempfile::tempdir()?;
    /// let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
    /// let makers = (0..3).map(|i| move |d: &KvDoc, a| d.put_op(a, &format!("k{i}"), "v"));
    /// let done = r.update_many(makers);
    /// assert!(done.iter().all(|r| r.is_ok()));
    /// assert_eq!(r.clock().get(&r.actor()), 3);
    /// assert!(done[2].as_ref().is_ok_and(|env| env.signature().is_some()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_many<I, F>(&mut self, makes: I) -> Vec<Result<OpEnvelope<D::Operation>, WriteError>>
    where
        I: IntoIterator<Item = F>,
        F: FnOnce(&D, ActorId) -> D::Operation,
    {
        // Each result is an index into `written` (once its block is logged).
        let mut results: Vec<Result<usize, WriteError>> = Vec::new();
        let mut written: Vec<(Lsn, OpEnvelope<D::Operation>)> = Vec::new();
        let mut staged: Vec<OpEnvelope<D::Operation>> = Vec::new();
        // A poisoned replica writes nothing, not even a due retirement's
        // files: each maker gets the error below.
        if self.retire.is_some() && !self.poisoned {
            if let Err(e) = self.complete_retire() {
                return vec![Err(e)];
            }
        }
        let mut staged_bytes = 0usize;
        let mut log_error = None;
        // Poisoned (or left half-staged by a panic): nothing is written.
        if self.check().is_err() {
            return makes.into_iter().map(|_| Err(WriteError::Storage(StorageError::Poisoned))).collect();
        }
        self.staging = true;
        for make in makes {
            let poisoned = if self.poisoned { Err(StorageError::Poisoned) } else { Ok(()) };
            // Refusals that need no operation are found before the maker
            // runs (a document that edits in place would be poisoned by
            // an operation made and then refused).
            let ready = poisoned.map_err(WriteError::from).and_then(|()| {
                let seq = self.next_seq()?;
                self.check_writer(&self.actor, seq)?;
                Ok(())
            });
            let chained = ready.and_then(|()| {
                // A maker that panics reads the state only: what the ones
                // before it made is logged as usual (never acknowledged),
                // so state and log agree, and the panic goes on.
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make(&self.doc, self.actor)));
                let op = match made {
                    Ok(op) => op,
                    Err(panic) => {
                        if D::EDITS_IN_PLACE {
                            // The state may hold part of an edit.
                            self.poisoned = true;
                        }
                        let _ = self.log_staged(&mut staged, true, &mut written);
                        self.staging = false;
                        std::panic::resume_unwind(panic);
                    }
                };
                let chained = self.next_seq().and_then(|seq| self.chain_local(seq, op));
                if chained.is_err() && D::EDITS_IN_PLACE {
                    // The edit is in the state and will not be logged.
                    self.poisoned = true;
                }
                chained
            });
            let env = match chained {
                Ok(env) => env,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if !staged.is_empty() && (staged_bytes + env.op_bytes().len() > BLOCK_BYTES || staged.len() == BLOCK_OPS) {
                if let Err(e) = self.log_staged(&mut staged, true, &mut written) {
                    log_error.get_or_insert(e);
                }
                staged_bytes = 0;
            }
            staged_bytes += env.op_bytes().len() + 2;
            self.apply_staged(&env);
            results.push(Ok(written.len() + staged.len()));
            staged.push(env);
        }
        if !staged.is_empty() {
            if let Err(e) = self.log_staged(&mut staged, true, &mut written) {
                log_error.get_or_insert(e);
            }
        }
        self.staging = false;
        let last = written.last().map(|(lsn, _)| *lsn);
        let committed = self.commit(Origin::Local, last, written.iter().map(|(_, env)| env));
        // A failed append poisoned the replica: what was logged before it
        // is not acknowledged either (the state holds unlogged operations).
        let mut first_error = log_error.or(committed.err());
        let failed = first_error.is_some();
        results
            .into_iter()
            .map(|r| match r {
                Ok(i) if !failed => match written.get(i) {
                    Some((_, env)) => Ok(env.clone()),
                    // Staged, but its block was never logged.
                    None => Err(WriteError::Storage(StorageError::Poisoned)),
                },
                // Applied in memory but not durable: nothing may be acknowledged.
                Ok(_) => Err(WriteError::Storage(first_error.take().unwrap_or(StorageError::Poisoned))),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Applies an operation to the state before its block is logged (a
    /// later operation of the same write is made from that state). The
    /// caller logs it before anything is published; `&mut self` keeps
    /// the state unobserved meanwhile, and a failed append poisons the
    /// replica.
    pub(super) fn apply_staged(&mut self, env: &OpEnvelope<D::Operation>) {
        self.clock.observe(env.actor(), env.seq());
        self.heads.insert(env.actor(), env.hash());
        self.doc.apply(env.op().clone());
    }

    /// Logs staged (applied) operations as blocks, without waiting for
    /// durability, and indexes them; they move to `written`. A block is
    /// one actor's consecutive operations up to a signed one (or
    /// [`BLOCK_BYTES`]); with `sign_own`, this replica signs the last
    /// operation of each block of its own actor. A failed append poisons
    /// the replica (what was applied and what was logged then differ);
    /// the operations not logged stay out of `written`.
    pub(super) fn log_staged(
        &mut self,
        staged: &mut Vec<OpEnvelope<D::Operation>>,
        sign_own: bool,
        written: &mut Vec<(Lsn, OpEnvelope<D::Operation>)>,
    ) -> Result<(), StorageError> {
        written.reserve(staged.len());
        let mut left = staged.len();
        let mut rest = std::mem::take(staged).into_iter().peekable();
        while let Some(first) = rest.next() {
            if self.poisoned {
                return Err(StorageError::Poisoned);
            }
            let actor = first.actor();
            let mut bytes = first.op_bytes().len();
            // Most blocks of a receive are short (gossip from many writers).
            let mut block = Vec::with_capacity(left.min(64));
            block.push(first);
            while let Some(e) = rest.peek() {
                let last = &block[block.len() - 1];
                if last.signature().is_some()
                    || e.actor() != actor
                    || Some(e.seq()) != last.seq().checked_add(1)
                    || bytes + e.op_bytes().len() > BLOCK_BYTES
                    || block.len() == BLOCK_OPS
                {
                    break;
                }
                bytes += e.op_bytes().len();
                block.extend(rest.next());
            }
            let end = block.len();
            left -= end;
            for env in block.iter_mut().take(end - 1) {
                // Only a block's last signature is kept: the others are
                // implied by it.
                env.set_signature(None);
            }
            if sign_own && actor == self.actor {
                if let Some(last) = block.last_mut().filter(|l| l.signature().is_none()) {
                    last.sign(&self.key);
                }
            }
            let record = match Run::of(&block) {
                Some(run) => run.block(),
                None => continue,
            };
            let lsn = match self.wal.append_nowait(&record) {
                Ok(lsn) => lsn,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e.into());
                }
            };
            self.bytes_since_checkpoint += record.len() as u64;
            for env in block {
                let entry = Entry { lsn, hash: env.hash(), signed: env.signature().is_some(), legacy: false };
                self.index.insert(env.actor(), env.seq(), env.prev(), entry);
                written.push((lsn, env));
            }
        }
        Ok(())
    }

    /// The second half of every write, local or remote: waits until the
    /// operations logged by [`log_staged`](Self::log_staged) (up to
    /// `last`) are durable (under a durable sync policy), announces
    /// `written` to subscribers, and checkpoints if one is due. In an open
    /// group ([`grouped`](Self::grouped)) all of that waits for the group.
    ///
    /// A failed wait poisons the replica and is returned, and nothing is
    /// announced. A failed checkpoint is only logged: the operations are
    /// durable and applied, so the write succeeded, and the next write
    /// tries the checkpoint again.
    pub(super) fn commit<'a>(
        &mut self,
        origin: Origin,
        last: Option<Lsn>,
        written: impl IntoIterator<Item = &'a OpEnvelope<D::Operation>>,
    ) -> Result<(), StorageError>
    where
        D::Operation: 'a,
    {
        if self.in_group() {
            self.defer(origin, last, written);
            return Ok(());
        }
        if let Some(lsn) = last {
            self.wait_logged(lsn)?;
        }
        for env in written {
            self.notify(|| Change::Op { origin, op: env.clone() });
        }
        self.checkpoint_if_due();
        Ok(())
    }

    /// Waits until the log is durable up to `lsn`, as the log's policy
    /// says: synced under a durable one; under `SyncPolicy::None` only
    /// handed to the OS (no fsync, as asked). A failure poisons the replica.
    pub(super) fn wait_logged(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        let done = if self.opts.wal.sync.is_durable() { self.wal.wait_durable(lsn) } else { self.wal.flush() };
        if let Err(e) = done {
            self.poisoned = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Checkpoints if one is due. A failure is only logged: the next write
    /// tries again.
    pub(super) fn checkpoint_if_due(&mut self) {
        // A poisoned replica cannot checkpoint; saying so on every call
        // would only repeat the error the caller already has.
        if self.poisoned {
            return;
        }
        if let Err(e) = self.maybe_checkpoint() {
            warn!(error = %e, "automatic checkpoint failed; the next write tries again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crdts::CmRDT;

    use crate::replica::{Change, KvDoc, Origin, Replica, ReplicaOptions, StorageError};
    use crate::wal::{FaultInjector, FileOp, Injected, WalOptions};

    /// While armed, fails the creation of checkpoint files.
    #[derive(Default)]
    struct NoCheckpoints(AtomicBool);

    impl FaultInjector for NoCheckpoints {
        fn check(&self, op: FileOp, path: &Path, _len: usize) -> Result<(), Injected> {
            let checkpoint = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("checkpoint"));
            if op == FileOp::Create && checkpoint && self.0.load(Ordering::SeqCst) {
                return Err(Injected::fail(io::Error::other("injected: no checkpoint file")));
            }
            Ok(())
        }
    }

    #[test]
    fn a_failed_automatic_checkpoint_fails_neither_a_receive_nor_an_update() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a: Replica<KvDoc> = Replica::open(a_dir.path(), ReplicaOptions::default()).unwrap();
        let remote = a.update(|d, actor| d.put_op(actor, "theirs", "v")).unwrap();

        let faults = Arc::new(NoCheckpoints::default());
        // Every write makes a checkpoint due.
        let opts = ReplicaOptions {
            wal: WalOptions::default().with_faults(faults.clone()),
            checkpoint_bytes: 1,
            ..ReplicaOptions::default()
        };
        let mut b: Replica<KvDoc> = Replica::open(b_dir.path(), opts.clone()).unwrap();
        let changes = b.subscribe();
        faults.0.store(true, Ordering::SeqCst);

        let got = b.receive([remote.clone()]).expect("the operation is durable and applied: the receive succeeded");
        assert_eq!(got.applied, 1);
        assert!(matches!(changes.try_recv(), Ok(Change::Op { origin: Origin::Remote, op }) if op == remote));
        b.update(|d, actor| d.put_op(actor, "mine", "w")).expect("the update succeeded too");
        assert!(matches!(changes.try_recv(), Ok(Change::Op { origin: Origin::Local, .. })));
        assert!(!b.is_poisoned());
        assert!(!b_dir.path().join("checkpoint").exists(), "the injected failure did stop the checkpoints");

        // The next write checkpoints once it can.
        faults.0.store(false, Ordering::SeqCst);
        b.update(|d, actor| d.put_op(actor, "later", "x")).unwrap();
        assert!(b_dir.path().join("checkpoint").exists());
        drop(b);
        let b: Replica<KvDoc> = Replica::open(b_dir.path(), opts).unwrap();
        assert_eq!(b.doc().values_of("theirs"), vec!["v"]);
        assert_eq!(b.doc().values_of("mine"), vec!["w"]);
        assert_eq!(b.doc().values_of("later"), vec!["x"]);
    }

    /// A key-value document whose code panics on a put of key "boom".
    #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Fragile(KvDoc);

    impl crdts::CmRDT for Fragile {
        type Op = crate::replica::KvOp;
        type Validation = std::convert::Infallible;
        fn validate_op(&self, _op: &Self::Op) -> Result<(), Self::Validation> {
            Ok(())
        }
        fn apply(&mut self, op: Self::Op) {
            if matches!(&op, crate::replica::KvOp::Put { key, .. } if key == "boom") {
                panic!("a document's bug");
            }
            self.0.apply(op);
        }
    }

    impl crdts::CvRDT for Fragile {
        type Validation = std::convert::Infallible;
        fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
            Ok(())
        }
        fn merge(&mut self, other: Self) {
            self.0.merge(other.0);
        }
    }

    impl crate::replica::Document for Fragile {
        type Operation = crate::replica::KvOp;
    }

    #[test]
    fn a_document_panicking_between_applying_and_logging_leaves_the_replica_refusing_everything() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a: Replica<Fragile> = Replica::open(a_dir.path(), ReplicaOptions::default()).unwrap();
        let ok = a.update(|d, actor| d.0.put_op(actor, "fine", "v")).unwrap();
        let mut boom = KvDoc::default();
        boom.apply(ok.op().clone());
        let boom_op = boom.put_op(a.actor(), "boom", "x");
        let bad = crate::replica::OpEnvelope::signed::<Fragile>(
            &crate::replica::ActorKey::load(&a_dir.path().join("actor.key")).unwrap(),
            a.document(),
            2,
            ok.hash(),
            boom_op,
        )
        .unwrap();
        drop(a);
        let mut b: Replica<Fragile> = Replica::open(b_dir.path(), ReplicaOptions::default()).unwrap();
        // The first operation applied, not yet logged, when the second panics.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.receive([ok.clone(), bad.clone()])));
        assert!(caught.is_err());
        assert!(b.is_poisoned(), "state and log may differ: the replica must say so");
        assert!(matches!(
            b.update(|d, actor| d.0.put_op(actor, "more", "w")),
            Err(crate::replica::WriteError::Storage(StorageError::Poisoned))
        ));
        drop(b);
        // Reopened, it holds what its log holds.
        let b: Replica<Fragile> = Replica::open(b_dir.path(), ReplicaOptions::default()).unwrap();
        assert!(!b.is_poisoned());
        assert_eq!(b.clock().total(), 0, "nothing was logged");
    }

    #[test]
    fn an_operation_over_the_log_s_record_limit_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalOptions { max_record_size: 4096, ..WalOptions::default() };
        // The replica's own limit is larger than the log's.
        let opts = ReplicaOptions { wal, max_op_size: 1 << 20, ..ReplicaOptions::default() };
        let mut r: Replica<KvDoc> = Replica::open(dir.path(), opts).unwrap();
        let big = "x".repeat(8192);
        let err = r.update(|d, actor| d.put_op(actor, "big", &big)).unwrap_err();
        // The log's limit, less what a block adds around the operation.
        assert!(matches!(err, crate::replica::WriteError::TooLarge { limit, .. } if limit < 4096), "{err}");
        assert!(!r.is_poisoned(), "nothing was written, so nothing is out of step");
        r.update(|d, actor| d.put_op(actor, "small", "v")).unwrap();
        assert_eq!(r.clock().get(&r.actor()), 1);
    }
}
