//! Data written by earlier versions keeps opening: a replica directory in
//! today's format (replica format 2, log segment format 1) is committed
//! under `tests/fixtures/replica-v2/`, and every later version must open
//! it with nothing lost.
//!
//! The fixture is made once, by this test with `WALRUS_WRITE_FIXTURES=1`,
//! and then only read: regenerating it would hide a format change.

use std::path::{Path, PathBuf};

use walrus::replica::{KvDoc, Recovered, Replica, VersionVector};

use super::helpers::{copy_dir, open, opts};

/// The directory the fixture lives in.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replica-v2")
}

/// What the fixture holds besides `fill/0` to `fill/49`: A's own writes
/// (one deleted again), three of B's (one concurrent with A's), two
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

/// Writes `fill/<i>` for each `i`, with a value of about 100 bytes.
fn fill(r: &mut Replica<KvDoc>, range: std::ops::Range<usize>) {
    for i in range {
        r.update(|d, me| d.put_op(me, &format!("fill/{i}"), &fill_value(i))).unwrap();
    }
}

fn fill_value(i: usize) -> String {
    format!("{i:03}-{}", "f".repeat(96))
}

fn write_fixture(dir: &Path) {
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = open(dir);
    let mut b = open(b_dir.path());
    a.update(|d, me| d.put_op(me, "a/1", "one")).unwrap();
    a.update(|d, me| d.put_op(me, "a/2", "two")).unwrap();
    a.update(|d, me| d.put_op(me, "a/3", "three")).unwrap();
    a.update(|d, _| d.del_op("a/2")).unwrap();
    let theirs = vec![
        b.update(|d, me| d.put_op(me, "b/1", "from b")).unwrap(),
        b.update(|d, me| d.put_op(me, "b/2", "from b, twice")).unwrap(),
        b.update(|d, me| d.put_op(me, "shared", "b's")).unwrap(),
    ];
    fill(&mut a, 0..30);
    a.update(|d, me| d.put_op(me, "shared", "a's")).unwrap();
    a.receive(theirs).unwrap();
    a.checkpoint().unwrap();
    // The second generation differs from the first, and the log before the
    // first is truncated (the writes fill several 4 KiB segments).
    fill(&mut a, 30..50);
    a.checkpoint().unwrap();
    a.update(|d, me| d.put_op(me, "after", "only in the log")).unwrap();
    a.close().unwrap();
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

#[test]
fn a_replica_directory_of_format_2_opens_with_everything_in_it() {
    if std::env::var_os("WALRUS_WRITE_FIXTURES").is_some() {
        let dir = fixture();
        assert!(
            !dir.exists(),
            "{} exists: remove it to write it again (only when its format is retired)",
            dir.display()
        );
        write_fixture(&dir);
        // The lock file belongs to no one once the replica is closed.
        let _ = std::fs::remove_file(dir.join("wal").join("LOCK"));
    }
    // A copy: opening writes (and a copied directory retires its actor).
    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), scratch.path());
    let mut r = open(scratch.path());
    check(&r);
    let clock: &VersionVector = r.clock();
    assert_eq!(clock.total(), 59, "56 of A's operations, 3 of B's");
    assert!(
        r.recovered().iter().any(|n| matches!(n, Recovered::ActorRetired { .. })),
        "a copied directory writes under a new actor: {:?}",
        r.recovered()
    );
    // It keeps working: a write, a checkpoint and a reopen lose nothing.
    r.update(|d, me| d.put_op(me, "new", "v")).unwrap();
    r.checkpoint().unwrap();
    drop(r);
    let r = Replica::<KvDoc>::open(scratch.path(), opts()).unwrap();
    check(&r);
    assert_eq!(r.doc().values_of("new"), vec!["v"]);
}
