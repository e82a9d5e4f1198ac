//! Failure injection: failed `fdatasync` and writes poison the log, every
//! waiter of the failed group gets an error, and a full disk (ENOSPC) — in an
//! append, a flush, or while a new segment is created at rotation — never
//! costs an acknowledged record.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use crate::helpers::options;
use walrus::wal::{Error, FaultInjector, FileOp, Injected, LogReader, SyncPolicy, Wal, WalOptions};

/// A fault injector made of a closure.
struct FnFaults<F>(F);

impl<F> FaultInjector for FnFaults<F>
where
    F: Fn(FileOp, &Path, usize) -> Result<(), Injected> + Send + Sync + 'static,
{
    fn check(&self, op: FileOp, path: &Path, len: usize) -> Result<(), Injected> {
        (self.0)(op, path, len)
    }
}

fn eio() -> Injected {
    Injected::fail(io::Error::other("injected EIO"))
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn contents(wal: &Wal) -> Vec<Vec<u8>> {
    let first = wal.first_lsn();
    let mut out = Vec::new();
    for (i, r) in wal.iter_from(first).unwrap().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.lsn, first + i as u64);
        out.push(r.payload);
    }
    out
}

/// Files in `dir` other than segments and the lock file.
fn stray_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK" && !n.ends_with(".wal"))
        .collect()
}

fn assert_poisoned(r: walrus::wal::Result<impl Sized>, what: &str) {
    match r {
        Err(Error::Poisoned(_)) => {}
        Err(e) => panic!("{what}: expected Error::Poisoned, got {e}"),
        Ok(_) => panic!("{what}: succeeded on a poisoned log"),
    }
}

fn payload(i: usize) -> Vec<u8> {
    format!("record {i:05} {}", "x".repeat(i % 17)).into_bytes()
}

/// Reopens without faults and checks that the log starts with exactly
/// `acked`, holds at most `extra` unacknowledged records after them, each one
/// of `maybe`, and accepts new appends. Returns the number of records held.
fn reopen_and_check(dir: &Path, o: &WalOptions, acked: &[Vec<u8>], maybe: &[Vec<u8>], ctx: &str) -> usize {
    let mut o = o.clone();
    o.faults = None;
    let wal = Wal::open(dir, o.clone()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    let got = contents(&wal);
    assert!(got.len() >= acked.len(), "{ctx}: {} records recovered, {} were acknowledged", got.len(), acked.len());
    assert_eq!(&got[..acked.len()], acked, "{ctx}: acknowledged records");
    for extra in &got[acked.len()..] {
        assert!(maybe.contains(extra), "{ctx}: unexpected record {:?}", String::from_utf8_lossy(extra));
    }
    assert!(got.len() <= acked.len() + maybe.len());
    let n = got.len();
    assert_eq!(wal.append(b"after reopen").unwrap(), n as u64 + 1, "{ctx}");
    drop(wal);
    let wal = Wal::open(dir, o).unwrap_or_else(|e| panic!("{ctx}: second reopen: {e}"));
    assert_eq!(wal.last_lsn(), n as u64 + 1, "{ctx}");
    assert_eq!(&contents(&wal)[..acked.len()], acked, "{ctx}");
    assert!(stray_files(dir).is_empty(), "{ctx}: left behind {:?}", stray_files(dir));
    n
}

// ---------------------------------------------------------------------------
// Failed fdatasync / write
// ---------------------------------------------------------------------------

#[test]
fn failed_sync_poisons_the_log() {
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let faults = FnFaults(move |op, _: &Path, _| match op {
        FileOp::SyncData if f.load(Ordering::SeqCst) => Err(eio()),
        _ => Ok(()),
    });
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::Always, 4096, false).with_faults(Arc::new(faults));
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    let acked: Vec<Vec<u8>> = (0..10).map(payload).collect();
    for (i, p) in acked.iter().enumerate() {
        assert_eq!(wal.append(p).unwrap(), i as u64 + 1);
    }

    fail.store(true, Ordering::SeqCst);
    match wal.append(b"not acknowledged") {
        Err(Error::Io(_)) => {}
        Err(e) => panic!("expected the injected I/O error, got {e}"),
        Ok(lsn) => panic!("append acknowledged LSN {lsn} although fdatasync failed"),
    }
    assert_eq!(wal.durable_lsn(), 10, "nothing past the failed sync is durable");
    // The disk recovers, but the log stays poisoned until reopened.
    fail.store(false, Ordering::SeqCst);
    assert_poisoned(wal.append(b"later"), "append");
    assert_poisoned(wal.append_batch([&b"a"[..], b"b"]), "append_batch");
    assert_poisoned(wal.append_nowait(b"later"), "append_nowait");
    assert_poisoned(wal.sync(), "sync");
    assert_poisoned(wal.flush(), "flush");
    assert_poisoned(wal.truncate_before(5), "truncate_before");
    // What was durable before can still be read and waited for.
    assert_eq!(contents(&wal), acked);
    wal.wait_durable(10).unwrap();
    drop(wal);

    reopen_and_check(dir.path(), &o, &acked, &[b"not acknowledged".to_vec()], "failed fdatasync");
}

