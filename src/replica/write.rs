//! The local write path: operations this replica writes, signed under
//! its actor, logged, applied and announced.

use tracing::warn;

use super::{ActorId, Change, Document, OpEnvelope, Origin, Replica, StorageError, WriteError};
use crate::wal::Lsn;

impl<D: Document> Replica<D> {
    /// This replica's next sequence number (a merged hostile snapshot could
    /// claim the last one).
    fn next_seq(&self) -> Result<u64, WriteError> {
        let have = self.clock.get(&self.actor);
        have.checked_add(1).ok_or(WriteError::SequenceExhausted { actor: self.actor, seq: have })
    }

    pub(super) fn encode_checked(&self, env: &OpEnvelope<D::Operation>) -> Result<Vec<u8>, WriteError> {
        let bytes = env.encode()?;
        // The log's record limit caps the option: an operation the log
        // would refuse is refused here, before anything is written (a
        // refused append would poison the replica).
        let limit = self.opts.max_op_size.min(self.opts.wal.max_record_size as usize);
        if bytes.len() > limit {
            return Err(WriteError::TooLarge { len: bytes.len(), limit });
        }
        Ok(bytes)
    }

    /// Checks a local operation and signs it as `seq` of this replica's actor.
    fn sign_local(&self, seq: u64, op: D::Operation) -> Result<OpEnvelope<D::Operation>, WriteError> {
        self.check_writer(&self.actor, seq)?;
        if let Err(reason) = D::check_author(&op, &self.actor) {
            return Err(WriteError::Rejected { actor: self.actor, seq, reason });
        }
        if let Err(reason) = self.doc.check_op(&op) {
            return Err(WriteError::Rejected { actor: self.actor, seq, reason });
        }
        let cert = if seq == 1 { self.successions.get(&self.actor).copied() } else { None };
        Ok(OpEnvelope::signed_succeeding(&self.key, &self.document, seq, op, cert)?)
    }

    /// Writes a local operation: `make` builds it from the current state and
    /// this replica's actor. The operation is durable in the log before
    /// anyone sees it applied and before this returns; the returned
    /// envelope is what to send to peers.
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
    /// group commit instead of one per operation). Each `make` sees the
    /// state with the earlier ones applied. Returns one result per maker,
    /// in order; operations are durable before any is visible to
    /// subscribers and before this returns.
    ///
    /// ```
    /// use walrus::replica::{KvDoc, Replica, ReplicaOptions};
    /// let dir = tempfile::tempdir()?;
    /// let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
    /// let makers = (0..3).map(|i| move |d: &KvDoc, a| d.put_op(a, &format!("k{i}"), "v"));
    /// let done = r.update_many(makers);
    /// assert!(done.iter().all(|r| r.is_ok()));
    /// assert_eq!(r.clock().get(&r.actor()), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_many<I, F>(&mut self, makes: I) -> Vec<Result<OpEnvelope<D::Operation>, WriteError>>
    where
        I: IntoIterator<Item = F>,
        F: FnOnce(&D, ActorId) -> D::Operation,
    {
        let mut results = Vec::new();
        let mut last_lsn = None;
        // A poisoned replica writes nothing, not even a due retirement's
        // files: each maker gets the error below.
        if self.retire.is_some() && !self.poisoned {
            if let Err(e) = self.complete_retire() {
                results.push(Err(e));
                return results;
            }
        }
        for make in makes {
            let written = self.check().map_err(WriteError::from).and_then(|()| {
                let op = make(&self.doc, self.actor);
                let env = self.sign_local(self.next_seq()?, op)?;
                let bytes = self.encode_checked(&env)?;
                let lsn = self.log_and_apply(env.clone(), &bytes)?;
                Ok((lsn, env))
            });
            results.push(written.map(|(lsn, env)| {
                last_lsn = Some(lsn);
                env
            }));
        }
        let written = results.iter().filter_map(|r| r.as_ref().ok());
        if let Err(e) = self.commit(Origin::Local, last_lsn, written) {
            // Applied in memory but not durable: nothing may be acknowledged.
            let mut first = Some(e);
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(WriteError::Storage(first.take().unwrap_or(StorageError::Poisoned)));
            }
        }
        results
    }

    /// Logs an operation (without waiting for it to be durable) and applies
    /// it: the first half of every write, local or remote. A log failure
    /// poisons the replica, as what was applied and what was logged may
    /// then differ.
    pub(super) fn log_and_apply(&mut self, env: OpEnvelope<D::Operation>, bytes: &[u8]) -> Result<Lsn, StorageError> {
        let lsn = match self.wal.append_nowait(bytes) {
            Ok(lsn) => lsn,
            Err(e) => {
                self.poisoned = true;
                return Err(e.into());
            }
        };
        self.bytes_since_checkpoint += bytes.len() as u64;
        self.apply_env(env, lsn);
        Ok(lsn)
    }

    /// The second half of every write, local or remote: waits until the
    /// operations logged by [`log_and_apply`](Self::log_and_apply) (up to
    /// `last`) are durable (under a durable sync policy), announces
    /// `written` to subscribers, and checkpoints if one is due.
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
        if let Some(lsn) = last {
            // As the log's policy says: synced under a durable one; under
            // `SyncPolicy::None` only handed to the OS (no fsync, as asked).
            let done = if self.opts.wal.sync.is_durable() { self.wal.wait_durable(lsn) } else { self.wal.flush() };
            if let Err(e) = done {
                self.poisoned = true;
                return Err(e.into());
            }
        }
        for env in written {
            self.notify(|| Change::Op { origin, op: env.clone() });
        }
        // A poisoned replica cannot checkpoint; saying so on every call
        // would only repeat the error the caller already has.
        if self.poisoned {
            return Ok(());
        }
        if let Err(e) = self.maybe_checkpoint() {
            warn!(error = %e, "automatic checkpoint failed; the next write tries again");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crate::replica::{Change, KvDoc, Origin, Replica, ReplicaOptions};
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

    #[test]
    fn an_operation_over_the_log_s_record_limit_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalOptions { max_record_size: 4096, ..WalOptions::default() };
        // The replica's own limit is larger than the log's.
        let opts = ReplicaOptions { wal, max_op_size: 1 << 20, ..ReplicaOptions::default() };
        let mut r: Replica<KvDoc> = Replica::open(dir.path(), opts).unwrap();
        let big = "x".repeat(8192);
        let err = r.update(|d, actor| d.put_op(actor, "big", &big)).unwrap_err();
        assert!(matches!(err, crate::replica::WriteError::TooLarge { limit: 4096, .. }), "{err}");
        assert!(!r.is_poisoned(), "nothing was written, so nothing is out of step");
        r.update(|d, actor| d.put_op(actor, "small", "v")).unwrap();
        assert_eq!(r.clock().get(&r.actor()), 1);
    }
}
