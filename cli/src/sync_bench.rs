//! The sync benchmark: replication throughput and bytes on the wire, next to
//! the size of the operations themselves and, when a comparison is given, to
//! another sync protocol on the same catch-up workload.
//!
//! `walrus bench sync` runs the walrus sections; `cargo bench --bench sync`
//! (in the source tree) runs them all, with the automerge crate's sync
//! protocol as the comparison.
//!
//! The catch-up over the network runs two `walrus node` processes (the
//! `walrus` binary: see [`SyncBenchArgs::walrus`]) and counts every byte
//! between them in a TCP relay on loopback: noise, yamux and all.
//!
//! When the environment variable `WALRUS_BENCH_JSON` names a file, every
//! section also appends its figures to it as one JSON object per line
//! (`{"bench":"catchup",…}`, `"spread"`, `"log"`, `"verify"`), for scripts
//! that track them from run to run.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crdts::CmRDT;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walrus::net::{Multiaddr, Node, NodeConfig};
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
/// The environment variable naming the `walrus` binary the catch-up runs
/// as `walrus node` (see [`SyncBenchArgs::walrus`]).
pub const BIN_ENV: &str = "WALRUS_BIN";

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
pub(crate) enum Line {
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
        /// Two `walrus node` processes over loopback TCP: every byte both
        /// ways (noise, yamux and all), and the time from starting the new
        /// node until it has every op.
        tcp_bytes: u64,
        tcp_s: f64,
    },
    /// `ops` writes spread over `nodes` nodes until every node has all.
    Spread { nodes: usize, ops: usize, converge_s: f64, wire_bytes_per_op: f64 },
    /// A bulk write's log bytes on disk per op, next to its key and value bytes.
    Log { workload: &'static str, ops: usize, log_bytes_per_op: f64, key_value_bytes_per_op: f64 },
    /// Receiving a catch-up, per op, next to applying the ops to a bare document.
    Verify { us_per_op_catchup: f64, us_per_op_apply: f64 },
    /// An editing trace replayed through a replica of an engine document,
    /// next to the same edits on the bare engine document
    /// (`walrus bench trace`).
    Trace {
        engine: &'static str,
        trace: String,
        txns: usize,
        walrus_s: f64,
        engine_s: f64,
        log_bytes: u64,
        engine_history_bytes: u64,
        catchup_bytes: u64,
        engine_update_bytes: u64,
        end_content_ok: bool,
    },
}

/// Where the figures go as JSON lines: the file `WALRUS_BENCH_JSON` names,
/// or nowhere.
pub(crate) struct JsonLines(Option<File>);

impl JsonLines {
    /// Opens the file named by `WALRUS_BENCH_JSON` for appending (creating
    /// it), if the variable is set and not empty.
    pub(crate) fn from_env() -> Result<JsonLines> {
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
    pub(crate) fn emit(&mut self, line: Line) -> Result<()> {
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
    /// The `walrus` binary the catch-up runs as `walrus node`. `WALRUS_BIN`
    /// overrides it; without either, this executable if it is `walrus`,
    /// else a `walrus` next to it (or one directory up, from cargo's
    /// `target/<profile>/deps`).
    pub walrus: Option<PathBuf>,
}

impl Default for SyncBenchArgs {
    /// The defaults of `walrus bench sync`.
    fn default() -> Self {
        SyncBenchArgs { ops: 100_000, catchup: 50_000, nodes: vec![3, 10], walrus: None }
    }
}

/// Distinct keys of a workload: write `i` puts key `i % KEYS`, so 50,000
/// writes overwrite each key ten times (values are all distinct).
pub const KEYS: usize = 5_000;

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

    /// The key of write `i`: one of [`KEYS`].
    pub fn key(self, i: usize) -> String {
        let k = i % KEYS;
        match self {
            Workload::Sequential => format!("item-{k:08}"),
            Workload::Random => letters(k as u64 * 2, 13),
        }
    }

    /// A key of its own for write `i`: concurrent writers never touch
    /// one another's keys.
    pub fn unique_key(self, i: usize) -> String {
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
                let env = node.update(DOC, move |d, a| d.put_op(a, &w.unique_key(i), &w.value(i))).await?;
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

/// The `walrus` binary to run as `walrus node`: `WALRUS_BIN`, else
/// `given`, else this executable if it is `walrus`, else a `walrus` next
/// to it or one directory up (`target/<profile>/deps/…` under cargo).
fn walrus_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV).filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        return match bin.is_file() {
            true => Ok(bin),
            false => Err(format!("{BIN_ENV}={} is not a file", bin.display()).into()),
        };
    }
    if let Some(bin) = given {
        return match bin.is_file() {
            true => Ok(bin.to_path_buf()),
            false => Err(format!(
                "no walrus binary at {} (build it with `cargo build --release -p walrus-cli`, or set {BIN_ENV})",
                bin.display()
            )
            .into()),
        };
    }
    let exe = std::env::current_exe()?;
    let name = format!("walrus{}", std::env::consts::EXE_SUFFIX);
    if exe.file_name().is_some_and(|n| *n == *name) {
        return Ok(exe);
    }
    let dir = exe.parent().ok_or("this executable has no directory")?;
    let candidates: Vec<PathBuf> = [Some(dir), dir.parent()].into_iter().flatten().map(|d| d.join(&name)).collect();
    candidates.iter().find(|c| c.is_file()).cloned().ok_or_else(|| {
        format!(
            "the catch-up runs two `walrus node` processes, but there is no walrus binary at {} (build it with \
             `cargo build --release -p walrus-cli`, or set {BIN_ENV} to its path)",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
        )
        .into()
    })
}

