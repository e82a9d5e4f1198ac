//! The task that drives the libp2p swarm: gossip in and out, anti-entropy
//! requests and answers, connections and re-dials. It never touches a
//! replica; document workers do.
//!
//! The driver owns the parts and runs the event loop; `events` handles what
//! arrives (swarm events, peers' messages, workers' replies) and `faults`
//! what is done about a misbehaving peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use super::admission::Admission;
use super::behaviour::{check_dialable, doc_of_topic, topic_of, Behaviour};
use super::config::{check_allowed, NodeConfig};
use super::dialer::Dialer;
use super::doc_workers::{close_worker, DocWorkers};
use super::error::NodeError;
use super::event::{NodeEvent, PeerInfo};
use super::lock::DirLock;
use super::node::{Control, DocSenders};
use super::pulls::Pulls;
use super::queued::{QueueBudget, MAX_QUEUED_GOSSIP};
use super::worker::{Blocked, DocCmd, FromDoc};
use crate::replica::Document;
use crate::sync::Schedule;

mod events;
mod faults;

/// How often state about idle peers is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The swarm's task: owns the swarm, the document workers, the dialer,
/// the sync requests in flight and the peers' admission.
pub(crate) struct Driver<D: Document> {
    swarm: Swarm<Behaviour>,
    cfg: NodeConfig,
    /// The open documents' workers.
    docs: DocWorkers<D>,
    /// Bytes of gossip waiting in the documents' queues.
    queued_gossip: QueueBudget,
    /// Peers blocked or banned, as the document workers see them.
    blocked: Blocked,
    events: broadcast::Sender<NodeEvent<D::Operation>>,
    schedule: Schedule<PeerId>,
    /// Configured peers and their re-dials.
    dialer: Dialer,
    /// Sync requests in flight, both ways, and ours held back.
    pulls: Pulls<D>,
    listen_addrs: Vec<Multiaddr>,
    /// Remote address of every open connection.
    connections: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// Request limits, fault scores and bans of peers.
    admission: Admission,
    last_prune: Instant,
}

