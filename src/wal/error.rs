use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A failed operating-system call on a file or directory: what was being
/// done, to which path, and the cause. Every layer reports file failures
/// with it (the log's [`Error::Io`], and the replica's and node's errors
/// through theirs).
///
/// Displayed as `{op} {path}: {source}`, for example
/// `opening /data/wal/00000001.seg: Permission denied (os error 13)`.
#[derive(Debug)]
pub struct IoError {
    /// What was being done ("opening", "syncing", …).
    pub op: &'static str,
    /// The file or directory involved.
    pub path: PathBuf,
    /// The underlying error.
    pub source: io::Error,
}

impl IoError {
    /// The failure of `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError { op, path: path.into(), source }
    }

    /// The kind of the underlying error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// The file or directory involved.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error(transparent)]
    Io(IoError),
    /// The device is full. Records acknowledged before this error are intact;
    /// the log is poisoned and must be reopened once space is freed.
    #[error("no space left on device while {op} {path}")]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
    },
    /// Another process or handle holds the directory lock.
    #[error("log directory {dir} is locked by another process or handle")]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// A record or header that should be valid is not. `offset` is the byte
    /// offset inside `segment` where the damage starts.
    #[error("corrupt log: segment {segment}, offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset inside the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fsync failed; nothing is acknowledged any more.
    /// Reopen the log (recovery decides what survived).
    #[error("log is poisoned by an earlier I/O failure: {0}")]
    Poisoned(String),
    /// A record is larger than `WalOptions::max_record_size`.
    #[error("record of {len} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Size of the offending record.
        len: usize,
        /// Configured limit.
        limit: u32,
    },
    /// The requested LSN was removed by `truncate_before`.
    #[error("LSN {lsn} was truncated; the log now starts at {first}")]
    Truncated {
        /// Requested LSN.
        lsn: u64,
        /// First LSN still in the log.
        first: u64,
    },
    /// Invalid argument or option.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result alias for the log.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.raw_os_error() == Some(28) || source.kind() == io::ErrorKind::StorageFull {
            Error::NoSpace { op, path }
        } else {
            Error::Io(IoError { op, path, source })
        }
    }

    /// True if this error says the device ran out of space.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }
}
