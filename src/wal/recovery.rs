//! Scanning a log directory on open: validate every segment, find the end
//! of the committed records, and classify whatever follows it.

use std::path::{Path, PathBuf};

use std::ops::RangeInclusive;

use super::error::{Error, Result};
use super::format::{
    check_header, decode_frame, Decoded, SegmentHeader, FRAME_HEADER_LEN, KIND_LAST, MAX_LSN, MAX_PAYLOAD_LEN,
    SEGMENT_HEADER_LEN,
};
use super::segment::{list_segments, SegmentReader, Step, Stop};
use super::Lsn;

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
    /// Gaps between scanned segments that a repair left on purpose, as
    /// `(first missing LSN, first LSN after the gap)`.
    pub gaps: Vec<(Lsn, Lsn)>,
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
    let gaps = list_gaps(dir)?;
    let mut scan = Scan { paths: listed.iter().map(|(_, p)| p.clone()).collect(), ..Scan::default() };
    let count = listed.len();
    for (i, (name_lsn, path)) in listed.iter().enumerate() {
        let is_last = i + 1 == count;
        let mut expected_first = scan.segments.last().map(|s| s.last_lsn + 1);
        if let Some(exp) = expected_first {
            // A gap a repair left on purpose (see `gap_name`).
            if *name_lsn != exp && gaps.binary_search(&(exp, *name_lsn)).is_ok() {
                expected_first = None;
                scan.gaps.push((exp, *name_lsn));
            }
        }
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

// ---------------------------------------------------------------------------
// Gaps left on purpose by a repair
// ---------------------------------------------------------------------------

/// Extension of a gap marker: an empty file named `AAAA…-BBBB….gap` (both
/// 20-digit LSNs) saying a repair discarded LSNs `A..B`, so a segment ending
/// at `A - 1` may be followed by one starting at `B`.
const GAP_EXT: &str = ".gap";

/// File name of the marker of the gap `start..end`.
pub(crate) fn gap_name(start: Lsn, end: Lsn) -> String {
    format!("{start:020}-{end:020}{GAP_EXT}")
}

fn parse_gap_name(name: &str) -> Option<(Lsn, Lsn)> {
    let stem = name.strip_suffix(GAP_EXT)?;
    let (a, b) = stem.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        if s.len() != 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (a, b) = (num(a)?, num(b)?);
    (a >= 1 && a < b && b <= MAX_LSN).then_some((a, b))
}

/// Gap markers of `dir`.
fn list_gaps(dir: &Path) -> Result<Vec<(Lsn, Lsn)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        if let Some(gap) = entry.file_name().to_str().and_then(parse_gap_name) {
            out.push(gap);
        }
    }
    out.sort_unstable();
    Ok(out)
}

// ---------------------------------------------------------------------------
// Repair plans
// ---------------------------------------------------------------------------

/// Why a repair discards a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscardKind {
    /// Intact records that the given checkpoint LSN covers: redundant.
    Covered,
    /// Intact records (every checksum verified) that the repair cuts off and
    /// no checkpoint covers: losing them loses acknowledged writes.
    Intact,
    /// Bytes that do not hold valid records, from `offset` of the segment on.
    Damaged {
        /// Offset of the first byte that is not part of a valid record.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A segment file holding no records (only its header) is removed.
    Empty,
}

/// One range a repair discards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded {
    /// The segment file it is in.
    pub segment: PathBuf,
    /// LSNs of the records discarded (`None` for damaged or empty ranges,
    /// whose records cannot be told).
    pub records: Option<RangeInclusive<Lsn>>,
    /// Whether the range is redundant, intact or damaged.
    pub kind: DiscardKind,
}

