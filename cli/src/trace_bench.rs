//! `walrus bench trace`: a sequential editing trace replayed through a
//! replica of an engine document, next to the same edits on the bare
//! engine document, in the same run.

use std::time::Instant;

use walrus::replica::engines::{AutomergeDocument, LoroDocument, TextDocument, YrsDocument};
use walrus::replica::{ActorKey, Replica, ReplicaOptions};
use walrus::sync::Limits;
use walrus::SyncPolicy;

use crate::sync_bench::{segment_bytes, JsonLines, Line, Result};
use crate::trace::{batches, sync_all, Trace, TEXT};

/// Targets the issue sets, printed next to the figures as ratios.
mod target {
    /// Replay time over the bare engine's (with `--sync none --batch 64`).
    pub const TIME: f64 = 2.0;
    /// Log bytes over the engine's own full-history encoding.
    pub const LOG: f64 = 2.0;
    /// A fresh replica's catch-up bytes over the engine's own update.
    pub const CATCHUP: f64 = 1.5;
}

/// The engines `--engine` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// yrs (Yjs in Rust).
    Yrs,
    /// loro.
    Loro,
    /// automerge.
    Automerge,
}

impl Engine {
    fn id(self) -> &'static str {
        match self {
            Engine::Yrs => "yrs",
            Engine::Loro => "loro",
            Engine::Automerge => "automerge",
        }
    }
}

/// `--sync`: the replica's log policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sync {
    /// fdatasync before each write returns.
    Always,
    /// Group commit.
    Batch,
    /// No fdatasync.
    None,
}

impl Sync {
    fn policy(self) -> SyncPolicy {
        match self {
            Sync::Always => SyncPolicy::Always,
            Sync::Batch => SyncPolicy::batch(),
            Sync::None => SyncPolicy::None,
        }
    }
}

/// The arguments of `walrus bench trace`.
pub struct TraceBenchArgs {
    pub engine: Engine,
    pub trace: std::path::PathBuf,
    pub batch: usize,
    pub sync: Sync,
}

/// Runs the benchmark and prints (and, with `WALRUS_BENCH_JSON`, appends)
/// its figures.
pub fn run_trace(args: &TraceBenchArgs) -> Result<()> {
    let trace = Trace::load(&args.trace)?;
    if trace.agents != 1 || trace.txns.iter().enumerate().any(|(i, t)| t.parents != parents_of(i)) {
        return Err(format!("{}: not a sequential trace", args.trace.display()).into());
    }
    let name = args
        .trace
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".gz").trim_end_matches(".json").to_string())
        .unwrap_or_default();
    match args.engine {
        Engine::Yrs => bench::<YrsDocument>(args, &trace, name),
        Engine::Loro => bench::<LoroDocument>(args, &trace, name),
        Engine::Automerge => bench::<AutomergeDocument>(args, &trace, name),
    }
}

fn parents_of(i: usize) -> Vec<usize> {
    if i == 0 {
        vec![]
    } else {
        vec![i - 1]
    }
}

fn bench<D: TextDocument>(args: &TraceBenchArgs, trace: &Trace, name: String) -> Result<()> {
    let mut out = JsonLines::from_env()?;
    let groups = batches(trace, args.batch);
    let key = ActorKey::from_seed([7; 32]);
    println!(
        "walrus bench trace: {name}, {} transactions in {} writes of up to {} ({}), log sync {:?}",
        trace.txns.len(),
        groups.len(),
        args.batch,
        args.engine.id(),
        args.sync
    );

    // The bare engine document: the same edits, each group one transaction
    // and one update (what any app syncing the engine makes).
    let bare = D::default();
    let t0 = Instant::now();
    for edits in &groups {
        bare.edit_text(key.actor(), TEXT, edits).map_err(|e| format!("engine: {e}"))?;
    }
    let engine_s = t0.elapsed().as_secs_f64();
    let engine_history = {
        let mut b = Vec::new();
        ciborium::into_writer(&bare, &mut b)?;
        b.len() as u64
    };
    let engine_update = bare.full_update().len() as u64;

    // Through a replica.
    let dir = tempfile::tempdir()?;
    let d = ReplicaOptions::default();
    let mut opts = ReplicaOptions { checkpoint_bytes: 0, ..d };
    opts.wal.sync = args.sync.policy();
    let mut r: Replica<D> = Replica::open(dir.path().join("writer"), opts.clone())?;
    let t0 = Instant::now();
    for (i, edits) in groups.iter().enumerate() {
        let mut failed = None;
        let written = r.update(|d, actor| {
            d.edit_text(actor, TEXT, edits).unwrap_or_else(|e| {
                failed = Some(e);
                panic!("the trace's edit failed")
            })
        });
        written.map_err(|e| format!("write {i}: {}", failed.clone().unwrap_or_else(|| e.to_string())))?;
    }
    let walrus_s = t0.elapsed().as_secs_f64();
    let log_bytes = segment_bytes(&dir.path().join("writer"))?;

    // A fresh replica catches up through the sync protocol.
    let fresh: Replica<D> = Replica::open(dir.path().join("fresh"), opts)?;
    let mut pair = [r, fresh];
    let catchup_bytes = sync_all(&mut pair, &Limits::default())?;
    let ok = pair.iter().all(|r| r.doc().text(TEXT) == trace.end) && bare.text(TEXT) == trace.end;

    println!(
        "  replay: walrus {walrus_s:.2}s vs bare engine {engine_s:.2}s = {:.2}x (target <= {:.0}x with --sync none --batch 64)",
        walrus_s / engine_s.max(1e-9),
        target::TIME
    );
    println!(
        "  log: {:.1} kB vs the engine's full history {:.1} kB = {:.2}x (target <= {:.0}x)",
        log_bytes as f64 / 1e3,
        engine_history as f64 / 1e3,
        log_bytes as f64 / engine_history.max(1) as f64,
        target::LOG
    );
    println!(
        "  catch-up of a fresh replica: {:.1} kB vs the engine's own update {:.1} kB = {:.2}x (target <= {:.1}x)",
        catchup_bytes as f64 / 1e3,
        engine_update as f64 / 1e3,
        catchup_bytes as f64 / engine_update.max(1) as f64,
        target::CATCHUP
    );
    println!("  end content {}", if ok { "matches the trace" } else { "DIFFERS from the trace" });
    out.emit(Line::Trace {
        engine: args.engine.id(),
        trace: name,
        txns: trace.txns.len(),
        walrus_s,
        engine_s,
        log_bytes,
        engine_history_bytes: engine_history,
        catchup_bytes,
        engine_update_bytes: engine_update,
        end_content_ok: ok,
    })?;
    if !ok {
        return Err("the replayed text differs from the trace's end content".into());
    }
    Ok(())
}
