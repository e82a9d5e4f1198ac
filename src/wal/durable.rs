//! Small files that must survive a crash whole or not at all (checkpoints,
//! keys, the document id), written through the same fault seam as the log.
//!
//! Every write goes to a temporary file that is synced, then renamed (or
//! linked) into place, and the directory is synced: after a crash or power
//! loss the file is either absent, the old version, or the whole new one.
//! Reads are bounded, because the bytes come from a disk that may be
//! damaged.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::error::{Error, Result};
use super::fault::{FaultInjector, FileEvent, FileOp};
use super::segment::Io;

/// Suffix of the temporary files [`write_atomic`] and [`create_new`] leave
/// behind when they are interrupted; [`remove_stale`] deletes them.
pub const TMP_SUFFIX: &str = ".tmp";

/// Durable small-file operations, through an optional fault injector.
#[derive(Clone, Default)]
pub struct Files {
    io: Io,
}

impl Files {
    /// File operations that consult `faults` (if any) before each step.
    pub fn new(faults: Option<Arc<dyn FaultInjector>>) -> Files {
        Files { io: Io { faults } }
    }

    /// Replaces `path` with `bytes` atomically and durably: a temporary
    /// file beside it is written, synced and renamed over it, then the
    /// directory is synced. `private` makes the file owner-only.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8], private: bool) -> Result<()> {
        let tmp = tmp_path(path, "");
        let file = self.create_tmp(&tmp, private)?;
        let result = (|| {
            self.io.write_at(&file, &tmp, bytes, 0)?;
            self.io.sync_data(&file, &tmp)?;
            self.io.rename(&tmp, path)?;
            self.io.sync_dir(parent(path))
        })();
        if result.is_err() {
            let _ = self.io.remove(&tmp);
        }
        result
    }

    /// Like [`write_atomic`](Self::write_atomic), but the version `path`
    /// held before is kept as `previous` (replacing what that held), so two
    /// generations exist at every moment: the old `path` is renamed to
    /// `previous` and the directory synced before the new file is renamed
    /// into place. After a crash at any step, `path` or `previous` holds the
    /// newest complete version that was ever synced. `crash_after` (tests)
    /// stops after that many steps as if the process died there: 1 part
    /// written, 2 all written, 3 synced, 4 old version moved to `previous`,
    /// 5 new version renamed in (directory not yet synced).
    pub fn write_generation(&self, path: &Path, previous: &Path, bytes: &[u8], crash_after: Option<u8>) -> Result<()> {
        let stop = |step: u8| crash_after.is_some_and(|s| step >= s);
        let tmp = tmp_path(path, "");
        let file = self.create_tmp(&tmp, false)?;
        let half = bytes.len() / 2;
        self.io.write_at(&file, &tmp, &bytes[..half], 0)?;
        if stop(1) {
            return Ok(());
        }
        self.io.write_at(&file, &tmp, &bytes[half..], half as u64)?;
        if stop(2) {
            return Ok(());
        }
        self.io.sync_data(&file, &tmp)?;
        if stop(3) {
            return Ok(());
        }
        if std::fs::symlink_metadata(path).is_ok() {
            self.io.rename(path, previous)?;
            self.io.sync_dir(parent(path))?;
        }
        if stop(4) {
            return Ok(());
        }
        self.io.rename(&tmp, path)?;
        if stop(5) {
            return Ok(());
        }
        self.io.sync_dir(parent(path))
    }

    /// Deletes `path` and syncs its directory.
    pub fn remove(&self, path: &Path) -> Result<()> {
        self.io.remove(path)?;
        self.io.sync_dir(parent(path))
    }

    /// Renames `from` to `to` (replacing it) and syncs the directory.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.io.rename(from, to)?;
        self.io.sync_dir(parent(to))
    }

    /// Creates `path` holding `bytes`, durably, unless it exists: then
    /// nothing is written and `false` is returned. Safe against concurrent
    /// creators (each writes its own temporary file and links it into
    /// place; exactly one link succeeds), so two processes starting at once
    /// agree on one file.
    pub fn create_new(&self, path: &Path, bytes: &[u8], private: bool) -> Result<bool> {
        let tmp = tmp_path(path, &unique_suffix());
        let file = self.create_tmp(&tmp, private)?;
        let result = (|| {
            self.io.write_at(&file, &tmp, bytes, 0)?;
            self.io.sync_data(&file, &tmp)?;
            self.io.check_op(FileOp::Rename, path).map_err(|e| Error::io("linking", path, e))?;
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => self.io.observe(FileEvent::Link { from: &tmp, to: path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(Error::io("linking", path, e)),
            }
            self.io.sync_dir(parent(path))?;
            Ok(true)
        })();
        let _ = self.io.remove(&tmp);
        result
    }

    /// Creates `dir` and any missing parents, syncing each parent in which
    /// a directory was created, so the new directories survive a power loss.
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at {
            if d.as_os_str().is_empty() || d.is_dir() {
                break;
            }
            missing.push(d.to_path_buf());
            at = d.parent();
        }
        for d in missing.iter().rev() {
            self.io.check_op(FileOp::Create, d).map_err(|e| Error::io("creating directory", d, e))?;
            match std::fs::create_dir(d) {
                Ok(()) => self.io.observe(FileEvent::CreateDir { path: d }),
                // Another process made it meanwhile: it syncs the parent.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
                Err(e) => return Err(Error::io("creating directory", d, e)),
            }
            self.io.sync_dir(parent(d))?;
        }
        Ok(())
    }

    fn create_tmp(&self, tmp: &Path, private: bool) -> Result<File> {
        self.io.create_with(tmp, private)
    }
}

