//! `walrus doc`: editing a replica offline, and sequence numbers that are
//! never reused after SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn walrus(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrus"));
    cmd.arg("doc").arg(args[0]).arg(dir).args(&args[1..]);
    cmd.output().expect("run walrus")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "walrus failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON value")
}

#[test]
fn put_get_del_dump_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let put = json(&walrus(&["put", "title", "say \"hi\" ünï"], &dir));
    assert_eq!(put["seq"], 1);
    json(&walrus(&["put", "other key", "x y"], &dir));
    assert_eq!(json(&walrus(&["get", "title"], &dir)), "say \"hi\" ünï");
    let del = json(&walrus(&["del", "other key"], &dir));
    assert_eq!(del["seq"], 3);
    let missing = walrus(&["get", "other key"], &dir);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let dump = json(&walrus(&["dump"], &dir));
    assert_eq!(dump["entries"], serde_json::json!({"title": "say \"hi\" ünï"}));
    let actor = dump["actor"].as_str().unwrap().to_string();
    assert_eq!(dump["clock"], serde_json::json!({ actor: 3 }));
    json(&walrus(&["checkpoint"], &dir));
    assert_eq!(json(&walrus(&["dump"], &dir))["entries"], dump["entries"]);
}

#[test]
fn reading_a_missing_directory_fails_without_creating_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("absent");
    for args in [&["get", "k"][..], &["dump"], &["del", "k"], &["checkpoint"]] {
        let out = walrus(args, &dir);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a replica directory"), "{args:?}");
    }
    assert!(!dir.exists());
}

/// xorshift64*, for reproducible kill points.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn sequence_numbers_are_never_reused_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut max_seq = 0u64;
    let mut actor: Option<String> = None;
    for round in 0..8 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walrus"))
            .args(["doc", "import"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walrus doc import");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..100_000 {
                if writeln!(stdin, "key-{} round-{round}-value-{i}", i % 50).is_err() {
                    break;
                }
            }
        });
        let kill_after = 1 + rng.below(200);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut round_acked = 0;
        while round_acked < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            let seq = v["seq"].as_u64().expect("seq");
            assert!(seq > max_seq, "round {round}: sequence number {seq} reused (highest seen {max_seq})");
            max_seq = seq;
            let i = round_acked;
            acked.insert(format!("key-{}", i % 50), format!("round-{round}-value-{i}"));
            round_acked += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = writer.join();

        let dump = json(&walrus(&["dump"], &dir));
        let me = dump["actor"].as_str().unwrap().to_string();
        assert_eq!(actor.get_or_insert(me.clone()), &me, "actor id changed after a crash");
        let clock = dump["clock"][&me].as_u64().unwrap_or(0);
        assert!(clock >= max_seq, "round {round}: clock {clock} lost acknowledged seq {max_seq}");
        // Unacknowledged ops that made it to disk count as used too.
        max_seq = clock;
        for (k, v) in &acked {
            let got = &dump["entries"][k];
            // A later unacknowledged write of the same key may have landed.
            assert!(got.is_string(), "round {round}: {k} missing or conflicting: {got}");
            if got != v.as_str() {
                let later = got.as_str().unwrap();
                assert!(later.starts_with(&format!("round-{round}-")), "round {round}: {k} = {later}, expected {v}");
            }
        }
        // Adopt what is on disk as the acknowledged baseline for the next round.
        for (k, v) in dump["entries"].as_object().unwrap() {
            acked.insert(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    assert!(max_seq > 8);
}
