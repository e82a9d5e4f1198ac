//! How much each peer may ask of this node, and what happens when it
//! misbehaves: token buckets for sync requests (inbound, and our own
//! outbound pacing), a decaying fault score, and timed bans that double
//! for a peer banned again soon after its last ban.
//!
//! Pure bookkeeping: time is passed in and nothing here touches the swarm,
//! so tests drive it without a clock. The swarm driver acts on its answers
//! (refusing a request, closing and blocking a banned peer, lifting the
//! block when the ban ends).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::sync::schedule::later;

/// A repeat offender's ban is at most this many times the configured one.
const MAX_BAN_FACTOR: u32 = 64;
/// A peer's bans are remembered for this many of its last ban's durations
/// after that ban ends: banned again within that time, its ban doubles.
const BAN_MEMORY_FACTOR: u32 = 4;
/// Peers whose past bans are remembered at most (the oldest are forgotten
/// first): peer ids cost nothing to make, so the record must stay bounded.
const MAX_REMEMBERED_OFFENDERS: usize = 10_000;

/// Slack for floating-point rounding: a token due "now" by [`Bucket::ready_at`]
/// must be there when asked for at that instant.
const EPSILON: f64 = 1e-9;

/// A token bucket's parameters: `capacity` tokens, refilled continuously at
/// `rate` tokens per second. An infinite rate never runs out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limit {
    pub rate: f64,
    pub capacity: f64,
}

impl Limit {
    fn unlimited(&self) -> bool {
        self.rate.is_infinite()
    }
}

/// Tokens left in one bucket, as of `last`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: Limit, now: Instant) -> Bucket {
        Bucket { tokens: limit.capacity, last: now }
    }

    fn refill(&mut self, limit: Limit, now: Instant) {
        // `now` may be earlier than `last` if callers mix instants: no refill then.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.capacity);
        self.last = self.last.max(now);
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, limit: Limit, now: Instant) -> bool {
        if limit.unlimited() {
            return true;
        }
        self.refill(limit, now);
        if self.tokens >= 1.0 - EPSILON {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (`now` if one already is).
    pub fn ready_at(&self, limit: Limit, now: Instant) -> Instant {
        if limit.unlimited() {
            return now;
        }
        let mut b = *self;
        b.refill(limit, now);
        if b.tokens >= 1.0 - EPSILON {
            return now;
        }
        let wait = (1.0 - b.tokens) / limit.rate;
        // A zero rate (or an absurdly slow one) means "not in any foreseeable time".
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX);
        later(now, wait)
    }

    /// Back to full capacity: the same as a fresh bucket.
    fn is_full(&self, limit: Limit, now: Instant) -> bool {
        if limit.unlimited() {
            return true;
        }
        let mut b = *self;
        b.refill(limit, now);
        b.tokens >= limit.capacity - EPSILON
    }
}

/// What this node tracks about one peer.
#[derive(Debug, Clone, Copy)]
struct PeerState {
    /// Sync requests the peer may still send us.
    requests: Bucket,
    /// Sync requests we may still send the peer.
    pulls: Bucket,
    /// Faults the peer may still commit before it is banned.
    faults: Bucket,
}

/// The limits admission enforces (from the node's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdmissionConfig {
    /// Sync requests per second a peer may send, on average.
    pub request_rate: f64,
    /// Sync requests a peer may send in a burst above `request_rate`.
    pub request_burst: u32,
    /// Faults within `fault_window` before a peer is banned.
    pub max_faults: u32,
    /// Time over which `max_faults` faults are forgiven.
    pub fault_window: Duration,
    /// How long a first ban lasts.
    pub ban_duration: Duration,
}

/// Per-peer request limits, fault scores and bans.
#[derive(Debug)]
pub(crate) struct Admission {
    requests: Limit,
    pulls: Limit,
    faults: Limit,
    ban_duration: Duration,
    peers: HashMap<PeerId, PeerState>,
    /// Banned peers and when their ban ends.
    bans: HashMap<PeerId, Instant>,
    /// Peers banned before: the length of their last ban, and until when a
    /// new ban counts as a repeat.
    offenders: HashMap<PeerId, (Duration, Instant)>,
}

