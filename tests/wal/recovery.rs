//! Recovery of the write-ahead log: a torn tail at every cut point of the
//! last segment, garbage after the last record, damage to sealed and active
//! segments, LSN continuity across reopen, rotation and truncation, and
//! property tests against a model of what was written.
//!
//! Segment files are inspected and damaged through the byte layout of
//! `docs/FORMAT.md`; the log under test is only ever used through its public
//! API.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::helpers::{options, records};
use proptest::prelude::*;
use quickcheck::{QuickCheck, TestResult};
use walrus::wal::format::{FLAG_SYNCED_BEFORE, FRAME_HEADER_LEN, KIND_LAST, SEGMENT_HEADER_LEN};
use walrus::wal::{Error, LogReader, Lsn, RecoveryMode, SyncPolicy, Wal, WalIter, WalOptions};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const SEGMENT: u64 = 4096;

/// `len` seeded pseudo-random bytes, so failures reproduce.
fn bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    rng.fill(&mut out);
    out
}

/// Opens the log, expecting it to fail; returns the error.
fn open_err(dir: &Path, o: &WalOptions) -> Error {
    match Wal::open(dir, o.clone()) {
        Ok(_) => panic!("Wal::open({}) succeeded, expected an error", dir.display()),
        Err(e) => e,
    }
}

/// Opens a read-only reader, expecting it to fail; returns the error.
fn reader_err(dir: &Path, o: &WalOptions) -> Error {
    match LogReader::open(dir, o) {
        Ok(r) => panic!("LogReader::open({}) succeeded ({}), expected an error", dir.display(), r.summary()),
        Err(e) => e,
    }
}

/// Collects an iterator's payloads, checking that LSNs run consecutively from `from`.
fn collect(iter: WalIter, from: Lsn) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, r) in iter.enumerate() {
        let r = r.unwrap_or_else(|e| panic!("iterating from {from}: {e}"));
        assert_eq!(r.lsn, from + i as u64, "LSNs must be consecutive");
        out.push(r.payload);
    }
    out
}

/// Every record the log holds, from its first LSN.
fn contents(wal: &Wal) -> Vec<Vec<u8>> {
    let first = wal.first_lsn();
    collect(wal.iter_from(first).unwrap(), first)
}

/// Every record a read-only reader sees, from the first LSN held.
fn reader_contents(dir: &Path, o: &WalOptions) -> Vec<Vec<u8>> {
    let reader = LogReader::open(dir, o).unwrap_or_else(|e| panic!("LogReader::open: {e}"));
    let first = reader.summary().first_lsn;
    collect(reader.iter_from(first).unwrap(), first)
}

/// Segment files of a log directory, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.len() == 24 && name.ends_with(".wal") && name[..20].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    out.sort();
    out
}

/// First LSN of a segment, from its file name.
fn segment_first_lsn(path: &Path) -> Lsn {
    path.file_name().unwrap().to_str().unwrap()[..20].parse().unwrap()
}

/// Names of files in `dir` that are neither segments nor the lock file.
fn stray_files(dir: &Path) -> Vec<String> {
    let segments = segment_files(dir);
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !segments.contains(p) && p.file_name().unwrap() != "LOCK")
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A record frame found in a segment file.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    start: u64,
    end: u64,
    lsn: Lsn,
    kind: u8,
    flags: u8,
}

/// A commit unit (a single record or a whole batch) in a segment file.
#[derive(Debug, Clone, Copy)]
struct Unit {
    first: Lsn,
    last: Lsn,
    start: u64,
    end: u64,
}

/// Frames of an undamaged segment, decoded structurally per docs/FORMAT.md:
/// frames follow the 32-byte header back to back until a zeroed frame
/// header or the end of the file.
fn frames_of(path: &Path) -> Vec<FrameInfo> {
    let bytes = fs::read(path).unwrap();
    let mut off = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while off + FRAME_HEADER_LEN <= bytes.len() {
        let h = &bytes[off..off + FRAME_HEADER_LEN];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let lsn = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let end = off + FRAME_HEADER_LEN + len;
        assert!(end <= bytes.len(), "{}: frame at {off} runs past the end", path.display());
        out.push(FrameInfo { start: off as u64, end: end as u64, lsn, kind: h[16], flags: h[17] });
        off = end;
    }
    out
}

fn units_of(frames: &[FrameInfo]) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut open: Option<(Lsn, u64)> = None;
    for f in frames {
        let (first, start) = *open.get_or_insert((f.lsn, f.start));
        if f.kind == KIND_LAST {
            out.push(Unit { first, last: f.lsn, start, end: f.end });
            open = None;
        }
    }
    assert!(open.is_none(), "a fixture segment ends inside a batch");
    out
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, offset).unwrap();
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// Appends one commit unit (`append` for one record, else `append_batch`)
/// and checks the LSNs it got against `written`, to which it is added.
fn append_unit(wal: &Wal, written: &mut Vec<Vec<u8>>, unit: Vec<Vec<u8>>, as_batch: bool) {
    let next = written.len() as u64 + 1;
    if as_batch {
        let range = wal.append_batch(&unit).unwrap();
        assert_eq!(range, next..next + unit.len() as u64);
    } else {
        assert_eq!(unit.len(), 1);
        assert_eq!(wal.append(&unit[0]).unwrap(), next);
    }
    written.extend(unit);
}

