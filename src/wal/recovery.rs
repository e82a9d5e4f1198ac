//! Scanning a log directory on open: validate every segment, find the end
//! of the committed records, and classify whatever follows it.

use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::format::{SegmentHeader, FRAME_HEADER_LEN, KIND_LAST, SEGMENT_HEADER_LEN};
use super::segment::{list_segments, SegmentReader, Step, Stop};

/// What a scan found in one segment.
#[derive(Debug, Clone)]
pub struct ScannedSegment {
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// Committed records in the segment.
    pub records: u64,
    /// Payload bytes of the committed records.
    pub payload_bytes: u64,
    /// LSN of the last committed record (`first_lsn - 1` if none).
    pub last_lsn: u64,
    /// Offset just past the last committed frame.
    pub end: u64,
    /// Non-zero bytes after `end` (a torn tail), as `[end, dirty_end)`.
    pub dirty_end: u64,
}

/// The damage found at `offset` of a segment.
#[derive(Debug, Clone)]
pub struct Damage {
    pub segment: usize,
    pub offset: u64,
    pub reason: String,
}

impl Damage {
    pub fn to_error(&self, segments: &[ScannedSegment], paths: &[PathBuf]) -> Error {
        let segment = segments.get(self.segment).map(|s| s.path.clone()).or_else(|| paths.get(self.segment).cloned());
        Error::Corrupt { segment: segment.unwrap_or_default(), offset: self.offset, reason: self.reason.clone() }
    }
}

/// Result of scanning a whole directory.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Segments that scanned cleanly, in order (all of them if `damage` is None).
    pub segments: Vec<ScannedSegment>,
    /// Paths of all segment files found, in order.
    pub paths: Vec<PathBuf>,
    /// First corruption found; segments from `damage.segment` on are suspect.
    pub damage: Option<Damage>,
}

impl Scan {
    /// LSN of the last committed record that scanned cleanly (0 if none).
    pub fn last_lsn(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.last_lsn)
    }
}

/// Scans every segment in `dir` without modifying anything.
pub fn scan_dir(dir: &Path) -> Result<Scan> {
    let listed = list_segments(dir)?;
    let mut scan = Scan { paths: listed.iter().map(|(_, p)| p.clone()).collect(), ..Scan::default() };
    let count = listed.len();
    for (i, (name_lsn, path)) in listed.iter().enumerate() {
        let is_last = i + 1 == count;
        let expected_first = scan.segments.last().map(|s| s.last_lsn + 1);
        match scan_segment(path, *name_lsn, expected_first, is_last, false)? {
            Ok(seg) => scan.segments.push(seg),
            Err((offset, reason)) => {
                scan.damage = Some(Damage { segment: i, offset, reason });
                break;
            }
        }
    }
    Ok(scan)
}

type SegmentOutcome = std::result::Result<ScannedSegment, (u64, String)>;

/// Scans a damaged segment for repair: its valid prefix, with everything
/// after it treated as a tail to discard.
pub fn scan_prefix(path: &Path, expected_first: Option<u64>) -> Result<ScannedSegment> {
    let name_lsn = path.file_name().and_then(|n| n.to_str()).and_then(super::segment::parse_segment_name).unwrap_or(0);
    scan_segment(path, name_lsn, expected_first, true, true)?.map_err(|(offset, reason)| Error::Corrupt {
        segment: path.to_path_buf(),
        offset,
        reason,
    })
}

fn scan_segment(
    path: &Path,
    name_lsn: u64,
    expected_first: Option<u64>,
    is_last: bool,
    discard_tail: bool,
) -> Result<SegmentOutcome> {
    let mut r = match SegmentReader::open(path) {
        Ok(r) => r,
        Err(Error::Corrupt { offset, reason, .. }) => return Ok(Err((offset, reason))),
        Err(e) => return Err(e),
    };
    let header = r.header;
    if header.first_lsn != name_lsn {
        return Ok(Err((0, format!("header says first LSN {} but the file name says {}", header.first_lsn, name_lsn))));
    }
    if let Some(exp) = expected_first {
        if header.first_lsn != exp {
            return Ok(Err((
                0,
                format!("segment starts at LSN {} but the previous segment ends at LSN {}", header.first_lsn, exp - 1),
            )));
        }
    }
    let mut next = header.first_lsn;
    let mut end = SEGMENT_HEADER_LEN as u64;
    let mut last_lsn = header.first_lsn - 1;
    let (mut records, mut payload_bytes, mut pending, mut pending_bytes) = (0u64, 0u64, 0u64, 0u64);
    let (stop_at, stop) = loop {
        match r.next_step()? {
            Step::Frame { offset, frame } => {
                if frame.lsn != next {
                    break (offset, format!("expected LSN {next}, found a frame for LSN {}", frame.lsn));
                }
                next += 1;
                pending += 1;
                pending_bytes += frame.payload.len() as u64;
                if frame.kind == KIND_LAST {
                    end = offset + frame.encoded_len() as u64;
                    last_lsn = frame.lsn;
                    records += pending;
                    payload_bytes += pending_bytes;
                    pending = 0;
                    pending_bytes = 0;
                }
            }
            Step::End { offset, stop } => {
                let reason = match stop {
                    Stop::Eof if pending > 0 => "batch not completed before the end of the segment".to_string(),
                    Stop::Eof => String::new(),
                    Stop::Incomplete => "segment ends inside a record".to_string(),
                    Stop::Invalid(e) => e.to_string(),
                };
                break (offset, reason);
            }
        }
    };
    let dirty_end = r.dirty_end(end)?;
    if dirty_end > end {
        let reason = if stop.is_empty() { "incomplete batch".to_string() } else { stop };
        if !is_last {
            return Ok(Err((end, reason)));
        }
        // In the active segment, bad bytes are a torn tail unless a later
        // frame proves they had been synced before it was written. Such a
        // frame may end in zero bytes (an empty payload), past `dirty_end`.
        if discard_tail {
            // Repair: keep the prefix, whatever follows.
        } else if let Some(at) =
            r.find_synced_frame(stop_at, (dirty_end + FRAME_HEADER_LEN as u64).min(r.file_len), next)?
        {
            return Ok(Err((stop_at, format!("{reason}, but a durable record follows at offset {at}"))));
        }
    }
    Ok(Ok(ScannedSegment { path: path.to_path_buf(), header, records, payload_bytes, last_lsn, end, dirty_end }))
}
