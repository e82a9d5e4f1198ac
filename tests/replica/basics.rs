//! Replica behaviour: write-ahead, causal delivery, catch-up, snapshots,
//! checkpoints and the change feed.

use crate::helpers::{open, opts};
use walrus::replica::{
    ActorKey, Catchup, ChainHash, Change, CounterDoc, Document, KvDoc, OpEnvelope, Origin, ReceiveError, Replica,
    ReplicaOptions, VersionVector,
};

/// Pulls everything `to` is missing from `from`, page by page.
fn sync(from: &Replica<KvDoc>, to: &mut Replica<KvDoc>, budget: usize) -> usize {
    let mut moved = 0;
    loop {
        match from.ops_since(to.clock(), budget).expect("ops_since") {
            Catchup::Ops { ops, more } => {
                moved += ops.len();
                to.receive(ops).expect("receive");
                if !more {
                    return moved;
                }
            }
            Catchup::Snapshot { state, clock } => {
                to.merge_snapshot(state, clock).expect("merge snapshot");
                moved += 1;
            }
        }
    }
}

#[test]
fn two_replicas_converge_and_a_second_round_moves_nothing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (open(da.path()), open(db.path()));
    for i in 0..50 {
        a.update(|d, actor| d.put_op(actor, &format!("k{}", i % 7), &format!("a{i}"))).unwrap();
        b.update(|d, actor| d.put_op(actor, &format!("k{}", i % 5), &format!("b{i}"))).unwrap();
    }
    b.update(|d, _| d.del_op("k1")).unwrap();
    assert!(sync(&a, &mut b, 64) > 0);
    assert!(sync(&b, &mut a, 64) > 0);
    assert_eq!(a.doc().canonical(), b.doc().canonical());
    assert_eq!(a.clock(), b.clock());
    assert_eq!(sync(&a, &mut b, 64), 0);
    assert_eq!(sync(&b, &mut a, 64), 0);
    // Concurrent writes of the same key are both visible.
    let k0 = a.doc().values_of("k0");
    assert_eq!(k0.len(), 2, "{k0:?}");
}

#[test]
fn out_of_order_and_duplicate_delivery_applies_each_op_once_in_order() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    let ops: Vec<_> = (0..20).map(|i| a.update(|d, actor| d.put_op(actor, "k", &i.to_string())).unwrap()).collect();
    let mut b = open(db.path());
    let mut reversed = ops.clone();
    reversed.reverse();
    let r = b.receive(reversed[..19].to_vec()).unwrap();
    assert_eq!((r.applied, r.buffered), (0, 19));
    assert_eq!(b.buffered(), 19);
    let r = b.receive([ops[0].clone(), ops[0].clone(), ops[5].clone()]).unwrap();
    assert_eq!(r.applied, 20);
    assert_eq!(r.duplicates, 2);
    assert_eq!(b.buffered(), 0);
    assert_eq!(b.doc().values_of("k"), vec!["19"]);
    assert_eq!(a.doc().canonical(), b.doc().canonical());
    // Durable: a reopened replica has them all.
    drop(b);
    let b = open(db.path());
    assert_eq!(b.clock().get(&a.actor()), 20);
    assert_eq!(b.doc().canonical(), a.doc().canonical());
}

#[test]
fn causal_buffer_is_bounded() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    let ops: Vec<_> = (0..10).map(|i| a.update(|d, actor| d.put_op(actor, "k", &i.to_string())).unwrap()).collect();
    let mut b: Replica<KvDoc> = Replica::open(db.path(), ReplicaOptions { buffer_limit: 3, ..opts() }).unwrap();
    let err = b.receive(ops[1..].to_vec()).unwrap_err();
    assert!(matches!(err, ReceiveError::BufferFull(_)), "{err}");
    assert_eq!(b.buffered(), 3);
    // Anti-entropy fills the gap later.
    assert_eq!(sync(&a, &mut b, 1 << 20), 10);
    assert_eq!(b.clock().get(&a.actor()), 10);
}

#[test]
fn checkpoint_truncates_and_reopen_restores_the_same_state() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    for i in 0..400 {
        r.update(|doc, actor| doc.put_op(actor, &format!("key-{}", i % 37), &format!("value-{i}"))).unwrap();
    }
    let before = (r.doc().canonical(), r.clock().clone());
    r.checkpoint().unwrap();
    // The log is kept back to the checkpoint before last: a second one
    // truncates what the first covers.
    r.checkpoint().unwrap();
    for i in 0..30 {
        r.update(|doc, actor| doc.put_op(actor, &format!("tail-{i}"), "x")).unwrap();
    }
    let after = (r.doc().canonical(), r.clock().clone(), r.actor());
    let segments = std::fs::read_dir(d.path().join("wal")).unwrap().count();
    drop(r);
    let r = open(d.path());
    assert_eq!((r.doc().canonical(), r.clock().clone(), r.actor()), after);
    assert_ne!(before.0, after.0);
    assert!(segments < 10, "truncation left {segments} files");
    // Sequence numbers continue after the last one used.
    let mut r = r;
    let env = r.update(|doc, actor| doc.put_op(actor, "next", "y")).unwrap();
    assert_eq!(env.seq(), 431);
}