/// The three commit units that end the cut-point fixture: a batch of three
/// (one record empty), a single record and a batch of two.
fn final_units() -> Vec<Vec<Vec<u8>>> {
    let mut rng = fastrand::Rng::with_seed(0xF1A1);
    vec![
        vec![Vec::new(), bytes(&mut rng, 45), bytes(&mut rng, 7)],
        vec![bytes(&mut rng, 130)],
        vec![bytes(&mut rng, 60), bytes(&mut rng, 1)],
    ]
}

/// Writes records of varied sizes, some as batches, over several segments,
/// ending with [`final_units`] in the last segment. Returns the payloads in
/// LSN order.
fn write_fixture(dir: &Path, o: &WalOptions) -> Vec<Vec<u8>> {
    let wal = Wal::open(dir, o.clone()).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    let mut written = Vec::new();
    for i in 0..50 {
        if i % 4 == 1 {
            let n = 2 + rng.usize(..3);
            let unit = (0..n)
                .map(|_| {
                    let len = rng.usize(..60);
                    bytes(&mut rng, len)
                })
                .collect();
            append_unit(&wal, &mut written, unit, true);
        } else {
            let len = rng.usize(..150);
            append_unit(&wal, &mut written, vec![bytes(&mut rng, len)], false);
        }
    }
    for unit in final_units() {
        let batch = unit.len() > 1;
        append_unit(&wal, &mut written, unit, batch);
    }
    drop(wal);
    written
}

// ---------------------------------------------------------------------------
// Torn tails at every cut point
// ---------------------------------------------------------------------------

