//! Per-actor causal delivery: operation (actor, n) is applied only after
//! (actor, n-1). Early arrivals wait in a bounded buffer; duplicates are
//! recognised and dropped.
//!
//! This matters because the `crdts` types silently ignore an operation whose
//! counter is not the next one: applying (a, 3) before (a, 2) would lose
//! (a, 2) for good.

use std::collections::BTreeMap;

use super::{ActorId, BufferFull, OpEnvelope, VersionVector};

/// What to do with an offered operation.
#[derive(Debug, PartialEq)]
pub enum Offer<O> {
    /// Apply these, in this order: the offered operation followed by any
    /// buffered successors it unblocked.
    Ready(Vec<OpEnvelope<O>>),
    /// Held until its predecessors arrive.
    Buffered,
    /// Already applied or already buffered: nothing to do.
    Duplicate,
}

/// Holds operations that arrived before their predecessors.
#[derive(Debug)]
pub struct CausalBuffer<O> {
    /// Per actor, by sequence number: the operation and its size.
    pending: BTreeMap<ActorId, BTreeMap<u64, (OpEnvelope<O>, usize)>>,
    held: usize,
    limit: usize,
    per_actor: usize,
    /// Sum of the sizes given with the held operations, and its limit.
    bytes: usize,
    max_bytes: usize,
}

impl<O> CausalBuffer<O> {
    /// A buffer holding at most `limit` operations in all.
    pub fn new(limit: usize) -> CausalBuffer<O> {
        CausalBuffer { pending: BTreeMap::new(), held: 0, limit, per_actor: limit, bytes: 0, max_bytes: usize::MAX }
    }

    /// Also holds at most `limit` operations of any one actor.
    pub fn per_actor(mut self, limit: usize) -> CausalBuffer<O> {
        self.per_actor = limit;
        self
    }

    /// Also holds operations of at most `max` bytes in all (as given to
    /// [`offer_sized`](Self::offer_sized)).
    pub fn max_bytes(mut self, max: usize) -> CausalBuffer<O> {
        self.max_bytes = max;
        self
    }

    /// The held operation (`actor`, `seq`), if any.
    pub fn get(&self, actor: &ActorId, seq: u64) -> Option<&OpEnvelope<O>> {
        self.pending.get(actor)?.get(&seq).map(|(env, _)| env)
    }

    /// Bytes held (the sum of the sizes given to [`offer_sized`](Self::offer_sized)).
    // For the unit tests and `crate::internals`.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Operations currently held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// True if nothing is held.
    // The replica asks `len`; this is for the unit tests and `crate::internals`.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Decides what to do with `env`, given the operations already applied.
    // The replica offers sized operations; this is for `crate::testing`,
    // the unit tests and `crate::internals`.
    #[cfg_attr(not(any(feature = "internals", feature = "testing")), allow(dead_code))]
    pub fn offer(&mut self, env: OpEnvelope<O>, applied: &VersionVector) -> Result<Offer<O>, BufferFull> {
        self.offer_sized(env, applied, 0)
    }

