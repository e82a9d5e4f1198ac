//! Signed operations at the replica: forged, misattributed, equivocating
//! and unauthorised operations are refused before they are buffered or
//! logged, and every replica refuses the same ones.
//!
//! Operations form hash chains per actor, and a head signature vouches for
//! its run: tests here build chains outside any replica (each operation
//! signed, unless a test strips some signatures to make one run).

use std::collections::BTreeSet;
use std::path::Path;

use walrus::replica::{
    ActorKey, Catchup, ChainHash, Document, Dot, EnvelopeError, Equivocation, KvDoc, KvOp, OpEnvelope, OpenError,
    PeerError, ReceiveError, Replica, ReplicaOptions, Signature, StorageError, VersionVector, WriteError,
};
use walrus::sync::{apply_gossip, apply_response, gossip_messages, Limits, SyncError, SyncResponse};
use walrus::wal::{SyncPolicy, WalOptions};

const DOC: &str = "notes";

fn opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 0, document: Some(DOC.into()), ..ReplicaOptions::default() }
}

fn open_with(dir: &Path, opts: ReplicaOptions) -> Replica<KvDoc> {
    Replica::open(dir, opts).expect("open replica")
}

/// Operation `seq` of `key`'s actor putting `k` = `v`, following the
/// operation whose hash is `prev`, signed as a chain head.
fn put_after(key: &ActorKey, prev: ChainHash, seq: u64, k: &str, v: &str) -> OpEnvelope<KvOp> {
    let dot = Dot { actor: key.actor(), counter: seq };
    let op = KvOp::Put { key: k.into(), dot, value: v.into(), seen: vec![] };
    OpEnvelope::signed::<KvDoc>(key, DOC, seq, prev, op).unwrap()
}

/// Operation `seq` of `key`'s actor, for a test in which its predecessors
/// never arrive (so what it chains to is never checked).
fn put(key: &ActorKey, seq: u64, k: &str, v: &str) -> OpEnvelope<KvOp> {
    put_after(key, ChainHash::ZERO, seq, k, v)
}

/// `key`'s operations 1, 2, … putting each `(k, v)` in turn, chained, each
/// signed.
fn history(key: &ActorKey, puts: &[(&str, &str)]) -> Vec<OpEnvelope<KvOp>> {
    let mut prev = ChainHash::ZERO;
    let mut out = Vec::new();
    for (i, (k, v)) in puts.iter().enumerate() {
        let env = put_after(key, prev, i as u64 + 1, k, v);
        prev = env.hash();
        out.push(env);
    }
    out
}

/// `env` with one bit of its head signature flipped.
fn forge(env: OpEnvelope<KvOp>, byte: usize) -> OpEnvelope<KvOp> {
    let mut sig: Signature = *env.signature().expect("signed");
    sig.0[byte] ^= 0x01;
    env.with_signature(Some(sig))
}

/// `ops` as one run: every signature but the last one's stripped.
fn as_run(mut ops: Vec<OpEnvelope<KvOp>>) -> Vec<OpEnvelope<KvOp>> {
    let last = ops.len().saturating_sub(1);
    ops.iter_mut().take(last).for_each(|e| *e = e.clone().with_signature(None));
    ops
}

fn is_bad_signature(err: &ReceiveError, seq: u64) -> bool {
    matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: s, .. })) if *s == seq)
}

/// The replica has applied, buffered and logged nothing (also after a reopen).
fn untouched(r: Replica<KvDoc>) {
    assert!(r.clock().is_empty(), "{:?}", r.clock());
    assert_eq!(r.buffered(), 0, "nothing unverified may be held");
    let dir = r.dir().to_path_buf();
    drop(r);
    let r = open_with(&dir, opts());
    assert!(r.clock().is_empty(), "nothing may have reached the log: {:?}", r.clock());
}

