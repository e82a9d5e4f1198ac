//! Power loss while a rolled-back replica retires its actor and rewrites
//! its fork: whatever reached the disk, nothing either side acknowledged is
//! lost, the two converge, and the replica never signs a forked number of
//! an actor again.
//!
//! The scenario of `tests/replica_restore.rs`: replica R writes k1, is
//! backed up, writes k2, k3 and k4, which its peer C receives; R is rolled
//! back in place (same files, old contents). Then, with [`PowerLoss`] under
//! R, the process after the rollback: R opens, writes k9 under the old
//! actor's number 2, which C holds another operation for (a fork), syncs
//! from C (which makes it retire its actor and rewrite the fork:
//! `actor.rewrite`, `actor.retire`, a new key, a rebuilt state, a
//! checkpoint, the forked writes issued again) and writes k7. Variants: R
//! also checkpointed before the backup, and after k9 checkpoints and writes
//! k8 (number 3, forked too; the rewrite starts from the older checkpoint
//! generation); or C has truncated its log since, so R learns from a
//! snapshot. The power is cut at every file operation of that process; for
//! each cut several crash states are materialized, and each is opened in
//! strict mode, synced with C both ways until nothing moves, and checked:
//!
//! - every write either side acknowledged (k1 to k4 on C; k9, k8 and k7 on
//!   R) is on both, with its value only;
//! - equal version vectors and equal canonical states, no equivocation
//!   reported on either side;
//! - R writes under an actor other than the rolled-back one, and its next
//!   write takes an (actor, seq) never acknowledged before, which C
//!   accepts;
//! - reopening R changes nothing.
//!
//! Except in one class of crash states, which get the last two checks and
//! k1 and k4 on both: R's log holds its forked k9, and nothing on disk
//! says the actor is to be retired (the power failed before
//! `actor.rewrite` was durable). R then opens as if k9 were written before
//! the rollback (only operations written since the open are taken as
//! forked), and C sends only the actor's numbers R lacks. R retires the
//! actor on seeing them, but k9 and C's k2 (both number 2; with k8, also
//! k8 and k3) are never exchanged. A restart between writing k9 and
//! hearing from C does the same without a power loss. The totals printed
//! count these states (`fork_forgotten`).
//!
//! `actor.home` records `actor.key`'s inode, and a materialized copy has
//! new ones: as in `tests/replica_power_loss.rs`, a crash state whose
//! `actor.home` was written for the key it holds has the record removed
//! (the machine kept its inodes); one that does not match is left, and R
//! retires its actor on open, as after a real crash.
//!
//! Longer runs: `WALRUS_FORK_POWER_STATES` sets the crash states per cut
//! (default 4). A failure names the variant, cut and state to replay.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::helpers::{actor_of, copy_dir, env_u64, roll_back_in_place, scratch_dir, values};
use walrus::replica::{ActorId, Catchup, Document, KvDoc, Replica, ReplicaOptions};
use walrus::wal::{PowerLoss, SyncPolicy, WalOptions};

const REPLICA: &str = "r";
const KEY_FILE: &str = "actor.key";
const HOME_FILE: &str = "actor.home";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// R wrote k9 after the rollback; C sends its operations.
    Fork,
    /// R wrote k9, checkpointed, wrote k8; C sends its operations.
    ForkAcrossCheckpoint,
    /// R wrote k9; C's log no longer holds the actor's operations, so it
    /// answers with a snapshot.
    Snapshot,
}

/// `Always` and no preallocation: no background thread, so operation
/// counts repeat exactly between the dry run and the cut runs.
fn opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::Always).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 0, document: Some("notes".into()), ..ReplicaOptions::default() }
}

fn faulty(power: &Arc<PowerLoss>) -> ReplicaOptions {
    let mut o = opts();
    o.wal = o.wal.with_faults(power.clone());
    o
}

fn open(dir: &Path) -> Replica<KvDoc> {
    Replica::open(dir, opts()).expect("open replica")
}

