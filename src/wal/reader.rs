//! Reading records back: the iterator shared by [`Wal::iter_from`] and the
//! read-only [`LogReader`] used by `walrus log dump` and `verify`.
//!
//! [`Wal::iter_from`]: super::Wal::iter_from

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{Error, Result};
use super::recovery::{scan_dir, Scan};
use super::segment::{SegmentReader, Step};
use super::{Lsn, WalOptions};

/// One record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its log sequence number.
    pub lsn: Lsn,
    /// The bytes that were appended.
    pub payload: Vec<u8>,
}

/// Where some records are, so that reading from a record in the middle of
/// a segment does not read the segment from its start: every
/// [`Positions::STRIDE`] bytes or so of each segment, the LSN of a record,
/// its segment (by first LSN) and its offset, learnt by the iterators as
/// they read. Only a hint: a reader checks that the record it finds there
/// is the one expected, and reads from the segment's start otherwise.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    pub(crate) by_lsn: BTreeMap<Lsn, (Lsn, u64)>,
}

impl Positions {
    /// Bytes between two remembered positions of a segment.
    const STRIDE: u64 = 64 << 10;
    /// Most positions remembered (24 bytes each); past it, the oldest go.
    const MAX: usize = 1 << 16;

    /// The remembered position nearest before `lsn` in segment `segment`.
    fn before(&self, segment: Lsn, lsn: Lsn) -> Option<(Lsn, u64)> {
        let (&at, &(seg, offset)) = self.by_lsn.range(..=lsn).next_back()?;
        (seg == segment && at >= segment).then_some((at, offset))
    }

    fn remember(&mut self, lsn: Lsn, segment: Lsn, offset: u64) {
        self.by_lsn.insert(lsn, (segment, offset));
        while self.by_lsn.len() > Self::MAX {
            self.by_lsn.pop_first();
        }
    }

    /// Forgets the positions of records before `lsn` (truncated).
    pub(crate) fn forget_before(&mut self, lsn: Lsn) {
        self.by_lsn = self.by_lsn.split_off(&lsn);
    }
}

/// Iterator over records in LSN order, from a starting LSN up to a limit
/// fixed when it was created, stepping over LSNs a repair skipped. Yields an error (and then stops) if a segment
/// disappears underneath it or does not hold what it should.
pub struct WalIter {
    segments: Vec<(Lsn, PathBuf)>,
    seg_idx: usize,
    reader: Option<SegmentReader>,
    next: Lsn,
    limit: Lsn,
    /// Gaps a repair left between segments (`(first missing, next held)`).
    gaps: Vec<(Lsn, Lsn)>,
    failed: bool,
    /// Positions to start from and to learn (see [`Positions`]).
    positions: Option<Arc<Mutex<Positions>>>,
    /// A position to start the first segment at: (its record's LSN, offset).
    seek: Option<(Lsn, u64)>,
    /// The record the reader must find after a seek (else it starts over).
    expect: Option<Lsn>,
    /// The offset last remembered in the current segment.
    remembered: u64,
}

impl WalIter {
    pub(crate) fn new(segments: Vec<(Lsn, PathBuf)>, from: Lsn, limit: Lsn) -> Result<WalIter> {
        let first = segments.first().map_or(1, |s| s.0);
        let from = from.max(1);
        if from < first && from <= limit {
            return Err(Error::Truncated { lsn: from, first });
        }
        let from = from.max(first);
        // The segment holding `from`: the last one starting at or before it.
        let seg_idx = segments.iter().rposition(|(f, _)| *f <= from).unwrap_or(0);
        Ok(WalIter {
            segments,
            seg_idx,
            reader: None,
            next: from,
            limit,
            gaps: Vec::new(),
            failed: false,
            positions: None,
            seek: None,
            expect: None,
            remembered: 0,
        })
    }

    /// Lets the iterator start at a remembered position, and remember the
    /// positions it reads.
    pub(crate) fn with_positions(mut self, positions: Arc<Mutex<Positions>>) -> WalIter {
        if let Some(&(segment, _)) = self.segments.get(self.seg_idx) {
            let known = positions.lock().unwrap_or_else(|p| p.into_inner()).before(segment, self.next);
            self.seek = known;
        }
        self.positions = Some(positions);
        self
    }

    /// Lets the iterator step over gaps a repair left between segments.
    pub(crate) fn with_gaps(mut self, gaps: Vec<(Lsn, Lsn)>) -> WalIter {
        self.gaps = gaps;
        self
    }

    fn corrupt(&self, path: &Path, offset: u64, reason: String) -> Error {
        Error::Corrupt { segment: path.to_path_buf(), offset, reason }
    }

