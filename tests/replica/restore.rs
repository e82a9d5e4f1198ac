//! A replica restored from an old copy of its directory, or rolled back in
//! place, must not lose the writes it acknowledges afterwards: it retires
//! its actor (a new key, certified by the old one, so writer lists still
//! admit it) instead of signing a second operation for a sequence number
//! its peers already hold.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde_bytes::ByteBuf;

use crate::helpers::{copy_dir, page_of_one, roll_back_in_place, values};
use walrus::replica::{
    ActorId, ActorKey, Catchup, ChainHash, ChainKey, Document, EnvelopeError, KvDoc, OpEnvelope, PeerError,
    ReceiveError, Recovered, Replica, ReplicaOptions, RetireReason, Succession, ACTOR_FILE,
};
use walrus::sync::{apply_response, Limits, SyncError, SyncResponse};
use walrus::wal::{SyncPolicy, WalOptions};

fn opts(writers: Option<BTreeSet<ActorId>>) -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::batch()).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 0, writers, document: Some("notes".into()), ..ReplicaOptions::default() }
}

fn open(dir: &Path, writers: &Option<BTreeSet<ActorId>>) -> Replica<KvDoc> {
    Replica::open(dir, opts(writers.clone())).expect("open replica")
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
            Catchup::Snapshot { state, clock } => {
                to.learn_successions(&from.successions()).expect("successions");
                to.merge_snapshot(state, clock).expect("merge snapshot");
            }
        }
    }
}

/// The actors of two fresh replicas, for a writer list naming both.
fn writers_of(r: &Path, c: &Path) -> Option<BTreeSet<ActorId>> {
    let ids = [r, c].map(|d| open(d, &None).actor());
    Some(ids.into_iter().collect())
}

fn converged(a: &Replica<KvDoc>, b: &Replica<KvDoc>) {
    assert_eq!(a.clock(), b.clock(), "version vectors differ");
    assert_eq!(a.doc().entries(), b.doc().entries(), "entries differ");
    assert_eq!(a.doc().canonical(), b.doc().canonical(), "states differ");
}

/// The finding: R writes k1, is copied, writes k2 and k3 (peer C gets
/// them), and the copy is put back. Its next write must reach C.
fn restore_from_a_copy(with_writers: bool) {
    let (rd, cd, backup) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writers = if with_writers { writers_of(rd.path(), cd.path()) } else { None };
    let mut r = open(rd.path(), &writers);
    let mut c = open(cd.path(), &writers);
    let old = r.actor();
    r.update(|d, a| d.put_op(a, "k1", "one")).unwrap();
    drop(r);
    copy_dir(rd.path(), &backup.path().join("r"));
    let mut r = open(rd.path(), &writers);
    assert_eq!(r.actor(), old, "an ordinary reopen keeps the actor");
    r.update(|d, a| d.put_op(a, "k2", "two")).unwrap();
    r.update(|d, a| d.put_op(a, "k3", "three")).unwrap();
    sync(&r, &mut c);
    drop(r);

    fs::remove_dir_all(rd.path()).unwrap();
    copy_dir(&backup.path().join("r"), rd.path());
    let mut r = open(rd.path(), &writers);
    assert_ne!(r.actor(), old, "a restored copy must not write under its old actor");
    assert!(
        matches!(r.recovered(), [Recovered::ActorRetired { reason: RetireReason::Moved, old: o, .. }] if *o == old),
        "{:?}",
        r.recovered()
    );
    let new = r.update(|d, a| d.put_op(a, "k2", "NEW")).unwrap();
    assert_eq!((new.actor(), new.seq()), (r.actor(), 1));
    assert!(new.succeeds().is_some(), "the first operation of a successor carries its certificate");

    sync(&c, &mut r);
    sync(&r, &mut c);
    converged(&r, &c);
    assert_eq!(values(&c, "k2"), ["NEW", "two"], "both writes of k2 survive, neither saw the other");
    assert_eq!(values(&r, "k3"), ["three"]);
    assert_eq!(c.clock().get(&old), 3);
    assert!(c.take_equivocations().is_empty() && r.take_equivocations().is_empty(), "no equivocation");

    // Reopening keeps the new actor, and its writes go on being accepted.
    drop(r);
    let mut r = open(rd.path(), &writers);
    assert_eq!(r.actor(), new.actor());
    assert!(r.recovered().is_empty());
    r.update(|d, a| d.put_op(a, "k4", "four")).unwrap();
    sync(&r, &mut c);
    converged(&r, &c);
}

