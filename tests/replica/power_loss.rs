//! Power loss under a replica: every crash state opens, keeps every
//! acknowledged operation, and never lets an actor sign a second operation
//! for a number it already used.
//!
//! A seeded workload (puts through `update` and `update_many`, checkpoints
//! that truncate the log behind the older generation, retiring the actor,
//! reopening) runs on [`PowerLoss`] under `SyncPolicy::Always` and
//! `SyncPolicy::batch()`, in 4 KiB segments with and without preallocation.
//! Cut points are drawn from a dry run of the same workload: some uniform,
//! one inside each `checkpoint()` and `retire_actor()` call. For each cut,
//! several crash states are materialized, and each must:
//!
//! - open in strict mode, reporting a damaged checkpoint generation (if
//!   any) in `Replica::recovered()`, never failing because of one;
//! - hold every acknowledged (actor, seq) in its clock (acknowledged: the
//!   call returned `Ok`), and for each key the last acknowledged value or
//!   one written after it, and nothing that was never written;
//! - have as its actor one whose key the replica made, never one whose
//!   retirement was acknowledged or had begun (a retirement cut part-way,
//!   once `actor.retire` names the actor, is finished on open); and
//!   write next under a sequence number that actor never had acknowledged.
//!
//! Some crash states get more: one of their two checkpoint generations is
//! damaged on top (bit rot: the replica must open from the other one and
//! report it), or the power fails a second time in the life after the
//! first loss (reopening, puts, a checkpoint), at a cut drawn from a dry run
//! of that life, and the second loss's crash states must hold what either
//! life acknowledged. A focused test cuts the power at every operation of
//! one `checkpoint()` of a replica with two generations and a truncated log.
//!
//! `actor.key`'s identity (inode, change time) is recorded in `actor.home`,
//! and a materialized copy has new inodes, which a replica takes for a
//! copied directory (it then retires its actor). A machine that lost power
//! keeps its inodes, so when a crash state's `actor.home` was written for
//! the `actor.key` it holds, the check removes `actor.home` (the replica
//! then records it again) and asserts that the replica kept its actor; when
//! they do not match (the key rename reached the disk, the new record did
//! not), the replica must retire the actor, as it would after a real crash.
//!
//! The replica is created before the model starts: `Replica::open` creates
//! a new `actor.key` outside the fault seam (`ActorKey::load_or_create`, not
//! through the replica's `Files`), so the model could not follow it.
//!
//! Longer runs: `WALRUS_REPLICA_POWER_CASES` sets the workloads per policy
//! (default 12) and `WALRUS_REPLICA_POWER_SEED` the first seed (default 0);
//! a failure message names the policy, seed, cut and crash state to replay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::helpers::{actor_of, env_u64, scratch_dir};
use walrus::replica::{
    ActorId, ActorKey, ChainHash, KvDoc, OpEnvelope, Recovered, Replica, ReplicaOptions, RetireReason,
};
use walrus::wal::{CrashSummary, PowerLoss, SyncPolicy, WalOptions};

const SEGMENT: u64 = 4096;
/// Crash states materialized per cut of the random workloads.
const STATES_PER_CUT: u64 = 4;
/// Distinct keys written.
const KEYS: u64 = 8;
/// The replica directory inside the modelled root.
const REPLICA: &str = "r";
const KEY_FILE: &str = "actor.key";
const HOME_FILE: &str = "actor.home";
const GENERATIONS: [&str; 2] = ["checkpoint", "checkpoint.prev"];

fn options(policy: SyncPolicy, preallocate: bool, checkpoint_bytes: u64) -> ReplicaOptions {
    let mut wal = WalOptions::new(policy).segment_size(SEGMENT);
    wal.preallocate = preallocate;
    ReplicaOptions { wal, checkpoint_bytes, ..ReplicaOptions::default() }
}

fn with_faults(opts: &ReplicaOptions, power: &Arc<PowerLoss>) -> ReplicaOptions {
    let mut o = opts.clone();
    o.wal = o.wal.with_faults(power.clone());
    o
}

