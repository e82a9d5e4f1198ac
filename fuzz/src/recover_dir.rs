//! The `recover_dir` target: recovery of a log directory built from the
//! input by real appends and by arbitrary damage to the segment files.
//!
//! An input is a flags byte followed by operations, applied in order to a
//! fresh directory. Appends go through [`Wal::open`] + [`Wal::append`] (the
//! log is opened on the first append after a file edit and closed before
//! the next edit); edits change the `*.wal` files directly.
//!
//! Flags: bit 0: `SyncPolicy::Always` (else `None`); bit 1:
//! `RecoveryMode::Repair` (else `Strict`); bit 2: after the checks, append
//! one more record to the recovered log and check it is read back.
//!
//! Each operation is a tag byte (taken modulo [`OP_COUNT`]) and its fields;
//! integers are little-endian, `seg` picks an existing segment file (modulo
//! their number, in name order), and a field cut short by the end of the
//! input is zero or shorter. See [`Op`] for the fields.
//!
//! Then, on the resulting directory:
//! - `LogReader::open` must not panic; if it succeeds, reading every record
//!   it reports must succeed and match its summary.
//! - `Wal::open` must not panic. In strict mode it succeeds exactly when
//!   `LogReader::open` did (neither fails with anything but `Corrupt`),
//!   and then recovers the same records. In repair mode it must succeed
//!   (and LSNs may then skip ahead past discarded ones, never back; a log
//!   built in repair mode may have been repaired before the checks, too).
//! - If `Wal::open` succeeds, reading every record must succeed; after
//!   closing it, `LogReader::open` must succeed with the same records and no
//!   torn tail, and a second `Wal::open` must succeed with the same records
//!   and leave every segment file byte for byte as it was.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use walrus::wal::format::{encode_frame, SegmentHeader, MAX_LSN};
use walrus::wal::{Error, LogReader, Lsn, Record, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::Bytes;

/// Number of operation kinds; a tag byte selects `tag % OP_COUNT`.
pub const OP_COUNT: u8 = 10;
/// Longest payload of an `Append`, and longest byte string of other operations.
pub const MAX_CHUNK: usize = 4096;
/// Segment size of the log under test (the smallest allowed).
pub const SEGMENT_SIZE: u64 = 4096;
/// Record size limit of the log under test.
pub const MAX_RECORD: u32 = 1 << 20;
/// Payload of the record appended after recovery when flag bit 2 is set.
pub const PROBE: &[u8] = b"appended after recovery";
/// Highest LSN an input can put into a segment name or a crafted frame.
///
/// Upper bound on LSNs an input names. The log itself refuses headers above
/// `format::MAX_LSN` and appends past it, so the whole range is explored.
pub const LSN_CEILING: u64 = u64::MAX;

/// What an input asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub sync_always: bool,
    pub repair: bool,
    pub append_after: bool,
    pub ops: Vec<Op>,
}

/// One step of a [`Plan`]. Byte layout after the tag byte in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// 0 [len: u16, payload]: `Wal::append` (len capped at `MAX_CHUNK`).
    Append(Vec<u8>),
    /// 1 [count: u8 (1 + count % 8 records), then per record len: u8, payload]:
    /// `Wal::append_batch`.
    Batch(Vec<Vec<u8>>),
    /// 2 [seg: u8, offset: u16, len: u8, bytes]: overwrite bytes in place
    /// (may extend the file).
    Overwrite { seg: u8, offset: u16, bytes: Vec<u8> },
    /// 3 [seg: u8, len: u16, bytes]: append bytes at the end of the file.
    Extend { seg: u8, bytes: Vec<u8> },
    /// 4 [seg: u8, len: u16]: truncate the file, or extend it with zeros.
    SetLen { seg: u8, len: u16 },
    /// 5 [seg: u8, bit: u16]: flip bit `bit % (8 * file length)`.
    FlipBit { seg: u8, bit: u16 },
    /// 6 [seg: u8]: delete the file.
    Remove { seg: u8 },
    /// 7 [lsn: Lsn, len: u16, bytes]: write a file named as the segment of
    /// `lsn` with arbitrary contents. (All LSNs an input names are capped at
    /// [`LSN_CEILING`] when applied.)
    RawSegment { lsn: u64, bytes: Vec<u8> },
    /// 8 [lsn: Lsn, salt: u32, count: u8 (count % 16 frames), then per frame
    /// delta: i8, kind: u8, flags: u8, len: u8, payload]: write the segment
    /// of `lsn` with a valid header and frames with valid checksums; frame
    /// `i` has LSN `lsn + i + delta`.
    CraftedSegment { lsn: u64, salt: u32, frames: Vec<CraftedFrame> },
    /// 9 [which: u8, len: u16, bytes]: write `next-segment.tmp` (even
    /// `which`) or `new-segment.tmp` (odd), which open must delete.
    TempFile { which: u8, bytes: Vec<u8> },
}

