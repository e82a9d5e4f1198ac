//! The public face of a node: its configuration, events, errors and the
//! cloneable handle an app drives it with.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::admission::AdmissionConfig;
use super::traffic::{Counters, Traffic};
use super::worker::DocCmd;
use crate::replica::{ActorId, Change, Document, OpEnvelope, Replica, ReplicaError, ReplicaOptions};
use crate::sync::Limits;

/// Configuration of a [`Node`](super::Node).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Data directory: the node's identity and one replica per document.
    pub data_dir: PathBuf,
    /// Addresses to listen on (default `/ip4/127.0.0.1/tcp/0`).
    pub listen: Vec<Multiaddr>,
    /// Peers to stay connected to: dialed at start and re-dialed with
    /// backoff whenever the connection fails or drops. Include
    /// `/p2p/<peer id>` to authenticate the peer.
    pub peers: Vec<Multiaddr>,
    /// Documents opened at start.
    pub docs: Vec<String>,
    /// Mean time between anti-entropy rounds with each peer (±25% jitter).
    pub sync_interval: Duration,
    /// Most operation bytes asked for in one sync answer.
    pub sync_budget: u64,
    /// Size limits of incoming messages.
    pub limits: Limits,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Options of every document's replica.
    pub replica: ReplicaOptions,
    /// First delay before re-dialing a configured peer; doubles per failure.
    pub redial_min: Duration,
    /// Longest delay between re-dials.
    pub redial_max: Duration,
    /// Time a sync request may take before it is abandoned.
    pub request_timeout: Duration,
    /// Gossipsub heartbeat (mesh maintenance) interval.
    pub heartbeat: Duration,
    /// Peers whose snapshots are merged (a snapshot is taken on trust:
    /// it carries no signatures). `None`: any peer allowed to connect.
    /// Snapshots from other peers are not applied; operations still are.
    pub snapshot_peers: Option<BTreeSet<PeerId>>,
    /// The only peers this node connects to, in either direction; `None`
    /// (the default) admits any peer. A connection with any other peer is
    /// closed as soon as its peer id is known (after the noise handshake),
    /// and mDNS discoveries of other peers are not dialed. Every peer in
    /// `peers` that names its id (`/p2p/…`) must be in the list.
    pub allow: Option<BTreeSet<PeerId>>,
    /// Pre-shared key of a private network (libp2p pnet): every connection
    /// is encrypted with it below noise, so only nodes holding the same key
    /// can connect at all. `None` (the default): a public network. Read the
    /// standard `swarm.key` file with [`read_psk_file`](super::read_psk_file).
    pub psk: Option<PreSharedKey>,
    /// Sync requests each peer may send per second, on average (default
    /// 20). Requests over the limit are refused and count as faults. This
    /// node paces its own requests to each peer by the same rate (with half
    /// the burst), so nodes with equal settings never exceed each other's
    /// limit. `f64::INFINITY` disables the limit.
    pub request_rate: f64,
    /// Sync requests a peer may send in a burst above `request_rate`
    /// (default 40). Honest anti-entropy has at most one request per
    /// document in flight to each peer.
    pub request_burst: u32,
    /// Faults a peer may commit in a burst (malformed or oversize messages,
    /// requests over the rate limit; each is a [`NodeEvent::PeerFault`])
    /// before it is banned; the count decays by `max_faults` per
    /// `fault_window`. Default 20 per minute. `u32::MAX` practically never bans.
    pub max_faults: u32,
    /// Time over which `max_faults` faults are forgiven (default 60 s).
    pub fault_window: Duration,
    /// How long a peer with too many faults stays disconnected and blocked
    /// (default 60 s); configured peers are re-dialed when it ends. A peer
    /// banned again within four times its last ban's length after that ban
    /// ended is banned for twice as long as before, up to 64 times this.
    pub ban_duration: Duration,
}

impl NodeConfig {
    /// Defaults for a node keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr literal")],
            peers: Vec::new(),
            docs: Vec::new(),
            sync_interval: Duration::from_secs(5),
            sync_budget: 1 << 20,
            limits: Limits::default(),
            mdns: false,
            replica: ReplicaOptions::default(),
            redial_min: Duration::from_millis(200),
            redial_max: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_millis(500),
            snapshot_peers: None,
            allow: None,
            psk: None,
            request_rate: 20.0,
            request_burst: 40,
            max_faults: 20,
            fault_window: Duration::from_secs(60),
            ban_duration: Duration::from_secs(60),
        }
    }

    /// Checks settings that would otherwise fail silently or never work: a
    /// configured peer outside the allow-list, or limits out of range.
    pub(crate) fn check(&self) -> Result<(), NodeError> {
        for addr in &self.peers {
            check_allowed(self.allow.as_ref(), addr)?;
        }
        if self.request_rate.is_nan() || self.request_rate <= 0.0 {
            return Err(NodeError::Config(format!(
                "request_rate must be above 0 requests per second (f64::INFINITY for no limit), not {}",
                self.request_rate
            )));
        }
        if self.request_burst == 0 {
            return Err(NodeError::Config("request_burst must be at least 1".into()));
        }
        if self.fault_window.is_zero() {
            return Err(NodeError::Config("fault_window must be longer than 0".into()));
        }
        Ok(())
    }

    /// The replica directory of document `doc`.
    pub fn doc_dir(&self, doc: &str) -> PathBuf {
        doc_dir(&self.data_dir, doc)
    }

    /// The request limits, fault scores and bans peers are held to.
    pub(crate) fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            request_rate: self.request_rate,
            request_burst: self.request_burst,
            max_faults: self.max_faults,
            fault_window: self.fault_window,
            ban_duration: self.ban_duration,
        }
    }
}