#[test]
fn forged_and_misattributed_operations_are_refused_before_the_log() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let (alice, mallory) = (ActorKey::from_seed([1; 32]), ActorKey::from_seed([2; 32]));

    // A damaged signature, now and for a future sequence number (which
    // would otherwise wait in the causal buffer).
    for seq in [1, 5] {
        let env = forge(put(&alice, seq, "k", "v"), 7);
        let err = r.receive([env]).unwrap_err();
        assert!(is_bad_signature(&err, seq), "{err}");
    }
    // Mallory signs an operation that names Alice as its actor: Mallory's
    // signature over the hash of Alice's operation.
    let claimed = put(&alice, 1, "k", "mallory");
    let claimed = claimed.clone().with_signature(Some(claimed.hash().sign_head(&mallory)));
    assert!(matches!(
        r.receive([claimed]),
        Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))
    ));
    // No signature at all.
    let bare = put(&alice, 1, "k", "v").with_signature(None);
    assert!(matches!(
        r.receive([bare]),
        Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))
    ));
    // Mallory signs as herself, but the write's dot names Alice.
    let dot = Dot { actor: alice.actor(), counter: 1 };
    let op = KvOp::Put { key: "k".into(), dot, value: "shadow".into(), seen: vec![] };
    let shadow = OpEnvelope::signed::<KvDoc>(&mallory, DOC, 1, ChainHash::ZERO, op).unwrap();
    assert!(matches!(r.receive([shadow]), Err(ReceiveError::Peer(PeerError::Rejected { .. }))));
    untouched(r);
}

/// An operation signed for another document, handed to `receive`: its
/// hash was made under the other document's key, and its signature is
/// valid for that hash, but not for this document.
#[test]
fn an_operation_signed_for_another_document_is_refused() {
    let alice = ActorKey::from_seed([1; 32]);
    let dot = Dot { actor: alice.actor(), counter: 1 };
    let op = KvOp::Put { key: "k".into(), dot, value: "v".into(), seen: vec![] };
    let elsewhere = OpEnvelope::signed::<KvDoc>(&alice, "other", 1, ChainHash::ZERO, op).unwrap();
    // Through a page, decoded (and hashed) under this document.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let limits = Limits::default();
    let msgs = gossip_messages(DOC, std::slice::from_ref(&elsewhere), limits.max_gossip);
    let err = apply_gossip(&mut r, DOC, &msgs[0], &limits).unwrap_err();
    assert!(
        matches!(err, SyncError::Receive(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))),
        "{err}"
    );
    untouched(r);
    // Handed over as it is.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let got = r.receive([elsewhere]);
    assert!(
        matches!(got, Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))),
        "an operation of document \"other\" was taken by {DOC:?}: {got:?}"
    );
    untouched(r);
}

#[test]
fn a_forged_operation_ends_the_batch_and_what_came_before_stays() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let alice = ActorKey::from_seed([1; 32]);
    // Operation 3 follows the forged 2 and carries a valid head, which
    // must not make up for 2's bad one.
    let sent = history(&alice, &[("a", "1"), ("k", "forged"), ("c", "3")]);
    let bad = forge(sent[1].clone(), 0);
    let err = r.receive([sent[0].clone(), bad, sent[2].clone()]).unwrap_err();
    assert!(is_bad_signature(&err, 2), "{err}");
    assert_eq!(r.clock().get(&alice.actor()), 1);
    assert_eq!(r.buffered(), 0, "nothing after a forgery is looked at");
    let honest = history(&alice, &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
    assert_eq!(honest[0], sent[0]);
    let got = r.receive([honest[1].clone(), honest[2].clone()]).unwrap();
    assert_eq!(got.applied, 2);
    assert_eq!(r.doc().values_of("c"), vec!["3"]);

    // Also when an operation the document refuses came first: its error is
    // the one returned, and the forgery still ends the batch.
    let (bob, mallory) = (ActorKey::from_seed([3; 32]), ActorKey::from_seed([4; 32]));
    let op =
        KvOp::Put { key: "k".into(), dot: Dot { actor: bob.actor(), counter: 1 }, value: "x".into(), seen: vec![] };
    let misattributed = OpEnvelope::signed::<KvDoc>(&mallory, DOC, 1, ChainHash::ZERO, op).unwrap();
    let bad = forge(put(&bob, 1, "k", "forged"), 0);
    let err = r.receive([misattributed, bad, put(&bob, 1, "k", "bob")]).unwrap_err();
    assert!(matches!(err, ReceiveError::Peer(PeerError::Rejected { .. })), "{err}");
    assert_eq!(r.clock().get(&bob.actor()), 0, "an operation after a forgery was applied");

    // A damaged copy of an operation the replica already has (the same
    // hash, a bad signature) is a forgery too, so the batch ends where it
    // would on a replica without it.
    let copy = forge(honest[0].clone(), 3);
    assert_eq!(copy.hash(), honest[0].hash());
    let err = r.receive([copy, honest[3].clone()]).unwrap_err();
    assert!(is_bad_signature(&err, 1), "{err}");
    assert_eq!(r.clock().get(&alice.actor()), 3, "an operation after a forged repeat was applied");
}