/// Whether `bytes` is a whole checkpoint file: magic, version 1, body
/// length and crc32 as docs/ and `src/replica/checkpoint.rs` lay out.
fn checkpoint_intact(bytes: &[u8]) -> bool {
    if bytes.len() < 24 || &bytes[..8] != b"WALRUSCP" || bytes[8..12] != 1u32.to_le_bytes() {
        return false;
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let body = &bytes[24..];
    len == body.len() as u64 && crc32fast::hash(body) == crc
}

/// A put the workload attempted.
#[derive(Clone)]
struct Put {
    key: String,
    value: String,
    acked: bool,
}

/// What the workload did, as the checks need it.
#[derive(Clone, Default)]
struct History {
    /// Every put attempted, in order.
    puts: Vec<Put>,
    /// Acknowledged operations.
    acked: BTreeSet<(ActorId, u64)>,
    /// Per actor, the highest sequence number it may have written.
    attempted: BTreeMap<ActorId, u64>,
    /// Every key `actor.key` held, by actor.
    keys: BTreeMap<ActorId, Vec<u8>>,
    /// `(actor.home, actor.key)` contents that belong together: the record
    /// was written for that key file.
    homes: BTreeSet<(Vec<u8>, Vec<u8>)>,
    last_home: Option<Vec<u8>>,
    /// The actor the replica was created with.
    initial: Option<ActorId>,
    /// Actors whose retirement `retire_actor` acknowledged.
    retired: BTreeSet<ActorId>,
    /// Operation-count windows `[start, end]` of checkpoints and retirements.
    windows: Vec<(u64, u64)>,
    checkpoints: usize,
    retirements: usize,
}

impl History {
    /// Notes the actor key and identity record the replica directory holds
    /// now (read outside the seam: reads change nothing in the model).
    fn note_identity(&mut self, dir: &Path) {
        let key = std::fs::read(dir.join(KEY_FILE)).ok();
        if let Some(k) = &key {
            if let Some(a) = actor_of(k) {
                self.initial.get_or_insert(a);
                self.keys.insert(a, k.clone());
            }
        }
        // `actor.home` is written last, once its key file is in place: a new
        // record belongs to the key file there now.
        if let (Some(home), Some(key)) = (std::fs::read(dir.join(HOME_FILE)).ok(), key) {
            if self.last_home.as_ref() != Some(&home) {
                self.homes.insert((home.clone(), key));
                self.last_home = Some(home);
            }
        }
    }

    fn max_acked(&self, actor: &ActorId) -> u64 {
        self.acked.range((*actor, 0)..=(*actor, u64::MAX)).next_back().map_or(0, |&(_, s)| s)
    }
}

fn value(seed: u64, n: usize, len: u64) -> String {
    let mut v = format!("s{seed}-w{n}-");
    v.extend((0..len).map(|i| (b'a' + ((n as u64 + i) % 26) as u8) as char));
    v
}

/// Flips a byte in the body of one of the two checkpoint generations, if
/// both are there (one damaged generation must never make a replica
/// unopenable, nor lose an acknowledged operation). Returns whether it did.
fn rot_one_generation(dir: &Path, pick: u64) -> bool {
    if !GENERATIONS.iter().all(|g| dir.join(g).exists()) {
        return false;
    }
    let path = dir.join(GENERATIONS[(pick % 2) as usize]);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = 24 + (pick as usize >> 1) % (bytes.len() - 24);
    bytes[at] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    true
}

/// Creates the replica in `dir` without faults: the model starts from it.
fn create(dir: &Path, opts: &ReplicaOptions) {
    let r = Replica::<KvDoc>::open(dir, opts.clone()).unwrap();
    r.close().unwrap();
}

/// Runs the workload of `seed` until it ends or the power fails. Any error
/// before the power fails is a bug.
fn workload(seed: u64, opts: &ReplicaOptions, dir: &Path, power: &Arc<PowerLoss>) -> History {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut h = History::default();
    h.note_identity(dir);
    let faulty = with_faults(opts, power);
    let lost = |what: &str, e: &dyn std::fmt::Display| {
        assert!(power.power_lost(), "seed {seed}: {what} failed with the power on: {e}");
    };
    let mut r = match Replica::<KvDoc>::open(dir, faulty.clone()) {
        Ok(r) => r,
        Err(e) => {
            lost("open", &e);
            return h;
        }
    };
    for _ in 0..36 {
        let x = rng.u64(..100);
        if x < 62 {
            let n = if x < 42 { 1 } else { rng.u64(2..=4) as usize };
            let first = h.puts.len();
            let puts: Vec<(String, String)> =
                (0..n).map(|i| (format!("k{}", rng.u64(..KEYS)), value(seed, first + i, rng.u64(0..=400)))).collect();
            let actor = r.actor();
            let have = r.clock().get(&actor);
            h.attempted.insert(actor, have + n as u64);
            for (key, value) in &puts {
                h.puts.push(Put { key: key.clone(), value: value.clone(), acked: false });
            }
            let results: Vec<_> = if n == 1 {
                let (k, v) = &puts[0];
                vec![r.update(|d, a| d.put_op(a, k, v))]
            } else {
                r.update_many(puts.iter().map(|(k, v)| move |d: &KvDoc, a| d.put_op(a, k, v)))
            };
            assert_eq!(results.len(), n, "seed {seed}: one result per put");
            let mut failed = false;
            for (i, res) in results.into_iter().enumerate() {
                match res {
                    Ok(env) => {
                        assert!(!failed, "seed {seed}: a put acknowledged after one that failed");
                        assert_eq!((env.actor(), env.seq()), (actor, have + 1 + i as u64), "seed {seed}: numbering");
                        h.acked.insert((env.actor(), env.seq()));
                        h.puts[first + i].acked = true;
                    }
                    Err(e) => {
                        lost("put", &e);
                        failed = true;
                    }
                }
            }
            if failed {
                return h;
            }
        } else if x < 80 {
            let before = power.operations();
            let res = r.checkpoint();
            h.windows.push((before + 1, power.operations()));
            match res {
                Ok(()) => h.checkpoints += 1,
                Err(e) => {
                    lost("checkpoint", &e);
                    return h;
                }
            }
        } else if x < 88 && h.retirements < 2 {
            h.retirements += 1;
            let old = r.actor();
            let before = power.operations();
            let res = r.retire_actor();
            h.windows.push((before + 1, power.operations()));
            h.note_identity(dir);
            match res {
                Ok(new) => {
                    assert_ne!(new, old, "seed {seed}: retiring kept the actor");
                    assert_eq!(r.clock().get(&new), 0, "seed {seed}: a new actor starts at 0");
                    h.retired.insert(old);
                }
                Err(e) => {
                    lost("retire", &e);
                    return h;
                }
            }
        } else {
            let clock = r.clock().clone();
            let actor = r.actor();
            drop(r);
            let res = Replica::<KvDoc>::open(dir, faulty.clone());
            h.note_identity(dir);
            r = match res {
                Ok(r) => r,
                Err(e) => {
                    lost("reopen", &e);
                    return h;
                }
            };
            // The process did not crash: nothing it wrote is gone.
            assert_eq!(*r.clock(), clock, "seed {seed}: reopen");
            assert_eq!(r.actor(), actor, "seed {seed}: reopen changed the actor");
            assert!(r.recovered().is_empty(), "seed {seed}: reopen recovered {:?}", r.recovered());
        }
    }
    h
}

/// What the crash states exercised, for the coverage assertions.
#[derive(Debug, Default)]
struct Totals {
    cuts: usize,
    /// Cuts the workload ended before.
    missed: usize,
    states: usize,
    /// States holding both checkpoint generations.
    two_generations: usize,
    /// States whose actor's retirement had begun (its key kept aside) but
    /// did not reach the disk: the replica finished it on open.
    retirement_finished: usize,
    /// States in which a retirement reached the disk: the replica writes as
    /// a successor.
    successor: usize,
    /// States in which the key record did not match its key file (the
    /// replica retired its actor on open, or finished an interrupted
    /// retirement by recording the new key's home).
    moved: usize,
    /// Second power losses, in the life after a first one.
    second_losses: usize,
    /// States in which a checkpoint generation was damaged on top.
    rotted: usize,
    crash: CrashSummary,
}

impl Totals {
    fn add(&mut self, s: &CrashSummary) {
        self.crash.writes_kept += s.writes_kept;
        self.crash.writes_torn += s.writes_torn;
        self.crash.writes_lost += s.writes_lost;
        self.crash.dir_ops_kept += s.dir_ops_kept;
        self.crash.dir_ops_lost += s.dir_ops_lost;
    }
}

/// Checks the crash state's actor key and, if its identity record was
/// written for it, removes the record (the machine kept its inodes; the
/// copy did not), so the replica records it again. Returns the key's actor
/// and whether the replica should take itself to be at home (no record, or
/// a matching one).
fn keep_identity(dir: &Path, h: &History, ctx: &str) -> (ActorId, bool) {
    let key = std::fs::read(dir.join(KEY_FILE)).unwrap_or_else(|e| panic!("{ctx}: actor key lost: {e}"));
    let key_actor = actor_of(&key).unwrap_or_else(|| panic!("{ctx}: actor key of {} bytes", key.len()));
    assert_eq!(h.keys.get(&key_actor), Some(&key), "{ctx}: actor.key holds a key the replica never had");
    let at_home = match std::fs::read(dir.join(HOME_FILE)) {
        Err(_) => true,
        Ok(home) if h.homes.contains(&(home.clone(), key.clone())) => {
            std::fs::remove_file(dir.join(HOME_FILE)).unwrap();
            true
        }
        Ok(_) => false,
    };
    (key_actor, at_home)
}

/// Opens the crash state in `dir` and checks it against the history.
/// Returns the open replica.
fn check(dir: &Path, opts: &ReplicaOptions, h: &History, ctx: &str, totals: &mut Totals) -> Replica<KvDoc> {
    let (key_actor, at_home) = keep_identity(dir, h, ctx);
    // Read before the open, which finishes the retirement and clears it.
    let retirement_begun = retiring(dir) == Some(key_actor);
    // The retirement of another actor was under way: the key in place is
    // its successor, whose identity record may not have been written yet.
    let rotation_interrupted = retiring(dir).is_some_and(|a| a != key_actor);

    let mut damaged = BTreeSet::new();
    let mut present = 0;
    for name in GENERATIONS {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            present += 1;
            if !checkpoint_intact(&bytes) {
                damaged.insert(dir.join(name));
            }
        }
    }
    totals.two_generations += usize::from(present == 2);

    let mut r = Replica::<KvDoc>::open(dir, opts.clone()).unwrap_or_else(|e| panic!("{ctx}: strict open: {e}"));
    let mut reported = BTreeSet::new();
    let mut retired_on_open = None;
    for note in r.recovered() {
        match note {
            Recovered::DamagedCheckpoint { path, .. } => {
                reported.insert(path.clone());
            }
            Recovered::ActorRetired { old, new, reason } => retired_on_open = Some((*old, *new, reason.clone())),
            other => panic!("{ctx}: unexpected recovery {other:?}"),
        }
    }
    assert_eq!(reported, damaged, "{ctx}: damaged checkpoint generations reported");

    // The actor: the one whose key is there, unless the identity record did
    // not match, or a retirement of it began (`actor.retire` names it) and
    // did not finish: then it is retired on open for a new one.
    match retired_on_open {
        None => {
            assert!(
                at_home || rotation_interrupted,
                "{ctx}: actor.home does not match actor.key, yet the actor was kept"
            );
            totals.moved += usize::from(!at_home);
            assert!(!retirement_begun, "{ctx}: the retirement of {key_actor} began, yet it goes on writing");
            assert_eq!(r.actor(), key_actor, "{ctx}: actor");
        }
        Some((old, new, reason)) => {
            assert!(
                !at_home || retirement_begun,
                "{ctx}: actor retired on open ({reason}) though actor.home matched actor.key"
            );
            assert!(retirement_begun || reason == RetireReason::Moved, "{ctx}: retired on open for {reason}");
            totals.retirement_finished += usize::from(retirement_begun);
            assert_eq!(old, key_actor, "{ctx}: retired actor");
            assert_eq!(r.actor(), new, "{ctx}: actor after retiring");
            assert!(!h.keys.contains_key(&new), "{ctx}: new actor {new} is an old one");
            totals.moved += usize::from(!at_home);
        }
    }
    assert!(
        !h.retired.contains(&key_actor),
        "{ctx}: actor {key_actor}, whose retirement was acknowledged, is current again"
    );
    totals.successor += usize::from(h.initial != Some(key_actor));

    // Every acknowledged operation, nothing invented.
    let clock = r.clock().clone();
    for (actor, seq) in &h.acked {
        assert!(clock.get(actor) >= *seq, "{ctx}: acknowledged ({actor}, {seq}) lost: clock has {}", clock.get(actor));
    }
    for (actor, n) in clock.iter() {
        let most = h.attempted.get(actor).copied().unwrap_or(0);
        assert!(*n <= most, "{ctx}: clock has {n} of {actor}, at most {most} were written");
    }
    let mut by_key: BTreeMap<&str, Vec<&Put>> = BTreeMap::new();
    for p in &h.puts {
        by_key.entry(&p.key).or_default().push(p);
    }
    for k in 0..KEYS {
        let key = format!("k{k}");
        let got = r.doc().values_of(&key);
        let puts = by_key.get(key.as_str()).map_or(&[][..], |v| &v[..]);
        let last_acked = puts.iter().rposition(|p| p.acked);
        let allowed: Vec<&str> = puts[last_acked.unwrap_or(0)..].iter().map(|p| p.value.as_str()).collect();
        match got.as_slice() {
            [] => assert!(last_acked.is_none(), "{ctx}: {key} lost its acknowledged value"),
            [v] => {
                assert!(allowed.contains(&v.as_str()), "{ctx}: {key} = {v}, older than acknowledged or never written")
            }
            vs => panic!("{ctx}: {key} has concurrent values {vs:?}"),
        }
    }

    // The next write takes a number its actor never had acknowledged.
    let actor = r.actor();
    let env =
        r.update(|d, a| d.put_op(a, "after", "crash")).unwrap_or_else(|e| panic!("{ctx}: write after reopen: {e}"));
    assert_eq!(env.actor(), actor, "{ctx}: writer");
    assert!(
        env.seq() > h.max_acked(&actor),
        "{ctx}: ({actor}, {}) signed again: {} was acknowledged",
        env.seq(),
        h.max_acked(&actor)
    );
    assert_eq!(env.seq(), clock.get(&actor) + 1, "{ctx}: next number");
    totals.states += 1;
    r
}