pub(crate) fn doc_dir(data_dir: &Path, doc: &str) -> PathBuf {
    data_dir.join("docs").join(doc)
}

/// Fails if `addr` names a peer (`/p2p/…`) that `allow` does not admit: the
/// node would dial it forever and be refused each time.
pub(crate) fn check_allowed(allow: Option<&BTreeSet<PeerId>>, addr: &Multiaddr) -> Result<(), NodeError> {
    let named = addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    });
    match (allow, named) {
        (Some(allow), Some(peer)) if !allow.contains(&peer) => {
            Err(NodeError::Config(format!("peer {addr} is not in the allow-list")))
        }
        _ => Ok(()),
    }
}

/// Errors of a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The identity file is unusable.
    #[error("identity {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the data directory could not be created, written or read.
    #[error(transparent)]
    Storage(#[from] crate::wal::Error),
    /// Another node holds the data directory (its lock file,
    /// [`LOCK_FILE`](super::LOCK_FILE)): a data directory is one node's,
    /// since two nodes on it would share one peer id.
    #[error("data directory {} is locked by another node{}", dir.display(), holder(*pid))]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The process id the holder wrote in the lock file, if readable:
        /// for display only, it may be stale.
        pid: Option<u32>,
    },
    /// A replica failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The document's replica failed (its log could not be written, for
    /// example on a full disk) and is being reopened
    /// ([`NodeEvent::DocumentFailed`]); try again after
    /// [`NodeEvent::DocumentReopened`].
    #[error("document {doc:?} is unavailable until it is reopened: {reason}")]
    DocUnavailable {
        /// The document.
        doc: String,
        /// The failure that took it down.
        reason: String,
    },
    /// A document name that cannot be used locally.
    #[error("bad document name {0:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with '.')")]
    BadDocName(String),
    /// The document is not open on this node.
    #[error("document {0:?} is not open")]
    UnknownDoc(String),
    /// The document is already open.
    #[error("document {0:?} is already open")]
    DocOpen(String),
    /// Listening or dialing failed.
    #[error("network: {0}")]
    Transport(String),
    /// The pre-shared key file is unusable.
    #[error("pre-shared key file {path}: {reason}")]
    Psk {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration is inconsistent or out of range.
    #[error("configuration: {0}")]
    Config(String),
    /// The node has shut down, or dropped the request (its closure panicked).
    #[error("the node has shut down or dropped the request")]
    Stopped,
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| " (its process id is unknown)".to_string(), |p| format!(" (process {p})"))
}