/// Pulls everything `to` is missing from `from`. Returns the first error
/// instead of panicking (the power may fail under `to`).
fn sync(from: &Replica<KvDoc>, to: &mut Replica<KvDoc>) -> walrus::replica::Result<()> {
    loop {
        match from.ops_since(to.clock(), 64 << 10)? {
            Catchup::Ops { ops, more } => {
                to.receive(ops)?;
                if !more {
                    return Ok(());
                }
            }
            Catchup::Snapshot { state, clock } => {
                to.learn_successions(&from.successions())?;
                to.merge_snapshot(state, clock)?;
                return Ok(());
            }
        }
    }
}

/// What the set-up acknowledged.
struct Setup {
    /// R's actor before the rollback (and after it, until it learns).
    old: ActorId,
    /// Keys and values C acknowledged.
    acked: Vec<(&'static str, &'static str)>,
    /// (actor, seq) pairs acknowledged on either side.
    signed: BTreeSet<(ActorId, u64)>,
}

/// Builds R (rolled back in place, closed) in `r` and C in `c`, without
/// faults.
fn set_up(variant: Variant, r_dir: &Path, c_dir: &Path) -> Setup {
    let backup = scratch_dir();
    let mut signed = BTreeSet::new();
    let mut r = open(r_dir);
    let mut c = open(c_dir);
    let old = r.actor();
    signed.insert(pair(&r.update(|d, a| d.put_op(a, "k1", "one")).unwrap()));
    if variant == Variant::ForkAcrossCheckpoint {
        // The rewrite then starts from this generation, older than the
        // fork, rather than from the whole log.
        r.checkpoint().unwrap();
    }
    drop(r);
    copy_dir(r_dir, &backup.path().join("r"));
    let mut r = open(r_dir);
    signed.insert(pair(&r.update(|d, a| d.put_op(a, "k2", "two")).unwrap()));
    signed.insert(pair(&r.update(|d, a| d.put_op(a, "k3", "three")).unwrap()));
    signed.insert(pair(&r.update(|d, a| d.put_op(a, "k4", "four")).unwrap()));
    sync(&r, &mut c).unwrap();
    drop(r);
    assert_eq!(c.clock().get(&old), 4);
    let acked = vec![("k1", "one"), ("k2", "two"), ("k3", "three"), ("k4", "four")];

    if variant == Variant::Snapshot {
        // C writes on and checkpoints until its log no longer holds the
        // actor's operations: a snapshot is what it can send.
        let pad = "p".repeat(900);
        for round in 0..3 {
            for i in 0..6 {
                let key = format!("c{round}{i}");
                signed.insert(pair(&c.update(|d, a| d.put_op(a, &key, &pad)).unwrap()));
            }
            c.checkpoint().unwrap();
        }
        let mut probe = walrus::replica::VersionVector::default();
        probe.observe(old, 1);
        assert!(
            matches!(c.ops_since(&probe, 1 << 20).unwrap(), Catchup::Snapshot { .. }),
            "C's log still holds the actor's operations"
        );
    }
    drop(c);

    roll_back_in_place(&backup.path().join("r"), r_dir);
    Setup { old, acked, signed }
}

fn pair<O>(env: &walrus::replica::OpEnvelope<O>) -> (ActorId, u64) {
    (env.actor(), env.seq())
}

/// Copies the set-up into fresh directories: R under `root`, C in `c`.
/// A copy has new inodes; the machine that was rolled back did not, so
/// both identity records go (each replica records its own again on open).
fn place(template: &Path, root: &Path, c: &Path) {
    copy_dir(&template.join("r"), &root.join(REPLICA));
    copy_dir(&template.join("c"), c);
    fs::remove_file(root.join(REPLICA).join(HOME_FILE)).unwrap();
    fs::remove_file(c.join(HOME_FILE)).unwrap();
}

/// What the process under the power loss acknowledged.
#[derive(Default)]
struct Run {
    /// (actor.home, actor.key) contents written for each other.
    homes: BTreeSet<(Vec<u8>, Vec<u8>)>,
    /// R's writes acknowledged under the power loss: key, value, (actor, seq).
    acked: Vec<(&'static str, &'static str, (ActorId, u64))>,
    /// Whether R finished syncing from C.
    synced: bool,
}

impl Run {
    fn note_identity(&mut self, dir: &Path) {
        if let (Ok(home), Ok(key)) = (fs::read(dir.join(HOME_FILE)), fs::read(dir.join(KEY_FILE))) {
            self.homes.insert((home, key));
        }
    }
}

