//! What arrives at the driver: swarm events, gossip and sync messages
//! from peers, and what document workers send back.

use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{mdns, PeerId};
use tracing::{debug, info, warn};

use super::Driver;
use crate::net::behaviour::{doc_of_topic, topic_of, with_p2p, BehaviourEvent};
use crate::net::codec::RequestFrame;
use crate::net::event::NodeEvent;
use crate::net::pulls::DeferredPull;
use crate::net::worker::{DocCmd, FromDoc};
use crate::replica::Document;
use crate::sync;

impl<D: Document> Driver<D> {
    /// Something a document worker sends back: gossip to publish, a
    /// verdict on gossip, an answer, a request to send, a fault, an outcome.
    pub(super) fn on_doc(&mut self, msg: FromDoc) {
        match msg {
            FromDoc::Publish { doc, data } => {
                if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic_of(&doc), data) {
                    // No subscriber yet, or a duplicate: anti-entropy delivers it.
                    debug!(doc = %doc, error = %e, "gossip not published");
                }
            }
            FromDoc::Validated { id, source, acceptance } => {
                self.swarm.behaviour_mut().gossip.report_message_validation_result(&id, &source, acceptance);
            }
            FromDoc::Respond { token, bytes } => {
                self.pulls.respond(&mut self.swarm, token, bytes);
            }
            FromDoc::Pull { peer, doc, bytes } => {
                match self.doc_tx(&doc).map(|tx| tx.try_reserve_owned()) {
                    Some(Ok(slot)) => {
                        self.pulls.pace(&mut self.swarm, &mut self.admission, peer, DeferredPull { doc, bytes, slot })
                    }
                    // Closed, or too busy to take the answer: try next round.
                    _ => self.schedule.failed(&peer, &doc, Instant::now()),
                }
            }
            FromDoc::Fault { peer, doc, reason } => self.fault(peer, Some(doc), reason),
            FromDoc::Synced { peer, doc, more, ok } => {
                let now = Instant::now();
                if ok {
                    self.schedule.completed(&peer, &doc, more, now);
                } else {
                    self.schedule.failed(&peer, &doc, now);
                }
            }
            FromDoc::GapSeen { doc, peer } => self.schedule.poke(&peer, &doc, Instant::now()),
        }
    }

    /// A swarm event: listen addresses, connections opened and closed,
    /// failed dials, and the behaviours' events.
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let addr = with_p2p(&address, *self.swarm.local_peer_id());
                info!(%addr, "listening");
                self.listen_addrs.push(addr.clone());
                self.emit(NodeEvent::Listening { addr });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let addr = with_p2p(&address, *self.swarm.local_peer_id());
                self.listen_addrs.retain(|a| a != &addr);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, connection_id, .. } => {
                self.dialer.connected(connection_id, peer_id);
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                self.connections.insert(connection_id, (peer_id, addr.clone()));
                if num_established.get() == 1 {
                    info!(peer = %peer_id, %addr, "peer connected");
                    self.emit(NodeEvent::PeerConnected { peer: peer_id, addr });
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, num_established: 1.., .. } => {
                self.connections.remove(&connection_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established: 0, .. } => {
                self.connections.remove(&connection_id);
                info!(peer = %peer_id, "peer disconnected");
                self.schedule.remove_peer(&peer_id);
                self.pulls.drop_deferred(&mut self.schedule, &peer_id);
                self.emit(NodeEvent::PeerDisconnected { peer: peer_id });
                self.dialer.disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
                self.dialer.dial_failed(connection_id);
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    /// Gossip, peers' topics, sync messages and mDNS discoveries.
    pub(super) fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossip(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let Some(doc) = doc_of_topic(&message.topic).map(str::to_string) else {
                    self.report(&message_id, &propagation_source, MessageAcceptance::Reject);
                    return;
                };
                let queued = self.doc_tx(&doc).is_some_and(|tx| {
                    let Ok(bytes) = self.queued_gossip.admit(message.data) else { return false };
                    tx.try_send(DocCmd::Gossip { source: propagation_source, id: message_id.clone(), bytes }).is_ok()
                });
                if !queued {
                    // Not replicated here, or the workers are saturated
                    // (in messages or bytes): anti-entropy catches up.
                    self.report(&message_id, &propagation_source, MessageAcceptance::Ignore);
                }
            }
            BehaviourEvent::Gossip(gossipsub::Event::Subscribed { peer_id, topic }) => {
                if let Some(doc) = doc_of_topic(&topic) {
                    if self.doc_tx(doc).is_some() {
                        debug!(peer = %peer_id, doc, "peer has document");
                        self.schedule.add(peer_id, doc, Instant::now());
                    }
                }
            }
            BehaviourEvent::Gossip(gossipsub::Event::Unsubscribed { peer_id, topic }) => {
                if let Some(doc) = doc_of_topic(&topic) {
                    self.schedule.remove(&peer_id, doc);
                }
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => self.on_request(peer, request, channel),
                request_response::Message::Response { request_id, response } => {
                    self.pulls.answered(request_id, response);
                }
            },
            BehaviourEvent::Sync(request_response::Event::OutboundFailure { peer, request_id, error, .. }) => {
                if let Some((peer, doc)) = self.pulls.failed(request_id) {
                    // An answer over our `max_response` too: not counted as
                    // a fault, since a peer sizes answers by its own limits.
                    debug!(%peer, doc, error = %error, "sync request failed");
                    self.schedule.failed(&peer, &doc, Instant::now());
                } else {
                    debug!(%peer, error = %error, "sync request failed");
                }
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure { peer, error, .. }) => {
                debug!(%peer, error = %error, "sync request not answered");
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    let wanted = peer != *self.swarm.local_peer_id() && self.admits(&peer);
                    if wanted && !self.swarm.is_connected(&peer) {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(vec![addr])
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        let _ = self.swarm.dial(opts);
                    }
                }
            }
            _ => {}
        }
    }

    /// Tells gossipsub what became of a message.
    pub(super) fn report(&mut self, id: &MessageId, source: &PeerId, acceptance: MessageAcceptance) {
        self.swarm.behaviour_mut().gossip.report_message_validation_result(id, source, acceptance);
    }

    /// A peer's sync request: refused (and counted as a fault) if oversize,
    /// malformed or over the peer's rate limit, else routed to its document.
    pub(super) fn on_request(&mut self, peer: PeerId, request: RequestFrame, channel: ResponseChannel<Vec<u8>>) {
        // Every request takes a token, well-formed or not.
        let within_rate = self.admission.inbound_request(peer, Instant::now());
        let bytes = match request {
            RequestFrame::Bytes(bytes) => bytes,
            RequestFrame::Previous(bytes) => {
                // Same request layout: the answer names its document. Not
                // a fault: the peer runs an older version.
                if let Ok(req) = sync::decode_request(&bytes, &self.cfg.limits) {
                    warn!(%peer, doc = %req.doc, "refused a request of the previous sync protocol");
                    let answer = sync::encode_refusal(&req.doc, sync::PREVIOUS_PROTOCOL_REFUSAL);
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, answer);
                }
                return;
            }
            RequestFrame::TooLarge { len, limit } => {
                warn!(%peer, len, limit, "rejected oversize sync request");
                // Its bytes were never read; dropping the channel closes the stream.
                self.fault(peer, None, format!("sync request of {len} bytes exceeds the limit of {limit} bytes"));
                return;
            }
        };
        let req = match sync::decode_request(&bytes, &self.cfg.limits) {
            Ok(r) => r,
            Err(e) => {
                warn!(%peer, error = %e, "rejected sync request");
                // Dropping the channel closes the stream without an answer.
                self.fault(peer, None, format!("sync request: {e}"));
                return;
            }
        };
        if !within_rate {
            warn!(%peer, doc = %req.doc, "sync request over the rate limit refused");
            let answer = sync::encode_refusal(&req.doc, "rate limit exceeded");
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, answer);
            let reason = format!(
                "sync request: over the rate limit of {} per second (bursts of {})",
                self.cfg.request_rate, self.cfg.request_burst
            );
            self.fault(peer, Some(req.doc), reason);
            return;
        }
        let tx = self.doc_tx(&req.doc);
        self.pulls.serve(&mut self.swarm, tx, req, channel);
    }
}
