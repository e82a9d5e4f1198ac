//! The lock that makes a data directory one node's: two nodes on one
//! directory would share a peer id (peers then see one id at two
//! addresses, and gossip meant for one reaches the other).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tracing::debug;

use super::error::NodeError;
use crate::wal::durable::{self, Files};
use crate::wal::{FaultInjector, FileOp, IoError};

/// File in a node's data directory that a running node holds an exclusive
/// advisory lock on; it holds the holder's process id, for messages only.
pub const LOCK_FILE: &str = "LOCK";

/// Longest lock file read back for its process id.
const MAX_LOCK_LEN: u64 = 64;

/// A held lock on a data directory, released when the last clone is
/// dropped (the lock goes with the open file).
#[derive(Debug, Clone)]
pub(crate) struct DirLock {
    _file: Arc<File>,
}

/// Creates `dir` if needed and locks it for this node; fails with
/// [`NodeError::Locked`] if another node (in any process) holds it.
pub(crate) fn lock_data_dir(dir: &Path, faults: Option<Arc<dyn FaultInjector>>) -> Result<DirLock, NodeError> {
    Files::new(faults.clone()).create_dir_all(dir)?;
    let path = dir.join(LOCK_FILE);
    let io = |op: &'static str, e| NodeError::Io(IoError::new(op, &path, e));
    // Never truncated on open: the holder's pid is in it.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("opening", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(NodeError::Locked { dir: dir.to_path_buf(), pid: holder_pid(&path) });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", e)),
    }
    // Only for the message another node shows; a node must start even on a
    // full disk, so failing to write it is no reason to stop.
    if let Err(e) = write_pid(&mut file, &path, faults.as_deref()) {
        debug!(path = %path.display(), error = %e, "process id not written to the lock file");
    }
    Ok(DirLock { _file: Arc::new(file) })
}

fn write_pid(file: &mut File, path: &Path, faults: Option<&dyn FaultInjector>) -> std::io::Result<()> {
    let pid = format!("{}\n", std::process::id());
    if let Some(f) = faults {
        f.check(FileOp::Write, path, pid.len()).map_err(|i| i.error)?;
    }
    file.set_len(0)?;
    // `set_len` leaves the cursor where it was (0 for a fresh open).
    file.write_all(pid.as_bytes())
}

/// The process id the lock holder wrote, if it is there and readable yet.
/// Display only: the file may be stale, half written or forged.
fn holder_pid(path: &Path) -> Option<u32> {
    let bytes = durable::read_bounded(path, MAX_LOCK_LEN).ok()??;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_pid_is_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let held = lock_data_dir(&dir, None).unwrap();
        assert!(dir.is_dir());
        match lock_data_dir(&dir, None) {
            Err(e @ NodeError::Locked { pid: Some(pid), .. }) => {
                assert_eq!(pid, std::process::id());
                let msg = e.to_string();
                assert!(msg.contains(&dir.display().to_string()) && msg.contains(&pid.to_string()), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // Clones share the lock: it ends with the last one.
        let clone = held.clone();
        drop(held);
        assert!(matches!(lock_data_dir(&dir, None), Err(NodeError::Locked { .. })));
        drop(clone);
        let again = lock_data_dir(&dir, None).unwrap();
        drop(again);
        // A garbled or oversized pid is not shown.
        let _held = lock_data_dir(&dir, None).unwrap();
        std::fs::write(dir.join(LOCK_FILE), b"x".repeat(100)).unwrap();
        assert!(matches!(lock_data_dir(&dir, None), Err(NodeError::Locked { pid: None, .. })));
    }
}