/// The options `walrus node` opens its document's replica with.
fn node_replica_options() -> ReplicaOptions {
    let d = ReplicaOptions::default();
    ReplicaOptions { wal: d.wal.clone().segment_size(crate::SEGMENT_SIZE), document: Some(DOC.into()), ..d }
}

/// A `walrus node` child process, killed (and waited for) when dropped, on
/// every path. Its standard output's JSON lines arrive on `events`.
struct NodeProcess {
    name: &'static str,
    child: Child,
    /// Held open: the node quits at the end of its input.
    stdin: ChildStdin,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    /// Where its standard error goes, shown when it fails.
    stderr: PathBuf,
}

impl NodeProcess {
    /// Starts `walrus node` on `data` for the bench's document, listening
    /// on a free loopback port, without mDNS.
    fn spawn(bin: &Path, name: &'static str, data: &Path, extra: &[&str]) -> Result<NodeProcess> {
        let stderr = data.with_extension("stderr");
        let mut child = Command::new(bin)
            .arg("node")
            .arg("--data")
            .arg(data)
            .args(["--doc", DOC, "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr)?)
            .spawn()
            .map_err(|e| format!("cannot run {} node: {e}", bin.display()))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("walrus node: no pipes to its standard input and output".into());
            }
        };
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        // Reads every line, whether or not anyone still listens: a node
        // whose output is not read stops.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Ok(NodeProcess { name, child, stdin, events, stderr })
    }

    /// Sends one command line.
    fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.failure(&format!("cannot send {command:?}: {e}")).into())
    }

    /// `what` went wrong with this node: the message, its exit status if it
    /// ended, and the end of its standard error.
    fn failure(&mut self, what: &str) -> String {
        let mut msg = format!("walrus node {}: {what}", self.name);
        if let Ok(Some(status)) = self.child.try_wait() {
            msg += &format!(" (it exited: {status})");
        }
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        if !tail.is_empty() {
            msg += "; its standard error ends with:\n";
            msg += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        }
        msg
    }

    /// The next event, or an error if the node stopped, reported a failure
    /// or `deadline` passed.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Value> {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => Err(self.failure(&format!("the catch-up did not finish within {TIMEOUT:?}")).into()),
            Ok(None) => Err(self.failure("its output ended").into()),
            Ok(Some(v)) if v["event"] == "error" || v["event"] == "doc_failed" => {
                Err(self.failure(&format!("reported {v}")).into())
            }
            Ok(Some(v)) => Ok(v),
        }
    }

    /// The loopback TCP address it listens on, and its peer id.
    async fn listening(&mut self, deadline: tokio::time::Instant) -> Result<(SocketAddr, String)> {
        loop {
            let v = self.next(deadline).await?;
            if v["event"] != "listening" {
                continue;
            }
            let addr = v["addr"].as_str().unwrap_or_default();
            // /ip4/127.0.0.1/tcp/PORT/p2p/PEER
            let parts: Vec<&str> = addr.split('/').collect();
            if let ["", "ip4", ip, "tcp", port, "p2p", peer] = parts[..] {
                return Ok((format!("{ip}:{port}").parse()?, peer.to_string()));
            }
        }
    }
}