/// Holds the first write after it is armed until the test releases it, lets
/// that write and its sync succeed, and fails every later `fail_op`.
struct GroupFaults {
    armed: AtomicBool,
    hold_next_write: AtomicBool,
    gate: Barrier,
    fail_op: FileOp,
    seen: AtomicUsize,
    fail: fn() -> Injected,
}

impl FaultInjector for GroupFaults {
    fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if op == FileOp::Write && self.hold_next_write.swap(false, Ordering::SeqCst) {
            self.gate.wait(); // the test knows the write is under way
            self.gate.wait(); // the test lets it go on
        }
        if op == self.fail_op && self.seen.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err((self.fail)());
        }
        Ok(())
    }
}

/// One record is being written while `waiters` threads append: their records
/// form the next group, whose `fail_op` fails. Every one of them must get an
/// error, the first record must be acknowledged, and later appends are
/// refused.
fn failed_group(fail_op: FileOp, fail: fn() -> Injected, leader_error: fn(&Error) -> bool) {
    const WAITERS: usize = 6;
    let faults = Arc::new(GroupFaults {
        armed: AtomicBool::new(false),
        hold_next_write: AtomicBool::new(true),
        gate: Barrier::new(2),
        fail_op,
        seen: AtomicUsize::new(0),
        fail,
    });
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::batch(), 1 << 20, false).with_faults(faults.clone());
    let wal = Arc::new(Wal::open(dir.path(), o.clone()).unwrap());
    let mut acked: Vec<Vec<u8>> = (0..20).map(payload).collect();
    for (i, p) in acked.iter().enumerate() {
        assert_eq!(wal.append(p).unwrap(), i as u64 + 1);
    }

    faults.armed.store(true, Ordering::SeqCst);
    let first = {
        let wal = wal.clone();
        thread::spawn(move || wal.append(b"written before the failure"))
    };
    faults.gate.wait(); // `first` is writing its group
    let waiter_payloads: Vec<Vec<u8>> = (0..WAITERS).map(|i| format!("waiter {i}").into_bytes()).collect();
    let waiters: Vec<_> = waiter_payloads
        .iter()
        .cloned()
        .map(|p| {
            let wal = wal.clone();
            thread::spawn(move || wal.append(&p))
        })
        .collect();
    // All waiters' records are buffered: they form the next group.
    while wal.last_lsn() < 21 + WAITERS as u64 {
        // None of them can finish before the held write is released.
        assert!(!waiters.iter().any(|h| h.is_finished()), "a waiter returned while the first write was held");
        thread::yield_now();
    }
    faults.gate.wait(); // let `first` finish

    assert_eq!(first.join().unwrap().unwrap(), 21, "the group written before the failure is acknowledged");
    acked.push(b"written before the failure".to_vec());
    let results: Vec<_> = waiters.into_iter().map(|h| h.join().unwrap()).collect();
    let mut leaders = 0;
    for r in &results {
        match r {
            Ok(lsn) => panic!("{fail_op:?} failed, yet a waiter's append was acknowledged at LSN {lsn}"),
            Err(Error::Poisoned(_)) => {}
            Err(e) => {
                assert!(leader_error(e), "unexpected error {e}");
                leaders += 1;
            }
        }
    }
    assert_eq!(leaders, 1, "the thread that did the failed I/O reports its error, the others that the log is poisoned");
    assert_eq!(wal.durable_lsn(), 21);
    assert_poisoned(wal.append(b"after"), "append after the failure");
    assert_poisoned(wal.sync(), "sync after the failure");
    drop(wal);

    reopen_and_check(dir.path(), &o, &acked, &waiter_payloads, &format!("failed {fail_op:?} of a group"));
}

#[test]
fn failed_group_sync_fails_every_waiter() {
    failed_group(FileOp::SyncData, eio, |e| matches!(e, Error::Io(_)));
}

#[test]
fn failed_group_write_fails_every_waiter() {
    failed_group(FileOp::Write, || Injected::no_space(13), Error::is_no_space);
}

