//! Throughput of the write-ahead log, each figure next to a baseline measured
//! in the same run, with the ratio and the target it is held to.
//!
//! ```sh
//! cargo bench --bench wal
//! WALRUS_BENCH_SECS=0.5 WALRUS_BENCH_RECOVERY_MB=128 cargo bench --bench wal   # quick
//! ```
//!
//! 1. One writer, `SyncPolicy::Always`: durable appends/s, next to a raw
//!    `pwrite` + `fdatasync` loop over a zero-filled file and to okaywal 0.3.
//! 2. 64 writer threads, `SyncPolicy::batch()` (group commit): durable
//!    appends/s, next to okaywal with 64 threads and to the one-writer rate.
//! 3. `SyncPolicy::None`: MB/s of payload, next to plain 1 MiB `write` calls.
//! 4. Recovery: `Wal::open` and `LogReader::open` of a large log (in the page
//!    cache), next to reading its segment files.
//!
//! `WALRUS_BENCH_SECS` (default 2) is the measured time of each timed run;
//! `WALRUS_BENCH_RECOVERY_MB` (default 1024) the size of the recovery log.
//! Missed targets are reported, never fatal. Temporary logs go to the
//! system temp directory (or `target/walrus-bench` if that is in memory) and
//! are removed afterwards (an interrupted run may leave `walrus-bench-*`
//! directories there).

mod common;

use common::bench_root;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use walrus::wal::format::FRAME_HEADER_LEN;
use walrus::wal::{LogReader, SyncPolicy, Wal, WalOptions};

/// Record payload sizes measured.
const SIZES: [usize; 2] = [256, 4096];
/// Writer threads of the group-commit measurement.
const THREADS: usize = 64;
/// Competing runs alternate in slices (A B C, then C B A, ...), so that
/// changes in the disk's speed during the run (other I/O on the machine, the
/// device's own caching) affect them alike. Single-thread durable runs use
/// short slices, since `fdatasync` latency can change within a fraction of a
/// second; runs that start 64 threads or write many megabytes use longer ones.
const SHORT_SLICE: Duration = Duration::from_millis(50);
const LONG_SLICE: Duration = Duration::from_millis(250);
/// Length of the zero-filled file of the raw `pwrite` + `fdatasync` loop
/// (the loop wraps around at its end), the same as a default segment.
const RAW_FILE_LEN: u64 = 64 << 20;
const MIB: usize = 1 << 20;
/// Timed repetitions of each recovery measurement (fewer if they are slow).
const RECOVERY_REPS: usize = 5;

struct Config {
    run: Duration,
    recovery_mb: u64,
    root: PathBuf,
    root_note: String,
}

impl Config {
    fn from_env() -> Config {
        let secs = env_number("WALRUS_BENCH_SECS", 2.0, |v: &f64| v.is_finite() && *v > 0.0);
        let recovery_mb = env_number("WALRUS_BENCH_RECOVERY_MB", 1024u64, |v: &u64| *v > 0);
        let (root, root_note) = bench_root();
        Config { run: Duration::from_secs_f64(secs), recovery_mb, root, root_note }
    }

    fn tempdir(&self) -> TempDir {
        tempfile::Builder::new()
            .prefix("walrus-bench-")
            .tempdir_in(&self.root)
            .unwrap_or_else(|e| panic!("creating a temporary directory in {}: {e}", self.root.display()))
    }

    /// Number of alternating slices of about `slice` in each timed run (even,
    /// at least 2).
    fn rounds(&self, slice: Duration) -> u32 {
        let n = (self.run.as_secs_f64() / slice.as_secs_f64()).round() as u32;
        (n.max(2) + 1) & !1
    }

    fn warmup(&self) -> Duration {
        (self.run / 10).clamp(Duration::from_millis(20), Duration::from_millis(200))
    }
}

fn env_number<T: std::str::FromStr + Copy + std::fmt::Display>(name: &str, default: T, ok: impl Fn(&T) -> bool) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(s) => match s.trim().parse::<T>() {
            Ok(v) if ok(&v) => v,
            _ => {
                eprintln!("warning: ignoring {name}={s:?}; using {default}");
                default
            }
        },
    }
}

