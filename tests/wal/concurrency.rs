//! Concurrent use of one log: appenders get distinct, consecutive LSNs under
//! every sync policy, everything acknowledged is recovered byte for byte,
//! group commit shares `fdatasync` calls, readers see consistent prefixes,
//! and the directory lock keeps a second writer out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use walrus::wal::{Error, FaultInjector, FileOp, Injected, LogReader, Lsn, SyncPolicy, Wal, WalOptions};

// `Wal` can be shared between threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Wal>();
    assert_send_sync::<Arc<Wal>>();
};

fn options(sync: SyncPolicy, segment_size: u64) -> WalOptions {
    let mut o = WalOptions::new(sync).segment_size(segment_size);
    o.preallocate = false;
    o
}

fn preallocated(sync: SyncPolicy, segment_size: u64) -> WalOptions {
    WalOptions::new(sync).segment_size(segment_size)
}

/// The payload of record `i` of thread `t`: self-describing, of varied length.
fn payload(t: usize, i: usize) -> Vec<u8> {
    let mut p = format!("t{t:02}-{i:04}-").into_bytes();
    p.extend(std::iter::repeat_n(b'a' + (t % 26) as u8, (t * 7 + i) % 23));
    p
}

/// Parses `(thread, index)` back out of a [`payload`].
fn parse_payload(p: &[u8]) -> (usize, usize) {
    let s = std::str::from_utf8(&p[..9]).unwrap();
    (s[1..3].parse().unwrap(), s[4..8].parse().unwrap())
}

/// `threads` threads each append `per_thread` records, starting together.
/// With `batches`, every seventh record starts an `append_batch` of three.
/// Returns every acknowledged `(lsn, payload)`.
fn run_writers(wal: &Arc<Wal>, threads: usize, per_thread: usize, batches: bool) -> Vec<(Lsn, Vec<u8>)> {
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let mut acked = Vec::with_capacity(per_thread);
                let mut i = 0;
                while i < per_thread {
                    if batches && i % 7 == 3 && i + 3 <= per_thread {
                        let records = [payload(t, i), payload(t, i + 1), payload(t, i + 2)];
                        let range = wal.append_batch(&records).unwrap();
                        assert_eq!(range.end - range.start, 3, "a batch gets consecutive LSNs");
                        acked.extend(range.zip(records));
                        i += 3;
                    } else {
                        let p = payload(t, i);
                        acked.push((wal.append(&p).unwrap(), p));
                        i += 1;
                    }
                }
                // One thread's appends are ordered.
                assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "thread {t}: LSNs must increase");
                acked
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

/// Sorts by LSN and checks the LSNs are exactly 1..=n.
fn assert_exactly_one_to_n(acked: &mut [(Lsn, Vec<u8>)], n: usize) {
    acked.sort_by_key(|(lsn, _)| *lsn);
    assert_eq!(acked.len(), n);
    for (i, (lsn, _)) in acked.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "LSNs must be distinct and consecutive from 1");
    }
}

fn read_all(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
    wal.iter_from(wal.first_lsn()).unwrap().map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect()
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"))
        .count()
}

fn concurrent_appends(o: WalOptions) {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 200;
    let sync = o.sync;
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), o.clone()).unwrap());
    let mut acked = run_writers(&wal, THREADS, PER_THREAD, true);
    let n = THREADS * PER_THREAD;
    assert_exactly_one_to_n(&mut acked, n);
    assert_eq!(wal.last_lsn(), n as u64);
    if sync.is_durable() {
        assert_eq!(wal.durable_lsn(), n as u64, "{sync:?}: every acknowledged record is durable");
    }
    assert_eq!(read_all(&wal), acked, "{sync:?}: records read back while open");
    assert!(segment_count(dir.path()) > 3, "{sync:?}: the appends should have rotated segments");
    assert_eq!(Arc::strong_count(&wal), 1);
    drop(wal);

    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(wal.last_lsn(), n as u64);
    assert_eq!(read_all(&wal), acked, "{sync:?}: records recovered after reopen");
    assert_eq!(wal.append(b"next").unwrap(), n as u64 + 1);
    drop(wal);
    assert_eq!(LogReader::open(dir.path(), &o).unwrap().summary().records, n as u64 + 1);
}

#[test]
fn concurrent_appends_batch_policy() {
    concurrent_appends(options(SyncPolicy::batch(), 16 * 1024));
}

#[test]
fn concurrent_appends_always_policy() {
    concurrent_appends(options(SyncPolicy::Always, 16 * 1024));
}

#[test]
fn concurrent_appends_no_sync_policy() {
    concurrent_appends(options(SyncPolicy::None, 16 * 1024));
}

#[test]
fn concurrent_appends_into_preallocated_segments() {
    concurrent_appends(preallocated(SyncPolicy::batch(), 16 * 1024));
}

/// Counts `fdatasync` calls.
#[derive(Default)]
struct SyncCounter {
    syncs: AtomicUsize,
}

