//! What the network tests share: node configuration for fast tests on
//! 127.0.0.1, an event log over every node of a test, and a scriptable
//! peer built directly on libp2p ([`client`]).
//!
//! Each test crate uses part of it.
#![allow(dead_code)]

pub mod client;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use walrus::net::{Multiaddr, Node, NodeConfig, NodeEvent, NodeHandle, PeerId};
use walrus::replica::{KvDoc, KvDocExt, KvOp, OpEnvelope};

pub const DOC: &str = "d";
/// Hard limit on each test, whatever it waits for.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Limit on each individual wait inside a test.
pub const WAIT: Duration = Duration::from_secs(30);
pub const SYNC_INTERVAL: Duration = Duration::from_millis(300);

pub type Ev = NodeEvent<KvOp>;

/// Runs a test body with an overall timeout.
pub async fn within<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("test did not finish within {TEST_TIMEOUT:?}");
    }
}

/// A node serving [`DOC`] from `dir`, dialing `peers`, with short timers.
pub fn config(dir: &Path, peers: &[Multiaddr]) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir);
    cfg.docs = vec![DOC.into()];
    cfg.peers = peers.to_vec();
    cfg.sync_interval = SYNC_INTERVAL;
    cfg.heartbeat = Duration::from_millis(200);
    cfg.redial_min = Duration::from_millis(100);
    cfg.redial_max = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(10);
    cfg
}

/// Every event of every node of a test, tagged with the node's index.
///
/// It holds the nodes' broadcast receivers itself (no forwarding task), so
/// [`drain`](Self::drain) right after a node answered a call (`with`,
/// `peers`, `block`, …) is guaranteed to log every event the node emitted
/// before answering.
pub struct Events {
    rxs: Vec<(usize, broadcast::Receiver<Ev>)>,
    pub log: Vec<(usize, Ev)>,
    /// Events lost by lagging receivers (they keep going).
    pub lagged: u64,
}

impl Events {
    pub fn new() -> Events {
        Events { rxs: Vec::new(), log: Vec::new(), lagged: 0 }
    }

    pub fn attach(&mut self, idx: usize, rx: broadcast::Receiver<Ev>) {
        self.rxs.push((idx, rx));
    }

    /// Logs every event already queued; returns how many.
    pub fn drain(&mut self) -> usize {
        let before = self.log.len();
        let mut closed = Vec::new();
        for (k, (idx, rx)) in self.rxs.iter_mut().enumerate() {
            loop {
                match rx.try_recv() {
                    Ok(ev) => self.log.push((*idx, ev)),
                    Err(TryRecvError::Lagged(n)) => {
                        eprintln!("node {idx}: {n} events lost (lagged)");
                        self.lagged += n;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        closed.push(k);
                        break;
                    }
                }
            }
        }
        for k in closed.into_iter().rev() {
            self.rxs.remove(k);
        }
        self.log.len() - before
    }

    /// Waits for at least one new event, then logs everything queued.
    /// False if `deadline` passed first.
    pub async fn wait(&mut self, deadline: Instant) -> bool {
        loop {
            if self.drain() > 0 {
                return true;
            }
            if self.rxs.is_empty() {
                tokio::time::sleep_until(deadline).await;
                return false;
            }
            let next = {
                let recvs = self.rxs.iter_mut().map(|(_, rx)| Box::pin(rx.recv()));
                let next = tokio::time::timeout_at(deadline, futures::future::select_all(recvs)).await;
                // Drop the other receives: they borrow the receivers.
                next.map(|(result, k, _)| (result, k))
            };
            match next {
                Err(_) => return false,
                Ok((Ok(ev), k)) => {
                    let idx = self.rxs[k].0;
                    self.log.push((idx, ev));
                    self.drain();
                    return true;
                }
                // Lost or closed: `drain` counts or removes it next time round.
                Ok((Err(RecvError::Lagged(n)), k)) => {
                    eprintln!("node {}: {n} events lost (lagged)", self.rxs[k].0);
                    self.lagged += n;
                }
                Ok((Err(RecvError::Closed), k)) => {
                    self.rxs.remove(k);
                }
            }
        }
    }

    /// Waits until `done` holds for the log (panics after [`WAIT`]);
    /// returns the log's length then.
    pub async fn wait_for(&mut self, what: &str, mut done: impl FnMut(&[(usize, Ev)]) -> bool) -> usize {
        let deadline = Instant::now() + WAIT;
        self.drain();
        while !done(&self.log) {
            if !self.wait(deadline).await {
                panic!("timed out waiting for {what}; events: {:#?}", self.log);
            }
        }
        self.log.len()
    }

    /// Waits for an event of node `idx`, logged at `from` or later, that
    /// satisfies `pred`; returns its position in the log.
    pub async fn wait_event(&mut self, what: &str, from: usize, idx: usize, pred: impl Fn(&Ev) -> bool) -> usize {
        self.wait_for(what, |log| log[from..].iter().any(|(i, ev)| *i == idx && pred(ev))).await;
        from + self.log[from..].iter().position(|(i, ev)| *i == idx && pred(ev)).expect("found")
    }

    /// Whether node `idx` logged an event satisfying `pred` at `from` or later.
    pub fn any(&self, from: usize, idx: usize, pred: impl Fn(&Ev) -> bool) -> bool {
        self.log[from..].iter().any(|(i, ev)| *i == idx && pred(ev))
    }
}

/// Starts a node, its events attached as node `idx`; returns it and its address.
pub async fn start(cfg: NodeConfig, events: &mut Events, idx: usize) -> (NodeHandle<KvDoc>, Multiaddr) {
    let (node, rx) = Node::<KvDoc>::start(cfg).await.expect("node starts");
    events.attach(idx, rx);
    let addr = node.listen_addrs().await.expect("listen addresses").into_iter().next().expect("one listen address");
    assert!(addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
    (node, addr)
}

pub async fn values(node: &NodeHandle<KvDoc>, key: &'static str) -> Vec<String> {
    node.with(DOC, move |r| r.doc().values_of(key)).await.expect("node answers")
}

pub async fn put(node: &NodeHandle<KvDoc>, key: &'static str, value: &'static str) -> OpEnvelope<KvOp> {
    node.update(DOC, move |d, a| d.put_op(a, key, value)).await.expect("put acknowledged")
}

pub async fn del(node: &NodeHandle<KvDoc>, key: &'static str) -> OpEnvelope<KvOp> {
    node.update(DOC, move |d, _| d.del_op(key)).await.expect("delete acknowledged")
}

/// Waits until `node` holds exactly `value` under `key` (it replicated from a peer).
pub async fn wait_value(node: &NodeHandle<KvDoc>, events: &mut Events, key: &'static str, value: &'static str) {
    let deadline = Instant::now() + WAIT;
    while values(node, key).await != vec![value.to_string()] {
        if !events.wait(deadline).await {
            panic!("{key}={value} did not replicate within {WAIT:?}; events: {:#?}", events.log);
        }
    }
}

/// The gossip topic of [`DOC`].
pub fn topic() -> libp2p::gossipsub::IdentTopic {
    libp2p::gossipsub::IdentTopic::new(format!("{}{DOC}", walrus::net::TOPIC_PREFIX))
}

pub fn connected(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerConnected { peer: p, .. } if *p == peer)
}

pub fn disconnected(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerDisconnected { peer: p } if *p == peer)
}

pub fn banned(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerBanned { peer: p, .. } if *p == peer)
}

/// A fault blamed on `peer`, or its ban.
pub fn faulted(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerFault { peer: p, .. } | NodeEvent::PeerBanned { peer: p, .. } if *p == peer)
}