/// Deterministic, incompressible-looking payload: the same bytes for the
/// same length in every run.
fn payload(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15u64 ^ len as u64);
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes);
    bytes
}

fn framed(size: usize) -> usize {
    size + FRAME_HEADER_LEN
}

// ---------------------------------------------------------------------------
// Timing

#[derive(Clone, Copy, Default)]
struct Measured {
    ops: u64,
    elapsed: Duration,
}

impl Measured {
    fn add(&mut self, other: Measured) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

type Runner<'a> = &'a mut dyn FnMut(Duration) -> Measured;

/// Runs `op` on this thread for about `dur`, reading the clock every
/// `check_every` operations.
fn timed_loop(dur: Duration, check_every: u64, mut op: impl FnMut()) -> Measured {
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        op();
        ops += 1;
        if ops.is_multiple_of(check_every) && start.elapsed() >= dur {
            break;
        }
    }
    Measured { ops, elapsed: start.elapsed() }
}

/// Runs `op` in a loop on `threads` threads, all started together, for about
/// `dur`; the elapsed time lasts until the last thread finished.
fn timed_threads(threads: usize, dur: Duration, op: &(impl Fn() + Sync)) -> Measured {
    let barrier = Barrier::new(threads + 1);
    let total = AtomicU64::new(0);
    let start = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                barrier.wait();
                let end = Instant::now() + dur;
                let mut n = 0u64;
                loop {
                    op();
                    n += 1;
                    if Instant::now() >= end {
                        break;
                    }
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        barrier.wait();
        Instant::now()
    });
    Measured { ops: total.into_inner(), elapsed: start.elapsed() }
}