/// The operations a `dump` event's clock counts.
fn dump_ops(v: &Value) -> Result<u64> {
    let clock = v["clock"].as_object().ok_or_else(|| format!("a dump without a clock: {v}"))?;
    Ok(clock.values().filter_map(Value::as_u64).sum())
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on loopback to one address, counting every byte it
/// forwards in either direction. Dropping it closes its connections.
struct Relay {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            // Aborting the relay drops the set, which aborts its connections.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                conns.spawn(Relay::forward(inbound, to, Arc::clone(&counted)));
            }
        });
        Ok(Relay { addr, bytes, task })
    }

    /// Bytes forwarded so far, both ways.
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    async fn forward(inbound: TcpStream, to: SocketAddr, bytes: Arc<AtomicU64>) {
        let Ok(outbound) = TcpStream::connect(to).await else { return };
        // As libp2p's own sockets: no delay added to small frames.
        let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
        let (in_r, in_w) = inbound.into_split();
        let (out_r, out_w) = outbound.into_split();
        let _ = tokio::join!(Relay::pump(in_r, out_w, &bytes), Relay::pump(out_r, in_w, &bytes));
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        bytes: &AtomicU64,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            to.write_all(&buf[..n]).await?;
            bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until node `b` has `ops` operations: the `applied` counts of its
/// `synced` events add up to them, or, once an event may have been missed
/// (`lagged`) or a snapshot merged, its clock in a `dump` does. Fails if
/// either node stops or reports a failure.
async fn await_applied(
    a: &mut NodeProcess,
    b: &mut NodeProcess,
    ops: u64,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let (mut applied, mut counting) = (0u64, true);
    // A `dump` is outstanding; something happened since the last one was sent.
    let (mut dumping, mut changed) = (false, false);
    loop {
        let v = tokio::select! {
            v = b.next(deadline) => v?,
            // A's events matter only when they report a failure.
            v = a.next(deadline) => { v?; continue; }
        };
        match v["event"].as_str() {
            Some("synced") => {
                applied += v["applied"].as_u64().unwrap_or(0);
                if v["snapshot"] == true {
                    counting = false;
                }
            }
            Some("lagged") => counting = false,
            Some("dump") => {
                dumping = false;
                if dump_ops(&v)? >= ops {
                    return Ok(());
                }
            }
            _ => {}
        }
        if counting && applied >= ops {
            return Ok(());
        }
        changed |= v["event"] != "dump";
        if !counting && !dumping && changed {
            b.send("dump")?;
            (dumping, changed) = (true, false);
        }
    }
}

/// A new `walrus node` catching up on `ops` puts from another, as two
/// processes: the time from starting it until it has them all, every byte
/// between the two (counted by a relay), and the encoded ops' bytes.
fn catchup_network(rt: &tokio::runtime::Runtime, bin: &Path, ops: usize, w: Workload) -> Result<(Duration, u64, u64)> {
    let tmp = tempfile::tempdir()?;
    let (a_data, b_data) = (tmp.path().join("a"), tmp.path().join("b"));
    // A's replica, written directly where `walrus node` keeps it.
    let mut op_bytes = 0u64;
    {
        let dir = NodeConfig::new(&a_data).doc_dir(DOC);
        let mut a: Replica<KvDoc> = Replica::open(&dir, node_replica_options())?;
        let makers = (0..ops).map(|i| move |d: &KvDoc, act| d.put_op(act, &w.key(i), &w.value(i)));
        for env in a.update_many(makers) {
            op_bytes += env?.op_bytes().len() as u64;
        }
    }
    // The processes end (inside) before their directories go (`tmp`, after).
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut a = NodeProcess::spawn(bin, "A", &a_data, &[])?;
        let (a_addr, a_peer) = a.listening(deadline).await?;
        let relay = Relay::start(a_addr).await?;
        let via_relay = format!("/ip4/127.0.0.1/tcp/{}/p2p/{a_peer}", relay.addr.port());
        let t0 = Instant::now();
        let mut b = NodeProcess::spawn(bin, "B", &b_data, &["--peer", &via_relay])?;
        await_applied(&mut a, &mut b, ops as u64, deadline).await?;
        let (took, wire) = (t0.elapsed(), relay.bytes());
        // B's own clock confirms the count, after the measurement.
        b.send("dump")?;
        let held = loop {
            let v = b.next(deadline).await?;
            if v["event"] == "dump" {
                break dump_ops(&v)?;
            }
        };
        if held != ops as u64 {
            return Err(format!("walrus node B holds {held} ops after catching up on {ops}").into());
        }
        Ok((took, wire, op_bytes))
    })
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
    // Before the first section, so that a missing binary fails at once.
    let bin = walrus_binary(args.walrus.as_deref())?;
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
    println!("\nspread: ops written concurrently on every node (each to a key of its own) until all have all");
    for &n in &args.nodes {
        if n < 2 {
            return Err("--nodes needs at least 2 nodes per run".into());
        }
        rt.block_on(spread(n, args.ops, &mut out))?;
    }
    for w in [Workload::Sequential, Workload::Random] {
        catchup(&rt, &bin, args.catchup, w, compare, &mut out)?;
    }
    Ok(())
}