/// Reads `path` whole, refusing files over `limit` bytes (the check is on
/// what is read, not only on the size the file claims). `Ok(None)` if it
/// does not exist.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    let len = file.metadata().map_err(|e| Error::io("reading metadata of", path, e))?.len();
    if len > limit {
        return Err(too_large(path, len, limit));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io("reading", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, bytes.len() as u64, limit));
    }
    Ok(Some(bytes))
}

fn too_large(path: &Path, len: u64, limit: u64) -> Error {
    Error::Corrupt {
        segment: path.to_path_buf(),
        offset: 0,
        reason: format!("{len} bytes exceeds the limit of {limit}"),
    }
}

/// Deletes the temporary files an interrupted write of `path` left behind
/// (`<name>.tmp` and `<name>.tmp.<unique>`). Returns how many there were.
pub fn remove_stale(files: &Files, path: &Path) -> Result<usize> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return Ok(0) };
    let prefix = format!("{name}{TMP_SUFFIX}");
    let dir = parent(path);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        if let Some(n) = entry.file_name().to_str() {
            if n == prefix || n.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with('.')) {
                stale.push(entry.path());
            }
        }
    }
    for p in &stale {
        files.io.remove(p)?;
    }
    if !stale.is_empty() {
        files.io.sync_dir(dir)?;
    }
    Ok(stale.len())
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn tmp_path(path: &Path, unique: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    name.push(unique);
    path.with_file_name(name)
}

/// `.<pid>.<n>`: distinct between processes and between threads of one.
fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(".{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Injected;
    use std::sync::Mutex;

    /// Fails the `n`-th file operation (1-based) of any kind.
    struct FailNth(Mutex<(usize, usize)>);
    impl FaultInjector for FailNth {
        fn check(&self, _op: FileOp, _path: &Path, _len: usize) -> std::result::Result<(), Injected> {
            let mut g = self.0.lock().unwrap();
            g.0 += 1;
            if g.0 == g.1 {
                return Err(Injected::fail(io::Error::other("injected")));
            }
            Ok(())
        }
    }

    #[test]
    fn atomic_write_leaves_old_or_new_whatever_step_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        Files::default().write_atomic(&path, b"old", false).unwrap();
        for n in 1..=5 {
            let files = Files::new(Some(Arc::new(FailNth(Mutex::new((0, n))))));
            let r = files.write_atomic(&path, b"new", false);
            let now = std::fs::read(&path).unwrap();
            match r {
                Err(_) => assert!(now == b"old" || (n == 5 && now == b"new"), "step {n}: {now:?}"),
                Ok(()) => assert_eq!(now, b"new"),
            }
            assert_eq!(remove_stale(&Files::default(), &path).unwrap(), 0, "step {n} left a temp file");
            Files::default().write_atomic(&path, b"old", false).unwrap();
        }
    }

    #[test]
    fn create_new_has_one_winner_among_racing_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let winners: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || Files::default().create_new(path, &[i; 4], true).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|&&w| w).count(), 1);
        let i = winners.iter().position(|&w| w).unwrap() as u8;
        assert_eq!(std::fs::read(&path).unwrap(), vec![i; 4]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp files removed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0);
        }
    }

    #[test]
    fn bounded_reads_and_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc");
        assert_eq!(read_bounded(&path, 10).unwrap(), None);
        std::fs::write(&path, b"0123456789x").unwrap();
        assert!(matches!(read_bounded(&path, 10), Err(Error::Corrupt { .. })));
        assert_eq!(read_bounded(&path, 11).unwrap().unwrap().len(), 11);
        std::fs::write(dir.path().join("doc.tmp"), b"").unwrap();
        std::fs::write(dir.path().join("doc.tmp.12.3"), b"").unwrap();
        std::fs::write(dir.path().join("doc.tmpx"), b"").unwrap();
        assert_eq!(remove_stale(&Files::default(), &path).unwrap(), 2);
        assert!(dir.path().join("doc.tmpx").exists());
    }

    #[test]
    fn directories_are_created_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        Files::default().create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        Files::default().create_dir_all(&deep).unwrap();
        let files = Files::new(Some(Arc::new(FailNth(Mutex::new((0, 1))))));
        assert!(files.create_dir_all(&dir.path().join("x")).is_err());
        assert!(!dir.path().join("x").exists());
    }
}
