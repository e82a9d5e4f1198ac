//! A seam around the log's file operations, so tests (yours and ours) can
//! make a write run out of space or an fsync fail and observe what the log
//! does about it.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::{io, path::Path, sync::Arc};
//! use walrus::wal::{FaultInjector, FileOp, Injected, SyncPolicy, Wal, WalOptions};
//!
//! /// Fails every fdatasync once broken.
//! #[derive(Default)]
//! struct FlakyDisk(AtomicBool);
//! impl FaultInjector for FlakyDisk {
//!     fn check(&self, op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
//!         match op {
//!             FileOp::SyncData if self.0.load(Ordering::SeqCst) => Err(Injected::fail(io::Error::other("injected EIO"))),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let disk = Arc::new(FlakyDisk::default());
//! let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::Always).with_faults(disk.clone()))?;
//! wal.append(b"safe")?;
//! disk.0.store(true, Ordering::SeqCst);
//! assert!(wal.append(b"never acknowledged").is_err());
//! assert!(wal.append(b"refused: the log is poisoned").is_err());
//! drop(wal);
//!
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! assert!(wal.last_lsn() >= 1); // "safe" is there; the unacknowledged record may be too
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::Path;

/// A file operation the log is about to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Writing `len` bytes of records or zero fill to a segment.
    Write,
    /// `fdatasync` of a segment file.
    SyncData,
    /// `fsync` of the log directory.
    SyncDir,
    /// Creating a file (new segment or preallocation).
    Create,
    /// Renaming a prepared file to its segment name.
    Rename,
    /// Deleting a segment.
    Remove,
}

/// An injected failure.
#[derive(Debug)]
pub struct Injected {
    /// For [`FileOp::Write`]: how many bytes to write before failing,
    /// simulating a short write (e.g. the disk filled up part-way).
    pub written: usize,
    /// The error the operation returns.
    pub error: io::Error,
}

impl Injected {
    /// Fail without performing any part of the operation.
    pub fn fail(error: io::Error) -> Injected {
        Injected { written: 0, error }
    }

    /// A "no space left on device" error after `written` bytes.
    pub fn no_space(written: usize) -> Injected {
        Injected { written, error: io::Error::from_raw_os_error(28) }
    }
}

/// A file operation that was performed, as reported to
/// [`FaultInjector::observe`]. Paths are the ones the log used: its
/// directory joined with a file name.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum FileEvent<'a> {
    /// `data` was written at `offset` (for an injected short write, the
    /// part that was written).
    Write {
        /// The file.
        path: &'a Path,
        /// Where the bytes went.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// `fdatasync` of a file: everything written to it so far is durable.
    SyncData {
        /// The file.
        path: &'a Path,
    },
    /// `fsync` of a directory: the creations, renames, links and removals
    /// of its entries so far are durable.
    SyncDir {
        /// The directory.
        path: &'a Path,
    },
    /// A file was opened with create and truncate: created if it was
    /// absent, emptied if it existed.
    Create {
        /// The file.
        path: &'a Path,
    },
    /// A directory was created.
    CreateDir {
        /// The directory.
        path: &'a Path,
    },
    /// `from` was renamed to `to`, replacing `to` if it existed.
    Rename {
        /// The old name.
        from: &'a Path,
        /// The new name.
        to: &'a Path,
    },
    /// `to` was made a hard link to the file named `from`.
    Link {
        /// The existing name.
        from: &'a Path,
        /// The new name.
        to: &'a Path,
    },
    /// A file name was removed.
    Remove {
        /// The removed name.
        path: &'a Path,
    },
}

/// Decides, before each file operation, whether it should fail, and may
/// watch the operations that were performed.
pub trait FaultInjector: Send + Sync + 'static {
    /// Called before `op` on `path` (`len` is the byte count for writes,
    /// else 0). Returning an error makes the operation fail with it.
    fn check(&self, op: FileOp, path: &Path, len: usize) -> Result<(), Injected>;

    /// Called after each operation that `check` allowed and that succeeded,
    /// and after the written part of an injected short write. The default
    /// ignores it; [`PowerLoss`](super::PowerLoss) keeps a model of what is
    /// durable from these.
    fn observe(&self, event: &FileEvent<'_>) {
        let _ = event;
    }
}
