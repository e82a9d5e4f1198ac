//! The sync benchmark: replication throughput and bytes on the wire, next to
//! the size of the operations themselves and, when a comparison is given, to
//! another sync protocol on the same catch-up workload.
//!
//! `walrus bench sync` runs the walrus sections; `cargo bench --bench sync`
//! (in the source tree) runs them all, with the automerge crate's sync
//! protocol as the comparison.
//!
//! When the environment variable `WALRUS_BENCH_JSON` names a file, every
//! section also appends its figures to it as one JSON object per line
//! (`{"bench":"catchup",…}`, `"spread"`, `"log"`, `"verify"`), for scripts
//! that track them from run to run.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crdts::CmRDT;
use walrus::net::{Multiaddr, Node, NodeConfig, Traffic};
use walrus::replica::{
    ActorKey, Catchup, ChainHash, ChainKey, KvDoc, KvOp, OpEnvelope, Replica, ReplicaOptions, WAL_DIR,
};
use walrus::sync::{self, Limits};
use walrus::wal::{LogReader, WalOptions};
use walrus::SyncPolicy;

/// What the benchmark's steps return.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Another sync protocol's in-process catch-up of `ops` writes of a
/// workload: the time it took and the bytes of its sync messages.
pub type Comparison<'a> = &'a dyn Fn(usize, Workload) -> Result<(Duration, u64)>;

const DOC: &str = "bench";
/// Writers per node, so that the group commit batches.
const WRITERS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(600);
/// The environment variable naming the file the figures are appended to.
pub const JSON_ENV: &str = "WALRUS_BENCH_JSON";

/// Targets the figures are printed against, as ratios (below 1 meets it).
mod target {
    /// Log bytes on disk per op, as a multiple of key+value bytes.
    pub const LOG_PER_KV: f64 = 3.0;
    /// Microseconds per op spent receiving a catch-up page.
    pub const VERIFY_US: f64 = 2.0;
    /// Wire bytes per op delivered to a peer in the spread runs.
    pub const WIRE_PER_OP: f64 = 80.0;
    /// The ops count the convergence targets are set for.
    pub const SPREAD_OPS: usize = 100_000;

    /// Seconds to converge `SPREAD_OPS` ops over `nodes` nodes, if set.
    pub fn converge_s(nodes: usize) -> Option<f64> {
        match nodes {
            3 => Some(3.0),
            10 => Some(8.0),
            _ => None,
        }
    }
}

