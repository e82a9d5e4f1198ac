//! Replica benchmark: local key-value puts through a replica (build the op,
//! encode it, append it to the log, apply it) next to the same puts applied
//! to a bare in-memory `KvDoc` in the same run, and recovery time with and
//! without a checkpoint.
//!
//! ```sh
//! cargo bench --bench replica
//! WALRUS_BENCH_OPS=100000 WALRUS_BENCH_BATCH_OPS=2000 cargo bench --bench replica   # quick
//! ```
//!
//! 1. Bare `KvDoc`: `put_op` + `apply`, the baseline.
//! 2. `SyncPolicy::None`, no automatic checkpoints: target at least 0.5x the
//!    bare rate. Then the same with the default automatic checkpoints.
//! 3. `SyncPolicy::batch()` (the default): one writer calling `update` waits
//!    for each op's own `fdatasync` (nobody shares the group commit), so this
//!    measures the disk's sync latency, with fewer ops
//!    (`WALRUS_BENCH_BATCH_OPS`, and at most 30 seconds).
//! 4. Recovery: opening the replica of step 2 by replaying its whole log,
//!    then after a checkpoint.
//!
//! `WALRUS_BENCH_OPS` (default 1,000,000) and `WALRUS_BENCH_BATCH_OPS`
//! (default 20,000) set the sizes, `WALRUS_BENCH_REPEAT` (default 3) how
//! often steps 1 and 2 run, alternating (the fastest run of each counts).
//! Keys cycle over 10,000 distinct keys. Rates are wall-clock; the CPU
//! column (process CPU time, Linux only) is steadier on a busy machine.
//! Missed targets are reported, never fatal. Replicas go to the system temp
//! directory (or `target/walrus-bench` if that is in memory) and are removed
//! afterwards.

mod common;

use common::bench_root;
use std::path::Path;
use std::time::{Duration, Instant};

use crdts::CmRDT;
use walrus::replica::{ActorId, KvDoc, Replica, ReplicaOptions};
use walrus::wal::{SyncPolicy, WalOptions};