#[test]
fn a_run_without_its_head_signature_is_refused_whole() {
    let alice = ActorKey::from_seed([1; 32]);
    let ops = history(&alice, &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
    let headless = |ops: &[OpEnvelope<KvOp>]| -> Vec<OpEnvelope<KvOp>> {
        ops.iter().map(|e| e.clone().with_signature(None)).collect()
    };
    // From the start, and ahead of the replica (where its operations
    // would otherwise wait in the buffer).
    for (from, seq) in [(0, 1), (1, 2)] {
        let d = tempfile::tempdir().unwrap();
        let mut r = open_with(d.path(), opts());
        let err = r.receive(headless(&ops[from..3])).unwrap_err();
        assert!(err.is_peer_fault(), "{err}");
        assert!(is_bad_signature(&err, seq), "{err}");
        untouched(r);
    }
    // After a signed run: that one stays, nothing of the headless one.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let mut batch = vec![ops[0].clone()];
    batch.extend(headless(&ops[1..]));
    let err = r.receive(batch).unwrap_err();
    assert!(err.is_peer_fault() && is_bad_signature(&err, 2), "{err}");
    assert_eq!(r.clock().get(&alice.actor()), 1);
    assert_eq!(r.buffered(), 0);
    assert_eq!(r.doc().values_of("b"), Vec::<String>::new());
    // A head for the first run is no head for the rest.
    let mut batch = as_run(ops[..2].to_vec());
    batch.extend(headless(&ops[2..]));
    let err = r.receive(batch).unwrap_err();
    assert!(err.is_peer_fault() && is_bad_signature(&err, 3), "{err}");
    assert_eq!(r.clock().get(&alice.actor()), 2);
    assert_eq!(r.buffered(), 0);
    // Sent as a page, it is refused before anything is looked at.
    let page = walrus::internals::page_of(&headless(&ops[2..]));
    let resp = SyncResponse::Ops { doc: DOC.into(), page: serde_bytes::ByteBuf::from(page), more: false };
    let err = apply_response(&mut r, DOC, resp, &Limits::default()).unwrap_err();
    assert!(err.is_peer_fault(), "{err}");
    assert_eq!((r.clock().get(&alice.actor()), r.buffered()), (2, 0));
    // Signed, the same operations are taken.
    assert_eq!(r.receive(as_run(ops[2..].to_vec())).unwrap().applied, 2);
}

#[test]
fn early_operations_are_bounded_in_bytes() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), ReplicaOptions { buffer_bytes: 4096, ..opts() });
    // Validly signed, large, and all waiting for predecessors that never come.
    let big = "x".repeat(1000);
    let mut full = None;
    for i in 0..10u8 {
        let key = ActorKey::from_seed([100 + i; 32]);
        if let Err(e) = r.receive([put(&key, 2, "k", &big)]) {
            full = Some(e);
            break;
        }
    }
    assert!(matches!(full, Some(ReceiveError::BufferFull(_))), "{full:?}");
    assert!(r.buffered() <= 4, "{} held", r.buffered());
}