/// One line of `WALRUS_BENCH_JSON`: `bench` names the section, then its
/// figures, in this order (seconds and bytes unless the name says otherwise).
#[derive(serde::Serialize)]
#[serde(tag = "bench", rename_all = "lowercase")]
enum Line {
    /// A new replica catches up on `ops` writes of a workload.
    Catchup {
        workload: &'static str,
        ops: usize,
        /// In-process: the sync messages both ways, and their time.
        walrus_bytes: u64,
        walrus_s: f64,
        /// The comparison's in-process catch-up (`null` when it is not run).
        automerge_bytes: Option<u64>,
        automerge_s: Option<f64>,
        /// Two nodes over loopback TCP: every byte both ways, and the time.
        tcp_bytes: u64,
        tcp_s: f64,
    },
    /// `ops` writes spread over `nodes` nodes until every node has all.
    Spread { nodes: usize, ops: usize, converge_s: f64, wire_bytes_per_op: f64 },
    /// A bulk write's log bytes on disk per op, next to its key and value bytes.
    Log { workload: &'static str, ops: usize, log_bytes_per_op: f64, key_value_bytes_per_op: f64 },
    /// Receiving a catch-up, per op, next to applying the ops to a bare document.
    Verify { us_per_op_catchup: f64, us_per_op_apply: f64 },
}

/// Where the figures go as JSON lines: the file `WALRUS_BENCH_JSON` names,
/// or nowhere.
struct JsonLines(Option<File>);

impl JsonLines {
    /// Opens the file named by `WALRUS_BENCH_JSON` for appending (creating
    /// it), if the variable is set and not empty.
    fn from_env() -> Result<JsonLines> {
        match std::env::var_os(JSON_ENV).filter(|p| !p.is_empty()) {
            None => Ok(JsonLines(None)),
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("{JSON_ENV}: cannot open {}: {e}", Path::new(&path).display()))?;
                Ok(JsonLines(Some(file)))
            }
        }
    }

    /// Appends `line`, written at once so that a run cut short leaves
    /// whole lines behind.
    fn emit(&mut self, line: Line) -> Result<()> {
        if let Some(file) = &mut self.0 {
            let mut bytes = serde_json::to_vec(&line)?;
            bytes.push(b'\n');
            file.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// Options of the benchmark (`walrus bench sync`'s arguments).
pub struct SyncBenchArgs {
    /// Operations written, spread over the nodes.
    pub ops: usize,
    /// Operations a new node catches up on.
    pub catchup: usize,
    /// Cluster sizes to run.
    pub nodes: Vec<usize>,
}

impl Default for SyncBenchArgs {
    /// The defaults of `walrus bench sync`.
    fn default() -> Self {
        SyncBenchArgs { ops: 100_000, catchup: 50_000, nodes: vec![3, 10] }
    }
}

/// What the written keys and values look like.
#[derive(Clone, Copy)]
pub enum Workload {
    /// `item-00000042` = `value 0000000042`: as regular as data gets.
    Sequential,
    /// 13 random letters = three random 5-letter words.
    Random,
}

impl Workload {
    /// The workload in the JSON lines: `sequential` or `random`.
    pub fn id(self) -> &'static str {
        match self {
            Workload::Sequential => "sequential",
            Workload::Random => "random",
        }
    }

    /// The workload, as the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Sequential => "sequential keys and values",
            Workload::Random => "random keys and values",
        }
    }

    /// The key of write `i`.
    pub fn key(self, i: usize) -> String {
        match self {
            Workload::Sequential => format!("item-{i:08}"),
            Workload::Random => letters(i as u64 * 2, 13),
        }
    }

    /// The value of write `i`.
    pub fn value(self, i: usize) -> String {
        match self {
            Workload::Sequential => format!("value {i:010}"),
            Workload::Random => {
                let w = letters(i as u64 * 2 + 1, 15);
                format!("{} {} {}", &w[..5], &w[5..10], &w[10..])
            }
        }
    }
}

/// `n` pseudo-random lowercase letters, a pure function of `seed`.
fn letters(seed: u64, n: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.lowercase()).collect()
}

fn replica_options() -> ReplicaOptions {
    let d = ReplicaOptions::default();
    ReplicaOptions { wal: d.wal.clone().segment_size(16 << 20), checkpoint_bytes: 0, ..d }
}

fn config(dir: &Path, peers: Vec<Multiaddr>) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir);
    cfg.docs = vec![DOC.into()];
    cfg.peers = peers;
    // The default anti-entropy interval: gossip carries the load.
    cfg.heartbeat = Duration::from_millis(200);
    cfg.replica = replica_options();
    cfg
}

async fn start(dir: &Path, peers: Vec<Multiaddr>) -> Result<(Node<KvDoc>, Multiaddr)> {
    let (node, _events) = Node::<KvDoc>::start(config(dir, peers)).await?;
    let addr = node.listen_addrs().await?.into_iter().next().ok_or("no listening address")?;
    Ok((node, addr))
}

fn total_traffic(nodes: &[Node<KvDoc>]) -> u64 {
    nodes.iter().map(|n| n.traffic().sent).sum()
}

/// Waits until every node has applied `ops` operations in all.
async fn await_total(nodes: &[Node<KvDoc>], ops: u64) -> Result<()> {
    let mut events: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut done = true;
        for n in nodes {
            if n.with(DOC, |r| r.clock().total()).await? < ops {
                done = false;
                break;
            }
        }
        if done {
            return Ok(());
        }
        // Any event on any node is a reason to look again; drain the
        // backlog first so the check does not compete with the work.
        let waits = events.iter_mut().map(|e| Box::pin(e.recv()));
        if tokio::time::timeout_at(deadline, futures::future::select_all(waits)).await.is_err() {
            return Err(format!("not converged within {TIMEOUT:?}").into());
        }
        for e in events.iter_mut() {
            while e.try_recv().is_ok() {}
        }
    }
}