#[test]
fn a_replica_restored_from_a_copy_writes_under_a_new_actor_and_converges() {
    restore_from_a_copy(false);
}

#[test]
fn a_restored_writer_s_successor_is_a_writer_too() {
    restore_from_a_copy(true);
}

/// A rollback that keeps the files (a VM or filesystem snapshot) cannot be
/// seen on open: the replica writes a second operation for a number its
/// peer holds. When the peer's operations arrive, it retires the actor,
/// rebuilds its state without its forked operations, and writes them
/// again under the new actor: nothing acknowledged is lost on either side.
fn roll_back(checkpoint_before_backup: bool, with_writers: bool) {
    let (rd, cd, backup) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writers = if with_writers { writers_of(rd.path(), cd.path()) } else { None };
    let mut r = open(rd.path(), &writers);
    let mut c = open(cd.path(), &writers);
    let old = r.actor();
    r.update(|d, a| d.put_op(a, "k1", "one")).unwrap();
    if checkpoint_before_backup {
        r.checkpoint().unwrap();
    }
    drop(r);
    copy_dir(rd.path(), &backup.path().join("r"));
    let mut r = open(rd.path(), &writers);
    r.update(|d, a| d.put_op(a, "k2", "two")).unwrap();
    r.update(|d, a| d.put_op(a, "k3", "three")).unwrap();
    sync(&r, &mut c);
    drop(r);

    roll_back_in_place(&backup.path().join("r"), rd.path());
    let mut r = open(rd.path(), &writers);
    assert_eq!(r.actor(), old, "an in-place rollback is not visible on open");
    let forked = r.update(|d, a| d.put_op(a, "k9", "NINE")).unwrap();
    assert_eq!((forked.actor(), forked.seq()), (old, 2), "the fork: a second operation 2 of the old actor");

    sync(&c, &mut r);
    assert_ne!(r.actor(), old, "on learning of the fork the replica retires its actor");
    // It learns from the peer's later operation 3 (behind) or from its
    // other operation 2 (forked), whichever the peer sends.
    assert!(
        r.recovered().iter().any(|n| matches!(n, Recovered::ActorRetired { old: o, .. } if *o == old)),
        "{:?}",
        r.recovered()
    );
    assert!(r.take_equivocations().is_empty(), "its own fork is not reported as a peer's offence");
    sync(&c, &mut r);
    sync(&r, &mut c);
    converged(&r, &c);
    for (key, want) in [("k1", "one"), ("k2", "two"), ("k3", "three"), ("k9", "NINE")] {
        assert_eq!(values(&r, key), [want], "{key} on the rolled-back replica");
        assert_eq!(values(&c, key), [want], "{key} on its peer");
    }
    // Reopening replays to the same state.
    let state = (r.doc().canonical(), r.clock().clone());
    drop(r);
    let r = open(rd.path(), &writers);
    assert_eq!((r.doc().canonical(), r.clock().clone()), state);
}

#[test]
fn a_rollback_in_place_is_found_from_peers_and_the_forked_write_kept() {
    roll_back(false, false);
}

#[test]
fn a_rollback_past_a_checkpoint_with_a_writer_list() {
    roll_back(true, true);
}

#[test]
fn a_peer_holding_more_of_the_actor_retires_it_before_the_next_write() {
    let (rd, cd, backup) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut r = open(rd.path(), &None);
    let mut c = open(cd.path(), &None);
    let old = r.actor();
    r.update(|d, a| d.put_op(a, "k1", "one")).unwrap();
    drop(r);
    copy_dir(rd.path(), &backup.path().join("r"));
    let mut r = open(rd.path(), &None);
    r.update(|d, a| d.put_op(a, "k2", "two")).unwrap();
    sync(&r, &mut c);
    drop(r);
    roll_back_in_place(&backup.path().join("r"), rd.path());
    let mut r = open(rd.path(), &None);
    // The peer's copy of the actor's later operation arrives first.
    sync(&c, &mut r);
    assert_ne!(r.actor(), old);
    assert!(matches!(
        r.recovered(),
        [Recovered::ActorRetired { reason: RetireReason::Behind { had: 1, seen: 2 }, .. }]
    ));
    let next = r.update(|d, a| d.put_op(a, "k3", "three")).unwrap();
    assert_eq!(next.seq(), 1);
    sync(&r, &mut c);
    converged(&r, &c);
}

