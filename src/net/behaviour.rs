//! The libp2p side of a node: the network behaviour and how the swarm is
//! assembled (transport, gossip, sync protocol, limits), the mapping
//! between documents and gossip topics, and the checks on addresses.

use std::sync::Arc;
use std::time::Duration;

use libp2p::core::{upgrade, Transport};
use libp2p::gossipsub::{self, IdentTopic, MessageId, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, connection_limits, identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use sha2::{Digest, Sha256};

use super::codec::{FrameCodec, SYNC_PROTOCOL, SYNC_PROTOCOL_V1};
use super::config::NodeConfig;
use super::error::NodeError;
use super::traffic::{Counted, Counters};
use crate::sync;

/// Prefix of every document's gossip topic: `walrus/doc/<name>`.
pub const TOPIC_PREFIX: &str = "walrus/2/doc/";
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/walrus/2.0.0";
/// Sync streams open at once per connection, each way.
const MAX_SYNC_STREAMS: usize = 8;
/// Incoming connections being set up at once.
const MAX_PENDING_INCOMING: u32 = 64;
/// Incoming connections at once.
const MAX_INCOMING: u32 = 256;
/// Document topics tracked per peer.
const MAX_PEER_TOPICS: usize = 1024;
/// Time a new connection may take to finish its handshakes (pnet, noise,
/// yamux): one that stalls would otherwise hold a pending slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// The allow-list, when the node has one.
    pub(crate) allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    /// Peers blocked by the app, and peers banned for their faults.
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) gossip:
        gossipsub::Behaviour<gossipsub::IdentityTransform, gossipsub::MaxCountSubscriptionFilter<DocTopics>>,
    pub(crate) sync: request_response::Behaviour<FrameCodec>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Accepts only walrus document topics, so a peer cannot make us track
/// arbitrary topics.
#[derive(Default)]
pub(crate) struct DocTopics;

impl gossipsub::TopicSubscriptionFilter for DocTopics {
    fn can_subscribe(&mut self, topic: &TopicHash) -> bool {
        doc_of_topic(topic).is_some()
    }
}

/// The gossip topic of document `doc`.
pub(crate) fn topic_of(doc: &str) -> IdentTopic {
    IdentTopic::new(format!("{TOPIC_PREFIX}{doc}"))
}

/// The document a gossip topic is for, if it is a valid document topic.
pub(crate) fn doc_of_topic(topic: &TopicHash) -> Option<&str> {
    let doc = topic.as_str().strip_prefix(TOPIC_PREFIX)?;
    sync::check_doc_name(doc).ok().map(|()| doc)
}

/// Gossip message id: the first 20 bytes of the SHA-256 of the data.
pub(crate) fn message_id(data: &[u8]) -> MessageId {
    MessageId::from(Sha256::digest(data)[..20].to_vec())
}

