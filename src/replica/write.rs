//! The local write path: operations this replica writes, signed under
//! its actor, logged, applied and announced.

use tracing::warn;

use super::{ActorId, Change, Document, OpEnvelope, Origin, Replica, ReplicaError, Result};

impl<D: Document> Replica<D> {
    /// This replica's next sequence number (a merged hostile snapshot could
    /// claim the last one).
    pub(super) fn next_seq(&self) -> Result<u64> {
        let have = self.clock.get(&self.actor);
        have.checked_add(1).ok_or(ReplicaError::Rejected {
            actor: self.actor,
            seq: have,
            reason: "this actor's sequence numbers are exhausted".into(),
        })
    }

    pub(super) fn encode_checked(&self, env: &OpEnvelope<D::Operation>) -> Result<Vec<u8>> {
        let bytes = env.encode()?;
        if bytes.len() > self.opts.max_op_size {
            return Err(ReplicaError::TooLarge { len: bytes.len(), limit: self.opts.max_op_size });
        }
        Ok(bytes)
    }

    /// Checks a local operation and signs it as `seq` of this replica's actor.
    pub(super) fn sign_local(&self, seq: u64, op: D::Operation) -> Result<OpEnvelope<D::Operation>> {
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
}
