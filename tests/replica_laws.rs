//! Merge laws and convergence of every ready-made document, over random
//! multi-actor histories (proptest and quickcheck), through the same
//! harness apps use for their own types (`walrus::testing`).

use proptest::prelude::*;
use walrus::replica::{CounterDoc, Document, KvDoc, KvDocExt, RegisterDoc, Replica, SetDoc};
use walrus::testing::{
    check_convergence_seed, check_laws_seed, counter_op, history, kv_op, register_op, replica_opts, set_op,
};
use walrus::wal::{SyncPolicy, WalOptions};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn kv_laws(seed: u64) { check_laws_seed::<KvDoc>(&kv_op, seed); }
    #[test]
    fn set_laws(seed: u64) { check_laws_seed::<SetDoc>(&set_op, seed); }
    #[test]
    fn counter_laws(seed: u64) { check_laws_seed::<CounterDoc>(&counter_op, seed); }
    #[test]
    fn register_laws(seed: u64) { check_laws_seed::<RegisterDoc>(&register_op, seed); }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn kv_converges(seed: u64) { check_convergence_seed::<KvDoc>(&kv_op, seed); }
    #[test]
    fn set_converges(seed: u64) { check_convergence_seed::<SetDoc>(&set_op, seed); }
    #[test]
    fn counter_converges(seed: u64) { check_convergence_seed::<CounterDoc>(&counter_op, seed); }
    #[test]
    fn register_converges(seed: u64) { check_convergence_seed::<RegisterDoc>(&register_op, seed); }
}

/// quickcheck: snapshot + log tail equals full replay, for the key-value
/// document (checkpoint at an arbitrary point of a local history).
#[test]
fn snapshot_plus_tail_equals_full_replay() {
    fn prop(seed: u64, cut: u8) -> bool {
        let h = history::<KvDoc>(&kv_op, seed, 2, 30);
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