/// Builds the swarm: TCP (under pnet when configured), noise, yamux, and
/// the behaviours with `cfg`'s limits.
pub(crate) fn build_swarm(
    cfg: &NodeConfig,
    key: libp2p::identity::Keypair,
    counters: Arc<Counters>,
) -> Result<Swarm<Behaviour>, NodeError> {
    let transport_err = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
    let limits = cfg.limits;
    let heartbeat = cfg.heartbeat;
    let request_timeout = cfg.request_timeout;
    let mdns_on = cfg.mdns;
    let psk = cfg.psk;
    let allow = cfg.allow.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            // TCP counted below pnet, noise and yamux, so `traffic()` is what crossed the wire.
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .map(move |inner, _| Counted { inner, counters: counters.clone() });
            // In a private network every connection starts with the pnet
            // handshake: nothing else (not even noise) reaches a peer
            // without the key.
            let tcp = tcp.and_then(move |socket, _| async move {
                match psk {
                    Some(psk) => PnetConfig::new(psk).handshake(socket).await.map(futures::future::Either::Left),
                    None => Ok(futures::future::Either::Right(socket)),
                }
            });
            Ok(tcp
                .upgrade(upgrade::Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .timeout(HANDSHAKE_TIMEOUT))
        })
        .map_err(|e| transport_err(&e))?
        .with_behaviour(|key| {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(heartbeat)
                .heartbeat_initial_delay(heartbeat / 5)
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .validate_messages()
                // Room for the signature and framing around our payload.
                .max_transmit_size(limits.max_gossip + 4096)
                .message_id_fn(|m| message_id(&m.data))
                // A small mesh, no flooding, early IDONTWANT: few duplicate
                // copies of each message. Gossip is only the fast path;
                // anti-entropy (and gossipsub's IHAVE/IWANT) cover the rest.
                .mesh_n(2)
                .mesh_n_low(1)
                .mesh_n_high(4)
                .mesh_outbound_min(1)
                .flood_publish(false)
                .idontwant_message_size_threshold(256)
                .idontwant_on_publish(true)
                .build()
                .map_err(|e| e.to_string())?;
            let gossip = gossipsub::Behaviour::new_with_subscription_filter(
                // No per-message signature, author or sequence number (over
                // 100 bytes a message): connections are authenticated by
                // noise, faults are blamed on the forwarding peer, and an
                // operation names its author itself (authenticating that
                // belongs to the operation, whatever path it took).
                gossipsub::MessageAuthenticity::Anonymous,
                gossip_cfg,
                gossipsub::MaxCountSubscriptionFilter {
                    filter: DocTopics,
                    max_subscribed_topics: MAX_PEER_TOPICS,
                    max_subscriptions_per_request: MAX_PEER_TOPICS,
                },
            )?;
            let codec = FrameCodec { max_request: limits.max_request, max_response: limits.max_response };
            let sync = request_response::Behaviour::with_codec(
                codec,
                [(SYNC_PROTOCOL, ProtocolSupport::Full), (SYNC_PROTOCOL_V1, ProtocolSupport::Inbound)],
                request_response::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(MAX_SYNC_STREAMS),
            );
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())?)
            } else {
                None
            };
            let allowed = allow.map(|peers| {
                let mut list = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                for p in peers {
                    list.allow_peer(p);
                }
                list
            });
            Ok(Behaviour {
                allowed: allowed.into(),
                blocked: Default::default(),
                // Duplicate connections confuse gossipsub; two cover a simultaneous dial.
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established_per_peer(Some(2))
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_INCOMING)),
                ),
                gossip,
                sync,
                identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public())),
                ping: ping::Behaviour::default(),
                mdns: mdns.into(),
            })
        })
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// Refuses addresses this node's transport (TCP) cannot dial, rather than
/// re-dialing them forever.
pub(crate) fn check_dialable(addr: &Multiaddr) -> Result<(), NodeError> {
    let mut tcp = false;
    for p in addr.iter() {
        match p {
            Protocol::Tcp(_) => tcp = true,
            Protocol::Ip4(_) | Protocol::Ip6(_) => {}
            Protocol::P2p(_) if tcp => {}
            other => return Err(NodeError::Transport(format!("cannot dial {addr}: {other} is not supported"))),
        }
    }
    if !tcp {
        return Err(NodeError::Transport(format!(
            "cannot dial {addr}: only TCP addresses (/ip4/…/tcp/… or /ip6/…/tcp/…) are supported"
        )));
    }
    Ok(())
}

/// Fails if an explicit TCP port is already taken. libp2p listens with
/// SO_REUSEPORT, so two nodes could otherwise share a port and split its
/// connections between them.
pub(crate) fn check_port_free(addr: &Multiaddr) -> Result<(), NodeError> {
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(port) if port != 0 => {
                if let Some(ip) = ip {
                    std::net::TcpListener::bind((ip, port))
                        .map_err(|e| NodeError::Transport(format!("listen on {addr}: {e}")))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `addr` ending in `/p2p/<peer>`.
pub(crate) fn with_p2p(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.clone()
    } else {
        addr.clone().with(Protocol::P2p(peer))
    }
}

/// The peer id an address names, if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_addresses_are_dialable() {
        for ok in ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
        {
            assert!(check_dialable(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["/ip4/127.0.0.1/udp/1", "/ip4/127.0.0.1", "/ip4/127.0.0.1/udp/1/quic-v1", "/dns4/example.com/tcp/1"]
        {
            assert!(check_dialable(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_port_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        assert!(matches!(check_port_free(&addr), Err(NodeError::Transport(_))));
        drop(taken);
        assert!(check_port_free(&addr).is_ok());
        assert!(check_port_free(&"/ip4/127.0.0.1/tcp/0".parse().unwrap()).is_ok());
    }

    #[test]
    fn topics_map_to_documents() {
        assert_eq!(doc_of_topic(&topic_of("notes").hash()), Some("notes"));
        assert_eq!(doc_of_topic(&TopicHash::from_raw("other/notes")), None);
        assert_eq!(doc_of_topic(&TopicHash::from_raw("walrus/doc/")), None);
        assert_eq!(message_id(b"abc").0.len(), 20);
    }
}