impl FaultInjector for SyncCounter {
    fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
        if op == FileOp::SyncData {
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[test]
fn group_commit_needs_far_fewer_syncs_than_appends() {
    const THREADS: usize = 32;
    const PER_THREAD: usize = 100;
    let counter = Arc::new(SyncCounter::default());
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::batch(), 1 << 20).with_faults(counter.clone());
    let wal = Arc::new(Wal::open(dir.path(), o).unwrap());
    let before = counter.syncs.load(Ordering::SeqCst);
    let mut acked = run_writers(&wal, THREADS, PER_THREAD, false);
    let syncs = counter.syncs.load(Ordering::SeqCst) - before;
    let appends = THREADS * PER_THREAD;
    assert_exactly_one_to_n(&mut acked, appends);
    assert_eq!(wal.durable_lsn(), appends as u64);
    assert!(syncs > 0);
    assert!(syncs < appends / 2, "{syncs} fdatasync calls for {appends} appends by {THREADS} threads");
}

#[test]
fn readers_see_consistent_prefixes_while_appenders_run() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), options(SyncPolicy::batch(), 8 * 1024)).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let wal = wal.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut last_len = 0;
            let mut rounds = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let durable = wal.durable_lsn();
                let records = read_all(&wal);
                // A gap-free prefix of the log, at least as long as what was
                // durable before the iterator was created.
                assert!(records.len() as u64 >= durable && records.len() >= last_len);
                let mut next_index = [0usize; THREADS];
                for (i, (lsn, p)) in records.iter().enumerate() {
                    assert_eq!(*lsn, i as u64 + 1);
                    let (t, idx) = parse_payload(p);
                    // Each thread's records appear in order, none missing.
                    assert_eq!(idx, next_index[t], "record {lsn}: thread {t}");
                    assert_eq!(*p, payload(t, idx));
                    next_index[t] += 1;
                }
                last_len = records.len();
                rounds += 1;
                if finished {
                    return (rounds, last_len);
                }
            }
        })
    };
    let mut acked = run_writers(&wal, THREADS, PER_THREAD, false);
    done.store(true, Ordering::SeqCst);
    let (rounds, seen) = reader.join().unwrap();
    assert!(rounds >= 1);
    assert_eq!(seen, THREADS * PER_THREAD, "the last read started after all appends");
    assert_exactly_one_to_n(&mut acked, THREADS * PER_THREAD);
    assert_eq!(read_all(&wal), acked);
}

#[test]
fn truncation_while_appending_keeps_lsns_consecutive() {
    const THREADS: usize = 6;
    const PER_THREAD: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::batch(), 4096);
    let wal = Arc::new(Wal::open(dir.path(), o.clone()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let truncator = {
        let wal = wal.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut removed = 0;
            while !done.load(Ordering::SeqCst) {
                removed += wal.truncate_before(wal.last_lsn() / 2).unwrap();
                // Whatever is still held reads back gap-free.
                let first = wal.first_lsn();
                match wal.iter_from(first) {
                    Ok(iter) => {
                        for (i, r) in iter.enumerate() {
                            match r {
                                Ok(r) => assert_eq!(r.lsn, first + i as u64),
                                // Only this thread truncates, so nothing vanishes underneath.
                                Err(e) => panic!("reading from {first}: {e}"),
                            }
                        }
                    }
                    Err(e) => panic!("iter_from({first}): {e}"),
                }
            }
            removed
        })
    };
    let mut acked = run_writers(&wal, THREADS, PER_THREAD, true);
    done.store(true, Ordering::SeqCst);
    let removed = truncator.join().unwrap();
    let n = THREADS * PER_THREAD;
    assert_exactly_one_to_n(&mut acked, n);
    assert!(removed > 0, "some segments should have been truncated");
    let first = wal.first_lsn();
    assert!(first > 1);
    assert_eq!(read_all(&wal), acked[first as usize - 1..]);
    drop(wal);

    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(wal.first_lsn(), first);
    assert_eq!(read_all(&wal), acked[first as usize - 1..]);
    assert_eq!(wal.append(b"next").unwrap(), n as u64 + 1);
}

#[test]
fn pipelined_appends_from_several_threads() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::batch(), 8 * 1024);
    let wal = Arc::new(Wal::open(dir.path(), o.clone()).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                let acked: Vec<_> = (0..PER_THREAD)
                    .map(|i| {
                        let p = payload(t, i);
                        (wal.append_nowait(&p).unwrap(), p)
                    })
                    .collect();
                wal.wait_durable(acked.last().unwrap().0).unwrap();
                assert!(wal.durable_lsn() >= acked.last().unwrap().0);
                acked
            })
        })
        .collect();
    let mut acked: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_exactly_one_to_n(&mut acked, THREADS * PER_THREAD);
    drop(wal);
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(read_all(&wal), acked);
}

#[test]
fn a_second_open_is_locked_out_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(SyncPolicy::Always, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(wal.append(b"one").unwrap(), 1);

    match Wal::open(dir.path(), o.clone()) {
        Err(Error::Locked { dir: d }) => assert_eq!(d, dir.path()),
        Err(e) => panic!("expected Error::Locked, got {e}"),
        Ok(_) => panic!("a second Wal opened a locked directory"),
    }
    // From another thread too.
    thread::scope(|s| {
        let locked = s.spawn(|| matches!(Wal::open(dir.path(), o.clone()), Err(Error::Locked { .. })));
        assert!(locked.join().unwrap());
    });
    // The refused opens changed nothing.
    assert_eq!(wal.append(b"two").unwrap(), 2);
    // Reading without the lock is allowed.
    assert_eq!(LogReader::open(dir.path(), &o).unwrap().summary().records, 2);
    drop(wal);

    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(read_all(&wal), vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    assert!(matches!(Wal::open(dir.path(), o.clone()), Err(Error::Locked { .. })));
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(wal.last_lsn(), 2);
}

#[test]
fn shared_by_reference_across_scoped_threads() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), options(SyncPolicy::Always, 4096)).unwrap();
    let mut lsns: Vec<Lsn> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let wal = &wal;
                s.spawn(move || (0..50).map(|i| wal.append(&payload(t, i)).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=200).collect::<Vec<_>>());
    let by_lsn: HashMap<Lsn, Vec<u8>> = read_all(&wal).into_iter().collect();
    assert_eq!(by_lsn.len(), 200);
}