/// Waits until every node has a peer that replicates the document.
async fn await_peers(nodes: &[Node<KvDoc>]) -> Result<()> {
    let mut events: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut ready = true;
        for n in nodes {
            if !n.peers().await?.iter().any(|p| p.docs.iter().any(|d| d == DOC)) {
                ready = false;
                break;
            }
        }
        if ready {
            return Ok(());
        }
        let waits = events.iter_mut().map(|e| Box::pin(e.recv()));
        // Subscriptions arrive without an event of their own: look again soon.
        let _ = tokio::time::timeout(Duration::from_millis(50), futures::future::select_all(waits)).await;
        if tokio::time::Instant::now() > deadline {
            return Err("peers never connected".into());
        }
    }
}

/// Writes `ops` puts spread over `nodes`; returns the encoded bytes of all of them.
async fn write_spread(nodes: &[Node<KvDoc>], ops: usize, w: Workload) -> Result<u64> {
    let mut tasks = Vec::new();
    let streams = nodes.len() * WRITERS;
    for s in 0..streams {
        let node = nodes[s % nodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            for i in (s..ops).step_by(streams) {
                let env = node.update(DOC, move |d, a| d.put_op(a, &w.key(i), &w.value(i))).await?;
                bytes += env.op_bytes().len() as u64;
            }
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(bytes)
        }));
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await?.map_err(|e| e.to_string())?;
    }
    Ok(bytes)
}

async fn spread(n: usize, ops: usize, out: &mut JsonLines) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for i in 0..n {
        // Each node keeps the first node and its predecessor as peers.
        let mut peers: Vec<Multiaddr> = addrs.first().cloned().into_iter().collect();
        if i > 1 {
            peers.push(addrs[i - 1].clone());
        }
        let (node, addr) = start(&tmp.path().join(format!("n{i}")), peers).await?;
        nodes.push(node);
        addrs.push(addr);
    }
    // Let every node learn its peers' documents first, so the traffic
    // counted is the workload's.
    await_peers(&nodes).await?;
    let before = total_traffic(&nodes);
    let t0 = Instant::now();
    let op_bytes = write_spread(&nodes, ops, Workload::Random).await?;
    let written = t0.elapsed();
    await_total(&nodes, ops as u64).await?;
    let took = t0.elapsed();
    let wire = total_traffic(&nodes) - before;
    let per_op = op_bytes as f64 / ops as f64;
    let deliveries = (ops * (n - 1)) as f64;
    println!(
        "  {n:>2} nodes, {ops} ops: written in {:.2}s, converged in {:.2}s ({:.0} ops/s)",
        written.as_secs_f64(),
        took.as_secs_f64(),
        ops as f64 / took.as_secs_f64()
    );
    let wire_per_op = wire as f64 / deliveries;
    println!(
        "           wire {:.1} MB: {:.0} B per op delivered to a peer vs {:.0} B encoded op = {:.2}x (target <= 1.5x)",
        wire as f64 / 1e6,
        wire_per_op,
        per_op,
        wire_per_op / per_op
    );
    let converge = match target::converge_s(n) {
        Some(t) if ops == target::SPREAD_OPS => {
            format!("converged {:.2}x the target (< {t:.0}s)", took.as_secs_f64() / t)
        }
        Some(t) => format!("convergence < {t:.0}s is set for {} ops", target::SPREAD_OPS),
        None => format!("no convergence target for {n} nodes"),
    };
    println!(
        "           targets: {converge}; wire per op delivered {:.2}x the target (<= {:.0} B)",
        wire_per_op / target::WIRE_PER_OP,
        target::WIRE_PER_OP
    );
    out.emit(Line::Spread { nodes: n, ops, converge_s: took.as_secs_f64(), wire_bytes_per_op: wire_per_op })?;
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}

