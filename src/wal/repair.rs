//! Repairing a log that does not open: carrying out a [`RepairPlan`] (made
//! by `recovery::plan_repair`) in an order that a crash part-way cannot
//! make worse.

use std::fs::OpenOptions;
use std::path::Path;

use tracing::{info, info_span};

use super::error::{Error, Result};
use super::format::SegmentHeader;
use super::recovery::{gap_name, DiscardKind, RepairPlan};
use super::segment::{self, Io};
use super::writer::new_segment_file;
use super::{Lsn, Wal, WalOptions};

/// What [`repair`] may do.
#[derive(Debug, Clone, Copy)]
pub(super) struct RepairRequest {
    pub(super) covered: Lsn,
    pub(super) allow_loss: bool,
    /// Plan only if a strict open would fail (`Wal::open` in repair mode);
    /// an explicit `repair` always reports its plan.
    pub(super) only_if_damaged: bool,
}

/// Repairs the log in `dir` so that it opens again, and returns the plan it
/// carried out (see [`plan_repair`](super::plan_repair) and the rules in `docs/FORMAT.md`).
/// Records up to `covered` are redundant (a checkpoint holds them; 0 for
/// none). Unless `allow_loss` is set, a plan that would discard an intact
/// record not covered is refused with [`Error::InvalidArgument`] and nothing
/// changes. A clean log is left as it is (a torn tail is discarded, as on
/// every open). Takes the directory lock for the duration.
///
/// ```
/// use walrus::wal::{repair, SyncPolicy, Wal, WalOptions};
///
/// let dir = tempfile::tempdir()?;
/// let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::Always).segment_size(4096))?;
/// for _ in 0..100 {
///     wal.append(&[7u8; 100])?;
/// }
/// drop(wal);
/// // Lose the oldest segment's successor: the oldest one is now stale.
/// let mut segments: Vec<_> = std::fs::read_dir(dir.path())?
///     .map(|e| e.map(|e| e.path()))
///     .collect::<Result<_, _>>()?;
/// segments.retain(|p| p.extension().is_some_and(|x| x == "wal"));
/// segments.sort();
/// std::fs::remove_file(&segments[1])?;
///
/// // The records of the stale segment are intact: refused unless allowed…
/// assert!(repair(dir.path(), WalOptions::default(), 0, false).is_err());
/// // …or covered by a checkpoint.
/// let plan = repair(dir.path(), WalOptions::default(), 100, false)?;
/// assert_eq!(plan.kept.as_ref().map(|r| *r.end()), Some(100));
/// let wal = Wal::open(dir.path(), WalOptions::default())?;
/// assert_eq!(wal.append(b"next")?, 101);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn repair(dir: impl AsRef<Path>, opts: WalOptions, covered: Lsn, allow_loss: bool) -> Result<RepairPlan> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!("{} is not a directory", dir.display())));
    }
    let request = RepairRequest { covered, allow_loss, only_if_damaged: false };
    let (wal, plan) = Wal::open_inner(dir, opts, Some(request))?;
    wal.close()?;
    plan.ok_or_else(|| Error::InvalidArgument("repair produced no plan".into()))
}

/// Carries out `plan`. Order matters for a crash part-way: first the highest
/// LSN goes on disk (gap marker, new segment), then files are deleted, and
/// the damaged segment that is kept is cleaned last, so an interrupted repair
/// repeated finds the same damage and makes the same plan.
pub(super) fn apply_repair(dir: &Path, opts: &WalOptions, io: &Io, plan: &RepairPlan) -> Result<()> {
    let span = info_span!("wal_repair", next_lsn = plan.next_lsn);
    let _g = span.enter();
    // What any open does to a torn tail, done before a new segment seals it.
    if let Some((path, from, to)) = &plan.torn_tail {
        zero(io, path, *from, *to)?;
    }
    if let Some((start, end)) = plan.gap {
        let path = dir.join(gap_name(start, end));
        let file = io.create(&path)?;
        io.sync_data(&file, &path)?;
        io.sync_dir(dir)?;
    }
    if plan.new_segment {
        let header = SegmentHeader { salt: segment::random_salt(), first_lsn: plan.next_lsn };
        let prepared = new_segment_file(dir, io, opts)?;
        io.install_segment(dir, prepared, header)?;
    }
    for path in &plan.removed {
        io.remove(path)?;
    }
    io.sync_dir(dir)?;
    if let Some((path, from, to)) = &plan.zero {
        zero(io, path, *from, *to)?;
    }
    let lost = plan.discarded.iter().filter(|d| d.kind == DiscardKind::Intact).count();
    info!(removed = plan.removed.len(), lost_ranges = lost, next_lsn = plan.next_lsn, "log repaired");
    Ok(())
}

/// Overwrites `[from, to)` of a segment with zeros and syncs it.
fn zero(io: &Io, path: &Path, from: u64, to: u64) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io("opening", path, e))?;
    io.zero_range(&file, path, from, to)?;
    io.sync_data(&file, path)
}
