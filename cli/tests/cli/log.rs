//! End-to-end tests of `walrus log …`, driving the built binary as a user or
//! a script would: records on stdin, LSNs on stdout, errors on stderr and
//! the exit code.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::SystemTime;

use walrus::internals::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};

use crate::{EXE, PATIENCE};

mod crash;

// ---------------------------------------------------------------------------
// Running the binary

/// Runs `walrus <args>` to completion with `input` on stdin. The input is
/// fed from a thread so that large inputs and outputs cannot deadlock.
fn run<I, S>(args: I, input: &[u8]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(EXE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walrus");
    let mut stdin = child.stdin.take().expect("child stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // The child may legitimately exit without reading everything (for
        // example on a usage error); a broken pipe is not a test failure.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for walrus");
    feeder.join().expect("stdin feeder");
    out
}

/// Arguments `log <sub> <dir> <rest…>`.
fn log_args<'a>(sub: &'a str, dir: &'a Path, rest: &[&'a str]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("log"), OsStr::new(sub), dir.as_os_str()];
    args.extend(rest.iter().map(|s| OsStr::new(*s)));
    args
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{what} panicked: {}", describe(out));
}

/// A failure a user can act on: non-zero exit, no panic, and an error
/// message on stderr containing every string in `mentions`.
fn assert_clean_failure(out: &Output, what: &str, mentions: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} should fail: {}", describe(out));
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {}", describe(out));
    assert!(out.status.code().is_some(), "{what} died from a signal: {}", describe(out));
    assert!(!stderr.contains("panicked"), "{what} panicked: {}", describe(out));
    assert!(!stderr.trim().is_empty(), "{what} failed without a message: {}", describe(out));
    for m in mentions {
        assert!(
            stderr.to_lowercase().contains(&m.to_lowercase()),
            "{what}: stderr should mention {m:?}: {}",
            describe(out)
        );
    }
}

fn append(dir: &Path, extra: &[&str], records: &[Vec<u8>]) -> Output {
    run(log_args("append", dir, extra), &input_of(records))
}

fn dump(dir: &Path, extra: &[&str]) -> Output {
    run(log_args("dump", dir, extra), b"")
}

fn verify(dir: &Path) -> Output {
    run(log_args("verify", dir, &[]), b"")
}

/// An appender kept running between interactions: its stdin stays open,
/// its acknowledgements are read one at a time.
struct Appender {
    child: Child,
    stdin: Option<ChildStdin>,
    acks: mpsc::Receiver<String>,
    finished: bool,
}

impl Appender {
    fn spawn(dir: &Path, extra: &[&str]) -> Appender {
        let mut child = Command::new(EXE)
            .args(log_args("append", dir, extra))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walrus log append");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, acks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Appender { child, stdin, acks, finished: false }
    }

    /// Hands over stdin, for a thread that feeds records on its own.
    fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin still open")
    }

    fn send(&mut self, record: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(record)
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .expect("write a record");
    }

    /// The next acknowledgement line, without its newline.
    fn ack(&mut self) -> String {
        match self.acks.recv_timeout(PATIENCE) {
            Ok(line) => {
                assert!(line.ends_with('\n'), "acknowledgement {line:?} is not a complete line");
                line.trim_end_matches('\n').to_string()
            }
            Err(e) => {
                let _ = self.child.kill();
                let mut stderr = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut stderr);
                }
                panic!("no acknowledgement from `walrus log append` ({e:?}); stderr:\n{stderr}");
            }
        }
    }

    /// Closes stdin and waits for the child: exit status, acknowledgements
    /// printed after the last `ack()`, stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        loop {
            match self.acks.recv_timeout(PATIENCE) {
                Ok(line) => rest.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("`walrus log append` did not exit at end of input"),
            }
        }
        let status = self.child.wait().expect("wait for appender");
        let mut stderr = String::new();
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut stderr).expect("read stderr");
        }
        self.finished = true;
        (status, rest, stderr)
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Records, expected outputs and directory inspection

/// `n` records starting with the awkward ones (empty, not UTF-8, NUL, tab,
/// carriage return, larger than a 4096-byte segment), then ordinary ones
/// tagged with `tag` and their index, with empty and binary ones sprinkled in.
fn records(n: usize, tag: &str) -> Vec<Vec<u8>> {
    let special: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80, b'x', 0xc3, 0x28],
        b"tab\tinside\tand at the end\t".to_vec(),
        b"carriage return at the end\r".to_vec(),
        "unicod\u{e9} \u{2713} \u{1f980}".as_bytes().to_vec(),
        b"".to_vec(),
        vec![b'L'; 10_000],
        b"  leading and trailing spaces  ".to_vec(),
        vec![0x00; 5],
    ];
    (0..n)
        .map(|i| match special.get(i) {
            Some(s) => s.clone(),
            None if i % 41 == 0 => Vec::new(),
            None if i % 43 == 0 => {
                let mut r = format!("{tag} binary {i} ").into_bytes();
                r.extend((0u8..=255).filter(|&b| b != b'\n'));
                r
            }
            None => format!("{tag} record {i} {}", "x".repeat(i * 7 % 90)).into_bytes(),
        })
        .collect()
}

fn input_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut input = Vec::new();
    for r in records {
        input.extend_from_slice(r);
        input.push(b'\n');
    }
    input
}

/// `first\nfirst+1\n…` for `count` LSNs.
fn lsn_lines(first: u64, count: usize) -> String {
    (first..first + count as u64).map(|l| format!("{l}\n")).collect()
}

/// What `walrus log dump` prints for `records` numbered from `first`.
fn dump_of(first: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        out.extend_from_slice(format!("{}\t", first + i as u64).as_bytes());
        out.extend_from_slice(r);
        out.push(b'\n');
    }
    out
}

