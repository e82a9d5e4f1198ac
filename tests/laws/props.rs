//! Property tests (proptest and quickcheck) of durable replicas of the four
//! ready-made documents:
//!
//! - the CRDT laws and replica convergence of `walrus::testing` on cases
//!   quickcheck generates and shrinks (`laws.rs` runs them from seeds);
//! - a checkpoint plus the log tail after it recovers the same document as
//!   replaying the whole log;
//! - recovery is idempotent;
//! - a crash after any step of a checkpoint recovers the acknowledged state;
//! - `ops_since` paging with small byte budgets converges, and a second
//!   round moves nothing;
//! - a peer behind the log truncation point gets a snapshot and converges
//!   after merging it.
//!
//! Needs the `testing` feature (`cargo test --all-features`).

use std::path::Path;

use proptest::prelude::*;
use quickcheck::QuickCheck;
use walrus::internals::set_checkpoint_crash_point;
use walrus::replica::ACTOR_FILE;
use walrus::replica::{
    ActorKey, Catchup, CounterDoc, Document, KvDoc, OpEnvelope, RegisterDoc, Replica, ReplicaOptions, SetDoc,
    VersionVector,
};
use walrus::testing::{
    check_case, create_replica_dir, history, replica_opts, Case, CounterOps, KvOps, OpGen, RegisterOps, Rng, SetOps,
};

/// What a replica goes through: its own writes (from a random number),
/// deliveries of other actors' operations, explicit checkpoints.
#[derive(Debug, Clone)]
enum Event<O> {
    Local(u64),
    Deliver(Vec<OpEnvelope<O>>),
    Checkpoint,
}

/// A random mix of local writes and deliveries of the operations of two
/// other actors (a `walrus::testing::history`), delivered in batches that
/// are reordered, partly duplicated, and occasionally lose an operation.
fn workload<D: Document>(gen: &impl OpGen<D>, seed: u64, steps: usize) -> Vec<Event<D::Operation>> {
    let h = history(gen, seed, 2, steps);
    let mut rng = Rng::with_seed(seed.rotate_left(7) ^ 0xa076_1d64_78bd_642f);
    // The other actors' operations in a random order keeping each actor's.
    let mut next = [0usize; 2];
    let mut foreign = Vec::new();
    while next[0] < h.ops[0].len() || next[1] < h.ops[1].len() {
        let i = if next[0] == h.ops[0].len() {
            1
        } else if next[1] == h.ops[1].len() {
            0
        } else {
            rng.usize(..2)
        };
        foreign.push(h.ops[i][next[i]].clone());
        next[i] += 1;
    }
    let mut events = Vec::new();
    let mut locals = steps / 2;
    let mut sent = 0;
    while sent < foreign.len() || locals > 0 {
        match rng.u32(..10) {
            0..=4 if locals > 0 => {
                events.push(Event::Local(rng.u64(..)));
                locals -= 1;
            }
            5 => events.push(Event::Checkpoint),
            _ => {
                let take = (1 + rng.usize(..6)).min(foreign.len() - sent);
                let mut batch = Vec::new();
                for env in &foreign[sent..sent + take] {
                    match rng.u32(..12) {
                        0 => {}
                        1 | 2 => batch.extend([env.clone(), env.clone()]),
                        _ => batch.push(env.clone()),
                    }
                }
                // Sometimes an old operation again.
                if sent > 0 && rng.u32(..4) == 0 {
                    batch.push(foreign[rng.usize(..sent)].clone());
                }
                rng.shuffle(&mut batch);
                sent += take;
                events.push(Event::Deliver(batch));
            }
        }
    }
    events
}

/// Replica options: no fsync, 4 KiB segments, automatic checkpoints every
/// `checkpoint_bytes` (0: never).
fn opts(checkpoint_bytes: u64) -> ReplicaOptions {
    ReplicaOptions { checkpoint_bytes, ..replica_opts() }
}

/// Opens the replica in `dir`, creating it with the actor key of seed `[actor; 32]`.
fn open<D: Document>(dir: &Path, actor: u8, opts: &ReplicaOptions) -> Replica<D> {
    if !dir.join(ACTOR_FILE).exists() {
        create_replica_dir(dir, &ActorKey::from_seed([actor; 32])).expect("create replica dir");
    }
    Replica::open(dir, opts.clone()).expect("open replica")
}

