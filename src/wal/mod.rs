//! A segmented, checksummed, crash-safe write-ahead log of opaque records.
//!
//! Records get consecutive log sequence numbers ([`Lsn`]) starting at 1 that
//! are never reused, across restarts and truncation. Durability follows the
//! [`SyncPolicy`]; concurrent appenders share `fdatasync` calls (group
//! commit). On open the directory is recovered: every checksum is verified, a
//! torn tail of the last segment is discarded, and damage anywhere else is an
//! [`Error::Corrupt`] naming the segment and offset. The byte layout is in
//! `docs/FORMAT.md`.
//!
//! Offline tools: [`LogReader`] reads a log without taking it over, and
//! [`plan_repair`] and [`repair`] say what a repair would discard and do
//! it. Testing aids for your own crash tests: a [`FaultInjector`] installed
//! with [`WalOptions::with_faults`] sees every file operation of the log and
//! can fail it, and [`PowerLoss`] is one that simulates a power cut (what
//! was not synced may be lost or torn).
//!
//! ```
//! use walrus::wal::{SyncPolicy, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::Always))?;
//! assert_eq!(wal.append(b"hello")?, 1);
//! assert_eq!(wal.append_batch([&b"a"[..], b"b"])?, 2..4);
//! drop(wal);
//!
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! let records: Vec<_> = wal.iter_from(1)?.collect::<Result<_, _>>()?;
//! assert_eq!(records.len(), 3);
//! assert_eq!(records[2].payload, b"b");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod durable;
mod error;
mod fault;
pub(crate) mod format;
mod power_loss;
mod reader;
mod recovery;
mod repair;
mod segment;
mod writer;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, IoError, Result};
pub use fault::{FaultInjector, FileEvent, FileOp, Injected};
pub use power_loss::{CrashSummary, PowerLoss};
pub use reader::{LogReader, LogSummary, Record, WalIter};
pub use recovery::{plan_repair, DiscardKind, Discarded, RepairPlan};
pub use writer::Wal;

/// Log sequence number: 1 for the first record ever appended, then +1 per
/// record. 0 means "no record".
pub type Lsn = u64;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append returns only after `fdatasync` covered its record.
    /// Concurrent appenders still share one `fdatasync`.
    Always,
    /// Group commit: an append returns once its record is durable, and
    /// concurrent appenders share one `fdatasync` (records appended while a
    /// sync runs form the next group). When a lone record would be synced
    /// right after a group of several, the syncing thread first waits up to
    /// `max_delay` for company.
    Batch {
        /// Upper bound on the extra wait before a group is synced.
        max_delay: Duration,
    },
    /// No `fdatasync` unless [`Wal::sync`] is called. Records are buffered in
    /// the process (up to [`WalOptions::buffer_size`]) and handed to the OS
    /// when the buffer fills or on [`Wal::flush`], [`Wal::sync`],
    /// [`Wal::close`] or drop. A crash of the process loses buffered records;
    /// a crash of the machine loses what the OS had not written.
    None,
}

impl SyncPolicy {
    /// `Batch` with the default delay of 1 ms.
    pub fn batch() -> SyncPolicy {
        SyncPolicy::Batch { max_delay: Duration::from_millis(1) }
    }

    /// True unless the policy is `None`.
    pub fn is_durable(&self) -> bool {
        !matches!(self, SyncPolicy::None)
    }
}

impl std::str::FromStr for SyncPolicy {
    type Err = Error;

    /// Parses `always`, `batch` or `none`.
    fn from_str(s: &str) -> Result<SyncPolicy> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "batch" => Ok(SyncPolicy::batch()),
            "none" => Ok(SyncPolicy::None),
            other => {
                Err(Error::InvalidArgument(format!("unknown sync policy {other:?} (expected always, batch or none)")))
            }
        }
    }
}

