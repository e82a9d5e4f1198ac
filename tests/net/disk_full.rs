//! A node whose disk fills up: the document's replica is poisoned by the
//! failed write, the node reports it, refuses writes while it cannot reopen
//! it, reopens it once the disk takes writes again, and the document
//! replicates as before. Real nodes on 127.0.0.1; the full disk is a fault
//! injector on the node's replica options.
//!
//! Nothing sleeps to synchronise: every wait is on node events.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::{config, put, start, values, wait_value, within, Events, DOC, WAIT};
use tokio::sync::watch;
use walrus::net::{NodeError, NodeEvent};
use walrus::replica::ReplicaError;
use walrus::wal::{self, FaultInjector, FileOp, Injected};

/// A disk that, while full, fails every write and every sync (so that a
/// reopen, whose recovery syncs the log, fails too).
struct Disk {
    full: AtomicBool,
    /// Operations failed so far.
    refused: watch::Sender<usize>,
}

impl FaultInjector for Disk {
    fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
        if !self.full.load(Ordering::SeqCst) {
            return Ok(());
        }
        match op {
            FileOp::Write | FileOp::SyncData => {
                self.refused.send_modify(|n| *n += 1);
                Err(Injected::no_space(0))
            }
            FileOp::SyncDir | FileOp::Create | FileOp::Rename => {
                self.refused.send_modify(|n| *n += 1);
                Err(Injected::fail(io::Error::from_raw_os_error(28)))
            }
            FileOp::Remove => Ok(()),
        }
    }
}

fn failed(ev: &crate::common::Ev) -> bool {
    matches!(ev, NodeEvent::DocumentFailed { doc, .. } if doc == DOC)
}

fn reopened(ev: &crate::common::Ev) -> bool {
    matches!(ev, NodeEvent::DocumentReopened { doc } if doc == DOC)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_document_until_it_is_reopened() {
    within(async {
        let tmp = tempfile::tempdir().unwrap();
        let mut events = Events::new();
        let disk = Arc::new(Disk { full: AtomicBool::new(false), refused: watch::channel(0).0 });
        let mut refused = disk.refused.subscribe();
        let mut cfg = config(&tmp.path().join("a"), &[]);
        cfg.replica.wal = cfg.replica.wal.clone().with_faults(disk.clone());
        let (a, a_addr) = start(cfg, &mut events, 0).await;
        let (b, _) = start(config(&tmp.path().join("b"), &[a_addr]), &mut events, 1).await;

        let first = put(&a, "before", "1").await;
        wait_value(&b, &mut events, "before", "1").await;

        disk.full.store(true, Ordering::SeqCst);
        let from = events.log.len();
        let err = a.update(DOC, |d, actor| d.put_op(actor, "during", "lost")).await.unwrap_err();
        assert!(
            matches!(err, NodeError::Replica(ReplicaError::Wal(wal::Error::NoSpace { .. }))),
            "the write that hit the full disk reports it: {err:?}"
        );
        let at = events.wait_event("the document failing", from, 0, failed).await;
        match &events.log[at].1 {
            NodeEvent::DocumentFailed { error, .. } => assert!(error.contains("no space"), "{error}"),
            other => panic!("{other:?}"),
        }
        // Down while the disk is full, also after a reopen failed (its
        // recovery syncs the log).
        let so_far = *refused.borrow_and_update();
        let more = tokio::time::timeout(WAIT, refused.wait_for(|n| *n > so_far)).await;
        assert!(matches!(more, Ok(Ok(_))), "no reopen attempted within {WAIT:?}");
        let err = a.update(DOC, |d, actor| d.put_op(actor, "during", "refused")).await.unwrap_err();
        match &err {
            NodeError::DocUnavailable { doc, reason } => {
                assert_eq!(doc, DOC);
                assert!(reason.contains("no space"), "{reason}");
            }
            other => panic!("a write while the document is down: {other:?}"),
        }
        assert!(err.to_string().contains("unavailable"), "{err}");
        let err = a.with(DOC, |r| r.clock().total()).await.unwrap_err();
        assert!(matches!(err, NodeError::DocUnavailable { .. }), "{err:?}");
        events.drain();
        assert!(!events.any(from, 0, reopened), "reopened while the disk is full");

        disk.full.store(false, Ordering::SeqCst);
        events.wait_event("the document reopening", at, 0, reopened).await;

        // What was acknowledged survived; what failed was never acknowledged
        // and is not there.
        assert_eq!(values(&a, "before").await, ["1"]);
        assert!(values(&a, "during").await.is_empty());
        let after = put(&a, "after", "2").await;
        // Reopened after a failed write, the replica writes under a new
        // actor: what its log read back may not have been on disk, so the
        // old actor's numbers after it are never signed again.
        assert_ne!(after.actor(), first.actor());
        assert_eq!(after.seq(), 1);
        wait_value(&b, &mut events, "after", "2").await;
        assert!(values(&b, "during").await.is_empty());

        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}
