//! `RUST_LOG`: the library's logs go to standard error, filtered by it;
//! standard output stays exactly the commands' own.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::EXE;

/// Runs `walrus <args> <dir> <rest>` with `input` on standard input and
/// `RUST_LOG` set to `rust_log` (unset when `None`).
fn run(args: &[&str], dir: &Path, rest: &[&str], input: &[u8], rust_log: Option<&str>) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args).arg(dir).args(rest).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let mut child = cmd.spawn().expect("spawn walrus");
    // Small inputs: written whole before the output is read.
    child.stdin.take().expect("piped stdin").write_all(input).expect("write stdin");
    let out = child.wait_with_output().expect("wait for walrus");
    assert!(out.status.success(), "walrus {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Every line of standard output, as JSON.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .expect("UTF-8 standard output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect()
}

#[test]
fn debug_logs_go_to_stderr_and_leave_stdout_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (quiet, loud) = (tmp.path().join("quiet"), tmp.path().join("loud"));
    let put = |dir: &Path, rust_log| run(&["doc", "put"], dir, &["key", "value"], b"", rust_log);
    let plain = put(&quiet, None);
    assert!(plain.stderr.is_empty(), "{}", String::from_utf8_lossy(&plain.stderr));
    let logged = put(&loud, Some("walrus=debug"));
    let log = String::from_utf8_lossy(&logged.stderr);
    assert!(log.contains("replica opened"), "no debug log on stderr: {log:?}");
    // The same acknowledgement, but for the actor (each replica has its own).
    let strip_actor = |mut v: Value| {
        v.as_object_mut().expect("an object").remove("actor");
        v
    };
    let (a, b) = (json_lines(&plain), json_lines(&logged));
    assert_eq!(a.len(), 1);
    assert_eq!(a.into_iter().map(strip_actor).collect::<Vec<_>>(), b.into_iter().map(strip_actor).collect::<Vec<_>>());
}

#[test]
fn a_logging_node_still_prints_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["node", "--data"], tmp.path(), &[], b"put k v\nquit\n", Some("walrus=debug"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.trim().is_empty(), "no debug log on stderr");
    let events = json_lines(&out);
    assert_eq!(events.first().map(|e| &e["event"]), Some(&Value::from("listening")), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "ok" && e["cmd"] == "put" && e["key"] == "k"), "{events:?}");
}
