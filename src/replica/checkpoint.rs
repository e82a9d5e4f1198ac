//! Checkpoint files: document state + version vector + the last LSN they
//! cover, written atomically (temp file, fsync, rename, directory fsync).
//!
//! Layout: magic `WALRUSCP` (8 bytes) | version u32 LE (1) | crc32 of body
//! u32 LE | body length u64 LE | body: CBOR map `{lsn, clock, state}`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{ReplicaError, VersionVector};
use crate::wal::Lsn;

const MAGIC: &[u8; 8] = b"WALRUSCP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// File name of the checkpoint inside a replica directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";

/// What a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint<D> {
    /// Last log record the state includes.
    pub lsn: Lsn,
    /// Operations the state includes.
    pub clock: VersionVector,
    /// The document.
    pub state: D,
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> ReplicaError {
    ReplicaError::Io { op, path: path.to_path_buf(), source: e }
}

/// Writes `cp` atomically as `dir/checkpoint`. `stop_after` (tests only)
/// stops after that many steps to simulate a crash part-way.
pub fn write<D: Serialize>(dir: &Path, cp: &Checkpoint<D>, stop_after: Option<u8>) -> Result<(), ReplicaError> {
    let stop = |step: u8| stop_after.is_some_and(|s| step >= s);
    let mut body = Vec::new();
    ciborium::into_writer(cp, &mut body).map_err(|e| ReplicaError::Encode(e.to_string()))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let tmp = dir.join(CHECKPOINT_TMP);
    let mut f = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    f.write_all(&header).map_err(|e| io_err("writing", &tmp, e))?;
    if stop(1) {
        return Ok(());
    }
    f.write_all(&body).map_err(|e| io_err("writing", &tmp, e))?;
    if stop(2) {
        return Ok(());
    }
    f.sync_all().map_err(|e| io_err("syncing", &tmp, e))?;
    if stop(3) {
        return Ok(());
    }
    let path = dir.join(CHECKPOINT_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming to", &path, e))?;
    if stop(4) {
        return Ok(());
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("syncing directory", dir, e))
}

/// Reads `dir/checkpoint` if it exists, refusing files over `limit` bytes.
/// A leftover temp file is ignored (and removed by the next write).
pub fn read<D: DeserializeOwned>(dir: &Path, limit: u64) -> Result<Option<Checkpoint<D>>, ReplicaError> {
    let path = dir.join(CHECKPOINT_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", &path, e)),
    };
    let corrupt = |reason: String| ReplicaError::Corrupt { path: path.clone(), reason };
    let len = f.metadata().map_err(|e| io_err("reading metadata of", &path, e))?.len();
    if len > limit {
        return Err(corrupt(format!("checkpoint of {len} bytes exceeds the limit of {limit}")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.read_to_end(&mut bytes).map_err(|e| io_err("reading", &path, e))?;
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt("not a walrus checkpoint".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if u32_at(8) != VERSION {
        return Err(corrupt(format!("unsupported checkpoint version {}", u32_at(8))));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[16..24]);
    let body = &bytes[HEADER_LEN..];
    if u64::from_le_bytes(n) != body.len() as u64 || crc32fast::hash(body) != u32_at(12) {
        return Err(corrupt("checkpoint length or checksum mismatch".into()));
    }
    let cp = ciborium::de::from_reader_with_recursion_limit(body, 256).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(cp))
}

/// The LSN up to which the newest intact checkpoint of the replica in `dir`
/// covers its log (`None` without one): records up to it are redundant, so
/// a repair of the log may drop them. Reads the checkpoint whole (to verify
/// its checksum) but decodes no document state.
pub fn checkpointed_lsn(dir: &Path) -> Result<Option<Lsn>, ReplicaError> {
    let cp: Option<Checkpoint<serde::de::IgnoredAny>> = read(dir, u64::MAX)?;
    Ok(cp.map(|cp| cp.lsn))
}
