//! Power loss: no acknowledged record is ever lost.
//!
//! A seeded workload (appends and batches under each sync policy, rotations
//! into 4 KiB segments, `truncate_before`, reopening) runs on
//! [`PowerLoss`], which cuts the power at a chosen file operation. For each
//! cut, several crash states are materialized (unsynced writes kept, lost or
//! torn; unsynced directory changes kept or lost) and each must open in
//! strict mode with every acknowledged record intact, consecutive LSNs,
//! whole batches, and a next append that reuses no acknowledged LSN.
//! Acknowledged means: `append` returned under `Always` and `Batch`; covered
//! by a returned `sync()` under `None`.
//!
//! Further tests cut the power at every operation of a truncation that
//! removes several segments, under concurrent group-committed appends, and
//! a second time while the log recovers from a first power loss.
//!
//! Cut points are drawn from a dry run of the same workload: some uniform
//! over all its operations, the rest inside the windows of operations of a
//! `truncate_before` or a rotation, where the ordering of unlinks, renames
//! and directory syncs matters.
//!
//! The real directory is only a vehicle (the model decides what survives),
//! so it lives on tmpfs when `/dev/shm` exists, where `fsync` is cheap.
//!
//! Longer runs: `WALRUS_POWER_LOSS_CASES` sets the workloads per policy
//! (default 20) and `WALRUS_POWER_LOSS_SEED` the first seed (default 0); a
//! failure message names the seed, cut and crash seed to replay.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use walrus::wal::{CrashSummary, FaultInjector, FileOp, Injected, Lsn, PowerLoss, SyncPolicy, Wal, WalOptions};

const SEGMENT: u64 = 4096;
/// Crash states materialized per cut.
const STATES_PER_CUT: u64 = 6;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("walrus-power-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn options(policy: SyncPolicy, preallocate: bool) -> WalOptions {
    let mut o = WalOptions::new(policy).segment_size(SEGMENT);
    o.preallocate = preallocate;
    o
}

/// A payload that names its record, of a length that fills segments at
/// different rates.
fn payload(seed: u64, lsn: Lsn, len: usize) -> Vec<u8> {
    let mut p = format!("s{seed} r{lsn} ").into_bytes();
    p.extend((0..len).map(|i| b'a' + ((lsn as usize + i) % 26) as u8));
    p
}

/// What the workload did, as the checks need it.
#[derive(Default)]
struct History {
    /// Every record given an LSN (or about to be, when its append failed).
    attempted: BTreeMap<Lsn, Vec<u8>>,
    /// The LSN range of the commit unit each LSN belongs to.
    unit: BTreeMap<Lsn, (Lsn, Lsn)>,
    /// Last acknowledged LSN (0: none).
    acked: Lsn,
    /// Highest LSN passed to `truncate_before`: records below it may go.
    floor: Lsn,
    /// Operation-count windows `[start, end]` of truncations and rotations.
    windows: Vec<(u64, u64)>,
    truncated_segments: usize,
}

