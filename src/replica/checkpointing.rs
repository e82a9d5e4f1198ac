//! When and how a replica checkpoints its state, and what the log and
//! the index then let go of. (The checkpoint file itself is written and
//! read by the `checkpoint` module.)

use tracing::{info, info_span};

use super::checkpoint::{self, Checkpoint};
use super::{Document, Replica, StorageError};
use crate::wal::Lsn;

impl<D: Document> Replica<D> {
    /// Writes a checkpoint of the current state and deletes the log
    /// segments it makes redundant.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.check()?;
        let span = info_span!("replica_checkpoint", doc = %self.document, ops = self.clock.total());
        let _g = span.enter();
        let lsn = self.wal.sync()?;
        let cp = Checkpoint {
            lsn,
            clock: self.clock.clone(),
            state: self.doc.clone(),
            successions: self.succession_list(),
            heads: self.head_list(),
        };
        checkpoint::write(&self.files, &self.dir, &cp, self.checkpoint_stop)?;
        if self.checkpoint_stop.is_some() {
            return Ok(());
        }
        self.after_checkpoint(lsn)
    }

    pub(super) fn after_checkpoint(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        // The generation that was newest is now the older one: the log is
        // kept from just after it, so a damaged newest checkpoint still
        // leaves a way back to every acknowledged write.
        self.older_checkpoint_lsn = self.checkpoint_lsn;
        self.checkpoint_lsn = lsn;
        self.tolerant_replay = false;
        self.bytes_since_checkpoint = 0;
        let removed = if self.rewriting { 0 } else { self.wal.truncate_before(self.older_checkpoint_lsn + 1)? };
        self.index.forget_before(self.wal.first_lsn());
        info!(lsn, removed, "checkpoint written");
        Ok(())
    }

    /// Checkpoints if [`ReplicaOptions::checkpoint_bytes`] of log were
    /// written since the last checkpoint.
    ///
    /// [`ReplicaOptions::checkpoint_bytes`]: super::ReplicaOptions::checkpoint_bytes
    pub(super) fn maybe_checkpoint(&mut self) -> Result<(), StorageError> {
        // Not during a rewrite, nor while a retirement is due: either may
        // need operations still in the log, and the older generation.
        if !self.rewriting
            && self.retire.is_none()
            && self.opts.checkpoint_bytes > 0
            && self.bytes_since_checkpoint >= self.opts.checkpoint_bytes
        {
            return self.checkpoint();
        }
        Ok(())
    }

    /// Test hook: make the next checkpoints stop after `step` steps (1:
    /// header written, 2: body written, 3: temp file synced, 4: renamed),
    /// as if the process crashed there.
    // Called through `crate::internals` only (by the crash tests).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn set_checkpoint_crash_point(&mut self, step: Option<u8>) {
        self.checkpoint_stop = step;
    }
}