fn reopen<D: Document>(r: Replica<D>, opts: &ReplicaOptions) -> Replica<D> {
    let dir = r.dir().to_path_buf();
    drop(r);
    Replica::open(&dir, opts.clone()).expect("reopen replica")
}

/// The document's canonical encoding and the version vector.
fn state<D: Document>(r: &Replica<D>) -> (Vec<u8>, VersionVector) {
    (r.doc().canonical(), r.clock().clone())
}

/// Plays one event; returns the envelope of a local write.
fn play<D: Document>(
    r: &mut Replica<D>,
    gen: &impl OpGen<D>,
    ev: &Event<D::Operation>,
) -> Option<OpEnvelope<D::Operation>> {
    match ev {
        Event::Local(x) => Some(r.update(|doc, actor| gen.op(doc, actor, *x)).expect("update")),
        Event::Deliver(batch) => {
            r.receive(batch.clone()).expect("receive");
            None
        }
        Event::Checkpoint => {
            r.checkpoint().expect("checkpoint");
            None
        }
    }
}

/// A checkpoint part-way plus the log tail recover the same document and
/// version vector as a replica that replays its whole log (no checkpoint);
/// the checkpointed replica continues its own sequence numbers.
fn snapshot_plus_tail_equals_full_replay<D: Document>(gen: &impl OpGen<D>, seed: u64, cut: u16) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let events = workload(gen, seed, 40);
    let cut = cut as usize % (events.len() + 1);
    // `a` checkpoints at the cut (and at the workload's checkpoints, and
    // automatically); `b` never does.
    let (oa, ob) = (opts(if seed.is_multiple_of(2) { 0 } else { 1024 }), opts(0));
    let mut a: Replica<D> = open(da.path(), 9, &oa);
    let mut b: Replica<D> = open(db.path(), 10, &ob);
    for (i, ev) in events.iter().enumerate() {
        if i == cut {
            a.checkpoint().expect("checkpoint at the cut");
        }
        match ev {
            Event::Local(_) => {
                let env = play(&mut a, gen, ev).expect("local write");
                b.receive([env]).expect("receive a's write");
            }
            Event::Deliver(batch) => {
                a.receive(batch.clone()).expect("receive");
                b.receive(batch.clone()).expect("receive");
            }
            Event::Checkpoint => a.checkpoint().expect("checkpoint"),
        }
    }
    let live = state(&a);
    assert_eq!(live, state(&b), "same operations, different states before reopening");
    let (mut a, b) = (reopen(a, &oa), reopen(b, &ob));
    assert_eq!(state(&a), live, "checkpoint + log tail differs from the live replica");
    assert_eq!(state(&b), live, "full log replay differs from the live replica");
    let env = a.update(|doc, actor| gen.op(doc, actor, seed)).expect("update after reopen");
    assert_eq!(env.seq(), live.1.get(&a.actor()) + 1, "sequence number after recovery");
}

/// Reopening twice gives the same document and version vector as before
/// (and writing after recovery, then reopening, keeps the write).
fn recovery_is_idempotent<D: Document>(gen: &impl OpGen<D>, seed: u64) {
    let d = tempfile::tempdir().unwrap();
    let o = opts(300 + seed % 1500);
    let mut r: Replica<D> = open(d.path(), 9, &o);
    for ev in &workload(gen, seed, 50) {
        play(&mut r, gen, ev);
    }
    let live = state(&r);
    let r = reopen(r, &o);
    assert_eq!(state(&r), live, "first recovery");
    let mut r = reopen(r, &o);
    assert_eq!(state(&r), live, "second recovery");
    r.update(|doc, actor| gen.op(doc, actor, seed.rotate_left(3))).expect("update after recovery");
    let after = state(&r);
    let r = reopen(r, &o);
    assert_eq!(state(&r), after, "recovery after a write following recovery");
    assert_eq!(state(&reopen(r, &o)), after, "and again");
}

