//! Random histories of several actors, and the laws a document's states
//! and operations must obey over them.

use super::{actor_key, Case, OpGen, Rng};
use crate::replica::{ActorId, ActorKey, CausalBuffer, ChainHash, Document, Offer, OpEnvelope, VersionVector};

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
                    if let Err(e) = states[i].check_op(env.op()) {
                        panic!("operation ({}, {}) rejected by a replica that has all of its author's earlier operations: {e}", env.actor(), env.seq());
                    }
                    states[i].apply(env.op().clone());
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
                let prev = ops[i].last().map_or(ChainHash::ZERO, |e: &OpEnvelope<D::Operation>| e.hash());
                let env = OpEnvelope::signed::<D>(&keys[i], "", seq, prev, op)
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

pub(super) fn apply_checked<D: Document>(d: &mut D, env: &OpEnvelope<D::Operation>) {
    if let Err(e) = d.check_op(env.op()) {
        panic!(
            "operation ({}, {}) rejected although every earlier operation of its author was applied: {e}",
            env.actor(),
            env.seq()
        );
    }
    d.apply(env.op().clone());
}

pub(super) fn state_laws<D: Document>(gen: &impl OpGen<D>, case: &Case) {
    let h = history(gen, case.seed, case.actors, case.steps);
    codec_round_trips(&h);
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
                applied.observe(env.actor(), env.seq());
            }
        }
    }
    assert!(buffer.is_empty(), "operations left in the causal buffer after everything was delivered");
    assert!(d.canonical() == expected, "delivery through a causal buffer (drops, duplicates, any order, then everything again) differs from merging the actors' states");
}

/// Every operation's bytes decode (as the document type decodes them) to an
/// operation that encodes to the same bytes, and every actor's operations,
/// as a page, decode to the same operations, hashes and head signatures.
fn codec_round_trips<D: Document>(h: &History<D>) {
    use crate::replica::{ChainKey, OpContext};
    let chain = ChainKey::new("");
    for ops in &h.ops {
        for env in ops {
            let cx = OpContext { author: &env.actor(), seq: env.seq() };
            let op = D::decode_op(env.op_bytes(), &cx).unwrap_or_else(|e| {
                panic!("operation ({}, {}) does not decode from its bytes: {e}", env.actor(), env.seq())
            });
            let mut again = Vec::new();
            D::encode_op(&op, &cx, &mut again).unwrap_or_else(|e| panic!("a decoded operation does not encode: {e}"));
            assert!(
                again == env.op_bytes(),
                "operation ({}, {}) encodes differently once decoded",
                env.actor(),
                env.seq()
            );
        }
        let page = crate::sync::page::page_of(ops);
        let body = crate::sync::page::unframe(&page, 64 << 20, "page").expect("a page of valid runs unframes");
        let runs = crate::sync::page::decode_runs(&body, 1 << 20, "page").expect("a page of valid runs decodes");
        let back: Vec<_> = runs.iter().flat_map(|r| r.envelopes::<D>(&chain).expect("its operations decode")).collect();
        assert_eq!(back.len(), ops.len(), "a page loses operations");
        for (b, o) in back.iter().zip(ops) {
            assert!(b.hash() == o.hash() && b.signature() == o.signature(), "a page changes an operation");
            b.verify_head().expect("every operation of a history is a signed head");
        }
    }
}