/// The life after a power loss: reopening (which may retire the actor or
/// write its key record again), puts, a checkpoint, more puts.
fn second_life(seed: u64, opts: &ReplicaOptions, dir: &Path, power: &Arc<PowerLoss>, h: &mut History) {
    let lost = |what: &str, e: &dyn std::fmt::Display| {
        assert!(power.power_lost(), "seed {seed}: {what} after a power loss failed with the power on: {e}");
    };
    let res = Replica::<KvDoc>::open(dir, with_faults(opts, power));
    h.note_identity(dir);
    let mut r = match res {
        Ok(r) => r,
        Err(e) => return lost("open", &e),
    };
    for note in r.recovered() {
        if let Recovered::ActorRetired { old, .. } = note {
            h.retired.insert(*old);
        }
    }
    for step in 0..6 {
        if step == 3 {
            if let Err(e) = r.checkpoint() {
                return lost("checkpoint", &e);
            }
            continue;
        }
        let n = h.puts.len();
        let (key, value) = (format!("k{}", step % KEYS), value(seed, n, 200));
        let actor = r.actor();
        h.attempted.insert(actor, r.clock().get(&actor) + 1);
        h.puts.push(Put { key: key.clone(), value: value.clone(), acked: false });
        match r.update(|d, a| d.put_op(a, &key, &value)) {
            Ok(env) => {
                h.acked.insert((env.actor(), env.seq()));
                h.puts[n].acked = true;
            }
            Err(e) => return lost("put", &e),
        }
    }
}

