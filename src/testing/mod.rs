//! Law checks for CRDT documents, usable on your own [`Document`] type
//! (enable the `testing` feature).
//!
//! Describe how to make a random operation ([`OpGen`], or just a closure
//! `Fn(&D, ActorId, u64) -> D::Operation`) and call [`check_laws`]. On random
//! histories of 2 to 4 actors and tens of operations it checks that:
//!
//! - state merge is commutative, associative and idempotent, and merging an
//!   earlier state of an actor into its later state changes nothing;
//! - every delivery order that keeps each actor's operations in order gives
//!   the same state, equal to the merge of the actors' states (operations
//!   may be delivered before operations of *other* actors they were made
//!   after: a [`Replica`] only guarantees per-actor order), also when the
//!   operations go through a replica's causal buffer with drops, duplicates and
//!   reordering before everything is delivered again;
//! - a state survives a CBOR round trip (checkpoints and snapshots);
//! - durable [`Replica`]s that write operations, receive each other's with
//!   drops, duplicates and reordering, checkpoint, reopen and page through
//!   `ops_since` with small byte budgets converge after one catch-up
//!   exchange to byte-identical [`Document::canonical`] encodings and equal
//!   version vectors, and a second exchange moves nothing.
//!
//! Equality of states is always equality of [`Document::canonical`].
//!
//! A violation panics with a message naming the law, the document type and
//! the [`Case`] that reproduces it (`walrus::testing::check_case(&gen, &Case
//! { .. })`). Everything is deterministic for a given case, as long as the
//! generator is.
//!
//! ```
//! use walrus::replica::{ActorId, CounterDoc};
//!
//! // A closure is a generator: the state, the acting replica, a random number.
//! let gen = |doc: &CounterDoc, actor: ActorId, r: u64| {
//!     if r % 2 == 0 { doc.inc(actor) } else { doc.dec(actor) }
//! };
//! walrus::testing::check_laws_cases::<CounterDoc>(&gen, 4);
//! // The ready-made documents have generators too.
//! walrus::testing::check_laws_cases(&walrus::testing::KvOps::default(), 4);
//! ```
//!
//! [`Case`] implements proptest's and quickcheck's `Arbitrary` (both shrink
//! towards fewer actors and shorter histories), so the checks also fit in
//! your property tests:
//!
//! ```
//! use proptest::prelude::*;
//! use walrus::testing::{check_case, Case, SetOps};
//!
//! proptest!(ProptestConfig::with_cases(4), |(case in any::<Case>())| {
//!     check_case(&SetOps::default(), &case);
//! });
//! ```
//!
//! [`Replica`]: crate::replica::Replica

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::replica::{ActorId, ActorKey, CounterDoc, Document, Hlc, KvDoc, RegisterDoc, SetDoc};

/// Builds a random operation for `doc`, authored by `actor`, from the
/// random number `r` (use its bits as you like). The operation must be valid
/// for `doc` ([`Document::check_op`]) and, like any operation a replica
/// writes, applicable on every other replica once `actor`'s earlier
/// operations are.
///
/// Implemented by closures `Fn(&D, ActorId, u64) -> D::Operation` and by the
/// generators of the ready-made documents ([`KvOps`], [`SetOps`],
/// [`CounterOps`], [`RegisterOps`]).
pub trait OpGen<D: Document> {
    /// One operation.
    fn op(&self, doc: &D, actor: ActorId, r: u64) -> D::Operation;
}

impl<D: Document, F: Fn(&D, ActorId, u64) -> D::Operation> OpGen<D> for F {
    fn op(&self, doc: &D, actor: ActorId, r: u64) -> D::Operation {
        self(doc, actor, r)
    }
}

/// Generator for [`KvDoc`]: puts (four in five) and deletes on `keys` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvOps {
    /// Number of distinct keys (few keys: many conflicts).
    pub keys: u64,
}

impl Default for KvOps {
    fn default() -> Self {
        KvOps { keys: 4 }
    }
}

impl OpGen<KvDoc> for KvOps {
    fn op(&self, doc: &KvDoc, actor: ActorId, r: u64) -> <KvDoc as Document>::Operation {
        let key = format!("k{}", (r >> 8) % self.keys.max(1));
        if r.is_multiple_of(5) {
            doc.del_op(&key)
        } else {
            doc.put_op(actor, &key, &format!("v{}", (r >> 16) % 97))
        }
    }
}