async fn catchup_network(ops: usize, w: Workload) -> Result<(Duration, u64, u64)> {
    let tmp = tempfile::tempdir()?;
    let (a, addr) = start(&tmp.path().join("a"), vec![]).await?;
    let op_bytes = write_spread(std::slice::from_ref(&a), ops, w).await?;
    let before = a.traffic();
    let t0 = Instant::now();
    let (b, _) = start(&tmp.path().join("b"), vec![addr]).await?;
    await_total(&[a.clone(), b.clone()], ops as u64).await?;
    let took = t0.elapsed();
    let after = a.traffic();
    let moved = Traffic { sent: after.sent - before.sent, received: after.received - before.received };
    a.shutdown().await?;
    b.shutdown().await?;
    Ok((took, moved.sent + moved.received, op_bytes))
}

/// The same catch-up with the sync protocol driven in-process: message bytes only.
fn catchup_in_process(ops: usize, w: Workload) -> Result<(Duration, u64)> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut a: Replica<KvDoc> = Replica::open(da.path(), replica_options())?;
    let makers = (0..ops).map(|i| move |d: &KvDoc, act| d.put_op(act, &w.key(i), &w.value(i)));
    for r in a.update_many(makers) {
        r?;
    }
    let mut b: Replica<KvDoc> = Replica::open(db.path(), replica_options())?;
    let limits = Limits::default();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    loop {
        let req = sync::encode(&sync::request(&b, DOC, 1 << 20));
        let resp = sync::encode(&sync::respond(&a, DOC, &sync::decode(&req, limits.max_request, "request")?, &limits));
        bytes += (req.len() + resp.len()) as u64;
        let applied =
            sync::apply_response(&mut b, DOC, sync::decode(&resp, limits.max_response, "response")?, &limits)?;
        if !applied.more {
            break;
        }
    }
    Ok((t0.elapsed(), bytes))
}

/// What authenticating operations costs: the compact operation's bytes,
/// a chain link (one hash) and a head signature check per operation, next
/// to applying the operation.
fn signatures(n: usize, w: Workload) -> Result<()> {
    let key = ActorKey::from_seed([7; 32]);
    let mut doc = KvDoc::default();
    let mut envs: Vec<OpEnvelope<KvOp>> = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let op = doc.put_op(key.actor(), &w.key(i), &w.value(i));
        doc.apply(op.clone());
        let prev = envs.last().map_or(ChainHash::ZERO, |e| e.hash());
        envs.push(OpEnvelope::signed::<KvDoc>(&key, DOC, i as u64 + 1, prev, op)?);
    }
    let sign_and_apply = t0.elapsed();
    let bytes: usize = envs.iter().map(|e| e.op_bytes().len()).sum();
    let chain = ChainKey::new(DOC);
    let t0 = Instant::now();
    let mut prev = ChainHash::ZERO;
    for env in &envs {
        prev = chain.op_hash(&env.actor(), env.seq(), &prev, None, env.op_bytes());
    }
    let hash = t0.elapsed();
    if envs.last().is_some_and(|e| e.hash() != prev) {
        return Err("the chain did not hash to its head".into());
    }
    let t0 = Instant::now();
    for env in &envs {
        env.verify_head()?;
    }
    let verify = t0.elapsed();
    let mut check = KvDoc::default();
    let t0 = Instant::now();
    for env in &envs {
        check.apply(env.op().clone());
    }
    let apply = t0.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("\nsignatures: {n} ops ({})", w.name());
    println!("  compact operation: {:.1} B/op; a signed run head adds 64 B once per run", bytes as f64 / n as f64);
    println!(
        "  chain link (BLAKE3) {:.2} us/op; a head signature check {:.1} us (once per run); applying {:.2} us/op; \
         sign+apply {:.1} us/op",
        per(hash),
        per(verify),
        per(apply),
        per(sign_and_apply),
    );
    Ok(())
}

