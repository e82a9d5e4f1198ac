//! `walrus doc`: editing a key-value replica offline through the binary, the
//! JSON it prints, its errors, and sequence numbers that are never reused
//! after a SIGKILL.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use walrus::replica::{KvDoc, Replica, ReplicaOptions};

use crate::{copy_tree, EXE};

/// Runs `walrus doc <sub> <dir> <rest…>`.
fn walrus<S: AsRef<OsStr>>(sub: &str, dir: &Path, rest: &[S]) -> Output {
    Command::new(EXE).args(["doc", sub]).arg(dir).args(rest).stdin(Stdio::null()).output().expect("run walrus")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one JSON value a successful command printed.
fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "walrus failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON value")
}

fn ok<S: AsRef<OsStr>>(sub: &str, dir: &Path, rest: &[S]) -> Value {
    json_of(&walrus(sub, dir, rest))
}

/// Runs a command that must fail cleanly (exit 1, a message, no panic) and
/// returns its standard error.
fn fails<S: AsRef<OsStr>>(sub: &str, dir: &Path, rest: &[S]) -> String {
    let out = walrus(sub, dir, rest);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "walrus doc {sub}: {err}");
    assert!(out.stdout.is_empty(), "walrus doc {sub} printed {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(!err.contains("panicked"), "{err}");
    err
}

const NONE: &[&str] = &[];

#[test]
fn put_get_del_dump_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let put = ok("put", &dir, &["title", "Groceries"]);
    let actor = put["actor"].as_str().unwrap().to_string();
    assert_eq!(actor.len(), 64, "an ed25519 public key in hex");
    assert_eq!(put, json!({"ok": "put", "key": "title", "actor": actor, "seq": 1}));
    assert_eq!(ok("get", &dir, &["title"]), "Groceries");
    assert_eq!(ok("put", &dir, &["title", "Shopping"])["seq"], 2);
    assert_eq!(ok("put", &dir, &["other", "x"])["seq"], 3);
    assert_eq!(ok("get", &dir, &["title"]), "Shopping");

    let del = ok("del", &dir, &["other"]);
    assert_eq!(del, json!({"ok": "del", "key": "other", "removed": 1, "actor": actor, "seq": 4}));
    assert!(fails("get", &dir, &["other"]).contains("not found"));

    let dump = ok("dump", &dir, NONE);
    assert_eq!(dump, json!({"entries": {"title": "Shopping"}, "clock": {&actor: 4}, "actor": actor}));

    assert_eq!(ok("checkpoint", &dir, NONE), json!({"ok": "checkpoint", "ops": 4}));
    assert_eq!(ok("dump", &dir, NONE), dump);
    // Sequence numbers continue after a checkpoint.
    assert_eq!(ok("put", &dir, &["after", "checkpoint"])["seq"], 5);
    assert_eq!(ok("get", &dir, &["after"]), "checkpoint");
}

#[test]
fn keys_and_values_with_spaces_quotes_and_unicode_survive_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let pairs = [
        ("with space", "two words  and   more"),
        ("quote\"key", "say \"hi\" and 'bye'"),
        ("back\\slash", "C:\\path\\to\\file"),
        ("ünïcödé ключ 鍵", "emoji 🦭 and right-to-left שלום"),
        ("lines", "first\nsecond\r\nthird\ttabbed"),
        ("control", "bell\u{7} escape\u{1b} del\u{7f}"),
        ("-dash", "-5"),
        ("empty value", ""),
        ("", "empty key"),
    ];
    for (k, v) in pairs {
        ok("put", &dir, &[k, v]);
        assert_eq!(ok("get", &dir, &[k]), v, "key {k:?}");
    }
    let dump = ok("dump", &dir, NONE);
    let expected: serde_json::Map<String, Value> = pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    assert_eq!(dump["entries"], Value::Object(expected));
    let actor = dump["actor"].as_str().unwrap();
    assert_eq!(dump["clock"], json!({ actor: pairs.len() }));
    // The dump is a single line of JSON.
    let raw = walrus("dump", &dir, NONE).stdout;
    assert_eq!(raw.iter().filter(|&&b| b == b'\n').count(), 1);
}

