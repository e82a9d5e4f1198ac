//! Version vectors: for each actor, how many of its operations are applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ActorId;

/// For each actor, the highest sequence number applied; operations of an
/// actor are applied in sequence order, so this also says *which* ones.
/// Ordered (a `BTreeMap`), so its encoding is canonical.
///
/// ```
/// use walrus::replica::{ActorId, VersionVector};
/// let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
/// let mut mine = VersionVector::default();
/// mine.observe(a, 3);
/// let mut theirs = VersionVector::default();
/// theirs.observe(a, 1);
/// theirs.observe(b, 2);
/// assert!(!mine.covers(&theirs));
/// mine.merge(&theirs);
/// assert!(mine.covers(&theirs));
/// assert_eq!(mine.get(&a), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ActorId, u64>);

impl VersionVector {
    /// Highest applied sequence number of `actor` (0: none).
    pub fn get(&self, actor: &ActorId) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Records that `actor`'s operations up to `seq` are applied. Never
    /// moves backwards.
    pub fn observe(&mut self, actor: ActorId, seq: u64) {
        if seq > 0 {
            let e = self.0.entry(actor).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        for (a, s) in &other.0 {
            self.observe(*a, *s);
        }
    }

    /// True if every operation `other` has seen, this has seen too.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, s)| self.get(a) >= *s)
    }

    /// `(actor, seq)` pairs, ordered by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&ActorId, &u64)> {
        self.0.iter()
    }

    /// Number of actors with at least one operation.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no operation was seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total number of operations covered (saturating at `u64::MAX`).
    pub fn total(&self) -> u64 {
        // Saturating: a peer's version vector may claim anything.
        self.0.values().fold(0u64, |sum, &n| sum.saturating_add(n))
    }
}

impl FromIterator<(ActorId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ActorId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::default();
        for (a, s) in iter {
            v.observe(a, s);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u8, u64)]) -> VersionVector {
        pairs.iter().map(|&(a, s)| (ActorId([a; 32]), s)).collect()
    }

    #[test]
    fn zero_is_absent() {
        let v = vv(&[(1, 0)]);
        assert!(v.is_empty());
        assert!(VersionVector::default().covers(&v));
    }

    proptest! {
        #[test]
        fn merge_is_a_least_upper_bound(a in proptest::collection::vec((0u8..4, 0u64..5), 0..6),
                                        b in proptest::collection::vec((0u8..4, 0u64..5), 0..6)) {
            let (a, b) = (vv(&a), vv(&b));
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(m.covers(&a) && m.covers(&b));
            let mut n = b.clone();
            n.merge(&a);
            prop_assert_eq!(&m, &n);
            prop_assert_eq!(m.total() >= a.total().max(b.total()), true);
        }
    }
}