/// Byte-for-byte comparison that reports the first differing line readably.
fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let a: Vec<&[u8]> = actual.split(|&b| b == b'\n').collect();
    let e: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
    let i = a.iter().zip(&e).position(|(x, y)| x != y).unwrap_or(a.len().min(e.len()));
    let show = |v: &[&[u8]]| v.get(i).map_or("<none>".to_string(), |l| l.escape_ascii().to_string());
    panic!(
        "{what}: output differs ({} vs {} bytes, {} vs {} lines); first difference at line {}:\n  got:      {}\n  expected: {}",
        actual.len(),
        expected.len(),
        a.len(),
        e.len(),
        i + 1,
        show(&a),
        show(&e)
    );
}

/// Segment files of `dir` as (first LSN, path), in order.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .expect("list log directory")
        .map(|e| e.expect("directory entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let stem = name.strip_suffix(".wal")?;
            if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((stem.parse().ok()?, p.clone()))
        })
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().expect("file name").to_string_lossy().into_owned()
}

/// Offset just past the records `first_lsn..end_lsn` of a segment, given
/// every record of the log (`all[lsn - 1]`), per docs/FORMAT.md.
fn frames_end(all: &[Vec<u8>], first_lsn: u64, end_lsn: u64) -> u64 {
    let frames: usize = (first_lsn..end_lsn).map(|l| FRAME_HEADER_LEN + all[l as usize - 1].len()).sum();
    (SEGMENT_HEADER_LEN + frames) as u64
}

/// Every file of a directory tree: relative path → (length, modification
/// time, hash of the contents).
type Snapshot = BTreeMap<PathBuf, (u64, SystemTime, u64)>;

fn snapshot(dir: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in fs::read_dir(dir).expect("list directory") {
            let path = entry.expect("directory entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                walk(root, &path, out);
                continue;
            }
            let bytes = fs::read(&path).expect("read file");
            let mut h = std::hash::DefaultHasher::new();
            h.write(&bytes);
            let rel = path.strip_prefix(root).expect("inside root").to_path_buf();
            out.insert(rel, (meta.len(), meta.modified().expect("mtime"), h.finish()));
        }
    }
    let mut out = Snapshot::new();
    walk(dir, dir, &mut out);
    out
}

/// True if `text` contains `{n}{rest}` with no digit right before `n`.
fn has_number_then(text: &str, n: u64, rest: &str) -> bool {
    let needle = format!("{n}{rest}");
    text.match_indices(&needle).any(|(i, _)| !text[..i].ends_with(|c: char| c.is_ascii_digit()))
}

/// True if `text` contains `{prefix}{n}` with no digit right after `n`.
fn has_prefix_then_number(text: &str, prefix: &str, n: u64) -> bool {
    let needle = format!("{prefix}{n}");
    text.match_indices(&needle).any(|(i, m)| !text[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Checks `walrus log verify` succeeded with a one-line summary of the
/// expected counts; returns the summary.
fn assert_verify_summary(dir: &Path, all: &[Vec<u8>], first_lsn: u64) -> String {
    let out = verify(dir);
    assert_success(&out, "verify");
    let stdout = String::from_utf8(out.stdout.clone()).expect("summary is UTF-8");
    assert_eq!(stdout.lines().count(), 1, "verify prints a one-line summary: {}", describe(&out));
    let kept = &all[first_lsn as usize - 1..];
    let last = all.len() as u64;
    let segs = segments(dir);
    let payload: u64 = kept.iter().map(|r| r.len() as u64).sum();
    let on_disk: u64 = segs.iter().map(|(_, p)| fs::metadata(p).expect("segment metadata").len()).sum();
    for (ok, what) in [
        (has_number_then(&stdout, segs.len() as u64, " segments"), format!("{} segments", segs.len())),
        (has_number_then(&stdout, kept.len() as u64, " records"), format!("{} records", kept.len())),
        (has_number_then(&stdout, payload, " payload bytes"), format!("{payload} payload bytes")),
        (has_number_then(&stdout, on_disk, " bytes on disk"), format!("{on_disk} bytes on disk")),
        (has_prefix_then_number(&stdout, "first LSN ", first_lsn), format!("first LSN {first_lsn}")),
        (has_prefix_then_number(&stdout, "last LSN ", last), format!("last LSN {last}")),
    ] {
        assert!(ok, "verify summary should say {what:?}: {stdout}");
    }
    stdout
}

// ---------------------------------------------------------------------------
// Append, dump, verify under each policy

/// Appends under `sync`, checks the printed LSNs, dump (whole and `--from`),
/// verify, that neither of them modifies the directory, and that a second
/// append continues the LSNs.
fn round_trip(sync: &str, n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log"); // created by the first append
    let args = ["--sync", sync, "--segment-size", "4096"];

    let first = records(n, "first");
    let out = append(&dir, &args, &first);
    assert_success(&out, "first append");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(1, n), "first append prints LSNs 1..={n} in order");
    assert!(segments(&dir).len() > 3, "4096-byte segments should rotate several times");

    let before = snapshot(&dir);
    let out = dump(&dir, &[]);
    assert_success(&out, "dump");
    assert_bytes_eq(&out.stdout, &dump_of(1, &first), "dump after the first append");
    assert_verify_summary(&dir, &first, 1);
    assert_eq!(snapshot(&dir), before, "dump and verify must not modify the log directory");

    // Appending again continues the LSNs.
    let second = records(n / 2, "second");
    let out = append(&dir, &args, &second);
    assert_success(&out, "second append");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(n as u64 + 1, second.len()), "second append");
    let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
    let total = all.len() as u64;

    let before = snapshot(&dir);
    assert_bytes_eq(&dump(&dir, &[]).stdout, &dump_of(1, &all), "dump after the second append");
    for from in [0, 1, 2, 7, n as u64, n as u64 + 1, total - 1, total] {
        let out = dump(&dir, &["--from", &from.to_string()]);
        assert_success(&out, &format!("dump --from {from}"));
        let skip = from.max(1) as usize - 1;
        assert_bytes_eq(&out.stdout, &dump_of(from.max(1), &all[skip..]), &format!("dump --from {from}"));
    }
    for from in [total + 1, total + 1000] {
        let out = dump(&dir, &["--from", &from.to_string()]);
        assert_success(&out, &format!("dump --from {from} (past the end)"));
        assert!(out.stdout.is_empty(), "dump --from {from} past the end prints nothing: {}", describe(&out));
    }
    assert_verify_summary(&dir, &all, 1);
    assert_eq!(snapshot(&dir), before, "dump and verify must not modify the log directory");
}

#[test]
fn append_always_then_dump_and_verify() {
    round_trip("always", 160);
}

#[test]
fn append_batch_then_dump_and_verify() {
    round_trip("batch", 1500);
}

#[test]
fn append_none_then_dump_and_verify() {
    round_trip("none", 1500);
}

#[test]
fn append_with_default_options() {
    let tmp = tempfile::tempdir().unwrap();
    let recs = records(12, "default");
    let out = append(tmp.path(), &[], &recs);
    assert_success(&out, "append with default options");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(1, recs.len()));
    assert_bytes_eq(&dump(tmp.path(), &[]).stdout, &dump_of(1, &recs), "dump");
    assert_verify_summary(tmp.path(), &recs, 1);
}