#[test]
fn successions_are_checked() {
    let (rd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writers = writers_of(rd.path(), cd.path());
    let mut r = open(rd.path(), &writers);
    let mut c = open(cd.path(), &writers);
    let old = r.actor();
    let new = r.retire_actor().unwrap();
    assert_ne!(new, old);
    let first = r.update(|d, a| d.put_op(a, "k", "v")).unwrap();
    let cert = *first.succeeds().expect("certificate");
    assert_eq!((cert.from, cert.to), (old, new));
    let limits = Limits::default();
    let deliver = |c: &mut Replica<KvDoc>, page: Vec<u8>| {
        let resp = SyncResponse::Ops { doc: "notes".into(), page: ByteBuf::from(page), more: false };
        apply_response(c, "notes", resp, &limits)
    };
    let chain = ChainKey::new("notes");
    // A stranger's key claiming to succeed a writer is refused, though its
    // head signature covers the certificate it carries.
    let stranger = ActorKey::generate().unwrap();
    let claimed = Succession { to: stranger.actor(), ..cert };
    let op = c.doc().put_op(stranger.actor(), "k", "x");
    let op = OpEnvelope::signed::<KvDoc>(&stranger, "notes", 1, ChainHash::ZERO, op).unwrap();
    let hash = chain.op_hash(&stranger.actor(), 1, &ChainHash::ZERO, Some(&claimed), op.op_bytes());
    let forged =
        page_of_one(stranger.actor(), 1, ChainHash::ZERO, Some(&claimed), op.op_bytes(), &hash.sign_head(&stranger));
    let err = deliver(&mut c, forged).unwrap_err();
    assert!(err.is_peer_fault(), "a certificate for another actor is refused: {err}");
    assert_eq!(c.clock().get(&stranger.actor()), 0);
    // The genuine one is accepted, also after a restart of the receiver.
    c.receive([first]).unwrap();
    assert_eq!(c.clock().get(&new), 1);
    drop(c);
    let mut c = open(cd.path(), &writers);
    let second = r.update(|d, a| d.put_op(a, "k", "w")).unwrap();
    assert_eq!(c.receive([second]).unwrap().applied, 1);
    // The certificate must come on the first operation only: operation 3,
    // at its place and signed by its actor over a hash covering the
    // certificate, is refused for carrying it.
    let late = r.update(|d, a| d.put_op(a, "z", "z")).unwrap();
    let key = ActorKey::load(&rd.path().join(ACTOR_FILE)).unwrap();
    assert_eq!(key.actor(), new);
    let hash = chain.op_hash(&new, late.seq(), &late.prev(), Some(&cert), late.op_bytes());
    let page = page_of_one(new, late.seq(), late.prev(), Some(&cert), late.op_bytes(), &hash.sign_head(&key));
    let err = deliver(&mut c, page).unwrap_err();
    assert!(
        matches!(err, SyncError::Receive(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSuccession { .. })))),
        "{err}"
    );
    assert_eq!(c.clock().get(&new), 2);
    assert_eq!(c.receive([late]).unwrap().applied, 1, "without the certificate it is accepted");
}

#[test]
fn a_requested_retirement_happens_on_the_next_open_once() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open(d.path(), &None);
    let old = r.actor();
    r.update(|doc, a| doc.put_op(a, "k", "v")).unwrap();
    drop(r);
    walrus::replica::request_retirement(d.path()).unwrap();
    let r = open(d.path(), &None);
    assert_ne!(r.actor(), old);
    assert!(matches!(r.recovered(), [Recovered::ActorRetired { reason: RetireReason::Requested, .. }]));
    let new = r.actor();
    drop(r);
    let r = open(d.path(), &None);
    assert_eq!(r.actor(), new, "once");
    assert_eq!(r.doc().values_of("k"), vec!["v"]);
}