    fn step(&mut self) -> Result<Option<Record>> {
        loop {
            if self.next > self.limit {
                return Ok(None);
            }
            if self.reader.is_none() {
                let Some((first, path)) = self.segments.get(self.seg_idx) else {
                    return Err(Error::Truncated { lsn: self.next, first: self.segments.first().map_or(1, |s| s.0) });
                };
                let reader = match SegmentReader::open(path) {
                    Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        let first = self.segments.get(self.seg_idx + 1).map_or(*first, |s| s.0);
                        return Err(Error::Truncated { lsn: self.next, first });
                    }
                    r => r?,
                };
                let mut reader = reader;
                self.remembered = 0;
                if let Some((lsn, offset)) = self.seek.take() {
                    reader.seek_to(offset);
                    self.expect = Some(lsn);
                    self.remembered = offset;
                }
                self.reader = Some(reader);
            }
            let Some(reader) = self.reader.as_mut() else { continue };
            let next = self.next;
            let expected = self.expect.take();
            match reader.next_step()? {
                Step::Frame { frame, .. } if expected.is_some_and(|e| e != frame.lsn) => {
                    // Not the record remembered there: read the segment
                    // from its start.
                    self.reader = None;
                }
                Step::End { .. } if expected.is_some() => self.reader = None,
                Step::Frame { offset, frame } => {
                    if frame.lsn < next {
                        continue;
                    }
                    if let Some(positions) = &self.positions {
                        if offset >= self.remembered + Positions::STRIDE || self.remembered == 0 {
                            let segment = self.segments.get(self.seg_idx).map_or(0, |s| s.0);
                            positions.lock().unwrap_or_else(|p| p.into_inner()).remember(frame.lsn, segment, offset);
                            self.remembered = offset;
                        }
                    }
                    let (lsn, payload) = (frame.lsn, frame.payload.to_vec());
                    if lsn != next {
                        let path = reader.path.clone();
                        return Err(self.corrupt(&path, offset, format!("expected LSN {next}, found {lsn}")));
                    }
                    self.next += 1;
                    return Ok(Some(Record { lsn, payload }));
                }
                Step::End { offset, stop } => {
                    let path = reader.path.clone();
                    if let Some(&(following, _)) = self.segments.get(self.seg_idx + 1) {
                        // `next` may lie inside a gap when iteration started there.
                        let gap = self.gaps.iter().any(|&(a, b)| b == following && a <= next && next < b);
                        if following == next || gap {
                            self.seg_idx += 1;
                            self.reader = None;
                            self.next = following;
                            continue;
                        }
                    }
                    return Err(self.corrupt(&path, offset, format!("record {next} missing ({stop:?})")));
                }
            }
        }
    }
}

impl Iterator for WalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Summary of a log directory, as printed by `walrus log verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// Segment files.
    pub segments: usize,
    /// Committed records.
    pub records: u64,
    /// Payload bytes of the committed records.
    pub payload_bytes: u64,
    /// Bytes of all segment files.
    pub file_bytes: u64,
    /// First LSN held (or the LSN the next append gets, if empty).
    pub first_lsn: Lsn,
    /// Last LSN held (`first_lsn - 1` if empty).
    pub last_lsn: Lsn,
    /// A torn tail that the next [`Wal::open`](super::Wal::open) truncates:
    /// (segment, offset, length in bytes).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
}

impl std::fmt::Display for LogSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {} segments, {} records, {} payload bytes ({} bytes on disk), first LSN {}, last LSN {}",
            self.segments, self.records, self.payload_bytes, self.file_bytes, self.first_lsn, self.last_lsn
        )?;
        if let Some((seg, off, len)) = &self.torn_tail {
            write!(f, "; torn tail of {len} bytes at {}:{off} is discarded on next open", seg.display())?;
        }
        Ok(())
    }
}

/// Read-only view of a log directory: scans and verifies it without taking
/// the lock or changing a byte. Safe to use on a log another process has open
/// (it sees the records committed when it was created).
///
/// ```
/// use walrus::wal::{LogReader, SyncPolicy, Wal, WalOptions};
/// let dir = tempfile::tempdir()?;
/// let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::Always))?;
/// wal.append(b"one")?;
/// wal.append(b"two")?;
/// let reader = LogReader::open(dir.path(), &WalOptions::default())?;
/// assert_eq!(reader.summary().records, 2);
/// let payloads: Vec<Vec<u8>> = reader.iter_from(2)?.map(|r| r.map(|r| r.payload)).collect::<Result<_, _>>()?;
/// assert_eq!(payloads, vec![b"two".to_vec()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LogReader {
    scan: Scan,
}