#[test]
fn append_of_empty_input_prints_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    for sync in ["always", "batch", "none"] {
        let out = run(log_args("append", &dir, &["--sync", sync, "--segment-size", "4096"]), b"");
        assert_success(&out, &format!("append --sync {sync} of empty input"));
        assert!(out.stdout.is_empty(), "nothing to acknowledge: {}", describe(&out));
    }
    let out = dump(&dir, &[]);
    assert_success(&out, "dump of an empty log");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let summary = assert_verify_summary(&dir, &[], 1);
    assert!(has_prefix_then_number(&summary, "last LSN ", 0), "{summary}");
}

/// Each LSN is printed (and flushed) as soon as its record is in, not at
/// the end of input: a producer can wait for one acknowledgement before
/// sending the next record.
#[test]
fn acknowledgements_arrive_while_input_is_still_open() {
    for sync in ["always", "batch", "none"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut app = Appender::spawn(tmp.path(), &["--sync", sync, "--segment-size", "4096"]);
        let recs = records(40, sync);
        for (i, r) in recs.iter().enumerate() {
            app.send(r);
            assert_eq!(app.ack(), (i + 1).to_string(), "--sync {sync}: acknowledgement of record {}", i + 1);
        }
        let (status, rest, stderr) = app.finish();
        assert!(status.success(), "--sync {sync}: {status:?} {stderr}");
        assert!(rest.is_empty(), "--sync {sync}: unexpected output after the last record: {rest:?}");
        assert_bytes_eq(&dump(tmp.path(), &[]).stdout, &dump_of(1, &recs), "dump");
    }
}

// ---------------------------------------------------------------------------
// Damage: corruption in a sealed segment, torn tail in the active one

#[test]
fn verify_reports_a_corrupt_sealed_segment_without_touching_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = records(400, "corrupt");
    assert_success(&append(dir, &["--sync", "none", "--segment-size", "4096"], &recs), "append");
    let segs = segments(dir);
    assert!(segs.len() >= 3, "need a sealed segment in the middle, got {} segments", segs.len());

    // Flip a byte in the middle of a segment that is neither first nor last.
    let victim = segs.len() / 2;
    let (seg_first, path) = &segs[victim];
    let seg_end = segs[victim + 1].0;
    let len = fs::metadata(path).unwrap().len();
    let pos = len / 2;
    // The damage is reported at the start of the frame holding that byte,
    // or at the end of the records if it lies in the zeroed tail.
    let (mut damaged_lsn, mut expected_offset) = (seg_end, frames_end(&recs, *seg_first, seg_end));
    for lsn in *seg_first..seg_end {
        if pos < frames_end(&recs, *seg_first, lsn + 1) {
            (damaged_lsn, expected_offset) = (lsn, frames_end(&recs, *seg_first, lsn));
            break;
        }
    }
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, pos).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], pos).unwrap();
    drop(file);

    let before = snapshot(dir);
    let out = verify(dir);
    let name = file_name(path);
    assert_clean_failure(&out, "verify of a corrupt log", &[&name]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        has_prefix_then_number(&stderr, "offset ", expected_offset),
        "verify should name offset {expected_offset} in {name} (byte {pos} flipped): {}",
        describe(&out)
    );
    assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).starts_with("ok"), "{}", describe(&out));
    assert_eq!(snapshot(dir), before, "verify must not modify a corrupt log");

    let out = dump(dir, &[]);
    assert_clean_failure(&out, "dump of a corrupt log", &[&name]);
    assert_eq!(snapshot(dir), before, "dump must not modify a corrupt log");

    // A writer refuses to open it.
    let out = append(dir, &["--segment-size", "4096"], &[b"after corruption".to_vec()]);
    assert_clean_failure(&out, "append to a corrupt log", &[&name]);
    assert!(out.stdout.is_empty(), "nothing may be acknowledged: {}", describe(&out));

    // Repair would keep everything before the damaged record and drop the
    // intact later segments: refused without --force, naming what is lost.
    let out = run(log_args("repair", dir, &[]), b"");
    let last = recs.len() as u64;
    // Records after the damaged one in its segment are intact but cut off too.
    let (lost_from, lost_seg) =
        if damaged_lsn + 1 < seg_end { (damaged_lsn + 1, victim) } else { (seg_end, victim + 1) };
    let lost = format!(
        "records {lost_from}..={last} in segments {} to {}",
        file_name(&segs[lost_seg].1),
        file_name(&segs[segs.len() - 1].1)
    );
    assert_clean_failure(&out, "repair that loses intact records", &["--force", &lost]);
    assert_eq!(snapshot(dir), before, "a refused repair must not modify the log");

    let out = run(log_args("repair", dir, &["--force"]), b"");
    assert_success(&out, "repair --force");
    let kept = &recs[..damaged_lsn as usize - 1];
    assert_bytes_eq(&dump(dir, &[]).stdout, &dump_of(1, kept), "dump after repair");
    assert_success(&verify(dir), "verify after repair");
    // LSNs go on after the last record the log ever held, never reusing one.
    let more = records(20, "repaired");
    let out = append(dir, &["--segment-size", "4096"], &more);
    assert_success(&out, "append after repair");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(last + 1, more.len()));
    let mut expected = dump_of(1, kept);
    expected.extend(dump_of(last + 1, &more));
    assert_bytes_eq(&dump(dir, &[]).stdout, &expected, "dump after repair and append");
}

