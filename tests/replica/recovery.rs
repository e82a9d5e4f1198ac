//! Recovery of replicas whose files were damaged: two checkpoint
//! generations, falling back to the older one, read-only views.

use std::path::Path;

use crate::helpers::{open, opts};
use walrus::replica::{Catchup, KvDoc, OpenError, Recovered, Replica, ReplicaView, StorageError, VersionVector};
use walrus::wal::{LogReader, WalOptions};

fn put_many(r: &mut Replica<KvDoc>, prefix: &str, n: usize) {
    for i in 0..n {
        r.update(|d, a| d.put_op(a, &format!("{prefix}{}", i % 7), &format!("{prefix}-value-{i:04}"))).unwrap();
    }
}

fn flip_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn first_lsn(dir: &Path) -> u64 {
    LogReader::open(&dir.join("wal"), &WalOptions::default()).unwrap().summary().first_lsn
}

fn state(r: &Replica<KvDoc>) -> (Vec<u8>, VersionVector) {
    (walrus::replica::Document::canonical(r.doc()), r.clock().clone())
}

/// Pulls everything `to` is missing from `from`.
fn sync(from: &Replica<KvDoc>, to: &mut Replica<KvDoc>) {
    loop {
        match from.ops_since(to.clock(), 64 << 10).expect("ops_since") {
            Catchup::Ops { ops, more } => {
                to.receive(ops).expect("receive");
                if !more {
                    return;
                }
            }
            Catchup::Snapshot { state, clock } => to.merge_snapshot(state, clock).expect("merge snapshot"),
        }
    }
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_older_one_with_every_write() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    put_many(&mut r, "a", 150);
    r.checkpoint().unwrap();
    put_many(&mut r, "b", 150);
    r.checkpoint().unwrap();
    put_many(&mut r, "c", 150);
    r.checkpoint().unwrap();
    put_many(&mut r, "d", 40);
    let acknowledged = state(&r);
    drop(r);
    // The log was truncated, but only up to the older generation.
    assert!(first_lsn(d.path()) > 1, "the test needs a truncated log");
    assert!(d.path().join("checkpoint.prev").exists());

    flip_bit(&d.path().join("checkpoint"));
    let r = open(d.path());
    assert_eq!(state(&r), acknowledged, "every acknowledged write is back");
    match r.recovered() {
        [Recovered::DamagedCheckpoint { path, moved_to: Some(to), used_lsn, .. }] => {
            assert_eq!(path, &d.path().join("checkpoint"));
            assert!(to.exists() && !path.exists());
            assert!(*used_lsn > 0);
        }
        other => panic!("expected one damaged checkpoint, got {other:?}"),
    }
    // Writing and checkpointing go on, and the next open is clean.
    let mut r = r;
    put_many(&mut r, "e", 30);
    r.checkpoint().unwrap();
    put_many(&mut r, "f", 30);
    r.checkpoint().unwrap();
    let acknowledged = state(&r);
    drop(r);
    let r = open(d.path());
    assert!(r.recovered().is_empty());
    assert_eq!(state(&r), acknowledged);
}

#[test]
fn a_damaged_older_checkpoint_is_reported_and_the_newest_used() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    put_many(&mut r, "a", 100);
    r.checkpoint().unwrap();
    put_many(&mut r, "b", 100);
    r.checkpoint().unwrap();
    let acknowledged = state(&r);
    drop(r);
    flip_bit(&d.path().join("checkpoint.prev"));
    let r = open(d.path());
    assert_eq!(state(&r), acknowledged);
    assert!(matches!(r.recovered(), [Recovered::DamagedCheckpoint { .. }]), "{:?}", r.recovered());
}

#[test]
fn the_first_checkpoint_damaged_replays_the_whole_log() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    put_many(&mut r, "a", 200);
    r.checkpoint().unwrap();
    put_many(&mut r, "b", 10);
    let acknowledged = state(&r);
    drop(r);
    assert_eq!(first_lsn(d.path()), 1, "one generation: nothing truncated yet");
    flip_bit(&d.path().join("checkpoint"));
    let r = open(d.path());
    assert_eq!(state(&r), acknowledged);
    assert!(matches!(r.recovered(), [Recovered::DamagedCheckpoint { used_lsn: 0, .. }]));
}

#[test]
fn without_an_intact_generation_the_error_says_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    put_many(&mut r, "a", 150);
    r.checkpoint().unwrap();
    put_many(&mut r, "b", 150);
    r.checkpoint().unwrap();
    put_many(&mut r, "c", 150);
    r.checkpoint().unwrap();
    drop(r);
    flip_bit(&d.path().join("checkpoint"));
    flip_bit(&d.path().join("checkpoint.prev"));
    let err = Replica::<KvDoc>::open(d.path(), opts()).err().expect("nothing can restore it");
    let msg = err.to_string();
    assert!(matches!(err, OpenError::Storage(StorageError::Corrupt { .. })), "{msg}");
    assert!(msg.contains("rebuild"), "{msg}");
    // Nothing was moved or deleted by the failed open.
    assert!(d.path().join("checkpoint").exists() && d.path().join("checkpoint.prev").exists());
}

