//! Crash tests with real processes.
//!
//! Round after round on the same directory, a `walrus log append` child is
//! fed records by a writer thread while the test reads the LSNs it
//! acknowledges, and is killed with SIGKILL after a pseudo-random number of
//! acknowledgements. After every kill the directory must hold every
//! acknowledged record with its exact payload, as a contiguous run of LSNs
//! from 1 (checked through `LogReader`, `Wal::open` + `iter_from` and
//! `walrus log dump`), and the next child must continue right after the
//! recovered last LSN. Rounds mix the `always`, `batch` and `none` policies
//! (for a process crash, records handed to the OS survive too) and segment
//! sizes down to 4096 bytes, so that kills land around segment rotation.
//!
//! The pseudo-random choices (kill points, record sizes and contents) come
//! from a seeded generator: set `WALRUS_CRASH_SEED` to try other ones and
//! `WALRUS_CRASH_ROUNDS` to change the number of rounds. A failure message
//! names the seed and the round.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use walrus::wal::{LogReader, Record, SyncPolicy, Wal, WalOptions};

use crate::{EXE, PATIENCE, SIGKILL};

const DEFAULT_SEED: u64 = 0x5eed_c0ff_ee15_900d;
const DEFAULT_ROUNDS: u64 = 30;
/// Rounds always run; past this many, no new round starts once the time
/// budget is spent (slow machines, slow disks).
const MIN_ROUNDS: u64 = 12;
const TIME_BUDGET: Duration = Duration::from_secs(25);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// The record a round sends as its `idx`-th line: a readable tag naming the
/// round and the index, then bytes of every value but the newline, of a
/// length that is mostly short, sometimes a few hundred bytes and now and
/// then larger than a 4096-byte segment. A pure function of its arguments,
/// so recovered records can be checked without remembering what was sent.
fn payload(seed: u64, round: u64, idx: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(
        seed ^ round.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ idx.wrapping_mul(0xa076_1d64_78bd_642f),
    );
    let len = match rng.u64(..40) {
        0 => 4000 + rng.u64(..4000),
        1..=6 => 200 + rng.u64(..1200),
        _ => rng.u64(..100),
    };
    let mut p = format!("r{round}:i{idx}:").into_bytes();
    p.extend((0..len).map(|_| match rng.u8(..) {
        b'\n' => b'N',
        b => b,
    }));
    p
}

fn show(payload: &[u8]) -> String {
    let head = &payload[..payload.len().min(24)];
    format!("{} bytes starting {:?}", payload.len(), head.escape_ascii().to_string())
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    sync: &'static str,
    segment_size: u64,
    /// Acknowledgements to await before SIGKILL; 0 kills right after spawning
    /// (possibly while the child is still recovering the directory).
    kill_after: u64,
}

impl Plan {
    fn for_round(round: u64, rng: &mut fastrand::Rng) -> Plan {
        // Fixed cycles of coprime lengths cover every policy with every
        // segment size; the kill point is random.
        let sync = ["always", "batch", "always", "none", "always", "batch"][(round % 6) as usize];
        let segment_size = [4096, 1 << 20, 4096, 16 << 10, 4096][(round % 5) as usize];
        let kill_after = match (rng.u64(..10), sync) {
            (0, _) => 0,
            (_, "always") => 1 + rng.u64(..150),
            _ => 1 + rng.u64(..1500),
        };
        Plan { sync, segment_size, kill_after }
    }
}

struct Crashed {
    /// Every LSN the child printed, in order.
    acked: Vec<u64>,
    status: ExitStatus,
    stderr: String,
}