/// In the active segment, damage followed by records that were durable
/// before it is corruption, not a torn tail.
#[test]
fn verify_reports_damage_to_durable_records_in_the_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = records(60, "active");
    assert_success(&append(dir, &["--sync", "always", "--segment-size", "1048576"], &recs), "append");
    let segs = segments(dir);
    assert_eq!(segs.len(), 1, "everything fits in the active segment");
    let path = &segs[0].1;

    // Flip a payload byte of record 30.
    let victim = 30u64;
    let offset = frames_end(&recs, 1, victim);
    assert!(!recs[victim as usize - 1].is_empty());
    let pos = offset + FRAME_HEADER_LEN as u64;
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, pos).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], pos).unwrap();
    drop(file);

    let before = snapshot(dir);
    let out = verify(dir);
    assert_clean_failure(&out, "verify of a damaged active segment", &[&file_name(path)]);
    assert!(
        has_prefix_then_number(&String::from_utf8_lossy(&out.stderr), "offset ", offset),
        "verify should name offset {offset}: {}",
        describe(&out)
    );
    assert_clean_failure(&dump(dir, &[]), "dump of a damaged active segment", &[&file_name(path)]);
    let out = append(dir, &["--segment-size", "1048576"], &[b"more".to_vec()]);
    assert_clean_failure(&out, "append to a damaged active segment", &[&file_name(path)]);
    assert_eq!(snapshot(dir), before, "nobody may discard durable records as a torn tail");
}

#[test]
fn verify_accepts_a_torn_tail_and_leaves_it_for_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = records(120, "torn");
    assert_success(&append(dir, &["--sync", "batch", "--segment-size", "4096"], &recs), "append");
    let segs = segments(dir);
    let (last_first, last_path) = segs.last().unwrap();
    let end = frames_end(&recs, *last_first, recs.len() as u64 + 1);

    // Garbage right after the last record: what an interrupted write leaves.
    let file = OpenOptions::new().write(true).open(last_path).unwrap();
    file.write_all_at(&[0xa5; 27], end).unwrap();
    drop(file);

    let before = snapshot(dir);
    let summary = assert_verify_summary(dir, &recs, 1);
    assert!(summary.contains("torn tail"), "verify should mention the torn tail: {summary}");
    assert_eq!(snapshot(dir), before, "verify must not discard the torn tail itself");
    assert_bytes_eq(&dump(dir, &[]).stdout, &dump_of(1, &recs), "dump with a torn tail");
    assert_eq!(snapshot(dir), before, "dump must not discard the torn tail itself");

    // The next writer discards it and continues the LSNs.
    let more = records(30, "after tear");
    let out = append(dir, &["--sync", "always", "--segment-size", "4096"], &more);
    assert_success(&out, "append after a torn tail");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(recs.len() as u64 + 1, more.len()));
    let all: Vec<Vec<u8>> = recs.iter().chain(&more).cloned().collect();
    let summary = assert_verify_summary(dir, &all, 1);
    assert!(!summary.contains("torn"), "the torn tail is gone: {summary}");
    assert_bytes_eq(&dump(dir, &[]).stdout, &dump_of(1, &all), "dump after the torn tail was discarded");
}

// ---------------------------------------------------------------------------
// Truncation