/// A frame of [`Op::CraftedSegment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CraftedFrame {
    pub delta: i8,
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

// An `Lsn` field is one byte t: t < 0xF0 is the LSN t; 0xF0..=0xF7 is
// u64::MAX - (t - 0xF0); 0xF8..=0xFF is followed by the LSN as u64.
fn read_lsn(b: &mut Bytes<'_>) -> u64 {
    match b.u8() {
        t @ 0..=0xEF => u64::from(t),
        t @ 0xF0..=0xF7 => u64::MAX - u64::from(t - 0xF0),
        _ => b.u64(),
    }
}

fn write_lsn(out: &mut Vec<u8>, lsn: u64) {
    if lsn < 0xF0 {
        out.push(lsn as u8);
    } else if lsn >= u64::MAX - 7 {
        out.push(0xF0 + (u64::MAX - lsn) as u8);
    } else {
        out.push(0xF8);
        out.extend_from_slice(&lsn.to_le_bytes());
    }
}

fn read_chunk(b: &mut Bytes<'_>) -> Vec<u8> {
    let len = usize::from(b.u16()).min(MAX_CHUNK);
    b.take(len).to_vec()
}

fn write_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    assert!(bytes.len() <= MAX_CHUNK);
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn write_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(u8::try_from(bytes.len()).expect("at most 255 bytes"));
    out.extend_from_slice(bytes);
}

impl Plan {
    pub fn parse(data: &[u8]) -> Plan {
        let mut b = Bytes::new(data);
        let flags = b.u8();
        let mut plan =
            Plan { sync_always: flags & 1 != 0, repair: flags & 2 != 0, append_after: flags & 4 != 0, ops: Vec::new() };
        while !b.is_empty() {
            let op = match b.u8() % OP_COUNT {
                0 => Op::Append(read_chunk(&mut b)),
                1 => {
                    let n = 1 + usize::from(b.u8() % 8);
                    Op::Batch(
                        (0..n)
                            .map(|_| {
                                let len = b.u8();
                                b.take(len.into()).to_vec()
                            })
                            .collect(),
                    )
                }
                2 => {
                    let seg = b.u8();
                    let offset = b.u16();
                    let len = b.u8();
                    Op::Overwrite { seg, offset, bytes: b.take(len.into()).to_vec() }
                }
                3 => Op::Extend { seg: b.u8(), bytes: read_chunk(&mut b) },
                4 => Op::SetLen { seg: b.u8(), len: b.u16() },
                5 => Op::FlipBit { seg: b.u8(), bit: b.u16() },
                6 => Op::Remove { seg: b.u8() },
                7 => Op::RawSegment { lsn: read_lsn(&mut b), bytes: read_chunk(&mut b) },
                8 => {
                    let lsn = read_lsn(&mut b);
                    let salt = b.u32();
                    let n = b.u8() % 16;
                    let frames = (0..n)
                        .map(|_| {
                            let delta = b.u8() as i8;
                            let kind = b.u8();
                            let flags = b.u8();
                            let len = b.u8();
                            CraftedFrame { delta, kind, flags, payload: b.take(len.into()).to_vec() }
                        })
                        .collect();
                    Op::CraftedSegment { lsn, salt, frames }
                }
                _ => Op::TempFile { which: b.u8(), bytes: read_chunk(&mut b) },
            };
            plan.ops.push(op);
        }
        plan
    }

