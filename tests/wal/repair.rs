//! Repair of a damaged log: which side of a gap or damage is kept, what the
//! plan says is discarded (and whether it was intact, covered or damaged),
//! refusal to drop intact records unless allowed, and that no LSN is ever
//! handed out twice after a repair.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::helpers::records;
use walrus::wal::{plan_repair, repair, DiscardKind, Error, LogReader, Lsn, RecoveryMode, SyncPolicy, Wal, WalOptions};

fn options() -> WalOptions {
    let mut o = WalOptions::new(SyncPolicy::Always).segment_size(4096);
    o.preallocate = false;
    o
}

/// Segment files of `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

fn first_lsn_of(path: &Path) -> Lsn {
    path.file_name().unwrap().to_str().unwrap()[..20].parse().unwrap()
}

fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i:05} {}", "p".repeat((i % 7) as usize * 13 + 60)).into_bytes()
}

/// Writes `n` records (LSNs 1..=n) in 4096-byte segments.
fn write_log(dir: &Path, n: u64) {
    let wal = Wal::open(dir, options()).unwrap();
    for i in 1..=n {
        assert_eq!(wal.append(&payload(i)).unwrap(), i);
    }
    wal.close().unwrap();
}

fn expected(range: std::ops::RangeInclusive<Lsn>) -> Vec<(Lsn, Vec<u8>)> {
    range.map(|l| (l, payload(l))).collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

/// 3,000 records in dozens of segments, one segment in the middle removed
/// (as an interrupted truncation or a lost file leaves it): strict open names
/// the segment after the gap at offset 0; repair keeps the newest consistent
/// suffix (with the active segment) and LSNs continue after 3,000.
#[test]
fn a_missing_segment_keeps_the_newest_suffix_and_lsns_go_on() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3000);
    let segs = segment_files(dir.path());
    assert!(segs.len() > 60, "fixture should have many segments, has {}", segs.len());
    let gone = 33;
    fs::remove_file(&segs[gone]).unwrap();
    let after_gap = &segs[gone + 1];
    let suffix_first = first_lsn_of(after_gap);
    let stale_last = first_lsn_of(&segs[gone]) - 1;

    for err in [Wal::open(dir.path(), options()).err(), LogReader::open(dir.path(), &options()).err()] {
        match err {
            Some(Error::Corrupt { segment, offset, .. }) => {
                assert_eq!(&segment, after_gap);
                assert_eq!(offset, 0);
            }
            other => panic!("expected Corrupt at the segment after the gap, got {other:?}"),
        }
    }

    // The plan, computed without changing anything: the stale segments
    // before the gap are intact and not covered.
    let before = names(dir.path());
    let plan = plan_repair(dir.path(), 0).unwrap();
    assert_eq!(names(dir.path()), before, "planning changes nothing");
    assert_eq!(plan.kept, Some(suffix_first..=3000), "{plan}");
    assert_eq!(plan.next_lsn, 3001, "{plan}");
    assert_eq!(plan.removed, segs[..gone].to_vec(), "{plan}");
    let lost: Vec<_> = plan.lost().map(|d| d.records.clone().unwrap()).collect();
    assert_eq!(lost.first().map(|r| *r.start()), Some(1), "{plan}");
    assert_eq!(lost.last().map(|r| *r.end()), Some(stale_last), "{plan}");
    assert!(plan.lost().all(|d| segs[..gone].contains(&d.segment)), "{plan}");

    // Refused without permission: nothing changes.
    let err = repair(dir.path(), options(), 0, false).unwrap_err();
    let lost = format!("records 1..={stale_last} in segments {} to {}", name_of(&segs[0]), name_of(&segs[gone - 1]));
    assert!(err.to_string().contains(&lost), "{err}");
    assert_eq!(names(dir.path()), before, "a refused repair changes nothing");

    // With a checkpoint covering the stale records, nothing is lost.
    let plan = repair(dir.path(), options(), stale_last, false).unwrap();
    assert!(!plan.loses_records(), "{plan}");
    assert!(plan.discarded.iter().all(|d| d.kind == DiscardKind::Covered), "{plan}");
    let left = segment_files(dir.path());
    assert_eq!(left, segs[gone + 1..].to_vec(), "only the segments before the gap go; the active one stays");

    let wal = Wal::open(dir.path(), options()).unwrap();
    assert_eq!(wal.first_lsn(), suffix_first);
    assert_eq!(records(&wal), expected(suffix_first..=3000));
    assert_eq!(wal.append(b"next").unwrap(), 3001);
}

/// `RecoveryMode::Repair` applies the same plan (loss allowed).
#[test]
fn recovery_mode_repair_keeps_the_suffix_after_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 600);
    let segs = segment_files(dir.path());
    fs::remove_file(&segs[2]).unwrap();
    let wal = Wal::open(dir.path(), options().recovery(RecoveryMode::Repair)).unwrap();
    let first = first_lsn_of(&segs[3]);
    assert_eq!(records(&wal), expected(first..=600));
    assert_eq!(wal.append(b"x").unwrap(), 601);
}

