//! Data written by earlier versions keeps opening: a replica directory of
//! replica format 2 (log records that are format-2 CBOR envelopes, each
//! operation signed alone; checkpoints without chain heads; log segment
//! format 1) is committed under `tests/fixtures/replica-v2/`, and every
//! later version must open it with nothing lost, go on writing to it,
//! serve it to peers, and upgrade it in place.
//!
//! The fixture was written by a version that wrote format 2. This version
//! writes format 3 and cannot make it again: it must never be regenerated
//! (that would also hide a format change), only read.

use std::path::{Path, PathBuf};

use walrus::replica::{Document, KvDoc, Recovered, Replica, ReplicaOptions, VersionVector};
use walrus::sync::{apply_response, request, respond, Limits, SyncRequest, SyncResponse};

use super::helpers::{copy_dir, open, opts};

/// The directory the fixture lives in.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replica-v2")
}

/// What the fixture holds besides `fill/0` to `fill/49` (A's): A's own
/// writes (one deleted again), three of B's (one concurrent with A's), two
/// checkpoint generations, a log truncated before the older one, and a
/// write after the newest checkpoint that only the log holds.
const EXPECTED: &[(&str, &[&str])] = &[
    ("a/1", &["one"]),
    ("a/2", &[]),
    ("a/3", &["three"]),
    ("b/1", &["from b"]),
    ("b/2", &["from b, twice"]),
    ("shared", &["a's", "b's"]),
    ("after", &["only in the log"]),
];

/// Operations in the fixture: 56 of A's, 3 of B's.
const OPS: u64 = 59;

fn fill_value(i: usize) -> String {
    format!("{i:03}-{}", "f".repeat(96))
}

fn check(r: &Replica<KvDoc>) {
    for (key, want) in EXPECTED {
        let mut got = r.doc().values_of(key);
        got.sort();
        assert_eq!(got, want.to_vec(), "key {key}");
    }
    for i in 0..50 {
        assert_eq!(r.doc().values_of(&format!("fill/{i}")), vec![fill_value(i)], "fill/{i}");
    }
}

/// A copy of the fixture to open (opening writes). With `same_machine`,
/// without the record of the key file's inode, as on the machine that
/// wrote it (the copy has new inodes): the replica keeps its actor.
fn copy_of_fixture(same_machine: bool) -> tempfile::TempDir {
    assert!(
        std::env::var_os("WALRUS_WRITE_FIXTURES").is_none(),
        "{} was written in replica format 2, which this version cannot write: it must not be regenerated",
        fixture().display()
    );
    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), scratch.path());
    if same_machine {
        std::fs::remove_file(scratch.path().join("actor.home")).unwrap();
    }
    scratch
}

/// A fresh replica of `from`'s document, caught up through the sync
/// protocol with small pages.
fn catch_up(from: &Replica<KvDoc>, dir: &Path) -> Replica<KvDoc> {
    let doc = from.document().to_string();
    let mut to: Replica<KvDoc> = Replica::open(dir, ReplicaOptions { document: Some(doc.clone()), ..opts() }).unwrap();
    pull(from, &mut to);
    to
}

/// The name the sync protocol routes the fixture's document by (its
/// document id is the empty default, which is no name).
const NAME: &str = "fixture";

/// Syncs `to` from `from` until nothing more is missing; whether a
/// snapshot was among the answers.
fn pull(from: &Replica<KvDoc>, to: &mut Replica<KvDoc>) -> bool {
    let doc = NAME;
    let limits = Limits::default();
    let mut snapshot = false;
    for _ in 0..100 {
        let resp = respond(from, doc, &request(to, doc, 512), &limits);
        assert!(matches!(resp, SyncResponse::Ops { .. } | SyncResponse::Snapshot { .. }), "{resp:?}");
        snapshot |= matches!(resp, SyncResponse::Snapshot { .. });
        if !apply_response(to, doc, resp, &limits).unwrap().more {
            assert!(to.clock().covers(from.clock()), "{:?} behind {:?}", to.clock(), from.clock());
            return snapshot;
        }
    }
    panic!("catching up never ends");
}

fn same(a: &Replica<KvDoc>, b: &Replica<KvDoc>) {
    assert_eq!(a.clock(), b.clock());
    assert!(a.doc().canonical() == b.doc().canonical(), "the documents differ");
}

