//! What a node reports: its events, and what it knows of a connected peer.

use libp2p::{Multiaddr, PeerId};

use crate::replica::{ActorId, Change};

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
    /// peer is not in [`NodeConfig::snapshot_peers`](super::NodeConfig::snapshot_peers). Operations after its
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
        /// Both signed histories, which anyone can check
        /// ([`EquivocationProof::verify`](crate::replica::EquivocationProof::verify))
        /// without trusting this node; `None` where this node no longer
        /// holds its own side in the log (checkpointed away).
        proof: Option<Box<crate::replica::EquivocationProof>>,
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
    /// ([`NodeConfig::max_faults`](super::NodeConfig::max_faults)).
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
    /// fail with [`NodeError::DocUnavailable`](super::NodeError::DocUnavailable) and its sync is paused.
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
    /// A peer committed too many faults (see [`NodeConfig::max_faults`](super::NodeConfig::max_faults)):
    /// it was disconnected and its connections are refused for
    /// [`NodeConfig::ban_duration`](super::NodeConfig::ban_duration) (longer for a repeat offender).
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