/// Warms every runner up, then gives each the configured measured time in
/// alternating slices, reversing the order every round.
fn interleaved<const N: usize>(cfg: &Config, slice: Duration, runners: [Runner<'_>; N]) -> [Measured; N] {
    let mut runners = runners;
    for r in runners.iter_mut() {
        r(cfg.warmup());
    }
    let rounds = cfg.rounds(slice);
    let slice = cfg.run / rounds;
    let mut out = [Measured::default(); N];
    for round in 0..rounds {
        for k in 0..N {
            let i = if round % 2 == 0 { k } else { N - 1 - k };
            out[i].add(runners[i](slice));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Baselines and the okaywal competitor

/// `pwrite` + `fdatasync` of one framed record at a time, sequentially, into
/// a file of zeros that were written and synced beforehand.
struct RawSyncLoop {
    file: File,
    frame: Vec<u8>,
    offset: u64,
}

impl RawSyncLoop {
    fn new(path: &Path, frame_len: usize) -> io::Result<RawSyncLoop> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        let zeros = vec![0u8; MIB];
        let mut off = 0u64;
        while off < RAW_FILE_LEN {
            let n = (RAW_FILE_LEN - off).min(MIB as u64) as usize;
            file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        file.sync_data()?;
        let mut frame = vec![0u8; FRAME_HEADER_LEN];
        frame.extend_from_slice(&payload(frame_len - FRAME_HEADER_LEN));
        Ok(RawSyncLoop { file, frame, offset: 0 })
    }

    fn write_one(&mut self) {
        let len = self.frame.len() as u64;
        if self.offset + len > RAW_FILE_LEN {
            self.offset = 0;
        }
        self.file.write_all_at(black_box(&self.frame), self.offset).expect("raw pwrite");
        self.file.sync_data().expect("raw fdatasync");
        self.offset += len;
    }
}

/// A `LogManager` that recovers nothing and checkpoints nothing.
#[derive(Debug)]
struct NoopManager;

impl okaywal::LogManager for NoopManager {
    fn recover(&mut self, _entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: okaywal::EntryId,
        _checkpointed_entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

fn okaywal_open(dir: &Path) -> okaywal::WriteAheadLog {
    okaywal::WriteAheadLog::recover(dir, NoopManager).expect("opening okaywal")
}

/// One durable okaywal entry holding `payload` as its only chunk.
fn okaywal_commit(log: &okaywal::WriteAheadLog, payload: &[u8]) {
    let mut entry = log.begin_entry().expect("okaywal begin_entry");
    black_box(entry.write_chunk(black_box(payload)).expect("okaywal write_chunk"));
    black_box(entry.commit().expect("okaywal commit"));
}

fn wal_append(wal: &Wal, payload: &[u8]) {
    black_box(wal.append(black_box(payload)).expect("append"));
}

fn open_wal(dir: &Path, sync: SyncPolicy) -> Wal {
    Wal::open(dir, WalOptions::new(sync)).expect("opening the log")
}

// ---------------------------------------------------------------------------
// Output

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_sec(v: f64) -> String {
    format!("{}/s", thousands(v))
}

fn mb_per_sec(bytes: f64, secs: f64) -> f64 {
    bytes / secs / 1e6
}

fn mbps(v: f64) -> String {
    format!("{} MB/s", thousands(v))
}

enum Target {
    /// The ratio must be at least this.
    Ratio(f64),
    /// The walrus figure (MB/s) must be at least this.
    MbPerSec(f64),
    /// No target: for information.
    None,
}

struct Row<'a> {
    what: &'a str,
    size: usize,
    walrus: String,
    walrus_value: f64,
    baseline_name: &'a str,
    baseline: String,
    ratio: f64,
    target: Target,
}

#[derive(Default)]
struct Report {
    verdicts: Vec<(String, bool)>,
}

impl Report {
    fn header() {
        println!(
            "  {:<27} {:>6} {:>14}  {:<33} {:>14} {:>8}  {:<11} result",
            "measurement", "record", "walrus", "baseline", "baseline", "ratio", "target"
        );
    }

    fn row(&mut self, r: Row<'_>) {
        let (target, verdict) = match r.target {
            Target::Ratio(t) => (format!(">= {t:.2}x"), Some(r.ratio >= t)),
            Target::MbPerSec(t) => (format!(">= {}", mbps(t)), Some(r.walrus_value >= t)),
            Target::None => ("-".to_string(), None),
        };
        let result = match verdict {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "info",
        };
        println!(
            "  {:<27} {:>6} {:>14}  {:<33} {:>14} {:>7.2}x  {:<11} {}",
            r.what,
            size_label(r.size),
            r.walrus,
            r.baseline_name,
            r.baseline,
            r.ratio,
            target,
            result
        );
        if let Some(ok) = verdict {
            self.verdicts.push((
                format!(
                    "{} ({}) vs {}: {:.2}x, target {}",
                    r.what,
                    size_label(r.size),
                    r.baseline_name,
                    r.ratio,
                    target
                ),
                ok,
            ));
        }
    }

    fn note(text: &str) {
        println!("      {text}");
    }
}

// ---------------------------------------------------------------------------
// The measurements

/// Section 1: one writer under `Always`. Returns the walrus rate.
fn one_writer_always(cfg: &Config, report: &mut Report, size: usize) -> f64 {
    let data = payload(size);
    let raw_dir = cfg.tempdir();
    let mut raw = RawSyncLoop::new(&raw_dir.path().join("raw.log"), framed(size)).expect("preparing the raw file");
    let wal_dir = cfg.tempdir();
    let wal = open_wal(wal_dir.path(), SyncPolicy::Always);
    let ok_dir = cfg.tempdir();
    let ok = okaywal_open(ok_dir.path());
    // A second, identical raw loop: its ratio to the first shows how much
    // two runs of the same work differ on this machine.
    let control_dir = cfg.tempdir();
    let mut control =
        RawSyncLoop::new(&control_dir.path().join("raw.log"), framed(size)).expect("preparing the raw file");

    let mut raw_run = |d| timed_loop(d, 1, || raw.write_one());
    let mut wal_run = |d| timed_loop(d, 1, || wal_append(&wal, &data));
    let mut ok_run = |d| timed_loop(d, 1, || okaywal_commit(&ok, &data));
    let mut control_run = |d| timed_loop(d, 1, || control.write_one());
    let [r, w, o, c] = interleaved(cfg, SHORT_SLICE, [&mut raw_run, &mut wal_run, &mut ok_run, &mut control_run]);

    let what = "Always, 1 writer";
    report.row(Row {
        what,
        size,
        walrus: per_sec(w.rate()),
        walrus_value: w.rate(),
        baseline_name: "raw pwrite+fdatasync, zero-filled",
        baseline: per_sec(r.rate()),
        ratio: w.rate() / r.rate(),
        target: Target::Ratio(0.95),
    });
    report.row(Row {
        what,
        size,
        walrus: per_sec(w.rate()),
        walrus_value: w.rate(),
        baseline_name: "okaywal 0.3, 1 thread",
        baseline: per_sec(o.rate()),
        ratio: w.rate() / o.rate(),
        target: Target::Ratio(1.0),
    });
    Report::note(&format!(
        "mean latency: walrus {:.0} us, raw {:.0} us, okaywal {:.0} us; control: an identical second raw loop \
         ran at {} ({:.2}x the first), so differences of that size are noise",
        1e6 / w.rate(),
        1e6 / r.rate(),
        1e6 / o.rate(),
        per_sec(c.rate()),
        c.rate() / r.rate()
    ));
    wal.close().expect("closing the log");
    ok.shutdown().expect("closing okaywal");
    w.rate()
}

/// Section 2: 64 writers under group commit, next to okaywal with 64
/// threads and to one writer under `Always` (measured again here,
/// interleaved with the others, so that all see the same disk), and for
/// information walrus `Always` with 64 writers.
fn many_writers(cfg: &Config, report: &mut Report, size: usize, section1_always: f64) {
    let data = payload(size);
    let batch_dir = cfg.tempdir();
    let batch = open_wal(batch_dir.path(), SyncPolicy::batch());
    let always_dir = cfg.tempdir();
    let always = open_wal(always_dir.path(), SyncPolicy::Always);
    let one_dir = cfg.tempdir();
    let one = open_wal(one_dir.path(), SyncPolicy::Always);
    let ok_dir = cfg.tempdir();
    let ok = okaywal_open(ok_dir.path());

    let batch_op = || wal_append(&batch, &data);
    let always_op = || wal_append(&always, &data);
    let ok_op = || okaywal_commit(&ok, &data);
    let mut batch_run = |d| timed_threads(THREADS, d, &batch_op);
    let mut always_run = |d| timed_threads(THREADS, d, &always_op);
    let mut one_run = |d| timed_loop(d, 1, || wal_append(&one, &data));
    let mut ok_run = |d| timed_threads(THREADS, d, &ok_op);
    let [b, a, w, o] = interleaved(cfg, LONG_SLICE, [&mut batch_run, &mut always_run, &mut one_run, &mut ok_run]);

    let what = "batch(), 64 writers";
    report.row(Row {
        what,
        size,
        walrus: per_sec(b.rate()),
        walrus_value: b.rate(),
        baseline_name: "okaywal 0.3, 64 threads",
        baseline: per_sec(o.rate()),
        ratio: b.rate() / o.rate(),
        target: Target::Ratio(2.0),
    });
    report.row(Row {
        what,
        size,
        walrus: per_sec(b.rate()),
        walrus_value: b.rate(),
        baseline_name: "walrus Always, 1 writer",
        baseline: per_sec(w.rate()),
        ratio: b.rate() / w.rate(),
        target: Target::Ratio(20.0),
    });
    report.row(Row {
        what: "Always, 64 writers",
        size,
        walrus: per_sec(a.rate()),
        walrus_value: a.rate(),
        baseline_name: "okaywal 0.3, 64 threads",
        baseline: per_sec(o.rate()),
        ratio: a.rate() / o.rate(),
        target: Target::None,
    });
    Report::note(&format!(
        "payload: batch() {}, Always {}, okaywal {}; 1-writer Always here {}, in section 1 {}",
        mbps(b.rate() * size as f64 / 1e6),
        mbps(a.rate() * size as f64 / 1e6),
        mbps(o.rate() * size as f64 / 1e6),
        per_sec(w.rate()),
        per_sec(section1_always)
    ));
    batch.close().expect("closing the log");
    always.close().expect("closing the log");
    one.close().expect("closing the log");
    ok.shutdown().expect("closing okaywal");
}

/// Section 3: `None`, payload MB/s including a final `Wal::flush`, next to
/// writing the same framed bytes to a fresh file in 1 MiB `write` calls.
///
/// Both sides write the same number of bytes in alternating slices (the
/// slice size comes from the warm-up rate), so they meet the same page-cache
/// conditions: allocating new page-cache pages is much slower than reusing
/// just-freed ones on some machines (VMs), and dirty data from one side is
/// still being written back while the other runs.
fn no_sync(cfg: &Config, report: &mut Report, size: usize) {
    let data = payload(size);
    let frame_len = framed(size) as u64;
    let wal_dir = cfg.tempdir();
    let wal = open_wal(wal_dir.path(), SyncPolicy::None);
    let raw_dir = cfg.tempdir();
    let mut raw = RawAppender::new(&raw_dir.path().join("raw.log")).expect("creating the raw file");

    let warm = timed_loop(cfg.warmup(), 64, || wal_append(&wal, &data));
    raw.write(warm.ops * frame_len).expect("raw write");
    let rounds = cfg.rounds(LONG_SLICE);
    let per_slice = ((warm.rate() * (cfg.run / rounds).as_secs_f64()) as u64).max(1);

    let (mut wal_time, mut raw_time, mut flush_time) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let last = round + 1 == rounds;
        let mut run_wal = || {
            let t = Instant::now();
            for _ in 0..per_slice {
                wal_append(&wal, &data);
            }
            if last {
                let f = Instant::now();
                wal.flush().expect("flush");
                flush_time = f.elapsed();
            }
            wal_time += t.elapsed();
        };
        let mut run_raw = || raw_time += raw.write(per_slice * frame_len).expect("raw write");
        if round % 2 == 0 {
            run_wal();
            run_raw();
        } else {
            run_raw();
            run_wal();
        }
    }
    let records = per_slice * rounds as u64;
    let segments = std::fs::read_dir(wal_dir.path())
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "wal")).count())
        .unwrap_or(0);
    drop(wal);
    drop(wal_dir);
    drop(raw);
    drop(raw_dir);

    let payload_bytes = (records * size as u64) as f64;
    let walrus = mb_per_sec(payload_bytes, wal_time.as_secs_f64());
    let base = mb_per_sec(payload_bytes, raw_time.as_secs_f64());
    report.row(Row {
        what: "None, then Wal::flush",
        size,
        walrus: mbps(walrus),
        walrus_value: walrus,
        baseline_name: "raw write() 1 MiB calls, new file",
        baseline: mbps(base),
        ratio: walrus / base,
        target: Target::Ratio(0.7),
    });
    Report::note(&format!(
        "{} records = {:.0} MB framed: walrus {:.2} s (final flush {:.1} ms; {segments} segments), raw {:.2} s; \
         MB/s of payload on both sides",
        thousands(records as f64),
        (records * frame_len) as f64 / 1e6,
        wal_time.as_secs_f64(),
        flush_time.as_secs_f64() * 1e3,
        raw_time.as_secs_f64()
    ));
}

/// Sequential `write` calls of at most 1 MiB to one growing file.
struct RawAppender {
    file: File,
    chunk: Vec<u8>,
}

impl RawAppender {
    fn new(path: &Path) -> io::Result<RawAppender> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(RawAppender { file, chunk: payload(MIB) })
    }

    fn write(&mut self, bytes: u64) -> io::Result<Duration> {
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(MIB as u64) as usize;
            self.file.write_all(black_box(&self.chunk[..n]))?;
            left -= n as u64;
        }
        Ok(start.elapsed())
    }
}