/// Damage in the oldest segment (its old end) also keeps the newer records.
#[test]
fn damage_in_the_oldest_segment_keeps_the_newer_segments() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 400);
    let segs = segment_files(dir.path());
    let f = fs::OpenOptions::new().write(true).open(&segs[0]).unwrap();
    f.write_all_at(b"XX", 200).unwrap();
    drop(f);
    let plan = plan_repair(dir.path(), 0).unwrap();
    assert!(plan.discarded.iter().any(|d| matches!(d.kind, DiscardKind::Damaged { .. })), "{plan}");
    assert!(plan.lost().all(|d| d.segment == segs[0]), "{plan}");
    repair(dir.path(), options(), 0, true).unwrap();
    let wal = Wal::open(dir.path(), options()).unwrap();
    assert_eq!(records(&wal), expected(first_lsn_of(&segs[1])..=400));
    assert_eq!(wal.append(b"x").unwrap(), 401);
}

/// Whatever a repair discards, the next LSN is above every LSN the log ever
/// held, and the repaired log opens strictly and reads back what it kept.
#[test]
fn no_lsn_is_handed_out_twice_after_any_repair() {
    type Damage = fn(&[PathBuf]);
    let cases: Vec<(&str, Damage)> = vec![
        ("middle segment removed", |s| fs::remove_file(&s[3]).unwrap()),
        ("bit flip in a middle segment", |s| flip(&s[3], 300)),
        ("header of a middle segment", |s| flip(&s[3], 13)),
        ("header of the last segment", |s| flip(s.last().unwrap(), 13)),
        ("bit flip in the oldest segment", |s| flip(&s[0], 100)),
        ("last two segments' boundary", |s| fs::remove_file(&s[s.len() - 2]).unwrap()),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 500);
        let segs = segment_files(dir.path());
        damage(&segs);
        assert!(Wal::open(dir.path(), options()).is_err(), "{what}: strict open must fail");
        let plan = repair(dir.path(), options(), 0, true).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(plan.next_lsn > 500, "{what}: next LSN {} reuses an LSN: {plan}", plan.next_lsn);
        let wal = Wal::open(dir.path(), options()).unwrap_or_else(|e| panic!("{what}: strict open after repair: {e}"));
        let kept = records(&wal);
        if let Some(r) = &plan.kept {
            assert_eq!(kept, expected(r.clone()), "{what}: {plan}");
        }
        let lsn = wal.append(b"after").unwrap();
        assert_eq!(lsn, plan.next_lsn, "{what}");
        assert!(lsn > 500, "{what}: LSN {lsn} handed out twice");
        drop(wal);
        // And again after a restart: the jump is durable.
        let wal = Wal::open(dir.path(), options()).unwrap();
        assert_eq!(wal.append(b"again").unwrap(), lsn + 1, "{what}");
        let reader = LogReader::open(dir.path(), &options()).unwrap();
        let all: Vec<Lsn> = reader.iter_from(reader.summary().first_lsn).unwrap().map(|r| r.unwrap().lsn).collect();
        assert_eq!(all.last(), Some(&(lsn + 1)), "{what}");
    }
}

fn flip(path: &Path, at: u64) {
    let f = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

/// A clean log: the plan is a no-op and a repair changes nothing.
#[test]
fn repairing_a_clean_log_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 200);
    let before: Vec<(String, Vec<u8>)> =
        segment_files(dir.path()).iter().map(|p| (p.display().to_string(), fs::read(p).unwrap())).collect();
    let plan = plan_repair(dir.path(), 0).unwrap();
    assert!(plan.is_noop(), "{plan}");
    assert_eq!(plan.kept, Some(1..=200));
    let plan = repair(dir.path(), options(), 0, false).unwrap();
    assert!(plan.is_noop(), "{plan}");
    let after: Vec<(String, Vec<u8>)> =
        segment_files(dir.path()).iter().map(|p| (p.display().to_string(), fs::read(p).unwrap())).collect();
    assert_eq!(before, after);
}

/// Fails every file operation from the `n`-th on, as if the process died
/// there.
struct CrashAfter {
    ops: std::sync::atomic::AtomicUsize,
    n: usize,
}

impl walrus::wal::FaultInjector for CrashAfter {
    fn check(&self, _op: walrus::wal::FileOp, _path: &Path, _len: usize) -> Result<(), walrus::wal::Injected> {
        if self.ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.n {
            return Err(walrus::wal::Injected::fail(std::io::Error::other("injected crash")));
        }
        Ok(())
    }
}