/// R opens under `power`, writes k9 (and, across a checkpoint, k8) under
/// the rolled-back actor, syncs from C and writes k7, until the power
/// fails. Any error with the power on is a bug.
fn process(variant: Variant, dir: &Path, c: &Replica<KvDoc>, power: &Arc<PowerLoss>, s: &Setup) -> Run {
    let mut run = Run::default();
    let lost = |what: &str, e: &dyn std::fmt::Display| {
        assert!(power.power_lost(), "{what} failed with the power on: {e}");
    };
    let res = Replica::<KvDoc>::open(dir, faulty(power));
    run.note_identity(dir);
    let mut r = match res {
        Ok(r) => r,
        Err(e) => {
            lost("open", &e);
            return run;
        }
    };
    assert_eq!(r.actor(), s.old, "an in-place rollback is not visible on open");
    let mut writes = vec![("k9", "NINE")];
    if variant == Variant::ForkAcrossCheckpoint {
        writes.push(("k8", "EIGHT"));
    }
    for (i, (key, value)) in writes.into_iter().enumerate() {
        if i > 0 {
            if let Err(e) = r.checkpoint() {
                lost("checkpoint", &e);
                return run;
            }
        }
        match r.update(|d, a| d.put_op(a, key, value)) {
            Ok(env) => {
                assert_eq!(pair(&env), (s.old, 2 + i as u64), "the fork: a number C holds another operation for");
                run.acked.push((key, value, pair(&env)));
            }
            Err(e) => {
                lost("put", &e);
                return run;
            }
        }
    }
    // Twice: the first round makes R retire and rewrite, the second
    // brings the peer's versions of the forked numbers.
    for _ in 0..2 {
        let res = sync(c, &mut r);
        run.note_identity(dir);
        if let Err(e) = res {
            lost("sync", &e);
            return run;
        }
    }
    run.synced = true;
    assert_ne!(r.actor(), s.old, "R learned of the fork and retired its actor");
    match r.update(|d, a| d.put_op(a, "k7", "SEVEN")) {
        Ok(env) => {
            assert!(!s.signed.contains(&pair(&env)), "k7 signed as {:?}, taken before", pair(&env));
            run.acked.push(("k7", "SEVEN", pair(&env)));
        }
        Err(e) => lost("put", &e),
    }
    run
}

/// Syncs both ways until a round moves nothing.
fn settle(r: &mut Replica<KvDoc>, c: &mut Replica<KvDoc>, ctx: &str) {
    for _ in 0..6 {
        let before = (r.clock().clone(), c.clock().clone());
        sync(c, r).unwrap_or_else(|e| panic!("{ctx}: sync to R: {e}"));
        sync(r, c).unwrap_or_else(|e| panic!("{ctx}: sync to C: {e}"));
        if (r.clock().clone(), c.clock().clone()) == before {
            return;
        }
    }
    panic!("{ctx}: syncing never settles: R {:?}, C {:?}", r.clock(), c.clock());
}

#[derive(Debug, Default)]
struct Totals {
    states: usize,
    /// States opened with the old actor still current and nothing on disk
    /// saying it is to be retired.
    old_actor_on_open: usize,
    /// States with `actor.rewrite` left, finished on open.
    rewrite_left: usize,
    /// States with `actor.retire` left, finished on open.
    retire_left: usize,
    /// States holding an operation R wrote under the rolled-back actor,
    /// with nothing on disk saying it is forked (see `check`).
    fork_forgotten: usize,
    /// States checked in full in which R had acknowledged its forked k9.
    fork_kept: usize,
}