#[test]
fn failed_write_poisons_the_log() {
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let faults = FnFaults(move |op, _: &Path, _| match op {
        FileOp::Write if f.load(Ordering::SeqCst) => Err(eio()),
        _ => Ok(()),
    });
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::batch(), 4096, false).with_faults(Arc::new(faults));
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    let acked: Vec<Vec<u8>> = (0..5).map(payload).collect();
    for p in &acked {
        wal.append(p).unwrap();
    }
    fail.store(true, Ordering::SeqCst);
    let err = wal.append(b"lost").unwrap_err();
    assert!(matches!(err, Error::Io(_)) && !err.is_no_space(), "{err}");
    fail.store(false, Ordering::SeqCst);
    assert_poisoned(wal.append(b"later"), "append");
    drop(wal);
    reopen_and_check(dir.path(), &o, &acked, &[], "failed write");
}

// ---------------------------------------------------------------------------
// ENOSPC in appends
// ---------------------------------------------------------------------------

/// Fails the next write (once armed) with ENOSPC after `k` bytes.
#[derive(Default)]
struct NoSpaceOnce {
    next_write: Mutex<Option<usize>>,
    fired: AtomicUsize,
}

impl NoSpaceOnce {
    fn arm(&self, written: usize) {
        *self.next_write.lock().unwrap() = Some(written);
    }
}

impl FaultInjector for NoSpaceOnce {
    fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
        if op == FileOp::Write {
            if let Some(k) = self.next_write.lock().unwrap().take() {
                self.fired.fetch_add(1, Ordering::SeqCst);
                return Err(Injected::no_space(k));
            }
        }
        Ok(())
    }
}

#[test]
fn no_space_in_an_append_keeps_acknowledged_records() {
    // (commit unit, bytes written before ENOSPC); frames are 20 + payload bytes.
    let single = vec![vec![7u8; 50]]; // one 70-byte frame
    let batch = vec![vec![1u8; 30], vec![2u8; 30], vec![3u8; 30]]; // three 50-byte frames
    let mut cases = Vec::new();
    for k in [0, 1, 4, 19, 20, 21, 40, 69] {
        cases.push((single.clone(), k));
    }
    for k in [0, 20, 49, 50, 70, 100, 120, 149] {
        cases.push((batch.clone(), k));
    }
    for sync in [SyncPolicy::Always, SyncPolicy::batch()] {
        for (unit, k) in &cases {
            let ctx = format!("{sync:?}, {} record(s), ENOSPC after {k} bytes", unit.len());
            let faults = Arc::new(NoSpaceOnce::default());
            let dir = tempfile::tempdir().unwrap();
            let o = options(sync, 4096, false).with_faults(faults.clone());
            let wal = Wal::open(dir.path(), o.clone()).unwrap();
            let acked: Vec<Vec<u8>> = (0..12).map(payload).collect();
            for p in &acked {
                wal.append(p).unwrap();
            }
            faults.arm(*k);
            let err = if unit.len() == 1 {
                wal.append(&unit[0]).map(|_| ()).unwrap_err()
            } else {
                wal.append_batch(unit).map(|_| ()).unwrap_err()
            };
            assert!(err.is_no_space(), "{ctx}: {err}");
            assert!(matches!(err, Error::NoSpace { .. }), "{ctx}: {err}");
            assert_eq!(faults.fired.load(Ordering::SeqCst), 1, "{ctx}");
            assert_poisoned(wal.append(b"later"), &ctx);
            drop(wal);

            // The torn write is a torn tail: a read-only check accepts it.
            let summary = LogReader::open(dir.path(), &o).unwrap_or_else(|e| panic!("{ctx}: {e}")).summary();
            assert_eq!(summary.last_lsn, acked.len() as u64, "{ctx}");
            // Nothing of the failed unit survives: a batch is all or nothing,
            // and no partial single write is complete.
            let n = reopen_and_check(dir.path(), &o, &acked, &[], &ctx);
            assert_eq!(n, acked.len(), "{ctx}");
        }
    }
}

#[test]
fn no_space_when_flushing_unsynced_records() {
    let faults = Arc::new(NoSpaceOnce::default());
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::None, 1 << 20, false).with_faults(faults.clone());
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    let flushed: Vec<Vec<u8>> = (0..10).map(payload).collect();
    for p in &flushed {
        wal.append(p).unwrap();
    }
    wal.sync().unwrap();
    let buffered: Vec<Vec<u8>> = (10..15).map(payload).collect();
    for p in &buffered {
        wal.append(p).unwrap(); // buffered in the process
    }
    faults.arm(25); // less than one frame
    let err = wal.flush().unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_poisoned(wal.append(b"later"), "append");
    assert_poisoned(wal.sync(), "sync");
    drop(wal);
    let n = reopen_and_check(dir.path(), &o, &flushed, &buffered, "ENOSPC on flush");
    assert_eq!(n, flushed.len());
}