    /// The input bytes that parse back to this plan.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.sync_always) | u8::from(self.repair) << 1 | u8::from(self.append_after) << 2];
        for op in &self.ops {
            match op {
                Op::Append(p) => {
                    out.push(0);
                    write_chunk(&mut out, p);
                }
                Op::Batch(records) => {
                    assert!((1..=8).contains(&records.len()));
                    out.push(1);
                    out.push(records.len() as u8 - 1);
                    for r in records {
                        write_short(&mut out, r);
                    }
                }
                Op::Overwrite { seg, offset, bytes } => {
                    out.extend_from_slice(&[2, *seg]);
                    out.extend_from_slice(&offset.to_le_bytes());
                    write_short(&mut out, bytes);
                }
                Op::Extend { seg, bytes } => {
                    out.extend_from_slice(&[3, *seg]);
                    write_chunk(&mut out, bytes);
                }
                Op::SetLen { seg, len } => {
                    out.extend_from_slice(&[4, *seg]);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Op::FlipBit { seg, bit } => {
                    out.extend_from_slice(&[5, *seg]);
                    out.extend_from_slice(&bit.to_le_bytes());
                }
                Op::Remove { seg } => out.extend_from_slice(&[6, *seg]),
                Op::RawSegment { lsn, bytes } => {
                    out.push(7);
                    write_lsn(&mut out, *lsn);
                    write_chunk(&mut out, bytes);
                }
                Op::CraftedSegment { lsn, salt, frames } => {
                    assert!(frames.len() < 16);
                    out.push(8);
                    write_lsn(&mut out, *lsn);
                    out.extend_from_slice(&salt.to_le_bytes());
                    out.push(frames.len() as u8);
                    for f in frames {
                        out.extend_from_slice(&[f.delta as u8, f.kind, f.flags]);
                        write_short(&mut out, &f.payload);
                    }
                }
                Op::TempFile { which, bytes } => {
                    out.extend_from_slice(&[9, *which]);
                    write_chunk(&mut out, bytes);
                }
            }
        }
        out
    }

    /// Options of the log under test.
    pub fn options(&self) -> WalOptions {
        let sync = if self.sync_always { SyncPolicy::Always } else { SyncPolicy::None };
        let mut opts = WalOptions::new(sync).segment_size(SEGMENT_SIZE).recovery(if self.repair {
            RecoveryMode::Repair
        } else {
            RecoveryMode::Strict
        });
        opts.preallocate = false;
        opts.max_record_size = MAX_RECORD;
        opts
    }
}

/// `lsn`, capped at [`LSN_CEILING`]. (A no-op while the ceiling is
/// `u64::MAX`; it stays a knob for runs that want to avoid the top of the
/// LSN space.)
#[allow(clippy::unnecessary_min_or_max)]
fn capped(lsn: u64) -> u64 {
    lsn.min(LSN_CEILING)
}