impl<D: Document> Driver<D> {
    /// A driver for `swarm`; it runs once [`Driver::run`] is spawned.
    pub fn new(
        swarm: Swarm<Behaviour>,
        cfg: NodeConfig,
        docs: DocSenders<D>,
        events: broadcast::Sender<NodeEvent<D::Operation>>,
        control_tx: mpsc::UnboundedSender<Control<D>>,
        from_docs_tx: mpsc::UnboundedSender<FromDoc>,
        lock: DirLock,
    ) -> Driver<D> {
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            // Random per process (std's hasher keys), so peers' rounds drift apart.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(&swarm.local_peer_id().to_bytes());
            h.finish()
        };
        let blocked = Blocked::default();
        let docs = DocWorkers::new(
            cfg.clone(),
            docs,
            events.clone(),
            control_tx.downgrade(),
            from_docs_tx,
            Arc::clone(&blocked),
            lock,
        );
        Driver {
            swarm,
            schedule: Schedule::new(cfg.sync_interval, seed),
            docs,
            queued_gossip: QueueBudget::new(MAX_QUEUED_GOSSIP),
            blocked,
            events,
            dialer: Dialer::new(cfg.redial_min, cfg.redial_max),
            pulls: Pulls::new(),
            listen_addrs: Vec::new(),
            connections: HashMap::new(),
            admission: Admission::new(&cfg.admission()),
            last_prune: Instant::now(),
            cfg,
        }
    }

    fn emit(&self, ev: NodeEvent<D::Operation>) {
        let _ = self.events.send(ev);
    }

    fn doc_tx(&self, doc: &str) -> Option<mpsc::Sender<DocCmd<D>>> {
        self.docs.tx(doc)
    }

    /// Drives the swarm until each listener reported its first address.
    pub async fn await_listeners(&mut self, ids: &[libp2p::core::transport::ListenerId]) -> Result<(), NodeError> {
        let mut waiting: std::collections::HashSet<_> = ids.iter().copied().collect();
        while !waiting.is_empty() {
            match self.swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    waiting.remove(&listener_id);
                    self.on_swarm(SwarmEvent::NewListenAddr { listener_id, address });
                }
                SwarmEvent::ListenerClosed { listener_id, reason, addresses } if waiting.contains(&listener_id) => {
                    let why = reason.err().map_or_else(|| "closed".to_string(), |e| e.to_string());
                    return Err(NodeError::Transport(format!("listener on {addresses:?} failed: {why}")));
                }
                SwarmEvent::ListenerError { listener_id, error } if waiting.contains(&listener_id) => {
                    return Err(NodeError::Transport(format!("listener failed: {error}")));
                }
                other => self.on_swarm(other),
            }
        }
        Ok(())
    }

    /// Adds a configured peer (deduplicated) and dials it now.
    pub fn add_configured(&mut self, addr: Multiaddr) {
        self.dialer.add(&mut self.swarm, addr);
    }

    fn next_wakeup(&self) -> Instant {
        let mut t = Instant::now() + Duration::from_secs(1);
        if let Some(d) = self.schedule.next_due() {
            t = t.min(d);
        }
        if let Some(d) = self.dialer.next_due() {
            t = t.min(d);
        }
        if let Some(d) = self.pulls.deferred_ready_at(&self.admission, Instant::now()) {
            t = t.min(d);
        }
        if let Some(end) = self.admission.next_expiry() {
            t = t.min(end);
        }
        t
    }

    /// Sends every due pull to its document worker.
    fn pull_due(&mut self) {
        let now = Instant::now();
        for (peer, doc) in self.schedule.due(now) {
            let sent = self.doc_tx(&doc).is_some_and(|tx| tx.try_send(DocCmd::Pull { peer }).is_ok());
            if !sent {
                self.schedule.failed(&peer, &doc, now);
            }
        }
    }

    /// The event loop: until a shutdown (or every handle is dropped), then
    /// closes every document.
    pub async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control<D>>,
        mut from_docs: mpsc::UnboundedReceiver<FromDoc>,
    ) {
        let reply = loop {
            let wake = tokio::time::Instant::from_std(self.next_wakeup());
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                ctl = control.recv() => match ctl {
                    Some(Control::Shutdown { reply }) => break Some(reply),
                    Some(Control::Abort) => {
                        // Like a crash of the network side: no goodbye to
                        // peers, documents left to close on their own.
                        self.docs.clear();
                        info!("node aborted");
                        return;
                    }
                    Some(c) => self.on_control(c),
                    // Every handle dropped: shut down cleanly.
                    None => break None,
                },
                Some(msg) = from_docs.recv() => self.on_doc(msg),
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            self.end_bans(now);
            self.dialer.redial_due(&mut self.swarm, now);
            self.pull_due();
            self.pulls.send_deferred(&mut self.swarm, &mut self.admission, now);
            if now.duration_since(self.last_prune) >= PRUNE_EVERY {
                self.last_prune = now;
                let swarm = &self.swarm;
                self.admission.prune(now, |p| swarm.is_connected(p));
            }
        };
        let result = self.shutdown().await;
        // Close every socket, and let handles see the node is gone, before
        // reporting the shutdown done.
        drop(self);
        drop(control);
        match reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                if let Err(e) = result {
                    warn!(error = %e, "shutdown failed");
                }
            }
        }
    }

    async fn shutdown(&mut self) -> Result<(), NodeError> {
        let names = self.docs.names();
        let mut first_err = None;
        for name in names {
            if let Err(e) = self.close_doc(&name).await {
                first_err.get_or_insert(e);
            }
        }
        // Dropping the swarm (by returning) closes every connection.
        info!("node shut down");
        first_err.map_or(Ok(()), Err)
    }

    async fn close_doc(&mut self, name: &str) -> Result<(), NodeError> {
        let (tx, thread) = self.detach_doc(name);
        close_worker(name.to_string(), tx, thread).await
    }

    /// Stops replicating `name`; returns its worker to close.
    fn detach_doc(&mut self, name: &str) -> (Option<mpsc::Sender<DocCmd<D>>>, Option<std::thread::JoinHandle<()>>) {
        let detached = self.docs.detach(name);
        let _ = self.swarm.behaviour_mut().gossip.unsubscribe(&topic_of(name));
        self.schedule.remove_doc(name);
        self.pulls.forget_doc(name);
        detached
    }

    fn on_control(&mut self, ctl: Control<D>) {
        match ctl {
            Control::OpenDoc { name, reply } => self.docs.open(name, reply),
            Control::Opened { name, tx, result, reply } => self.opened(name, tx, result, reply),
            Control::CloseDoc { name, reply } => {
                // The worker may be busy: wait for it on another task.
                let (tx, thread) = self.detach_doc(&name);
                tokio::spawn(async move {
                    let _ = reply.send(close_worker(name, tx, thread).await);
                });
            }
            Control::Connect { addr, reply } => {
                if let Err(e) = check_dialable(&addr).and_then(|()| check_allowed(self.cfg.allow.as_ref(), &addr)) {
                    let _ = reply.send(Err(e));
                    return;
                }
                self.add_configured(addr);
                let _ = reply.send(Ok(()));
            }
            Control::Peers { reply } => {
                let mut peers: HashMap<PeerId, PeerInfo> = HashMap::new();
                for (p, addr) in self.connections.values() {
                    let info =
                        peers.entry(*p).or_insert_with(|| PeerInfo { peer: *p, addrs: Vec::new(), docs: Vec::new() });
                    info.addrs.push(addr.clone());
                }
                for (p, topics) in self.swarm.behaviour().gossip.all_peers() {
                    if let Some(info) = peers.get_mut(p) {
                        info.docs = topics.iter().filter_map(|t| doc_of_topic(t)).map(str::to_string).collect();
                        info.docs.sort();
                    }
                }
                let mut list: Vec<PeerInfo> = peers.into_values().collect();
                list.sort_by_key(|p| p.peer.to_string());
                let _ = reply.send(list);
            }
            Control::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Control::Block { peer, reply } => {
                // The app's block outlasts a ban already running.
                self.admission.forget_ban(&peer);
                self.block(peer);
                self.schedule.remove_peer(&peer);
                self.pulls.drop_deferred(&mut self.schedule, &peer);
                let _ = reply.send(());
            }
            Control::Unblock { peer, reply } => {
                self.admission.forget_ban(&peer);
                self.unblock(peer);
                self.dialer.redial_peer(&mut self.swarm, peer);
                let _ = reply.send(());
            }
            Control::Shutdown { .. } | Control::Abort => {}
        }
    }

    /// A document worker finished opening its replica (or failed to).
    fn opened(
        &mut self,
        name: String,
        tx: mpsc::Sender<DocCmd<D>>,
        result: Result<std::thread::JoinHandle<()>, NodeError>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        // Still ours, or was it closed (and maybe reopened) meanwhile?
        let current = self.docs.is_current(&name, &tx);
        let thread = match result {
            Ok(thread) if current => thread,
            Ok(thread) => {
                tokio::spawn(async move {
                    let _ = close_worker(name.clone(), Some(tx), Some(thread)).await;
                    let _ = reply.send(Err(NodeError::UnknownDoc(name)));
                });
                return;
            }
            Err(e) => {
                if current {
                    // Pulls and answers queued to the dead worker will never come.
                    let _ = self.detach_doc(&name);
                }
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.docs.add_thread(name.clone(), thread);
        if let Err(e) = self.swarm.behaviour_mut().gossip.subscribe(&topic_of(&name)) {
            warn!(doc = %name, error = %e, "subscribing failed");
        }
        // Peers already known to have the document.
        let topic = topic_of(&name).hash();
        let have: Vec<PeerId> = self
            .swarm
            .behaviour()
            .gossip
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&topic))
            .map(|(p, _)| *p)
            .collect();
        let now = Instant::now();
        for p in have {
            self.schedule.add(p, &name, now);
        }
        info!(doc = %name, "document open");
        let _ = reply.send(Ok(()));
    }
}