#[test]
fn equivocation_is_detected_and_the_first_operation_stays() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mallory = ActorKey::from_seed([2; 32]);
    let (one, other) = (put(&mallory, 1, "k", "one"), put(&mallory, 1, "k", "other"));
    assert_ne!(one.hash(), other.hash());
    let mut r = open_with(d1.path(), opts());
    assert_eq!(r.receive([one.clone()]).unwrap().applied, 1);
    // A repeat is a plain duplicate.
    let again = r.receive([one.clone()]).unwrap();
    assert_eq!((again.duplicates, again.equivocations.len()), (1, 0));
    // A second, validly signed operation for (mallory, 1).
    let got = r.receive([other.clone()]).unwrap();
    assert_eq!(got.equivocations, vec![Equivocation { actor: mallory.actor(), seq: 1 }]);
    assert_eq!(got.applied, 0);
    assert_eq!(r.doc().values_of("k"), vec!["one"]);
    // The conflict is also caught while the first one waits in the buffer.
    let (two, two_b) = (put(&mallory, 3, "x", "a"), put(&mallory, 3, "x", "b"));
    assert_eq!(r.receive([two]).unwrap().buffered, 1);
    let got = r.receive([two_b]).unwrap();
    assert_eq!(got.equivocations, vec![Equivocation { actor: mallory.actor(), seq: 3 }]);
    // And after a restart (the log keeps what tells them apart).
    drop(r);
    let mut r = open_with(d1.path(), opts());
    assert_eq!(r.receive([other.clone()]).unwrap().equivocations.len(), 1);
    // A forged "equivocation" (bad signature) is a forgery, not a proof.
    let fake = forge(put(&mallory, 1, "k", "fake"), 3);
    r.take_equivocations();
    assert!(matches!(
        r.receive([fake.clone()]),
        Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))
    ));
    assert!(r.take_equivocations().is_empty());
    // An equivocation in a batch that fails otherwise is still reported.
    assert!(r.receive([other.clone(), fake]).is_err());
    assert_eq!(r.take_equivocations(), vec![Equivocation { actor: mallory.actor(), seq: 1 }]);
    assert!(r.take_equivocations().is_empty());

    // Another replica that got `other` first keeps `other`, and reports `one`.
    let mut s = open_with(d2.path(), opts());
    s.receive([other]).unwrap();
    assert_eq!(s.receive([one]).unwrap().equivocations.len(), 1);
    assert_eq!(s.doc().values_of("k"), vec!["other"]);
}

/// All of `r`'s operations, from its log.
fn all_ops(r: &Replica<KvDoc>) -> Vec<OpEnvelope<KvOp>> {
    match r.ops_since(&VersionVector::default(), 1 << 20).unwrap() {
        Catchup::Ops { ops, more: false } => ops,
        _ => panic!("all operations in one page"),
    }
}

fn equivocations_of(got: &[Equivocation], actor: walrus::replica::ActorId) -> usize {
    got.iter().filter(|e| e.actor == actor).count()
}

