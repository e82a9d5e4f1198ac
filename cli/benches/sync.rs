//! Replication over loopback and catch-up of a new node, next to the
//! automerge crate's sync protocol on the same catch-up workload: every
//! section of `walrus bench sync`, plus the automerge comparison. The
//! catch-up over the network runs the package's `walrus` binary (which
//! cargo builds for the benchmark) as two `walrus node` processes.
//!
//! ```sh
//! cargo bench --bench sync
//! cargo bench --bench sync -- --ops 20000 --catchup 10000 --nodes 3   # quick
//! ```
//!
//! `--ops` (default 100000) operations are written spread over each cluster
//! size of `--nodes` (comma-separated, default 3,10); a new node catches up
//! on `--catchup` (default 50000) operations.
//!
//! With `WALRUS_BENCH_JSON=FILE`, the figures are also appended to `FILE`
//! as one JSON object per line, the automerge columns filled in:
//!
//! ```sh
//! WALRUS_BENCH_JSON=sync.jsonl cargo bench --bench sync
//! ```

use std::time::{Duration, Instant};

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use walrus_cli::sync_bench::{run_sync, Result, SyncBenchArgs, Workload};

/// Automerge's in-process catch-up of the same writes: its time and the
/// bytes of its sync messages.
fn catchup_automerge(ops: usize, w: Workload) -> Result<(Duration, u64)> {
    let mut a = Automerge::new();
    for i in 0..ops {
        // One change per write, as each walrus op is one write.
        let mut tx = a.transaction();
        tx.put(ROOT, w.key(i), w.value(i))?;
        tx.commit();
    }
    let mut b = Automerge::new();
    let (mut sa, mut sb) = (State::new(), State::new());
    let t0 = Instant::now();
    let mut bytes = 0u64;
    loop {
        let mut moved = false;
        if let Some(m) = a.generate_sync_message(&mut sa) {
            let wire = m.encode();
            bytes += wire.len() as u64;
            b.receive_sync_message(&mut sb, Message::decode(&wire)?)?;
            moved = true;
        }
        if let Some(m) = b.generate_sync_message(&mut sb) {
            let wire = m.encode();
            bytes += wire.len() as u64;
            a.receive_sync_message(&mut sa, Message::decode(&wire)?)?;
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let took = t0.elapsed();
    if b.get_heads() != a.get_heads() {
        return Err("automerge replicas did not converge".into());
    }
    Ok((took, bytes))
}

/// `--ops N`, `--catchup N`, `--nodes A,B…`; cargo's own `--bench` is ignored.
fn parse_args() -> Result<SyncBenchArgs> {
    // Cargo builds the package's binaries for its benchmarks: the catch-up
    // runs this one as `walrus node`.
    let mut args = SyncBenchArgs { walrus: Some(env!("CARGO_BIN_EXE_walrus").into()), ..SyncBenchArgs::default() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--ops" => args.ops = value("--ops")?.parse()?,
            "--catchup" => args.catchup = value("--catchup")?.parse()?,
            "--nodes" => {
                args.nodes = value("--nodes")?.split(',').map(str::parse).collect::<std::result::Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other:?} (expected --ops, --catchup, --nodes)").into()),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    match parse_args().and_then(|args| run_sync(args, Some(&catchup_automerge))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync bench: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
