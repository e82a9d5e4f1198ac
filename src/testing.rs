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
//!   operations go through a [`CausalBuffer`] with drops, duplicates and
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

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::replica::{
    ActorId, ActorKey, Catchup, CausalBuffer, CounterDoc, Document, Hlc, KvDoc, KvDocExt, Offer, OpEnvelope,
    RegisterDoc, Replica, ReplicaOptions, SetDoc, VersionVector,
};
use crate::wal::{SyncPolicy, WalOptions};

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

/// A history: each actor's operations in order, each actor's final state,
/// and some earlier states of the actors.
pub struct History<D: Document> {
    /// Each actor's operations, in order.
    pub ops: Vec<Vec<OpEnvelope<D::Operation>>>,
    /// Each actor's final state.
    pub states: Vec<D>,
    /// `(actor index, state)`: states actors had part-way.
    pub earlier: Vec<(usize, D)>,
}

/// A random history of `steps` steps by `actors` actors (actor `i` is
/// [`actor_key`]`(i)`, operations signed for the document id `""`). Each step writes an operation on one actor's
/// state, or catches one actor up on another actor's own operations (in
/// their order), or merges one actor's state into another's. Operations are
/// checked with [`Document::check_op`] before they are applied.
pub fn history<D: Document>(gen: &impl OpGen<D>, seed: u64, actors: usize, steps: usize) -> History<D> {
    let actors = actors.max(1);
    let mut rng = Rng::with_seed(seed);
    let keys: Vec<ActorKey> = (0..actors).map(actor_key).collect();
    let ids: Vec<ActorId> = keys.iter().map(ActorKey::actor).collect();
    let mut states = vec![D::default(); actors];
    let mut ops: Vec<Vec<OpEnvelope<D::Operation>>> = vec![Vec::new(); actors];
    let mut earlier = Vec::new();
    // seen[i][j]: how many of j's operations actor i's state includes.
    let mut seen = vec![vec![0usize; actors]; actors];
    for _ in 0..steps {
        let i = rng.usize(..actors);
        let j = rng.usize(..actors);
        match rng.u32(..8) {
            0 | 1 if i != j => {
                // Catch up on j's own operations, in j's order.
                for env in &ops[j][seen[i][j]..] {
                    if let Err(e) = states[i].check_op(&env.op) {
                        panic!("operation ({}, {}) rejected by a replica that has all of its author's earlier operations: {e}", env.actor, env.seq);
                    }
                    states[i].apply(env.op.clone());
                }
                seen[i][j] = ops[j].len();
            }
            2 if i != j => {
                // Merge j's whole state.
                if let Err(e) = states[i].check_merge(&states[j]) {
                    panic!("check_merge refused a state of another actor: {e}");
                }
                let other = states[j].clone();
                states[i].merge(other);
                let theirs = seen[j].clone();
                for (mine, their) in seen[i].iter_mut().zip(theirs) {
                    *mine = (*mine).max(their);
                }
            }
            _ => {
                let op = gen.op(&states[i], ids[i], rng.u64(..));
                if let Err(e) = states[i].check_op(&op) {
                    panic!("the generator made an operation its own state rejects: {e} ({op:?})");
                }
                states[i].apply(op.clone());
                let seq = ops[i].len() as u64 + 1;
                let env = OpEnvelope::signed(&keys[i], "", seq, op)
                    .unwrap_or_else(|e| panic!("an operation could not be encoded: {e}"));
                ops[i].push(env);
                seen[i][i] = ops[i].len();
            }
        }
        if earlier.len() < 6 && rng.u32(..6) == 0 {
            earlier.push((i, states[i].clone()));
        }
    }
    History { ops, states, earlier }
}

/// The merge of all `states`.
pub fn merged<D: Document>(states: &[D]) -> D {
    let mut m = D::default();
    for s in states {
        m.merge(s.clone());
    }
    m
}

fn join<D: Document>(x: &D, y: &D) -> D {
    if let Err(e) = x.check_merge(y) {
        panic!("check_merge refused a legitimate state: {e}");
    }
    let mut m = x.clone();
    m.merge(y.clone());
    m
}

/// Applies every operation of `h` to a fresh document, in a random order
/// that keeps each actor's order. Panics if [`Document::check_op`] rejects
/// one.
pub fn deliver_interleaved<D: Document>(h: &History<D>, rng: &mut Rng) -> D {
    let mut d = D::default();
    let mut next = vec![0usize; h.ops.len()];
    loop {
        let open: Vec<usize> = (0..h.ops.len()).filter(|&i| next[i] < h.ops[i].len()).collect();
        if open.is_empty() {
            return d;
        }
        let i = open[rng.usize(..open.len())];
        apply_checked(&mut d, &h.ops[i][next[i]]);
        next[i] += 1;
    }
}

