//! The network demo: three nodes in this process on loopback TCP, each
//! with its own temporary data directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use walrus::net::{Multiaddr, Node, NodeConfig, NodeEvent};
use walrus::replica::{Document, KvDoc, ReplicaOptions, VersionVector};

use super::{Checks, Result};

const DOC: &str = "demo";
const NAMES: [&str; 3] = ["A", "B", "C"];
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

struct Demo {
    started: Instant,
    checks: Checks,
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<Node<KvDoc>>>,
    addrs: Vec<Multiaddr>,
    /// Something happened on some node: worth re-checking convergence.
    poke_tx: mpsc::UnboundedSender<()>,
    poke_rx: mpsc::UnboundedReceiver<()>,
    /// Snapshots merged, over all nodes.
    snapshots: Arc<AtomicUsize>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Demo {
    fn say(&self, what: impl std::fmt::Display) {
        println!("  [{:6.2}s] {what}", secs(self.started.elapsed()));
    }

    fn node(&self, i: usize) -> Result<&Node<KvDoc>> {
        self.nodes[i].as_ref().ok_or_else(|| format!("node {} is down", NAMES[i]).into())
    }

    fn config(&self, i: usize) -> NodeConfig {
        let mut cfg = NodeConfig::new(&self.dirs[i]);
        cfg.docs = vec![DOC.into()];
        // Listen where this node listened before, so peers' re-dials find it.
        if let Some(addr) = self.addrs.get(i) {
            let mut listen = addr.clone();
            listen.pop(); // the /p2p/ part
            cfg.listen = vec![listen];
        }
        // Each node stays connected to the ones started before it.
        cfg.peers = self.addrs.iter().take(i).cloned().collect();
        cfg.sync_interval = Duration::from_millis(500);
        cfg.heartbeat = Duration::from_millis(200);
        cfg.redial_max = Duration::from_secs(1);
        let defaults = ReplicaOptions::default();
        // Small segments, so that a checkpoint truncates most of the log.
        cfg.replica = ReplicaOptions { wal: defaults.wal.clone().segment_size(64 << 10), ..defaults };
        cfg
    }

    async fn start(&mut self, i: usize) -> Result<()> {
        let (node, mut events) = Node::<KvDoc>::start(self.config(i)).await?;
        let addr = node.listen_addrs().await?.into_iter().next().ok_or("node has no listening address")?;
        self.say(format!("node {} up at {addr}", NAMES[i]));
        if self.addrs.len() <= i {
            self.addrs.push(addr);
        }
        let poke = self.poke_tx.clone();
        let snapshots = self.snapshots.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Synced { snapshot: true, .. }) => {
                        snapshots.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(NodeEvent::PeerFault { peer, reason, .. }) => {
                        println!("    peer {peer} sent something invalid: {reason}");
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
                if poke.send(()).is_err() {
                    break;
                }
            }
        });
        self.nodes[i] = Some(node);
        Ok(())
    }

    async fn state(&self, i: usize) -> Result<(VersionVector, Vec<u8>)> {
        Ok(self.node(i)?.with(DOC, |r| (r.clock().clone(), r.doc().canonical())).await?)
    }

    /// Waits (on events, not timers) until `which` nodes hold identical state.
    async fn converge(&mut self, which: &[usize]) -> Result<(Duration, u64)> {
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let mut states = Vec::new();
            for &i in which {
                states.push(self.state(i).await?);
            }
            if states.iter().all(|s| s == &states[0]) {
                return Ok((t0.elapsed(), states[0].0.total()));
            }
            match tokio::time::timeout_at(deadline, self.poke_rx.recv()).await {
                Ok(Some(())) => {}
                _ => return Err(format!("no convergence within {CONVERGE_TIMEOUT:?}").into()),
            }
        }
    }

    async fn check_converged(&mut self, which: &[usize], what: &str) -> Result<()> {
        match self.converge(which).await {
            Ok((took, ops)) => {
                let names: Vec<&str> = which.iter().map(|&i| NAMES[i]).collect();
                self.say(format!("converged in {:.2}s", secs(took)));
                self.checks.check(true, &format!("{what}: {} identical ({ops} ops)", names.join(", ")));
            }
            Err(e) => self.checks.check(false, &format!("{what}: {e}")),
        }
        Ok(())
    }

    async fn put(&self, i: usize, key: &str, value: &str) -> Result<u64> {
        let (k, v) = (key.to_string(), value.to_string());
        Ok(self.node(i)?.update(DOC, move |d, a| d.put_op(a, &k, &v)).await?.seq())
    }

    async fn values(&self, i: usize, key: &str) -> Result<Vec<String>> {
        let k = key.to_string();
        Ok(self.node(i)?.with(DOC, move |r| r.doc().values_of(&k)).await?)
    }

    /// `per_node` puts on each of `which`, all concurrently. Returns how many
    /// were acknowledged (each durable before its acknowledgement).
    async fn write_burst(&self, which: &[usize], per_node: usize, tag: &str) -> Result<usize> {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for &i in which {
            let node = self.node(i)?.clone();
            let tag = tag.to_string();
            tasks.push(tokio::spawn(async move {
                let mut acked = 0;
                for n in 0..per_node {
                    let key = format!("{tag}/{}/{n:04}", NAMES[i]);
                    let value = format!("written on {} ({n})", NAMES[i]);
                    if node.update(DOC, move |d, a| d.put_op(a, &key, &value)).await.is_ok() {
                        acked += 1;
                    }
                }
                acked
            }));
        }
        let mut acked = 0;
        for t in tasks {
            acked += t.await?;
        }
        let took = t0.elapsed();
        self.say(format!(
            "{acked} puts acknowledged on {} nodes in {:.2}s ({:.0} durable ops/s)",
            which.len(),
            secs(took),
            acked as f64 / secs(took).max(1e-9)
        ));
        Ok(acked)
    }

    async fn partition(&self, lonely: usize, block: bool) -> Result<()> {
        for other in 0..3 {
            if other == lonely {
                continue;
            }
            let (a, b) = (self.node(lonely)?, self.node(other)?);
            if block {
                a.block(b.peer_id()).await?;
                b.block(a.peer_id()).await?;
            } else {
                a.unblock(b.peer_id()).await?;
                b.unblock(a.peer_id()).await?;
            }
        }
        Ok(())
    }
}