/// Runs the workload of `seed` until it ends or the power fails. Any error
/// before the power fails is a bug.
fn workload(seed: u64, policy: SyncPolicy, preallocate: bool, dir: &Path, power: &Arc<PowerLoss>) -> History {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut h = History::default();
    let opts = options(policy, preallocate).with_faults(power.clone());
    let lost = |what: &str, e: &dyn std::fmt::Display| {
        assert!(power.power_lost(), "seed {seed}: {what} failed with the power on: {e}");
    };
    let mut wal = match Wal::open(dir, opts.clone()) {
        Ok(w) => w,
        Err(e) => {
            lost("open", &e);
            return h;
        }
    };
    let mut next = wal.last_lsn() + 1;
    for _ in 0..40 {
        let r = rng.u64(..100);
        if r < 65 {
            let n = if r < 50 { 1 } else { rng.u64(2..=4) };
            let records: Vec<Vec<u8>> = (0..n).map(|i| payload(seed, next + i, rng.u64(0..=700) as usize)).collect();
            for (i, p) in records.iter().enumerate() {
                h.attempted.insert(next + i as u64, p.clone());
                h.unit.insert(next + i as u64, (next, next + n - 1));
            }
            let before = power.operations();
            let res = if n == 1 { wal.append(&records[0]).map(|l| l..l + 1) } else { wal.append_batch(&records) };
            let after = power.operations();
            if after > before + 2 {
                // More than a write and a sync: a rotation happened.
                h.windows.push((before + 1, after));
            }
            match res {
                Ok(range) => {
                    assert_eq!(range, next..next + n, "seed {seed}: LSNs handed out");
                    next = range.end;
                    if policy.is_durable() {
                        h.acked = range.end - 1;
                    }
                }
                Err(e) => {
                    lost("append", &e);
                    return h;
                }
            }
        } else if r < 78 && !policy.is_durable() {
            match wal.sync() {
                Ok(last) => {
                    assert_eq!(last, next - 1, "seed {seed}: sync covers every append");
                    h.acked = last;
                }
                Err(e) => {
                    lost("sync", &e);
                    return h;
                }
            }
        } else if r < 92 {
            let first = wal.first_lsn();
            let to = rng.u64(first..=next);
            h.floor = h.floor.max(to);
            let before = power.operations();
            let res = wal.truncate_before(to);
            if power.operations() > before {
                h.windows.push((before + 1, power.operations()));
            }
            match res {
                Ok(n) => h.truncated_segments += n,
                Err(e) => {
                    lost("truncate", &e);
                    return h;
                }
            }
        } else {
            drop(wal);
            wal = match Wal::open(dir, opts.clone()) {
                Ok(w) => w,
                Err(e) => {
                    lost("reopen", &e);
                    return h;
                }
            };
            // The process did not crash: nothing it wrote is gone.
            assert_eq!(wal.last_lsn(), next - 1, "seed {seed}: reopen");
        }
    }
    if !policy.is_durable() {
        match wal.sync() {
            Ok(last) => h.acked = last,
            Err(e) => lost("final sync", &e),
        }
    }
    h
}

/// Opens a crashed copy and checks it against the history.
fn check(dir: &Path, policy: SyncPolicy, preallocate: bool, h: &History, ctx: &str) {
    let wal = Wal::open(dir, options(policy, preallocate)).unwrap_or_else(|e| panic!("{ctx}: strict open: {e}"));
    let (first, last) = (wal.first_lsn(), wal.last_lsn());
    assert!(last >= h.acked, "{ctx}: last LSN {last}, but {} was acknowledged", h.acked);
    let must_hold = h.floor.max(1);
    if h.acked >= must_hold {
        assert!(first <= must_hold, "{ctx}: log starts at {first}; records from {must_hold} were acknowledged");
    }
    let mut expect = first;
    for r in wal.iter_from(first).unwrap_or_else(|e| panic!("{ctx}: iterating: {e}")) {
        let r = r.unwrap_or_else(|e| panic!("{ctx}: reading LSN {expect}: {e}"));
        assert_eq!(r.lsn, expect, "{ctx}: LSNs not consecutive");
        let Some(want) = h.attempted.get(&r.lsn) else { panic!("{ctx}: LSN {} was never appended", r.lsn) };
        assert!(r.payload == *want, "{ctx}: payload of LSN {} differs", r.lsn);
        let (a, b) = h.unit[&r.lsn];
        assert!(first <= a && b <= last, "{ctx}: LSN {} recovered without the rest of its batch {a}..={b}", r.lsn);
        expect += 1;
    }
    assert_eq!(expect, last + 1, "{ctx}: records end before the last LSN");
    let lsn = wal.append(b"after the crash").unwrap_or_else(|e| panic!("{ctx}: append after reopen: {e}"));
    assert_eq!(lsn, last + 1, "{ctx}: next LSN");
    assert!(lsn > h.acked, "{ctx}: LSN {lsn} handed out again");
}