#[test]
fn concurrent_values_are_a_json_array_until_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let (phone, laptop) = (tmp.path().join("phone"), tmp.path().join("laptop"));
    let (a, b) = {
        let mut p: Replica<KvDoc> = Replica::open(&phone, ReplicaOptions::default()).unwrap();
        let mut l: Replica<KvDoc> = Replica::open(&laptop, ReplicaOptions::default()).unwrap();
        p.update(|d, actor| d.put_op(actor, "title", "Groceries")).unwrap();
        let op = l.update(|d, actor| d.put_op(actor, "title", "Shopping")).unwrap();
        p.receive([op]).unwrap();
        let ids = (p.actor().to_string(), l.actor().to_string());
        p.close().unwrap();
        l.close().unwrap();
        ids
    };
    assert_eq!(ok("get", &phone, &["title"]), json!(["Groceries", "Shopping"]));
    let dump = ok("dump", &phone, NONE);
    assert_eq!(dump["entries"], json!({"title": ["Groceries", "Shopping"]}));
    assert_eq!(dump["clock"], json!({&a: 1, &b: 1}));
    assert_eq!(dump["actor"], a);
    // A write that has seen both values replaces them.
    assert_eq!(ok("put", &phone, &["title", "Both"])["seq"], 2);
    assert_eq!(ok("get", &phone, &["title"]), "Both");
    assert_eq!(ok("dump", &phone, NONE)["clock"], json!({&a: 2, &b: 1}));
}

#[test]
fn bad_directories_fail_without_creating_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let absent = tmp.path().join("absent");
    for (sub, rest) in [("get", &["k"][..]), ("dump", &[]), ("del", &["k"]), ("checkpoint", &[])] {
        let err = fails(sub, &absent, rest);
        assert!(err.contains("not a replica directory") && err.contains("does not exist"), "{sub}: {err}");
    }
    assert!(!absent.exists());

    // An unrelated directory is never turned into a replica, not even by put.
    let unrelated = tmp.path().join("photos");
    std::fs::create_dir(&unrelated).unwrap();
    std::fs::write(unrelated.join("cat.jpg"), b"meow").unwrap();
    for (sub, rest) in [("get", &["k"][..]), ("dump", &[]), ("put", &["k", "v"]), ("checkpoint", &[])] {
        assert!(fails(sub, &unrelated, rest).contains("not a replica directory"), "{sub}");
    }
    let names: Vec<_> = std::fs::read_dir(&unrelated).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["cat.jpg"]);

    // An empty directory is not a replica yet, but put may create one in it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(fails("dump", &empty, NONE).contains("not a replica directory"));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(ok("put", &empty, &["k", "v"])["seq"], 1);

    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(fails("dump", &file, NONE).contains("not a directory"));
    assert!(fails("put", &file, &["k", "v"]).contains("not a directory"));
}

#[test]
fn deleting_or_reading_a_missing_key_fails_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    ok("put", &dir, &["k", "v"]);
    assert!(fails("del", &dir, &["nope"]).contains(r#"key "nope" not found"#));
    assert!(fails("get", &dir, &["nope"]).contains("not found"));
    let dump = ok("dump", &dir, NONE);
    assert_eq!(dump["clock"][dump["actor"].as_str().unwrap()], 1);
}

#[test]
fn a_replica_open_elsewhere_is_in_use_for_writes_and_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    ok("put", &dir, &["k", "v"]);
    let mut held: Replica<KvDoc> = Replica::open(&dir, ReplicaOptions::default()).unwrap();
    for (sub, rest) in [("put", &["k", "w"][..]), ("del", &["k"]), ("checkpoint", &[])] {
        let err = fails(sub, &dir, rest);
        assert!(err.contains("is in use by another process"), "{sub}: {err}");
    }
    // Reads take no lock: they see what the holder made durable.
    held.update(|d, a| d.put_op(a, "k", "from the holder")).unwrap();
    assert_eq!(ok("get", &dir, &["k"]), "from the holder");
    let dump = ok("dump", &dir, NONE);
    assert_eq!(dump["actor"], held.actor().to_string());
    assert_eq!(dump["clock"][held.actor().to_string()], 2);
    held.close().unwrap();
    assert_eq!(ok("get", &dir, &["k"]), "from the holder");
}