fn apply_checked<D: Document>(d: &mut D, env: &OpEnvelope<D::Operation>) {
    if let Err(e) = d.check_op(&env.op) {
        panic!(
            "operation ({}, {}) rejected although every earlier operation of its author was applied: {e}",
            env.actor, env.seq
        );
    }
    d.apply(env.op.clone());
}

fn state_laws<D: Document>(gen: &impl OpGen<D>, case: &Case) {
    let h = history(gen, case.seed, case.actors, case.steps);
    let mut rng = Rng::with_seed(case.seed.rotate_left(17));
    let n = h.states.len();
    // Final and earlier states alike are states the lattice laws cover.
    let pool: Vec<&D> = h.states.iter().chain(h.earlier.iter().map(|(_, s)| s)).collect();
    let enc: Vec<Vec<u8>> = pool.iter().map(|s| s.canonical()).collect();
    for (a, &x) in pool.iter().enumerate() {
        // Checkpoints and snapshots store states as CBOR.
        let mut bytes = Vec::new();
        ciborium::into_writer(x, &mut bytes).expect("encoding a state");
        let back: D = ciborium::from_reader(&bytes[..])
            .unwrap_or_else(|e| panic!("a state does not decode from its own CBOR encoding: {e}"));
        assert!(back.canonical() == enc[a], "a state changes in a CBOR round trip");
        assert!(join(x, x).canonical() == enc[a], "merge is not idempotent: x ⊔ x ≠ x for state #{a}");
        for (b, &y) in pool.iter().enumerate().skip(a + 1) {
            let xy = join(x, y).canonical();
            assert!(xy == join(y, x).canonical(), "merge is not commutative: states #{a} and #{b}");
            assert!(
                join(&join(x, y), y).canonical() == xy,
                "merge is not idempotent: (x ⊔ y) ⊔ y ≠ x ⊔ y for #{a}, #{b}"
            );
        }
    }
    // Associativity on the first three states and on random triples.
    let mut triples = vec![(0, 1 % n, 2 % n)];
    for _ in 0..8 {
        let mut pick = || rng.usize(..pool.len());
        triples.push((pick(), pick(), pick()));
    }
    for (a, b, c) in triples {
        let (x, y, z) = (pool[a], pool[b], pool[c]);
        assert!(
            join(&join(x, y), z).canonical() == join(x, &join(y, z)).canonical(),
            "merge is not associative: (x ⊔ y) ⊔ z ≠ x ⊔ (y ⊔ z) for states #{a}, #{b}, #{c}"
        );
    }
    // An actor's later state already includes its earlier states.
    for (k, (i, s)) in h.earlier.iter().enumerate() {
        assert!(
            join(&h.states[*i], s).canonical() == h.states[*i].canonical(),
            "merging an earlier state (#{k}) of actor {i} into its final state changed it: an operation or a merge \
             did not only add information"
        );
    }
    // Delivery orders: actor by actor both ways, and random interleavings.
    let expected = merged(&h.states).canonical();
    let by_actor = |rev: bool| {
        let mut d = D::default();
        let order: Vec<usize> = if rev { (0..n).rev().collect() } else { (0..n).collect() };
        for i in order {
            h.ops[i].iter().for_each(|env| apply_checked(&mut d, env));
        }
        d.canonical()
    };
    assert!(
        by_actor(false) == expected,
        "applying all operations actor by actor differs from merging the actors' states"
    );
    assert!(
        by_actor(true) == expected,
        "applying all operations actor by actor (last actor first) differs from merging the actors' states"
    );
    for round in 0..4 {
        let got = deliver_interleaved(&h, &mut rng).canonical();
        assert!(
            got == expected,
            "interleaved delivery #{round} (each actor's order kept) differs from merging the actors' states"
        );
    }
    // Any delivery at all (drops, duplicates, any order) through a causal
    // buffer, then everything once more in any order.
    let all: Vec<OpEnvelope<D::Operation>> = h.ops.iter().flatten().cloned().collect();
    let mut stream = Vec::new();
    for env in &all {
        match rng.u32(..8) {
            0 | 1 => {}
            2 => stream.extend([env.clone(), env.clone()]),
            _ => stream.push(env.clone()),
        }
    }
    rng.shuffle(&mut stream);
    let mut again = all.clone();
    rng.shuffle(&mut again);
    stream.extend(again);
    let (mut d, mut applied, mut buffer) = (D::default(), VersionVector::default(), CausalBuffer::new(usize::MAX));
    for env in stream {
        if let Ok(Offer::Ready(ready)) = buffer.offer(env, &applied) {
            for env in ready {
                apply_checked(&mut d, &env);
                applied.observe(env.actor, env.seq);
            }
        }
    }
    assert!(buffer.is_empty(), "operations left in the causal buffer after everything was delivered");
    assert!(d.canonical() == expected, "delivery through a causal buffer (drops, duplicates, any order, then everything again) differs from merging the actors' states");
}