/// Runs `cases` workloads of one policy, with cuts drawn from a dry run of
/// each. Returns totals for the caller to assert coverage on.
fn run_policy(policy: SyncPolicy, salt: u64) -> Totals {
    let cases = env_u64("WALRUS_POWER_LOSS_CASES", 20);
    let base = env_u64("WALRUS_POWER_LOSS_SEED", 0);
    let mut totals = Totals::default();
    for case in 0..cases {
        let seed = (base + case) * 3 + salt;
        let preallocate = seed.is_multiple_of(2);
        let dry = scratch_dir();
        let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
        let h = workload(seed, policy, preallocate, &dry.path().join("log"), &power);
        let ops = power.operations();
        assert!(h.acked > 0 && ops > 20, "seed {seed}: the dry run did little ({ops} operations)");
        totals.truncated_segments += h.truncated_segments;

        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let mut cuts: Vec<u64> = (0..8).map(|_| rng.u64(1..=ops)).collect();
        for &(a, b) in &h.windows {
            cuts.push(rng.u64(a..=b));
        }
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            let real = scratch_dir();
            let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
            let h = workload(seed, policy, preallocate, &real.path().join("log"), &power);
            // Operation counts vary a little with the background
            // preallocation; a cut past the end is a power loss at rest.
            totals.missed += usize::from(!power.power_lost());
            for state in 0..STATES_PER_CUT {
                let crashed = scratch_dir();
                let ctx = format!("{policy:?} seed {seed} cut {cut} state {state}");
                let s = power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                totals.add(&s);
                check(&crashed.path().join("log"), policy, preallocate, &h, &ctx);
            }
            totals.cuts += 1;
        }
    }
    totals
}

#[derive(Debug, Default)]
struct Totals {
    cuts: usize,
    /// Cuts the workload ended before.
    missed: usize,
    truncated_segments: usize,
    crash: CrashSummary,
}

impl Totals {
    fn add(&mut self, s: &CrashSummary) {
        self.crash.writes_kept += s.writes_kept;
        self.crash.writes_torn += s.writes_torn;
        self.crash.writes_lost += s.writes_lost;
        self.crash.dir_ops_kept += s.dir_ops_kept;
        self.crash.dir_ops_lost += s.dir_ops_lost;
    }

    /// The run exercised what it claims to: truncation, torn and lost
    /// writes, lost directory changes.
    fn assert_coverage(&self, what: &str) {
        eprintln!("{what}: {self:?}");
        let c = &self.crash;
        assert!(self.missed * 4 < self.cuts, "{what}: most cuts missed: {self:?}");
        assert!(self.truncated_segments > 0, "{what}: no segment was ever truncated: {self:?}");
        assert!(c.writes_torn > 0 && c.writes_lost > 0 && c.writes_kept > 0, "{what}: {self:?}");
        assert!(c.dir_ops_lost > 0 && c.dir_ops_kept > 0, "{what}: {self:?}");
    }
}

#[test]
fn always_loses_no_acknowledged_record() {
    run_policy(SyncPolicy::Always, 0).assert_coverage("always");
}

#[test]
fn batch_loses_no_acknowledged_record() {
    run_policy(SyncPolicy::batch(), 1).assert_coverage("batch");
}

#[test]
fn none_loses_no_synced_record() {
    run_policy(SyncPolicy::None, 2).assert_coverage("none");
}

