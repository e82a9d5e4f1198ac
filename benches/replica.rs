//! Replica benchmark: local key-value operations through the replica (log +
//! apply) next to applying the same operations to a bare in-memory document,
//! and recovery time with and without a checkpoint.
//!
//! ```sh
//! cargo bench --bench replica
//! WALRUS_BENCH_OPS=100000 WALRUS_BENCH_BATCH_OPS=5000 cargo bench --bench replica
//! ```

use std::time::{Duration, Instant};

use crdts::CmRDT;
use walrus::replica::{ActorId, KvDoc, KvDocExt, Replica, ReplicaOptions};
use walrus::wal::{SyncPolicy, WalOptions};

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("ignoring {name}={v:?}: not a number");
            default
        }),
        Err(_) => default,
    }
}

fn key(i: usize) -> String {
    format!("key-{}", i % 10_000)
}

fn value(i: usize) -> String {
    format!("value number {i}")
}

fn opts(sync: SyncPolicy, checkpoint_bytes: u64) -> ReplicaOptions {
    ReplicaOptions { wal: WalOptions::new(sync), checkpoint_bytes, ..ReplicaOptions::default() }
}

fn bare(n: usize) -> Duration {
    let actor = ActorId([9; 16]);
    let mut doc = KvDoc::default();
    let start = Instant::now();
    for i in 0..n {
        let op = doc.put_op(actor, &key(i), &value(i));
        doc.apply(op);
    }
    std::hint::black_box(&doc);
    start.elapsed()
}

fn replica(dir: &std::path::Path, n: usize, sync: SyncPolicy, checkpoint_bytes: u64) -> Duration {
    let mut r: Replica<KvDoc> = Replica::open(dir, opts(sync, checkpoint_bytes)).expect("open replica");
    let start = Instant::now();
    for i in 0..n {
        r.update(|d, a| d.put_op(a, &key(i), &value(i))).expect("update");
    }
    r.close().expect("close");
    start.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    let n = env_usize("WALRUS_BENCH_OPS", 1_000_000);
    let nb = env_usize("WALRUS_BENCH_BATCH_OPS", 20_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("walrus replica benchmark: key-value puts over 10,000 keys, one writer thread");
    println!("  {:<44} {:>12} {:>14} {:>8}  target", "measurement", "ops", "ops/s", "ratio");

    let bare_n = bare(n);
    let bare_rate = rate(n, bare_n);
    println!("  {:<44} {:>12} {:>14.0} {:>8}", "bare in-memory KvDoc (baseline)", n, bare_rate, "1.00x");

    let none = replica(&tmp.path().join("none"), n, SyncPolicy::None, 0);
    let r = rate(n, none) / bare_rate;
    println!(
        "  {:<44} {:>12} {:>14.0} {:>7.2}x  >= 0.50x {}",
        "Replica, SyncPolicy::None",
        n,
        rate(n, none),
        r,
        verdict(r, 0.5)
    );

    let batch = replica(&tmp.path().join("batch"), nb, SyncPolicy::batch(), 0);
    let r = rate(nb, batch) / bare_rate;
    println!(
        "  {:<44} {:>12} {:>14.0} {:>7.2}x  (one fdatasync per op: a single writer has no one to share it with)",
        "Replica, SyncPolicy::batch()",
        nb,
        rate(nb, batch),
        r
    );

    // Recovery: the None replica above holds n ops in its log.
    let dir = tmp.path().join("none");
    let start = Instant::now();
    let r: Replica<KvDoc> = Replica::open(&dir, opts(SyncPolicy::None, 0)).expect("reopen");
    let replay = start.elapsed();
    let ops = r.clock().total();
    let mut r = r;
    r.checkpoint().expect("checkpoint");
    drop(r);
    let start = Instant::now();
    let r: Replica<KvDoc> = Replica::open(&dir, opts(SyncPolicy::None, 0)).expect("reopen after checkpoint");
    let from_checkpoint = start.elapsed();
    assert_eq!(r.clock().total(), ops);
    println!("\n  recovery of a replica with {ops} ops:");
    println!("    replaying the whole log:      {:>10.1} ms", replay.as_secs_f64() * 1e3);
    println!(
        "    from a checkpoint:            {:>10.1} ms  ({:.1}x faster)",
        from_checkpoint.as_secs_f64() * 1e3,
        replay.as_secs_f64() / from_checkpoint.as_secs_f64().max(1e-9)
    );
}