/// What a repair of a log directory keeps and discards, computed without
/// modifying anything by [`plan_repair`] and carried out by
/// [`repair`](super::repair). The rules are in `docs/FORMAT.md`
/// ("Repair").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// The damage a strict open reports (`None` if the log is clean).
    pub damage: Option<String>,
    /// First and last LSN of the records kept (`None` if none are), a gap a
    /// repair leaves included.
    pub kept: Option<RangeInclusive<Lsn>>,
    /// Segment files deleted, in the order they are deleted.
    pub removed: Vec<PathBuf>,
    /// Everything discarded, oldest first.
    pub discarded: Vec<Discarded>,
    /// LSN the next append gets: above every LSN seen anywhere in the log,
    /// so none is handed out twice.
    pub next_lsn: Lsn,
    /// Bytes `[from, to)` of the kept segment holding the damage, zeroed
    /// last.
    pub(crate) zero: Option<(PathBuf, u64, u64)>,
    /// A torn tail `[from, to)` of the kept last segment, zeroed first: a
    /// new segment after it makes it sealed, where a torn tail is damage.
    pub(crate) torn_tail: Option<(PathBuf, u64, u64)>,
    /// A new, empty segment starting at `next_lsn` is installed (after the
    /// gap marker `gap`, if any) before anything is deleted, so the highest
    /// LSN is on disk whatever happens next.
    pub(crate) new_segment: bool,
    /// Gap marker to write, `(last kept + 1, next_lsn)`.
    pub(crate) gap: Option<(Lsn, Lsn)>,
}

impl RepairPlan {
    /// True if the repair changes nothing (the log is clean).
    pub fn is_noop(&self) -> bool {
        self.damage.is_none()
            && self.removed.is_empty()
            && self.discarded.is_empty()
            && !self.new_segment
            && self.torn_tail.is_none()
    }

    /// Intact records the repair would discard although no checkpoint covers
    /// them: what `walrus log repair` refuses to drop without `--force`.
    pub fn lost(&self) -> impl Iterator<Item = &Discarded> {
        self.discarded.iter().filter(|d| d.kind == DiscardKind::Intact)
    }

    /// True if [`RepairPlan::lost`] is not empty.
    pub fn loses_records(&self) -> bool {
        self.lost().next().is_some()
    }

    /// [`RepairPlan::lost`] in words, consecutive ranges merged: `records
    /// 34..=3000 in segments 00…34.wal to 00…2990.wal`.
    pub fn describe_lost(&self) -> String {
        let mut runs: Vec<(Lsn, Lsn, &Path, &Path)> = Vec::new();
        for d in self.lost() {
            let Some(r) = &d.records else { continue };
            match runs.last_mut() {
                Some(run) if run.1.checked_add(1) == Some(*r.start()) => {
                    run.1 = *r.end();
                    run.3 = &d.segment;
                }
                _ => runs.push((*r.start(), *r.end(), &d.segment, &d.segment)),
            }
        }
        let words: Vec<String> = runs
            .iter()
            .map(|&(a, b, first, last)| {
                if first == last {
                    format!("records {a}..={b} in segment {}", file_name(first))
                } else {
                    format!("records {a}..={b} in segments {} to {}", file_name(first), file_name(last))
                }
            })
            .collect();
        words.join(", ")
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl std::fmt::Display for RepairPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.damage {
            Some(d) => writeln!(f, "damage: {d}")?,
            None => writeln!(f, "damage: none")?,
        }
        match &self.kept {
            Some(r) => writeln!(f, "keep: records {}..={}", r.start(), r.end())?,
            None => writeln!(f, "keep: no records")?,
        }
        for d in &self.discarded {
            let seg = file_name(&d.segment);
            let recs = d.records.as_ref().map(|r| format!("records {}..={}", r.start(), r.end()));
            match &d.kind {
                DiscardKind::Covered => {
                    writeln!(f, "discard: {seg}: {} (intact, covered by the checkpoint)", recs.unwrap_or_default())?
                }
                DiscardKind::Intact => {
                    writeln!(f, "discard: {seg}: {} (intact, NOT covered by a checkpoint)", recs.unwrap_or_default())?
                }
                DiscardKind::Damaged { offset, reason } => {
                    writeln!(f, "discard: {seg}: damaged bytes from offset {offset} ({reason})")?
                }
                DiscardKind::Empty => writeln!(f, "discard: {seg}: no records")?,
            }
        }
        for p in &self.removed {
            writeln!(f, "remove: {}", file_name(p))?;
        }
        if let Some((a, b)) = self.gap {
            writeln!(f, "skip: LSNs {a}..={} (records discarded; never handed out again)", b - 1)?;
        }
        if self.new_segment {
            writeln!(f, "create: {}", super::segment::segment_name(self.next_lsn))?;
        }
        write!(f, "next LSN: {}", self.next_lsn)
    }
}