#[test]
fn equivocation_through_chains_is_reported_on_both_sides() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut a, mut b) = (open_with(dirs[0].path(), opts()), open_with(dirs[1].path(), opts()));
    let (eve, frank) = (ActorKey::from_seed([5; 32]), ActorKey::from_seed([6; 32]));
    // Two histories of Eve's for the same sequence numbers, each sent as
    // one run that only its last operation's signature vouches for.
    let first = history(&eve, &[("e1", "one"), ("e2", "two"), ("e3", "three")]);
    let second = history(&eve, &[("e1", "uno"), ("e2", "dos"), ("e3", "tres")]);
    assert!(first.iter().zip(&second).all(|(x, y)| x.seq() == y.seq() && x.hash() != y.hash()));
    assert_eq!(a.receive(as_run(first.clone())).unwrap().applied, 3);
    assert_eq!(b.receive(as_run(second.clone())).unwrap().applied, 3);
    // Each side also has writes of its own, and A one of Frank's.
    a.update(|d, act| d.put_op(act, "from-a", "a")).unwrap();
    b.update(|d, act| d.put_op(act, "from-b", "b")).unwrap();
    a.receive(history(&frank, &[("f", "frank")])).unwrap();

    // A gets everything B has, from B's log; B gets A's log as gossip.
    let got_a = a.receive(all_ops(&b)).unwrap();
    let limits = Limits::default();
    let mut got_b = Vec::new();
    for msg in gossip_messages(DOC, &all_ops(&a), limits.max_gossip) {
        got_b.extend(apply_gossip(&mut b, DOC, &msg, &limits).unwrap().equivocations);
    }
    assert!(equivocations_of(&got_a.equivocations, eve.actor()) > 0, "A: {got_a:?}");
    assert!(equivocations_of(&got_b, eve.actor()) > 0, "B: {got_b:?}");
    assert!(got_a.equivocations.iter().chain(&got_b).all(|e| e.actor == eve.actor()), "only Eve equivocated");
    // Neither applied the other history; both hold the same clock, and
    // everyone else's writes.
    for (name, r, kept) in [("A", &mut a, &first), ("B", &mut b, &second)] {
        let held = r.take_equivocations();
        assert!(equivocations_of(&held, eve.actor()) > 0, "{name}: {held:?}");
        for env in kept {
            let KvOp::Put { key, value, .. } = env.op() else { unreachable!() };
            assert_eq!(r.doc().values_of(key), vec![value.clone()], "{name}: {key}");
        }
        assert_eq!(r.clock().get(&eve.actor()), 3, "{name}");
        assert_eq!(r.doc().values_of("from-a"), vec!["a"], "{name}");
        assert_eq!(r.doc().values_of("from-b"), vec!["b"], "{name}");
        assert_eq!(r.doc().values_of("f"), vec!["frank"], "{name}");
    }
    assert_eq!(a.clock(), b.clock());
    // And they keep converging after it.
    let later = history(&frank, &[("f", "frank"), ("g", "later")]);
    b.receive(later).unwrap();
    let got = a.receive(all_ops(&b)).unwrap();
    assert_eq!(got.applied, 1, "{got:?}");
    assert_eq!(a.doc().values_of("g"), vec!["later"]);
    assert_eq!(a.clock(), b.clock());

    // A replica that has only the start of one history learns of the other
    // from an operation that does not follow it: the actor signed two
    // operations for the one before.
    let mut c = open_with(dirs[2].path(), opts());
    c.receive([first[0].clone()]).unwrap();
    let got = c.receive(as_run(second[1..].to_vec())).unwrap();
    assert_eq!(got.equivocations, vec![Equivocation { actor: eve.actor(), seq: 1 }], "{got:?}");
    assert_eq!(got.applied, 0);
    assert_eq!(c.clock().get(&eve.actor()), 1);
    assert_eq!(c.doc().values_of("e2"), Vec::<String>::new());
    // The rest of the history it has still comes, and nothing of the other
    // is left waiting.
    let got = c.receive(as_run(first[1..].to_vec())).unwrap();
    assert_eq!(got.applied, 2, "{got:?}");
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.doc().values_of("e3"), vec!["three"]);
}
#[test]
fn write_allow_list_is_enforced_identically() {
    let (alice, bob) = (ActorKey::from_seed([1; 32]), ActorKey::from_seed([3; 32]));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A writable replica whose own actor is on the list.
    let d0 = dirs[0].path();
    let own = {
        let r = open_with(d0, opts());
        r.actor()
    };
    let writers: BTreeSet<_> = [alice.actor(), own].into();
    let restricted = ReplicaOptions { writers: Some(writers), ..opts() };
    let mut w = open_with(d0, restricted.clone());
    w.update(|d, a| d.put_op(a, "mine", "ok")).unwrap();
    let mut replicas: Vec<_> = dirs[1..].iter().map(|d| open_with(d.path(), restricted.clone())).collect();
    for r in replicas.iter_mut() {
        // Bob is not a writer: skipped, whoever relays it, and not an error
        // (honest peers' logs may still hold his operations).
        let got = r.receive([put(&bob, 1, "k", "bob"), put(&alice, 1, "k", "alice")]).unwrap();
        assert_eq!((got.not_writers, got.applied), (1, 1));
        assert_eq!(r.clock().get(&bob.actor()), 0);
        let Catchup::Ops { ops, .. } = w.ops_since(r.clock(), 1 << 20).unwrap() else { panic!("ops") };
        r.receive(ops).unwrap();
        // A local write by a replica that is not on the list.
        let err = r.update(|d, a| d.put_op(a, "k", "me")).unwrap_err();
        assert!(matches!(err, WriteError::NotAWriter { .. }), "{err}");
        // A snapshot including a non-writer's operations: refused, but no
        // peer fault (an honest peer's state may predate the list).
        let mut clock = VersionVector::default();
        clock.observe(bob.actor(), 1);
        let err = r.merge_snapshot(KvDoc::default(), clock).unwrap_err();
        assert!(matches!(err, ReceiveError::NotAWriter { seq: 1, .. }), "{err}");
        assert!(!walrus::sync::SyncError::Receive(err).is_peer_fault());
    }
    assert_eq!(replicas[0].doc().canonical(), replicas[1].doc().canonical());
    assert_eq!(replicas[0].clock(), replicas[1].clock());
}

#[test]
fn operations_relayed_through_a_replica_still_verify() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = open_with(dirs[0].path(), opts());
    let mut b = open_with(dirs[1].path(), opts());
    let mut c = open_with(dirs[2].path(), opts());
    for i in 0..20 {
        a.update(|d, act| d.put_op(act, &format!("k{i}"), "v")).unwrap();
    }
    let Catchup::Ops { ops, .. } = a.ops_since(b.clock(), 1 << 20).unwrap() else { panic!("ops") };
    b.receive(ops).unwrap();
    // B serves A's operations from its own log, after a restart.
    drop(b);
    let b = open_with(dirs[1].path(), opts());
    let Catchup::Ops { ops, .. } = b.ops_since(c.clock(), 1 << 20).unwrap() else { panic!("ops") };
    assert_eq!(c.receive(ops).unwrap().applied, 20);
    assert_eq!(c.clock(), a.clock());
}

