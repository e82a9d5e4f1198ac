//! Merge laws and convergence of every ready-made document, over random
//! multi-actor histories (proptest and quickcheck).

use proptest::prelude::*;
use walrus::replica::{
    ActorId, Catchup, CounterDoc, Document, KvDoc, KvDocExt, OpEnvelope, RegisterDoc, Replica, ReplicaOptions, SetDoc,
};
use walrus::wal::{SyncPolicy, WalOptions};

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

type Gen<D> = fn(&D, ActorId, u64) -> <D as Document>::Operation;

fn kv_op(d: &KvDoc, a: ActorId, r: u64) -> <KvDoc as Document>::Operation {
    let key = format!("k{}", r % 4);
    if r.is_multiple_of(5) {
        d.del_op(&key)
    } else {
        d.put_op(a, &key, &format!("v{}", r % 97))
    }
}

fn set_op(d: &SetDoc, a: ActorId, r: u64) -> <SetDoc as Document>::Operation {
    let m = format!("m{}", r % 4);
    if r.is_multiple_of(3) {
        d.rm(m.clone(), d.contains(&m).derive_rm_ctx())
    } else {
        d.add(m, d.read_ctx().derive_add_ctx(a))
    }
}

fn counter_op(d: &CounterDoc, a: ActorId, r: u64) -> <CounterDoc as Document>::Operation {
    if r.is_multiple_of(3) {
        d.dec(a)
    } else {
        d.inc_many(a, r % 5 + 1)
    }
}

fn register_op(d: &RegisterDoc, a: ActorId, r: u64) -> RegisterDoc {
    d.set_op(a, if r.is_multiple_of(7) { None } else { Some(format!("v{}", r % 13)) })
}

/// A history: each actor's operations in order, built on states where
/// actors occasionally saw each other's operations, plus each actor's
/// final state.
struct History<D: Document> {
    ops: Vec<Vec<OpEnvelope<D::Operation>>>,
    states: Vec<D>,
}

fn history<D: Document>(gen: Gen<D>, seed: u64, actors: usize, steps: usize) -> History<D> {
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
        let op = gen(&states[i], ids[i], rng.next());
        states[i].check_op(&op).unwrap_or_else(|e| panic!("generated op rejected: {e}"));
        states[i].apply(op.clone());
        let seq = ops[i].len() as u64 + 1;
        ops[i].push(OpEnvelope { actor: ids[i], seq, op, auth: None });
        seen[i][i] = ops[i].len();
    }
    // Every actor's state reflects all of its own ops; merge in the others
    // through op delivery so the states are complete views of each actor.
    History { ops, states }
}

fn merged<D: Document>(states: &[D]) -> D {
    let mut m = D::default();
    for s in states {
        m.merge(s.clone());
    }
    m
}

/// Applies all ops in an order that keeps each actor's order, chosen by `rng`.
fn deliver_interleaved<D: Document>(h: &History<D>, rng: &mut Rng) -> D {
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

fn check_laws<D: Document>(gen: Gen<D>, seed: u64) {
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

fn replica_opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 2048, ..ReplicaOptions::default() }
}

/// Ops delivered to three replicas with drops, duplicates and reordering,
/// then one `ops_since` exchange between every pair: all canonical
/// encodings are identical and equal to the merge of the actors' states.
fn check_convergence<D: Document>(gen: Gen<D>, seed: u64) {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn kv_laws(seed: u64) { check_laws::<KvDoc>(kv_op, seed); }
    #[test]
    fn set_laws(seed: u64) { check_laws::<SetDoc>(set_op, seed); }
    #[test]
    fn counter_laws(seed: u64) { check_laws::<CounterDoc>(counter_op, seed); }
    #[test]
    fn register_laws(seed: u64) { check_laws::<RegisterDoc>(register_op, seed); }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn kv_converges(seed: u64) { check_convergence::<KvDoc>(kv_op, seed); }
    #[test]
    fn set_converges(seed: u64) { check_convergence::<SetDoc>(set_op, seed); }
    #[test]
    fn counter_converges(seed: u64) { check_convergence::<CounterDoc>(counter_op, seed); }
    #[test]
    fn register_converges(seed: u64) { check_convergence::<RegisterDoc>(register_op, seed); }
}

/// quickcheck: snapshot + log tail equals full replay, for the key-value
/// document (checkpoint at an arbitrary point of a local history).
#[test]
fn snapshot_plus_tail_equals_full_replay() {
    fn prop(seed: u64, cut: u8) -> bool {
        let h = history::<KvDoc>(kv_op, seed, 2, 30);
        let ops: Vec<_> = h.ops.iter().flatten().cloned().collect();
        let cut = cut as usize % (ops.len() + 1);
        let (d1, d2) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let mut opts = replica_opts();
        opts.checkpoint_bytes = 0;
        let mut with_cp: Replica<KvDoc> = Replica::open(d1.path(), opts.clone()).expect("open");
        let mut plain: Replica<KvDoc> = Replica::open(d2.path(), opts.clone()).expect("open");
        with_cp.receive(ops[..cut].to_vec()).expect("receive");
        with_cp.checkpoint().expect("checkpoint");
        with_cp.receive(ops[cut..].to_vec()).expect("receive");
        plain.receive(ops.clone()).expect("receive");
        drop((with_cp, plain));
        let a: Replica<KvDoc> = Replica::open(d1.path(), opts.clone()).expect("reopen");
        let b: Replica<KvDoc> = Replica::open(d2.path(), opts).expect("reopen");
        a.doc().canonical() == b.doc().canonical() && a.clock() == b.clock()
    }
    quickcheck::QuickCheck::new().tests(24).quickcheck(prop as fn(u64, u8) -> bool);
}

/// A crash at every step of a checkpoint still recovers the acknowledged
/// state.
#[test]
fn crash_during_checkpoint_recovers_the_acknowledged_state() {
    for step in 1..=4u8 {
        let d = tempfile::tempdir().expect("tempdir");
        let mut opts = replica_opts();
        opts.checkpoint_bytes = 0;
        opts.wal = WalOptions::new(SyncPolicy::Always).segment_size(4096);
        let mut r: Replica<KvDoc> = Replica::open(d.path(), opts.clone()).expect("open");
        for i in 0..60 {
            r.update(|doc, a| doc.put_op(a, &format!("k{}", i % 9), &format!("v{i}"))).expect("update");
        }
        r.checkpoint().expect("first checkpoint");
        for i in 0..40 {
            r.update(|doc, a| doc.put_op(a, &format!("x{}", i % 5), &format!("w{i}"))).expect("update");
        }
        let acknowledged = (r.doc().canonical(), r.clock().clone());
        r.set_checkpoint_crash_point(Some(step));
        r.checkpoint().expect("interrupted checkpoint");
        drop(r);
        let r: Replica<KvDoc> = Replica::open(d.path(), opts).expect("reopen after interrupted checkpoint");
        assert_eq!((r.doc().canonical(), r.clock().clone()), acknowledged, "crash after checkpoint step {step}");
    }
}
