//! What several replica test modules share: options and opening of a plain
//! replica, copying and rolling back directories, reading values, the
//! knobs of the power-loss tests, and pages written by hand.

use std::fs;
use std::path::Path;

use walrus::replica::{ActorId, ActorKey, ChainHash, KvDoc, Replica, ReplicaOptions, Signature, Succession};
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

/// Appends `n` as an unsigned LEB128 varint, as pages write their integers.
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A sync page (docs/PROTOCOL.md, "Pages") of one run holding one
/// operation, written byte by byte so that it can carry what no replica
/// writes (a succession certificate on any operation): the operation
/// `seq` of `actor` encoded as `op`, following `prev`, with head signature
/// `sig`. Uncompressed (codec byte 0).
pub fn page_of_one(
    actor: ActorId,
    seq: u64,
    prev: ChainHash,
    succeeds: Option<&Succession>,
    op: &[u8],
    sig: &Signature,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_varint(&mut body, 1); // actors
    body.extend_from_slice(&actor.0);
    put_varint(&mut body, 1); // runs
    put_varint(&mut body, 0); // the run's actor, in the table
    put_varint(&mut body, seq);
    put_varint(&mut body, 1); // operations
    body.extend_from_slice(&prev.0);
    body.push(0x02 | u8::from(succeeds.is_some())); // signed, certificate
    if let Some(c) = succeeds {
        body.extend_from_slice(&c.from.0);
        body.extend_from_slice(&c.to.0);
        body.extend_from_slice(&c.sig.0);
    }
    put_varint(&mut body, op.len() as u64);
    body.extend_from_slice(op);
    body.extend_from_slice(&sig.0);
    let mut page = vec![0];
    put_varint(&mut page, body.len() as u64);
    page.extend_from_slice(&body);
    page
}
