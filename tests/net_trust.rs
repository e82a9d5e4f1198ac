//! Who may connect to a node and how much a peer may ask of it: the
//! allow-list, private networks (pnet pre-shared keys), the per-peer sync
//! request rate limit, fault scores and timed bans. Real nodes on
//! 127.0.0.1, plus misbehaving clients built directly on libp2p.
//!
//! Nothing here sleeps to synchronise: every wait is on node or client
//! events under an overall deadline. Where a test shows that something
//! never happened (a refused peer never connected), it first waits for an
//! event proving the attempt was made and turned away.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use walrus::net::{Multiaddr, Node, NodeConfig, NodeError, NodeEvent, NodeHandle, PeerId, PreSharedKey};
use walrus::replica::{KvDoc, KvDocExt, KvOp, VersionVector};
use walrus::sync::{encode, Gossip, SyncRequest, SyncResponse};

const DOC: &str = "d";
/// Hard limit on each test, whatever it waits for.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Limit on each individual wait inside a test.
const WAIT: Duration = Duration::from_secs(30);

type Ev = NodeEvent<KvOp>;

/// Runs a test body with an overall timeout.
async fn within<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("test did not finish within {TEST_TIMEOUT:?}");
    }
}

fn config(dir: &Path, peers: &[Multiaddr]) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir);
    cfg.docs = vec![DOC.into()];
    cfg.peers = peers.to_vec();
    cfg.sync_interval = Duration::from_millis(300);
    cfg.heartbeat = Duration::from_millis(200);
    cfg.redial_min = Duration::from_millis(100);
    cfg.redial_max = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(10);
    cfg
}

/// Every event of every node of a test, tagged with the node's index.
struct Events {
    rxs: Vec<(usize, broadcast::Receiver<Ev>)>,
    log: Vec<(usize, Ev)>,
}

impl Events {
    fn new() -> Events {
        Events { rxs: Vec::new(), log: Vec::new() }
    }

    /// Logs every event already queued; returns how many.
    fn drain(&mut self) -> usize {
        let before = self.log.len();
        for (idx, rx) in &mut self.rxs {
            loop {
                match rx.try_recv() {
                    Ok(ev) => self.log.push((*idx, ev)),
                    Err(TryRecvError::Lagged(n)) => panic!("node {idx}: {n} events lost"),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        self.log.len() - before
    }

    /// Waits for at least one new event, then logs everything queued.
    async fn wait(&mut self, deadline: Instant) -> bool {
        if self.drain() > 0 {
            return true;
        }
        let next = {
            let recvs = self.rxs.iter_mut().map(|(_, rx)| Box::pin(rx.recv()));
            let next = tokio::time::timeout_at(deadline, futures::future::select_all(recvs)).await;
            // Drop the other receives: they borrow the receivers.
            next.map(|(result, k, _)| (result, k))
        };
        match next {
            Err(_) => false,
            Ok((Ok(ev), k)) => {
                let idx = self.rxs[k].0;
                self.log.push((idx, ev));
                self.drain();
                true
            }
            Ok((Err(RecvError::Lagged(n)), _)) => panic!("{n} events lost"),
            Ok((Err(RecvError::Closed), _)) => panic!("a node stopped"),
        }
    }

    /// Waits until `done` holds for the log; returns the index of the
    /// first event that made it hold.
    async fn wait_for(&mut self, what: &str, mut done: impl FnMut(&[(usize, Ev)]) -> bool) -> usize {
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
    async fn wait_event(&mut self, what: &str, from: usize, idx: usize, pred: impl Fn(&Ev) -> bool) -> usize {
        self.wait_for(what, |log| log[from..].iter().any(|(i, ev)| *i == idx && pred(ev))).await;
        from + self.log[from..].iter().position(|(i, ev)| *i == idx && pred(ev)).expect("found")
    }

    /// Whether node `idx` logged an event satisfying `pred` at `from` or later.
    fn any(&self, from: usize, idx: usize, pred: impl Fn(&Ev) -> bool) -> bool {
        self.log[from..].iter().any(|(i, ev)| *i == idx && pred(ev))
    }
}

/// Starts a node, its events attached as node `idx`; returns it and its address.
async fn start(cfg: NodeConfig, events: &mut Events, idx: usize) -> (NodeHandle<KvDoc>, Multiaddr) {
    let (node, rx) = Node::<KvDoc>::start(cfg).await.expect("node starts");
    events.rxs.push((idx, rx));
    let addr = node.listen_addrs().await.expect("listen addresses").into_iter().next().expect("one listen address");
    (node, addr)
}

async fn values(node: &NodeHandle<KvDoc>, key: &'static str) -> Vec<String> {
    node.with(DOC, move |r| r.doc().values_of(key)).await.expect("node answers")
}

async fn put(node: &NodeHandle<KvDoc>, key: &'static str, value: &'static str) {
    node.update(DOC, move |d, a| d.put_op(a, key, value)).await.expect("put acknowledged");
}

/// Waits until `node` holds `value` under `key` (it replicated from a peer).
async fn wait_value(node: &NodeHandle<KvDoc>, events: &mut Events, key: &'static str, value: &'static str) {
    let deadline = Instant::now() + WAIT;
    while values(node, key).await != vec![value.to_string()] {
        if !events.wait(deadline).await {
            panic!("{key}={value} did not replicate within {WAIT:?}; events: {:#?}", events.log);
        }
    }
}

fn connected(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerConnected { peer: p, .. } if *p == peer)
}

fn disconnected(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerDisconnected { peer: p } if *p == peer)
}

fn banned(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerBanned { peer: p, .. } if *p == peer)
}

fn faulted(peer: PeerId) -> impl Fn(&Ev) -> bool {
    move |ev| matches!(ev, NodeEvent::PeerFault { peer: p, .. } | NodeEvent::PeerBanned { peer: p, .. } if *p == peer)
}

/// `addr` without its `/p2p/<peer id>` suffix.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect()
}