#[test]
fn truncate_before_removes_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = records(300, "trunc");
    assert_success(&append(dir, &["--sync", "batch", "--segment-size", "4096"], &recs), "append");
    let segs = segments(dir);
    assert!(segs.len() >= 5, "need several segments, got {}", segs.len());
    let total = recs.len() as u64;

    // Truncating at the first LSN removes nothing.
    let before = snapshot(dir);
    let out = run(log_args("truncate-before", dir, &["1"]), b"");
    assert_success(&out, "truncate-before 1");
    assert_eq!(segments(dir), segs, "truncate-before 1 keeps every segment");
    assert_eq!(before.keys().collect::<Vec<_>>(), snapshot(dir).keys().collect::<Vec<_>>());

    // An LSN inside the third segment: the first two go, the third stays.
    let cut = segs[2].0 + 1;
    assert!(cut < segs[3].0, "the third segment holds more than one record");
    let out = run(log_args("truncate-before", dir, &[&cut.to_string()]), b"");
    assert_success(&out, &format!("truncate-before {cut}"));
    let new_first = segs[2].0;
    assert!(
        has_prefix_then_number(&String::from_utf8_lossy(&out.stdout), "LSN ", new_first),
        "truncate-before reports the new first LSN {new_first}: {}",
        describe(&out)
    );
    assert_eq!(segments(dir), segs[2..].to_vec(), "segments wholly before LSN {cut} are removed, no others");

    let out = dump(dir, &[]);
    assert_success(&out, "dump after truncation");
    assert_bytes_eq(&out.stdout, &dump_of(new_first, &recs[new_first as usize - 1..]), "dump after truncation");
    assert_verify_summary(dir, &recs, new_first);
    let out = dump(dir, &["--from", &cut.to_string()]);
    assert_success(&out, "dump --from after truncation");
    assert_bytes_eq(&out.stdout, &dump_of(cut, &recs[cut as usize - 1..]), "dump --from the truncation point");

    // Records that were truncated away are reported as such.
    let out = dump(dir, &["--from", "1"]);
    assert_clean_failure(&out, "dump --from a truncated LSN", &["truncated"]);

    // LSNs keep counting after truncation.
    let more = records(10, "after truncation");
    let out = append(dir, &["--segment-size", "4096"], &more);
    assert_success(&out, "append after truncation");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(total + 1, more.len()));

    // Past the end: everything but the active segment goes.
    let out = run(log_args("truncate-before", dir, &[&(total + 1000).to_string()]), b"");
    assert_success(&out, "truncate-before past the end");
    let left = segments(dir);
    assert_eq!(left.len(), 1, "only the active segment remains: {left:?}");
    let all: Vec<Vec<u8>> = recs.iter().chain(&more).cloned().collect();
    let out = dump(dir, &[]);
    assert_success(&out, "dump after truncating everything but the active segment");
    assert_bytes_eq(&out.stdout, &dump_of(left[0].0, &all[left[0].0 as usize - 1..]), "dump of the active segment");
    let out = append(dir, &["--segment-size", "4096"], &[b"still counting".to_vec()]);
    assert_success(&out, "append after truncating everything");
    assert_eq!(String::from_utf8_lossy(&out.stdout), lsn_lines(all.len() as u64 + 1, 1));
}

// ---------------------------------------------------------------------------
// Locking

#[test]
fn second_appender_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut first = Appender::spawn(dir, &["--sync", "always", "--segment-size", "4096"]);
    first.send(b"first");
    assert_eq!(first.ack(), "1", "the first appender is ready");

    let out = append(dir, &["--segment-size", "4096"], &[b"intruder".to_vec()]);
    assert_clean_failure(&out, "second append on a locked log", &["locked"]);
    assert!(out.stdout.is_empty(), "the second appender must acknowledge nothing: {}", describe(&out));
    for sub in [vec!["truncate-before", "1"], vec!["repair"]] {
        let out = run(log_args(sub[0], dir, &sub[1..]), b"");
        assert_clean_failure(&out, &format!("{} on a locked log", sub[0]), &["locked"]);
    }

    // Readers need no lock.
    let out = dump(dir, &[]);
    assert_success(&out, "dump while an appender runs");
    assert_bytes_eq(&out.stdout, b"1\tfirst\n", "dump while an appender runs");
    assert_success(&verify(dir), "verify while an appender runs");

    // The first appender is unaffected.
    first.send(b"second");
    assert_eq!(first.ack(), "2");
    let (status, rest, stderr) = first.finish();
    assert!(status.success(), "first appender: {status:?} {stderr}");
    assert!(rest.is_empty(), "{rest:?}");

    // Once it is gone the lock is free again.
    let out = append(dir, &["--segment-size", "4096"], &[b"third".to_vec()]);
    assert_success(&out, "append after the first appender exited");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
    assert_bytes_eq(&dump(dir, &[]).stdout, b"1\tfirst\n2\tsecond\n3\tthird\n", "dump");
}