impl Admission {
    pub fn new(cfg: &AdmissionConfig) -> Admission {
        let requests = Limit { rate: cfg.request_rate, capacity: f64::from(cfg.request_burst) };
        // Our own requests keep to the same rate with half the burst: the other
        // half absorbs network jitter (a burst of ours arriving bunched up
        // behind a delayed one), so a peer with the same settings never
        // counts an honest node's requests as excess. With the defaults,
        // jitter of up to burst / (2 × rate) = 1 s is absorbed.
        let pulls = Limit { rate: cfg.request_rate, capacity: (f64::from(cfg.request_burst) / 2.0).max(1.0) };
        let max_faults = f64::from(cfg.max_faults);
        let faults = Limit { rate: max_faults / cfg.fault_window.as_secs_f64(), capacity: max_faults };
        Admission {
            requests,
            pulls,
            faults,
            ban_duration: cfg.ban_duration,
            peers: HashMap::new(),
            bans: HashMap::new(),
            offenders: HashMap::new(),
        }
    }

    fn state(&mut self, peer: PeerId, now: Instant) -> &mut PeerState {
        let (requests, pulls, faults) = (self.requests, self.pulls, self.faults);
        self.peers.entry(peer).or_insert_with(|| PeerState {
            requests: Bucket::full(requests, now),
            pulls: Bucket::full(pulls, now),
            faults: Bucket::full(faults, now),
        })
    }

    /// `peer` sent a sync request: true if it is within its rate limit.
    pub fn inbound_request(&mut self, peer: PeerId, now: Instant) -> bool {
        let limit = self.requests;
        self.state(peer, now).requests.take(limit, now)
    }

    /// True if we may send `peer` a sync request now (and count it).
    pub fn outbound_request(&mut self, peer: PeerId, now: Instant) -> bool {
        let limit = self.pulls;
        self.state(peer, now).pulls.take(limit, now)
    }

    /// When we may next send `peer` a sync request.
    pub fn outbound_ready_at(&self, peer: &PeerId, now: Instant) -> Instant {
        self.peers.get(peer).map_or(now, |s| s.pulls.ready_at(self.pulls, now))
    }

    /// Counts a fault of `peer`; true if that is one too many and the peer
    /// is to be banned.
    pub fn fault(&mut self, peer: PeerId, now: Instant) -> bool {
        let limit = self.faults;
        !self.state(peer, now).faults.take(limit, now)
    }