impl LogReader {
    /// Scans `dir`. Fails with [`Error::Corrupt`] (naming segment and offset)
    /// if a record that is not part of a torn tail is damaged.
    ///
    /// Records are read up to the format's size limit, whatever
    /// `options.max_record_size` says, so a log written with a larger limit
    /// reads back whole.
    pub fn open(dir: &Path, _options: &WalOptions) -> Result<LogReader> {
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!("{} is not a directory", dir.display())));
        }
        // A writer may be appending: damage seen in the active segment is
        // reported only if a second scan sees the same (a frame written
        // between the reads of one scan can look like damage once).
        let mut previous: Option<(usize, u64)> = None;
        let scan = loop {
            let scan = scan_dir(dir)?;
            let Some(d) = &scan.damage else { break scan };
            let at = (d.segment, d.offset);
            if d.segment + 1 < scan.paths.len() || previous == Some(at) {
                return Err(d.to_error(&scan.segments, &scan.paths));
            }
            previous = Some(at);
        };
        Ok(LogReader { scan })
    }

    /// Counts and bounds of what the directory holds.
    pub fn summary(&self) -> LogSummary {
        let segs = &self.scan.segments;
        let first_lsn = segs.first().map_or(1, |s| s.header.first_lsn);
        let torn_tail =
            segs.last().filter(|s| s.dirty_end > s.end).map(|s| (s.path.clone(), s.end, s.dirty_end - s.end));
        LogSummary {
            segments: segs.len(),
            records: segs.iter().map(|s| s.records).sum(),
            payload_bytes: segs.iter().map(|s| s.payload_bytes).sum(),
            file_bytes: segs.iter().map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len())).sum(),
            first_lsn,
            last_lsn: segs.last().map_or(0, |s| s.last_lsn),
            torn_tail,
        }
    }

    /// Committed records from `from` on.
    pub fn iter_from(&self, from: Lsn) -> Result<WalIter> {
        let segments = self.scan.segments.iter().map(|s| (s.header.first_lsn, s.path.clone())).collect();
        Ok(WalIter::new(segments, from, self.scan.last_lsn())?.with_gaps(self.scan.gaps.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SyncPolicy, Wal, WalOptions};

    fn payload(lsn: Lsn) -> Vec<u8> {
        // Varied sizes, so positions fall at various offsets.
        vec![(lsn % 251) as u8; 100 + (lsn as usize * 37) % 3000]
    }

    #[test]
    fn reading_from_a_remembered_position_gives_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions { sync: SyncPolicy::None, ..WalOptions::default() }.segment_size(1 << 20);
        let wal = Wal::open(dir.path(), opts).unwrap();
        for lsn in 1..=3000u64 {
            assert_eq!(wal.append(&payload(lsn)).unwrap(), lsn);
        }
        let check = |from: Lsn| {
            let got: Vec<Record> = wal.iter_from(from).unwrap().map(|r| r.unwrap()).collect();
            assert_eq!(got.len() as u64, 3001 - from, "from {from}");
            for r in &got {
                assert_eq!(r.payload, payload(r.lsn), "record {} read from {from}", r.lsn);
            }
            assert_eq!(got.first().map(|r| r.lsn), Some(from));
        };
        // The first pass learns positions; later ones start from them.
        check(1);
        assert!(wal.positions.lock().unwrap().by_lsn.len() > 10);
        // Reading from the middle of a segment starts at a position learnt.
        let hinted = (1..=3000).filter(|&l| wal.iter_from(l).unwrap().seek.is_some_and(|(at, _)| at > 1)).count();
        assert!(hinted > 2500, "{hinted} of 3000 start points had a position");
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..40 {
            check(rng.u64(1..=3000));
        }
        // A wrong position (another record there, or no frame at all) is
        // noticed: the segment is read from its start instead.
        {
            let mut p = wal.positions.lock().unwrap();
            let entries: Vec<(Lsn, (Lsn, u64))> = p.by_lsn.iter().map(|(l, v)| (*l, *v)).collect();
            for (lsn, (seg, offset)) in entries {
                p.by_lsn.insert(lsn, (seg, offset + 7));
            }
        }
        for _ in 0..20 {
            check(rng.u64(1..=3000));
        }
        let first_kept = wal.segments_for_test()[1];
        wal.truncate_before(first_kept).unwrap();
        assert!(wal.positions.lock().unwrap().by_lsn.keys().all(|&l| l >= first_kept));
        check(first_kept + 3);
    }
}
