//! When to pull from whom: the anti-entropy schedule of (peer, document)
//! pairs. Time is passed in, so tests drive it without a clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Pair {
    in_flight: bool,
    due: Instant,
    /// False once removed while a request was in flight: the pair is kept
    /// until that request ends, so that adding it back (a peer that
    /// unsubscribes and subscribes again) does not start a second one.
    active: bool,
    /// Added (again) while a request was in flight: due as soon as it ends.
    again: bool,
}

impl Pair {
    /// Stops the pair; true if it must still be kept, until its request ends.
    fn retire(&mut self) -> bool {
        self.active = false;
        self.in_flight
    }
}

/// Decides which (peer, document) pairs to send a sync request to.
///
/// A pair is due as soon as it is added (the node learns that a connected
/// peer has the document: its gossip subscription arrives, or the node opens
/// a document the peer already announced), again right after an answer that said "more",
/// and otherwise every `interval` with ±25% jitter so that peers do not
/// synchronise their rounds. At most one request per pair is in flight,
/// also when the pair is removed and added again meanwhile.
///
/// ```
/// use std::time::{Duration, Instant};
/// use walrus::sync::Schedule;
/// let mut s = Schedule::new(Duration::from_secs(5), 1);
/// let now = Instant::now();
/// s.add("peer-1", "notes", now);
/// assert_eq!(s.due(now), vec![("peer-1", "notes".to_string())]);
/// assert!(s.due(now).is_empty()); // in flight
/// s.completed(&"peer-1", "notes", false, now);
/// assert!(s.due(now + Duration::from_secs(7)).len() == 1);
/// ```
#[derive(Debug)]
pub struct Schedule<P> {
    interval: Duration,
    pairs: BTreeMap<(P, String), Pair>,
    rng: fastrand::Rng,
}

impl<P: Ord + Clone> Schedule<P> {
    /// A schedule with rounds every `interval` (jittered); `seed` drives the jitter.
    pub fn new(interval: Duration, seed: u64) -> Schedule<P> {
        Schedule { interval, pairs: BTreeMap::new(), rng: fastrand::Rng::with_seed(seed) }
    }

    fn jittered(&mut self) -> Duration {
        let permille = self.rng.u32(750..=1250); // 0.75 .. 1.25
                                                 // Saturating: an absurd interval means "practically never", not a panic.
        self.interval.checked_mul(permille).map_or(Duration::MAX, |d| d / 1000)
    }

    /// `peer` replicates `doc`: pull from it now.
    pub fn add(&mut self, peer: P, doc: &str, now: Instant) {
        let pair = self.pairs.entry((peer, doc.to_string())).or_insert(Pair {
            in_flight: false,
            due: now,
            active: true,
            again: false,
        });
        pair.due = now;
        pair.active = true;
        pair.again = pair.in_flight;
    }

    /// Stops pulling `doc` from `peer`.
    pub fn remove(&mut self, peer: &P, doc: &str) {
        let key = (peer.clone(), doc.to_string());
        if self.pairs.get_mut(&key).is_some_and(|pair| !pair.retire()) {
            self.pairs.remove(&key);
        }
    }

    /// Stops pulling anything from `peer` (it disconnected).
    pub fn remove_peer(&mut self, peer: &P) {
        self.pairs.retain(|(p, _), pair| p != peer || pair.retire());
    }

    /// Forgets every pair of `doc` (it was closed).
    pub fn remove_doc(&mut self, doc: &str) {
        self.pairs.retain(|(_, d), _| d != doc);
    }

    /// Pull `doc` from `peer` as soon as possible (for example after its
    /// gossip revealed a gap).
    pub fn poke(&mut self, peer: &P, doc: &str, now: Instant) {
        if let Some(pair) = self.pairs.get_mut(&(peer.clone(), doc.to_string())) {
            pair.due = pair.due.min(now);
        }
    }