/// `verify` and `dump` take no lock and must work on a log another process
/// is busy appending to: they see a committed prefix, never "corruption".
#[test]
fn verify_and_dump_work_while_an_appender_is_busy() {
    fn busy_record(i: u64) -> Vec<u8> {
        format!("busy {i} {}", "z".repeat((i * 13 % 300) as usize)).into_bytes()
    }
    let mut failures = Vec::new();
    // Bursts of records large enough to keep the appender busy for a while
    // under each policy; the readers run while a burst is being appended.
    for (sync, burst) in [("always", 100u64), ("batch", 4000)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut app = Appender::spawn(dir, &["--sync", sync, "--segment-size", "4194304"]);
        let mut stdin = Some(app.take_stdin());
        let mut sent = 0u64;
        for _ in 0..8 {
            let mut input = stdin.take().expect("stdin");
            let first = sent + 1;
            let feeder = std::thread::spawn(move || {
                let mut burst_bytes = Vec::new();
                for i in first..first + burst {
                    burst_bytes.extend(busy_record(i));
                    burst_bytes.push(b'\n');
                }
                input.write_all(&burst_bytes).expect("feed a burst");
                input
            });
            if sent > 0 {
                // The appender is busy with the burst now (at least until
                // its first record is acknowledged below).
                let out = verify(dir);
                if !out.status.success() {
                    failures.push(format!("--sync {sync}: verify: {}", String::from_utf8_lossy(&out.stderr).trim()));
                }
                let out = dump(dir, &[]);
                if !out.status.success() {
                    failures.push(format!("--sync {sync}: dump: {}", String::from_utf8_lossy(&out.stderr).trim()));
                } else {
                    // Whatever it shows is a contiguous prefix, exactly as sent.
                    let lines = out.stdout.split(|&b| b == b'\n').take_while(|l| !l.is_empty());
                    for (i, line) in lines.enumerate() {
                        let lsn = i as u64 + 1;
                        let mut expected = format!("{lsn}\t").into_bytes();
                        expected.extend(busy_record(lsn));
                        assert!(line == expected, "--sync {sync}: live dump line {lsn}: {}", line.escape_ascii());
                    }
                }
            }
            stdin = Some(feeder.join().expect("feeder"));
            for lsn in first..first + burst {
                assert_eq!(app.ack(), lsn.to_string(), "--sync {sync}: acknowledgement");
            }
            sent += burst;
        }
        drop(stdin);
        let (status, rest, stderr) = app.finish();
        assert!(status.success(), "--sync {sync}: appender {status:?} {stderr}");
        assert!(rest.is_empty(), "--sync {sync}: {rest:?}");
        assert_verify_summary(dir, &(1..=sent).map(busy_record).collect::<Vec<_>>(), 1);
    }
    assert!(
        failures.is_empty(),
        "{} of 28 reads of a live log failed, e.g.\n{}",
        failures.len(),
        failures.iter().step_by(5).take(6).cloned().collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------
// Bad input

/// A record over the size limit (16 MiB by default) stops the append with
/// an error; the records before it are in the log and acknowledged.
#[test]
fn oversized_record_stops_append_after_acknowledging_the_earlier_ones() {
    for sync in ["always", "batch", "none"] {
        let tmp = tempfile::tempdir().unwrap();
        let recs = vec![b"before one".to_vec(), b"before two".to_vec(), vec![b'B'; (16 << 20) + 1], b"after".to_vec()];
        let out = append(tmp.path(), &["--sync", sync, "--segment-size", "4096"], &recs);
        assert_clean_failure(&out, &format!("append --sync {sync} of an oversized record"), &["exceeds"]);
        assert_bytes_eq(&dump(tmp.path(), &[]).stdout, &dump_of(1, &recs[..2]), &format!("--sync {sync}: dump"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "1\n2\n",
            "--sync {sync}: the records in the log before the oversized one are acknowledged"
        );
    }
}

#[test]
fn bad_input_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-log");
    let missing_s = missing.to_string_lossy().into_owned();

    let out = dump(&missing, &[]);
    assert_clean_failure(&out, "dump of a missing directory", &[&missing_s]);
    let out = verify(&missing);
    assert_clean_failure(&out, "verify of a missing directory", &[&missing_s]);
    let out = run(log_args("truncate-before", &missing, &["5"]), b"");
    assert_clean_failure(&out, "truncate-before on a missing directory", &[&missing_s]);
    let out = run(log_args("repair", &missing, &[]), b"");
    assert_clean_failure(&out, "repair of a missing directory", &[&missing_s]);
    assert!(!missing.exists(), "read-only commands must not create the directory");

    // A regular file is not a log directory either.
    let file = tmp.path().join("plain-file");
    fs::write(&file, b"not a log\n").unwrap();
    let out = verify(&file);
    assert_clean_failure(&out, "verify of a regular file", &["plain-file"]);
    let out = dump(&file, &[]);
    assert_clean_failure(&out, "dump of a regular file", &["plain-file"]);
    assert_eq!(fs::read(&file).unwrap(), b"not a log\n");

    let log = tmp.path().join("log");
    let out = append(&log, &["--sync", "sometimes"], &[b"x".to_vec()]);
    assert_clean_failure(&out, "append --sync sometimes", &["sometimes", "--sync"]);
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(!log.exists(), "a rejected command line must not create the log");

    let out = append(&log, &["--segment-size", "100"], &[b"x".to_vec()]);
    assert_clean_failure(&out, "append --segment-size 100", &["segment"]);
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let out = append(&log, &["--segment-size", "big"], &[b"x".to_vec()]);
    assert_clean_failure(&out, "append --segment-size big", &["big"]);

    assert_success(&append(&log, &[], &[b"x".to_vec()]), "append");
    let before = snapshot(&log);
    let out = run(log_args("truncate-before", &log, &["abc"]), b"");
    assert_clean_failure(&out, "truncate-before abc", &["abc"]);
    let out = run(log_args("truncate-before", &log, &["-3"]), b"");
    assert_clean_failure(&out, "truncate-before -3", &["-3"]);
    let out = run(log_args("truncate-before", &log, &[]), b"");
    assert_clean_failure(&out, "truncate-before without an LSN", &["LSN"]);
    let out = dump(&log, &["--from", "abc"]);
    assert_clean_failure(&out, "dump --from abc", &["abc"]);
    let out = dump(&log, &["--from", "1.5"]);
    assert_clean_failure(&out, "dump --from 1.5", &["1.5"]);
    assert_eq!(snapshot(&log), before, "rejected commands must not touch the log");

    let out = run(["log", "frobnicate"], b"");
    assert_clean_failure(&out, "unknown subcommand", &["frobnicate"]);
    let out = run(["log", "dump"], b"");
    assert_clean_failure(&out, "dump without a directory", &["DIR"]);
}

#[test]
fn dump_hex_prints_one_line_per_record_whatever_the_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = records(60, "hex");
    assert_success(&append(dir, &["--segment-size", "4096"], &recs), "append");
    // A payload holding a newline cannot be appended from stdin (one line is
    // one record), so it goes in through the library.
    {
        let wal = walrus::wal::Wal::open(dir, walrus::wal::WalOptions::default().segment_size(4096)).unwrap();
        assert_eq!(wal.append(b"two\nlines").unwrap(), recs.len() as u64 + 1);
        wal.close().unwrap();
    }
    let mut all = recs.clone();
    all.push(b"two\nlines".to_vec());

    // The default output is unchanged: raw payloads.
    assert_bytes_eq(&dump(dir, &[]).stdout, &dump_of(1, &all), "dump");

    let out = dump(dir, &["--hex"]);
    assert_success(&out, "dump --hex");
    let stdout = String::from_utf8(out.stdout.clone()).expect("hex dump is ASCII");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), all.len(), "one line per record: {}", describe(&out));
    for (i, (line, payload)) in lines.iter().zip(&all).enumerate() {
        let expected: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(*line, format!("{}\t{expected}", i + 1), "record {}", i + 1);
    }
    assert!(stdout.ends_with(&format!("{}\t74776f0a6c696e6573\n", all.len())), "{stdout}");

    let out = dump(dir, &["--hex", "--from", "60"]);
    assert_success(&out, "dump --hex --from 60");
    let hex60: String = all[59].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("60\t{hex60}\n61\t74776f0a6c696e6573\n"));
}