/// Section 4: Recovery scan speed of a `recovery_mb` MiB log.
fn recovery(cfg: &Config, report: &mut Report, size: usize) {
    let data = payload(size);
    let dir = cfg.tempdir();
    let target_bytes = cfg.recovery_mb << 20;
    let records = target_bytes.div_ceil(framed(size) as u64);
    let build = Instant::now();
    {
        let wal = open_wal(dir.path(), SyncPolicy::None);
        for _ in 0..records {
            wal_append(&wal, &data);
        }
        wal.close().expect("closing the log");
    }
    let build_time = build.elapsed();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("listing the log")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let seg_bytes: u64 = segments.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();

    let opts = WalOptions::new(SyncPolicy::None);
    let mut open_times = Vec::new();
    let mut reader_times = Vec::new();
    let mut raw_times = Vec::new();
    let started = Instant::now();
    for rep in 0..RECOVERY_REPS {
        if rep > 0 && started.elapsed() >= cfg.run * 3 {
            break;
        }
        raw_times.push(read_files(&segments).expect("reading segments"));

        let t = Instant::now();
        let wal = Wal::open(dir.path(), opts.clone()).expect("reopening the log");
        open_times.push(t.elapsed());
        assert_eq!(wal.last_lsn(), records, "recovered record count");
        drop(wal);

        let t = Instant::now();
        let reader = LogReader::open(dir.path(), &opts).expect("LogReader::open");
        reader_times.push(t.elapsed());
        black_box(&reader);
        drop(reader);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (open, reader, raw) = (median(&mut open_times), median(&mut reader_times), median(&mut raw_times));
    let rate = |d: Duration| mb_per_sec(seg_bytes as f64, d.as_secs_f64());
    for (what, t) in [("Wal::open scan", open), ("LogReader::open scan", reader)] {
        report.row(Row {
            what,
            size,
            walrus: mbps(rate(t)),
            walrus_value: rate(t),
            baseline_name: "raw read() 1 MiB calls, same files",
            baseline: mbps(rate(raw)),
            ratio: rate(t) / rate(raw),
            target: Target::MbPerSec(1000.0),
        });
    }
    Report::note(&format!(
        "{} records, {} segments, {:.0} MB of segment files (built in {:.1} s); median of {}: Wal::open {:.0} ms, \
         LogReader::open {:.0} ms, raw read {:.0} ms",
        thousands(records as f64),
        segments.len(),
        seg_bytes as f64 / 1e6,
        build_time.as_secs_f64(),
        open_times.len(),
        open.as_secs_f64() * 1e3,
        reader.as_secs_f64() * 1e3,
        raw.as_secs_f64() * 1e3
    ));
}

fn read_files(paths: &[PathBuf]) -> io::Result<Duration> {
    let mut buf = vec![0u8; MIB];
    let start = Instant::now();
    for p in paths {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            black_box(&buf[..n]);
        }
    }
    Ok(start.elapsed())
}