#[test]
fn a_replica_belongs_to_one_document() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    assert_eq!(r.document(), DOC);
    r.update(|d, a| d.put_op(a, "k", "v")).unwrap();
    drop(r);
    // Opening without naming the document uses the stored one.
    let r = open_with(d.path(), ReplicaOptions { document: None, ..opts() });
    assert_eq!(r.document(), DOC);
    drop(r);
    let err = Replica::<KvDoc>::open(d.path(), ReplicaOptions { document: Some("other".into()), ..opts() })
        .err()
        .expect("another document id must be refused");
    assert!(
        matches!(err, OpenError::Storage(StorageError::Corrupt { .. })) && err.to_string().contains("other"),
        "{err}"
    );
}

#[test]
fn a_directory_of_the_unsigned_format_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("actor"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let err = Replica::<KvDoc>::open(d.path(), opts()).err().expect("refused");
    assert!(err.to_string().contains("earlier version"), "{err}");
}

#[test]
fn large_batches_are_verified_as_strictly_as_small_ones() {
    // Big enough for the multi-threaded check.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let (alice, bob) = (ActorKey::from_seed([1; 32]), ActorKey::from_seed([3; 32]));
    let a_keys: Vec<String> = (1..=200).map(|seq| format!("a{seq}")).collect();
    let b_keys: Vec<String> = (1..=100).map(|seq| format!("b{seq}")).collect();
    let mut batch = history(&alice, &a_keys.iter().map(|k| (k.as_str(), "v")).collect::<Vec<_>>());
    let bobs = history(&bob, &b_keys.iter().map(|k| (k.as_str(), "v")).collect::<Vec<_>>());
    let bob_last = bobs[99].hash();
    batch.extend(bobs);
    batch.push(batch[0].clone()); // a duplicate within the batch
    let all = batch.clone();
    let got = r.receive(batch).unwrap();
    assert_eq!((got.applied, got.duplicates), (300, 1));
    // The same with a forgery in the middle: what precedes it is applied,
    // nothing after it (though the operation after it chains to it and
    // carries a valid head).
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let mut batch = all.clone();
    batch[149] = forge(batch[149].clone(), 1); // alice 150
    let err = r.receive(batch).unwrap_err();
    assert!(is_bad_signature(&err, 150), "{err}");
    assert_eq!(r.clock().get(&alice.actor()), 149);
    assert_eq!(r.clock().get(&bob.actor()), 0);
    assert_eq!(r.buffered(), 0);
    // The same as long runs, each vouched for by its last operation only:
    // a forged head refuses its whole run.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let mut batch = as_run(all[..100].to_vec());
    let mut second = as_run(all[100..200].to_vec());
    second[99] = forge(second[99].clone(), 2); // alice 200, the head of 101..=200
    batch.extend(second);
    batch.extend(as_run(all[200..300].to_vec()));
    let err = r.receive(batch).unwrap_err();
    assert!(is_bad_signature(&err, 101), "{err}");
    assert_eq!((r.clock().get(&alice.actor()), r.clock().get(&bob.actor()), r.buffered()), (100, 0, 0));
    // One claiming another actor, at the very end of a large batch: Bob's
    // operation 101, signed with Alice's key.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let mut batch = all;
    let as_bob = put_after(&bob, bob_last, 101, "b101", "forged");
    let as_bob = as_bob.clone().with_signature(Some(as_bob.hash().sign_head(&alice)));
    batch.push(as_bob);
    let err = r.receive(batch).unwrap_err();
    assert!(is_bad_signature(&err, 101), "{err}");
    assert_eq!((r.clock().get(&alice.actor()), r.clock().get(&bob.actor())), (200, 100));
}

#[test]
fn document_ids_are_checked_before_they_are_stored() {
    for bad in ["a\nb".to_string(), "x".repeat(5000)] {
        let d = tempfile::tempdir().unwrap();
        let err =
            Replica::<KvDoc>::open(d.path(), ReplicaOptions { document: Some(bad), ..opts() }).err().expect("refused");
        assert!(matches!(err, OpenError::InvalidDocumentId(_)), "{err}");
        assert!(!d.path().join(walrus::internals::DOCUMENT_FILE).exists());
    }
}

