//! Signed operations at the replica: forged, misattributed, equivocating
//! and unauthorised operations are refused before they are buffered or
//! logged, and every replica refuses the same ones.

use std::collections::BTreeSet;
use std::path::Path;

use walrus::replica::{
    ActorKey, Catchup, Document, Dot, EnvelopeError, Equivocation, KvDoc, KvOp, OpEnvelope, OpenError, PeerError,
    ReceiveError, Replica, ReplicaOptions, StorageError, VersionVector, WriteError,
};
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

fn put(key: &ActorKey, seq: u64, k: &str, v: &str) -> OpEnvelope<KvOp> {
    let dot = Dot { actor: key.actor(), counter: seq };
    let op = KvOp::Put { key: k.into(), dot, value: v.into(), seen: vec![] };
    OpEnvelope::signed(key, DOC, seq, op).unwrap()
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
        let mut env = put(&alice, seq, "k", "v");
        env.sig.0[7] ^= 0x40;
        let err = r.receive([env]).unwrap_err();
        assert!(
            matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: s, .. })) if s == seq),
            "{err}"
        );
    }
    // Mallory signs an operation but names Alice as its actor.
    let mut claimed = put(&mallory, 1, "k", "mallory");
    claimed.actor = alice.actor();
    assert!(matches!(
        r.receive([claimed]),
        Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))
    ));
    // Mallory signs as herself, but the write's dot names Alice.
    let dot = Dot { actor: alice.actor(), counter: 1 };
    let op = KvOp::Put { key: "k".into(), dot, value: "shadow".into(), seen: vec![] };
    let shadow = OpEnvelope::signed(&mallory, DOC, 1, op).unwrap();
    assert!(matches!(r.receive([shadow]), Err(ReceiveError::Peer(PeerError::Rejected { .. }))));
    // Signed for another document.
    let dot = Dot { actor: alice.actor(), counter: 1 };
    let op = KvOp::Put { key: "k".into(), dot, value: "v".into(), seen: vec![] };
    let elsewhere = OpEnvelope::signed(&alice, "other", 1, op).unwrap();
    assert!(matches!(
        r.receive([elsewhere]),
        Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { .. })))
    ));
    untouched(r);
}