/// Power fails a second time, in the life after crash state `state` of
/// `power`: at a cut drawn from a dry run of that life on another copy of
/// the same state. Each crash state of the second loss must hold what
/// either life acknowledged.
fn second_power_loss(
    seed: u64,
    opts: &ReplicaOptions,
    power: &PowerLoss,
    state: u64,
    h: &History,
    ctx: &str,
    totals: &mut Totals,
) {
    let life = |cut: Option<u64>| -> (tempfile::TempDir, Arc<PowerLoss>, History) {
        let root = scratch_dir();
        power.materialize(root.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        keep_identity(&root.path().join(REPLICA), h, ctx);
        let second = PowerLoss::new(root.path()).unwrap();
        let second = Arc::new(match cut {
            Some(c) => second.cut_at(c),
            None => second,
        });
        let mut h2 = h.clone();
        second_life(seed, opts, &root.path().join(REPLICA), &second, &mut h2);
        (root, second, h2)
    };
    let (_dry, dry, _) = life(None);
    let cut = fastrand::Rng::with_seed(seed).u64(1..=dry.operations());
    let (_root, second, h2) = life(Some(cut));
    totals.second_losses += usize::from(second.power_lost());
    for state2 in 0..3 {
        let crashed = scratch_dir();
        let ctx = format!("{ctx}, second loss at {cut} of {}, state {state2}", dry.operations());
        let s = second.materialize(crashed.path(), state2).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        totals.add(&s);
        check(&crashed.path().join(REPLICA), opts, &h2, &ctx, totals);
    }
}

/// Runs `cases` workloads of one policy, with cuts drawn from a dry run of
/// each.
fn run_policy(policy: SyncPolicy, salt: u64) -> Totals {
    let cases = env_u64("WALRUS_REPLICA_POWER_CASES", 12);
    let base = env_u64("WALRUS_REPLICA_POWER_SEED", 0);
    let mut totals = Totals::default();
    let mut dry_checkpoints = 0;
    let mut dry_retirements = 0;
    for case in 0..cases {
        let seed = (base + case) * 2 + salt;
        let preallocate = (seed / 2).is_multiple_of(2);
        // Some workloads also checkpoint by themselves, inside `update`.
        let auto = if seed.is_multiple_of(3) { 3000 } else { 0 };
        let opts = options(policy, preallocate, auto);
        let dry = scratch_dir();
        let dir = dry.path().join(REPLICA);
        create(&dir, &opts);
        let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
        let h = workload(seed, &opts, &dir, &power);
        let ops = power.operations();
        assert!(!power.power_lost());
        assert!(h.acked.len() > 10, "seed {seed}: the dry run did little");
        dry_checkpoints += h.checkpoints;
        dry_retirements += h.retired.len();

        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let mut cuts: Vec<u64> = (0..6).map(|_| rng.u64(1..=ops)).collect();
        for &(a, b) in &h.windows {
            cuts.push(rng.u64(a..=b.max(a)));
        }
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            let real = scratch_dir();
            let dir = real.path().join(REPLICA);
            create(&dir, &opts);
            let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
            let h = workload(seed, &opts, &dir, &power);
            // Operation counts vary a little with background preallocation
            // and group commit; a cut past the end is a power loss at rest.
            totals.missed += usize::from(!power.power_lost());
            for state in 0..STATES_PER_CUT {
                let crashed = scratch_dir();
                let ctx = format!("{policy:?} preallocate {preallocate} seed {seed} cut {cut} state {state}");
                let s = power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                totals.add(&s);
                let dir = crashed.path().join(REPLICA);
                if state == 2 {
                    // Bit rot on top: one of two generations damaged.
                    totals.rotted += usize::from(rot_one_generation(&dir, seed ^ cut));
                }
                let r = check(&dir, &opts, &h, &ctx, &mut totals);
                if state == 1 {
                    second_power_loss(seed ^ cut, &opts, &power, state, &h, &ctx, &mut totals);
                }
                if state == 0 {
                    // The recovered replica goes on: it checkpoints,
                    // truncates and reopens with what it holds.
                    let mut r = r;
                    let clock = r.clock().clone();
                    r.checkpoint().unwrap_or_else(|e| panic!("{ctx}: checkpoint after reopen: {e}"));
                    drop(r);
                    let again = Replica::<KvDoc>::open(&dir, opts.clone())
                        .unwrap_or_else(|e| panic!("{ctx}: second open: {e}"));
                    assert_eq!(*again.clock(), clock, "{ctx}: second open");
                }
            }
            totals.cuts += 1;
        }
    }
    assert!(dry_checkpoints >= 3 * cases as usize, "{policy:?}: few checkpoints ({dry_checkpoints})");
    assert!(dry_retirements > 0, "{policy:?}: the actor was never retired");
    totals
}