/// A held operation that the document refuses once its predecessor arrives
/// is the signing actor's doing, not the deliverer's: the delivery
/// succeeds, and the refusal is counted. Delivered directly, the same
/// operation is the sender's fault.
#[test]
fn a_held_operation_refused_later_is_not_the_delivery_s_fault() {
    use walrus::replica::SetDoc;
    let mallory = ActorKey::from_seed([7; 32]);
    let add = |seq: u64, prev: ChainHash, counter: u64, member: &str| {
        let dot = crdts::Dot::new(mallory.actor(), counter);
        let op = crdts::orswot::Op::Add { dot, members: vec![member.to_string()] };
        OpEnvelope::signed::<SetDoc>(&mallory, DOC, seq, prev, op).unwrap()
    };
    // Its dot skips counters: `Orswot` refuses it after seq 1.
    let first = add(1, ChainHash::ZERO, 1, "a");
    let skipping = add(2, first.hash(), 5, "b");
    let third = add(3, skipping.hash(), 6, "c");

    let d = tempfile::tempdir().unwrap();
    let mut r: Replica<SetDoc> = Replica::open(d.path(), opts()).unwrap();
    let held = r.receive([skipping.clone(), third]).unwrap();
    assert_eq!(held.buffered, 2);
    let got = r.receive([first.clone()]).unwrap();
    assert_eq!((got.applied, got.rejected), (1, 2), "{got:?}");
    assert_eq!(r.buffered(), 0);
    assert_eq!(r.clock().get(&mallory.actor()), 1);

    let d2 = tempfile::tempdir().unwrap();
    let mut r2: Replica<SetDoc> = Replica::open(d2.path(), opts()).unwrap();
    r2.receive([first]).unwrap();
    let err = r2.receive([skipping]).unwrap_err();
    assert!(matches!(err, ReceiveError::Peer(PeerError::Rejected { seq: 2, .. })), "{err}");
    // Both refused the same operations.
    assert_eq!(r.clock(), r2.clock());
    assert_eq!(r.doc(), r2.doc());
}

#[test]
fn an_error_that_blames_nobody_does_not_hide_a_forgery_after_it() {
    let d = tempfile::tempdir().unwrap();
    // One early operation per actor may wait.
    let mut r = open_with(d.path(), ReplicaOptions { buffer_per_actor: 1, ..opts() });
    let alice = ActorKey::from_seed([1; 32]);
    let ops = history(&alice, &[("a", "v"), ("b", "v"), ("c", "v"), ("d", "v"), ("e", "v")]);
    // 3 waits for 1 and 2; 4 finds the buffer full (no one's fault); then
    // a forged operation: the batch is the sender's fault all the same.
    let forged = forge(put(&alice, 1, "k", "forged"), 3);
    let err = r.receive([ops[2].clone(), ops[3].clone(), forged]).unwrap_err();
    assert!(err.is_peer_fault(), "a forgery must blame its sender: {err}");
    assert!(is_bad_signature(&err, 1), "{err}");
    // A full buffer alone blames nobody.
    let err = r.receive([ops[4].clone()]).unwrap_err();
    assert!(matches!(err, ReceiveError::BufferFull(_)), "{err}");
    assert!(!err.is_peer_fault());
}

/// A max register whose operation type cannot encode the value 13 (it
/// decodes it): a replica whose own type is stricter than its peers'.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Picky(u64);

#[derive(Debug, Clone, PartialEq)]
struct PickyOp(u64);

impl serde::Serialize for PickyOp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 cannot be written"));
        }
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for PickyOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PickyOp, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(PickyOp)
    }
}

impl crdts::CmRDT for Picky {
    type Op = PickyOp;
    type Validation = std::convert::Infallible;
    fn validate_op(&self, _: &PickyOp) -> Result<(), Self::Validation> {
        Ok(())
    }
    fn apply(&mut self, op: PickyOp) {
        self.0 = self.0.max(op.0);
    }
}

impl crdts::CvRDT for Picky {
    type Validation = std::convert::Infallible;
    fn validate_merge(&self, _: &Picky) -> Result<(), Self::Validation> {
        Ok(())
    }
    fn merge(&mut self, other: Picky) {
        self.0 = self.0.max(other.0);
    }
}