/// Everything in `dir`, recursively: names, sizes and modification times.
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        out.push((entry.path(), meta.len(), meta.modified().unwrap()));
        if meta.is_dir() {
            out.extend(tree(&entry.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn reads_modify_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    ok("put", &dir, &["k", "v"]);
    ok("checkpoint", &dir, NONE);
    ok("put", &dir, &["k2", "v2"]);
    let before = tree(&dir);
    assert_eq!(ok("get", &dir, &["k2"]), "v2");
    assert_eq!(ok("dump", &dir, NONE)["entries"], json!({"k": "v", "k2": "v2"}));
    assert_eq!(tree(&dir), before, "a read changed the directory");
}

#[test]
fn a_damaged_checkpoint_is_survived_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    ok("put", &dir, &["a", "1"]);
    ok("checkpoint", &dir, NONE);
    ok("put", &dir, &["b", "2"]);
    ok("checkpoint", &dir, NONE);
    ok("put", &dir, &["c", "3"]);
    let cp = dir.join("checkpoint");
    let mut bytes = std::fs::read(&cp).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&cp, bytes).unwrap();
    // A read reports the damage and leaves the file where it is.
    let out = walrus("dump", &dir, NONE);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("checkpoint") && stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert_eq!(json_of(&out)["entries"], json!({"a": "1", "b": "2", "c": "3"}));
    assert!(cp.exists());
    // A write reports it too and moves the damaged file aside.
    let out = walrus("put", &dir, &["d", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("moved to"), "{}", stderr(&out));
    assert!(dir.join("checkpoint.damaged").exists());
    assert_eq!(ok("dump", &dir, NONE)["entries"], json!({"a": "1", "b": "2", "c": "3", "d": "4"}));
    let out = walrus("get", &dir, &["d"]);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn malformed_arguments_and_input_fail_cleanly() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    // Not UTF-8: refused by argument parsing (exit 2), nothing created.
    let out = walrus("put", &dir, &[OsStr::from_bytes(b"k"), OsStr::from_bytes(b"\xff\xfe")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dir.exists());
    // Missing argument.
    assert_eq!(walrus("put", &dir, &["only-key"]).status.code(), Some(2));

    // import stops at the first bad line; the lines before it are durable.
    let mut child = Command::new(EXE)
        .args(["doc", "import"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a 1\nb two words\nno-space-here\nc 3\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    let acks: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0]["key"].clone(), acks[1]["seq"].clone()), (json!("a"), json!(2)));
    assert_eq!(ok("dump", &dir, NONE)["entries"], json!({"a": "1", "b": "two words"}));
}

/// Keys cycle so later writes overwrite earlier ones.
const KEYS: u64 = 50;

/// `(round, line)` of a value written as `r<round>-<line>`.
fn origin(value: &str) -> (u64, u64) {
    let (r, i) = value.strip_prefix('r').and_then(|v| v.split_once('-')).expect("r<round>-<line>");
    (r.parse().unwrap(), i.parse().unwrap())
}

#[test]
fn sequence_numbers_are_never_reused_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let mut rng = fastrand::Rng::with_seed(0x5eed_1234_abcd_0001);
    // Per key, the (round, line) of the last acknowledged write.
    let mut acked: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Highest sequence number used: printed, or found in the log after a crash.
    let mut used = 0u64;
    let mut actor: Option<String> = None;
    let mut total_acked = 0;
    for round in 0..10u64 {
        let mut child = Command::new(EXE)
            .args(["doc", "import"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walrus doc import");
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            for i in 0..1_000_000u64 {
                // Fails once the child is killed.
                if writeln!(stdin, "key-{} r{round}-{i}", i % KEYS).is_err() {
                    break;
                }
            }
        });
        // Every fourth round: 0, a kill while the replica is still opening.
        let kill_after = if round % 4 == 3 { 0 } else { 1 + rng.u64(..200) };
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for i in 0..kill_after {
            let Some(Ok(line)) = lines.next() else {
                child.kill().unwrap();
                child.wait().unwrap();
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("round {round}: walrus doc import stopped after {i} acknowledgements: {err}");
            };
            let ack: Value = serde_json::from_str(&line).expect("one JSON line per op");
            let seq = ack["seq"].as_u64().expect("seq");
            assert_eq!(seq, used + 1, "round {round}: sequence number {seq} after {used} (reused or skipped)");
            used = seq;
            let me = ack["actor"].as_str().expect("actor");
            assert_eq!(actor.get_or_insert_with(|| me.to_string()), me, "round {round}: actor id changed");
            assert_eq!(ack["key"], format!("key-{}", i % KEYS));
            acked.insert(format!("key-{}", i % KEYS), (round, i));
            total_acked += 1;
        }
        child.kill().unwrap(); // SIGKILL, at a random point of the child's work
        child.wait().unwrap();
        feeder.join().unwrap();

        // Restart: everything acknowledged is there, under the same actor.
        let dump = ok("dump", &dir, NONE);
        let me = dump["actor"].as_str().unwrap();
        assert_eq!(actor.as_deref(), Some(me), "round {round}: actor id changed after SIGKILL");
        assert_eq!(dump["clock"].as_object().unwrap().len(), 1, "round {round}: {}", dump["clock"]);
        let clock = dump["clock"][me].as_u64().unwrap();
        assert!(clock >= used, "round {round}: clock {clock} lost acknowledged seq {used}");
        // Ops that reached the log unacknowledged used their numbers too.
        used = clock;
        let entries = dump["entries"].as_object().unwrap();
        for (key, &written) in &acked {
            let Some(Value::String(got)) = entries.get(key) else {
                panic!("round {round}: acknowledged {key} missing or conflicting: {:?}", entries.get(key));
            };
            // Or a later (unacknowledged) write of the same key.
            assert!(origin(got) >= written, "round {round}: {key} = {got}, acknowledged r{}-{}", written.0, written.1);
        }
        // What is on disk is the baseline for the next round.
        for (key, v) in entries {
            acked.insert(key.clone(), origin(v.as_str().unwrap()));
        }
    }
    assert!(total_acked >= 10, "only {total_acked} ops acknowledged");
}