/// The bytes of the log segment files of the replica in `dir`.
pub(crate) fn segment_bytes(dir: &Path) -> Result<u64> {
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

/// Passes of the `verify` section: the median is reported, so one pass
/// slowed by the machine's other work does not decide the figure.
const VERIFY_PASSES: usize = 5;

/// What receiving a catch-up costs per op: `from`'s operations in pages as
/// a catch-up answers them (`Replica::ops_since`, 1 MiB), each handed to
/// `Replica::receive` of a fresh replica, whose time (signature checks,
/// logging, applying) is divided by the ops; next to applying the same ops
/// to a bare `KvDoc`. The receiving replica does not sync its log
/// (`SyncPolicy::None`), so the figure is the work on the ops rather than
/// the disk's sync latency. Each figure is the median of
/// [`VERIFY_PASSES`] passes.
fn verify(from: &Replica<KvDoc>, out: &mut JsonLines) -> Result<()> {
    let (mut receiving, mut applying) = (Vec::new(), Vec::new());
    let (mut n, mut pages) = (1, 0);
    for _ in 0..VERIFY_PASSES {
        let (r, a, ops, p) = verify_pass(from)?;
        receiving.push(r);
        applying.push(a);
        (n, pages) = (ops.max(1), p);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let (catchup_us, apply_us) = (us(median(receiving)), us(median(applying)));
    println!("\nverify: a fresh replica receives {n} ops in {pages} catch-up page(s) (median of {VERIFY_PASSES})");
    println!(
        "  receive (verify, log, apply) {catchup_us:.2} us/op vs applying to a KvDoc {apply_us:.2} us/op; \
         {:.2}x the target (<= {:.0} us/op)",
        catchup_us / target::VERIFY_US,
        target::VERIFY_US
    );
    out.emit(Line::Verify { us_per_op_catchup: catchup_us, us_per_op_apply: apply_us })?;
    Ok(())
}

/// One pass of [`verify`]: the time receiving, the time applying to a bare
/// document, the ops and the pages.
fn verify_pass(from: &Replica<KvDoc>) -> Result<(Duration, Duration, usize, usize)> {
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
    let n = applied.len();
    let mut doc = KvDoc::default();
    let t0 = Instant::now();
    for op in applied {
        doc.apply(op);
    }
    Ok((receiving, t0.elapsed(), n, pages))
}

fn catchup(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    ops: usize,
    w: Workload,
    compare: Option<Comparison>,
    out: &mut JsonLines,
) -> Result<()> {
    println!("\ncatch-up: a new node pulls {ops} ops from one peer ({})", w.name());
    let (took, wire, op_bytes) = catchup_network(rt, bin, ops, w)?;
    println!(
        "  two walrus node processes over TCP: {:.2}s, {:.2} MB on the wire both ways (noise, yamux and all) \
         vs {:.2} MB of ops = {:.2}x (target <= 1.3x)",
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
            println!(
                "  two walrus node processes' wire bytes / automerge's in-process sync bytes: {:.2}x (target < 1.0x)",
                wire as f64 / bytes_a as f64
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