#[test]
fn falling_back_past_a_merged_snapshot_keeps_own_writes_and_refills_from_peers() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    let mut b = open(db.path());
    put_many(&mut a, "a", 60);
    a.checkpoint().unwrap();
    // b's history is truncated, so a gets it as a snapshot, then more ops.
    put_many(&mut b, "b", 200);
    b.checkpoint().unwrap();
    put_many(&mut b, "b", 200);
    b.checkpoint().unwrap();
    sync(&b, &mut a);
    put_many(&mut b, "x", 20);
    sync(&b, &mut a);
    put_many(&mut a, "a2", 60);
    a.checkpoint().unwrap();
    put_many(&mut a, "a3", 10);
    let acknowledged = state(&a);
    let own = a.clock().get(&a.actor());
    drop(a);
    flip_bit(&da.path().join("checkpoint"));
    let a = open(da.path());
    assert_eq!(a.clock().get(&a.actor()), own, "every own write is back");
    assert!(!a.recovered().is_empty());
    // Opening again before any new checkpoint works the same way.
    drop(a);
    let mut a = open(da.path());
    assert_eq!(a.clock().get(&a.actor()), own);
    // What only the damaged generation held comes back from the peer.
    sync(&b, &mut a);
    assert_eq!(state(&a), acknowledged);
}

#[test]
fn a_crash_at_any_checkpoint_step_loses_nothing_and_keeps_two_generations() {
    for step in 1..=5u8 {
        let d = tempfile::tempdir().unwrap();
        let mut r = open(d.path());
        put_many(&mut r, "a", 120);
        r.checkpoint().unwrap();
        put_many(&mut r, "b", 120);
        r.checkpoint().unwrap();
        put_many(&mut r, "c", 120);
        let acknowledged = state(&r);
        walrus::internals::set_checkpoint_crash_point(&mut r, Some(step));
        r.checkpoint().unwrap();
        drop(r);
        let mut r = open(d.path());
        assert_eq!(state(&r), acknowledged, "crash after checkpoint step {step}");
        assert!(r.recovered().is_empty(), "step {step}: {:?}", r.recovered());
        assert!(!d.path().join("checkpoint.tmp").exists(), "step {step}: the temp file is cleaned on open");
        // And whichever generation is newest now, a damaged one still
        // leaves a way back.
        r.checkpoint().unwrap();
        put_many(&mut r, "d", 5);
        let acknowledged = state(&r);
        drop(r);
        flip_bit(&d.path().join("checkpoint"));
        assert_eq!(state(&open(d.path())), acknowledged, "step {step}, then a damaged newest checkpoint");
    }
}

#[test]
fn a_view_reads_while_the_replica_is_written_and_checkpointed() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    for round in 0..6 {
        put_many(&mut r, &format!("r{round}-"), 80);
        let view: ReplicaView<KvDoc> = ReplicaView::open(d.path(), &opts()).unwrap();
        assert_eq!(view.clock(), r.clock(), "round {round}");
        assert_eq!(walrus::replica::Document::canonical(view.doc()), walrus::replica::Document::canonical(r.doc()));
        assert_eq!(view.actor(), Some(r.actor()));
        assert_eq!(view.document(), r.document());
        r.checkpoint().unwrap();
    }
    // A view of a directory that is not a replica is an error, not a new replica.
    let empty = tempfile::tempdir().unwrap();
    assert!(ReplicaView::<KvDoc>::open(empty.path(), &opts()).is_err());
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn a_replica_no_checkpoint_restores_is_rebuilt_keeping_its_own_operations() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    let mut b = open(db.path());
    for round in ["a", "b", "c"] {
        put_many(&mut a, round, 150);
        sync(&a, &mut b);
        a.checkpoint().unwrap();
    }
    // Written after the last sync: only a's log has these.
    for i in 0..20 {
        a.update(|d, act| d.put_op(act, &format!("tail{i}"), &format!("only here {i}"))).unwrap();
    }
    let old = a.actor();
    drop(a);
    assert!(first_lsn(da.path()) > 1);
    flip_bit(&da.path().join("checkpoint"));
    flip_bit(&da.path().join("checkpoint.prev"));
    assert!(Replica::<KvDoc>::open(da.path(), opts()).is_err());

    let mut a = Replica::<KvDoc>::rebuild(da.path(), opts()).expect("rebuild");
    assert_ne!(a.actor(), old, "the old actor's last number was in the damaged checkpoints");
    assert!(a.recovered().iter().any(|n| matches!(n, Recovered::ActorRetired { .. })), "{:?}", a.recovered());
    assert!(da.path().join("checkpoint.damaged").exists() && da.path().join("checkpoint.prev.damaged").exists());
    for i in 0..20 {
        assert_eq!(a.doc().values_of(&format!("tail{i}")), vec![format!("only here {i}")], "own write {i} kept");
    }
    // Peers refill the rest, and take the rewritten operations.
    sync(&b, &mut a);
    sync(&a, &mut b);
    assert_eq!(state(&a), state(&b));
    assert_eq!(a.clock().get(&old), 450);
    for i in 0..20 {
        assert_eq!(b.doc().values_of(&format!("tail{i}")), vec![format!("only here {i}")]);
    }
    // Written again, a key's last value supersedes the old actor's as the
    // original did: no spurious conflict.
    for k in 0..7 {
        assert_eq!(b.doc().values_of(&format!("c{k}")).len(), 1, "c{k}: {:?}", b.doc().values_of(&format!("c{k}")));
    }
    // It opens normally from now on.
    let st = state(&a);
    drop(a);
    let a = open(da.path());
    assert_eq!(state(&a), st);
    assert!(a.recovered().is_empty());
}
