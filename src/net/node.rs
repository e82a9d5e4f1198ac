//! The node an app drives (a cloneable handle), and the requests it
//! sends to the task driving the swarm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::config::check_local_doc_name;
use super::error::NodeError;
use super::event::{NodeEvent, PeerInfo};
use super::traffic::{Counters, Traffic};
use super::worker::DocCmd;
use crate::replica::{Document, OpEnvelope, Replica};

pub(crate) type DocSenders<D> = Arc<Mutex<HashMap<String, mpsc::Sender<DocCmd<D>>>>>;

/// What a [`Node`] asks of the task driving the swarm.
pub(crate) enum Control<D: Document> {
    OpenDoc {
        name: String,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    CloseDoc {
        name: String,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Connect {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Block {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Unblock {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Abort,
    /// A document worker started (or failed to) for an `OpenDoc`.
    Opened {
        name: String,
        tx: mpsc::Sender<DocCmd<D>>,
        result: Result<std::thread::JoinHandle<()>, NodeError>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// A running node, started with [`Node::start`]: a cloneable handle to it
/// (every clone drives the same node).
pub struct Node<D: Document> {
    pub(crate) peer_id: PeerId,
    pub(crate) control: mpsc::UnboundedSender<Control<D>>,
    pub(crate) docs: DocSenders<D>,
    pub(crate) events: broadcast::Sender<NodeEvent<D::Operation>>,
    pub(crate) counters: Arc<Counters>,
}

impl<D: Document> Clone for Node<D> {
    fn clone(&self) -> Self {
        Node {
            peer_id: self.peer_id,
            control: self.control.clone(),
            docs: self.docs.clone(),
            events: self.events.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<D: Document> Node<D> {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Bytes sent and received on all connections since the node started
    /// (everything on the wire: encryption, multiplexing and protocol framing).
    pub fn traffic(&self) -> Traffic {
        self.counters.get()
    }

    /// Events from now on. A receiver that falls more than 4096 events
    /// behind gets `RecvError::Lagged` and should re-read the state it shows.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent<D::Operation>> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Control<D>) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(make(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    fn sender(&self, doc: &str) -> Result<mpsc::Sender<DocCmd<D>>, NodeError> {
        if self.control.is_closed() {
            return Err(NodeError::Stopped);
        }
        let docs = self.docs.lock().map_err(|_| NodeError::Stopped)?;
        docs.get(doc).cloned().ok_or_else(|| NodeError::UnknownDoc(doc.to_string()))
    }

    /// Opens (creating if needed) document `doc` and starts replicating it
    /// with every peer that has it.
    pub async fn open_doc(&self, doc: &str) -> Result<(), NodeError> {
        check_local_doc_name(doc)?;
        self.ask(|reply| Control::OpenDoc { name: doc.to_string(), reply }).await?
    }

    /// Stops replicating `doc` and closes its replica (everything durable).
    pub async fn close_doc(&self, doc: &str) -> Result<(), NodeError> {
        self.ask(|reply| Control::CloseDoc { name: doc.to_string(), reply }).await?
    }

    /// Writes a local operation built by `make` from the current state and
    /// this replica's actor. Returns once the operation is durable; it is
    /// then applied and pushed to peers. Fails with
    /// [`NodeError::DocUnavailable`] while the document is being reopened
    /// after a failure ([`NodeEvent::DocumentFailed`]).
    pub async fn update<F>(&self, doc: &str, make: F) -> Result<OpEnvelope<D::Operation>, NodeError>
    where
        F: FnOnce(&D, crate::replica::ActorId) -> D::Operation + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let tx = self.sender(doc)?;
        tx.send(DocCmd::Write { make: Box::new(make), reply }).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` on the replica of `doc` (on its own thread) and returns its
    /// result: read the document, its clock, or checkpoint it. `f` holds up
    /// the document's writes and sync while it runs, and must not wait on
    /// this node. Fails with [`NodeError::DocUnavailable`] while the
    /// document is being reopened after a failure.
    pub async fn with<R, F>(&self, doc: &str, f: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Replica<D>) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let tx = self.sender(doc)?;
        let job = Box::new(move |r: Result<&mut Replica<D>, NodeError>| {
            let _ = reply.send(r.map(f));
        });
        tx.send(DocCmd::With(job)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Dials `addr` now and keeps re-dialing it like a configured peer.
    /// Fails with [`NodeError::Config`] if it names a peer outside the
    /// allow-list.
    pub async fn connect(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.ask(|reply| Control::Connect { addr, reply }).await?
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeError> {
        self.ask(|reply| Control::Peers { reply }).await
    }

    /// Addresses this node listens on (each ending in `/p2p/<peer id>`).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(|reply| Control::ListenAddrs { reply }).await
    }

    /// Refuses and closes every connection with `peer` (both directions)
    /// until [`unblock`](Self::unblock): a partition. A peer banned for
    /// its faults stays blocked when its ban would have ended.
    pub async fn block(&self, peer: PeerId) -> Result<(), NodeError> {
        self.ask(|reply| Control::Block { peer, reply }).await
    }

    /// Lifts [`block`](Self::block), or a ban, and re-dials the peer if it
    /// is configured.
    pub async fn unblock(&self, peer: PeerId) -> Result<(), NodeError> {
        self.ask(|reply| Control::Unblock { peer, reply }).await
    }

    /// Stops the node abruptly, as a crash of its process would as far as
    /// peers and acknowledged writes are concerned: connections drop
    /// without a goodbye and writes not yet acknowledged may be lost. Each
    /// document's log is still released when its queue drains, so the data
    /// directory can be reopened in the same process. For tests and demos.
    pub fn abort(self) {
        let _ = self.control.send(Control::Abort);
    }

    /// Shuts the node down: every document closed (acknowledged operations
    /// were already durable; the logs are synced and closed), then every
    /// connection closed.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.ask(|reply| Control::Shutdown { reply }).await?
    }
}