    /// [`offer`](Self::offer) for an operation of `size` bytes, counted
    /// against [`max_bytes`](Self::max_bytes) while it is held.
    pub fn offer_sized(
        &mut self,
        env: OpEnvelope<O>,
        applied: &VersionVector,
        size: usize,
    ) -> Result<Offer<O>, BufferFull> {
        let have = applied.get(&env.actor());
        if env.seq() <= have {
            return Ok(Offer::Duplicate);
        }
        if env.seq() > have + 1 {
            let queue = self.pending.entry(env.actor()).or_default();
            if queue.contains_key(&env.seq()) {
                return Ok(Offer::Duplicate);
            }
            let full = if self.held >= self.limit {
                Some((self.held, self.limit))
            } else if queue.len() >= self.per_actor {
                Some((queue.len(), self.per_actor))
            } else if self.bytes.saturating_add(size) > self.max_bytes {
                Some((self.bytes, self.max_bytes))
            } else {
                None
            };
            if let Some((held, limit)) = full {
                let (actor, seq) = (env.actor(), env.seq());
                if queue.is_empty() {
                    self.pending.remove(&actor);
                }
                return Err(BufferFull { actor, seq, held, limit });
            }
            queue.insert(env.seq(), (env, size));
            self.held += 1;
            self.bytes += size;
            return Ok(Offer::Buffered);
        }
        let actor = env.actor();
        // None once u64::MAX is applied: everything held is then stale.
        let mut next = env.seq().checked_add(1);
        let mut ready = vec![env];
        if let Some(queue) = self.pending.get_mut(&actor) {
            // Stale entries (at or below what is now applied) are dropped too.
            while let Some(entry) = queue.first_entry() {
                if next.is_none_or(|n| *entry.key() < n) {
                    let (_, size) = entry.remove();
                    self.held -= 1;
                    self.bytes -= size;
                } else if Some(*entry.key()) == next {
                    let (env, size) = entry.remove();
                    ready.push(env);
                    self.held -= 1;
                    self.bytes -= size;
                    next = next.and_then(|n| n.checked_add(1));
                } else {
                    break;
                }
            }
            if queue.is_empty() {
                self.pending.remove(&actor);
            }
        }
        Ok(Offer::Ready(ready))
    }

    /// Whether operations of `actor` are held.
    pub(crate) fn holds(&self, actor: &ActorId) -> bool {
        self.pending.contains_key(actor)
    }

    /// For each actor with held operations: the first missing sequence
    /// number (what to ask peers for).
    pub fn gaps(&self, applied: &VersionVector) -> Vec<(ActorId, u64)> {
        self.pending.keys().map(|a| (*a, applied.get(a).saturating_add(1))).collect()
    }

    /// Removes and returns everything held for `actor`, in sequence order
    /// (to offer again after the applied clock jumped, e.g. by a snapshot).
    pub fn take_actor(&mut self, actor: &ActorId) -> Vec<OpEnvelope<O>> {
        let taken: Vec<_> = self.pending.remove(actor).map(|q| q.into_values().collect()).unwrap_or_default();
        self.held -= taken.len();
        self.bytes -= taken.iter().map(|(_, size)| size).sum::<usize>();
        taken.into_iter().map(|(env, _)| env).collect()
    }

