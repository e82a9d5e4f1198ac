//! The peers a node keeps connected to: dialed at start (or when the app
//! asks), and re-dialed with exponential backoff whenever a dial fails or
//! the connection drops.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, Swarm};
use tracing::debug;

use super::behaviour::{peer_of, Behaviour};
use crate::sync::schedule::later;

/// A peer the node keeps connected to.
struct Configured {
    addr: Multiaddr,
    /// Its peer id: given in the address (`/p2p/…`, then checked on every
    /// dial), or learned from the last connection (not checked).
    peer: Option<PeerId>,
    pinned: bool,
    backoff: Duration,
    next: Option<Instant>,
    /// When our dial last succeeded: a connection must last before the
    /// backoff resets, or a peer that accepts and drops would be hammered.
    connected_at: Option<Instant>,
}

/// The configured peers, their dials in progress and their backoff.
pub(crate) struct Dialer {
    configured: Vec<Configured>,
    /// Dials in progress to configured peers (index into `configured`).
    dialing: HashMap<ConnectionId, usize>,
    redial_min: Duration,
    redial_max: Duration,
}

impl Dialer {
    /// No configured peers yet; backoff from `redial_min` up to `redial_max`.
    pub fn new(redial_min: Duration, redial_max: Duration) -> Dialer {
        Dialer { configured: Vec::new(), dialing: HashMap::new(), redial_min, redial_max }
    }

    /// Adds a configured peer (deduplicated) and dials it now.
    pub fn add(&mut self, swarm: &mut Swarm<Behaviour>, addr: Multiaddr) {
        let idx = match self.configured.iter().position(|c| c.addr == addr) {
            Some(i) => i,
            None => {
                let peer = peer_of(&addr);
                self.configured.push(Configured {
                    pinned: peer.is_some(),
                    peer,
                    addr,
                    backoff: self.redial_min,
                    next: None,
                    connected_at: None,
                });
                self.configured.len() - 1
            }
        };
        self.dial(swarm, idx);
    }

    fn dial(&mut self, swarm: &mut Swarm<Behaviour>, idx: usize) {
        let c = &mut self.configured[idx];
        c.next = None;
        if let Some(p) = c.peer {
            if swarm.is_connected(&p) || swarm.behaviour().blocked.blocked_peers().contains(&p) {
                return;
            }
        }
        let opts = match c.peer {
            Some(p) if c.pinned => DialOpts::peer_id(p)
                .addresses(vec![c.addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
            _ => DialOpts::unknown_peer_id().address(c.addr.clone()).build(),
        };
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                self.dialing.insert(id, idx);
            }
            Err(e) => {
                debug!(addr = %c.addr, error = %e, "dial not started");
                self.retry_later(idx);
            }
        }
    }

    fn retry_later(&mut self, idx: usize) {
        let max = self.redial_max;
        let c = &mut self.configured[idx];
        if c.next.is_none() {
            c.next = Some(later(Instant::now(), c.backoff));
            c.backoff = c.backoff.saturating_mul(2).min(max);
        }
    }

    /// Dials the configured peers whose backoff ended by `now`.
    pub fn redial_due(&mut self, swarm: &mut Swarm<Behaviour>, now: Instant) {
        for idx in 0..self.configured.len() {
            if self.configured[idx].next.is_some_and(|t| t <= now) {
                self.dial(swarm, idx);
            }
        }
    }

    /// Dials `peer` now, with a fresh backoff, if it is a configured peer.
    pub fn redial_peer(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        for idx in 0..self.configured.len() {
            if self.configured[idx].peer == Some(peer) {
                self.configured[idx].backoff = self.redial_min;
                self.dial(swarm, idx);
            }
        }
    }

    /// A connection was established: if it was our dial to a configured
    /// peer, that peer's id is now known.
    pub fn connected(&mut self, connection: ConnectionId, peer: PeerId) {
        if let Some(idx) = self.dialing.remove(&connection) {
            let c = &mut self.configured[idx];
            c.peer = Some(peer);
            c.next = None;
            c.connected_at = Some(Instant::now());
        }
    }

    /// The last connection to `peer` closed: re-dial it later if it is
    /// configured, with the backoff reset if the connection lasted.
    pub fn disconnected(&mut self, peer: PeerId) {
        for idx in 0..self.configured.len() {
            let c = &mut self.configured[idx];
            if c.peer == Some(peer) {
                if c.connected_at.take().is_some_and(|t| t.elapsed() >= self.redial_max) {
                    c.backoff = self.redial_min;
                }
                self.retry_later(idx);
            }
        }
    }

    /// A dial failed: retried later if it was to a configured peer.
    pub fn dial_failed(&mut self, connection: ConnectionId) {
        if let Some(idx) = self.dialing.remove(&connection) {
            self.retry_later(idx);
        }
    }

    /// When the next re-dial is due, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.configured.iter().filter_map(|c| c.next).min()
    }
}