impl Document for Picky {
    type Operation = PickyOp;
}

/// The same register as its peers see it: its operations are any `u64`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Lenient(u64);

impl crdts::CmRDT for Lenient {
    type Op = u64;
    type Validation = std::convert::Infallible;
    fn validate_op(&self, _: &u64) -> Result<(), Self::Validation> {
        Ok(())
    }
    fn apply(&mut self, op: u64) {
        self.0 = self.0.max(op);
    }
}

impl crdts::CvRDT for Lenient {
    type Validation = std::convert::Infallible;
    fn validate_merge(&self, _: &Lenient) -> Result<(), Self::Validation> {
        Ok(())
    }
    fn merge(&mut self, other: Lenient) {
        self.0 = self.0.max(other.0);
    }
}

impl Document for Lenient {
    type Operation = u64;
}

/// A replica never encodes a peer's operation again (its bytes are
/// hashed, logged and served as they came), so one its own type could
/// not write is still taken, kept and passed on, whole runs verified on
/// threads or not. (Format 2 encoded operations again to check their
/// signatures, and such an operation was a local failure there.)
#[test]
fn an_operation_this_replica_cannot_encode_again_is_kept_as_it_came() {
    let alice = ActorKey::from_seed([1; 32]);
    let limits = Limits::default();
    for count in [13u64, 80] {
        // Alice's type writes 13 without trouble.
        let mut prev = ChainHash::ZERO;
        let sent: Vec<OpEnvelope<u64>> = (1..=count)
            .map(|seq| {
                let env = OpEnvelope::signed::<Lenient>(&alice, DOC, seq, prev, seq).unwrap();
                prev = env.hash();
                env
            })
            .collect();
        let page = || SyncResponse::Ops {
            doc: DOC.into(),
            page: serde_bytes::ByteBuf::from(walrus::internals::page_of(&sent)),
            more: false,
        };
        let d = tempfile::tempdir().unwrap();
        let mut r: Replica<Picky> = Replica::open(d.path(), opts()).unwrap();
        let got = apply_response(&mut r, DOC, page(), &limits).unwrap();
        assert_eq!(got.received.applied as u64, count, "{count} ops");
        assert_eq!(r.doc().0, count);
        drop(r);
        let r: Replica<Picky> = Replica::open(d.path(), opts()).unwrap();
        assert_eq!((r.clock().get(&alice.actor()), r.doc().0), (count, count), "after a reopen");
        // Served from its log to a peer of the same type.
        let d2 = tempfile::tempdir().unwrap();
        let mut s: Replica<Picky> = Replica::open(d2.path(), opts()).unwrap();
        let resp = walrus::sync::respond(&r, DOC, &walrus::sync::request(&s, DOC, 1 << 20), &limits);
        apply_response(&mut s, DOC, resp, &limits).unwrap();
        assert_eq!((s.clock().get(&alice.actor()), s.doc().0), (count, count), "served on");
    }
}

#[test]
fn a_certified_successor_s_run_is_taken_whole_under_a_writer_list() {
    // Alice's replica retires its actor: the successor's first operation
    // carries the certificate, and its operations go out as one run whose
    // only signature is the last one's (a catch-up page).
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open_with(da.path(), opts());
    let alice = a.actor();
    a.update(|d, me| d.put_op(me, "before", "1")).unwrap();
    let successor = a.retire_actor().unwrap();
    assert_ne!(successor, alice);
    for i in 0..3 {
        a.update(|d, me| d.put_op(me, &format!("after{i}"), "2")).unwrap();
    }
    // A replica that only lists Alice as a writer, and has not heard of the
    // successor yet.
    let writers: BTreeSet<_> = [alice].into();
    let mut b = open_with(db.path(), ReplicaOptions { writers: Some(writers), ..opts() });
    let limits = Limits::default();
    for _ in 0..10 {
        let resp = walrus::sync::respond(&a, DOC, &walrus::sync::request(&b, DOC, 1 << 20), &limits);
        if let SyncResponse::Ops { .. } = &resp {
        } else {
            panic!("expected operations, got {resp:?}");
        }
        let got = apply_response(&mut b, DOC, resp, &limits).expect("an honest successor's run is accepted");
        if !got.more {
            break;
        }
    }
    assert_eq!(b.clock().get(&successor), 3);
    assert_eq!(b.doc().values_of("after2"), vec!["2"]);
}