fn assert_coverage(what: &str, t: &Totals) {
    eprintln!("{what}: {t:?}");
    let c = &t.crash;
    assert!(t.missed * 4 < t.cuts, "{what}: most cuts missed: {t:?}");
    assert!(t.two_generations > 0, "{what}: no crash state held two checkpoint generations: {t:?}");
    assert!(t.successor > 0, "{what}: no crash state kept a retirement: {t:?}");
    assert!(t.retirement_finished > 0, "{what}: no crash state interrupted a retirement: {t:?}");
    assert!(t.second_losses * 2 > t.cuts, "{what}: few second power losses: {t:?}");
    assert!(t.rotted > 0, "{what}: no checkpoint generation was damaged: {t:?}");
    assert!(t.moved > 0, "{what}: no crash state lost the key record of a new key: {t:?}");
    assert!(c.writes_torn > 0 && c.writes_lost > 0 && c.writes_kept > 0, "{what}: {t:?}");
    assert!(c.dir_ops_lost > 0 && c.dir_ops_kept > 0, "{what}: {t:?}");
}

#[test]
fn always_keeps_every_acknowledged_operation() {
    assert_coverage("always", &run_policy(SyncPolicy::Always, 0));
}

#[test]
fn batch_keeps_every_acknowledged_operation() {
    assert_coverage("batch", &run_policy(SyncPolicy::batch(), 1));
}