/// Every cut inside a truncation that removes several segments at once,
/// with many crash states each: the segments left must be a contiguous
/// suffix, whatever subset of the unlinks reached the disk.
#[test]
fn truncation_leaves_a_contiguous_suffix() {
    let policy = SyncPolicy::Always;
    // No preallocation: no background thread, so operation counts repeat
    // exactly between the dry run and the cut runs.
    let run = |power: &Arc<PowerLoss>, dir: &Path| -> (History, u64, u64) {
        let mut h = History::default();
        let wal = Wal::open(dir, options(policy, false).with_faults(power.clone())).unwrap();
        for lsn in 1..=60 {
            let p = payload(7, lsn, 300);
            h.attempted.insert(lsn, p.clone());
            h.unit.insert(lsn, (lsn, lsn));
            wal.append(&p).unwrap();
            h.acked = lsn;
        }
        h.floor = 55;
        let start = power.operations();
        match wal.truncate_before(55) {
            Ok(n) => h.truncated_segments = n,
            Err(e) => assert!(power.power_lost(), "truncate failed with the power on: {e}"),
        }
        (h, start, power.operations())
    };
    let dry = scratch_dir();
    let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
    let (h, start, end) = run(&power, &dry.path().join("log"));
    assert!(h.truncated_segments >= 3, "truncation removed only {} segments", h.truncated_segments);

    let mut totals = Totals::default();
    for cut in start + 1..=end + 1 {
        let real = scratch_dir();
        let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
        let (h, ..) = run(&power, &real.path().join("log"));
        for state in 0..32 {
            let crashed = scratch_dir();
            let ctx = format!("truncation cut {cut} ({start}..{end}) state {state}");
            totals.add(&power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}")));
            check(&crashed.path().join("log"), policy, false, &h, &ctx);
        }
    }
    assert!(totals.crash.dir_ops_lost > 0 && totals.crash.dir_ops_kept > 0, "{totals:?}");
}

/// Fails the `n`-th operation of one kind once armed.
struct FailNth {
    op: FileOp,
    n: usize,
    armed: AtomicBool,
    seen: AtomicUsize,
}

impl FaultInjector for FailNth {
    fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
        if op == self.op && self.armed.load(Ordering::SeqCst) && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.n
        {
            return Err(Injected::fail(std::io::Error::other("injected")));
        }
        Ok(())
    }
}

/// A truncation that fails part-way (an unlink, or the directory sync
/// after one) still lists exactly the segments left on disk: reads from the
/// reported first LSN work, appends continue, and a reopen agrees.
#[test]
fn a_failed_truncation_keeps_the_log_consistent() {
    for (op, n) in [(FileOp::Remove, 1), (FileOp::Remove, 3), (FileOp::SyncDir, 1), (FileOp::SyncDir, 2)] {
        let ctx = format!("{op:?} #{n} fails");
        let dir = scratch_dir();
        let faults = Arc::new(FailNth { op, n, armed: AtomicBool::new(false), seen: AtomicUsize::new(0) });
        let wal = Wal::open(dir.path(), options(SyncPolicy::Always, false).with_faults(faults.clone())).unwrap();
        for lsn in 1..=60 {
            wal.append(&payload(9, lsn, 300)).unwrap();
        }
        faults.armed.store(true, Ordering::SeqCst);
        assert!(wal.truncate_before(55).is_err(), "{ctx}: truncation succeeded");
        let first = wal.first_lsn();
        assert!(first > 1 || (op, n) == (FileOp::Remove, 1), "{ctx}: nothing was removed");
        let on_disk = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".wal")?.parse::<Lsn>().ok())
            .min();
        assert_eq!(on_disk, Some(first), "{ctx}: first segment on disk");
        assert_eq!(wal.iter_from(first).unwrap().count() as u64, 61 - first, "{ctx}: readable records");
        assert_eq!(wal.append(b"more").unwrap(), 61, "{ctx}: append after the failure");
        drop(wal);
        let wal = Wal::open(dir.path(), options(SyncPolicy::Always, false)).unwrap();
        assert_eq!((wal.first_lsn(), wal.last_lsn()), (first, 61), "{ctx}: reopened");
        wal.truncate_before(55).unwrap_or_else(|e| panic!("{ctx}: retried truncation: {e}"));
        assert!(wal.first_lsn() > first && wal.first_lsn() <= 55, "{ctx}: retried truncation kept {}", wal.first_lsn());
        assert_eq!(wal.iter_from(55).unwrap().count(), 7, "{ctx}: records from 55 after the retry");
    }
}