/// One segment examined on its own, not against its neighbours.
#[derive(Debug, Clone)]
struct Examined {
    path: PathBuf,
    name_lsn: Lsn,
    /// The valid committed prefix; `None` if the header is unreadable or
    /// disagrees with the file name.
    prefix: Option<ScannedSegment>,
    /// Damage inside the segment (`None`: clean, a torn tail of the last
    /// segment included).
    damage: Option<(u64, String)>,
    /// Offset just past the last non-zero byte of the file.
    dirty_end: u64,
    /// Valid frames (this segment's salt, checksum verified) after the
    /// damage with an LSN above the valid prefix: lowest and highest LSN.
    stranded: Option<(Lsn, Lsn)>,
}

impl Examined {
    fn good(&self) -> bool {
        self.damage.is_none() && self.prefix.is_some()
    }

    fn first(&self) -> Lsn {
        self.prefix.as_ref().map_or(self.name_lsn, |p| p.header.first_lsn)
    }

    /// LSN of the last valid record (`first - 1` if none).
    fn last(&self) -> Lsn {
        self.prefix.as_ref().map_or(self.name_lsn.saturating_sub(1), |p| p.last_lsn)
    }

    fn records(&self) -> u64 {
        self.prefix.as_ref().map_or(0, |p| p.records)
    }

    /// Offset where the valid records end.
    fn valid_end(&self) -> u64 {
        self.prefix.as_ref().map_or(0, |p| p.end)
    }
}

fn examine(dir_segments: &[(Lsn, PathBuf)]) -> Result<Vec<Examined>> {
    let n = dir_segments.len();
    let mut out = Vec::with_capacity(n);
    for (i, (name_lsn, path)) in dir_segments.iter().enumerate() {
        let is_last = i + 1 == n;
        let (prefix, damage) = match scan_segment(path, *name_lsn, None, is_last, false)? {
            Ok(seg) => (Some(seg), None),
            Err((offset, reason)) => match scan_segment(path, *name_lsn, None, true, true)? {
                Ok(seg) => (Some(seg), Some((offset, reason))),
                Err(_) => (None, Some((offset, reason))),
            },
        };
        let dirty_end = last_nonzero(path)?;
        let stranded = match (&prefix, &damage) {
            (Some(p), Some(_)) => stranded_frames(path, p.header.salt, p.end, dirty_end, p.last_lsn)?,
            _ => None,
        };
        out.push(Examined { path: path.clone(), name_lsn: *name_lsn, prefix, damage, dirty_end, stranded });
    }
    Ok(out)
}

/// Looks at every offset of `[from, to)` for a valid frame of the segment
/// with salt `salt` and an LSN above `after`: records that survived the
/// damage but cannot be kept, since they follow it. Returns the lowest and
/// highest such LSN.
fn stranded_frames(path: &Path, salt: u32, from: u64, to: u64, after: Lsn) -> Result<Option<(Lsn, Lsn)>> {
    use std::os::unix::fs::FileExt;
    const WINDOW: usize = 1 << 20;
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io("reading metadata of", path, e))?.len();
    let mut window = vec![0u8; WINDOW + FRAME_HEADER_LEN];
    let mut found: Option<(Lsn, Lsn)> = None;
    let mut start = from;
    while start < to {
        let n = ((file_len.saturating_sub(start)) as usize).min(window.len());
        if n < FRAME_HEADER_LEN {
            break;
        }
        file.read_exact_at(&mut window[..n], start).map_err(|e| Error::io("reading", path, e))?;
        let candidates = (n - FRAME_HEADER_LEN + 1).min(WINDOW).min((to - start) as usize);
        for i in 0..candidates {
            let Ok((lsn, len)) = check_header(&window[i..i + FRAME_HEADER_LEN], MAX_PAYLOAD_LEN) else { continue };
            let at = start + i as u64;
            let total = FRAME_HEADER_LEN as u64 + len as u64;
            if lsn <= after || at + total > file_len {
                continue;
            }
            // Bounded by the file's size, checked just above.
            let mut frame = vec![0u8; total as usize];
            file.read_exact_at(&mut frame, at).map_err(|e| Error::io("reading", path, e))?;
            if matches!(decode_frame(&frame, salt, MAX_PAYLOAD_LEN), Decoded::Frame(_)) {
                found = Some(found.map_or((lsn, lsn), |(lo, hi)| (lo.min(lsn), hi.max(lsn))));
            }
        }
        start += candidates as u64;
    }
    Ok(found)
}