// ---------------------------------------------------------------------------
// ENOSPC and other failures while a new segment is prepared
// ---------------------------------------------------------------------------

struct RotationCase {
    name: &'static str,
    preallocate: bool,
    /// The failure to inject (once armed), by operation and file name.
    rule: fn(FileOp, &str) -> Option<Injected>,
    /// None: rotation succeeds anyway; Some(no_space): the append that
    /// rotates fails, with ENOSPC or not.
    expect: Option<bool>,
}

fn rotation_cases() -> Vec<RotationCase> {
    vec![
        RotationCase {
            name: "ENOSPC creating new-segment.tmp",
            preallocate: false,
            rule: |op, name| (op == FileOp::Create && name == "new-segment.tmp").then(|| Injected::no_space(0)),
            expect: Some(true),
        },
        RotationCase {
            name: "ENOSPC writing the header of new-segment.tmp",
            preallocate: false,
            rule: |op, name| (op == FileOp::Write && name == "new-segment.tmp").then(|| Injected::no_space(10)),
            expect: Some(true),
        },
        RotationCase {
            name: "ENOSPC zero-filling next-segment.tmp",
            preallocate: true,
            rule: |op, name| (op == FileOp::Write && name == "next-segment.tmp").then(|| Injected::no_space(1000)),
            expect: Some(true),
        },
        RotationCase {
            name: "ENOSPC creating next-segment.tmp",
            preallocate: true,
            rule: |op, name| (op == FileOp::Create && name == "next-segment.tmp").then(|| Injected::no_space(0)),
            expect: Some(true),
        },
        RotationCase {
            name: "EIO creating next-segment.tmp, then ENOSPC zero-filling new-segment.tmp",
            preallocate: true,
            rule: |op, name| match (op, name) {
                (FileOp::Create, "next-segment.tmp") => Some(eio()),
                (FileOp::Write, "new-segment.tmp") => Some(Injected::no_space(100)),
                _ => None,
            },
            expect: Some(true),
        },
        RotationCase {
            name: "EIO creating next-segment.tmp (falls back to a new file)",
            preallocate: true,
            rule: |op, name| (op == FileOp::Create && name == "next-segment.tmp").then(eio),
            expect: None,
        },
        RotationCase {
            name: "EIO renaming the new segment into place",
            preallocate: false,
            rule: |op, _| (op == FileOp::Rename).then(eio),
            expect: Some(false),
        },
        RotationCase {
            name: "EIO syncing the directory after the rename",
            preallocate: false,
            rule: |op, _| (op == FileOp::SyncDir).then(eio),
            expect: Some(false),
        },
    ]
}

