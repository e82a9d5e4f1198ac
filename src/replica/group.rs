//! Group commit across calls: several writes and receives logged one after
//! the other, made durable by one wait on the log and announced only then.
//! A node's document worker groups what is queued (local writes, gossip
//! from several peers) so that a burst costs one fsync, not one per message.

use super::{Change, Document, OpEnvelope, Origin, Replica, StorageError};
use crate::wal::Lsn;

/// What the calls of an open group logged and have not yet made durable.
pub(super) struct Group<O> {
    /// The last record logged in the group.
    last: Option<Lsn>,
    /// Changes held back until the records are durable.
    changes: Vec<Change<O>>,
}

impl<O> Default for Group<O> {
    fn default() -> Self {
        Group { last: None, changes: Vec::new() }
    }
}

impl<D: Document> Replica<D> {
    /// Runs `f` with this replica in a group: writes and receives in it log
    /// their records without waiting for durability and hold back their
    /// announcements; when `f` returns, one wait makes them all durable
    /// (under a durable sync policy) and announces them.
    ///
    /// What the calls in `f` return is not acknowledged until the second
    /// result is `Ok`: if that wait fails, the replica is poisoned and
    /// nothing of the group may be acknowledged, published or forwarded
    /// (as when a single call's wait fails). A panic in `f` settles the
    /// group first, then goes on.
    // Used by a node's document workers (`net`).
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn grouped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> (R, Result<(), StorageError>) {
        // A group inside a group is part of the outer one.
        if self.group.is_some() {
            return (f(self), Ok(()));
        }
        self.group = Some(Group::default());
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let settled = self.finish_group();
        match out {
            Ok(r) => (r, settled),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Closes the open group: waits for its records, announces them, and
    /// checkpoints if one is due. The group is taken out first, so nothing
    /// that fails or panics here leaves the replica deferring. A replica
    /// poisoned at any point of the group (a wait that failed part-way, an
    /// append) fails the whole group: nothing of it may be acknowledged.
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    fn finish_group(&mut self) -> Result<(), StorageError> {
        let Some(group) = self.group.take() else { return Ok(()) };
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        if let Some(lsn) = group.last {
            self.wait_logged(lsn)?;
        }
        for change in group.changes {
            self.notify(|| change);
        }
        self.checkpoint_if_due();
        Ok(())
    }

    /// Whether a group is open: [`commit`](Self::commit) then defers.
    pub(super) fn in_group(&self) -> bool {
        self.group.is_some()
    }

    /// Holds `written` (logged up to `last`) back for
    /// [`settle`](Self::settle), in an open group.
    pub(super) fn defer<'a>(
        &mut self,
        origin: Origin,
        last: Option<Lsn>,
        written: impl IntoIterator<Item = &'a OpEnvelope<D::Operation>>,
    ) where
        D::Operation: 'a,
    {
        let announce = !self.subscribers.is_empty();
        let Some(group) = &mut self.group else { return };
        if last.is_some() {
            group.last = last;
        }
        if announce {
            group.changes.extend(written.into_iter().map(|env| Change::Op { origin, op: env.clone() }));
        }
    }

    /// Makes what the open group logged so far durable and announces it
    /// (the group stays open). Anything that must not run ahead of the
    /// group's records (a retirement) settles first. A failure poisons the
    /// replica, which fails the group when it closes.
    pub(super) fn settle(&mut self) -> Result<(), StorageError> {
        let Some(group) = &mut self.group else { return Ok(()) };
        let last = group.last.take();
        let changes = std::mem::take(&mut group.changes);
        if let Some(lsn) = last {
            self.wait_logged(lsn)?;
        }
        for change in changes {
            self.notify(|| change);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::replica::{Change, KvDoc, Origin, Replica, ReplicaOptions};
    use crate::wal::{FaultInjector, FileOp, Injected, WalOptions};

    /// Counts segment syncs; fails them while `fail` is set.
    #[derive(Debug, Default)]
    struct Syncs {
        count: AtomicUsize,
        fail: AtomicBool,
    }

    impl FaultInjector for Syncs {
        fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
            if op == FileOp::SyncData {
                self.count.fetch_add(1, Ordering::SeqCst);
                if self.fail.load(Ordering::SeqCst) {
                    return Err(Injected::fail(io::Error::other("injected: fdatasync failed")));
                }
            }
            Ok(())
        }
    }

    fn open(dir: &Path, faults: Arc<Syncs>) -> Replica<KvDoc> {
        let opts = ReplicaOptions { wal: WalOptions::default().with_faults(faults), ..ReplicaOptions::default() };
        Replica::open(dir, opts).unwrap()
    }

    #[test]
    fn a_group_of_receives_and_writes_is_made_durable_by_one_sync_and_announced_after_it() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a: Replica<KvDoc> = Replica::open(a_dir.path(), ReplicaOptions::default()).unwrap();
        let remote: Vec<_> = (0..3).map(|i| a.update(|d, me| d.put_op(me, &format!("r{i}"), "v")).unwrap()).collect();

        let faults = Arc::new(Syncs::default());
        let mut b = open(b_dir.path(), faults.clone());
        let changes = b.subscribe();
        let before = faults.count.load(Ordering::SeqCst);
        let ((), settled) = b.grouped(|b| {
            for env in &remote {
                assert_eq!(b.receive([env.clone()]).unwrap().applied, 1);
            }
            assert!(b.update(|d, me| d.put_op(me, "mine", "w")).is_ok());
            assert_eq!(faults.count.load(Ordering::SeqCst), before, "nothing waits for the disk inside a group");
            assert!(changes.try_recv().is_err(), "nothing is announced before it is durable");
        });
        settled.unwrap();
        assert_eq!(faults.count.load(Ordering::SeqCst), before + 1, "one sync for the whole group");
        let got: Vec<_> = changes.try_iter().collect();
        assert_eq!(got.len(), 4);
        assert!(matches!(&got[3], Change::Op { origin: Origin::Local, .. }));

        // What the group acknowledged survives a reopen.
        drop(b);
        let b = open(b_dir.path(), Arc::new(Syncs::default()));
        assert_eq!(b.doc().values_of("r2"), vec!["v"]);
        assert_eq!(b.doc().values_of("mine"), vec!["w"]);
    }

    #[test]
    fn a_group_whose_sync_fails_poisons_the_replica_and_announces_nothing() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a: Replica<KvDoc> = Replica::open(a_dir.path(), ReplicaOptions::default()).unwrap();
        let remote = a.update(|d, me| d.put_op(me, "theirs", "v")).unwrap();

        let faults = Arc::new(Syncs::default());
        let mut b = open(b_dir.path(), faults.clone());
        let changes = b.subscribe();
        faults.fail.store(true, Ordering::SeqCst);
        let (written, settled) = b.grouped(|b| {
            b.receive([remote.clone()]).unwrap();
            b.update(|d, me| d.put_op(me, "mine", "w"))
        });
        assert!(written.is_ok(), "inside the group the write is only logged");
        assert!(settled.is_err(), "the failed sync is the group's result");
        assert!(b.is_poisoned());
        assert!(changes.try_recv().is_err(), "nothing that is not durable is announced");
        assert!(b.update(|d, me| d.put_op(me, "after", "x")).is_err());
    }