/// Offset just past the last non-zero byte of the file (0 if all zero).
fn last_nonzero(path: &Path) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut end = file.metadata().map_err(|e| Error::io("reading metadata of", path, e))?.len();
    let mut chunk = vec![0u8; (1 << 20).min(end as usize)];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut chunk[..n], start).map_err(|e| Error::io("reading", path, e))?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Computes, without modifying anything or taking the lock, what a repair of
/// the log in `dir` would keep and discard. Records up to `covered` (for
/// example the LSN a checkpoint covers; 0 for none) are redundant: the plan
/// marks them [`DiscardKind::Covered`] rather than [`DiscardKind::Intact`].
///
/// ```
/// use walrus::wal::{plan_repair, SyncPolicy, Wal, WalOptions};
///
/// let dir = tempfile::tempdir()?;
/// let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::Always))?;
/// wal.append(b"one")?;
/// drop(wal);
/// let plan = plan_repair(dir.path(), 0)?;
/// assert!(plan.is_noop());
/// assert_eq!(plan.kept, Some(1..=1));
/// assert_eq!(plan.next_lsn, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn plan_repair(dir: &Path, covered: Lsn) -> Result<RepairPlan> {
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!("{} is not a directory", dir.display())));
    }
    let scan = scan_dir(dir)?;
    let segs = examine(&list_segments(dir)?)?;
    let gaps = list_gaps(dir)?;
    let mut plan = plan(&segs, &gaps, covered);
    plan.damage = scan.damage.as_ref().map(|d| d.to_error(&scan.segments, &scan.paths).to_string());
    Ok(plan)
}

/// Segment `b` follows segment `a` without records missing between them
/// (or with a gap a repair left on purpose).
fn chains(a: &Examined, b: &Examined, gaps: &[(Lsn, Lsn)]) -> bool {
    let expected = a.last() + 1;
    b.first() == expected || gaps.binary_search(&(expected, b.first())).is_ok()
}

