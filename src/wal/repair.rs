//! Repairing a log that does not open: carrying out a [`RepairPlan`] (made
//! by `recovery::plan_repair`) in an order that a crash part-way cannot
//! make worse.

use std::fs::OpenOptions;
use std::path::Path;

use tracing::{info, info_span};

use super::error::{Error, Result};
use super::format::SegmentHeader;
use super::recovery::{gap_name, DiscardKind, RepairPlan};
use super::segment::new_segment_file;
use super::segment::{self, Io};
use super::{Lsn, WalOptions};

/// What [`repair`](super::repair) may do.
#[derive(Debug, Clone, Copy)]
pub(super) struct RepairRequest {
    pub(super) covered: Lsn,
    pub(super) allow_loss: bool,
    /// Plan only if a strict open would fail (`Wal::open` in repair mode);
    /// an explicit `repair` always reports its plan.
    pub(super) only_if_damaged: bool,
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