/// Generator for [`SetDoc`]: adds (two in three; some add two members at
/// once) and removes of `members` distinct members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOps {
    /// Number of distinct members.
    pub members: u64,
}

impl Default for SetOps {
    fn default() -> Self {
        SetOps { members: 4 }
    }
}

impl OpGen<SetDoc> for SetOps {
    fn op(&self, doc: &SetDoc, actor: ActorId, r: u64) -> <SetDoc as Document>::Operation {
        let m = format!("m{}", (r >> 8) % self.members.max(1));
        if r.is_multiple_of(3) {
            doc.rm(m.clone(), doc.contains(&m).derive_rm_ctx())
        } else if (r >> 4).is_multiple_of(4) {
            // One write adding two members (they share a dot).
            let other = format!("m{}", (r >> 12) % self.members.max(1));
            doc.add_all([m, other], doc.read_ctx().derive_add_ctx(actor))
        } else {
            doc.add(m, doc.read_ctx().derive_add_ctx(actor))
        }
    }
}

/// Generator for [`CounterDoc`]: increments by 1 to 5 and decrements by 1
/// to 3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterOps;

impl OpGen<CounterDoc> for CounterOps {
    fn op(&self, doc: &CounterDoc, actor: ActorId, r: u64) -> <CounterDoc as Document>::Operation {
        if r.is_multiple_of(3) {
            doc.dec_many(actor, (r >> 8) % 3 + 1)
        } else {
            doc.inc_many(actor, (r >> 8) % 5 + 1)
        }
    }
}

/// Generator for [`RegisterDoc`]: writes and (one in seven) clears. The
/// hybrid timestamp is taken at a pseudo-random "wall clock" between 0 and
/// 63 ms derived from `r`, so histories are reproducible and exercise
/// clocks that stand still or go backwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterOps;

impl OpGen<RegisterDoc> for RegisterOps {
    fn op(&self, doc: &RegisterDoc, actor: ActorId, r: u64) -> RegisterDoc {
        let value = if r.is_multiple_of(7) { None } else { Some(format!("v{}", (r >> 8) % 13)) };
        RegisterDoc { value, marker: Hlc::next_at(&doc.marker, actor, (r >> 16) % 64) }
    }
}

/// [`KvOps::default`] as a function.
pub fn kv_op(d: &KvDoc, a: ActorId, r: u64) -> <KvDoc as Document>::Operation {
    KvOps::default().op(d, a, r)
}

/// [`SetOps::default`] as a function.
pub fn set_op(d: &SetDoc, a: ActorId, r: u64) -> <SetDoc as Document>::Operation {
    SetOps::default().op(d, a, r)
}

/// [`CounterOps`] as a function.
pub fn counter_op(d: &CounterDoc, a: ActorId, r: u64) -> <CounterDoc as Document>::Operation {
    CounterOps.op(d, a, r)
}

/// [`RegisterOps`] as a function.
pub fn register_op(d: &RegisterDoc, a: ActorId, r: u64) -> RegisterDoc {
    RegisterOps.op(d, a, r)
}

/// One random scenario: everything the checks do follows from it.
///
/// Its `Debug` form is Rust syntax, so a failure message can be pasted into
/// a regression test: `check_case(&gen, &Case { seed: 7, actors: 3, steps: 40 })`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Case {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of actors (replicas), 2 to 4 in generated cases.
    pub actors: usize,
    /// Number of steps (each writes an operation, or moves operations or
    /// states between actors, or checkpoints or reopens a replica).
    pub steps: usize,
}

impl Case {
    /// The case a seed stands for: 2 to 4 actors, 10 to 60 steps.
    pub fn from_seed(seed: u64) -> Case {
        let mut rng = Rng::with_seed(seed ^ 0x2545_f491_4f6c_dd1d);
        Case { seed, actors: 2 + rng.usize(..3), steps: 10 + rng.usize(..51) }
    }

    /// Cases with fewer actors or fewer steps (for shrinking).
    pub fn smaller(&self) -> Vec<Case> {
        let mut out = Vec::new();
        if self.actors > 2 {
            out.push(Case { actors: self.actors - 1, ..*self });
        }
        if self.steps > 0 {
            out.push(Case { steps: self.steps / 2, ..*self });
            if self.steps / 2 != self.steps - 1 {
                out.push(Case { steps: self.steps - 1, ..*self });
            }
        }
        out
    }