/// The repair rules of `docs/FORMAT.md`, over segments examined one by one.
fn plan(segs: &[Examined], gaps: &[(Lsn, Lsn)], covered: Lsn) -> RepairPlan {
    let n = segs.len();
    let mut plan = RepairPlan::default();
    if n == 0 {
        plan.next_lsn = 1;
        return plan;
    }
    // Start of the newest consistent suffix: clean segments, each following
    // the one before, ending with the last segment.
    let mut k = if segs[n - 1].good() { n - 1 } else { n };
    while k > 0 && k < n && segs[k - 1].good() && chains(&segs[k - 1], &segs[k], gaps) {
        k -= 1;
    }
    let suffix_records: u64 = segs[k.min(n)..].iter().map(Examined::records).sum();

    // Segments [keep_from, keep_to) are kept whole; `partial` keeps the
    // valid prefix of one more segment.
    let mut base = 0;
    let (keep_from, keep_to, partial) = loop {
        let damage = (base..n).find(|&i| !segs[i].good() || (i > base && !chains(&segs[i - 1], &segs[i], gaps)));
        let Some(d) = damage else { break (base, n, None) };
        if segs[d].good() {
            // Records are missing before `d`: the segments before the gap
            // are stale (an interrupted truncation deletes oldest first).
            base = d;
            continue;
        }
        let old_end = d == base;
        let suffix_is_free = segs[base..k.min(n)]
            .iter()
            .all(|s| s.prefix.as_ref().is_none_or(|p| p.records == 0 || p.last_lsn <= covered));
        if k < n && suffix_records > 0 && (old_end || suffix_is_free) {
            break (k, n, None);
        }
        // Damage inside the log: later records may depend on earlier ones,
        // so keep the records before the damage.
        let keeps_prefix = segs[d].prefix.is_some() && (d == base || chains(&segs[d - 1], &segs[d], gaps));
        break (base, d, keeps_prefix.then_some(d));
    };

    let kept_last_idx = partial.or(keep_to.checked_sub(1).filter(|&i| i >= keep_from));
    let kept_first = kept_last_idx.map(|_| segs[keep_from].first());
    let kept_last = kept_last_idx.map(|i| segs[i].last());

    // The highest LSN anything discarded may have held.
    let mut seen: Lsn = 0;
    let mut discard = |plan: &mut RepairPlan, i: usize, from_valid_end: bool| {
        let s = &segs[i];
        if !from_valid_end {
            if let Some(p) = s.prefix.as_ref().filter(|p| p.records > 0) {
                let (first, last) = (p.header.first_lsn, p.last_lsn);
                if first <= covered {
                    plan.discarded.push(Discarded {
                        segment: s.path.clone(),
                        records: Some(first..=last.min(covered)),
                        kind: DiscardKind::Covered,
                    });
                }
                if last > covered {
                    plan.discarded.push(Discarded {
                        segment: s.path.clone(),
                        records: Some(first.max(covered + 1)..=last),
                        kind: DiscardKind::Intact,
                    });
                }
            }
        }
        seen = seen.max(s.last()).max(s.first().saturating_sub(1));
        if let Some((offset, reason)) = &s.damage {
            plan.discarded.push(Discarded {
                segment: s.path.clone(),
                records: None,
                kind: DiscardKind::Damaged { offset: *offset, reason: reason.clone() },
            });
            if let Some((lo, hi)) = s.stranded {
                // Valid records after the damage are cut off with it.
                let kind = if hi <= covered { DiscardKind::Covered } else { DiscardKind::Intact };
                plan.discarded.push(Discarded { segment: s.path.clone(), records: Some(lo..=hi), kind });
                seen = seen.max(hi.min(MAX_LSN - 1));
            }
            // Records in the damaged bytes cannot be read; bound their LSNs:
            // a segment holds none at or past its successor's first LSN, and
            // every frame takes at least FRAME_HEADER_LEN bytes and holds a
            // non-zero byte.
            let bound = match segs.get(i + 1) {
                Some(next) => next.name_lsn.saturating_sub(1),
                None => {
                    let from = if s.prefix.is_some() { s.valid_end() } else { SEGMENT_HEADER_LEN as u64 };
                    let bytes = s.dirty_end.saturating_sub(from);
                    s.last().saturating_add(bytes.div_ceil(FRAME_HEADER_LEN as u64))
                }
            };
            seen = seen.max(bound.min(MAX_LSN - 1));
        } else if !from_valid_end && s.records() == 0 {
            plan.discarded.push(Discarded { segment: s.path.clone(), records: None, kind: DiscardKind::Empty });
        }
    };
    // Oldest first, as truncation does, so an interrupted repair leaves a
    // gap that the next repair treats the same way.
    for i in 0..keep_from {
        discard(&mut plan, i, false);
    }
    plan.removed.extend(segs[..keep_from].iter().map(|s| s.path.clone()));
    if keep_to < n {
        if let Some(d) = partial {
            discard(&mut plan, d, true);
            plan.zero = Some((segs[d].path.clone(), segs[d].valid_end(), segs[d].dirty_end.max(segs[d].valid_end())));
        }
        let later = partial.map_or(keep_to, |d| d + 1);
        // Newest first, and the damaged segment is cleaned last: until
        // then an interrupted repair finds the same damage again.
        for i in later..n {
            discard(&mut plan, i, false);
        }
        plan.removed.extend(segs[later..].iter().rev().map(|s| s.path.clone()));
    }

    plan.kept = kept_first.zip(kept_last).filter(|(f, l)| f <= l).map(|(f, l)| f..=l);
    let after_kept = kept_last.map_or(1, |l| l + 1);
    plan.next_lsn = after_kept.max(seen.saturating_add(1)).min(MAX_LSN);
    if plan.next_lsn != after_kept || kept_last_idx.is_none() {
        // An interrupted earlier repair may have installed this segment already.
        let last = &segs[n - 1];
        let installed = last.good() && last.records() == 0 && last.first() == plan.next_lsn;
        if installed {
            plan.removed.retain(|p| p != &last.path);
            plan.discarded.retain(|d| d.segment != last.path);
        } else {
            plan.new_segment = true;
        }
        if kept_last_idx.is_some() && plan.next_lsn != after_kept {
            plan.gap = Some((after_kept, plan.next_lsn));
        }
        if let Some(i) = kept_last_idx.filter(|&i| i + 1 == n && partial.is_none()) {
            let s = &segs[i];
            if let Some(p) = s.prefix.as_ref().filter(|p| p.dirty_end > p.end) {
                plan.torn_tail = Some((s.path.clone(), p.end, p.dirty_end));
            }
        }
    }
    plan
}
