//! Sync requests in flight, both ways: ours, paced to each peer's rate
//! limit and awaiting an answer, and peers', awaiting their document
//! worker's answer.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, Swarm};
use tokio::sync::mpsc;
use tracing::debug;

use super::admission::Admission;
use super::behaviour::Behaviour;
use super::worker::DocCmd;
use crate::replica::Document;
use crate::sync::{self, Schedule, SyncRequest};

/// A sync request ready to send once the peer's rate allows.
pub(crate) struct DeferredPull<D: Document> {
    /// Document it is for.
    pub doc: String,
    /// The encoded request.
    pub bytes: Vec<u8>,
    /// A slot in the document's queue for the answer.
    pub slot: mpsc::OwnedPermit<DocCmd<D>>,
}

/// Sync requests in flight and held back.
pub(crate) struct Pulls<D: Document> {
    /// Our sync requests awaiting an answer.
    /// Each holds a slot in the document's queue for the answer, so a busy
    /// queue cannot make us throw away an answer we asked for.
    outbound: HashMap<OutboundRequestId, (PeerId, String, mpsc::OwnedPermit<DocCmd<D>>)>,
    /// Peers' sync requests awaiting their document worker's answer.
    inbound: HashMap<u64, (String, ResponseChannel<Vec<u8>>)>,
    next_token: u64,
    /// Our sync requests held back, per peer, to keep within its rate limit.
    deferred: HashMap<PeerId, VecDeque<DeferredPull<D>>>,
}

impl<D: Document> Pulls<D> {
    /// Nothing in flight.
    pub fn new() -> Pulls<D> {
        Pulls { outbound: HashMap::new(), inbound: HashMap::new(), next_token: 0, deferred: HashMap::new() }
    }

    /// Sends a sync request to `peer` now if its rate limit allows (and
    /// none is waiting before it), else queues it.
    pub fn pace(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        admission: &mut Admission,
        peer: PeerId,
        pull: DeferredPull<D>,
    ) {
        let queue_empty = self.deferred.get(&peer).is_none_or(VecDeque::is_empty);
        if queue_empty && admission.outbound_request(peer, Instant::now()) {
            self.send(swarm, peer, pull);
        } else {
            self.deferred.entry(peer).or_default().push_back(pull);
        }
    }

    fn send(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, pull: DeferredPull<D>) {
        let id = swarm.behaviour_mut().sync.send_request(&peer, pull.bytes.into());
        self.outbound.insert(id, (peer, pull.doc, pull.slot));
    }

    /// Drops the sync requests waiting to be sent to `peer` (it is gone):
    /// each ends as a failed pull, so its pair is not left in flight.
    pub fn drop_deferred(&mut self, schedule: &mut Schedule<PeerId>, peer: &PeerId) {
        let now = Instant::now();
        for pull in self.deferred.remove(peer).unwrap_or_default() {
            schedule.failed(peer, &pull.doc, now);
        }
    }

    /// Sends the queued sync requests that peers' rate limits now allow.
    pub fn send_deferred(&mut self, swarm: &mut Swarm<Behaviour>, admission: &mut Admission, now: Instant) {
        let peers: Vec<PeerId> = self.deferred.keys().copied().collect();
        for peer in peers {
            while self.deferred.get(&peer).is_some_and(|q| !q.is_empty()) && admission.outbound_request(peer, now) {
                if let Some(pull) = self.deferred.get_mut(&peer).and_then(VecDeque::pop_front) {
                    self.send(swarm, peer, pull);
                }
            }
        }
        self.deferred.retain(|_, q| !q.is_empty());
    }

    /// When the first held-back request may be sent, if any waits.
    pub fn deferred_ready_at(&self, admission: &Admission, now: Instant) -> Option<Instant> {
        self.deferred.keys().map(|peer| admission.outbound_ready_at(peer, now)).min()
    }

    /// Forgets document `name`'s requests. Peers' requests its worker will
    /// not answer now: dropping their channels tells the requesters at once.
    pub fn forget_doc(&mut self, name: &str) {
        self.inbound.retain(|_, (doc, _)| doc != name);
        for queue in self.deferred.values_mut() {
            queue.retain(|d| d.doc != name);
        }
        self.deferred.retain(|_, q| !q.is_empty());
    }

    /// A peer answered our request `id`: the answer goes to the document's
    /// queue, in the slot held for it.
    pub fn answered(&mut self, id: OutboundRequestId, response: Vec<u8>) {
        if let Some((peer, _, slot)) = self.outbound.remove(&id) {
            slot.send(DocCmd::Response { peer, bytes: response });
        }
    }

    /// Our request `id` failed: the peer and document it was for, if it
    /// was ours.
    pub fn failed(&mut self, id: OutboundRequestId) -> Option<(PeerId, String)> {
        self.outbound.remove(&id).map(|(peer, doc, _)| (peer, doc))
    }

    /// Hands a peer's well-formed request to its document's worker (`tx`),
    /// or answers at once when the document is not replicated here or its
    /// worker is too busy.
    pub fn serve(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        tx: Option<mpsc::Sender<DocCmd<D>>>,
        req: SyncRequest,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let Some(tx) = tx else {
            let answer = sync::encode_unknown_doc(&req.doc);
            let _ = swarm.behaviour_mut().sync.send_response(channel, answer);
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        let doc = req.doc.clone();
        match tx.try_send(DocCmd::Request { token, req }) {
            Ok(()) => {
                self.inbound.insert(token, (doc, channel));
            }
            Err(_) => {
                let answer = sync::encode_refusal(&doc, "busy");
                let _ = swarm.behaviour_mut().sync.send_response(channel, answer);
            }
        }
    }

    /// A document worker answered the peer's request `token`.
    pub fn respond(&mut self, swarm: &mut Swarm<Behaviour>, token: u64, bytes: Vec<u8>) {
        if let Some((_, ch)) = self.inbound.remove(&token) {
            if swarm.behaviour_mut().sync.send_response(ch, bytes).is_err() {
                debug!("sync answer not sent: the requester is gone");
            }
        }
    }
}