/// From a random point on, every checkpoint (automatic or explicit) stops
/// after `step` (1: header written, 2: body written, 3: temp file synced,
/// 4: renamed, directory not synced) as if the process crashed there. The
/// replica then reopens with everything acknowledged, continues its
/// sequence numbers, and a complete checkpoint later cleans up.
fn crash_during_checkpoint<D: Document>(gen: &impl OpGen<D>, seed: u64, step: u8) {
    let d = tempfile::tempdir().unwrap();
    let o = opts(400 + seed % 1000);
    let events = workload(gen, seed, 40);
    let crash_from = (seed >> 32) as usize % (events.len() + 1);
    let mut r: Replica<D> = open(d.path(), 9, &o);
    for (i, ev) in events.iter().enumerate() {
        if i == crash_from {
            set_checkpoint_crash_point(&mut r, Some(step));
        }
        play(&mut r, gen, ev);
    }
    set_checkpoint_crash_point(&mut r, Some(step));
    let acknowledged = state(&r);
    r.checkpoint().expect("interrupted checkpoint");
    drop(r); // the crash
    let r: Replica<D> = Replica::open(d.path(), o.clone()).expect("reopen after a crash during a checkpoint");
    assert_eq!(state(&r), acknowledged, "crash after checkpoint step {step}");
    let mut r = reopen(r, &o);
    assert_eq!(state(&r), acknowledged, "second recovery after a crash after checkpoint step {step}");
    let env = r.update(|doc, actor| gen.op(doc, actor, seed)).expect("update after recovery");
    assert_eq!(env.seq(), acknowledged.1.get(&r.actor()) + 1, "sequence number after recovery");
    r.checkpoint().expect("complete checkpoint");
    assert!(!d.path().join("checkpoint.tmp").exists(), "a complete checkpoint leaves no temp file");
    let after = state(&r);
    assert_eq!(state(&reopen(r, &o)), after, "recovery after a complete checkpoint");
}

/// Pulls what `to` misses from `from` with pages of at most `budget` bytes,
/// checking each page. Returns (operations moved, snapshots merged).
fn pull<D: Document>(from: &Replica<D>, to: &mut Replica<D>, budget: usize) -> (usize, usize) {
    let (mut moved, mut snapshots) = (0, 0);
    for _ in 0..=from.clock().total() + 1 {
        let theirs = to.clock().clone();
        match from.ops_since(&theirs, budget).expect("ops_since") {
            Catchup::Ops { ops, more } => {
                assert!(!more || !ops.is_empty(), "empty page with more to come");
                check_page_heads(&ops);
                let mut clock = theirs.clone();
                for env in &ops {
                    assert_eq!(env.seq(), clock.get(&env.actor()) + 1, "page out of per-actor order");
                    clock.observe(env.actor(), env.seq());
                }
                moved += ops.len();
                let report = to.receive(ops).expect("receive page");
                assert_eq!(report.buffered, 0, "a page held operations the peer cannot apply yet");
                assert!(to.clock().covers(&clock));
                if !more {
                    assert!(to.clock().covers(from.clock()), "the last page left operations out");
                    return (moved, snapshots);
                }
            }
            Catchup::Snapshot { state, clock } => {
                to.merge_snapshot(state, clock).expect("merge snapshot");
                assert!(to.clock().covers(from.clock()), "a merged snapshot left operations out");
                snapshots += 1;
            }
        }
    }
    panic!("ops_since did not finish within one page per operation");
}

/// Each actor's operations in a page end at a signed head: a page is cut
/// at its byte budget only where the requester can verify what it got
/// (past the budget, an actor's run goes on to its next signed head, so
/// the page may exceed the budget; tests/sync checks by how much where
/// the log's heads are known).
fn check_page_heads<O>(ops: &[OpEnvelope<O>]) {
    for (i, e) in ops.iter().enumerate() {
        let last_of_actor = ops[i + 1..].iter().all(|n| n.actor() != e.actor());
        assert!(
            !last_of_actor || e.signature().is_some(),
            "operation {} of {} ends its part of a page of {} without a signed head",
            e.seq(),
            e.actor(),
            ops.len()
        );
    }
}

fn nothing_to_send<D: Document>(from: &Replica<D>, to: &Replica<D>) {
    match from.ops_since(to.clock(), 1).expect("ops_since") {
        Catchup::Ops { ops, more } => assert!(ops.is_empty() && !more, "second round moved {} operations", ops.len()),
        Catchup::Snapshot { .. } => panic!("second round sent a snapshot"),
    }
}