/// Runs every section and prints its figures on standard output (and, if
/// `WALRUS_BENCH_JSON` names a file, appends them to it as JSON lines);
/// `compare`, if given, runs on each catch-up workload too.
pub fn run_sync(args: SyncBenchArgs, compare: Option<Comparison>) -> Result<()> {
    let mut out = JsonLines::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("walrus bench sync (loopback TCP, durable writes with group commit)");
    for w in [Workload::Sequential, Workload::Random] {
        signatures(args.catchup.clamp(1, 20_000), w)?;
    }
    let (dir, written) = log(args.catchup.max(1), &mut out)?;
    verify(&written, &mut out)?;
    // The replica first, then its directory.
    drop(written);
    drop(dir);
    println!("\nspread: ops written concurrently on every node until all have all");
    for &n in &args.nodes {
        if n < 2 {
            return Err("--nodes needs at least 2 nodes per run".into());
        }
        rt.block_on(spread(n, args.ops, &mut out))?;
    }
    for w in [Workload::Sequential, Workload::Random] {
        catchup(&rt, args.catchup, w, compare, &mut out)?;
    }
    Ok(())
}

/// The bytes of the log segment files of the replica in `dir`.
fn segment_bytes(dir: &Path) -> Result<u64> {
    let log = LogReader::open(&dir.join(WAL_DIR), &WalOptions::default())?;
    Ok(log.summary().file_bytes)
}

/// Log bytes on disk per op for a bulk write (`update_many` of `n` puts of
/// the sequential workload into a fresh replica, durable policy), next to
/// the key and value bytes the puts carry. Returns the replica (and its
/// directory) for [`verify`] to catch up from.
fn log(n: usize, out: &mut JsonLines) -> Result<(tempfile::TempDir, Replica<KvDoc>)> {
    let w = Workload::Sequential;
    let dir = tempfile::tempdir()?;
    let mut opts = replica_options();
    // Bytes on disk are measured as the segment files' lengths: with
    // preallocation off a segment is exactly its header and the frames
    // written to it, where a preallocated one is zero-filled to its full
    // size. This counts everything the log adds (segment headers, frame
    // headers and checksums, records split over frames), which the bytes
    // the replica hands to the log would not; preallocation changes the
    // files' length only, not what is written.
    opts.wal.preallocate = false;
    let mut r: Replica<KvDoc> = Replica::open(dir.path(), opts)?;
    let before = segment_bytes(dir.path())?;
    let makers = (0..n).map(|i| move |d: &KvDoc, a| d.put_op(a, &w.key(i), &w.value(i)));
    let t0 = Instant::now();
    for written in r.update_many(makers) {
        written?;
    }
    let took = t0.elapsed();
    let log_bytes = segment_bytes(dir.path())? - before;
    let kv: usize = (0..n).map(|i| w.key(i).len() + w.value(i).len()).sum();
    let (log_per_op, kv_per_op) = (log_bytes as f64 / n as f64, kv as f64 / n as f64);
    println!("\nlog: update_many of {n} puts into a fresh replica ({}, durable)", w.name());
    println!(
        "  {log_per_op:.1} B/op on disk vs {kv_per_op:.1} B/op of key+value = {:.2}x, {:.2}x the target \
         (<= {:.0}x); written in {:.2}s",
        log_per_op / kv_per_op,
        log_per_op / kv_per_op / target::LOG_PER_KV,
        target::LOG_PER_KV,
        took.as_secs_f64()
    );
    out.emit(Line::Log { workload: w.id(), ops: n, log_bytes_per_op: log_per_op, key_value_bytes_per_op: kv_per_op })?;
    Ok((dir, r))
}