#[test]
fn a_forged_operation_ends_the_batch_and_what_came_before_stays() {
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let alice = ActorKey::from_seed([1; 32]);
    let mut bad = put(&alice, 2, "k", "forged");
    bad.sig.0[0] ^= 1;
    let err = r.receive([put(&alice, 1, "a", "1"), bad, put(&alice, 3, "c", "3")]).unwrap_err();
    assert!(
        matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: 2, .. }))),
        "{err}"
    );
    assert_eq!(r.clock().get(&alice.actor()), 1);
    assert_eq!(r.buffered(), 0, "nothing after a forgery is looked at");
    let got = r.receive([put(&alice, 2, "b", "2"), put(&alice, 3, "c", "3")]).unwrap();
    assert_eq!(got.applied, 2);
    assert_eq!(r.doc().values_of("c"), vec!["3"]);

    // Also when an operation the document refuses came first: its error is
    // the one returned, and the forgery still ends the batch.
    let (bob, mallory) = (ActorKey::from_seed([3; 32]), ActorKey::from_seed([4; 32]));
    let op =
        KvOp::Put { key: "k".into(), dot: Dot { actor: bob.actor(), counter: 1 }, value: "x".into(), seen: vec![] };
    let misattributed = OpEnvelope::signed(&mallory, DOC, 1, op).unwrap();
    let mut bad = put(&bob, 1, "k", "forged");
    bad.sig.0[0] ^= 1;
    let err = r.receive([misattributed, bad, put(&bob, 1, "k", "bob")]).unwrap_err();
    assert!(matches!(err, ReceiveError::Peer(PeerError::Rejected { .. })), "{err}");
    assert_eq!(r.clock().get(&bob.actor()), 0, "an operation after a forgery was applied");

    // A damaged copy of an operation the replica already has is a forgery
    // too, so the batch ends where it would on a replica without it.
    let mut copy = put(&alice, 1, "a", "1");
    copy.sig.0[3] ^= 1; // in R: the second half still matches the applied one
    let err = r.receive([copy, put(&alice, 4, "d", "4")]).unwrap_err();
    assert!(
        matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: 1, .. }))),
        "{err}"
    );
    assert_eq!(r.clock().get(&alice.actor()), 3, "an operation after a forged repeat was applied");
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
    let mut fake = put(&mallory, 1, "k", "fake");
    fake.sig.0[3] ^= 1;
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
    let mut batch: Vec<_> = (1..=200).map(|seq| put(&alice, seq, &format!("a{seq}"), "v")).collect();
    batch.extend((1..=100).map(|seq| put(&bob, seq, &format!("b{seq}"), "v")));
    batch.push(batch[0].clone()); // a duplicate within the batch
    let all = batch.clone();
    let got = r.receive(batch).unwrap();
    assert_eq!((got.applied, got.duplicates), (300, 1));
    // The same with a forgery in the middle: what precedes it is applied,
    // nothing after it.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let mut batch = all.clone();
    batch[149].sig.0[1] ^= 1; // alice 150
    let err = r.receive(batch).unwrap_err();
    assert!(
        matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: 150, .. }))),
        "{err}"
    );
    assert_eq!(r.clock().get(&alice.actor()), 149);
    assert_eq!(r.clock().get(&bob.actor()), 0);
    assert_eq!(r.buffered(), 0);
    // One claiming another actor, at the very end of a large batch.
    let d = tempfile::tempdir().unwrap();
    let mut r = open_with(d.path(), opts());
    let mut batch = all;
    let mut as_bob = put(&alice, 101, "b101", "forged");
    as_bob.actor = bob.actor();
    batch.push(as_bob);
    let err = r.receive(batch).unwrap_err();
    assert!(
        matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: 101, .. }))),
        "{err}"
    );
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
    let add = |seq: u64, counter: u64, member: &str| {
        let dot = crdts::Dot::new(mallory.actor(), counter);
        let op = crdts::orswot::Op::Add { dot, members: vec![member.to_string()] };
        OpEnvelope::signed(&mallory, DOC, seq, op).unwrap()
    };
    // Its dot skips counters: `Orswot` refuses it after seq 1.
    let (first, skipping, third) = (add(1, 1, "a"), add(2, 5, "b"), add(3, 6, "c"));

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
    // 3 waits for 1 and 2; 4 finds the buffer full (no one's fault); then
    // a forged operation: the batch is the sender's fault all the same.
    let mut forged = put(&alice, 1, "k", "forged");
    forged.sig.0[3] ^= 0x01;
    let err = r.receive([put(&alice, 3, "c", "v"), put(&alice, 4, "d", "v"), forged]).unwrap_err();
    assert!(err.is_peer_fault(), "a forgery must blame its sender: {err}");
    assert!(
        matches!(err, ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { seq: 1, .. }))),
        "{err}"
    );
    // A full buffer alone blames nobody.
    let err = r.receive([put(&alice, 5, "e", "v")]).unwrap_err();
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

#[test]
fn an_operation_this_replica_cannot_encode_again_is_a_local_failure_not_the_sender_s() {
    let alice = ActorKey::from_seed([1; 32]);
    // Alice's type writes 13 without trouble; ours cannot write it again
    // to check the signature. Alone, and in a batch verified on threads.
    for count in [13u64, 80] {
        let d = tempfile::tempdir().unwrap();
        let mut r: Replica<Picky> = Replica::open(d.path(), opts()).unwrap();
        let sent: Vec<OpEnvelope<PickyOp>> = (1..=count)
            .map(|seq| {
                let bytes = OpEnvelope::signed(&alice, DOC, seq, seq).unwrap().encode().unwrap();
                OpEnvelope::decode(&bytes, 1 << 20).unwrap()
            })
            .collect();
        let err = r.receive(sent).unwrap_err();
        assert!(!err.is_peer_fault(), "{count} ops: our type's limit is not the sender's fault: {err}");
        assert!(matches!(err, ReceiveError::Local(StorageError::Envelope(EnvelopeError::Encode(_)))), "{err}");
        assert_eq!(r.clock().get(&alice.actor()), 12, "what came before is applied");
    }
}