#[test]
fn a_replica_directory_of_format_2_opens_with_everything_in_it() {
    // A copy: opening writes (and a copied directory retires its actor).
    let scratch = copy_of_fixture(false);
    let mut r = open(scratch.path());
    check(&r);
    let clock: &VersionVector = r.clock();
    assert_eq!(clock.total(), OPS, "56 of A's operations, 3 of B's");
    assert!(
        r.recovered().iter().any(|n| matches!(n, Recovered::ActorRetired { .. })),
        "a copied directory writes under a new actor: {:?}",
        r.recovered()
    );
    // New writes succeed and survive a reopen.
    r.update(|d, me| d.put_op(me, "new", "v")).unwrap();
    let writes = [("new/2", "w"), ("new/3", "x")].map(|(k, v)| move |d: &KvDoc, me| d.put_op(me, k, v));
    assert!(r.update_many(writes).iter().all(Result::is_ok));
    drop(r);
    let r = Replica::<KvDoc>::open(scratch.path(), opts()).unwrap();
    check(&r);
    assert_eq!(r.doc().values_of("new"), vec!["v"]);
    assert_eq!(r.doc().values_of("new/3"), vec!["x"]);
    assert_eq!(r.clock().total(), OPS + 3);

    // A fresh replica catches up from it through the sync protocol.
    let fresh = tempfile::tempdir().unwrap();
    let peer = catch_up(&r, fresh.path());
    check(&peer);
    same(&r, &peer);

    // A checkpoint upgrades the directory in place: after a reopen
    // everything is still there, and it still serves peers.
    let mut r = r;
    r.checkpoint().unwrap();
    r.update(|d, me| d.put_op(me, "newer", "y")).unwrap();
    r.checkpoint().unwrap();
    drop(r);
    let r = Replica::<KvDoc>::open(scratch.path(), opts()).unwrap();
    assert!(r.recovered().is_empty(), "{:?}", r.recovered());
    check(&r);
    assert_eq!((r.doc().values_of("new"), r.doc().values_of("newer")), (vec!["v".into()], vec!["y".into()]));
    assert_eq!(r.clock().total(), OPS + 4);
    // (What the checkpoint covers may come as a snapshot, what follows it
    // comes as operations.)
    let (mut r, mut peer) = (r, peer);
    pull(&r, &mut peer);
    same(&r, &peer);
    r.update(|d, me| d.put_op(me, "newest", "z")).unwrap();
    assert!(!pull(&r, &mut peer), "one new operation needs no snapshot");
    same(&r, &peer);
    let fresh = tempfile::tempdir().unwrap();
    same(&r, &catch_up(&r, fresh.path()));
}

/// Upgraded on the machine that wrote it, the replica keeps its actor: its
/// first operation in format 3 chains to its last one in format 2.
#[test]
fn a_replica_of_format_2_upgraded_in_place_goes_on_with_its_actor() {
    let scratch = copy_of_fixture(true);
    let mut r = open(scratch.path());
    assert!(r.recovered().is_empty(), "{:?}", r.recovered());
    check(&r);
    let actor = r.actor();
    let had = r.clock().get(&actor);
    assert_eq!(had, 56, "the fixture's own actor wrote 56 operations");

    // A peer that caught up before the upgrade.
    let before = tempfile::tempdir().unwrap();
    let mut peer = catch_up(&r, before.path());
    same(&r, &peer);

    let env = r.update(|d, me| d.put_op(me, "upgraded", "yes")).unwrap();
    assert_eq!((env.actor(), env.seq()), (actor, had + 1));
    r.update(|d, me| d.put_op(me, "upgraded/2", "yes")).unwrap();
    drop(r);
    let mut r = open(scratch.path());
    assert_eq!(r.actor(), actor);
    assert_eq!(r.clock().get(&actor), had + 2);
    // The peer takes the new operations, chained to the format-2 ones it
    // has, as operations.
    assert!(!pull(&r, &mut peer), "two new operations need no snapshot");
    same(&r, &peer);
    assert_eq!(peer.doc().values_of("upgraded/2"), vec!["yes"]);
    // A peer that lacks the last format-2 operation is answered too (the
    // format-2 operations are not served as operations: a snapshot).
    let mut behind = VersionVector::default();
    for (a, &n) in r.clock().iter() {
        behind.observe(*a, if *a == actor { had - 1 } else { n });
    }
    let req = SyncRequest { doc: NAME.into(), clock: behind, budget: 512 };
    let resp = respond(&r, NAME, &req, &Limits::default());
    assert!(matches!(resp, SyncResponse::Ops { .. } | SyncResponse::Snapshot { .. }), "{resp:?}");

    // Checkpointed and reopened: all there, and still the same actor.
    r.checkpoint().unwrap();
    r.update(|d, me| d.put_op(me, "upgraded/3", "yes")).unwrap();
    r.checkpoint().unwrap();
    drop(r);
    let mut r = open(scratch.path());
    assert_eq!(r.actor(), actor);
    check(&r);
    assert_eq!(r.doc().values_of("upgraded/3"), vec!["yes"]);
    pull(&r, &mut peer);
    same(&r, &peer);
    r.update(|d, me| d.put_op(me, "upgraded/4", "yes")).unwrap();
    assert!(!pull(&r, &mut peer), "one new operation needs no snapshot");
    same(&r, &peer);
    let fresh = tempfile::tempdir().unwrap();
    same(&r, &catch_up(&r, fresh.path()));
}
