//! Law checks for CRDT documents, usable on your own [`Document`] type
//! (enable the `testing` feature).
//!
//! Give an operation generator and call [`check_laws`]: it builds random
//! multi-actor histories and checks that state merge is commutative,
//! associative and idempotent, that every delivery order keeping each
//! actor's order gives the merged state, and that replicas fed lossy,
//! duplicated, reordered deliveries converge after one catch-up exchange
//! (byte-identical [`Document::canonical`] encodings). Violations panic with
//! the seed that reproduces them.
//!
//! ```
//! use walrus::replica::{ActorId, CounterDoc};
//! walrus::testing::check_laws::<CounterDoc>(&|doc: &CounterDoc, actor: ActorId, r: u64| {
//!     if r % 2 == 0 { doc.inc(actor) } else { doc.dec(actor) }
//! }, 8);
//! ```

use crate::replica::{
    ActorId, Catchup, CounterDoc, Document, KvDoc, KvDocExt, OpEnvelope, RegisterDoc, Replica, ReplicaOptions, SetDoc,
};
use crate::wal::{SyncPolicy, WalOptions};

/// Builds a random operation for `doc`, authored by `actor`, from the
/// random number `r`. Implemented by closures `Fn(&D, ActorId, u64) -> Op`.
pub trait OpGen<D: Document> {
    /// One operation.
    fn op(&self, doc: &D, actor: ActorId, r: u64) -> D::Operation;
}

impl<D: Document, F: Fn(&D, ActorId, u64) -> D::Operation> OpGen<D> for F {
    fn op(&self, doc: &D, actor: ActorId, r: u64) -> D::Operation {
        self(doc, actor, r)
    }
}