    /// Bans `peer` from now, forgetting its limits and score (it starts
    /// afresh when the ban ends); returns for how long. That is the
    /// configured duration, doubled for each earlier ban the peer had not
    /// yet lived down (up to [`MAX_BAN_FACTOR`] times).
    pub fn ban(&mut self, peer: PeerId, now: Instant) -> Duration {
        self.peers.remove(&peer);
        let duration = match self.offenders.get(&peer) {
            Some(&(last, until)) if now < until => {
                last.saturating_mul(2).min(self.ban_duration.saturating_mul(MAX_BAN_FACTOR)).max(self.ban_duration)
            }
            _ => self.ban_duration,
        };
        let ends = later(now, duration);
        self.bans.insert(peer, ends);
        let memory = later(ends, duration.saturating_mul(BAN_MEMORY_FACTOR));
        if self.offenders.len() >= MAX_REMEMBERED_OFFENDERS && !self.offenders.contains_key(&peer) {
            let oldest = self.offenders.iter().min_by_key(|(_, (_, until))| *until).map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.offenders.remove(&p);
            }
        }
        self.offenders.insert(peer, (duration, memory));
        duration
    }

    /// Whether `peer` is banned (by this bookkeeping; not blocked by the app).
    #[cfg(test)]
    fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.contains_key(peer)
    }

    /// Forgets `peer`'s ban without it ending: the app blocked or unblocked
    /// the peer itself, and its decision stands. True if it was banned.
    pub fn forget_ban(&mut self, peer: &PeerId) -> bool {
        self.bans.remove(peer).is_some()
    }

    /// Removes and returns the peers whose ban ended by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<PeerId> {
        let done: Vec<PeerId> = self.bans.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for p in &done {
            self.bans.remove(p);
        }
        done
    }

    /// When the next ban ends.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.bans.values().min().copied()
    }

    /// Forgets peers that are not connected and whose buckets are all full
    /// again: keeping them would change nothing, and the map stays bounded
    /// by the peers seen recently.
    pub fn prune(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) {
        self.offenders.retain(|_, (_, until)| *until > now);
        let (requests, pulls, faults) = (self.requests, self.pulls, self.faults);
        self.peers.retain(|p, s| {
            connected(p)
                || !(s.requests.is_full(requests, now) && s.pulls.is_full(pulls, now) && s.faults.is_full(faults, now))
        });
    }

    /// Peers tracked (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64, burst: u32, max_faults: u32) -> AdmissionConfig {
        AdmissionConfig {
            request_rate: rate,
            request_burst: burst,
            max_faults,
            fault_window: Duration::from_secs(10),
            ban_duration: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limit = Limit { rate: 10.0, capacity: 3.0 };
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        assert!((0..3).all(|_| b.take(limit, t0)));
        assert!(!b.take(limit, t0));
        assert_eq!(b.ready_at(limit, t0), t0 + Duration::from_millis(100));
        assert!(!b.take(limit, t0 + Duration::from_millis(50)));
        assert!(b.take(limit, t0 + Duration::from_millis(100)));
        // Refilling stops at the capacity.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.take(limit, later)));
        assert!(!b.take(limit, later));
        // An earlier instant than the last one seen refills nothing and does not panic.
        assert!(!b.take(limit, t0));
    }

    #[test]
    fn unlimited_and_never_refilled() {
        let t0 = Instant::now();
        let unlimited = Limit { rate: f64::INFINITY, capacity: 1.0 };
        let mut b = Bucket::full(unlimited, t0);
        assert!((0..1000).all(|_| b.take(unlimited, t0)));
        assert_eq!(b.ready_at(unlimited, t0), t0);
        let never = Limit { rate: 0.0, capacity: 1.0 };
        let mut b = Bucket::full(never, t0);
        assert!(b.take(never, t0));
        assert!(!b.take(never, t0 + Duration::from_secs(1000)));
        assert!(b.ready_at(never, t0) > t0 + Duration::from_secs(3600));
    }

    #[test]
    fn inbound_requests_are_limited_per_peer() {
        let mut a = Admission::new(&cfg(20.0, 40, 10));
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert!((0..40).all(|_| a.inbound_request(p, t0)));
        assert!(!a.inbound_request(p, t0));
        // Another peer has its own bucket.
        assert!(a.inbound_request(q, t0));
        // 20 per second: one more every 50 ms.
        assert!(a.inbound_request(p, t0 + Duration::from_millis(50)));
        assert!(!a.inbound_request(p, t0 + Duration::from_millis(60)));
    }

    #[test]
    fn outbound_pacing_keeps_half_the_burst_in_reserve() {
        let mut a = Admission::new(&cfg(20.0, 40, 10));
        let p = PeerId::random();
        let t0 = Instant::now();
        assert_eq!(a.outbound_ready_at(&p, t0), t0);
        assert!((0..20).all(|_| a.outbound_request(p, t0)));
        assert!(!a.outbound_request(p, t0));
        assert_eq!(a.outbound_ready_at(&p, t0), t0 + Duration::from_millis(50));
        // A peer with the same settings accepts everything we send, even
        // if the first half arrives a whole second late, bunched with the rest.
        let mut peer = Admission::new(&cfg(20.0, 40, 10));
        let us = PeerId::random();
        let mut sent = vec![t0; 20];
        let mut t = t0;
        while sent.len() < 200 {
            t = a.outbound_ready_at(&p, t);
            assert!(a.outbound_request(p, t));
            sent.push(t);
        }
        let arrival =
            |s: Instant| if s == t0 { t0 + Duration::from_secs(1) } else { s.max(t0 + Duration::from_secs(1)) };
        for s in sent {
            assert!(peer.inbound_request(us, arrival(s)), "a paced request was refused");
        }
    }

    #[test]
    fn faults_decay_and_too_many_ban() {
        let mut a = Admission::new(&cfg(20.0, 40, 3));
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(!(0..3).any(|_| a.fault(p, t0)), "three faults are tolerated");
        assert!(a.fault(p, t0), "the fourth in a row bans");
        // The score decays by max_faults per window: 3 per 10 s.
        let mut b = Admission::new(&cfg(20.0, 40, 3));
        let mut t = t0;
        for _ in 0..100 {
            assert!(!b.fault(p, t), "one fault every 4 s never bans");
            t += Duration::from_secs(4);
        }
    }

    #[test]
    fn bans_end_and_can_be_taken_over() {
        let mut a = Admission::new(&cfg(20.0, 40, 0));
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert!(a.fault(p, t0), "with max_faults 0 the first fault bans");
        a.ban(p, t0);
        a.ban(q, t0 + Duration::from_secs(1));
        assert!(a.is_banned(&p) && a.is_banned(&q));
        assert_eq!(a.next_expiry(), Some(t0 + Duration::from_secs(60)));
        assert!(a.expired(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(a.expired(t0 + Duration::from_secs(60)), vec![p]);
        assert!(!a.is_banned(&p));
        // The app blocks q meanwhile: its ban is forgotten and never expires.
        assert!(a.forget_ban(&q));
        assert!(!a.forget_ban(&q));
        assert!(a.expired(t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(a.next_expiry(), None);
    }

    #[test]
    fn repeat_offenders_are_banned_for_longer() {
        let mut a = Admission::new(&cfg(20.0, 40, 0));
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        assert_eq!(a.ban(p, t0), min);
        // Banned again soon after each ban ends: the ban doubles, up to 64×.
        let mut now = t0;
        let mut want = min;
        for _ in 0..8 {
            now += want + Duration::from_secs(1);
            assert_eq!(a.expired(now), vec![p]);
            want = (want * 2).min(min * 64);
            assert_eq!(a.ban(p, now), want);
        }
        assert_eq!(want, min * 64);
        // Lived down: four times the last ban after it ended, back to the start.
        now += want * 5;
        assert_eq!(a.expired(now), vec![p]);
        a.prune(now, |_| false);
        assert_eq!(a.ban(p, now), min);
        // Others are unaffected.
        assert_eq!(a.ban(q, now), min);
    }

    #[test]
    fn the_record_of_offenders_stays_bounded() {
        let mut a = Admission::new(&cfg(20.0, 40, 0));
        let t0 = Instant::now();
        let first = PeerId::random();
        a.ban(first, t0);
        for i in 0..MAX_REMEMBERED_OFFENDERS {
            a.ban(PeerId::random(), t0 + Duration::from_millis(1 + i as u64));
        }
        assert_eq!(a.offenders.len(), MAX_REMEMBERED_OFFENDERS);
        // The oldest was forgotten: its next ban is a first one.
        a.forget_ban(&first);
        assert_eq!(a.ban(first, t0 + Duration::from_secs(61)), Duration::from_secs(60));
    }

    #[test]
    fn a_ban_resets_the_score_and_idle_peers_are_forgotten() {
        let mut a = Admission::new(&cfg(20.0, 2, 1));
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert!(!a.fault(p, t0));
        assert!(a.fault(p, t0));
        a.ban(p, t0);
        assert!(!a.fault(p, t0), "a fresh score after the ban");
        assert!(a.inbound_request(q, t0));
        assert_eq!(a.tracked(), 2);
        // Connected peers stay; others stay until their buckets are full.
        a.prune(t0, |_| false);
        assert_eq!(a.tracked(), 2);
        a.prune(t0 + Duration::from_secs(3600), |x| *x == p);
        assert_eq!(a.tracked(), 1);
        a.prune(t0 + Duration::from_secs(3600), |_| false);
        assert_eq!(a.tracked(), 0);
    }
}
