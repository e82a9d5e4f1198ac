//! What several replica test modules share: options and opening of a plain
//! replica, copying and rolling back directories, reading values, and the
//! knobs of the power-loss tests.

use std::fs;
use std::path::Path;

use walrus::replica::{ActorId, ActorKey, KvDoc, KvDocExt, Replica, ReplicaOptions};
use walrus::wal::{SyncPolicy, WalOptions};

/// Batched syncs, 4 KiB segments without preallocation (so a few writes
/// rotate), no automatic checkpoints.
pub fn opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::batch()).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 0, ..ReplicaOptions::default() }
}

/// A key-value replica in `dir` with [`opts`].
pub fn open(dir: &Path) -> Replica<KvDoc> {
    Replica::open(dir, opts()).expect("open replica")
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Puts `backup` back into `dir` the way a filesystem snapshot or a VM
/// rollback does: the same files (same inodes), their old contents.
pub fn roll_back_in_place(backup: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let old = backup.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            roll_back_in_place(&old, &entry.path());
        } else if old.exists() {
            // A snapshot restores contents and leaves unchanged files be.
            let was = fs::read(&old).unwrap();
            if fs::read(entry.path()).unwrap() != was {
                fs::write(entry.path(), was).unwrap();
            }
        } else {
            fs::remove_file(entry.path()).unwrap();
        }
    }
    for entry in fs::read_dir(backup).unwrap() {
        let entry = entry.unwrap();
        let now = dir.join(entry.file_name());
        if !now.exists() {
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &now);
            } else {
                fs::copy(entry.path(), &now).unwrap();
            }
        }
    }
}

/// The values of `key`, sorted.
pub fn values(r: &Replica<KvDoc>, key: &str) -> Vec<String> {
    let mut v: Vec<String> = r.doc().values_of(key);
    v.sort();
    v
}

/// The actor whose key has the seed stored in an actor key file, if the
/// bytes are one.
pub fn actor_of(seed: &[u8]) -> Option<ActorId> {
    let seed: [u8; 32] = seed.try_into().ok()?;
    Some(ActorKey::from_seed(seed).actor())
}

/// A number from the environment (to run more or other cases), else
/// `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A directory for crash states. The real directories are only vehicles
/// (the model decides what survives), so they live on tmpfs when there is
/// one, where `fsync` is cheap.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("walrus-replica-power-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}