/// Fast replica options for tests: no fsync, small segments, no
/// preallocation, an automatic checkpoint every 2 KiB of log.
pub fn replica_opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 2048, ..ReplicaOptions::default() }
}

/// Prepares `dir` for a replica with the given actor key (writes its
/// [`ACTOR_FILE`](crate::replica::ACTOR_FILE)), so that runs are
/// reproducible; [`Replica::open`] then uses that key. Fails if `dir`
/// already has a key.
pub fn create_replica_dir(dir: &Path, key: &ActorKey) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(crate::replica::ACTOR_FILE);
    if path.exists() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
    }
    key.store(&path).map_err(std::io::Error::other)
}

/// Brings `to` up to date with `from`: asks `from.ops_since(to.clock(),
/// budget)` until nothing more is missing, receiving each page or merging
/// the snapshot. Checks on the way that every page is non-empty when more
/// follow, within `budget` encoded bytes unless it is a single operation,
/// and applicable in order (each operation is the next of its author), and
/// that `to` ends up covering `from`'s version vector. Returns the number
/// of operations received plus the number of snapshots merged. Panics on
/// any error.
pub fn catch_up<D: Document>(from: &Replica<D>, to: &mut Replica<D>, budget: usize) -> usize {
    let mut moved = 0;
    for _ in 0..from.clock().total() + 2 {
        match from.ops_since(to.clock(), budget).unwrap_or_else(|e| panic!("ops_since failed: {e}")) {
            Catchup::Ops { ops, more } => {
                check_page(to.clock(), &ops, more, budget);
                moved += ops.len();
                let report = to.receive(ops).unwrap_or_else(|e| panic!("receiving an ops_since page failed: {e}"));
                assert!(report.buffered == 0, "an ops_since page held operations the peer could not apply yet");
                if !more {
                    assert!(
                        to.clock().covers(from.clock()),
                        "after the last ops_since page the peer misses operations: {:?} does not cover {:?}",
                        to.clock(),
                        from.clock()
                    );
                    return moved;
                }
            }
            Catchup::Snapshot { state, clock } => {
                assert!(&clock == from.clock(), "a snapshot's version vector is not the sender's");
                to.merge_snapshot(state, clock).unwrap_or_else(|e| panic!("merging a snapshot failed: {e}"));
                assert!(to.clock().covers(from.clock()), "after merging a snapshot the peer misses operations");
                moved += 1;
            }
        }
    }
    panic!("ops_since keeps answering with more pages than there are operations")
}

fn check_page<O: serde::Serialize>(theirs: &VersionVector, ops: &[OpEnvelope<O>], more: bool, budget: usize) {
    assert!(!(more && ops.is_empty()), "ops_since answered an empty page with `more` set");
    let mut clock = theirs.clone();
    let mut bytes = 0;
    for env in ops {
        assert!(
            env.seq == clock.get(&env.actor) + 1,
            "ops_since page holds ({}, {}) but the peer needs ({}, {}) first",
            env.actor,
            env.seq,
            env.actor,
            clock.get(&env.actor) + 1
        );
        clock.observe(env.actor, env.seq);
        bytes += env.encode().map_or(0, |b| b.len());
    }
    assert!(
        ops.len() <= 1 || bytes <= budget,
        "ops_since page of {} operations holds {bytes} bytes, over the budget of {budget}",
        ops.len()
    );
}

/// Closes and reopens replica `k` of `replicas`, checking that state and
/// version vector survive.
fn reopen<D: Document>(replicas: &mut Vec<Replica<D>>, k: usize, opts: &ReplicaOptions) {
    let r = replicas.remove(k);
    let (dir, doc, clock) = (r.dir().to_path_buf(), r.doc().canonical(), r.clock().clone());
    drop(r);
    let r: Replica<D> = Replica::open(&dir, opts.clone()).unwrap_or_else(|e| panic!("reopening a replica failed: {e}"));
    assert!(r.doc().canonical() == doc, "reopening a replica changed its document");
    assert!(r.clock() == &clock, "reopening a replica changed its version vector: {clock:?} became {:?}", r.clock());
    replicas.insert(k, r);
}