#[test]
fn a_chain_of_retirements_stays_a_writer_across_restarts() {
    let (rd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writers = writers_of(rd.path(), cd.path());
    let mut r = open(rd.path(), &writers);
    let mut c = open(cd.path(), &writers);
    let first = r.actor();
    // Retired twice before the middle actor ever wrote.
    r.retire_actor().unwrap();
    r.retire_actor().unwrap();
    drop(r);
    let mut r = open(rd.path(), &writers);
    assert_ne!(r.actor(), first);
    let env = r.update(|d, a| d.put_op(a, "k", "v")).expect("the second successor may still write");
    assert_eq!(env.seq(), 1);
    // Its peer learns the whole chain from a snapshot answer, or the one
    // link it needs from the operation itself.
    let learned = c.learn_successions(&r.successions()).unwrap();
    assert_eq!(learned, 2);
    assert_eq!(c.receive([env]).unwrap().applied, 1);
    // Permissions changed, hard links made: not a copy.
    let key = rd.path().join("actor.key");
    std::fs::hard_link(&key, rd.path().join("key-backup")).unwrap();
    drop(r);
    let r = open(rd.path(), &writers);
    assert!(r.recovered().is_empty(), "{:?}", r.recovered());
}

/// Fails every rename onto a file named `checkpoint` while armed.
#[derive(Default)]
struct FailCheckpoints(std::sync::atomic::AtomicBool);

impl walrus::wal::FaultInjector for FailCheckpoints {
    fn check(&self, op: walrus::wal::FileOp, path: &Path, _len: usize) -> Result<(), walrus::wal::Injected> {
        let armed = self.0.load(std::sync::atomic::Ordering::SeqCst);
        if armed && op == walrus::wal::FileOp::Rename && path.file_name().is_some_and(|n| n == "checkpoint") {
            return Err(walrus::wal::Injected::fail(std::io::Error::other("injected")));
        }
        Ok(())
    }
}

#[test]
fn a_fork_rewrite_that_fails_part_way_is_finished_by_the_next_open() {
    let (rd, cd, backup) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let faults = std::sync::Arc::new(FailCheckpoints::default());
    let faulty = || {
        let mut o = opts(None);
        o.wal = o.wal.with_faults(faults.clone());
        o
    };
    let mut r: Replica<KvDoc> = Replica::open(rd.path(), faulty()).unwrap();
    let mut c = open(cd.path(), &None);
    let old = r.actor();
    r.update(|d, a| d.put_op(a, "k1", "one")).unwrap();
    drop(r);
    copy_dir(rd.path(), &backup.path().join("r"));
    let mut r: Replica<KvDoc> = Replica::open(rd.path(), faulty()).unwrap();
    r.update(|d, a| d.put_op(a, "k2", "two")).unwrap();
    r.update(|d, a| d.put_op(a, "k3", "three")).unwrap();
    sync(&r, &mut c);
    drop(r);
    roll_back_in_place(&backup.path().join("r"), rd.path());
    let mut r: Replica<KvDoc> = Replica::open(rd.path(), faulty()).unwrap();
    r.update(|d, a| d.put_op(a, "k9", "NINE")).unwrap();

    // The rewrite's checkpoint fails: the replica stops, nothing is lost.
    faults.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let Catchup::Ops { ops, .. } = c.ops_since(r.clock(), 1 << 20).unwrap() else { panic!("expected operations") };
    assert!(r.receive(ops).is_err(), "the failed checkpoint is reported");
    assert!(r.update(|d, a| d.put_op(a, "x", "x")).is_err(), "a replica with an unfinished rewrite writes nothing");
    drop(r);
    assert!(rd.path().join("actor.rewrite").exists());

    faults.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut r = open(rd.path(), &None);
    assert_ne!(r.actor(), old);
    assert!(!rd.path().join("actor.rewrite").exists(), "finished on open");
    sync(&c, &mut r);
    sync(&r, &mut c);
    converged(&r, &c);
    for (key, want) in [("k1", "one"), ("k2", "two"), ("k3", "three"), ("k9", "NINE")] {
        assert_eq!(values(&c, key), [want], "{key}");
    }
    // Finished once: reopening writes nothing again.
    let clock = r.clock().clone();
    drop(r);
    assert_eq!(open(rd.path(), &None).clock(), &clock);
}