#[test]
fn a_replica_restored_from_a_copy_writes_under_a_new_actor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let backup = tmp.path().join("backup");
    let first = ok("put", &dir, &["k1", "one"]);
    copy_tree(&dir, &backup);
    assert_eq!(ok("put", &dir, &["k2", "two"])["seq"], 2);
    std::fs::remove_dir_all(&dir).unwrap();
    copy_tree(&backup, &dir);
    let out = walrus("put", &dir, &["k2", "NEW"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("retired"), "{}", stderr(&out));
    let ack = json_of(&out);
    assert_ne!(ack["actor"], first["actor"], "the restored copy must not reuse its actor");
    assert_eq!(ack["seq"], 1);
    // The new actor stays; nothing more is reported.
    let out = walrus("put", &dir, &["k3", "three"]);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["actor"], ack["actor"]);
    assert_eq!(ok("dump", &dir, NONE)["actor"], ack["actor"]);
}

#[test]
fn rebuild_of_a_healthy_replica_is_an_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let put = ok("put", &dir, &["k", "v"]);
    let ack = ok("rebuild", &dir, NONE);
    assert_eq!(ack["ok"], "rebuild");
    assert_eq!(ack["actor"], put["actor"]);
    assert_eq!(ok("get", &dir, &["k"]), "v");
    assert!(fails("rebuild", &tmp.path().join("missing"), NONE).contains("not a replica directory"));
}