/// Every cut inside one `checkpoint()` of a replica that already has two
/// generations and a truncated log, with many crash states each: whatever
/// subset of its writes, renames and unlinks reached the disk, the
/// generations left are whole, at least one is there, the log continues
/// the older one, and every acknowledged operation is back.
#[test]
fn a_checkpoint_cut_anywhere_leaves_a_way_back() {
    const STATES: u64 = 16;
    // No preallocation and `Always`: no background thread, so operation
    // counts repeat exactly between the dry run and the cut runs.
    let opts = options(SyncPolicy::Always, false, 0);
    // Three checkpoints with writes between: two generations, and segments
    // truncated behind the older one.
    let prepare = |dir: &Path| -> History {
        let mut h = History::default();
        let mut r = Replica::<KvDoc>::open(dir, opts.clone()).unwrap();
        for round in 0..4 {
            for i in 0..8 {
                let n = h.puts.len();
                let (key, value) = (format!("k{}", (round * 3 + i) % KEYS as usize), value(9, n, 400));
                let env = r.update(|d, a| d.put_op(a, &key, &value)).unwrap();
                h.acked.insert((env.actor(), env.seq()));
                h.attempted.insert(env.actor(), env.seq());
                h.puts.push(Put { key, value, acked: true });
            }
            if round < 3 {
                r.checkpoint().unwrap();
            }
        }
        r.close().unwrap();
        h.note_identity(dir);
        h
    };
    // The cut run: open, two more writes, the checkpoint.
    let run = |dir: &Path, power: &Arc<PowerLoss>, h: &mut History| -> Option<u64> {
        let mut r = Replica::<KvDoc>::open(dir, with_faults(&opts, power)).unwrap();
        for i in 0..2 {
            let n = h.puts.len();
            let (key, value) = (format!("k{i}"), value(9, n, 400));
            h.attempted.insert(r.actor(), r.clock().get(&r.actor()) + 1);
            h.puts.push(Put { key: key.clone(), value: value.clone(), acked: false });
            let env = r.update(|d, a| d.put_op(a, &key, &value)).unwrap();
            h.acked.insert((env.actor(), env.seq()));
            h.puts[n].acked = true;
        }
        let before = power.operations();
        match r.checkpoint() {
            Ok(()) => Some(before),
            Err(e) => {
                assert!(power.power_lost(), "checkpoint failed with the power on: {e}");
                None
            }
        }
    };

    let dry = scratch_dir();
    let dir = dry.path().join(REPLICA);
    let mut h = prepare(&dir);
    let segments_before = std::fs::read_dir(dir.join("wal")).unwrap().count();
    assert!(GENERATIONS.iter().all(|g| dir.join(g).exists()), "two generations before the cut");
    let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
    let start = run(&dir, &power, &mut h).expect("the dry run checkpoints");
    let end = power.operations();
    let segments_after = std::fs::read_dir(dir.join("wal")).unwrap().count();
    assert!(segments_after < segments_before, "the checkpoint truncates the log ({segments_before} files before)");
    assert!(end - start >= 8, "a checkpoint of only {} operations", end - start);

    let mut totals = Totals::default();
    let mut newest_lost = 0;
    for cut in start + 1..=end {
        let real = scratch_dir();
        let dir = real.path().join(REPLICA);
        let mut h = prepare(&dir);
        let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
        assert_eq!(run(&dir, &power, &mut h), None, "cut {cut} of {start}..={end}");
        for state in 0..STATES {
            let crashed = scratch_dir();
            let ctx = format!("checkpoint cut {cut} of {start}..={end}, state {state}");
            let s = power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            totals.add(&s);
            let dir = crashed.path().join(REPLICA);
            let present: Vec<&str> = GENERATIONS.iter().copied().filter(|g| dir.join(g).exists()).collect();
            assert!(!present.is_empty(), "{ctx}: no checkpoint generation left");
            for g in &present {
                let bytes = std::fs::read(dir.join(g)).unwrap();
                assert!(checkpoint_intact(&bytes), "{ctx}: {g} is not a whole checkpoint");
            }
            newest_lost += usize::from(present.len() < 2);
            let r = check(&dir, &opts, &h, &ctx, &mut totals);
            assert!(r.recovered().is_empty(), "{ctx}: recovered {:?}", r.recovered());
        }
        totals.cuts += 1;
    }
    eprintln!("checkpoint cuts: {totals:?}, states with one generation: {newest_lost}");
    let c = &totals.crash;
    assert!(c.dir_ops_lost > 0 && c.dir_ops_kept > 0 && c.writes_torn > 0, "{totals:?}");
    assert!(newest_lost > 0, "no crash state caught the checkpoint between its renames");
}

