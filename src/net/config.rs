//! A node's configuration, and the checks on it and on the names and
//! addresses it is given.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};

use super::admission::AdmissionConfig;
use super::error::NodeError;
use crate::replica::ReplicaOptions;
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
    /// requests over the rate limit; each is a [`NodeEvent::PeerFault`](super::NodeEvent::PeerFault))
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