/// Cuts the last segment at every offset from the start of the third-last
/// commit unit to the end of the records (by truncating the file, or, for a
/// preallocated segment, by zeroing the rest of the records) and checks that
/// recovery keeps exactly the commit units written wholly before the cut.
fn cut_at_every_offset(preallocate: bool) {
    let o = options(SyncPolicy::Always, SEGMENT, preallocate);
    let src = tempfile::tempdir().unwrap();
    let written = write_fixture(src.path(), &o);

    let segments = segment_files(src.path());
    assert!(segments.len() >= 2, "fixture should span several segments, got {}", segments.len());
    let last = segments.last().unwrap().clone();
    let last_name = last.file_name().unwrap().to_owned();
    let units = units_of(&frames_of(&last));
    assert!(units.len() >= 4, "fixture should leave at least 4 commit units in the last segment");
    let tail = &units[units.len() - 3..];
    let sizes: Vec<u64> = tail.iter().map(|u| u.last - u.first + 1).collect();
    assert_eq!(sizes, vec![3, 1, 2], "the last segment should end with the fixture's final units");
    assert_eq!(tail[2].last, written.len() as u64);
    let data_end = tail[2].end;
    let original = fs::read(&last).unwrap();
    let file_len = original.len() as u64;
    if preallocate {
        assert_eq!(file_len, SEGMENT, "a preallocated segment is zero-filled to the segment size");
    } else {
        assert_eq!(file_len, data_end, "without preallocation a segment ends at its last record");
    }

    for cut in tail[0].start..=data_end {
        let work = tempfile::tempdir().unwrap();
        copy_dir(src.path(), work.path());
        let seg = work.path().join(&last_name);
        if preallocate {
            write_at(&seg, cut, &vec![0u8; (data_end - cut) as usize]);
        } else {
            set_len(&seg, cut);
        }

        // What a crash at `cut` must leave: every commit unit that ends at or
        // before the cut, nothing of a unit (batch) cut in the middle.
        let kept = units.iter().rev().find(|u| u.end <= cut).unwrap();
        let expected = &written[..kept.last as usize];
        let committed_end = kept.end;
        let dirty_end = original[committed_end as usize..cut as usize]
            .iter()
            .rposition(|&b| b != 0)
            .map(|i| committed_end + i as u64 + 1);
        let ctx = format!("preallocate {preallocate}, cut at {cut} (records end at {data_end})");

        // A read-only reader sees the committed records and reports the tail.
        let reader = LogReader::open(work.path(), &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let summary = reader.summary();
        assert_eq!(summary.last_lsn, kept.last, "{ctx}");
        assert_eq!(summary.torn_tail, dirty_end.map(|d| (seg.clone(), committed_end, d - committed_end)), "{ctx}");
        assert_eq!(collect(reader.iter_from(1).unwrap(), 1), expected, "{ctx}");

        let wal = Wal::open(work.path(), o.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(wal.last_lsn(), kept.last, "{ctx}");
        assert_eq!(wal.first_lsn(), 1, "{ctx}");
        assert_eq!(contents(&wal), expected, "{ctx}");
        drop(wal);

        // Recovery is idempotent and leaves nothing to discard.
        let summary = LogReader::open(work.path(), &o).unwrap().summary();
        assert_eq!(summary.torn_tail, None, "{ctx}");
        assert_eq!(summary.last_lsn, kept.last, "{ctx}");
        let wal = Wal::open(work.path(), o.clone()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        assert_eq!(contents(&wal), expected, "{ctx}: reopen");

        // The log goes on from the next LSN.
        assert_eq!(wal.append(b"after the cut").unwrap(), kept.last + 1, "{ctx}");
        drop(wal);
        let wal = Wal::open(work.path(), o.clone()).unwrap_or_else(|e| panic!("{ctx}: reopen after append: {e}"));
        let mut want = expected.to_vec();
        want.push(b"after the cut".to_vec());
        assert_eq!(contents(&wal), want, "{ctx}: after append");
    }
}

#[test]
fn torn_tail_at_every_cut_point_truncated_file() {
    cut_at_every_offset(false);
}

#[test]
fn torn_tail_at_every_cut_point_preallocated_file() {
    cut_at_every_offset(true);
}

// ---------------------------------------------------------------------------
// Garbage after the last record
// ---------------------------------------------------------------------------

#[test]
fn garbage_after_the_last_record_is_discarded() {
    for preallocate in [false, true] {
        let o = options(SyncPolicy::Always, SEGMENT, preallocate);
        let src = tempfile::tempdir().unwrap();
        let written = write_fixture(src.path(), &o);
        let last = segment_files(src.path()).pop().unwrap();
        let last_name = last.file_name().unwrap().to_owned();
        let frames = frames_of(&last);
        let last_frame = *frames.last().unwrap();
        let data_end = last_frame.end;
        let original = fs::read(&last).unwrap();
        let next_lsn = written.len() as u64 + 1;

        let mut garbage: Vec<(String, Vec<u8>)> = vec![("zeros".into(), vec![0u8; 300])];
        for seed in 1..=6u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let len = 1 + rng.usize(..400);
            garbage.push((format!("random bytes, seed {seed}"), bytes(&mut rng, len)));
        }
        // A plausible frame header for the next LSN, flagged SYNCED_BEFORE,
        // whose checksum does not match: the start of a torn write.
        let mut torn = vec![0xA5, 0x5A, 0x3C, 0xC3];
        torn.extend_from_slice(&16u32.to_le_bytes());
        torn.extend_from_slice(&next_lsn.to_le_bytes());
        torn.extend_from_slice(&[KIND_LAST, FLAG_SYNCED_BEFORE, 0, 0]);
        torn.extend_from_slice(&[7u8; 16]);
        garbage.push(("frame header with a bad checksum".into(), torn));
        // A valid frame of this segment with an old LSN (stale bytes).
        let stale = original[last_frame.start as usize..last_frame.end as usize].to_vec();
        garbage.push(("copy of the last frame".into(), stale));

        for (what, bytes) in garbage {
            let ctx = format!("preallocate {preallocate}, {what}");
            let work = tempfile::tempdir().unwrap();
            copy_dir(src.path(), work.path());
            let seg = work.path().join(&last_name);
            write_at(&seg, data_end, &bytes);

            let reader = LogReader::open(work.path(), &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let dirty = bytes.iter().rposition(|&b| b != 0).map(|i| i as u64 + 1);
            assert_eq!(reader.summary().torn_tail, dirty.map(|len| (seg.clone(), data_end, len)), "{ctx}");
            assert_eq!(reader.summary().last_lsn, written.len() as u64, "{ctx}");
            assert_eq!(collect(reader.iter_from(1).unwrap(), 1), written, "{ctx}");

            let wal = Wal::open(work.path(), o.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(contents(&wal), written, "{ctx}");
            assert_eq!(wal.append(b"new 1").unwrap(), next_lsn, "{ctx}");
            assert_eq!(wal.append_batch([&b"new 2"[..], b"new 3"]).unwrap(), next_lsn + 1..next_lsn + 3, "{ctx}");
            drop(wal);

            let summary = LogReader::open(work.path(), &o).unwrap().summary();
            assert_eq!(summary.torn_tail, None, "{ctx}: after recovery");
            let wal = Wal::open(work.path(), o.clone()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            let mut want = written.clone();
            want.extend([b"new 1".to_vec(), b"new 2".to_vec(), b"new 3".to_vec()]);
            assert_eq!(contents(&wal), want, "{ctx}: reopen");
        }
    }
}

// ---------------------------------------------------------------------------
// Damage that is not a torn tail
// ---------------------------------------------------------------------------

/// Single appends of 10..90 bytes, each synced (so each frame carries
/// SYNCED_BEFORE).
fn write_singles(dir: &Path, o: &WalOptions, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let wal = Wal::open(dir, o.clone()).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut written = Vec::new();
    for _ in 0..count {
        let len = 10 + rng.usize(..80);
        append_unit(&wal, &mut written, vec![bytes(&mut rng, len)], false);
    }
    drop(wal);
    written
}

fn assert_corrupt_at(err: Error, segment: &Path, offset: u64, ctx: &str) {
    match err {
        Error::Corrupt { segment: s, offset: o, .. } => {
            assert_eq!(s, segment, "{ctx}: segment named by Error::Corrupt");
            assert_eq!(o, offset, "{ctx}: offset named by Error::Corrupt");
        }
        other => panic!("{ctx}: expected Error::Corrupt, got {other}"),
    }
}

/// Repair keeps exactly the records `kept` (LSNs into `written`), never
/// hands out an LSN it has seen (the next is `next` if given, else above
/// every LSN written), and the repaired log opens strictly afterwards.
fn check_repair(
    dir: &Path,
    o: &WalOptions,
    written: &[Vec<u8>],
    kept: std::ops::RangeInclusive<Lsn>,
    next: Option<Lsn>,
    ctx: &str,
) {
    let keep: Vec<(Lsn, Vec<u8>)> = kept.clone().map(|l| (l, written[l as usize - 1].clone())).collect();
    let wal = Wal::open(dir, o.clone().recovery(RecoveryMode::Repair)).unwrap_or_else(|e| panic!("{ctx}: repair: {e}"));
    assert_eq!(records(&wal), keep, "{ctx}: repair");
    let lsn = wal.append(b"after repair").unwrap();
    match next {
        Some(n) => assert_eq!(lsn, n, "{ctx}: next LSN after repair"),
        None => assert!(lsn > written.len() as u64, "{ctx}: LSN {lsn} handed out again after repair"),
    }
    drop(wal);
    let wal = Wal::open(dir, o.clone()).unwrap_or_else(|e| panic!("{ctx}: strict open after repair: {e}"));
    let mut want = keep;
    want.push((lsn, b"after repair".to_vec()));
    assert_eq!(records(&wal), want, "{ctx}: after repair");
    assert_eq!(reader_records(dir, o), want, "{ctx}: read-only reader after repair");
    drop(wal);
    // Repairing a repaired log changes nothing.
    let plan = walrus::wal::repair(dir, o.clone(), 0, false).unwrap_or_else(|e| panic!("{ctx}: second repair: {e}"));
    assert!(plan.is_noop(), "{ctx}: second repair: {plan}");
}

/// Every record a read-only reader sees, with its LSN.
fn reader_records(dir: &Path, o: &WalOptions) -> Vec<(Lsn, Vec<u8>)> {
    let reader = LogReader::open(dir, o).unwrap_or_else(|e| panic!("LogReader::open: {e}"));
    let first = reader.summary().first_lsn;
    reader.iter_from(first).unwrap().map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect()
}

#[test]
fn bit_flip_in_a_sealed_segment_is_corruption() {
    let o = options(SyncPolicy::Always, SEGMENT, false);
    let src = tempfile::tempdir().unwrap();
    let written = write_singles(src.path(), &o, 260, 11);
    let segments = segment_files(src.path());
    assert!(segments.len() >= 4, "fixture should span at least 4 segments, got {}", segments.len());

    // (segment index, damaged byte, bit, offset to report, damaged LSN, what)
    let mut cases = Vec::new();
    for seg_idx in [0, 1, segments.len() - 2] {
        let frames = frames_of(&segments[seg_idx]);
        let n = frames.len();
        let len = |f: &FrameInfo| f.end - f.start;
        for (fi, pos, bit, what) in [
            (0, 0, 3, "checksum"),
            (n / 2, 5, 0, "length"),
            (n / 2, 9, 6, "LSN"),
            (n - 1, 16, 1, "kind"),
            (n - 2, 17, 0, "flags"),
            (n / 3, 18, 4, "reserved"),
            (
                n / 2 + 1,
                FRAME_HEADER_LEN as u64 + (len(&frames[n / 2 + 1]) - FRAME_HEADER_LEN as u64) / 2,
                7,
                "payload",
            ),
            (n - 1, len(&frames[n - 1]) - 1, 2, "last payload byte"),
        ] {
            let f = frames[fi];
            cases.push((seg_idx, f.start + pos, bit, f.start, f.lsn, format!("segment {seg_idx}, frame {fi}, {what}")));
        }
    }
    // The segment header itself: the whole segment is unreadable.
    let first_of_1 = segment_first_lsn(&segments[1]);
    cases.push((1, 12, 0, 0, first_of_1, "segment 1, header salt".into()));

    for (seg_idx, at, bit, offset, damaged_lsn, what) in cases {
        let work = tempfile::tempdir().unwrap();
        copy_dir(src.path(), work.path());
        let seg = work.path().join(segments[seg_idx].file_name().unwrap());
        flip_bit(&seg, at, bit);
        let ctx = format!("{what} (byte {at}, bit {bit})");

        assert_corrupt_at(open_err(work.path(), &o), &seg, offset, &ctx);
        assert_corrupt_at(reader_err(work.path(), &o), &seg, offset, &ctx);
        // Refusing to open changed nothing: the damage is still reported.
        assert_corrupt_at(open_err(work.path(), &o), &seg, offset, &ctx);
        let total = written.len() as u64;
        if seg_idx == 0 {
            // Damage in the oldest segment: the newest consistent run of
            // segments (all the later ones) is kept and LSNs go on after it.
            let after = segment_first_lsn(&segments[1]);
            check_repair(work.path(), &o, &written, after..=total, Some(total + 1), &ctx);
            let segs_after = segment_files(work.path());
            assert_eq!(segs_after.len(), segments.len() - 1, "{ctx}: only the damaged oldest segment goes");
        } else {
            // Damage inside the log: the records before it are kept.
            check_repair(work.path(), &o, &written, 1..=damaged_lsn - 1, None, &ctx);
            let segs_after = segment_files(work.path());
            let last_kept = if offset == 0 { seg_idx - 1 } else { seg_idx };
            assert_eq!(segs_after.len(), last_kept + 2, "{ctx}: later segments removed, one new segment");
        }
    }
}

#[test]
fn damage_before_a_synced_record_in_the_last_segment_is_corruption() {
    let o = options(SyncPolicy::Always, SEGMENT, false);
    let src = tempfile::tempdir().unwrap();
    let written = write_singles(src.path(), &o, 120, 23);
    let last = segment_files(src.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_owned();
    let frames = frames_of(&last);
    let n = frames.len();
    assert!(n >= 6, "the last segment should hold several records, has {n}");
    assert!(
        frames.iter().all(|f| f.flags & FLAG_SYNCED_BEFORE != 0),
        "separate appends under SyncPolicy::Always each start a synced write"
    );

    for (fi, pos, bit) in [(0, 0, 0), (1, 6, 2), (n / 2, 21, 5), (n - 3, 17, 0), (n - 2, 12, 7)] {
        let f = frames[fi];
        let ctx = format!("frame {fi} of {n} in the last segment, byte {pos}");
        let work = tempfile::tempdir().unwrap();
        copy_dir(src.path(), work.path());
        let seg = work.path().join(&name);
        flip_bit(&seg, f.start + pos, bit);

        assert_corrupt_at(open_err(work.path(), &o), &seg, f.start, &ctx);
        assert_corrupt_at(reader_err(work.path(), &o), &seg, f.start, &ctx);
        check_repair(work.path(), &o, &written, 1..=f.lsn - 1, None, &ctx);
    }

    // Damage to the very last record is indistinguishable from a torn write:
    // it is discarded and the log opens.
    let f = frames[n - 1];
    let work = tempfile::tempdir().unwrap();
    copy_dir(src.path(), work.path());
    flip_bit(&work.path().join(&name), f.start + 25, 1);
    let wal = Wal::open(work.path(), o.clone()).unwrap();
    assert_eq!(contents(&wal), &written[..written.len() - 1]);
    assert_eq!(wal.append(b"x").unwrap(), f.lsn);
}

/// A synced record that is empty (or all zeros) still proves that the
/// damaged record before it had been durable.
#[test]
fn damage_before_a_synced_empty_record_is_corruption() {
    let mut failures = Vec::new();
    for last_payload in [Vec::new(), vec![0u8; 8], vec![0u8, 0, 0, 9]] {
        let o = options(SyncPolicy::Always, SEGMENT, false);
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        let mut written = Vec::new();
        for p in [b"first".to_vec(), b"second".to_vec(), last_payload.clone()] {
            append_unit(&wal, &mut written, vec![p], false);
        }
        drop(wal);
        let seg = segment_files(dir.path()).pop().unwrap();
        let frames = frames_of(&seg);
        assert_eq!(frames.len(), 3);
        assert!(frames[2].flags & FLAG_SYNCED_BEFORE != 0, "the last record was written after a sync");
        flip_bit(&seg, frames[1].start + 22, 3); // payload of "second"

        // Record 2 was acknowledged before record 3 was written; discarding
        // records 2 and 3 as a torn tail would silently lose durable data.
        let ctx = format!("durable last record {last_payload:?} after damaged record 2");
        if let Ok(reader) = LogReader::open(dir.path(), &o) {
            failures.push(format!("{ctx}: LogReader::open succeeded ({})", reader.summary()));
        }
        match Wal::open(dir.path(), o.clone()) {
            Ok(wal) => failures.push(format!(
                "{ctx}: Wal::open succeeded and kept {} of 3 acknowledged records instead of reporting Corrupt",
                wal.last_lsn()
            )),
            Err(e) => assert_corrupt_at(e, &seg, frames[1].start, &ctx),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Under `SyncPolicy::None` no frame vouches for earlier bytes, so damage in
/// the last segment is a torn tail: the records before it are kept.
#[test]
fn damage_in_an_unsynced_last_segment_is_a_torn_tail() {
    let o = options(SyncPolicy::None, 1 << 20, false);
    let dir = tempfile::tempdir().unwrap();
    let written = write_singles(dir.path(), &o, 30, 5);
    let seg = segment_files(dir.path()).pop().unwrap();
    let frames = frames_of(&seg);
    assert!(frames.iter().all(|f| f.flags & FLAG_SYNCED_BEFORE == 0));
    flip_bit(&seg, frames[10].start + 3, 0);
    let reader = LogReader::open(dir.path(), &o).unwrap();
    assert_eq!(reader.summary().last_lsn, 10);
    assert_eq!(reader.summary().torn_tail.as_ref().map(|t| t.1), Some(frames[10].start));
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(contents(&wal), &written[..10]);
    assert_eq!(wal.append(b"next").unwrap(), 11);
}

// ---------------------------------------------------------------------------
// LSN continuity
// ---------------------------------------------------------------------------

#[test]
fn lsns_continue_across_reopen_rotation_and_truncation() {
    let o = options(SyncPolicy::Always, SEGMENT, false);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(99);
    let mut written: Vec<Vec<u8>> = Vec::new();
    let append_some = |written: &mut Vec<Vec<u8>>, rng: &mut fastrand::Rng, units: usize| {
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        assert_eq!(wal.last_lsn(), written.len() as u64);
        for i in 0..units {
            let n = if i % 5 == 0 { 3 } else { 1 };
            let unit: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let len = rng.usize(..90);
                    bytes(rng, len)
                })
                .collect();
            append_unit(&wal, written, unit, n > 1);
        }
        wal
    };

    drop(append_some(&mut written, &mut rng, 100));
    drop(append_some(&mut written, &mut rng, 60));
    let wal = append_some(&mut written, &mut rng, 40);
    assert_eq!(contents(&wal), written);
    drop(wal);

    // Segment names and contents tile 1..=last without gaps or overlaps.
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 5, "expected several rotations, got {} segments", segments.len());
    let mut next = 1;
    for seg in &segments {
        assert_eq!(segment_first_lsn(seg), next, "{}", seg.display());
        for f in frames_of(seg) {
            assert_eq!(f.lsn, next);
            next += 1;
        }
    }
    assert_eq!(next, written.len() as u64 + 1);

    // Truncate, reopen, append.
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    let cut = written.len() as u64 / 2;
    let expected_first = segments.iter().map(|s| segment_first_lsn(s)).filter(|&f| f <= cut).max().unwrap();
    let removed = wal.truncate_before(cut).unwrap();
    assert!(removed > 0);
    assert_eq!(segment_files(dir.path()).len(), segments.len() - removed);
    let first = wal.first_lsn();
    assert_eq!(first, expected_first);
    assert!(first > 1 && first <= cut);
    assert!(
        matches!(wal.iter_from(first - 1), Err(Error::Truncated { lsn, first: f }) if lsn == first - 1 && f == first)
    );
    assert!(matches!(wal.iter_from(1), Err(Error::Truncated { lsn: 1, .. })));
    assert_eq!(collect(wal.iter_from(first).unwrap(), first), &written[first as usize - 1..]);
    assert_eq!(collect(wal.iter_from(cut).unwrap(), cut), &written[cut as usize - 1..]);
    // Truncating again at or below the first LSN is a no-op.
    assert_eq!(wal.truncate_before(first).unwrap(), 0);
    drop(wal);

    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(wal.first_lsn(), first);
    assert_eq!(wal.last_lsn(), written.len() as u64);
    let next = wal.append(b"after truncation").unwrap();
    assert_eq!(next, written.len() as u64 + 1);
    written.push(b"after truncation".to_vec());
    assert_eq!(contents(&wal), &written[first as usize - 1..]);
    assert!(matches!(wal.iter_from(first - 1), Err(Error::Truncated { .. })));

    // Truncating past the end keeps the active segment, so LSNs go on.
    wal.truncate_before(u64::MAX).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    let active_first = segment_first_lsn(&segment_files(dir.path())[0]);
    assert_eq!(wal.first_lsn(), active_first);
    assert_eq!(wal.append(b"still counting").unwrap(), written.len() as u64 + 1);
    written.push(b"still counting".to_vec());
    drop(wal);

    let summary = LogReader::open(dir.path(), &o).unwrap().summary();
    assert_eq!((summary.first_lsn, summary.last_lsn), (active_first, written.len() as u64));
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(wal.first_lsn(), active_first);
    assert_eq!(contents(&wal), &written[active_first as usize - 1..]);
    assert_eq!(wal.append(b"and on").unwrap(), written.len() as u64 + 1);
}

// ---------------------------------------------------------------------------
// Property: a random sequence of operations against a model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Batch(Vec<Vec<u8>>),
    /// A record larger than a segment.
    Big(usize),
    Reopen,
    /// `truncate_before` at this value modulo (last LSN + 3).
    Truncate(u16),
    /// `iter_from` at this value modulo (last LSN + 3).
    Iter(u16),
    Sync,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Op::Append),
        3 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..5).prop_map(Op::Batch),
        1 => (4100usize..6000).prop_map(Op::Big),
        2 => Just(Op::Reopen),
        2 => any::<u16>().prop_map(Op::Truncate),
        2 => any::<u16>().prop_map(Op::Iter),
        1 => Just(Op::Sync),
    ]
}

fn policy_strategy() -> impl Strategy<Value = SyncPolicy> {
    prop_oneof![Just(SyncPolicy::Always), Just(SyncPolicy::batch()), Just(SyncPolicy::None)]
}

fn check_against_model(wal: &Wal, model: &[Vec<u8>], first: Lsn) -> Result<(), TestCaseError> {
    prop_assert_eq!(wal.last_lsn(), model.len() as u64);
    prop_assert_eq!(wal.first_lsn(), first);
    let got = contents(wal);
    prop_assert!(
        got == model[first as usize - 1..],
        "log holds {} records from {first}, model {}",
        got.len(),
        model.len()
    );
    Ok(())
}

fn run_model(sync: SyncPolicy, preallocate: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let o = options(sync, SEGMENT, preallocate);
    let dir = tempfile::tempdir().unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut first: Lsn = 1;
    let mut wal = Some(Wal::open(dir.path(), o.clone()).unwrap());
    for op in ops {
        let w = wal.as_ref().unwrap();
        let next = model.len() as u64 + 1;
        match op {
            Op::Append(p) => {
                prop_assert_eq!(w.append(&p).unwrap(), next);
                model.push(p);
            }
            Op::Batch(b) => {
                prop_assert_eq!(w.append_batch(&b).unwrap(), next..next + b.len() as u64);
                model.extend(b);
            }
            Op::Big(len) => {
                let p: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                prop_assert_eq!(w.append(&p).unwrap(), next);
                model.push(p);
            }
            Op::Reopen => {
                drop(wal.take());
                let w = Wal::open(dir.path(), o.clone()).unwrap();
                check_against_model(&w, &model, first)?;
                wal = Some(w);
            }
            Op::Truncate(t) => {
                let t = t as u64 % (model.len() as u64 + 3);
                let before = segment_files(dir.path());
                let firsts: Vec<Lsn> = before.iter().map(|s| segment_first_lsn(s)).collect();
                let removable = firsts.windows(2).take_while(|w| w[1] <= t).count();
                prop_assert_eq!(w.truncate_before(t).unwrap(), removable);
                prop_assert_eq!(segment_files(dir.path()), before[removable..].to_vec());
                first = firsts[removable];
                prop_assert!(first <= t.max(1) || removable == 0);
                check_against_model(w, &model, first)?;
            }
            Op::Iter(k) => {
                let k = k as u64 % (model.len() as u64 + 3);
                match w.iter_from(k) {
                    Ok(iter) => {
                        prop_assert!(k.max(1) >= first, "iter_from({}) below first LSN {} succeeded", k, first);
                        let from = k.max(1);
                        let got = collect(iter, from);
                        let want = model.get(from as usize - 1..).unwrap_or(&[]);
                        prop_assert!(got == want, "iter_from({k}) returned {} records", got.len());
                    }
                    Err(Error::Truncated { lsn, first: f }) => {
                        prop_assert!(k.max(1) < first);
                        prop_assert_eq!((lsn, f), (k.max(1), first));
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("iter_from({k}): {e}"))),
                }
            }
            Op::Sync => {
                prop_assert_eq!(w.sync().unwrap(), model.len() as u64);
                prop_assert_eq!(w.durable_lsn(), model.len() as u64);
            }
        }
    }
    drop(wal);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    check_against_model(&wal, &model, first)?;
    drop(wal);
    prop_assert!(stray_files(dir.path()).is_empty(), "left behind: {:?}", stray_files(dir.path()));
    prop_assert_eq!(reader_contents(dir.path(), &o), model[first as usize - 1..].to_vec());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_operations_match_a_model(
        sync in policy_strategy(),
        preallocate: bool,
        ops in prop::collection::vec(op_strategy(), 1..45),
    ) {
        run_model(sync, preallocate, ops)?;
    }
}

// ---------------------------------------------------------------------------
// Property: damage to the last segment
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Damage {
    /// Flip these bits (positions modulo the interesting part of the file).
    Flip(Vec<(u32, u8)>),
    /// Write these bytes (possibly past the end of the file).
    Garbage { at: u32, bytes: Vec<u8> },
    /// Zero a range of the records.
    Zero { at: u32, len: u16 },
    /// Truncate the file.
    Cut(u32),
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec((any::<u32>(), 0u8..8), 1..4).prop_map(Damage::Flip),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 1..200))
            .prop_map(|(at, bytes)| Damage::Garbage { at, bytes }),
        (any::<u32>(), 1u16..300).prop_map(|(at, len)| Damage::Zero { at, len }),
        any::<u32>().prop_map(Damage::Cut),
    ]
}