/// Runs every law check on `cases` random histories (seeds 1..=cases).
pub fn check_laws<D: Document>(gen: &impl OpGen<D>, cases: u64) {
    for seed in 1..=cases {
        check_laws_seed(gen, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if seed <= cases.div_ceil(8) {
            check_convergence_seed(gen, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    /// Next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Generator for [`KvDoc`]: puts and deletes on four keys.
pub fn kv_op(d: &KvDoc, a: ActorId, r: u64) -> <KvDoc as Document>::Operation {
    let key = format!("k{}", r % 4);
    if r.is_multiple_of(5) {
        d.del_op(&key)
    } else {
        d.put_op(a, &key, &format!("v{}", r % 97))
    }
}

/// Generator for [`SetDoc`]: adds and removes of four members.
pub fn set_op(d: &SetDoc, a: ActorId, r: u64) -> <SetDoc as Document>::Operation {
    let m = format!("m{}", r % 4);
    if r.is_multiple_of(3) {
        d.rm(m.clone(), d.contains(&m).derive_rm_ctx())
    } else {
        d.add(m, d.read_ctx().derive_add_ctx(a))
    }
}

/// Generator for [`CounterDoc`]: increments and decrements.
pub fn counter_op(d: &CounterDoc, a: ActorId, r: u64) -> <CounterDoc as Document>::Operation {
    if r.is_multiple_of(3) {
        d.dec(a)
    } else {
        d.inc_many(a, r % 5 + 1)
    }
}

/// Generator for [`RegisterDoc`]: writes and clears.
pub fn register_op(d: &RegisterDoc, a: ActorId, r: u64) -> RegisterDoc {
    d.set_op(a, if r.is_multiple_of(7) { None } else { Some(format!("v{}", r % 13)) })
}

/// A history: each actor's operations in order, built on states where
/// actors occasionally saw each other's operations, plus each actor's
/// final state.
pub struct History<D: Document> {
    /// Each actor's operations, in order.
    pub ops: Vec<Vec<OpEnvelope<D::Operation>>>,
    /// Each actor's final state.
    pub states: Vec<D>,
}

/// A random history of `steps` steps by `actors` actors (each step writes
/// an operation or catches one actor up on another's operations).
pub fn history<D: Document>(gen: &impl OpGen<D>, seed: u64, actors: usize, steps: usize) -> History<D> {
    let mut rng = Rng(seed | 1);
    let ids: Vec<ActorId> = (0..actors).map(|i| ActorId([i as u8 + 1; 16])).collect();
    let mut states = vec![D::default(); actors];
    let mut ops: Vec<Vec<OpEnvelope<D::Operation>>> = vec![Vec::new(); actors];
    // seen[i][j]: how many of j's ops actor i has applied.
    let mut seen = vec![vec![0usize; actors]; actors];
    for _ in 0..steps {
        let i = rng.below(actors as u64) as usize;
        if rng.below(4) == 0 {
            // Catch up on another actor's operations, in its order.
            let j = rng.below(actors as u64) as usize;
            if j != i {
                for env in &ops[j][seen[i][j]..] {
                    states[i].apply(env.op.clone());
                }
                seen[i][j] = ops[j].len();
            }
            continue;
        }
        let op = gen.op(&states[i], ids[i], rng.next_u64());
        states[i].check_op(&op).unwrap_or_else(|e| panic!("generated op rejected: {e}"));
        states[i].apply(op.clone());
        let seq = ops[i].len() as u64 + 1;
        ops[i].push(OpEnvelope { actor: ids[i], seq, op, auth: None });
        seen[i][i] = ops[i].len();
    }
    History { ops, states }
}

/// The merge of all `states`.
pub fn merged<D: Document>(states: &[D]) -> D {
    let mut m = D::default();
    for s in states {
        m.merge(s.clone());
    }
    m
}

/// Applies every operation of `h` to a fresh document, in a random order
/// that keeps each actor's order.
pub fn deliver_interleaved<D: Document>(h: &History<D>, rng: &mut Rng) -> D {
    let mut d = D::default();
    let mut next = vec![0usize; h.ops.len()];
    loop {
        let open: Vec<usize> = (0..h.ops.len()).filter(|&i| next[i] < h.ops[i].len()).collect();
        if open.is_empty() {
            return d;
        }
        let i = open[rng.below(open.len() as u64) as usize];
        let env = &h.ops[i][next[i]];
        assert!(d.check_op(&env.op).is_ok(), "in-order op ({:?}, {}) rejected", env.actor, env.seq);
        d.apply(env.op.clone());
        next[i] += 1;
    }
}

/// Merge laws and delivery-order independence for one random history.
pub fn check_laws_seed<D: Document>(gen: &impl OpGen<D>, seed: u64) {
    let h = history(gen, seed, 3, 40);
    let [a, b, c] = [&h.states[0], &h.states[1], &h.states[2]];
    let join = |x: &D, y: &D| {
        let mut m = x.clone();
        m.merge(y.clone());
        m
    };
    // Commutative, associative, idempotent.
    assert_eq!(join(a, b).canonical(), join(b, a).canonical(), "merge not commutative (seed {seed})");
    assert_eq!(
        join(&join(a, b), c).canonical(),
        join(a, &join(b, c)).canonical(),
        "merge not associative (seed {seed})"
    );
    assert_eq!(join(a, a).canonical(), a.canonical(), "merge not idempotent (seed {seed})");
    // Every per-actor-ordered delivery gives the merge of the actors' states.
    let expected = merged(&h.states).canonical();
    let mut rng = Rng(seed.rotate_left(17) | 1);
    for round in 0..4 {
        let got = deliver_interleaved(&h, &mut rng).canonical();
        assert_eq!(got, expected, "delivery order {round} diverged from the merged state (seed {seed})");
    }
}

/// Fast replica options for tests: no fsync, small segments, frequent
/// automatic checkpoints.
pub fn replica_opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 2048, ..ReplicaOptions::default() }
}

/// Ops delivered to three replicas with drops, duplicates and reordering,
/// then one `ops_since` exchange between every pair: all canonical
/// encodings are identical and equal to the merge of the actors' states,
/// also after reopening.
pub fn check_convergence_seed<D: Document>(gen: &impl OpGen<D>, seed: u64) {
    let h = history(gen, seed, 3, 30);
    let mut rng = Rng(seed.rotate_left(29) | 1);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut replicas: Vec<Replica<D>> =
        dirs.iter().map(|d| Replica::open(d.path(), replica_opts()).expect("open")).collect();
    // Origin: everyone learns everyone's ops through a lossy channel.
    let mut all: Vec<OpEnvelope<D::Operation>> = h.ops.iter().flatten().cloned().collect();
    for (k, r) in replicas.iter_mut().enumerate() {
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut lossy = Vec::new();
        for env in &all {
            // Replica 0 loses nothing, so every op exists somewhere.
            match rng.below(5) {
                0 if k > 0 => {}
                1 => {
                    lossy.push(env.clone());
                    lossy.push(env.clone());
                }
                _ => lossy.push(env.clone()),
            }
        }
        r.receive(lossy).expect("receive");
    }
    // Anti-entropy: a full exchange between every ordered pair, twice.
    for _ in 0..2 {
        for i in 0..3 {
            for j in 0..3 {
                if i == j {
                    continue;
                }
                loop {
                    let theirs = replicas[j].clock().clone();
                    let answer = replicas[i].ops_since(&theirs, 256).expect("ops_since");
                    match answer {
                        Catchup::Ops { ops, more } => {
                            replicas[j].receive(ops).expect("receive page");
                            if !more {
                                break;
                            }
                        }
                        Catchup::Snapshot { state, clock } => {
                            replicas[j].merge_snapshot(state, clock).expect("snapshot");
                            break;
                        }
                    }
                }
            }
        }
    }
    let expected = merged(&h.states).canonical();
    for (k, r) in replicas.iter().enumerate() {
        assert_eq!(r.buffered(), 0, "replica {k} still buffers ops (seed {seed})");
        assert_eq!(r.doc().canonical(), expected, "replica {k} diverged (seed {seed})");
    }
    // Recovery is idempotent and gives the same bytes.
    drop(replicas);
    for d in &dirs {
        for _ in 0..2 {
            let r: Replica<D> = Replica::open(d.path(), replica_opts()).expect("reopen");
            assert_eq!(r.doc().canonical(), expected, "reopened replica diverged (seed {seed})");
        }
    }
}
