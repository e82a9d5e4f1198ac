//! Durable replicas driven through random histories: they must converge
//! through paged catch-up, checkpoints and reopening.

use std::path::Path;

use super::history::apply_checked;
use super::{Case, OpGen, Rng};
use crate::replica::{ActorKey, Catchup, Document, OpEnvelope, Replica, ReplicaOptions, VersionVector};
use crate::wal::{SyncPolicy, WalOptions};

/// Fast replica options for tests: no fsync, small segments, no
/// preallocation, an automatic checkpoint every 2 KiB of log.
pub fn replica_opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 2048, ..ReplicaOptions::default() }
}

/// Prepares `dir` for a replica with the given actor key (writes its key
/// file, `actor.key`), so that runs are
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

fn check_page<O>(theirs: &VersionVector, ops: &[OpEnvelope<O>], more: bool, budget: usize) {
    assert!(!(more && ops.is_empty()), "ops_since answered an empty page with `more` set");
    let mut clock = theirs.clone();
    let mut bytes = 0;
    for env in ops {
        assert!(
            env.seq() == clock.get(&env.actor()) + 1,
            "ops_since page holds ({}, {}) but the peer needs ({}, {}) first",
            env.actor(),
            env.seq(),
            env.actor(),
            clock.get(&env.actor()) + 1
        );
        clock.observe(env.actor(), env.seq());
        bytes += env.op_bytes().len() + 1;
    }
    // Each actor's operations end at a signed head (the page proves them);
    // past the budget, only to reach that head.
    let mut last: std::collections::BTreeMap<_, &OpEnvelope<O>> = std::collections::BTreeMap::new();
    for env in ops {
        last.insert(env.actor(), env);
    }
    assert!(
        last.values().all(|env| env.signature().is_some()),
        "an ops_since page ends an actor's operations at one without a signature"
    );
    assert!(
        ops.len() <= 1 || bytes <= budget + (1 << 20),
        "ops_since page of {} operations holds {bytes} bytes, far over the budget of {budget}",
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

pub(super) fn replica_convergence<D: Document>(gen: &impl OpGen<D>, case: &Case) {
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
    all.sort_by_key(|e| (e.actor(), e.seq()));
    let mut reference = D::default();
    all.iter().for_each(|env| apply_checked(&mut reference, env));
    let expected = reference.canonical();
    let clock: VersionVector = all.iter().map(|e| (e.actor(), e.seq())).collect();
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