/// Where the fuzz directories go: `$WALRUS_FUZZ_TMPDIR`, else `/dev/shm` if
/// it exists (the log syncs a lot; memory makes that free), else the
/// system's temporary directory.
pub(crate) fn temp_base() -> PathBuf {
    if let Some(p) = std::env::var_os("WALRUS_FUZZ_TMPDIR") {
        return p.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// Builds the directory an input describes and runs every check on it.
/// Panics on a violated invariant.
pub fn check(data: &[u8]) {
    let plan = Plan::parse(data);
    let tmp = tempfile::Builder::new().prefix("walrus-fuzz-").tempdir_in(temp_base()).expect("creating a temp dir");
    let dir = tmp.path().join("log");
    fs::create_dir(&dir).expect("creating the log dir");
    build(&dir, &plan);
    verify(&dir, &plan);
}

/// Segment files (`*.wal`) of `dir`, in name order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("listing the log dir")
        .map(|e| e.expect("listing the log dir").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn pick(dir: &Path, seg: u8) -> Option<PathBuf> {
    let files = segment_files(dir);
    if files.is_empty() {
        return None;
    }
    let i = usize::from(seg) % files.len();
    Some(files[i].clone())
}

fn open_rw(path: &Path) -> fs::File {
    OpenOptions::new().read(true).write(true).open(path).expect("opening a segment file")
}

/// Applies the plan's operations to `dir` (an existing, empty directory):
/// the directory an input describes, before any checks.
pub fn build(dir: &Path, plan: &Plan) {
    let opts = plan.options();
    // The log is opened lazily for appends; `refused` remembers that it
    // could not be opened since the last edit (so it is not retried).
    let mut wal: Option<Wal> = None;
    let mut refused = false;
    for op in &plan.ops {
        if let Op::Append(_) | Op::Batch(_) = op {
            if wal.is_none() && !refused {
                match Wal::open(dir, opts.clone()) {
                    Ok(w) => wal = Some(w),
                    Err(_) => refused = true,
                }
            }
            let Some(w) = &wal else { continue };
            let (result, count) = match op {
                Op::Append(p) => (w.append(p).map(drop), 1),
                Op::Batch(records) => (w.append_batch(records).map(drop), records.len() as u64),
                _ => unreachable!(),
            };
            if let Err(e) = result {
                // The one refusal a healthy log may give: a crafted segment
                // can start just below the largest LSN.
                let exhausted = w.last_lsn().saturating_add(count) > MAX_LSN;
                assert!(exhausted, "append to a log that opened failed: {e}");
            }
            continue;
        }
        if let Some(w) = wal.take() {
            w.close().expect("closing the log");
        }
        refused = false;
        edit(dir, op);
    }
    if let Some(w) = wal.take() {
        w.close().expect("closing the log");
    }
}

fn edit(dir: &Path, op: &Op) {
    match op {
        Op::Append(_) | Op::Batch(_) => unreachable!(),
        Op::Overwrite { seg, offset, bytes } => {
            if let Some(p) = pick(dir, *seg) {
                open_rw(&p).write_all_at(bytes, u64::from(*offset)).expect("overwriting");
            }
        }
        Op::Extend { seg, bytes } => {
            if let Some(p) = pick(dir, *seg) {
                let f = open_rw(&p);
                let len = f.metadata().expect("stat").len();
                f.write_all_at(bytes, len).expect("extending");
            }
        }
        Op::SetLen { seg, len } => {
            if let Some(p) = pick(dir, *seg) {
                open_rw(&p).set_len(u64::from(*len)).expect("set_len");
            }
        }
        Op::FlipBit { seg, bit } => {
            if let Some(p) = pick(dir, *seg) {
                let f = open_rw(&p);
                let len = f.metadata().expect("stat").len();
                if len > 0 {
                    let bit = u64::from(*bit) % (len * 8);
                    let mut b = [0u8];
                    f.read_exact_at(&mut b, bit / 8).expect("reading");
                    b[0] ^= 1 << (bit % 8);
                    f.write_all_at(&b, bit / 8).expect("writing");
                }
            }
        }
        Op::Remove { seg } => {
            if let Some(p) = pick(dir, *seg) {
                fs::remove_file(p).expect("removing");
            }
        }
        Op::RawSegment { lsn, bytes } => {
            let lsn = capped(*lsn);
            fs::write(dir.join(segment_file_name(lsn)), bytes).expect("writing a segment");
        }
        Op::CraftedSegment { lsn, salt, frames } => {
            let lsn = capped(*lsn);
            let mut buf = SegmentHeader { salt: *salt, first_lsn: lsn }.encode().to_vec();
            for (i, f) in frames.iter().enumerate() {
                let frame_lsn = lsn.wrapping_add(i as u64).wrapping_add(f.delta as i64 as u64);
                let frame_lsn = capped(frame_lsn);
                encode_frame(&mut buf, *salt, frame_lsn, f.kind, f.flags, &f.payload);
            }
            fs::write(dir.join(segment_file_name(lsn)), buf).expect("writing a segment");
        }
        Op::TempFile { which, bytes } => {
            let name = if which % 2 == 0 { "next-segment.tmp" } else { "new-segment.tmp" };
            fs::write(dir.join(name), bytes).expect("writing a temp file");
        }
    }
}

/// The name of the segment whose first LSN is `lsn` (see `docs/FORMAT.md`).
pub fn segment_file_name(lsn: u64) -> String {
    format!("{lsn:020}.wal")
}

/// Every record from `first` on, checked to be consecutive.
/// Reads every record; LSNs must run consecutively from `first`, except
/// that with `gaps` (a repaired log) they may skip ahead, never back.
fn collect(iter: impl Iterator<Item = walrus::wal::Result<Record>>, first: Lsn, gaps: bool, what: &str) -> Vec<Record> {
    let records: Vec<Record> = match iter.collect() {
        Ok(r) => r,
        Err(e) => panic!("{what}: reading the records failed: {e}"),
    };
    if gaps {
        let mut prev = first.wrapping_sub(1);
        for r in &records {
            assert!(r.lsn > prev || prev == u64::MAX, "{what}: LSN {} after {prev}", r.lsn);
            prev = r.lsn;
        }
        return records;
    }
    for (i, r) in records.iter().enumerate() {
        assert_eq!(Some(r.lsn), first.checked_add(i as u64), "{what}: LSNs are not consecutive from {first}");
    }
    records
}

/// Reads a directory with `LogReader`, checking the records against the summary.
fn read_with_log_reader(reader: &LogReader, gaps: bool, what: &str) -> Vec<Record> {
    let s = reader.summary();
    let iter = match reader.iter_from(s.first_lsn) {
        Ok(it) => it,
        Err(e) => panic!("{what}: LogReader::iter_from({}) failed: {e}", s.first_lsn),
    };
    let records = collect(iter, s.first_lsn, gaps, what);
    assert_eq!(records.len() as u64, s.records, "{what}: record count differs from the summary");
    assert_eq!(
        records.iter().map(|r| r.payload.len() as u64).sum::<u64>(),
        s.payload_bytes,
        "{what}: payload bytes differ from the summary"
    );
    let span_end = s.first_lsn.wrapping_add(s.records).wrapping_sub(1);
    if gaps {
        assert!(s.last_lsn >= span_end, "{what}: last LSN is below first LSN and count");
    } else {
        assert_eq!(s.last_lsn, span_end, "{what}: last LSN does not follow from first LSN and count");
    }
    records
}

/// Reads a whole open log.
fn read_with_wal(wal: &Wal, gaps: bool, what: &str) -> Vec<Record> {
    let first = wal.first_lsn();
    let iter = match wal.iter_from(first) {
        Ok(it) => it,
        Err(e) => panic!("{what}: Wal::iter_from({first}) failed: {e}"),
    };
    let records = collect(iter, first, gaps, what);
    let expected_last = records.last().map_or(first.wrapping_sub(1), |r| r.lsn);
    if gaps {
        // A repair may skip LSNs past the last record kept.
        assert!(wal.last_lsn() >= expected_last, "{what}: last_lsn is below the records read");
    } else {
        assert_eq!(wal.last_lsn(), expected_last, "{what}: last_lsn disagrees with the records read");
    }
    records
}

/// Names and contents of every segment file.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    segment_files(dir).into_iter().map(|p| (p.clone(), fs::read(&p).expect("reading a segment"))).collect()
}

fn verify(dir: &Path, plan: &Plan) {
    let opts = plan.options();
    let strict = !plan.repair;

    let before = match LogReader::open(dir, &opts) {
        Ok(reader) => Some(read_with_log_reader(&reader, !strict, "LogReader before recovery")),
        Err(Error::Corrupt { .. }) => None,
        Err(e) => panic!("LogReader::open failed with a non-corruption error: {e}"),
    };

    let wal = match Wal::open(dir, opts.clone()) {
        Ok(w) => w,
        Err(Error::Corrupt { .. }) if strict && before.is_none() => return,
        Err(Error::Corrupt { .. }) if !strict => panic!("Wal::open in repair mode reported corruption"),
        Err(e) => panic!("Wal::open failed (LogReader::open ok: {}): {e}", before.is_some()),
    };
    assert!(before.is_some() || !strict, "Wal::open succeeded in strict mode on a log LogReader rejects");
    let first_lsn = wal.first_lsn();
    let records = read_with_wal(&wal, !strict, "first Wal::open");
    if strict {
        let before = before.as_ref().expect("checked above");
        assert_eq!(&records, before, "Wal::open recovered other records than LogReader reported");
    }
    wal.close().expect("closing the recovered log");
    let recovered = snapshot(dir);

    let reader = match LogReader::open(dir, &opts) {
        Ok(r) => r,
        Err(e) => panic!("LogReader::open failed on a recovered log: {e}"),
    };
    assert_eq!(reader.summary().torn_tail, None, "recovered log still has a torn tail");
    assert_eq!(reader.summary().first_lsn, first_lsn, "LogReader first LSN differs after recovery");
    assert_eq!(read_with_log_reader(&reader, !strict, "LogReader after recovery"), records);

    let wal = match Wal::open(dir, opts.clone()) {
        Ok(w) => w,
        Err(e) => panic!("second Wal::open failed: {e}"),
    };
    assert_eq!(wal.first_lsn(), first_lsn, "second Wal::open has another first LSN");
    assert_eq!(read_with_wal(&wal, !strict, "second Wal::open"), records, "second Wal::open recovered other records");
    wal.close().expect("closing the log");
    assert!(snapshot(dir) == recovered, "second Wal::open changed the segment files");

    if plan.append_after {
        let wal = Wal::open(dir, opts.clone()).expect("third Wal::open");
        if wal.last_lsn() >= MAX_LSN {
            // A crafted segment can fill the LSN space: the log refuses
            // more, and says why.
            let err = wal.append(PROBE).expect_err("an append past the largest LSN");
            assert!(err.to_string().contains("LSN space exhausted"), "{err}");
            return;
        }
        let expected = wal.last_lsn() + 1;
        let lsn = wal.append(PROBE).expect("appending after recovery");
        assert_eq!(lsn, expected, "append after recovery got an unexpected LSN");
        wal.close().expect("closing the log");
        let wal = Wal::open(dir, opts).expect("Wal::open after the extra append");
        let mut want = records;
        want.push(Record { lsn, payload: PROBE.to_vec() });
        assert_eq!(read_with_wal(&wal, !strict, "Wal::open after the extra append"), want);
    }
}
