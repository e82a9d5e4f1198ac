use std::io;
use std::path::PathBuf;

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
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
            Error::Io { op, path, source }
        }
    }

    /// True if this error says the device ran out of space.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }
}