/// What receiving a catch-up costs per op: `from`'s operations in pages as
/// a catch-up answers them (`Replica::ops_since`, 1 MiB), each handed to
/// `Replica::receive` of a fresh replica, whose time (signature checks,
/// logging, applying) is divided by the ops; next to applying the same ops
/// to a bare `KvDoc`. The receiving replica does not sync its log
/// (`SyncPolicy::None`), so the figure is the work on the ops rather than
/// the disk's sync latency.
fn verify(from: &Replica<KvDoc>, out: &mut JsonLines) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = replica_options();
    opts.wal.sync = SyncPolicy::None;
    let mut to: Replica<KvDoc> = Replica::open(dir.path(), opts)?;
    let (mut receiving, mut pages) = (Duration::ZERO, 0usize);
    let mut applied = Vec::new();
    let limits = Limits::default();
    loop {
        let answer = sync::respond(from, DOC, &sync::request(&to, DOC, 1 << 20), &limits);
        let count = match from.ops_since(to.clock(), 1 << 20)? {
            Catchup::Ops { ops, .. } => {
                applied.extend(ops.iter().map(|env| env.op().clone()));
                ops.len()
            }
            Catchup::Snapshot { .. } => return Err("catch-up answered with a snapshot".into()),
        };
        if count == 0 {
            break;
        }
        // Decoding the page, hashing the chains, checking the heads,
        // logging and applying.
        let t0 = Instant::now();
        let got = sync::apply_response(&mut to, DOC, answer, &limits)?;
        receiving += t0.elapsed();
        pages += 1;
        if got.received.applied != count {
            return Err(format!("a catch-up page of {count} ops applied {}", got.received.applied).into());
        }
        if !got.more {
            break;
        }
    }
    let n = applied.len().max(1);
    let mut doc = KvDoc::default();
    let t0 = Instant::now();
    for op in applied {
        doc.apply(op);
    }
    let apply = t0.elapsed();
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let (catchup_us, apply_us) = (us(receiving), us(apply));
    println!("\nverify: a fresh replica receives {n} ops in {pages} catch-up page(s)");
    println!(
        "  receive (verify, log, apply) {catchup_us:.2} us/op vs applying to a KvDoc {apply_us:.2} us/op; \
         {:.2}x the target (<= {:.0} us/op)",
        catchup_us / target::VERIFY_US,
        target::VERIFY_US
    );
    out.emit(Line::Verify { us_per_op_catchup: catchup_us, us_per_op_apply: apply_us })?;
    Ok(())
}

fn catchup(
    rt: &tokio::runtime::Runtime,
    ops: usize,
    w: Workload,
    compare: Option<Comparison>,
    out: &mut JsonLines,
) -> Result<()> {
    println!("\ncatch-up: a new node pulls {ops} ops from one peer ({})", w.name());
    let (took, wire, op_bytes) = rt.block_on(catchup_network(ops, w))?;
    println!(
        "  walrus over TCP:      {:.2}s, {:.2} MB both ways vs {:.2} MB of ops = {:.2}x (target <= 1.3x)",
        took.as_secs_f64(),
        wire as f64 / 1e6,
        op_bytes as f64 / 1e6,
        wire as f64 / op_bytes as f64
    );
    let (took_p, bytes_p) = catchup_in_process(ops, w)?;
    println!(
        "  walrus in-process:    {:.2}s, {:.2} MB of sync messages = {:.2}x the ops",
        took_p.as_secs_f64(),
        bytes_p as f64 / 1e6,
        bytes_p as f64 / op_bytes as f64
    );
    let compared = compare.map(|c| c(ops, w)).transpose()?;
    match compared {
        Some((took_a, bytes_a)) => {
            println!(
                "  automerge in-process: {:.2}s, {:.2} MB of sync messages",
                took_a.as_secs_f64(),
                bytes_a as f64 / 1e6
            );
            println!(
                "  walrus/automerge (in-process): bytes {:.2}x, time {:.2}x (target: both < 1)",
                bytes_p as f64 / bytes_a as f64,
                took_p.as_secs_f64() / took_a.as_secs_f64().max(1e-9)
            );
        }
        None => println!("  automerge: not measured here (`cargo bench --bench sync` in the source tree compares)"),
    }
    out.emit(Line::Catchup {
        workload: w.id(),
        ops,
        walrus_bytes: bytes_p,
        walrus_s: took_p.as_secs_f64(),
        automerge_bytes: compared.map(|(_, b)| b),
        automerge_s: compared.map(|(t, _)| t.as_secs_f64()),
        tcp_bytes: wire,
        tcp_s: took.as_secs_f64(),
    })?;
    Ok(())
}