/// A deterministic 32-byte key.
fn key(seed: u8) -> PreSharedKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    PreSharedKey::new(bytes)
}

fn sync_request(doc: &str) -> Vec<u8> {
    encode(&SyncRequest { doc: doc.into(), clock: VersionVector::default(), budget: 1 << 20 })
}

/// A peer that speaks the walrus protocols with libp2p directly (optionally
/// in a private network), and does whatever the test tells it to.
mod client {
    use std::collections::HashMap;
    use std::time::Duration;

    use futures::future::Either;
    use futures::StreamExt;
    use libp2p::core::{upgrade, Transport};
    use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId};
    use libp2p::pnet::{PnetConfig, PreSharedKey};
    use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId};
    use sha2::{Digest, Sha256};
    use tokio::sync::{mpsc, oneshot};
    use walrus::net::{FrameCodec, IDENTIFY_VERSION, SYNC_PROTOCOL};

    #[derive(NetworkBehaviour)]
    struct Behaviour {
        gossip: gossipsub::Behaviour,
        sync: request_response::Behaviour<FrameCodec>,
        identify: identify::Behaviour,
        ping: ping::Behaviour,
    }

    type Answer<T> = oneshot::Sender<Result<T, String>>;

    /// How a flood of requests fared.
    #[derive(Debug, Default)]
    pub struct Flood {
        /// Answered with operations.
        pub served: usize,
        /// Answered with `Refused`.
        pub refused: usize,
        /// No answer (stream or connection closed, dial refused).
        pub failed: usize,
    }

    struct FloodState {
        peer: PeerId,
        bytes: Vec<u8>,
        total: usize,
        sent: usize,
        result: Flood,
        done: oneshot::Sender<Flood>,
    }

    enum Cmd {
        Dial(Multiaddr),
        Subscribe(IdentTopic),
        Publish(IdentTopic, Vec<u8>, Answer<()>),
        Request(PeerId, Vec<u8>, Answer<Vec<u8>>),
        Flood(PeerId, Vec<u8>, usize, oneshot::Sender<Flood>),
    }

    /// What the client observed.
    #[derive(Debug)]
    pub enum Seen {
        Connected(PeerId),
        Disconnected(PeerId),
        DialFailed(#[allow(dead_code)] String),
        Subscribed(PeerId, String),
    }

    pub struct Client {
        pub peer_id: PeerId,
        /// Where it listens, ending with `/p2p/<peer id>`.
        pub addr: Multiaddr,
        cmd: mpsc::UnboundedSender<Cmd>,
        pub seen: mpsc::UnboundedReceiver<Seen>,
    }

    /// Requests of a flood in flight at once: what a node serves
    /// concurrently on one connection.
    const FLOOD_WINDOW: usize = 8;

    impl Client {
        /// Starts the client listening on 127.0.0.1, in the private network
        /// of `psk` if given.
        pub async fn spawn(psk: Option<PreSharedKey>) -> Client {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)).and_then(
                        move |socket, _| async move {
                            match psk {
                                Some(psk) => PnetConfig::new(psk).handshake(socket).await.map(Either::Left),
                                None => Ok(Either::Right(socket)),
                            }
                        },
                    );
                    Ok(tcp
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()))
                })
                .expect("transport")
                .with_behaviour(|key| {
                    let cfg = gossipsub::ConfigBuilder::default()
                        .heartbeat_interval(Duration::from_millis(200))
                        .validation_mode(gossipsub::ValidationMode::Anonymous)
                        .message_id_fn(|m| MessageId::from(Sha256::digest(&m.data)[..20].to_vec()))
                        .build()?;
                    let gossip = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, cfg)?;
                    let codec = FrameCodec { max_request: 8 << 20, max_response: 64 << 20 };
                    let sync = request_response::Behaviour::with_codec(
                        codec,
                        [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                    );
                    let identify =
                        identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public()));
                    Ok(Behaviour { gossip, sync, identify, ping: ping::Behaviour::default() })
                })
                .expect("behaviour")
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
                .build();
            let peer_id = *swarm.local_peer_id();
            swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("address")).expect("listen");
            let addr = loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    break address.with(libp2p::multiaddr::Protocol::P2p(peer_id));
                }
            };
            let (cmd, mut cmd_rx) = mpsc::unbounded_channel();
            let (seen_tx, seen) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut pending: HashMap<OutboundRequestId, Answer<Vec<u8>>> = HashMap::new();
                let mut flood: Option<FloodState> = None;
                loop {
                    tokio::select! {
                        cmd = cmd_rx.recv() => match cmd {
                            None => return,
                            Some(Cmd::Dial(addr)) => {
                                if let Err(e) = swarm.dial(addr) {
                                    let _ = seen_tx.send(Seen::DialFailed(e.to_string()));
                                }
                            }
                            Some(Cmd::Subscribe(topic)) => {
                                swarm.behaviour_mut().gossip.subscribe(&topic).expect("subscribe");
                            }
                            Some(Cmd::Publish(topic, data, reply)) => {
                                let r = swarm.behaviour_mut().gossip.publish(topic, data);
                                let _ = reply.send(r.map(|_| ()).map_err(|e| e.to_string()));
                            }
                            Some(Cmd::Request(peer, bytes, reply)) => {
                                let id = swarm.behaviour_mut().sync.send_request(&peer, bytes);
                                pending.insert(id, reply);
                            }
                            Some(Cmd::Flood(peer, bytes, total, done)) => {
                                let sent = total.min(FLOOD_WINDOW);
                                for _ in 0..sent {
                                    swarm.behaviour_mut().sync.send_request(&peer, bytes.clone());
                                }
                                flood = Some(FloodState { peer, bytes, total, sent, result: Flood::default(), done });
                            }
                        },
                        ev = swarm.select_next_some() => match ev {
                            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                                let _ = seen_tx.send(Seen::Connected(peer_id));
                            }
                            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                                let _ = seen_tx.send(Seen::Disconnected(peer_id));
                            }
                            SwarmEvent::OutgoingConnectionError { error, .. } => {
                                let _ = seen_tx.send(Seen::DialFailed(error.to_string()));
                            }
                            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Subscribed { peer_id, topic })) => {
                                let _ = seen_tx.send(Seen::Subscribed(peer_id, topic.into_string()));
                            }
                            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                                message: request_response::Message::Response { request_id, response }, ..
                            })) => {
                                match pending.remove(&request_id) {
                                    Some(reply) => {
                                        let _ = reply.send(Ok(response));
                                    }
                                    None => flood_answered(&mut swarm, &mut flood, Some(&response)),
                                }
                            }
                            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure { request_id, error, .. })) => {
                                match pending.remove(&request_id) {
                                    Some(reply) => {
                                        let _ = reply.send(Err(error.to_string()));
                                    }
                                    None => flood_answered(&mut swarm, &mut flood, None),
                                }
                            }
                            _ => {}
                        }
                    }
                }
            });
            Client { peer_id, addr, cmd, seen }
        }

        pub fn dial(&self, addr: Multiaddr) {
            self.cmd.send(Cmd::Dial(addr)).expect("client running");
        }

        pub fn subscribe(&self, topic: IdentTopic) {
            self.cmd.send(Cmd::Subscribe(topic)).expect("client running");
        }

        pub async fn publish(&self, topic: IdentTopic, data: Vec<u8>) -> Result<(), String> {
            let (tx, rx) = oneshot::channel();
            self.cmd.send(Cmd::Publish(topic, data, tx)).expect("client running");
            rx.await.expect("client answers")
        }

        pub async fn request(&self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
            let (tx, rx) = oneshot::channel();
            self.cmd.send(Cmd::Request(peer, bytes, tx)).expect("client running");
            rx.await.expect("client answers")
        }

        /// Sends `n` copies of a request to `peer` as fast as the peer
        /// takes them (a window of requests in flight, each answer
        /// immediately followed by the next request).
        pub async fn flood(&self, peer: PeerId, bytes: Vec<u8>, n: usize) -> Flood {
            let (tx, rx) = oneshot::channel();
            self.cmd.send(Cmd::Flood(peer, bytes, n, tx)).expect("client running");
            rx.await.expect("client answers")
        }

        /// Waits for the next observation that `pred` picks, skipping others.
        pub async fn wait(&mut self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
            let deadline = tokio::time::Instant::now() + super::WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                    Ok(Some(seen)) if pred(&seen) => return seen,
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("client stopped while waiting for {what}"),
                    Err(_) => panic!("client: timed out waiting for {what}"),
                }
            }
        }
    }

    /// One request of the flood finished: count it and send the next.
    fn flood_answered(swarm: &mut libp2p::Swarm<Behaviour>, flood: &mut Option<FloodState>, answer: Option<&[u8]>) {
        let Some(state) = flood.as_mut() else { return };
        match answer.map(|a| walrus::sync::decode::<walrus::sync::SyncResponse>(a, 64 << 20, "response")) {
            Some(Ok(walrus::sync::SyncResponse::Refused { .. })) => state.result.refused += 1,
            Some(Ok(_)) => state.result.served += 1,
            Some(Err(_)) | None => state.result.failed += 1,
        }
        if state.sent < state.total {
            state.sent += 1;
            swarm.behaviour_mut().sync.send_request(&state.peer, state.bytes.clone());
        }
        let r = &state.result;
        if r.served + r.refused + r.failed == state.total {
            if let Some(state) = flood.take() {
                let _ = state.done.send(state.result);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_allow_list_admits_listed_peers_only() {
    within(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let (b, b_addr) = start(config(dirs[1].path(), &[]), &mut events, 1).await;
        let (c, c_addr) = start(config(dirs[2].path(), &[]), &mut events, 2).await;
        let (d, d_addr) = start(config(dirs[3].path(), &[]), &mut events, 3).await;
        let (b_id, c_id, d_id) = (b.peer_id(), c.peer_id(), d.peer_id());

        // A configured peer outside the allow-list is a configuration error.
        let mut bad = config(dirs[0].path(), &[b_addr.clone(), c_addr.clone()]);
        bad.allow = Some([b_id].into());
        match Node::<KvDoc>::start(bad).await {
            Err(e @ NodeError::Config(_)) => assert!(e.to_string().contains(&c_addr.to_string()), "{e}"),
            Err(e) => panic!("expected a configuration error, got {e}"),
            Ok(_) => panic!("a node started with a configured peer outside its allow-list"),
        }

        let mut cfg = config(dirs[0].path(), std::slice::from_ref(&b_addr));
        cfg.allow = Some([b_id].into());
        let (a, a_addr) = start(cfg, &mut events, 0).await;
        let a_id = a.peer_id();

        // The listed peer connects and replicates.
        events.wait_event("A connected to B", 0, 0, connected(b_id)).await;
        put(&b, "from-b", "1").await;
        wait_value(&a, &mut events, "from-b", "1").await;

        // An unlisted peer dialing A: its connection is closed as soon as
        // A knows who it is.
        put(&c, "from-c", "1").await;
        let mark = events.log.len();
        c.connect(a_addr.clone()).await.expect("C dials A");
        events.wait_event("C disconnected by A", mark, 2, disconnected(a_id)).await;

        // A dialing an unlisted peer: refused up front when the address
        // names it, closed after the handshake when it does not.
        match a.connect(c_addr.clone()).await {
            Err(e @ NodeError::Config(_)) => assert!(e.to_string().contains("allow-list"), "{e}"),
            other => panic!("connecting to a peer outside the allow-list: {other:?}"),
        }
        let mark = events.log.len();
        a.connect(without_peer_id(&d_addr)).await.expect("a dial without a peer id starts");
        events.wait_event("D disconnected by A", mark, 3, disconnected(a_id)).await;

        // A saw neither, and C's data never reached it.
        let peers: Vec<PeerId> = a.peers().await.unwrap().into_iter().map(|p| p.peer).collect();
        assert_eq!(peers, vec![b_id]);
        events.drain();
        assert!(!events.any(0, 0, |ev| connected(c_id)(ev) || connected(d_id)(ev)), "{:#?}", events.log);
        assert!(values(&a, "from-c").await.is_empty());
        // And A still replicates with B.
        put(&a, "from-a", "1").await;
        wait_value(&b, &mut events, "from-a", "1").await;
        for n in [a, b, c, d] {
            n.shutdown().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_network_admits_only_holders_of_its_key() {
    within(async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let mut cfg = config(dirs[0].path(), &[]);
        cfg.psk = Some(key(1));
        let (a, a_addr) = start(cfg, &mut events, 0).await;
        let a_id = a.peer_id();
        put(&a, "from-a", "1").await;

        // Another key, or none: the handshake fails (noise sees only noise).
        // That takes a while (a stalled negotiation times out), so these
        // dials run while the rest of the test does.
        let mut outsiders = Vec::new();
        for psk in [Some(key(2)), None] {
            let outsider = client::Client::spawn(psk).await;
            outsider.dial(a_addr.clone());
            outsiders.push((psk, outsider));
        }
        // The same key: the client's transport itself is fine.
        let mut insider = client::Client::spawn(Some(key(1))).await;
        insider.dial(a_addr.clone());
        let seen = insider.wait("the dial's outcome", |s| !matches!(s, client::Seen::Subscribed(..))).await;
        assert!(matches!(seen, client::Seen::Connected(p) if p == a_id), "{seen:?}");

        // Walrus nodes: B with another key keeps failing to reach A; C
        // with A's key replicates.
        let mut cfg = config(dirs[1].path(), std::slice::from_ref(&a_addr));
        cfg.psk = Some(key(2));
        let (b, _) = start(cfg, &mut events, 1).await;
        let mut cfg = config(dirs[2].path(), std::slice::from_ref(&a_addr));
        cfg.psk = Some(key(1));
        let (c, _) = start(cfg, &mut events, 2).await;
        wait_value(&c, &mut events, "from-a", "1").await;
        put(&c, "from-c", "1").await;
        wait_value(&a, &mut events, "from-c", "1").await;
        assert!(a.traffic().received > 0 && c.traffic().sent > 0, "traffic is counted under pnet");

        for (psk, mut outsider) in outsiders {
            let seen = outsider.wait("the dial's outcome", |s| !matches!(s, client::Seen::Subscribed(..))).await;
            let psk = psk.map(|k| k.fingerprint().to_string());
            assert!(matches!(seen, client::Seen::DialFailed(_)), "psk {psk:?}: {seen:?}");
        }
        // B, dialing A since it started, never got through either.
        events.drain();
        let b_id = b.peer_id();
        assert!(!events.any(0, 1, connected(a_id)), "B connected to A: {:#?}", events.log);
        assert!(!events.any(0, 0, connected(b_id)), "A connected to B: {:#?}", events.log);
        assert!(values(&b, "from-a").await.is_empty(), "B got A's data");
        for n in [a, b, c] {
            n.shutdown().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_flood_gets_the_peer_banned_while_others_sync() {
    within(async {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let (a, a_addr) = start(config(dirs[0].path(), &[]), &mut events, 0).await;
        let a_id = a.peer_id();
        let (b, _) = start(config(dirs[1].path(), std::slice::from_ref(&a_addr)), &mut events, 1).await;
        let b_id = b.peer_id();
        for i in 0..20 {
            a.update(DOC, move |d, actor| d.put_op(actor, &format!("k{i}"), "v")).await.unwrap();
        }
        put(&b, "before", "b").await;
        wait_value(&a, &mut events, "before", "b").await;

        let mut flooder = client::Client::spawn(None).await;
        flooder.dial(a_addr.clone());
        flooder.wait("a connection to A", |s| matches!(s, client::Seen::Connected(p) if *p == a_id)).await;
        let mark = events.log.len();
        let flood = flooder.flood(a_id, sync_request(DOC), 500);
        let honest = async {
            put(&b, "during", "b").await;
        };
        let (flood, ()) = tokio::join!(flood, honest);
        events.wait_event("the flooder's ban", mark, 0, banned(flooder.peer_id)).await;
        eprintln!("flood: {flood:?}");
        assert!(flood.served >= 1 && flood.refused >= 1 && flood.failed >= 1, "{flood:?}");
        assert!(flood.served + flood.refused < 500, "the flooder was never cut off: {flood:?}");
        let reason = events
            .log
            .iter()
            .find_map(|(i, ev)| match ev {
                NodeEvent::PeerBanned { peer, reason } if *i == 0 && *peer == flooder.peer_id => Some(reason.clone()),
                _ => None,
            })
            .expect("ban logged");
        assert!(reason.contains("rate limit"), "{reason}");

        // The honest node kept replicating throughout, both ways.
        wait_value(&a, &mut events, "during", "b").await;
        put(&b, "after", "b").await;
        put(&a, "after-a", "a").await;
        wait_value(&a, &mut events, "after", "b").await;
        wait_value(&b, &mut events, "after-a", "a").await;
        assert!(!events.any(0, 0, faulted(b_id)), "the honest node was blamed: {:#?}", events.log);
        assert!(!events.any(0, 1, faulted(a_id)), "the honest node blamed A: {:#?}", events.log);

        // While banned the flooder cannot come back: its connection is
        // closed as soon as A knows who it is.
        while flooder.seen.try_recv().is_ok() {}
        let mark = events.log.len();
        flooder.dial(a_addr.clone());
        flooder
            .wait("the refused dial", |s| {
                matches!(s, client::Seen::DialFailed(_)) || matches!(s, client::Seen::Disconnected(p) if *p == a_id)
            })
            .await;
        let _ = values(&a, "after").await;
        events.drain();
        assert!(!events.any(mark, 0, connected(flooder.peer_id)), "{:#?}", &events.log[mark..]);
        for n in [a, b] {
            n.shutdown().await.unwrap();
        }
    })
    .await;
}

/// Sends garbage gossip and requests from `bad` to node `a` until it is
/// banned; returns when sending began and the ban event's place in the log.
/// `round` makes the gossip unique (gossipsub drops repeated messages).
async fn misbehave_until_banned(
    bad: &client::Client,
    a: &NodeHandle<KvDoc>,
    events: &mut Events,
    idx: usize,
    round: u8,
) -> (Instant, usize) {
    let topic = libp2p::gossipsub::IdentTopic::new(format!("{}{DOC}", walrus::net::TOPIC_PREFIX));
    let mark = events.log.len();
    let began = Instant::now();
    for i in 0..2u8 {
        let garbage = encode(&Gossip { doc: DOC.into(), ops: vec![serde_bytes::ByteBuf::from(vec![0xa1, round, i])] });
        bad.publish(topic.clone(), garbage).await.expect("publishing garbage");
    }
    // Each answered with silence; they fail fast once the ban closes the connection.
    for i in 0..4u8 {
        let _ = bad.request(a.peer_id(), vec![0xff, i]).await;
    }
    let at = events.wait_event("the ban", mark, idx, banned(bad.peer_id)).await;
    (began, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_gets_a_peer_banned_until_the_ban_ends() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let mut events = Events::new();
        let mut cfg = config(dir.path(), &[]);
        cfg.max_faults = 3;
        let ban = Duration::from_millis(1500);
        cfg.ban_duration = ban;
        let (a, _) = start(cfg, &mut events, 0).await;
        let a_id = a.peer_id();
        let topic = libp2p::gossipsub::IdentTopic::new(format!("{}{DOC}", walrus::net::TOPIC_PREFIX));

        // Two misbehaving peers that A keeps connected to (configured).
        let mut g = client::Client::spawn(None).await;
        let mut h = client::Client::spawn(None).await;
        for bad in [&mut g, &mut h] {
            bad.subscribe(topic.clone());
            a.connect(bad.addr.clone()).await.unwrap();
            bad.wait(
                "A's subscription",
                |s| matches!(s, client::Seen::Subscribed(p, t) if *p == a_id && *t == topic.to_string()),
            )
            .await;
        }

        // Garbage past the limit: G is banned, disconnected, and re-dialed
        // once the ban ends.
        let (began, ban_at) = misbehave_until_banned(&g, &a, &mut events, 0, 1).await;
        let is_fault = |ev: &Ev| matches!(ev, NodeEvent::PeerFault { peer, .. } if *peer == g.peer_id);
        let faults = events.log[..ban_at].iter().filter(|(i, ev)| *i == 0 && is_fault(ev)).count();
        assert_eq!(faults, 4, "three faults are tolerated, the fourth bans: {:#?}", events.log);
        let gone = events.wait_event("G disconnected", ban_at, 0, disconnected(g.peer_id)).await;
        events.wait_event("G reconnected", gone, 0, connected(g.peer_id)).await;
        // The ban began after the garbage did.
        assert!(began.elapsed() >= ban, "reconnected {:?} after the garbage began", began.elapsed());
        // With a fresh score: its valid requests are served.
        let answer = g.request(a_id, sync_request(DOC)).await.expect("an answer after the ban");
        let answer: SyncResponse = walrus::sync::decode(&answer, 1 << 20, "response").unwrap();
        assert!(matches!(answer, SyncResponse::Ops { .. }), "{answer:?}");

        // Banned again, and blocked by the app during the ban: the block
        // stands when the ban would have ended. H, banned after G, proves
        // that time has passed.
        let (began, _) = misbehave_until_banned(&g, &a, &mut events, 0, 2).await;
        a.block(g.peer_id).await.unwrap();
        let blocked_in_time = began.elapsed() < ban;
        let mark = events.log.len();
        misbehave_until_banned(&h, &a, &mut events, 0, 3).await;
        let h_gone = events.wait_event("H disconnected", mark, 0, disconnected(h.peer_id)).await;
        events.wait_event("H reconnected", h_gone, 0, connected(h.peer_id)).await;
        if blocked_in_time {
            assert!(
                !events.any(mark, 0, connected(g.peer_id)),
                "the app's block was lifted: {:#?}",
                &events.log[mark..]
            );
        } else {
            eprintln!("too slow to check that a block outlasts a ban: the ban had ended before the block");
        }
        // Unblocking lets G back in at once.
        let mark = events.log.len();
        a.unblock(g.peer_id).await.unwrap();
        events.wait_event("G reconnected after unblock", mark, 0, connected(g.peer_id)).await;
        drop((g, h));
        a.shutdown().await.unwrap();
    })
    .await;
}