/// `git describe` of the measured source tree, if it is a git checkout.
fn revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !rev.is_empty()).then_some(rev)
}

fn main() {
    let cfg = Config::from_env();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    match revision() {
        Some(rev) => println!("walrus {} ({rev}) write-ahead log benchmark", env!("CARGO_PKG_VERSION")),
        None => println!("walrus {} write-ahead log benchmark", env!("CARGO_PKG_VERSION")),
    }
    println!(
        "  {:.1} s measured per timed run; competitors alternate in slices of {} ms (1 writer) or {} ms, after a {} ms \
         warm-up; {cpus} CPUs; logs in {}",
        cfg.run.as_secs_f64(),
        SHORT_SLICE.as_millis(),
        LONG_SLICE.as_millis(),
        cfg.warmup().as_millis(),
        cfg.root_note
    );
    println!(
        "  record = payload size (frames add {FRAME_HEADER_LEN} bytes); MB = 10^6 bytes; \
         okaywal uses WriteAheadLog::recover defaults"
    );
    println!();
    let mut report = Report::default();
    Report::header();

    println!("1. one writer, SyncPolicy::Always: durable appends/s");
    let mut always = Vec::new();
    for size in SIZES {
        always.push(one_writer_always(&cfg, &mut report, size));
    }

    println!("2. {THREADS} writer threads, durable appends/s (group commit)");
    for (size, one) in SIZES.into_iter().zip(always) {
        many_writers(&cfg, &mut report, size, one);
    }

    println!(
        "3. one writer, SyncPolicy::None: payload MB/s, ending with Wal::flush (data handed to the OS, no fdatasync)"
    );
    for size in SIZES {
        no_sync(&cfg, &mut report, size);
    }

    println!(
        "4. recovery of a {} MiB log in the page cache: segment-file MB/s scanned by open (built with None, default \
         64 MiB segments)",
        cfg.recovery_mb
    );
    for size in SIZES {
        recovery(&cfg, &mut report, size);
    }

    let missed = report.verdicts.iter().filter(|(_, ok)| !ok).count();
    println!();
    println!("targets: {} met, {missed} missed", report.verdicts.len() - missed);
    for (text, ok) in &report.verdicts {
        println!("  {:<6} {text}", if *ok { "met" } else { "MISSED" });
    }
}