    /// Fails every segment write while set.
    #[derive(Debug, Default)]
    struct Writes(AtomicBool);

    impl FaultInjector for Writes {
        fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
            if op == FileOp::Write && self.0.load(Ordering::SeqCst) {
                return Err(Injected::fail(io::Error::other("injected: write failed")));
            }
            Ok(())
        }
    }

    #[test]
    fn a_replica_poisoned_anywhere_in_a_group_fails_the_whole_group() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a: Replica<KvDoc> = Replica::open(a_dir.path(), ReplicaOptions::default()).unwrap();
        let first = a.update(|d, me| d.put_op(me, "one", "v")).unwrap();
        let faults = Arc::new(Writes::default());
        let mut wal = WalOptions::default().with_faults(faults.clone());
        // Each append is written at once, so the failure comes mid-group.
        wal.buffer_size = 0;
        let opts = ReplicaOptions { wal, ..ReplicaOptions::default() };
        let mut b: Replica<KvDoc> = Replica::open(b_dir.path(), opts).unwrap();
        let changes = b.subscribe();
        let ((), settled) = b.grouped(|b| {
            // Logged (not yet durable): the caller holds its verdict back.
            assert_eq!(b.receive([first.clone()]).unwrap().applied, 1);
            faults.0.store(true, Ordering::SeqCst);
            let _ = b.update(|d, me| d.put_op(me, "two", "w"));
        });
        assert!(settled.is_err(), "the receive before the failure must not be acknowledged either");
        assert!(changes.try_recv().is_err());
        assert!(b.is_poisoned());
    }

    #[test]
    fn a_panic_in_a_group_still_settles_what_was_logged_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Syncs::default());
        let mut r = open(dir.path(), faults.clone());
        let changes = r.subscribe();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.grouped(|r| {
                r.update(|d, me| d.put_op(me, "k", "v")).unwrap();
                panic!("an app's code panicked");
            })
        }));
        assert!(panicked.is_err());
        assert!(matches!(changes.try_recv(), Ok(Change::Op { origin: Origin::Local, .. })));
        // Not left in a group: the next write waits for the disk itself.
        let before = faults.count.load(Ordering::SeqCst);
        r.update(|d, me| d.put_op(me, "k2", "v")).unwrap();
        assert_eq!(faults.count.load(Ordering::SeqCst), before + 1);
    }
}