/// What [`Wal::open`] does when it finds a damaged record that is not part
/// of a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open: return [`Error::Corrupt`].
    #[default]
    Strict,
    /// Repair the log (as [`repair`] with nothing covered and loss allowed)
    /// and open: a gap between segments or damage in the oldest segment
    /// keeps the newest consistent run of segments ending with the last one;
    /// other damage keeps the records before it. LSNs are never handed out
    /// twice: the next one is above every LSN seen in the log. Intact
    /// records may be discarded: prefer [`plan_repair`] and [`repair`],
    /// which say what is lost and refuse unless allowed.
    Repair,
}

/// Options of a log. `WalOptions::default()` is `Always` durability, 64 MiB
/// preallocated segments and a 16 MiB record limit.
#[derive(Clone)]
pub struct WalOptions {
    /// Durability policy.
    pub sync: SyncPolicy,
    /// Segment size: a commit unit that would take a non-empty segment past
    /// this many bytes starts a new segment. A batch is never split across
    /// segments; one larger than this gets a segment of its own.
    pub segment_size: u64,
    /// Fill new segments with zeros before use so `fdatasync` needs no
    /// metadata update (the next segment is prepared in the background).
    /// Applies to the durable policies only: under `None` it would just
    /// double the bytes written.
    pub preallocate: bool,
    /// Largest accepted record, also the bound on any length read from disk.
    pub max_record_size: u32,
    /// With [`SyncPolicy::None`]: bytes buffered in the process before they
    /// are written to the OS.
    pub buffer_size: usize,
    /// What to do about damaged records.
    pub recovery: RecoveryMode,
    /// Failure injection for tests ([`FaultInjector`], [`PowerLoss`]).
    pub faults: Option<Arc<dyn FaultInjector>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions::new(SyncPolicy::Always)
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("sync", &self.sync)
            .field("segment_size", &self.segment_size)
            .field("preallocate", &self.preallocate)
            .field("max_record_size", &self.max_record_size)
            .field("buffer_size", &self.buffer_size)
            .field("recovery", &self.recovery)
            .field("faults", &self.faults.is_some())
            .finish()
    }
}

impl WalOptions {
    /// Defaults with the given sync policy.
    pub fn new(sync: SyncPolicy) -> WalOptions {
        WalOptions {
            sync,
            segment_size: 64 << 20,
            preallocate: true,
            max_record_size: 16 << 20,
            buffer_size: 1 << 20,
            recovery: RecoveryMode::Strict,
            faults: None,
        }
    }

    /// Sets the segment size.
    pub fn segment_size(mut self, bytes: u64) -> WalOptions {
        self.segment_size = bytes;
        self
    }

    /// Sets the recovery mode.
    pub fn recovery(mut self, mode: RecoveryMode) -> WalOptions {
        self.recovery = mode;
        self
    }

    /// Installs a fault injector.
    pub fn with_faults(mut self, faults: Arc<dyn FaultInjector>) -> WalOptions {
        self.faults = Some(faults);
        self
    }

    /// Whether new segments are zero-filled: only durable policies gain from it.
    fn zero_fill(&self) -> bool {
        self.preallocate && self.sync.is_durable()
    }

    fn validate(&self) -> Result<()> {
        if self.segment_size < 4096 {
            return Err(Error::InvalidArgument(format!(
                "segment_size {} is below the minimum of 4096",
                self.segment_size
            )));
        }
        if self.max_record_size == 0 || self.max_record_size > format::MAX_PAYLOAD_LEN {
            return Err(Error::InvalidArgument(format!(
                "max_record_size must be between 1 and {}, got {}",
                format::MAX_PAYLOAD_LEN,
                self.max_record_size
            )));
        }
        Ok(())
    }
}

/// Repairs the log in `dir` so that it opens again, and returns the plan it
/// carried out (see [`plan_repair`] and the rules in `docs/FORMAT.md`).
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
    let request = repair::RepairRequest { covered, allow_loss, only_if_damaged: false };
    let (wal, plan) = writer::Wal::open_inner(dir, opts, Some(request))?;
    wal.close()?;
    plan.ok_or_else(|| Error::InvalidArgument("repair produced no plan".into()))
}