/// A commit unit for the fixture: the payload lengths of its records (more
/// than one: a batch).
fn unit_strategy() -> impl Strategy<Value = Vec<usize>> {
    // Empty records are common enough to get their own weight.
    let len = |max: usize| prop_oneof![1 => Just(0usize), 5 => 1..max];
    prop_oneof![
        3 => len(120).prop_map(|n| vec![n]),
        1 => prop::collection::vec(len(60), 2..4),
    ]
}

fn run_damage(
    sync: SyncPolicy,
    preallocate: bool,
    plan: Vec<Vec<usize>>,
    damage: Damage,
    seed: u64,
) -> Result<(), TestCaseError> {
    let o = options(sync, SEGMENT, preallocate);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut written = Vec::new();
    {
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        for lens in plan {
            let unit: Vec<Vec<u8>> = lens.iter().map(|&n| bytes(&mut rng, n)).collect();
            let batch = unit.len() > 1;
            append_unit(&wal, &mut written, unit, batch);
        }
    }
    let segments = segment_files(dir.path());
    let last = segments.last().unwrap().clone();
    let frames = frames_of(&last);
    let units = units_of(&frames);
    let last_first = segment_first_lsn(&last);
    let data_end = frames.last().map_or(SEGMENT_HEADER_LEN as u64, |f| f.end);
    let old = fs::read(&last).unwrap();
    let span = (data_end + 64).min(old.len() as u64).max(1);

    match &damage {
        Damage::Flip(flips) => {
            for &(pos, bit) in flips {
                flip_bit(&last, pos as u64 % span, bit);
            }
        }
        Damage::Garbage { at, bytes } => write_at(&last, *at as u64 % (data_end + 64), bytes),
        Damage::Zero { at, len } => {
            let at = *at as u64 % data_end;
            write_at(&last, at, &vec![0u8; (*len as u64).min(data_end - at) as usize]);
        }
        Damage::Cut(at) => set_len(&last, *at as u64 % (old.len() as u64 + 1)),
    }
    let new = fs::read(&last).unwrap();
    // Offsets whose content changed; a byte cut off counts if it held a record.
    let changed = |i: usize| match (old.get(i), new.get(i)) {
        (Some(a), Some(b)) => a != b,
        (Some(_), None) => (i as u64) < data_end,
        (None, Some(b)) => *b != 0,
        (None, None) => false,
    };
    let limit = old.len().max(new.len());
    let first_change = (0..limit).find(|&i| changed(i)).map_or(u64::MAX, |i| i as u64);

    // The records that must survive: earlier segments, and the commit units
    // of the last segment that end before the first changed byte.
    let kept = units.iter().filter(|u| u.end <= first_change).map(|u| u.last).max().unwrap_or(last_first - 1);
    let kept = if first_change < SEGMENT_HEADER_LEN as u64 { last_first - 1 } else { kept };
    let expected = &written[..kept as usize];
    // An intact frame flagged SYNCED_BEFORE after the damage proves the
    // damaged bytes had been durable.
    let proof = first_change < data_end
        && frames.iter().any(|f| {
            f.start > first_change
                && f.flags & FLAG_SYNCED_BEFORE != 0
                && (f.start as usize..f.end as usize).all(|i| !changed(i))
        });
    let header_damaged = first_change < SEGMENT_HEADER_LEN as u64;
    let damaged_frame = frames.iter().find(|f| f.end > first_change).map(|f| f.start);

    // Read-only reader and strict open agree and are exact.
    let strict = Wal::open(dir.path(), o.clone());
    match strict {
        Ok(wal) => {
            prop_assert!(!proof && !header_damaged, "strict open succeeded despite durable damage");
            prop_assert_eq!(wal.last_lsn(), kept);
            prop_assert!(contents(&wal) == expected, "strict open recovered the wrong records");
        }
        Err(Error::Corrupt { segment, offset, .. }) => {
            prop_assert!(proof || header_damaged, "corrupt reported at {} for damage at {}", offset, first_change);
            prop_assert_eq!(&segment, &last);
            let want = if header_damaged { 0 } else { damaged_frame.unwrap() };
            prop_assert_eq!(offset, want);
            match LogReader::open(dir.path(), &o) {
                Err(Error::Corrupt { offset: ro, .. }) => prop_assert_eq!(ro, offset),
                Err(e) => return Err(TestCaseError::fail(format!("reader: {e}"))),
                Ok(_) => return Err(TestCaseError::fail("reader opened a log Wal::open calls corrupt")),
            }
        }
        Err(e) => return Err(TestCaseError::fail(format!("strict open: {e}"))),
    }

    // Repair always opens, keeps exactly the undamaged prefix, and the log
    // goes on from there without reusing the LSN of any record still
    // readable in the damaged segment.
    let corrupt = proof || header_damaged;
    let highest_intact = frames
        .iter()
        .filter(|f| (f.start as usize..f.end as usize).all(|i| !changed(i)))
        .map(|f| f.lsn)
        .max()
        .unwrap_or(0);
    let wal = Wal::open(dir.path(), o.clone().recovery(RecoveryMode::Repair))
        .map_err(|e| TestCaseError::fail(format!("repair: {e}")))?;
    let held: Vec<Vec<u8>> = records(&wal).into_iter().map(|(_, p)| p).collect();
    prop_assert!(held == expected, "repair recovered the wrong records");
    let next = wal.append(b"after").unwrap();
    if corrupt {
        prop_assert!(next > kept.max(highest_intact), "LSN {} handed out again", next);
    } else {
        prop_assert_eq!(next, kept + 1);
    }
    drop(wal);
    let wal = Wal::open(dir.path(), o.clone()).map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
    prop_assert_eq!(wal.last_lsn(), next);
    let mut want: Vec<(Lsn, Vec<u8>)> = expected.iter().cloned().enumerate().map(|(i, p)| (i as u64 + 1, p)).collect();
    want.push((next, b"after".to_vec()));
    prop_assert!(records(&wal) == want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_damage_to_the_last_segment_recovers_a_prefix(
        sync in prop_oneof![Just(SyncPolicy::Always), Just(SyncPolicy::None)],
        preallocate: bool,
        plan in prop::collection::vec(unit_strategy(), 1..30),
        damage in damage_strategy(),
        seed: u64,
    ) {
        run_damage(sync, preallocate, plan, damage, seed)?;
    }
}

// ---------------------------------------------------------------------------
// quickcheck: iter_from(k) yields exactly the records with LSN >= k
// ---------------------------------------------------------------------------

fn qc_iter_from(payloads: Vec<Vec<u8>>, truncate: u16, ks: Vec<u16>) -> TestResult {
    let o = options(SyncPolicy::None, SEGMENT, false);
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    for (i, p) in payloads.iter().enumerate() {
        if wal.append(p).unwrap() != i as u64 + 1 {
            return TestResult::error("append returned a wrong LSN");
        }
    }
    let n = payloads.len() as u64;
    wal.truncate_before(truncate as u64 % (n + 2)).unwrap();
    let first = wal.first_lsn();
    let expect = |k: u64| -> Option<Vec<(Lsn, Vec<u8>)>> {
        let k = k.max(1);
        (k >= first).then(|| payloads.iter().cloned().zip(1..).filter(|(_, l)| *l >= k).map(|(p, l)| (l, p)).collect())
    };
    let run = |iter: walrus::wal::Result<WalIter>| -> Option<Vec<(Lsn, Vec<u8>)>> {
        match iter {
            Ok(it) => Some(it.map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect()),
            Err(Error::Truncated { .. }) => None,
            Err(e) => panic!("iter_from: {e}"),
        }
    };
    for &k in &ks {
        let k = k as u64 % (n + 3);
        if run(wal.iter_from(k)) != expect(k) {
            return TestResult::error(format!("Wal::iter_from({k}) with first LSN {first}"));
        }
    }
    drop(wal);
    let reader = LogReader::open(dir.path(), &o).unwrap();
    for &k in &ks {
        let k = k as u64 % (n + 3);
        if run(reader.iter_from(k)) != expect(k) {
            return TestResult::error(format!("LogReader::iter_from({k}) with first LSN {first}"));
        }
    }
    TestResult::passed()
}

#[test]
fn quickcheck_iter_from_returns_exactly_the_records_from_k() {
    QuickCheck::new().tests(60).quickcheck(qc_iter_from as fn(Vec<Vec<u8>>, u16, Vec<u16>) -> TestResult);
}

// ---------------------------------------------------------------------------
// Drop
// ---------------------------------------------------------------------------

/// Under a durable policy, a record from `append_nowait` that nobody waited
/// for is made durable when the log is dropped, not silently lost.
#[test]
fn append_nowait_records_survive_drop_under_durable_policies() {
    for sync in [SyncPolicy::Always, SyncPolicy::batch()] {
        let o = options(sync, SEGMENT, true);
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        assert_eq!(wal.append(b"waited").unwrap(), 1);
        assert_eq!(wal.append_nowait(b"never waited for").unwrap(), 2);
        assert_eq!(wal.append_nowait(b"nor this one").unwrap(), 3);
        assert_eq!(wal.durable_lsn(), 1, "{sync:?}: nothing synced the unwaited records yet");
        drop(wal);

        let wal = Wal::open(dir.path(), o.clone()).unwrap();
        assert_eq!(wal.last_lsn(), 3, "{sync:?}");
        assert_eq!(
            contents(&wal),
            vec![b"waited".to_vec(), b"never waited for".to_vec(), b"nor this one".to_vec()],
            "{sync:?}"
        );
    }
}