pub fn run() -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(demo())
}

async fn demo() -> Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let (poke_tx, poke_rx) = mpsc::unbounded_channel();
    let mut d = Demo {
        started: Instant::now(),
        checks: Checks::default(),
        dirs: NAMES.iter().map(|n| tmp.path().join(format!("node-{n}"))).collect(),
        nodes: vec![None, None, None],
        addrs: Vec::new(),
        poke_tx,
        poke_rx,
        snapshots: Arc::new(AtomicUsize::new(0)),
    };
    println!("walrus demo: three replicas of one key-value document, one process, loopback TCP");
    println!("  data directories under {}\n", tmp.path().display());
    for i in 0..3 {
        d.start(i).await?;
    }

    println!("\n== 1. concurrent writes on all three nodes ==");
    let acked = d.write_burst(&[0, 1, 2], 200, "burst").await?;
    d.checks.check(acked == 600, "all 600 puts acknowledged");
    d.check_converged(&[0, 1, 2], "after concurrent writes").await?;

    println!("\n== 2. partition: C is cut off from A and B ==");
    d.partition(2, true).await?;
    d.say("C blocked (connections closed and refused both ways)");
    d.put(0, "title", "Shopping (edited on A)").await?;
    d.put(2, "title", "Groceries (edited on C)").await?;
    d.write_burst(&[0, 1], 50, "split-ab").await?;
    d.write_burst(&[2], 50, "split-c").await?;
    let c_sees_a = d.values(2, "split-ab/A/0000").await?;
    d.checks.check(c_sees_a.is_empty(), "C did not see A's writes during the partition");
    d.check_converged(&[0, 1], "A and B meanwhile").await?;
    d.partition(2, false).await?;
    d.say("partition healed");
    d.check_converged(&[0, 1, 2], "after healing").await?;
    let title = d.values(1, "title").await?;
    println!("    concurrent edits of \"title\" are both kept, on every node: {title:?}");
    d.checks.check(title.len() == 2, "the concurrent edits of \"title\" are both visible (multi-value register)");
    d.put(1, "title", "Shopping list").await?;
    d.say("B writes \"title\" once more, after seeing both: that write supersedes them");
    d.check_converged(&[0, 1, 2], "after resolving").await?;
    let title = d.values(0, "title").await?;
    d.checks.check(title == ["Shopping list"], &format!("\"title\" resolved everywhere to {title:?}"));

    println!("\n== 3. crash: B stops abruptly while writing, then restarts ==");
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let writer = {
        let node = d.node(1)?.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..100_000u32 {
                let key = format!("crash/B/{n:05}");
                match node.update(DOC, move |doc, a| doc.put_op(a, &key, "before the crash")).await {
                    Ok(_) => acked.push(n),
                    Err(_) => break,
                }
                let _ = progress_tx.send(acked.len());
            }
            acked
        })
    };
    // Let some writes land, then pull the plug mid-stream.
    while let Some(n) = progress.recv().await {
        if n >= 200 {
            break;
        }
    }
    if let Some(b) = d.nodes[1].take() {
        b.abort();
    }
    let acked = writer.await?;
    d.say(format!("B crashed with {} writes acknowledged", acked.len()));
    d.write_burst(&[0, 2], 50, "while-b-down").await?;
    // Its document thread releases the log once its queue drains.
    let mut tries = 0;
    loop {
        match d.start(1).await {
            Ok(()) => break,
            Err(e) if tries < 100 => {
                tries += 1;
                if tries == 1 {
                    d.say(format!("waiting for B's old log to be released ({e})"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let mut lost = 0;
    for n in &acked {
        if d.values(1, &format!("crash/B/{n:05}")).await?.is_empty() {
            lost += 1;
        }
    }
    d.checks.check(lost == 0, &format!("B kept all {} writes it acknowledged before the crash", acked.len()));
    d.check_converged(&[0, 1, 2], "after B's restart").await?;

    println!("\n== 4. lost disk: C's data directory is wiped ==");
    for i in [0, 1] {
        // Two checkpoint generations are kept and the log is truncated only
        // before the older one: the second makes the first the older.
        d.node(i)?.with(DOC, |r| r.checkpoint().and_then(|()| r.checkpoint())).await??;
    }
    d.say("A and B checkpointed and truncated their logs (a newcomer now needs a snapshot)");
    if let Some(c) = d.nodes[2].take() {
        c.shutdown().await?;
    }
    std::fs::remove_dir_all(&d.dirs[2])?;
    d.say("C stopped and its directory deleted; restarting it empty (new identity)");
    let snapshots_before = d.snapshots.load(Ordering::SeqCst);
    d.start(2).await?;
    d.check_converged(&[0, 1, 2], "C rebuilt from its peers").await?;
    let expected = d.state(0).await?.0.total();
    let rebuilt = d.state(2).await?.0.total();
    d.checks.check(rebuilt == expected && expected > 0, &format!("C holds all {expected} ops again"));
    let via_snapshot = d.snapshots.load(Ordering::SeqCst) > snapshots_before;
    d.checks.check(via_snapshot, "C caught up through a snapshot (the ops it needed were truncated)");

    println!("\n== shutting down ==");
    for i in 0..3 {
        if let Some(n) = d.nodes[i].take() {
            n.shutdown().await?;
        }
    }
    d.say("all nodes shut down cleanly");
    Ok(d.checks.finish(d.started))
}