/// Opens the crash state of R in `dir` strictly, settles it with C and
/// checks everything.
fn check(dir: &Path, c: &mut Replica<KvDoc>, s: &Setup, run: &Run, ctx: &str, t: &mut Totals) {
    let key = fs::read(dir.join(KEY_FILE)).unwrap_or_else(|e| panic!("{ctx}: actor key lost: {e}"));
    if let Ok(home) = fs::read(dir.join(HOME_FILE)) {
        if run.homes.contains(&(home, key.clone())) {
            fs::remove_file(dir.join(HOME_FILE)).unwrap();
        }
    }
    let rewrite_left = dir.join("actor.rewrite").exists();
    let retire_left = dir.join("actor.retire").exists();
    t.rewrite_left += usize::from(rewrite_left);
    t.retire_left += usize::from(retire_left);
    let undecided = actor_of(&key) == Some(s.old) && !rewrite_left && !retire_left;

    let mut r = Replica::<KvDoc>::open(dir, opts()).unwrap_or_else(|e| panic!("{ctx}: strict open: {e}"));
    t.old_actor_on_open += usize::from(undecided);
    // k9 is in the log under the old actor, and nothing says it is forked:
    // the limit described at the top of this file.
    let forgotten = undecided && r.clock().get(&s.old) >= 2;
    settle(&mut r, c, ctx);

    assert_ne!(r.actor(), s.old, "{ctx}: R still writes under the rolled-back actor");
    assert_eq!(r.clock(), c.clock(), "{ctx}: version vectors differ");
    let mut signed = s.signed.clone();
    signed.extend(run.acked.iter().map(|w| w.2));
    if forgotten {
        t.fork_forgotten += 1;
        // Only the forked numbers are affected: k1 (before the fork) and
        // k4 (beyond what R held) are on both.
        for (key, want) in [("k1", "one"), ("k4", "four")] {
            assert_eq!(values(&r, key), [want], "{ctx}: {key} on R");
            assert_eq!(values(c, key), [want], "{ctx}: {key} on C");
        }
    } else {
        let shown = |x: &Replica<KvDoc>| -> Vec<(&str, Vec<String>)> {
            ["k1", "k2", "k3", "k4", "k7", "k8", "k9"].into_iter().map(|k| (k, values(x, k))).collect()
        };
        assert!(
            r.doc().canonical() == c.doc().canonical(),
            "{ctx}: states differ: R {:?}, C {:?} (actor.rewrite left {rewrite_left}, actor.retire left {retire_left})",
            shown(&r),
            shown(c),
        );
        let mine = run.acked.iter().map(|w| (w.0, w.1));
        for (key, want) in s.acked.iter().copied().chain(mine) {
            assert_eq!(values(&r, key), [want], "{ctx}: {key} on R");
            assert_eq!(values(c, key), [want], "{ctx}: {key} on C");
        }
        for key in ["k9", "k8", "k7"] {
            assert!(values(&r, key).len() <= 1, "{ctx}: {key} = {:?}", values(&r, key));
        }
        t.fork_kept += usize::from(run.acked.iter().any(|w| w.0 == "k9"));
    }
    assert!(r.take_equivocations().is_empty(), "{ctx}: R reports an equivocation");
    assert!(c.take_equivocations().is_empty(), "{ctx}: C reports an equivocation");

    // The next write takes a number never acknowledged, and C takes it.
    let env = r.update(|d, a| d.put_op(a, "after", "crash")).unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
    assert_ne!(env.actor(), s.old, "{ctx}: writer");
    let top = signed.range((env.actor(), 0)..=(env.actor(), u64::MAX)).next_back().map_or(0, |p| p.1);
    assert!(env.seq() > top, "{ctx}: ({}, {}) signed again: {top} was acknowledged", env.actor(), env.seq());
    let got = c.receive([env]).unwrap_or_else(|e| panic!("{ctx}: C refuses R's write: {e}"));
    assert_eq!(got.applied, 1, "{ctx}: C applies R's next write: {got:?}");
    assert_eq!(r.clock(), c.clock(), "{ctx}: after the next write");

    // Reopening changes nothing.
    let (actor, clock, state) = (r.actor(), r.clock().clone(), r.doc().canonical());
    drop(r);
    let r = Replica::<KvDoc>::open(dir, opts()).unwrap_or_else(|e| panic!("{ctx}: second open: {e}"));
    assert!(r.recovered().is_empty(), "{ctx}: second open recovered {:?}", r.recovered());
    assert_eq!(r.actor(), actor, "{ctx}: second open changed the actor");
    assert_eq!(r.clock(), &clock, "{ctx}: second open changed the clock");
    assert!(r.doc().canonical() == state, "{ctx}: second open changed the state");
    t.states += 1;
}

