//! Checkpoint files: document state + version vector + the last LSN they
//! cover, written atomically (temp file, fsync, rename, directory fsync).
//! Two generations are kept: `checkpoint` and `checkpoint.prev`; the log
//! holds every record after the older one, so either restores the replica.
//!
//! Layout: magic `WALRUSCP` (8 bytes) | version u32 LE (1) | crc32 of body
//! u32 LE | body length u64 LE | body: CBOR map `{lsn, clock, state}`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{ActorId, ChainHash, StorageError, Succession, VersionVector};
use crate::wal::durable::{self, Files};
use crate::wal::Lsn;

const MAGIC: &[u8; 8] = b"WALRUSCP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// File name of the checkpoint inside a replica directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// The generation before it.
pub const PREVIOUS_FILE: &str = "checkpoint.prev";
/// Appended to the name of a damaged checkpoint moved aside on open (for
/// inspection), so the next checkpoint does not take it for a generation.
pub const DAMAGED_SUFFIX: &str = ".damaged";

/// What a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint<D> {
    /// Last log record the state includes.
    pub lsn: Lsn,
    /// Operations the state includes.
    pub clock: VersionVector,
    /// The document.
    pub state: D,
    /// Successions known (see [`Succession`]): who may write as a retired
    /// writer's successor. Absent in checkpoints of earlier versions.
    #[serde(default)]
    pub successions: Vec<Succession>,
    /// The hash of the last operation the state includes, per actor, where
    /// known (format 3; absent before): what the actors' next operations
    /// must chain to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<(ActorId, ChainHash)>,
}

/// Writes `cp` as the newest generation (`dir/checkpoint`), keeping the
/// one before as `dir/checkpoint.prev`. `crash_after` (tests only) stops
/// part-way as if the process died (see [`Files::write_generation`]).
pub fn write<D: Serialize>(
    files: &Files,
    dir: &Path,
    cp: &Checkpoint<D>,
    crash_after: Option<u8>,
) -> Result<(), StorageError> {
    let mut body = Vec::new();
    ciborium::into_writer(cp, &mut body).map_err(|e| StorageError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    files.write_generation(&dir.join(CHECKPOINT_FILE), &dir.join(PREVIOUS_FILE), &bytes, crash_after)?;
    Ok(())
}

/// Reads one checkpoint file; `Ok(None)` if it does not exist.
pub fn read_file<D: DeserializeOwned>(path: &Path, limit: u64) -> Result<Option<Checkpoint<D>>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt { path: path.to_path_buf(), reason };
    let bytes = match durable::read_bounded(path, limit) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(crate::wal::Error::Corrupt { reason, .. }) => return Err(corrupt(format!("checkpoint of {reason}"))),
        Err(e) => return Err(e.into()),
    };
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

/// The checkpoint generations of a replica directory, as found on open.
pub struct Generations<D> {
    /// The newest intact checkpoint (`None` if there is none).
    pub newest: Option<Checkpoint<D>>,
    /// It is `checkpoint.prev`: the newer generation is damaged or missing.
    pub newest_is_previous: bool,
    /// LSN of the intact generation before it (0 if none): the log is kept
    /// from just after it, so either generation can restore the replica.
    pub older_lsn: Lsn,
    /// Generations that exist but are damaged, with the error: the newest
    /// one first.
    pub damaged: Vec<(PathBuf, StorageError)>,
}

/// Reads both generations. A damaged file is reported in `damaged`, not
/// as an error; the caller decides whether what is left suffices.
pub fn read_generations<D: DeserializeOwned>(dir: &Path, limit: u64) -> Result<Generations<D>, StorageError> {
    let mut found = Vec::new();
    let mut damaged = Vec::new();
    for name in [CHECKPOINT_FILE, PREVIOUS_FILE] {
        let path = dir.join(name);
        match read_file::<D>(&path, limit) {
            Ok(Some(cp)) => found.push((cp, name == PREVIOUS_FILE)),
            Ok(None) => {}
            Err(e @ StorageError::Corrupt { .. }) => damaged.push((path, e)),
            Err(e) => return Err(e),
        }
    }
    // Newest first by what they cover, whatever their names say.
    found.sort_by_key(|(cp, _)| std::cmp::Reverse(cp.lsn));
    let mut found = found.into_iter();
    let (newest, newest_is_previous) = match found.next() {
        Some((cp, prev)) => (Some(cp), prev),
        None => (None, false),
    };
    let older_lsn = found.next().map_or(0, |(cp, _)| cp.lsn);
    Ok(Generations { newest, newest_is_previous, older_lsn, damaged })
}

/// If a checkpoint write stopped after moving `checkpoint` to
/// `checkpoint.prev` and before renaming the new one in, renames it in now
/// (its temp file is complete and verified), so both generations exist.
pub fn promote_interrupted<D: DeserializeOwned>(files: &Files, dir: &Path, limit: u64) -> Result<(), StorageError> {
    let (newest, tmp) = (dir.join(CHECKPOINT_FILE), dir.join(format!("{CHECKPOINT_FILE}{}", durable::TMP_SUFFIX)));
    if newest.exists() || !tmp.exists() || !dir.join(PREVIOUS_FILE).exists() {
        return Ok(());
    }
    if let Ok(Some(cp)) = read_file::<D>(&tmp, limit) {
        let prev_lsn = read_file::<D>(&dir.join(PREVIOUS_FILE), limit).ok().flatten().map_or(0, |p| p.lsn);
        if cp.lsn >= prev_lsn {
            files.rename(&tmp, &newest)?;
        }
    }
    Ok(())
}

/// The newest intact generation that covers only records before `lsn`
/// (a state without what was logged from `lsn` on), if any.
pub fn read_generations_below<D: DeserializeOwned>(
    dir: &Path,
    limit: u64,
    lsn: Lsn,
) -> Result<Option<Checkpoint<D>>, StorageError> {
    let mut best: Option<Checkpoint<D>> = None;
    for name in [CHECKPOINT_FILE, PREVIOUS_FILE] {
        if let Ok(Some(cp)) = read_file::<D>(&dir.join(name), limit) {
            if cp.lsn < lsn && best.as_ref().is_none_or(|b| b.lsn < cp.lsn) {
                best = Some(cp);
            }
        }
    }
    Ok(best)
}

/// The LSN up to which the newest intact checkpoint of the replica in `dir`
/// covers its log (`None` without one): records up to it are redundant, so
/// a repair of the log may drop them. Reads the checkpoint whole (to verify
/// its checksum) but decodes no document state.
pub fn checkpointed_lsn(dir: &Path) -> Result<Option<Lsn>, StorageError> {
    let gens = read_generations::<serde::de::IgnoredAny>(dir, u64::MAX)?;
    Ok(gens.newest.map(|cp| cp.lsn))
}