#[test]
fn failures_while_preparing_the_next_segment() {
    for case in rotation_cases() {
        let ctx = case.name;
        let armed = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicUsize::new(0));
        let (a, f, rule) = (armed.clone(), fired.clone(), case.rule);
        let faults = FnFaults(move |op, path: &Path, _| {
            if !a.load(Ordering::SeqCst) {
                return Ok(());
            }
            match rule(op, file_name(path)) {
                Some(injected) => {
                    f.fetch_add(1, Ordering::SeqCst);
                    Err(injected)
                }
                None => Ok(()),
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let o = options(SyncPolicy::Always, 4096, case.preallocate).with_faults(Arc::new(faults));
        let wal = Wal::open(dir.path(), o.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        // Arm only now: opening an empty log creates its first segment.
        armed.store(true, Ordering::SeqCst);
        let mut acked: Vec<Vec<u8>> = Vec::new();
        let mut failure = None;
        for i in 0..150 {
            let p = payload(i);
            match wal.append(&p) {
                Ok(lsn) => {
                    assert_eq!(lsn, acked.len() as u64 + 1, "{ctx}");
                    acked.push(p);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match (case.expect, &failure) {
            (None, None) => {
                assert!(fired.load(Ordering::SeqCst) > 0, "{ctx}: the fault was never injected");
                let segments = std::fs::read_dir(dir.path())
                    .unwrap()
                    .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"));
                assert!(segments.count() > 1, "{ctx}: the log should have rotated");
            }
            (Some(no_space), Some(e)) => {
                assert!(fired.load(Ordering::SeqCst) > 0, "{ctx}: failed without the injected fault: {e}");
                assert_eq!(e.is_no_space(), no_space, "{ctx}: {e}");
                assert!(acked.len() > 10, "{ctx}: failed before the segment filled up: {e}");
                assert_eq!(wal.last_lsn(), acked.len() as u64, "{ctx}");
                assert_eq!(wal.durable_lsn(), acked.len() as u64, "{ctx}");
                assert_poisoned(wal.append(b"later"), ctx);
            }
            (None, Some(e)) => panic!("{ctx}: append failed: {e}"),
            (Some(_), None) => panic!("{ctx}: 150 appends over 4 KiB segments never failed"),
        }
        drop(wal);
        let n = reopen_and_check(dir.path(), &o, &acked, &[], ctx);
        assert_eq!(n, acked.len(), "{ctx}");

        // The log rotates normally once the disk behaves.
        let mut o = o.clone();
        o.faults = None;
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        let before = wal.last_lsn();
        for i in 0..100 {
            assert_eq!(wal.append(&payload(i)).unwrap(), before + i as u64 + 1, "{ctx}");
        }
        drop(wal);
        let wal = Wal::open(dir.path(), o).unwrap();
        assert_eq!(wal.last_lsn(), before + 100, "{ctx}");
        assert_eq!(&contents(&wal)[..acked.len()], &acked[..], "{ctx}");
    }
}

#[test]
fn failed_sync_sealing_a_full_segment() {
    // Under `Always` every append writes, then syncs; the sync that seals a
    // full segment before rotation is the only one that follows no write.
    let armed = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicUsize::new(0));
    let last_was_write = AtomicBool::new(false);
    let (a, f) = (armed.clone(), fired.clone());
    let faults = FnFaults(move |op, _: &Path, _| {
        let after_write = last_was_write.swap(op == FileOp::Write, Ordering::SeqCst);
        if a.load(Ordering::SeqCst) && op == FileOp::SyncData && !after_write {
            f.fetch_add(1, Ordering::SeqCst);
            return Err(eio());
        }
        Ok(())
    });
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::Always, 4096, false).with_faults(Arc::new(faults));
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    armed.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let err = loop {
        let p = payload(acked.len());
        match wal.append(&p) {
            Ok(lsn) => {
                assert_eq!(lsn, acked.len() as u64 + 1);
                acked.push(p);
            }
            Err(e) => break e,
        }
        assert!(acked.len() < 150, "the segment never filled up");
    };
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert!(matches!(err, Error::Io(_)), "{err}");
    assert!(acked.len() > 10);
    assert_poisoned(wal.append(b"later"), "append");
    drop(wal);
    let n = reopen_and_check(dir.path(), &o, &acked, &[], "failed seal");
    assert_eq!(n, acked.len());
}

#[test]
fn no_space_creating_the_first_segment() {
    for preallocate in [false, true] {
        let rule: fn(FileOp, &str) -> Option<Injected> = if preallocate {
            |op, name| (op == FileOp::Write && name == "new-segment.tmp").then(|| Injected::no_space(100))
        } else {
            |op, name| (op == FileOp::Create && name == "new-segment.tmp").then(|| Injected::no_space(0))
        };
        let faults = FnFaults(move |op, path: &Path, _| rule(op, file_name(path)).map_or(Ok(()), Err));
        let dir = tempfile::tempdir().unwrap();
        let o = options(SyncPolicy::Always, 4096, preallocate).with_faults(Arc::new(faults));
        match Wal::open(dir.path(), o.clone()) {
            Err(e) => assert!(e.is_no_space(), "preallocate {preallocate}: {e}"),
            Ok(_) => panic!("preallocate {preallocate}: opened without space for a segment"),
        }
        let mut o = o;
        o.faults = None;
        let wal = Wal::open(dir.path(), o).unwrap();
        assert_eq!(wal.append(b"first").unwrap(), 1);
        assert!(stray_files(dir.path()).is_empty(), "{:?}", stray_files(dir.path()));
    }
}

/// The LSNs handed out after a failure never collide with acknowledged ones.
#[test]
fn lsns_after_a_failure_continue_from_what_survived() {
    let faults = Arc::new(NoSpaceOnce::default());
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::Always, 4096, false).with_faults(faults.clone());
    let mut acked: Vec<Vec<u8>> = Vec::new();
    for round in 0..3 {
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        assert_eq!(wal.last_lsn(), acked.len() as u64, "round {round}");
        for i in 0..40 {
            let p = payload(round * 100 + i);
            assert_eq!(wal.append(&p).unwrap(), acked.len() as u64 + 1);
            acked.push(p);
        }
        faults.arm(5);
        assert!(wal.append(b"fails").unwrap_err().is_no_space());
    }
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(contents(&wal), acked);
}
