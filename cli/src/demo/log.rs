//! `walrus demo --log`: the log surviving real crashes.
//!
//! A child `walrus log append` process writes records under each sync
//! policy; the demo SIGKILLs it mid-stream, recovers the directory and checks
//! that every acknowledged record is there, byte for byte, as a contiguous
//! prefix. Exits non-zero if any check fails.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use walrus::wal::{LogReader, SyncPolicy, Wal, WalOptions};

use super::{Checks, Result};

fn payload(round: usize, i: usize) -> String {
    format!("round {round} record {i}: {}", "x".repeat(i % 97))
}

/// Runs one `walrus log append` child, feeds it records and kills it with
/// SIGKILL after `kill_after` acknowledgements. Returns the acknowledged LSNs
/// with their payloads and the elapsed time.
fn crash_round(dir: &Path, sync: &str, round: usize, kill_after: usize) -> Result<(Vec<(u64, String)>, Duration)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["log", "append"])
        .arg(dir)
        .args(["--sync", sync, "--segment-size", "262144"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("child has no stdin")?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let writer = std::thread::spawn(move || {
        // Writes until the child dies (broken pipe) or a generous bound.
        for i in 0..1_000_000 {
            if writeln!(stdin, "{}", payload(round, i)).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while acked.len() < kill_after {
        let Some(line) = lines.next() else { break };
        let lsn: u64 = line?.trim().parse()?;
        acked.push(lsn);
    }
    child.kill()?;
    child.wait()?;
    let elapsed = started.elapsed();
    let _ = writer.join();
    // The records written this round are numbered from the first LSN acked.
    let first = acked.first().copied().unwrap_or(0);
    Ok((acked.iter().map(|&lsn| (lsn, payload(round, (lsn - first) as usize))).collect(), elapsed))
}

pub fn run() -> Result<ExitCode> {
    let total = Instant::now();
    let tmp = tempfile::tempdir()?;
    let mut checks = Checks::default();
    println!("walrus demo: a write-ahead log that survives SIGKILL");
    println!("  log directory: {}", tmp.path().display());
    let mut expected: Vec<(u64, String)> = Vec::new();
    for (round, (sync, kill_after)) in
        [("always", 300), ("batch", 5000), ("none", 20000), ("always", 100)].into_iter().enumerate()
    {
        println!(
            "\n  round {}: `walrus log append --sync {sync}`, SIGKILL after {kill_after} acknowledgements",
            round + 1
        );
        let (acked, elapsed) = crash_round(tmp.path(), sync, round, kill_after)?;
        let rate = acked.len() as f64 / elapsed.as_secs_f64().max(1e-9);
        println!("    {} records acknowledged in {:.1} ms ({rate:.0}/s), then killed", acked.len(), ms(elapsed));
        let started = Instant::now();
        let reader = LogReader::open(tmp.path(), &WalOptions::default())?;
        let summary = reader.summary();
        println!("    verify ({:.1} ms): {summary}", ms(started.elapsed()));
        let first_new = acked.first().map_or(u64::MAX, |a| a.0);
        checks.check(
            acked.first().is_none_or(|a| a.0 == expected.last().map_or(1, |e| e.0 + 1)),
            "LSNs continue where the previous run stopped",
        );
        expected.retain(|(lsn, _)| *lsn < first_new);
        expected.extend(acked);
        let records: Vec<_> = reader.iter_from(1)?.collect::<std::result::Result<_, _>>()?;
        let contiguous = records.iter().enumerate().all(|(i, r)| r.lsn == i as u64 + 1);
        checks.check(contiguous, "recovered log is a contiguous run of LSNs from 1");
        let all_present = expected
            .iter()
            .all(|(lsn, p)| records.get(*lsn as usize - 1).is_some_and(|r| r.lsn == *lsn && r.payload == p.as_bytes()));
        checks.check(all_present, &format!("all {} acknowledged records recovered byte for byte", expected.len()));
        // Unacknowledged records that made it are fine, but the next run
        // appends after them; adopt them so payload numbering stays exact.
        expected.extend(
            records.iter().skip(expected.len()).map(|r| (r.lsn, String::from_utf8_lossy(&r.payload).into_owned())),
        );
    }
    println!("\n  reopening in-process with group commit: 8 threads x 500 appends");
    let wal = Wal::open(tmp.path(), WalOptions::new(SyncPolicy::batch()))?;
    let before = wal.last_lsn();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8 {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..500 {
                    if wal.append(format!("thread {t} append {i}").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let after = wal.last_lsn();
    println!("    4000 durable appends in {:.1} ms ({:.0}/s)", ms(elapsed), 4000.0 / elapsed.as_secs_f64().max(1e-9));
    checks.check(after == before + 4000, "every concurrent append got its own consecutive LSN");
    wal.close()?;
    let summary = LogReader::open(tmp.path(), &WalOptions::default())?.summary();
    checks.check(summary.last_lsn == after, &format!("final verify: {summary}"));

    Ok(checks.finish(total))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