/// A repair interrupted after any number of file operations, then run
/// again, ends exactly where an uninterrupted one does.
#[test]
fn an_interrupted_repair_repeated_ends_the_same() {
    type Damage = fn(&[PathBuf]);
    let cases: Vec<(&str, Damage)> = vec![
        ("bit flip in a middle segment", |s| flip(&s[3], 300)),
        ("header of the last segment", |s| flip(s.last().unwrap(), 13)),
        ("middle segment removed", |s| fs::remove_file(&s[3]).unwrap()),
        ("bit flip in the oldest segment", |s| flip(&s[0], 100)),
    ];
    for (what, damage) in cases {
        let reference = tempfile::tempdir().unwrap();
        write_log(reference.path(), 300);
        damage(&segment_files(reference.path()));
        let want = repair(reference.path(), options(), 0, true).unwrap();
        let want_records = records(&Wal::open(reference.path(), options()).unwrap());
        let mut finished = false;
        for n in 0.. {
            let dir = tempfile::tempdir().unwrap();
            write_log(dir.path(), 300);
            damage(&segment_files(dir.path()));
            let crash = std::sync::Arc::new(CrashAfter { ops: 0.into(), n });
            if repair(dir.path(), options().with_faults(crash), 0, true).is_ok() {
                finished = true;
            }
            let again =
                repair(dir.path(), options(), 0, true).unwrap_or_else(|e| panic!("{what}, crash at op {n}: {e}"));
            let wal = Wal::open(dir.path(), options()).unwrap_or_else(|e| panic!("{what}, crash at op {n}: {e}"));
            assert_eq!(records(&wal), want_records, "{what}, crash at op {n}: {again}");
            assert_eq!(wal.append(b"x").unwrap(), want.next_lsn, "{what}, crash at op {n}: {again}");
            if finished {
                break;
            }
            assert!(n < 200, "{what}: the repair never finished");
        }
    }
}

/// Damage to a durable record in the active segment: the valid records
/// after it cannot be kept, and the plan says they are intact, so a repair
/// refuses to drop them unless allowed.
#[test]
fn records_after_damage_in_the_active_segment_count_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::Always).segment_size(1 << 20)).unwrap();
    for i in 1..=30 {
        wal.append(&payload(i)).unwrap();
    }
    drop(wal);
    let seg = segment_files(dir.path()).pop().unwrap();
    // Record 10's payload: header 32, then frames of 20 + len bytes.
    let at: u64 = 32 + (1..10).map(|i| 20 + payload(i).len() as u64).sum::<u64>() + 25;
    flip(&seg, at);

    let plan = plan_repair(dir.path(), 0).unwrap();
    assert_eq!(plan.kept, Some(1..=9), "{plan}");
    let lost: Vec<_> = plan.lost().map(|d| (d.segment.clone(), d.records.clone())).collect();
    assert_eq!(lost, vec![(seg.clone(), Some(11..=30))], "{plan}");
    assert!(plan.next_lsn > 30, "{plan}");
    assert!(repair(dir.path(), options(), 0, false).is_err());
    // Covered by a checkpoint, they may go.
    let plan = repair(dir.path(), options(), 30, false).unwrap();
    let wal = Wal::open(dir.path(), options()).unwrap();
    assert_eq!(records(&wal), expected(1..=9));
    assert_eq!(wal.append(b"x").unwrap(), plan.next_lsn);
}

/// A stale segment that overlaps the newest one and holds higher LSNs: the
/// repair skips past them, so the kept last segment stops being the last;
/// its torn tail is discarded first (it would be damage in a sealed one).
#[test]
fn a_stale_overlapping_segment_makes_the_repair_skip_its_lsns() {
    let (x, y, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_log(x.path(), 100);
    let big = || WalOptions::new(SyncPolicy::Always).segment_size(1 << 20);
    let wal = Wal::open(y.path(), big()).unwrap();
    for i in 1..=105 {
        wal.append(&payload(i)).unwrap();
    }
    drop(wal);
    let stale = segment_files(y.path()).remove(0);
    let newest = segment_files(x.path()).pop().unwrap();
    let newest_first = first_lsn_of(&newest);
    assert!(newest_first > 1);
    fs::copy(&stale, dir.path().join(stale.file_name().unwrap())).unwrap();
    let kept = dir.path().join(newest.file_name().unwrap());
    fs::copy(&newest, &kept).unwrap();
    // A torn tail: garbage after the last record, no record after it.
    let len = fs::metadata(&kept).unwrap().len();
    fs::OpenOptions::new().write(true).open(&kept).unwrap().write_all_at(&[0xAB; 7], len).unwrap();

    let plan = repair(dir.path(), options(), 0, true).unwrap();
    assert_eq!(plan.kept, Some(newest_first..=100), "{plan}");
    assert_eq!(plan.next_lsn, 106, "{plan}");
    let wal = Wal::open(dir.path(), options()).unwrap_or_else(|e| panic!("strict open after repair: {e}\n{plan}"));
    assert_eq!(records(&wal), expected(newest_first..=100));
    assert_eq!(wal.append(b"x").unwrap(), 106);
}