fn cut_everywhere(variant: Variant) -> Totals {
    let states = env_u64("WALRUS_FORK_POWER_STATES", 4);
    let template = scratch_dir();
    let s = set_up(variant, &template.path().join("r"), &template.path().join("c"));

    // The dry run: how many operations the process does.
    let (root, c_dir) = (scratch_dir(), scratch_dir());
    place(template.path(), root.path(), c_dir.path());
    let c = open(c_dir.path());
    let power = Arc::new(PowerLoss::new(root.path()).unwrap());
    let run = process(variant, &root.path().join(REPLICA), &c, &power, &s);
    assert!(run.synced && run.acked.iter().any(|w| w.0 == "k7"), "{variant:?}: the dry run finishes");
    let ops = power.operations();
    assert!(ops > 20, "{variant:?}: only {ops} operations");

    let mut t = Totals::default();
    for cut in 1..=ops + 1 {
        let (root, c_dir) = (scratch_dir(), scratch_dir());
        place(template.path(), root.path(), c_dir.path());
        let c = open(c_dir.path());
        let power = Arc::new(PowerLoss::new(root.path()).unwrap().cut_at(cut));
        let run = process(variant, &root.path().join(REPLICA), &c, &power, &s);
        assert_eq!(power.power_lost(), cut <= ops, "{variant:?} cut {cut} of {ops}");
        drop(c);
        for state in 0..states {
            let ctx = format!("{variant:?} cut {cut} of {ops} state {state}");
            let crashed = scratch_dir();
            power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            // C as it was at the cut (it was only read), for each state.
            let c_copy = scratch_dir();
            copy_dir(c_dir.path(), c_copy.path());
            fs::remove_file(c_copy.path().join(HOME_FILE)).unwrap();
            let mut c = open(c_copy.path());
            check(&crashed.path().join(REPLICA), &mut c, &s, &run, &ctx, &mut t);
        }
    }
    eprintln!("{variant:?}: {ops} operations, {t:?}");
    assert!(t.old_actor_on_open > 0, "{variant:?}: no state lost the whole retirement: {t:?}");
    assert!(t.fork_kept > 0, "{variant:?}: no state kept a forked write through the rewrite: {t:?}");
    assert!(t.rewrite_left > 0, "{variant:?}: no state left a rewrite to finish: {t:?}");
    assert!(t.retire_left > 0, "{variant:?}: no state left a retirement to finish: {t:?}");
    t
}

#[test]
fn a_fork_rewrite_cut_anywhere_keeps_both_sides_writes() {
    cut_everywhere(Variant::Fork);
}

#[test]
fn a_fork_across_a_checkpoint_cut_anywhere_keeps_both_sides_writes() {
    cut_everywhere(Variant::ForkAcrossCheckpoint);
}

#[test]
fn a_fork_learned_from_a_snapshot_cut_anywhere_keeps_both_sides_writes() {
    cut_everywhere(Variant::Snapshot);
}

/// Without a power loss: a rolled-back replica that wrote nothing since
/// receives two later operations of its actor in one batch. The second
/// must not be taken for one it wrote since it opened (and be written
/// again under the new actor, showing the peer's k2 twice).
#[test]
fn a_peer_s_operations_of_the_actor_are_not_taken_for_the_replica_s_own() {
    let template = scratch_dir();
    let s = set_up(Variant::Fork, &template.path().join("r"), &template.path().join("c"));
    let mut r = open(&template.path().join("r"));
    let mut c = open(&template.path().join("c"));
    assert_eq!((r.actor(), r.clock().get(&s.old)), (s.old, 1));
    let Catchup::Ops { ops, more: false } = c.ops_since(r.clock(), 1 << 20).unwrap() else { panic!("one page") };
    assert_eq!(ops.len(), 3);
    let got = r.receive(ops).unwrap();
    assert_ne!(r.actor(), s.old, "retired");
    assert_eq!(got.applied, 3, "taken as the retired actor's: {got:?}");
    assert_eq!(r.clock().get(&r.actor()), 0, "nothing written again");
    settle(&mut r, &mut c, "no power loss");
    assert!(r.doc().canonical() == c.doc().canonical());
    for (key, want) in &s.acked {
        assert_eq!(values(&r, key), [*want], "{key}");
    }
}