#[test]
fn a_peer_behind_the_truncation_point_gets_a_snapshot_and_converges() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    for i in 0..300 {
        a.update(|d, actor| d.put_op(actor, &format!("k{}", i % 11), &i.to_string())).unwrap();
    }
    a.checkpoint().unwrap();
    a.checkpoint().unwrap(); // the second one truncates what the first covers
    a.update(|d, actor| d.put_op(actor, "after", "checkpoint")).unwrap();
    let mut b = open(db.path());
    b.update(|d, actor| d.put_op(actor, "mine", "b")).unwrap();
    assert!(matches!(a.ops_since(b.clock(), 1 << 20).unwrap(), Catchup::Snapshot { .. }));
    sync(&a, &mut b, 1 << 20);
    sync(&b, &mut a, 1 << 20);
    assert_eq!(a.doc().canonical(), b.doc().canonical());
    assert!(b.clock().covers(a.clock()) && a.clock().covers(b.clock()));
    // The merged snapshot survives a restart of the receiver.
    let expected = b.doc().canonical();
    drop(b);
    assert_eq!(open(db.path()).doc().canonical(), expected);
}

#[test]
fn change_feed_sees_local_and_remote_changes_after_they_are_durable() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    let mut b = open(db.path());
    let feed = b.subscribe();
    b.update(|d, actor| d.put_op(actor, "local", "1")).unwrap();
    let op = a.update(|d, actor| d.put_op(actor, "remote", "2")).unwrap();
    b.receive([op.clone()]).unwrap();
    let seen: Vec<_> = feed.try_iter().collect();
    assert_eq!(seen.len(), 2);
    assert!(matches!(&seen[0], Change::Op { origin: Origin::Local, .. }));
    match &seen[1] {
        Change::Op { origin: Origin::Remote, op: got } => assert_eq!((got.actor(), got.seq()), (op.actor(), op.seq())),
        other => panic!("unexpected change {other:?}"),
    }
}

#[test]
fn actor_id_is_stable_and_a_wiped_directory_gets_a_new_one() {
    let d = tempfile::tempdir().unwrap();
    let first = open(d.path()).actor();
    assert_eq!(open(d.path()).actor(), first);
    std::fs::remove_dir_all(d.path()).unwrap();
    assert_ne!(open(d.path()).actor(), first);
}

#[test]
fn other_document_types_replicate_too() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a: Replica<CounterDoc> = Replica::open(da.path(), opts()).unwrap();
    let mut b: Replica<CounterDoc> = Replica::open(db.path(), opts()).unwrap();
    for _ in 0..5 {
        a.update(|c, actor| c.inc(actor)).unwrap();
        b.update(|c, actor| c.dec(actor)).unwrap();
    }
    b.update(|c, actor| c.inc_many(actor, 7)).unwrap();
    let Catchup::Ops { ops, .. } = a.ops_since(&VersionVector::default(), 1 << 20).unwrap() else { panic!("ops") };
    b.receive(ops).unwrap();
    let Catchup::Ops { ops, .. } = b.ops_since(a.clock(), 1 << 20).unwrap() else { panic!("ops") };
    a.receive(ops).unwrap();
    assert_eq!(a.doc().read().to_string(), "7");
    assert_eq!(a.doc().canonical(), b.doc().canonical());
}

#[test]
fn a_corrupt_checkpoint_is_reported_and_survived() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path());
    r.update(|doc, actor| doc.put_op(actor, "k", "v")).unwrap();
    r.checkpoint().unwrap();
    drop(r);
    let path = d.path().join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    // The log still holds everything the damaged checkpoint covered.
    let r = Replica::<KvDoc>::open(d.path(), opts()).expect("the log restores what the checkpoint held");
    assert_eq!(r.doc().values_of("k"), vec!["v"]);
    assert_eq!(r.recovered().len(), 1, "{:?}", r.recovered());
    assert!(r.recovered()[0].to_string().contains("length or checksum mismatch"), "{}", r.recovered()[0]);
}

#[test]
fn extreme_sequence_numbers_are_errors_not_panics() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path());
    let mut b = open(db.path());
    // A (hostile) snapshot claiming a's last possible sequence number.
    let mut clock = VersionVector::default();
    clock.observe(a.actor(), u64::MAX);
    // A peer claiming more of a's actor than a holds means a is behind its
    // own history: it retires the actor rather than skip or reuse numbers.
    let old = a.actor();
    a.merge_snapshot(KvDoc::default(), clock.clone()).unwrap();
    assert_ne!(a.actor(), old);
    assert_eq!(a.clock().get(&old), u64::MAX);
    assert_eq!(a.update(|d, act| d.put_op(act, "k", "v")).unwrap().seq(), 1);
    assert!(a.update_many([|d: &KvDoc, act| d.put_op(act, "k", "v")])[0].is_ok());
    // Operations at the very end of an actor's sequence are buffered or
    // dropped, never overflowing.
    let xkey = ActorKey::from_seed([9; 32]);
    let x = xkey.actor();
    // Its predecessors only ever come as a snapshot's clock, with no chain
    // head to check what it follows against.
    let far = OpEnvelope::signed::<KvDoc>(&xkey, "", u64::MAX, ChainHash::ZERO, b.doc().put_op(x, "k", "v")).unwrap();
    assert_eq!(b.receive([far.clone()]).unwrap().buffered, 1);
    let mut near = VersionVector::default();
    near.observe(x, u64::MAX - 1);
    b.merge_snapshot(KvDoc::default(), near).unwrap();
    assert_eq!(b.clock().get(&x), u64::MAX);
    assert_eq!(b.buffered(), 0);
    assert_eq!(b.receive([far]).unwrap().duplicates, 1);
}