// ---------------------------------------------------------------------------
// Repair plans: gaps, checkpoints, --force

/// Writes `n` short records in 4096-byte segments and returns them.
fn small_log(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let recs: Vec<Vec<u8>> =
        (1..=n).map(|i| format!("rec {i:05} {}", "q".repeat(i % 5 * 20 + 60)).into_bytes()).collect();
    assert_success(&append(dir, &["--segment-size", "4096", "--sync", "none"], &recs), "append");
    recs
}

/// A segment missing in the middle: repair keeps the newest segments (the
/// active one included) and refuses to drop the intact older ones unless
/// --force is given; LSNs continue after the last record.
#[test]
fn repair_of_a_missing_segment_keeps_the_newest_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs = small_log(dir, 3000);
    let segs = segments(dir);
    assert!(segs.len() > 40, "{} segments", segs.len());
    fs::remove_file(&segs[33].1).unwrap();
    let (suffix_first, after_gap) = (segs[34].0, file_name(&segs[34].1));

    let out = verify(dir);
    assert_clean_failure(&out, "verify with a missing segment", &[&after_gap, "offset 0"]);

    let before = snapshot(dir);
    let out = run(log_args("repair", dir, &[]), b"");
    let stale =
        format!("records 1..={} in segments {} to {}", segs[33].0 - 1, file_name(&segs[0].1), file_name(&segs[32].1));
    assert_clean_failure(&out, "repair without --force", &["--force", &stale]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT covered"), "the plan is printed: {}", describe(&out));
    assert_eq!(snapshot(dir), before, "a refused repair must not modify the log");

    let out = run(log_args("repair", dir, &["--force"]), b"");
    assert_success(&out, "repair --force");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("records {suffix_first}..=3000 kept")),
        "{}",
        describe(&out)
    );
    let left = segments(dir);
    assert_eq!(left.first().map(|s| s.0), Some(suffix_first));
    assert_eq!(left.last(), segs.last(), "the active segment is kept");
    assert_bytes_eq(&dump(dir, &[]).stdout, &dump_of(suffix_first, &recs[suffix_first as usize - 1..]), "dump");
    let out = append(dir, &["--segment-size", "4096"], &[b"next".to_vec()]);
    assert_success(&out, "append after repair");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3001\n");

    // A repaired log needs no repair.
    let before = snapshot(dir);
    let out = run(log_args("repair", dir, &[]), b"");
    assert_success(&out, "repair of a clean log");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to repair"), "{}", describe(&out));
    assert_eq!(snapshot(dir), before, "repair of a clean log changes nothing");
}

/// The stale first segment of a replica's log put back after a checkpoint
/// covers it: repair drops it without --force, and the replica opens.
#[test]
fn repair_of_a_replica_log_drops_what_its_checkpoint_covers() {
    use walrus::replica::{KvDoc, Replica, ReplicaOptions, ReplicaView};
    let tmp = tempfile::tempdir().unwrap();
    let replica_dir = tmp.path().join("replica");
    let wal_dir = replica_dir.join("wal");
    let opts = || {
        let mut wal = walrus::wal::WalOptions::new(walrus::wal::SyncPolicy::Always).segment_size(4096);
        wal.preallocate = false;
        ReplicaOptions { wal, checkpoint_bytes: 0, ..ReplicaOptions::default() }
    };
    let stale = tmp.path().join("stale-segment");
    let stale_name;
    {
        let mut r: Replica<KvDoc> = Replica::open(&replica_dir, opts()).unwrap();
        for i in 0..150 {
            r.update(|d, actor| d.put_op(actor, &format!("k{}", i % 20), &format!("v{i}"))).unwrap();
        }
        let segs = segments(&wal_dir);
        assert!(segs.len() >= 3, "{} segments", segs.len());
        stale_name = file_name(&segs[0].1);
        fs::copy(&segs[0].1, &stale).unwrap();
        // Two: the log is kept back to the checkpoint before last.
        r.checkpoint().unwrap();
        r.checkpoint().unwrap();
        for i in 0..10 {
            r.update(|d, actor| d.put_op(actor, "after", &format!("a{i}"))).unwrap();
        }
        r.close().unwrap();
    }
    assert!(!wal_dir.join(&stale_name).exists(), "the checkpoint truncated the first segment");
    let truncated_first = segments(&wal_dir)[0].0;
    assert!(truncated_first > 1);
    fs::copy(&stale, wal_dir.join(&stale_name)).unwrap();
    // (A read-only view: it takes no lock, which the repair below needs.)
    assert!(ReplicaView::<KvDoc>::open(&replica_dir, &opts()).is_err(), "a gap in the log must be reported");

    // Given as `.` from inside the log directory: the replica is found all the same.
    let out = Command::new(EXE).args(["log", "repair", "."]).current_dir(&wal_dir).output().expect("run walrus");
    assert_success(&out, "repair of a replica's log");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("covered by the checkpoint"), "{}", describe(&out));
    assert!(!wal_dir.join(&stale_name).exists(), "the stale segment is dropped: {}", describe(&out));
    assert_eq!(segments(&wal_dir)[0].0, truncated_first);

    let actor = fs::read(replica_dir.join("actor.key")).unwrap();
    let r: Replica<KvDoc> = Replica::open(&replica_dir, opts()).expect("the replica opens after the repair");
    assert_eq!(r.doc().values_of("after"), vec!["a9".to_string()]);
    assert_eq!(r.doc().values_of("k9"), vec!["v149".to_string()]);
    assert!(r.recovered().is_empty(), "nothing it wrote was discarded: {:?}", r.recovered());
    drop(r);
    assert_eq!(fs::read(replica_dir.join("actor.key")).unwrap(), actor);
}