    /// The pairs to send a request to now; they are marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<(P, String)> {
        let mut out = Vec::new();
        for (key, pair) in self.pairs.iter_mut() {
            if pair.active && !pair.in_flight && pair.due <= now {
                pair.in_flight = true;
                out.push(key.clone());
            }
        }
        out
    }

    /// The answer for a pair arrived and was applied; `more` if the peer has more.
    pub fn completed(&mut self, peer: &P, doc: &str, more: bool, now: Instant) {
        let next = if more { now } else { later(now, self.jittered()) };
        let key = (peer.clone(), doc.to_string());
        if let Some(pair) = self.pairs.get_mut(&key) {
            if !pair.active {
                self.pairs.remove(&key);
                return;
            }
            pair.in_flight = false;
            pair.due = if std::mem::take(&mut pair.again) { now } else { next };
        }
    }

    /// The request for a pair failed; try again after a round.
    pub fn failed(&mut self, peer: &P, doc: &str, now: Instant) {
        self.completed(peer, doc, false, now);
    }

    /// The earliest time a pair not in flight becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pairs.values().filter(|p| p.active && !p.in_flight).map(|p| p.due).min()
    }

    /// Pairs known (not counting removed ones whose request is still in flight).
    pub fn len(&self) -> usize {
        self.pairs.values().filter(|p| p.active).count()
    }

    /// No pairs known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `now + d`, or far in the future if that overflows.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600))).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(4), 7);
        s.add(1u8, "a", t0);
        s.add(2u8, "a", t0);
        s.add(2u8, "b", t0);
        assert_eq!(s.due(t0).len(), 3);
        assert!(s.due(t0).is_empty());
        assert_eq!(s.next_due(), None);
        s.completed(&1, "a", true, t0);
        assert_eq!(s.due(t0), vec![(1, "a".to_string())]);
        s.completed(&1, "a", false, t0);
        s.failed(&2, "a", t0);
        s.completed(&2, "b", false, t0);
        let next = s.next_due().unwrap();
        assert!(next >= t0 + Duration::from_secs(3) && next <= t0 + Duration::from_secs(5));
        assert!(s.due(t0 + Duration::from_secs(2)).is_empty());
        let t2 = t0 + Duration::from_secs(2);
        s.poke(&1, "a", t2);
        assert_eq!(s.due(t2), vec![(1, "a".to_string())]);
        s.poke(&2, "a", t2);
        assert_eq!(s.due(t2), vec![(2, "a".to_string())]);
        s.remove_peer(&2);
        assert_eq!(s.len(), 1);
        s.remove_doc("a");
        assert!(s.is_empty());
    }

    #[test]
    fn removing_and_adding_back_never_doubles_a_request() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(4), 7);
        s.add(1u8, "a", t0);
        assert_eq!(s.due(t0).len(), 1);
        // A peer unsubscribing and subscribing again, over and over, while
        // the request is in flight: no second request.
        for _ in 0..100 {
            s.remove(&1, "a");
            assert!(s.is_empty());
            s.add(1, "a", t0);
            assert!(s.due(t0).is_empty(), "a second request while one is in flight");
        }
        // Added back: due as soon as the request ends, then as usual.
        s.completed(&1, "a", false, t0);
        assert_eq!(s.due(t0).len(), 1);
        s.completed(&1, "a", false, t0);
        assert!(s.due(t0).is_empty());
        // Removed for good while in flight: gone when the request ends.
        s.remove(&1, "a");
        s.failed(&1, "a", t0);
        s.add(2, "a", t0);
        assert_eq!(s.due(t0 + Duration::from_secs(60)), vec![(2, "a".to_string())]);
        // The same across a reconnection.
        s.remove_peer(&2);
        s.add(2, "a", t0);
        assert!(s.due(t0).is_empty());
        s.failed(&2, "a", t0);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn absurd_intervals_do_not_panic() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::MAX, 3);
        s.add(1u8, "a", t0);
        assert_eq!(s.due(t0).len(), 1);
        s.completed(&1, "a", false, t0);
        assert!(s.next_due().unwrap() > t0 + Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let mut s: Schedule<u8> = Schedule::new(Duration::from_millis(1000), 99);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = s.jittered().as_millis();
            assert!((750..=1250).contains(&d), "{d}");
            seen.insert(d / 50);
        }
        assert!(seen.len() > 5, "jitter must spread: {seen:?}");
    }
}