/// `s` and `p` write and receive overlapping traffic (never truncating
/// their logs); paging with a tiny byte budget both ways converges them,
/// without snapshots, and a second round moves nothing.
fn paging_converges<D: Document>(gen: &impl OpGen<D>, seed: u64, budget: u8) {
    let budget = 1 + budget as usize;
    let (ds, dp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let o = opts(0);
    let mut s: Replica<D> = open(ds.path(), 9, &o);
    let mut p: Replica<D> = open(dp.path(), 10, &o);
    let mut rng = Rng::with_seed(seed ^ 0x1234_5678);
    // No checkpoints: nothing is truncated.
    for ev in workload(gen, seed, 40).iter().filter(|ev| !matches!(ev, Event::Checkpoint)) {
        let env = play(&mut s, gen, ev);
        match (ev, env) {
            (Event::Deliver(batch), _) if rng.u32(..2) == 0 => {
                p.receive(batch.clone()).expect("receive");
            }
            (_, Some(env)) if rng.u32(..3) == 0 => {
                p.receive([env]).expect("receive s's write");
            }
            _ => {}
        }
        if rng.u32(..4) == 0 {
            let x = rng.u64(..);
            p.update(|doc, actor| gen.op(doc, actor, x)).expect("update");
        }
    }
    let (to_p, snaps) = pull(&s, &mut p, budget);
    assert_eq!(snaps, 0, "no log was truncated, yet a snapshot was sent");
    let (_, snaps) = pull(&p, &mut s, budget);
    assert_eq!(snaps, 0, "no log was truncated, yet a snapshot was sent");
    assert_eq!(state(&s), state(&p), "paged catch-up did not converge");
    assert!(to_p <= s.clock().total() as usize);
    nothing_to_send(&s, &p);
    nothing_to_send(&p, &s);
}

/// `s` writes more than two log segments and checkpoints, so its log is
/// truncated. A fresh peer, and a peer that has a few of `s`'s first
/// operations, its own concurrent writes and early operations waiting in
/// its buffer, both get a snapshot, and converge with `s` after merging it.
fn peer_behind_truncation_gets_a_snapshot<D: Document>(gen: &impl OpGen<D>, seed: u64) {
    let (ds, dp, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let o = opts(0);
    let mut s: Replica<D> = open(ds.path(), 9, &o);
    let mut p: Replica<D> = open(dp.path(), 10, &o);
    let mut rng = Rng::with_seed(seed);
    let mut mine = Vec::new();
    let mut logged = 0;
    while logged < 3 * 4096 {
        let x = rng.u64(..);
        let env = s.update(|doc, actor| gen.op(doc, actor, x)).expect("update");
        // The operation's bytes and at least its block's header and the
        // log frame around it.
        logged += env.op_bytes().len() + 32;
        mine.push(env);
    }
    for ev in &workload(gen, seed, 20) {
        play(&mut s, gen, ev);
    }
    // Two checkpoints: the log is kept back to the one before last.
    s.checkpoint().expect("checkpoint");
    s.checkpoint().expect("checkpoint");
    // The peer: s's first few writes, its own, and two early ones of s.
    let have = 1 + rng.usize(..3);
    p.receive(mine[..have].to_vec()).expect("receive");
    for _ in 0..3 {
        let x = rng.u64(..);
        p.update(|doc, actor| gen.op(doc, actor, x)).expect("update");
    }
    let early = have + 2 + rng.usize(..mine.len() - have - 2);
    p.receive([mine[early].clone()]).expect("receive an early op");
    // Written after the snapshot is taken: the peer gets the second first.
    let answer = s.ops_since(p.clock(), 256).expect("ops_since");
    let after: Vec<_> = (0..2)
        .map(|_| {
            let x = rng.u64(..);
            s.update(|doc, actor| gen.op(doc, actor, x)).expect("update")
        })
        .collect();
    p.receive([after[1].clone()]).expect("receive an early op");
    assert_eq!(p.buffered(), 2);
    let Catchup::Snapshot { state: snap, clock } = answer else {
        panic!("a peer missing truncated operations got operations instead of a snapshot");
    };
    p.merge_snapshot(snap, clock).expect("merge snapshot");
    assert_eq!(p.buffered(), 1, "the snapshot covers one early op; the other still waits for its predecessor");
    p.receive([after[0].clone()]).expect("receive the missing op");
    assert_eq!(p.buffered(), 0);
    assert!(p.clock().covers(s.clock()));
    pull(&p, &mut s, 128);
    assert_eq!(state(&s), state(&p), "no convergence after the snapshot");
    nothing_to_send(&s, &p);
    nothing_to_send(&p, &s);
    let merged = state(&p);
    assert_eq!(state(&reopen(p, &o)), merged, "a merged snapshot survives reopening");
    // A fresh peer gets a snapshot too.
    let mut fresh: Replica<D> = open(df.path(), 11, &o);
    assert!(matches!(s.ops_since(fresh.clock(), 1 << 20).expect("ops_since"), Catchup::Snapshot { .. }));
    let (_, snaps) = pull(&s, &mut fresh, 64);
    assert_eq!(snaps, 1);
    assert_eq!(state(&fresh), state(&s));
}

/// The same properties for each ready-made document.
macro_rules! document_props {
    ($name:ident, $doc:ty, $gen:expr) => {
        mod $name {
            use super::*;

            type D = $doc;

            fn gen() -> impl OpGen<D> {
                $gen
            }

            // The laws and convergence of `walrus::testing` on their own run
            // in `laws.rs`, through the seed-based entry points.
            proptest! {
                #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

                #[test]
                fn snapshot_plus_tail_equals_full_replay(seed: u64, cut: u16) {
                    super::snapshot_plus_tail_equals_full_replay::<D>(&gen(), seed, cut);
                }

                #[test]
                fn crash_during_checkpoint(seed: u64, step in 1u8..=4) {
                    super::crash_during_checkpoint::<D>(&gen(), seed, step);
                }
            }

            #[test]
            fn quickcheck_all_laws() {
                fn prop(case: Case) {
                    check_case::<D>(&gen(), &case);
                }
                QuickCheck::new().tests(12).quickcheck(prop as fn(Case));
            }

            #[test]
            fn quickcheck_recovery_is_idempotent() {
                fn prop(seed: u64) {
                    super::recovery_is_idempotent::<D>(&gen(), seed);
                }
                QuickCheck::new().tests(24).quickcheck(prop as fn(u64));
            }

            #[test]
            fn quickcheck_paging_converges() {
                fn prop(seed: u64, budget: u8) {
                    super::paging_converges::<D>(&gen(), seed, budget);
                }
                QuickCheck::new().tests(24).quickcheck(prop as fn(u64, u8));
            }

            #[test]
            fn quickcheck_peer_behind_truncation_gets_a_snapshot() {
                fn prop(seed: u64) {
                    super::peer_behind_truncation_gets_a_snapshot::<D>(&gen(), seed);
                }
                QuickCheck::new().tests(8).quickcheck(prop as fn(u64));
            }
        }
    };
}

document_props!(kv, KvDoc, KvOps::default());
document_props!(set, SetDoc, SetOps::default());
document_props!(counter, CounterDoc, CounterOps);
document_props!(register, RegisterDoc, RegisterOps);

/// The crash test with a durable sync policy, one step at a time.
#[test]
fn crash_during_checkpoint_with_fsync() {
    for step in 1..=4u8 {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(0);
        o.wal.sync = walrus::wal::SyncPolicy::Always;
        let mut r: Replica<KvDoc> = open(d.path(), 9, &o);
        let gen = KvOps { keys: 9 };
        for x in 0..60u64 {
            r.update(|doc, actor| gen.op(doc, actor, x.wrapping_mul(0x9e37_79b9_7f4a_7c15))).unwrap();
            if x == 30 {
                r.checkpoint().unwrap();
            }
        }
        let acknowledged = state(&r);
        set_checkpoint_crash_point(&mut r, Some(step));
        r.checkpoint().unwrap();
        drop(r);
        let r: Replica<KvDoc> = Replica::open(d.path(), o).unwrap();
        assert_eq!(state(&r), acknowledged, "crash after checkpoint step {step}");
    }
}