    fn actor_keys(&self) -> Vec<ActorKey> {
        (0..self.actors.max(1)).map(actor_key).collect()
    }
}

/// The key of actor `i` of a case: the one with seed 32 bytes of `i + 1`.
pub fn actor_key(i: usize) -> ActorKey {
    ActorKey::from_seed([i as u8 + 1; 32])
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl proptest::arbitrary::Arbitrary for Case {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<Case>;

    fn arbitrary_with(_: ()) -> Self::Strategy {
        use proptest::strategy::Strategy;
        (proptest::num::u64::ANY, 2usize..=4, 0usize..=60)
            .prop_map(|(seed, actors, steps)| Case { seed, actors, steps })
            .boxed()
    }
}

impl quickcheck::Arbitrary for Case {
    fn arbitrary(g: &mut quickcheck::Gen) -> Case {
        let seed = u64::arbitrary(g);
        Case { seed, actors: 2 + usize::arbitrary(g) % 3, steps: usize::arbitrary(g) % 61 }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Case>> {
        Box::new(self.smaller().into_iter())
    }
}

/// Number of cases [`check_laws`] runs.
pub const DEFAULT_CASES: u64 = 48;

/// Runs every check ([`check_case`]) on [`DEFAULT_CASES`] cases.
pub fn check_laws<D: Document>(gen: &impl OpGen<D>) {
    check_laws_cases(gen, DEFAULT_CASES);
}

/// Runs every check ([`check_case`]) on `cases` cases
/// (`Case::from_seed` of fixed seeds, the same on every run).
pub fn check_laws_cases<D: Document>(gen: &impl OpGen<D>, cases: u64) {
    for i in 1..=cases {
        check_case(gen, &Case::from_seed(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    }
}

/// Every check on one case: [`check_state_laws`] and
/// [`check_replica_convergence`].
pub fn check_case<D: Document>(gen: &impl OpGen<D>, case: &Case) {
    in_context::<D, _>("CRDT laws", case, || {
        state_laws(gen, case);
        replica_convergence(gen, case);
    });
}

/// [`check_state_laws`] on `Case::from_seed(seed)`.
pub fn check_laws_seed<D: Document>(gen: &impl OpGen<D>, seed: u64) {
    check_state_laws(gen, &Case::from_seed(seed));
}

/// [`check_replica_convergence`] on `Case::from_seed(seed)`.
pub fn check_convergence_seed<D: Document>(gen: &impl OpGen<D>, seed: u64) {
    check_replica_convergence(gen, &Case::from_seed(seed));
}

/// The in-memory laws on one random history (no files): merge is
/// commutative, associative, idempotent and absorbs earlier states; states
/// survive a CBOR round trip; every per-actor-ordered delivery of the
/// operations gives the merge of the actors' states.
pub fn check_state_laws<D: Document>(gen: &impl OpGen<D>, case: &Case) {
    in_context::<D, _>("state laws", case, || state_laws(gen, case));
}

/// Durable replicas, one per actor, converge: see the [module](self)
/// documentation. Uses temporary directories.
pub fn check_replica_convergence<D: Document>(gen: &impl OpGen<D>, case: &Case) {
    in_context::<D, _>("replica convergence", case, || replica_convergence(gen, case));
}

/// Runs `f`, turning a panic into one that names the document type, the
/// checks and the case.
fn in_context<D, R>(what: &str, case: &Case, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-text panic)".to_string());
            panic!(
                "walrus::testing: {} failed the {what} check: {msg}\n  case: {case:?}\n  reproduce: \
                 walrus::testing::check_case(&gen, &{case:?})",
                std::any::type_name::<D>()
            )
        }
    }
}

/// The seeded pseudo-random generator the checks use (`fastrand`'s): start
/// one with `Rng::with_seed(seed)`; the same seed gives the same numbers.
pub use fastrand::Rng;

mod history;
mod replicas;

use history::state_laws;
pub use history::{deliver_interleaved, history, merged, History};
use replicas::replica_convergence;
pub use replicas::{catch_up, create_replica_dir, replica_opts};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_reaches_small_cases() {
        let mut c = Case { seed: 1, actors: 4, steps: 60 };
        while let Some(s) = c.smaller().first().copied() {
            c = s;
        }
        assert_eq!((c.actors, c.steps), (2, 0));
    }
}