/// Something that happened on a node.
#[derive(Debug, Clone)]
pub enum NodeEvent<O> {
    /// Listening on this address (it ends with `/p2p/<peer id>`).
    Listening {
        /// Full address to give to peers.
        addr: Multiaddr,
    },
    /// First connection to a peer established.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address on this connection.
        addr: Multiaddr,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A change was applied to a document (local or remote).
    Changed {
        /// Document name.
        doc: String,
        /// What changed.
        change: Change<O>,
    },
    /// An anti-entropy answer brought something new.
    Synced {
        /// Document name.
        doc: String,
        /// Peer that answered.
        peer: PeerId,
        /// Operations applied.
        applied: usize,
        /// A snapshot was merged.
        snapshot: bool,
    },
    /// A peer answered with a snapshot, which was not merged because the
    /// peer is not in [`NodeConfig::snapshot_peers`]. Operations after its
    /// truncation point still come from any peer; what the snapshot covers
    /// must come from a trusted one.
    SnapshotRefused {
        /// Document name.
        doc: String,
        /// The peer that sent it.
        peer: PeerId,
    },
    /// An actor signed two different operations for one sequence number.
    /// The first one this node saw stays; the other is rejected. The
    /// actor's key is compromised or its owner is cheating.
    Equivocation {
        /// Document name.
        doc: String,
        /// The actor whose key signed both.
        actor: ActorId,
        /// The sequence number.
        seq: u64,
        /// The peer that delivered the second one (not necessarily at fault:
        /// it may have relayed it in good faith).
        peer: PeerId,
    },
    /// A document's replica found something wrong and worked around it:
    /// a damaged checkpoint (it opened from the older generation), or its
    /// actor retired because peers hold more of its history (a restore or
    /// a rollback; see [`Recovered`](crate::replica::Recovered)). Nothing
    /// acknowledged was lost; the damaged file is kept for inspection.
    Recovered {
        /// Document name.
        doc: String,
        /// What was found and done.
        note: crate::replica::Recovered,
    },
    /// A peer sent something invalid, or a sync request over its rate
    /// limit; it was rejected, and counts toward a ban
    /// ([`NodeConfig::max_faults`]).
    PeerFault {
        /// The peer.
        peer: PeerId,
        /// The document concerned, if known.
        doc: Option<String>,
        /// What was wrong.
        reason: String,
    },
    /// A document's replica failed: its log could not be written (a full
    /// disk, an I/O error) and it refuses every write since, with nothing
    /// unacknowledged reported as written. The node drops the replica and
    /// reopens it (recovery decides what survived) with a backoff from
    /// 100 ms doubling to 30 s; meanwhile `update` and `with` on the document
    /// fail with [`NodeError::DocUnavailable`] and its sync is paused.
    DocumentFailed {
        /// Document name.
        doc: String,
        /// What failed.
        error: String,
    },
    /// A document that failed ([`NodeEvent::DocumentFailed`]) was reopened
    /// and takes writes again. If the cause persists (the disk is still
    /// full), the next write fails it again.
    DocumentReopened {
        /// Document name.
        doc: String,
    },
    /// A peer committed too many faults (see [`NodeConfig::max_faults`]):
    /// it was disconnected and its connections are refused for
    /// [`NodeConfig::ban_duration`] (longer for a repeat offender).
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// Why: the limit exceeded, the last fault, and for how long.
        reason: String,
    },
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its id.
    pub peer: PeerId,
    /// Addresses of the open connections.
    pub addrs: Vec<Multiaddr>,
    /// Documents it announced (that this node also has or not).
    pub docs: Vec<String>,
}

pub(crate) type DocSenders<D> = Arc<Mutex<HashMap<String, mpsc::Sender<DocCmd<D>>>>>;

/// What a [`NodeHandle`] asks of the task driving the swarm.
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

/// A cloneable handle to a running node.
pub struct NodeHandle<D: Document> {
    pub(crate) peer_id: PeerId,
    pub(crate) control: mpsc::UnboundedSender<Control<D>>,
    pub(crate) docs: DocSenders<D>,
    pub(crate) events: broadcast::Sender<NodeEvent<D::Operation>>,
    pub(crate) counters: Arc<Counters>,
}

impl<D: Document> Clone for NodeHandle<D> {
    fn clone(&self) -> Self {
        NodeHandle {
            peer_id: self.peer_id,
            control: self.control.clone(),
            docs: self.docs.clone(),
            events: self.events.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// Checks that `name` is usable as a local document (and directory) name.
pub fn check_local_doc_name(name: &str) -> Result<(), NodeError> {
    let ok = !name.is_empty()
        && name.len() <= crate::sync::MAX_DOC_NAME
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NodeError::BadDocName(name.chars().take(160).collect()))
    }
}

impl<D: Document> NodeHandle<D> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_doc_names() {
        for ok in ["default", "notes-2026", "a.b_c"] {
            assert!(check_local_doc_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(check_local_doc_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configured_peers_must_be_allowed() {
        let (listed, other) = (PeerId::random(), PeerId::random());
        let at = |p: PeerId| -> Multiaddr { format!("/ip4/127.0.0.1/tcp/1/p2p/{p}").parse().unwrap() };
        let anonymous: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let mut cfg = NodeConfig::new("/nonexistent");
        cfg.peers = vec![at(listed), at(other), anonymous.clone()];
        assert!(cfg.check().is_ok(), "no allow-list: anyone");
        cfg.allow = Some([listed].into());
        match cfg.check() {
            Err(e @ NodeError::Config(_)) => assert!(e.to_string().contains(&other.to_string()), "{e}"),
            other => panic!("{other:?}"),
        }
        // Without a peer id the handshake decides.
        cfg.peers = vec![at(listed), anonymous];
        assert!(cfg.check().is_ok());
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        let ok = NodeConfig::new("/nonexistent");
        assert!(ok.check().is_ok());
        let mut unlimited = ok.clone();
        unlimited.request_rate = f64::INFINITY;
        assert!(unlimited.check().is_ok());
        type Spoil = fn(&mut NodeConfig);
        let bad: Vec<(&str, Spoil)> = vec![
            ("request_rate", |c| c.request_rate = 0.0),
            ("request_rate", |c| c.request_rate = -1.0),
            ("request_rate", |c| c.request_rate = f64::NAN),
            ("request_burst", |c| c.request_burst = 0),
            ("fault_window", |c| c.fault_window = Duration::ZERO),
        ];
        for (name, spoil) in bad {
            let mut cfg = ok.clone();
            spoil(&mut cfg);
            match cfg.check() {
                Err(e @ NodeError::Config(_)) => assert!(e.to_string().contains(name), "{e}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