const KEYS: usize = 10_000;
const TARGET: f64 = 0.5;
/// The `batch()` run stops after this long (a slow disk would otherwise
/// take minutes).
const BATCH_TIME_LIMIT: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("warning: ignoring {name}={v:?}; using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

fn key(i: usize) -> String {
    format!("key-{}", i % KEYS)
}

fn value(i: usize) -> String {
    format!("value number {i}")
}

fn opts(sync: SyncPolicy, checkpoint_bytes: u64) -> ReplicaOptions {
    ReplicaOptions { wal: WalOptions::new(sync), checkpoint_bytes, ..ReplicaOptions::default() }
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Wall-clock and CPU time of one run.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

impl Timing {
    const NONE: Timing = Timing { wall: Duration::MAX, cpu: None };

    fn measure<T>(f: impl FnOnce() -> T) -> (Timing, T) {
        let cpu0 = cpu_time();
        let start = Instant::now();
        let out = f();
        let wall = start.elapsed();
        let cpu = cpu0.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
        (Timing { wall, cpu }, out)
    }

    /// Fastest of both, each on its own.
    fn best(self, other: Timing) -> Timing {
        let cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Timing { wall: self.wall.min(other.wall), cpu }
    }
}

fn bare(n: usize) -> Timing {
    let actor = ActorId([9; 32]);
    let mut doc = KvDoc::default();
    let (t, ()) = Timing::measure(|| {
        for i in 0..n {
            let op = doc.put_op(actor, &key(i), &value(i));
            doc.apply(op);
        }
    });
    std::hint::black_box(&doc);
    t
}

/// Writes `n` puts into a new replica in `dir`; the time includes `close`
/// (everything durable), not `open`.
fn replica(dir: &Path, n: usize, opts: ReplicaOptions) -> Result<Timing, String> {
    replica_for(dir, n, opts, Duration::MAX).map(|(t, _)| t)
}

/// Like [`replica`], but stops after about `limit`; returns the ops written.
fn replica_for(dir: &Path, n: usize, opts: ReplicaOptions, limit: Duration) -> Result<(Timing, usize), String> {
    let mut r: Replica<KvDoc> = Replica::open(dir, opts).map_err(|e| format!("open: {e}"))?;
    let start = Instant::now();
    let (t, result) = Timing::measure(|| -> Result<usize, String> {
        for i in 0..n {
            r.update(|d, a| d.put_op(a, &key(i), &value(i))).map_err(|e| format!("update {i}: {e}"))?;
            if i % 64 == 63 && start.elapsed() >= limit {
                return Ok(i + 1);
            }
        }
        Ok(n)
    });
    let done = result?;
    let (close, result) = Timing::measure(|| r.close());
    result.map_err(|e| format!("close: {e}"))?;
    let cpu = t.cpu.zip(close.cpu).map(|(a, b)| a + b);
    Ok((Timing { wall: t.wall + close.wall, cpu }, done))
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= TARGET {
        "met"
    } else {
        "MISSED"
    }
}

/// One table row; ratios are of rates relative to `base` (`n` ops timed
/// `t`), by wall-clock and by CPU time.
fn row(what: &str, n: usize, t: Timing, base: (usize, Timing), note: &str) {
    let (bn, b) = base;
    let per_sec = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-3);
    let wall_ratio = rate(n, t.wall) / rate(bn, b.wall);
    let cpu_ratio = b.cpu.zip(t.cpu).map(|(bc, tc)| per_sec(n, tc) / per_sec(bn, bc));
    let cpu = t.cpu.map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.as_secs_f64()));
    let cpu_ratio = cpu_ratio.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"));
    println!(
        "  {what:<46} {n:>9} {:>10.0} {:>7} {cpu:>7} {cpu_ratio:>7}  {note}",
        rate(n, t.wall),
        format!("{wall_ratio:.2}x"),
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n = env_usize("WALRUS_BENCH_OPS", 1_000_000);
    let nb = env_usize("WALRUS_BENCH_BATCH_OPS", 20_000);
    let repeat = env_usize("WALRUS_BENCH_REPEAT", 3);
    let (root, root_note) = bench_root();
    let tmp = tempfile::Builder::new()
        .prefix("walrus-bench-")
        .tempdir_in(&root)
        .unwrap_or_else(|e| panic!("creating a temporary directory in {}: {e}", root.display()));
    let started = Instant::now();
    println!("walrus replica benchmark: KvDoc puts over {KEYS} keys, one writer thread; replicas in {root_note}");
    println!("  first three rows: fastest of {repeat} alternating runs; ratio = rate relative to the bare document");
    println!(
        "  {:<46} {:>9} {:>10} {:>7} {:>7} {:>7}  target",
        "measurement", "ops", "ops/s", "ratio", "cpu s", "cpu rt"
    );

    // The runs alternate (bare, none, none with checkpoints, bare, ...) so
    // that changes in the machine's load affect them alike.
    let none_dir = tmp.path().join("none");
    let auto_dir = tmp.path().join("none-auto");
    let auto = ReplicaOptions::default().checkpoint_bytes;
    let mut bare_t = Timing::NONE;
    let mut none_t: Result<Timing, String> = Ok(Timing::NONE);
    let mut auto_t: Result<Timing, String> = Ok(Timing::NONE);
    for run in 0..repeat {
        bare_t = bare_t.best(bare(n));
        for (dir, checkpoint_bytes, best) in [(&none_dir, 0, &mut none_t), (&auto_dir, auto, &mut auto_t)] {
            if let Ok(so_far) = *best {
                if run > 0 {
                    let _ = std::fs::remove_dir_all(dir);
                }
                *best = replica(dir, n, opts(SyncPolicy::None, checkpoint_bytes)).map(|t| t.best(so_far));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&auto_dir);
    row("bare in-memory KvDoc (put_op + apply)", n, bare_t, (n, bare_t), "baseline");
    match &none_t {
        Ok(t) => {
            let r = rate(n, t.wall) / rate(n, bare_t.wall);
            let note = format!(">= {TARGET:.2}x {}", verdict(r));
            row("Replica, SyncPolicy::None, no auto checkpoint", n, *t, (n, bare_t), &note);
        }
        Err(e) => println!("  Replica, SyncPolicy::None: failed: {e}"),
    }
    match auto_t {
        Ok(t) => {
            let note = format!("(checkpoint every {} MiB of log, the default)", auto >> 20);
            row("Replica, SyncPolicy::None, auto checkpoint", n, t, (n, bare_t), &note);
        }
        Err(e) => println!("  Replica, SyncPolicy::None, auto checkpoint: failed: {e}"),
    }

    match replica_for(&tmp.path().join("batch"), nb, opts(SyncPolicy::batch(), 0), BATCH_TIME_LIMIT) {
        Ok((t, done)) => {
            let per_op = t.wall.as_secs_f64() * 1e6 / done as f64;
            let mut note = format!("{per_op:.0} us/op: one fdatasync per op with one writer");
            if done < nb {
                note += &format!(" (stopped after {} s)", BATCH_TIME_LIMIT.as_secs());
            }
            row("Replica, SyncPolicy::batch() (the default)", done, t, (n, bare_t), &note);
        }
        Err(e) => println!("  Replica, SyncPolicy::batch(): failed: {e}"),
    }
    let _ = std::fs::remove_dir_all(tmp.path().join("batch"));

    if none_t.is_ok() {
        recovery(&none_dir);
    }
    println!("\n  total time {:.1} s", started.elapsed().as_secs_f64());
}

/// Opens the replica in `dir` (whole log), checkpoints it, opens it again.
fn recovery(dir: &Path) {
    let log_bytes = dir_bytes(&dir.join("wal"));
    let (replay, opened) = Timing::measure(|| Replica::<KvDoc>::open(dir, opts(SyncPolicy::None, 0)));
    let mut r = match opened {
        Ok(r) => r,
        Err(e) => return println!("\n  recovery: open failed: {e}"),
    };
    let ops = r.clock().total();
    let (checkpointing, written) = Timing::measure(|| r.checkpoint());
    if let Err(e) = written.and_then(|()| r.close()) {
        return println!("\n  recovery: checkpoint failed: {e}");
    }
    let cp_bytes = std::fs::metadata(dir.join("checkpoint")).map_or(0, |m| m.len());
    let left = dir_bytes(&dir.join("wal"));
    let (from_checkpoint, reopened) = Timing::measure(|| Replica::<KvDoc>::open(dir, opts(SyncPolicy::None, 0)));
    match reopened {
        Ok(r) if r.clock().total() != ops => {
            println!("\n  warning: {} ops after reopening, expected {ops}", r.clock().total())
        }
        Ok(_) => {}
        Err(e) => return println!("\n  recovery: reopen failed: {e}"),
    }
    let cpu = |t: Timing| t.cpu.map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.as_secs_f64()));
    println!("\n  recovery of a replica with {ops} ops ({} keys), Replica::open:", ops.min(KEYS as u64));
    println!(
        "    replaying the whole log ({:>6.1} MB):         {:>9.1} ms  cpu {:>5} s  {:>9.0} ops/s",
        mb(log_bytes),
        ms(replay.wall),
        cpu(replay),
        rate(ops as usize, replay.wall)
    );
    println!(
        "    writing a checkpoint ({:>6.1} MB):             {:>9.1} ms  cpu {:>5} s",
        mb(cp_bytes),
        ms(checkpointing.wall),
        cpu(checkpointing)
    );
    println!(
        "    from the checkpoint ({:>6.1} MB of log left): {:>9.1} ms  cpu {:>5} s  {:.1}x faster",
        mb(left),
        ms(from_checkpoint.wall),
        cpu(from_checkpoint),
        replay.wall.as_secs_f64() / from_checkpoint.wall.as_secs_f64().max(1e-9)
    );
}
