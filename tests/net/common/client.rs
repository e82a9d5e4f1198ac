//! A peer that speaks the walrus protocols with libp2p directly (optionally
//! in a private network) and does whatever its test tells it to: dial,
//! publish any bytes as gossip, send any bytes as a sync request, answer
//! pulls with prepared bytes, flood a node with requests.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::Either;
use futures::StreamExt;
use libp2p::core::{upgrade, Transport};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::StreamProtocol;
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use walrus::internals::{FrameCodec, IDENTIFY_VERSION, SYNC_PROTOCOL};

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
    /// A peer pulled from us (the request's bytes).
    Pulled(PeerId, Vec<u8>),
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
    /// Starts the client listening on 127.0.0.1, in the private network of
    /// `psk` if given; it answers no pulls.
    pub async fn spawn(psk: Option<PreSharedKey>) -> Client {
        Client::spawn_with(psk, Vec::new()).await
    }

    /// As [`spawn`](Self::spawn), answering the peers' sync requests with
    /// `answers`, one each, then with nothing.
    pub async fn spawn_with(psk: Option<PreSharedKey>, answers: Vec<Vec<u8>>) -> Client {
        Client::spawn_speaking(psk, answers, SYNC_PROTOCOL, IDENTIFY_VERSION).await
    }

    /// As [`spawn_with`](Self::spawn_with), its sync requests and answers
    /// on `protocol`, announcing `identify_version` (what another version
    /// of walrus would).
    pub async fn spawn_speaking(
        psk: Option<PreSharedKey>,
        answers: Vec<Vec<u8>>,
        protocol: StreamProtocol,
        identify_version: &'static str,
    ) -> Client {
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
                // As walrus nodes do (src/net/behaviour.rs), but with room to send oversize messages.
                let cfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(200))
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    .max_transmit_size(4 << 20)
                    .message_id_fn(|m| MessageId::from(Sha256::digest(&m.data)[..20].to_vec()))
                    .build()?;
                let gossip = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, cfg)?;
                let codec = FrameCodec { max_request: 8 << 20, max_response: 64 << 20 };
                let sync = request_response::Behaviour::with_codec(
                    codec,
                    [(protocol, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                );
                let identify = identify::Behaviour::new(identify::Config::new(identify_version.into(), key.public()));
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
            let mut answers = answers.into_iter();
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
                            let id = swarm.behaviour_mut().sync.send_request(&peer, bytes.into());
                            pending.insert(id, reply);
                        }
                        Some(Cmd::Flood(peer, bytes, total, done)) => {
                            let sent = total.min(FLOOD_WINDOW);
                            for _ in 0..sent {
                                swarm.behaviour_mut().sync.send_request(&peer, bytes.clone().into());
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
                        SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. })) => {
                            match message {
                                request_response::Message::Request { request, channel, .. } => {
                                    if let Some(a) = answers.next() {
                                        let _ = swarm.behaviour_mut().sync.send_response(channel, a);
                                    }
                                    if let walrus::internals::RequestFrame::Bytes(request) = request {
                                        let _ = seen_tx.send(Seen::Pulled(peer, request));
                                    }
                                }
                                request_response::Message::Response { request_id, response } => {
                                    match pending.remove(&request_id) {
                                        Some(reply) => {
                                            let _ = reply.send(Ok(response));
                                        }
                                        None => flood_answered(&mut swarm, &mut flood, Some(&response)),
                                    }
                                }
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

    /// Subscribes to `topic`, dials `node` at `addr`, and waits until it is
    /// connected and `node` subscribed to `topic` too.
    pub async fn join(&mut self, node: PeerId, addr: Multiaddr, topic: IdentTopic) {
        self.subscribe(topic.clone());
        self.dial(addr);
        let (mut connected, mut subscribed) = (false, false);
        let deadline = tokio::time::Instant::now() + super::WAIT;
        while !(connected && subscribed) {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(Seen::Connected(p))) => connected |= p == node,
                Ok(Some(Seen::Subscribed(p, t))) => subscribed |= p == node && t == topic.to_string(),
                Ok(Some(Seen::Pulled(..) | Seen::Disconnected(_))) => {}
                other => panic!("client: no connection to {node} or no subscription from it: {other:?}"),
            }
        }
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

    /// Sends `n` copies of a request to `peer` as fast as the peer takes
    /// them (a window of requests in flight, each answer immediately
    /// followed by the next request).
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
        swarm.behaviour_mut().sync.send_request(&state.peer, state.bytes.clone().into());
    }
    let r = &state.result;
    if r.served + r.refused + r.failed == state.total {
        if let Some(state) = flood.take() {
            let _ = state.done.send(state.result);
        }
    }
}
