//! Faults, bans and blocks: what the driver does when a peer misbehaves
//! or the app blocks it.

use std::time::Instant;

use libp2p::PeerId;
use tracing::{info, warn};

use super::Driver;
use crate::net::event::NodeEvent;
use crate::replica::Document;

impl<D: Document> Driver<D> {
    /// Whether this node would connect to `peer` now: on the allow-list
    /// (if there is one), and neither blocked nor banned.
    pub(super) fn admits(&self, peer: &PeerId) -> bool {
        let b = self.swarm.behaviour();
        let allowed = b.allowed.as_ref().is_none_or(|list| list.allowed_peers().contains(peer));
        allowed && !b.blocked.blocked_peers().contains(peer)
    }

    /// A peer sent something invalid or too much: reports it, and bans the
    /// peer once it has too many faults.
    pub(super) fn fault(&mut self, peer: PeerId, doc: Option<String>, reason: String) {
        self.emit(NodeEvent::PeerFault { peer, doc, reason: reason.clone() });
        // Faults still queued from a peer already banned or blocked by the
        // app change nothing (and must not turn an app's block into a ban).
        if self.swarm.behaviour().blocked.blocked_peers().contains(&peer) {
            return;
        }
        if self.admission.fault(peer, Instant::now()) {
            let reason =
                format!("more than {} faults in {:?}; the last: {reason}", self.cfg.max_faults, self.cfg.fault_window);
            self.ban(peer, reason);
        }
    }

    /// Disconnects `peer` and refuses it for the ban duration (longer for
    /// a repeat offender).
    pub(super) fn ban(&mut self, peer: PeerId, reason: String) {
        let duration = self.admission.ban(peer, Instant::now());
        warn!(%peer, %reason, ?duration, "peer banned");
        let reason = format!("{reason}; banned for {duration:?}");
        // Closes its connections and refuses new ones, both ways.
        self.block(peer);
        self.schedule.remove_peer(&peer);
        self.pulls.drop_deferred(&mut self.schedule, &peer);
        self.emit(NodeEvent::PeerBanned { peer, reason });
    }

    /// Closes `peer`'s connections and refuses new ones, both ways; what it
    /// sent that is still queued is dropped unread.
    pub(super) fn block(&mut self, peer: PeerId) {
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        if let Ok(mut set) = self.blocked.write() {
            set.insert(peer);
        }
    }

    pub(super) fn unblock(&mut self, peer: PeerId) {
        self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        if let Ok(mut set) = self.blocked.write() {
            set.remove(&peer);
        }
    }

    /// Lifts the bans that ended, and re-dials those peers if configured.
    pub(super) fn end_bans(&mut self, now: Instant) {
        for peer in self.admission.expired(now) {
            info!(%peer, "ban ended");
            self.unblock(peer);
            self.dialer.redial_peer(&mut self.swarm, peer);
        }
    }
}