    /// Drops everything held for `actor` (e.g. after one of its operations
    /// was rejected, its successors can never apply).
    pub fn discard_actor(&mut self, actor: &ActorId) -> usize {
        self.take_actor(actor).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(actor: u8, seq: u64) -> OpEnvelope<(u8, u64)> {
        // The buffer does not check chains or signatures: the replica
        // does, before.
        let chain = crate::replica::ChainKey::new("doc");
        let prev = crate::replica::ChainHash::ZERO;
        OpEnvelope::from_parts(&chain, ActorId([actor; 32]), seq, prev, (actor, seq), vec![actor].into(), None, None)
    }

    #[test]
    fn holds_early_operations_until_their_predecessors_come() {
        let key = crate::replica::ActorKey::from_seed([7; 32]);
        let a = key.actor();
        let chain = crate::replica::ChainKey::new("doc");
        let prev = crate::replica::ChainHash::ZERO;
        let env =
            |seq: u64| OpEnvelope::from_parts(&chain, a, seq, prev, format!("op {seq}"), vec![0].into(), None, None);
        let mut applied = VersionVector::default();
        let mut buf = CausalBuffer::new(100);
        assert_eq!(buf.offer(env(2), &applied), Ok(Offer::Buffered));
        let Ok(Offer::Ready(ops)) = buf.offer(env(1), &applied) else { panic!("1 then 2 should be ready") };
        assert_eq!(ops.iter().map(|e| e.seq()).collect::<Vec<_>>(), [1, 2]);
        applied.observe(a, 2);
        assert_eq!(buf.offer(env(1), &applied), Ok(Offer::Duplicate));
    }

    #[test]
    fn one_actor_cannot_take_the_whole_buffer() {
        let applied = VersionVector::default();
        let mut buf = CausalBuffer::new(10).per_actor(2);
        assert_eq!(buf.offer(env(1, 3), &applied), Ok(Offer::Buffered));
        assert_eq!(buf.offer(env(1, 4), &applied), Ok(Offer::Buffered));
        let err = buf.offer(env(1, 5), &applied).unwrap_err();
        assert_eq!((err.seq, err.held, err.limit), (5, 2, 2));
        assert_eq!(buf.offer(env(2, 3), &applied), Ok(Offer::Buffered), "other actors still have room");
        assert_eq!(buf.get(&ActorId([1; 32]), 4).map(|e| e.seq()), Some(4));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let applied = VersionVector::default();
        let mut buf = CausalBuffer::new(100).max_bytes(1000);
        assert_eq!(buf.offer_sized(env(1, 3), &applied, 600), Ok(Offer::Buffered));
        let err = buf.offer_sized(env(2, 3), &applied, 600).unwrap_err();
        assert_eq!((err.held, err.limit), (600, 1000));
        assert_eq!(buf.offer_sized(env(2, 3), &applied, 400), Ok(Offer::Buffered));
        assert_eq!(buf.bytes(), 1000);
        // Released when applied, taken or discarded.
        assert!(matches!(buf.offer(env(1, 2), &applied), Ok(Offer::Buffered)));
        assert!(matches!(buf.offer(env(1, 1), &applied), Ok(Offer::Ready(ops)) if ops.len() == 3));
        assert_eq!(buf.bytes(), 400);
        assert_eq!(buf.take_actor(&ActorId([2; 32])).len(), 1);
        assert_eq!((buf.bytes(), buf.len()), (0, 0));
    }

    #[test]
    fn full_buffer_refuses_and_keeps_no_entry() {
        let applied = VersionVector::default();
        let mut buf = CausalBuffer::new(1);
        assert_eq!(buf.offer(env(1, 3), &applied), Ok(Offer::Buffered));
        let err = buf.offer(env(2, 5), &applied).unwrap_err();
        assert_eq!((err.seq, err.held, err.limit), (5, 1, 1));
        assert_eq!(buf.gaps(&applied), vec![(ActorId([1; 32]), 1)]);
        // A ready operation needs no room.
        assert!(matches!(buf.offer(env(2, 1), &applied), Ok(Offer::Ready(_))));
        assert_eq!(buf.discard_actor(&ActorId([1; 32])), 1);
        assert!(buf.is_empty());
    }

    proptest! {
        /// Any delivery order, with duplicates, yields each actor's
        /// operations exactly once and in sequence order.
        #[test]
        fn delivers_in_order_exactly_once(order in proptest::collection::vec((0u8..3, 1u64..8), 0..80)) {
            let mut applied = VersionVector::default();
            let mut buf = CausalBuffer::new(1000);
            let mut log: Vec<(u8, u64)> = Vec::new();
            // Deliver the random order, then everything once more in order.
            let all = order.into_iter().chain((0u8..3).flat_map(|a| (1u64..8).map(move |s| (a, s))));
            for (a, s) in all {
                if let Offer::Ready(ops) = buf.offer(env(a, s), &applied).unwrap() {
                    for e in ops {
                        prop_assert_eq!(e.seq(), applied.get(&e.actor()) + 1);
                        applied.observe(e.actor(), e.seq());
                        log.push(e.into_op());
                    }
                }
            }
            prop_assert!(buf.is_empty());
            for a in 0u8..3 {
                let seqs: Vec<u64> = log.iter().filter(|(x, _)| *x == a).map(|(_, s)| *s).collect();
                prop_assert_eq!(seqs, (1u64..8).collect::<Vec<_>>());
            }
        }
    }
}