/// Group commit under power loss: appenders on several threads share
/// `fdatasync`s; whichever of them got an LSN back finds its record at that
/// LSN in every crash state, and every record recovered is one that some
/// thread appended.
#[test]
fn concurrent_appenders_lose_no_acknowledged_record() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 25;
    let record = |t: u64, i: u64| format!("thread {t} record {i} {}", "x".repeat((i * 37 % 400) as usize)).into_bytes();
    let all: std::collections::BTreeSet<Vec<u8>> =
        (0..THREADS).flat_map(|t| (0..PER_THREAD).map(move |i| (t, i))).map(|(t, i)| record(t, i)).collect();
    let run = |power: &Arc<PowerLoss>, dir: &Path| -> Vec<(Lsn, Vec<u8>)> {
        let wal = match Wal::open(dir, options(SyncPolicy::batch(), true).with_faults(power.clone())) {
            Ok(w) => w,
            Err(e) => {
                assert!(power.power_lost(), "open failed with the power on: {e}");
                return Vec::new();
            }
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        let mut acked = Vec::new();
                        for i in 0..PER_THREAD {
                            let p = record(t, i);
                            match wal.append(&p) {
                                Ok(lsn) => acked.push((lsn, p)),
                                Err(e) => {
                                    assert!(power.power_lost(), "append failed with the power on: {e}");
                                    break;
                                }
                            }
                        }
                        acked
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    };
    let dry = scratch_dir();
    let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
    assert_eq!(run(&power, &dry.path().join("log")).len() as u64, THREADS * PER_THREAD);
    let ops = power.operations();
    let mut rng = fastrand::Rng::with_seed(env_u64("WALRUS_POWER_LOSS_SEED", 0) ^ 0xc0c0);
    let mut checked = 0;
    for _ in 0..env_u64("WALRUS_POWER_LOSS_CASES", 20) * 2 {
        let cut = rng.u64(1..=ops);
        let real = scratch_dir();
        let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
        let acked: BTreeMap<Lsn, Vec<u8>> = run(&power, &real.path().join("log")).into_iter().collect();
        for state in 0..STATES_PER_CUT {
            let crashed = scratch_dir();
            let ctx = format!("cut {cut} of {ops}, state {state}");
            power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let wal = Wal::open(crashed.path().join("log"), options(SyncPolicy::batch(), true))
                .unwrap_or_else(|e| panic!("{ctx}: strict open: {e}"));
            let recovered: Vec<_> = wal.iter_from(1).unwrap().map(|r| r.unwrap()).collect();
            let mut seen = std::collections::BTreeSet::new();
            for (i, r) in recovered.iter().enumerate() {
                assert_eq!(r.lsn, i as u64 + 1, "{ctx}: LSNs not consecutive");
                assert!(all.contains(&r.payload), "{ctx}: LSN {} holds bytes nobody appended", r.lsn);
                assert!(seen.insert(&r.payload), "{ctx}: LSN {} holds a record twice", r.lsn);
            }
            for (lsn, p) in &acked {
                let r =
                    recovered.get(*lsn as usize - 1).unwrap_or_else(|| panic!("{ctx}: acknowledged LSN {lsn} lost"));
                assert!(r.payload == *p, "{ctx}: LSN {lsn} holds another record");
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
}

/// A second power loss while the log recovers from the first (discarding a
/// torn tail, syncing what it found, removing temporary files) and takes
/// new appends: what either life acknowledged survives.
#[test]
fn a_power_loss_during_recovery_loses_nothing_acknowledged() {
    let cases = env_u64("WALRUS_POWER_LOSS_CASES", 20) / 2;
    let base = env_u64("WALRUS_POWER_LOSS_SEED", 0);
    let mut second_cuts = 0;
    // First crash states with torn or lost writes for recovery to clean up.
    let mut damaged_first_lives = 0;
    for case in 0..cases {
        let seed = 7000 + base + case;
        let policy = [SyncPolicy::Always, SyncPolicy::None][case as usize % 2];
        let preallocate = seed.is_multiple_of(3);
        let dry = scratch_dir();
        let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
        workload(seed, policy, preallocate, &dry.path().join("log"), &power);
        let ops = power.operations();
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xdead);
        for _ in 0..3 {
            let cut = rng.u64(1..=ops);
            let real = scratch_dir();
            let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
            let h = workload(seed, policy, preallocate, &real.path().join("log"), &power);
            // Prefer a crash state that left recovery something to clean up
            // (torn or lost writes); the same seed materializes the same
            // crash state each time.
            let mut state = rng.u64(..1000);
            for _ in 0..16 {
                let probe = scratch_dir();
                let s = power.materialize(probe.path(), state).unwrap();
                if s.writes_torn + s.writes_lost > 0 {
                    break;
                }
                state = rng.u64(..1000);
            }
            let crashed = || {
                let d = scratch_dir();
                power.materialize(d.path(), state).unwrap();
                d
            };
            // Second life, without a cut: how far recovery gets and how many
            // operations reopening and three appends take.
            let first_life = scratch_dir();
            let summary = power.materialize(first_life.path(), state).unwrap();
            damaged_first_lives += usize::from(summary.writes_torn + summary.writes_lost > 0);
            let power2 = Arc::new(PowerLoss::new(first_life.path()).unwrap());
            let opts = options(policy, preallocate);
            let wal = Wal::open(first_life.path().join("log"), opts.clone().with_faults(power2.clone())).unwrap();
            let recovered = wal.last_lsn();
            assert!(recovered >= h.acked, "seed {seed} cut {cut}: first crash lost acknowledged records");
            drop(wal);
            let ops2 = power2.operations() + 6;

            for _ in 0..3 {
                let cut2 = rng.u64(1..=ops2);
                let again = crashed();
                let power2 = Arc::new(PowerLoss::new(again.path()).unwrap().cut_at(cut2));
                let mut h2 = History {
                    attempted: h.attempted.range(..=recovered).map(|(k, v)| (*k, v.clone())).collect(),
                    unit: h.unit.range(..=recovered).map(|(k, v)| (*k, *v)).collect(),
                    acked: h.acked,
                    floor: h.floor,
                    ..History::default()
                };
                if let Ok(wal) = Wal::open(again.path().join("log"), opts.clone().with_faults(power2.clone())) {
                    assert_eq!(wal.last_lsn(), recovered, "seed {seed} cut {cut}: recovery is repeatable");
                    for lsn in recovered + 1..=recovered + 3 {
                        let p = payload(seed + 1, lsn, 100);
                        h2.attempted.insert(lsn, p.clone());
                        h2.unit.insert(lsn, (lsn, lsn));
                        match wal.append(&p).and_then(|l| if policy.is_durable() { Ok(l) } else { wal.sync() }) {
                            Ok(l) => h2.acked = h2.acked.max(l),
                            Err(e) => {
                                assert!(power2.power_lost(), "seed {seed}: append failed with the power on: {e}");
                                break;
                            }
                        }
                    }
                }
                for state2 in 0..STATES_PER_CUT {
                    let third = scratch_dir();
                    let ctx = format!("{policy:?} seed {seed} cut {cut} state {state}, then cut {cut2} state {state2}");
                    power2.materialize(third.path(), state2).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    check(&third.path().join("log"), policy, preallocate, &h2, &ctx);
                }
                second_cuts += 1;
            }
        }
    }
    assert!(second_cuts > 0 && damaged_first_lives > 0, "{second_cuts} cuts, {damaged_first_lives} damaged");
}