/// The older checkpoint generation counts when it is the only one left
/// (the newest lost or moved aside as damaged), as it does on open.
#[test]
fn repair_counts_the_older_checkpoint_generation_alone() {
    use walrus::replica::{KvDoc, Replica, ReplicaOptions};
    let tmp = tempfile::tempdir().unwrap();
    let replica_dir = tmp.path().join("replica");
    {
        let mut r: Replica<KvDoc> = Replica::open(&replica_dir, ReplicaOptions::default()).unwrap();
        for i in 0..5 {
            r.update(|d, actor| d.put_op(actor, &format!("k{i}"), "v")).unwrap();
        }
        r.checkpoint().unwrap();
        r.update(|d, actor| d.put_op(actor, "later", "v")).unwrap();
        r.checkpoint().unwrap();
        r.close().unwrap();
    }
    fs::remove_file(replica_dir.join("checkpoint")).unwrap();
    let out = run(log_args("repair", &replica_dir.join("wal"), &[]), b"");
    assert_success(&out, "repair of a replica's log with only its older checkpoint");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("covers records up to LSN 5"), "{}", describe(&out));
}

/// A forced repair inside a replica that discards records no checkpoint
/// covers makes the replica retire its actor: peers may hold them.
#[test]
fn a_forced_repair_of_a_replica_log_retires_its_actor() {
    use walrus::replica::{KvDoc, Recovered, Replica, ReplicaOptions, ReplicaView};
    let tmp = tempfile::tempdir().unwrap();
    let replica_dir = tmp.path().join("replica");
    let wal_dir = replica_dir.join("wal");
    let opts = || {
        let mut wal = walrus::wal::WalOptions::new(walrus::wal::SyncPolicy::Always).segment_size(4096);
        wal.preallocate = false;
        ReplicaOptions { wal, checkpoint_bytes: 0, ..ReplicaOptions::default() }
    };
    let old = {
        let mut r: Replica<KvDoc> = Replica::open(&replica_dir, opts()).unwrap();
        for i in 0..150 {
            r.update(|d, actor| d.put_op(actor, &format!("k{}", i % 20), &format!("v{i}"))).unwrap();
        }
        r.actor()
    };
    let segs = segments(&wal_dir);
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1].1).unwrap();
    let out = run(log_args("repair", &wal_dir, &["--force"]), b"");
    assert_success(&out, "forced repair of a replica's log");
    assert!(String::from_utf8_lossy(&out.stdout).contains("new actor"), "{}", describe(&out));
    // The newest records were kept, the oldest dropped: no checkpoint
    // continues the log, so the replica must be rebuilt (peers refill it).
    // Checked with a read-only view: it takes no lock, so the rebuild below
    // is the first to lock the log since the repair's process exited (a lock
    // released in this process could linger a moment in a child another
    // test is spawning, between its fork and its exec).
    let err = ReplicaView::<KvDoc>::open(&replica_dir, &opts()).err().expect("nothing restores the state");
    assert!(err.to_string().contains("log starts at LSN"), "{err}");
    let mut r: Replica<KvDoc> = Replica::rebuild(&replica_dir, opts()).expect("rebuild after the repair");
    assert_ne!(r.actor(), old);
    assert_eq!(r.recovered().iter().filter(|n| matches!(n, Recovered::ActorRetired { .. })).count(), 1);
    assert!(!replica_dir.join("actor.retire").exists());
    assert_eq!(r.update(|d, a| d.put_op(a, "next", "x")).unwrap().seq(), r.clock().get(&r.actor()));
    // The kept records of the old actor were written again under the new one.
    assert_eq!(r.doc().values_of("k19"), vec!["v139".to_string()]);
}

/// A replica's log whose checkpoint cannot be read: repair says so and
/// treats nothing as covered, so dropping intact records needs --force.
#[test]
fn repair_with_an_unreadable_checkpoint_covers_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wal_dir = tmp.path().join("wal");
    small_log(&wal_dir, 300);
    fs::write(tmp.path().join("checkpoint"), b"not a checkpoint").unwrap();
    let segs = segments(&wal_dir);
    fs::remove_file(&segs[1].1).unwrap();

    let before = snapshot(tmp.path());
    let out = run(log_args("repair", &wal_dir, &[]), b"");
    assert_clean_failure(&out, "repair with an unreadable checkpoint", &["checkpoint", "--force"]);
    assert_eq!(snapshot(tmp.path()), before, "a refused repair must not modify anything");

    let out = run(log_args("repair", &wal_dir, &["--force"]), b"");
    assert_success(&out, "repair --force with an unreadable checkpoint");
    assert_eq!(segments(&wal_dir).first().map(|s| s.0), Some(segs[2].0));
}