/// A peer holds an operation of this replica's own actor beyond what the
/// replica has (it was restored, or rolled back), so the replica retires
/// the actor; the power fails part-way through. The evidence came from the
/// peer and lived only in memory: the first durable trace of the decision
/// is `actor.retire` naming the old actor. Every crash state that holds it
/// must finish the retirement on open, so the replica never signs the next
/// number of the old actor, which the peer already holds.
#[test]
fn a_retirement_begun_before_a_power_loss_is_finished_on_open() {
    const STATES: u64 = 12;
    let opts = options(SyncPolicy::Always, false, 0);
    // Two operations of the actor here; the peer holds its fourth too.
    let prepare = |dir: &Path| -> (History, OpEnvelope<walrus::replica::KvOp>) {
        let mut h = History::default();
        let mut r = Replica::<KvDoc>::open(dir, opts.clone()).unwrap();
        for i in 0..2 {
            let env = r.update(|d, a| d.put_op(a, &format!("k{i}"), "v")).unwrap();
            h.acked.insert((env.actor(), env.seq()));
            h.attempted.insert(env.actor(), env.seq());
            h.puts.push(Put { key: format!("k{i}"), value: "v".into(), acked: true });
        }
        let key = ActorKey::load(&dir.join(KEY_FILE)).unwrap();
        let mut ahead = r.doc().clone();
        let third = ahead.put_op(key.actor(), "k0", "third");
        crdts::CmRDT::apply(&mut ahead, third);
        let op = ahead.put_op(key.actor(), "k1", "fourth");
        // Its predecessor never arrives, so what it chains to is never checked.
        let env = OpEnvelope::signed::<KvDoc>(&key, r.document(), 4, ChainHash::ZERO, op).unwrap();
        r.close().unwrap();
        h.note_identity(dir);
        (h, env)
    };
    // Returns the operations done before the retirement.
    let run = |dir: &Path, power: &Arc<PowerLoss>, h: &mut History, env: OpEnvelope<walrus::replica::KvOp>| -> u64 {
        let mut r = Replica::<KvDoc>::open(dir, with_faults(&opts, power)).unwrap();
        let old = r.actor();
        let start = power.operations();
        let res = r.receive([env]);
        h.note_identity(dir);
        match res {
            Ok(report) => {
                assert_eq!(report.buffered, 1, "the fourth waits for the third");
                assert_ne!(r.actor(), old, "the actor is retired before the next write");
                h.retired.insert(old);
            }
            Err(e) => assert!(power.power_lost(), "receive failed with the power on: {e}"),
        }
        start
    };

    let dry = scratch_dir();
    let dir = dry.path().join(REPLICA);
    let (mut h, env) = prepare(&dir);
    let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
    let start = run(&dir, &power, &mut h, env);
    let end = power.operations();
    assert!(!h.retired.is_empty(), "the dry run retired the actor");

    let mut totals = Totals::default();
    let mut begun = 0;
    for cut in start + 1..=end {
        let real = scratch_dir();
        let dir = real.path().join(REPLICA);
        let (mut h, env) = prepare(&dir);
        let old = actor_of(&std::fs::read(dir.join(KEY_FILE)).unwrap()).unwrap();
        let power = Arc::new(PowerLoss::new(real.path()).unwrap().cut_at(cut));
        run(&dir, &power, &mut h, env);
        for state in 0..STATES {
            let crashed = scratch_dir();
            let ctx = format!("retirement cut {cut} of {end}, state {state}");
            let s = power.materialize(crashed.path(), state).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            totals.add(&s);
            let dir = crashed.path().join(REPLICA);
            let kept_aside = retiring(&dir) == Some(old);
            // `check` writes once more, under whatever actor the replica has.
            let r = check(&dir, &opts, &h, &ctx, &mut totals);
            if kept_aside {
                begun += 1;
                assert_ne!(r.actor(), old, "{ctx}: the old key was kept aside as retired, yet it is current");
            }
        }
        totals.cuts += 1;
    }
    eprintln!("retirement cuts: {totals:?}, states with the old key kept aside: {begun}");
    assert!(begun > 0, "no crash state kept the old key aside");
}

/// The actor `actor.retire` says is being retired, if it names one.
fn retiring(dir: &Path) -> Option<ActorId> {
    let bytes = std::fs::read(dir.join("actor.retire")).ok()?;
    let id: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(ActorId(id))
}