/// Runs one child under `plan`, feeding it `payload(seed, round, 0..)` until
/// it dies, and kills it after `plan.kill_after` acknowledgements.
fn crash_round(dir: &Path, seed: u64, round: u64, plan: Plan) -> Crashed {
    let mut child = Command::new(EXE)
        .args(["log", "append"])
        .arg(dir)
        .args(["--sync", plan.sync, "--segment-size", &plan.segment_size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walrus log append");
    let mut stdin = child.stdin.take().expect("child stdin");
    let stdout = child.stdout.take().expect("child stdout");
    let mut stderr = child.stderr.take().expect("child stderr");

    // Writes records until the child is gone (broken pipe).
    let writer = std::thread::spawn(move || {
        for idx in 0.. {
            let mut line = payload(seed, round, idx);
            line.push(b'\n');
            if stdin.write_all(&line).is_err() {
                break;
            }
        }
    });
    // Forwards complete output lines; a line cut short by the kill was
    // never printed in full, so it is not an acknowledgement.
    let (tx, acks) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(_) if line.last() == Some(&b'\n') => {
                    line.pop();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });

    let parse = |line: Vec<u8>| -> Result<u64, String> {
        std::str::from_utf8(&line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an LSN line: {:?}", line.escape_ascii().to_string()))
    };
    let mut acked = Vec::new();
    let mut trouble = None;
    while (acked.len() as u64) < plan.kill_after {
        match acks.recv_timeout(PATIENCE) {
            Ok(line) => match parse(line) {
                Ok(lsn) => acked.push(lsn),
                Err(e) => {
                    trouble = Some(e);
                    break;
                }
            },
            // The child closed its stdout: it exited on its own (checked below).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                trouble = Some(format!("no acknowledgement for {PATIENCE:?} after {} of them", acked.len()));
                break;
            }
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait for the killed child");
    // Whatever the child printed before it died was acknowledged too.
    for line in acks.iter() {
        match parse(line) {
            Ok(lsn) => acked.push(lsn),
            Err(e) => trouble = trouble.or(Some(e)),
        }
    }
    reader.join().expect("stdout reader");
    writer.join().expect("stdin writer");
    let stderr = stderr_reader.join().expect("stderr reader");
    if let Some(e) = trouble {
        panic!("round {round} ({plan:?}): {e}; child {status:?}, stderr:\n{stderr}");
    }
    Crashed { acked, status, stderr }
}

/// `walrus log dump` of the whole log, parsed into (LSN, payload) pairs.
fn dump(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let out = Command::new(EXE).args(["log", "dump"]).arg(dir).output().expect("run walrus log dump");
    assert!(out.status.success(), "walrus log dump failed: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let text = out.stdout;
    assert!(text.is_empty() || text.ends_with(b"\n"), "dump output must end with a newline");
    text.split(|&b| b == b'\n')
        .take_while(|l| !l.is_empty())
        .map(|line| {
            let tab = line.iter().position(|&b| b == b'\t').expect("dump line has a tab");
            let lsn = std::str::from_utf8(&line[..tab]).ok().and_then(|s| s.parse().ok()).expect("dump line LSN");
            (lsn, line[tab + 1..].to_vec())
        })
        .collect()
}

fn verify(dir: &Path) -> String {
    let out = Command::new(EXE).args(["log", "verify"]).arg(dir).output().expect("run walrus log verify");
    assert!(
        out.status.success(),
        "walrus log verify failed after a crash: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Same LSNs and payloads, reporting the first difference briefly.
fn assert_same_records(what: &str, got: &[(u64, Vec<u8>)], expected: &[Record], ctx: &str) {
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            g.0 == e.lsn && g.1 == e.payload,
            "{ctx}: {what} differs at position {i}: LSN {} with {} instead of LSN {} with {}",
            g.0,
            show(&g.1),
            e.lsn,
            show(&e.payload)
        );
    }
    assert_eq!(got.len(), expected.len(), "{ctx}: {what} has {} records, the log {}", got.len(), expected.len());
}

#[test]
fn sigkill_never_loses_an_acknowledged_record() {
    let seed = env_u64("WALRUS_CRASH_SEED", DEFAULT_SEED);
    let rounds = env_u64("WALRUS_CRASH_ROUNDS", DEFAULT_ROUNDS);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    // Payloads of LSN 1, 2, … as recovered after the previous round.
    let mut log: Vec<Vec<u8>> = Vec::new();
    let (mut ran, mut total_acked, mut adopted) = (0u64, 0u64, 0u64);

    for round in 0..rounds {
        if round >= MIN_ROUNDS && started.elapsed() > TIME_BUDGET {
            eprintln!("time budget spent: stopping after {round} of {rounds} rounds");
            break;
        }
        let plan = Plan::for_round(round, &mut rng);
        let ctx = format!("seed {seed:#x}, round {round} ({plan:?})");
        let first = log.len() as u64 + 1;
        let crashed = crash_round(dir, seed, round, plan);
        let Crashed { acked, status, stderr } = crashed;
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "{ctx}: the child must run until killed, but ended with {status:?}; stderr:\n{stderr}"
        );

        // The child continued after the recovered log, one LSN per record.
        for (i, &lsn) in acked.iter().enumerate() {
            assert_eq!(lsn, first + i as u64, "{ctx}: acknowledgement {i} should be LSN {}", first + i as u64);
        }
        let last_acked = acked.last().copied().unwrap_or(first - 1);

        // Recover read-only, as `walrus log verify` and `dump` do.
        let reader = LogReader::open(dir, &WalOptions::default()).unwrap_or_else(|e| panic!("{ctx}: recovery: {e}"));
        let summary = reader.summary();
        let records: Vec<Record> = reader
            .iter_from(1)
            .and_then(|it| it.collect::<Result<_, _>>())
            .unwrap_or_else(|e| panic!("{ctx}: reading the recovered log: {e}"));
        let last = records.len() as u64;

        // A contiguous prefix 1..=last …
        assert_eq!(summary.first_lsn, 1, "{ctx}: {summary}");
        assert_eq!(summary.last_lsn, last, "{ctx}: {summary}");
        assert_eq!(summary.records, last, "{ctx}: {summary}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.lsn, i as u64 + 1, "{ctx}: gap in the recovered log");
        }
        // … that still holds everything recovered before, unchanged …
        assert!(last >= log.len() as u64, "{ctx}: the log shrank from {} to {last} records", log.len());
        for (i, p) in log.iter().enumerate() {
            assert!(
                records[i].payload == *p,
                "{ctx}: LSN {} changed: now {}, was {}",
                i + 1,
                show(&records[i].payload),
                show(p)
            );
        }
        // … and every acknowledged record, each exactly as sent.
        assert!(
            last >= last_acked,
            "{ctx}: LSNs up to {last_acked} were acknowledged but the log ends at {last}; {summary}"
        );
        for r in &records[log.len()..] {
            let expected = payload(seed, round, r.lsn - first);
            assert!(
                r.payload == expected,
                "{ctx}: LSN {} holds {} but record {} of this round is {}",
                r.lsn,
                show(&r.payload),
                r.lsn - first,
                show(&expected)
            );
        }

        // The command-line tools see the same log.
        assert_same_records("walrus log dump", &dump(dir), &records, &ctx);
        let summary_line = verify(dir);
        assert!(summary_line.contains(&format!("last LSN {last}")), "{ctx}: verify says {summary_line}");
        // Now and then, also recover as a writer would (this discards a torn tail).
        if round % 4 == 3 {
            let wal = Wal::open(dir, WalOptions::new(SyncPolicy::Always).segment_size(4096))
                .unwrap_or_else(|e| panic!("{ctx}: Wal::open: {e}"));
            assert_eq!(wal.last_lsn(), last, "{ctx}: Wal::open recovered a different end");
            let via_wal: Vec<(u64, Vec<u8>)> = wal
                .iter_from(1)
                .and_then(|it| it.map(|r| r.map(|r| (r.lsn, r.payload))).collect::<Result<_, _>>())
                .unwrap_or_else(|e| panic!("{ctx}: Wal::iter_from: {e}"));
            assert_same_records("Wal::iter_from", &via_wal, &records, &ctx);
            wal.close().unwrap_or_else(|e| panic!("{ctx}: Wal::close: {e}"));
        }

        eprintln!(
            "round {round:2} {:6} seg {:7} kill after {:4}: {:4} acknowledged, log ends at {last} ({} segments)",
            plan.sync,
            plan.segment_size,
            plan.kill_after,
            acked.len(),
            summary.segments
        );
        ran += 1;
        total_acked += acked.len() as u64;
        adopted += last - last_acked;
        log = records.into_iter().map(|r| r.payload).collect();
    }

    // A last, orderly run continues the log and ends cleanly.
    let next = log.len() as u64 + 1;
    let tail: Vec<Vec<u8>> = (0..5).map(|i| payload(seed, u64::MAX, i)).collect();
    let mut input = Vec::new();
    for p in &tail {
        input.extend_from_slice(p);
        input.push(b'\n');
    }
    let mut child = Command::new(EXE)
        .args(["log", "append"])
        .arg(dir)
        .args(["--sync", "always", "--segment-size", "4096"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walrus log append");
    child.stdin.take().expect("stdin").write_all(&input).expect("write the last records");
    let out = child.wait_with_output().expect("wait for the last append");
    assert!(out.status.success(), "final append: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    let expected: String = (next..next + tail.len() as u64).map(|l| format!("{l}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "seed {seed:#x}: the final append continues the LSNs");
    log.extend(tail);
    let dumped = dump(dir);
    assert_eq!(dumped.len(), log.len(), "seed {seed:#x}: final dump");
    for (i, ((lsn, p), e)) in dumped.iter().zip(&log).enumerate() {
        assert!(*lsn == i as u64 + 1 && p == e, "seed {seed:#x}: final dump differs at LSN {}", i + 1);
    }
    let summary = verify(dir);
    assert!(!summary.contains("torn"), "seed {seed:#x}: a clean shutdown leaves no torn tail: {summary}");

    eprintln!(
        "{ran} rounds in {:.1} s: {total_acked} records acknowledged, {adopted} more recovered unacknowledged; {summary}",
        started.elapsed().as_secs_f64()
    );
    assert!(total_acked > 0, "no round got as far as an acknowledgement");
    let segments = LogReader::open(dir, &WalOptions::default()).unwrap().summary().segments;
    assert!(segments > 10, "small segments should have rotated many times, got {segments}");
}
