//! `walrus bench sync` at tiny sizes: every section runs, and with
//! `WALRUS_BENCH_JSON` set each appends its figures as one JSON line.

use std::process::Command;

use serde_json::Value;

use super::EXE;

/// The fields of each kind of line that must be finite and positive numbers.
const KINDS: [(&str, &[&str]); 4] = [
    ("catchup", &["ops", "walrus_bytes", "walrus_s", "tcp_bytes", "tcp_s"]),
    ("spread", &["nodes", "ops", "converge_s", "wire_bytes_per_op"]),
    ("log", &["ops", "log_bytes_per_op", "key_value_bytes_per_op"]),
    ("verify", &["us_per_op_catchup", "us_per_op_apply"]),
];

#[test]
fn bench_sync_appends_json_lines_of_every_section() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.jsonl");
    // Appended to, not replaced.
    std::fs::write(&json, "").unwrap();
    let out = Command::new(EXE)
        .args(["bench", "sync", "--ops", "40", "--catchup", "100", "--nodes", "2"])
        .env("WALRUS_BENCH_JSON", &json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for section in ["signatures:", "log:", "verify:", "spread:", "catch-up:"] {
        assert!(stdout.contains(section), "no {section} section in:\n{stdout}");
    }

    let text = std::fs::read_to_string(&json).unwrap();
    for line in text.lines() {
        assert!(line.starts_with(r#"{"bench":""#), "the section comes first, for grep: {line}");
    }
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let of = |kind: &str| lines.iter().filter(|l| l["bench"] == kind).collect::<Vec<_>>();
    for (kind, fields) in KINDS {
        let found = of(kind);
        assert!(!found.is_empty(), "no {kind} line in:\n{text}");
        for line in found {
            for field in fields {
                let v = line[field].as_f64().unwrap_or_else(|| panic!("{field} is not a number in {line}"));
                assert!(v.is_finite() && v > 0.0, "{field} = {v} in {line}");
            }
        }
    }
    assert_eq!(lines.len(), 5, "two catch-up workloads, one cluster size, log and verify:\n{text}");

    let workloads: Vec<_> = of("catchup").iter().map(|l| l["workload"].as_str().unwrap_or_default()).collect();
    assert_eq!(workloads, ["sequential", "random"]);
    for line in of("catchup") {
        assert_eq!(line["ops"], 100);
        // `walrus bench sync` has no comparison to run.
        assert!(line["automerge_bytes"].is_null() && line["automerge_s"].is_null(), "{line}");
    }
    let spread = of("spread");
    assert_eq!((&spread[0]["nodes"], &spread[0]["ops"]), (&Value::from(2), &Value::from(40)));
    assert_eq!(of("log")[0]["workload"], "sequential");
}