fn replica_convergence<D: Document>(gen: &impl OpGen<D>, case: &Case) {
    let mut rng = Rng::with_seed(case.seed.rotate_left(29) ^ 0x5851_f42d_4c95_7f2d);
    let keys = case.actor_keys();
    let n = keys.len();
    let mut opts = replica_opts();
    // Frequent automatic checkpoints truncate logs, so catch-up also goes
    // through snapshots.
    opts.checkpoint_bytes = 256 + rng.u64(..2048);
    let dirs: Vec<tempfile::TempDir> =
        (0..n).map(|_| tempfile::tempdir().expect("creating a temporary directory")).collect();
    let mut replicas: Vec<Replica<D>> = dirs
        .iter()
        .zip(&keys)
        .map(|(d, key)| {
            create_replica_dir(d.path(), key).expect("creating a replica directory");
            Replica::open(d.path(), opts.clone()).unwrap_or_else(|e| panic!("opening a replica failed: {e}"))
        })
        .collect();
    // Every operation written so far ("the network" replays them at will).
    let mut sent: Vec<OpEnvelope<D::Operation>> = Vec::new();
    for _ in 0..case.steps {
        let k = rng.usize(..n);
        match rng.u32(..12) {
            0..=5 => {
                let r = rng.u64(..);
                let env = replicas[k]
                    .update(|doc, actor| gen.op(doc, actor, r))
                    .unwrap_or_else(|e| panic!("a replica refused a generated operation: {e}"));
                sent.push(env);
            }
            6 | 7 => {
                // Lossy, duplicating, reordering delivery in 1 to 3 batches.
                let mut batch = Vec::new();
                for env in &sent {
                    match rng.u32(..10) {
                        0..=2 => {}
                        3 => batch.extend([env.clone(), env.clone()]),
                        _ => batch.push(env.clone()),
                    }
                }
                rng.shuffle(&mut batch);
                let parts = 1 + rng.usize(..3);
                let size = batch.len().div_ceil(parts).max(1);
                for part in batch.chunks(size) {
                    if let Err(e) = replicas[k].receive(part.to_vec()) {
                        panic!("receiving operations in a lossy, reordered delivery failed: {e}");
                    }
                }
            }
            8 | 9 => {
                // One page of catch-up from another replica.
                let j = rng.usize(..n);
                if j != k {
                    let budget = 1 + rng.usize(..300);
                    let theirs = replicas[k].clock().clone();
                    match replicas[j].ops_since(&theirs, budget).unwrap_or_else(|e| panic!("ops_since failed: {e}")) {
                        Catchup::Ops { ops, more } => {
                            check_page(&theirs, &ops, more, budget);
                            replicas[k].receive(ops).unwrap_or_else(|e| panic!("receiving a page failed: {e}"));
                        }
                        Catchup::Snapshot { state, clock } => {
                            replicas[k]
                                .merge_snapshot(state, clock)
                                .unwrap_or_else(|e| panic!("merging a snapshot failed: {e}"));
                        }
                    }
                }
            }
            10 => replicas[k].checkpoint().unwrap_or_else(|e| panic!("checkpoint failed: {e}")),
            _ => reopen(&mut replicas, k, &opts),
        }
    }
    // One round of anti-entropy between every ordered pair.
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let budget = 1 + rng.usize(..400);
                let (from, to) = pair(&mut replicas, i, j);
                catch_up(from, to, budget);
            }
        }
    }
    // The reference: every operation applied once, author by author.
    let mut all = sent.clone();
    all.sort_by_key(|e| (e.actor, e.seq));
    let mut reference = D::default();
    all.iter().for_each(|env| apply_checked(&mut reference, env));
    let expected = reference.canonical();
    let clock: VersionVector = all.iter().map(|e| (e.actor, e.seq)).collect();
    for (k, r) in replicas.iter().enumerate() {
        assert!(r.clock() == &clock, "replica {k}'s version vector {:?} is not {clock:?} after catch-up", r.clock());
        assert!(r.buffered() == 0, "replica {k} still holds {} early operations after catch-up", r.buffered());
        assert!(
            r.doc().canonical() == expected,
            "replica {k} diverged after catch-up from the state with every operation applied once"
        );
    }
    // A second round moves nothing.
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let (from, to) = pair(&mut replicas, i, j);
                let moved = catch_up(from, to, 64);
                assert!(moved == 0, "a second catch-up round from replica {i} to {j} moved {moved} operations");
            }
        }
    }
    // Recovery gives the same bytes, and again.
    for k in 0..n {
        reopen(&mut replicas, k, &opts);
        reopen(&mut replicas, k, &opts);
        assert!(replicas[k].doc().canonical() == expected, "reopened replica {k} diverged");
    }
}

/// `(&replicas[i], &mut replicas[j])`, `i != j`.
fn pair<T>(v: &mut [T], i: usize, j: usize) -> (&T, &mut T) {
    assert!(i != j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}

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
