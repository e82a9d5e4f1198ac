//! Actor succession: how a replica stops writing under an actor whose
//! history it may no longer hold, and goes on under a new one that is
//! allowed wherever the old one was.
//!
//! A replica directory restored from a backup, copied, rolled back, or
//! repaired by discarding records may be behind its own actor's history:
//! peers may hold operations of that actor it no longer has. Writing the
//! next sequence number then signs a second operation for a number already
//! taken (an equivocation), and that write is lost. So the replica
//! retires the actor instead: it makes a new key, and the old key signs a
//! [`Succession`] naming the new actor. The new actor's first operation
//! carries it, so a replica whose writer list names the old actor accepts
//! the new one too.
//!
//! On disk (all written through [`Files`], so tests can fail each step):
//! `actor.key` holds the current secret (a retired one is not kept);
//! `actor.cert` the certificates of this directory's successive actors
//! (absent for a first actor); and `actor.home` the inode number and birth
//! time of `actor.key` when it was made, which a copied or restored
//! directory does not keep.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ActorId, ActorKey, EnvelopeError, Signature};
use crate::wal::durable::{self, Files};

/// File with the succession certificates of this directory's actors.
pub const CERT_FILE: &str = "actor.cert";
/// File with the identity (inode number, birth time) `actor.key` had when it was written.
pub const HOME_FILE: &str = "actor.home";
/// Present when the next open must retire the actor (written by
/// [`request_retirement`], e.g. after a repair discarded log records).
pub const RETIRE_FILE: &str = "actor.retire";

/// Most successions a replica keeps, and a snapshot answer carries.
pub const MAX_SUCCESSIONS: usize = 4096;

/// Domain separation for succession signatures.
const SUCCESSION_DOMAIN: &[u8] = b"walrus/succession/v1\0";

/// A statement, signed by actor `from`, that actor `to` succeeds it in one
/// document: `to` may write wherever `from` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Succession {
    /// The retired actor, whose key signed this.
    pub from: ActorId,
    /// The new actor.
    pub to: ActorId,
    /// `from`'s signature of [`Succession::signing_bytes`].
    pub sig: Signature,
}

impl Succession {
    /// The bytes the signature covers: a domain tag, the document id
    /// (length-prefixed, big-endian u32), `from` and `to`.
    pub fn signing_bytes(doc: &str, from: &ActorId, to: &ActorId) -> Vec<u8> {
        let mut out = Vec::with_capacity(SUCCESSION_DOMAIN.len() + 4 + doc.len() + 64);
        out.extend_from_slice(SUCCESSION_DOMAIN);
        out.extend_from_slice(&(doc.len() as u32).to_be_bytes());
        out.extend_from_slice(doc.as_bytes());
        out.extend_from_slice(&from.0);
        out.extend_from_slice(&to.0);
        out
    }

    /// `key` names `to` as its successor in document `doc`.
    pub fn sign(key: &ActorKey, doc: &str, to: ActorId) -> Succession {
        let from = key.actor();
        Succession { from, to, sig: Signature(key.sign(&Self::signing_bytes(doc, &from, &to))) }
    }

    /// Checks the signature for document `doc`.
    pub fn verify(&self, doc: &str) -> Result<(), EnvelopeError> {
        if self.from == self.to || !self.from.verify(&Self::signing_bytes(doc, &self.from, &self.to), &self.sig.0) {
            return Err(EnvelopeError::BadSuccession { from: self.from, to: self.to });
        }
        Ok(())
    }
}

/// Why a replica retires its actor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetireReason {
    /// The directory is not where the actor's key was made: it was copied
    /// or restored from a backup (its `actor.key` has another inode).
    Moved,
    /// A peer holds operations of this actor that the replica does not
    /// (it is behind its own history: restored, rolled back or repaired).
    Behind {
        /// The last sequence number the replica had of its actor.
        had: u64,
        /// One the peer had beyond it.
        seen: u64,
    },
    /// A peer holds a different operation of this actor for a sequence
    /// number this replica also wrote: they were written on two copies.
    Forked {
        /// The sequence number.
        seq: u64,
    },
    /// Asked for ([`Replica::retire_actor`](super::Replica::retire_actor)),
    /// e.g. after discarding damaged log records.
    Requested,
    /// The replica was rebuilt from an empty state
    /// ([`Replica::rebuild`](super::Replica::rebuild)): its last sequence
    /// number was in the damaged checkpoints.
    Rebuilt,
}

impl std::fmt::Display for RetireReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetireReason::Moved => write!(f, "the replica directory was copied or restored"),
            RetireReason::Behind { had, seen } => {
                write!(f, "a peer holds operation {seen} of this actor, which this replica does not (it had {had})")
            }
            RetireReason::Forked { seq } => {
                write!(f, "a peer holds another operation {seq} of this actor: two copies of the replica wrote")
            }
            RetireReason::Requested => write!(f, "asked for"),
            RetireReason::Rebuilt => write!(f, "the replica was rebuilt without its checkpoints"),
        }
    }
}

/// The current actor of a replica directory and its certificate, if any.
pub(crate) struct Current {
    pub key: ActorKey,
    pub cert: Option<Succession>,
}

/// Makes the next open of the replica in `dir` retire its actor, durably:
/// for tools that change the directory without opening the replica (a log
/// repair that discarded records may have discarded operations peers hold).
pub fn request_retirement(dir: &Path) -> crate::wal::Result<()> {
    Files::default().write_atomic(&dir.join(RETIRE_FILE), b"", false)
}

/// Records, before a retirement starts, which actor is being retired: if a
/// crash interrupts it, the next open finds that actor still current and
/// retires it (the reason may have lived only in memory).
pub(crate) fn mark_retiring(files: &Files, dir: &Path, actor: &ActorId) -> crate::wal::Result<()> {
    files.write_atomic(&dir.join(RETIRE_FILE), &actor.0, false)
}

/// What `actor.retire` asks of an open whose current actor is `current`:
/// `Some(true)` retire it, `Some(false)` only remove the marker (that
/// retirement was finished), `None` no marker.
pub(crate) fn retire_requested(dir: &Path, current: &ActorId) -> Option<bool> {
    let bytes = match durable::read_bounded(&dir.join(RETIRE_FILE), 64) {
        Ok(b) => b?,
        Err(_) => return Some(true),
    };
    // Empty: asked for by a tool. Unreadable: retiring is the safe side.
    Some(bytes.is_empty() || bytes.len() != 32 || bytes[..] == current.0[..])
}

/// File recording a fork rewrite in progress (see [`Rewrite`]).
pub const REWRITE_FILE: &str = "actor.rewrite";

/// A fork rewrite to finish: operations `from..=to` of the retired actor
/// `old` are rewritten under the current actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rewrite {
    pub old: ActorId,
    pub from: u64,
    pub to: u64,
    /// Peers may hold other operations for these numbers (a fork); else
    /// they are a rebuilt replica's own, which peers hold the same.
    #[serde(default = "forked_by_default")]
    pub forked: bool,
}

fn forked_by_default() -> bool {
    true
}

pub(crate) fn save_rewrite(files: &Files, dir: &Path, job: &Rewrite) -> crate::wal::Result<()> {
    let mut bytes = Vec::new();
    ciborium::into_writer(job, &mut bytes).map_err(|e| crate::wal::Error::InvalidArgument(e.to_string()))?;
    files.write_atomic(&dir.join(REWRITE_FILE), &bytes, false)
}

/// The rewrite left unfinished, if any (an unreadable record is reported).
pub(crate) fn load_rewrite(dir: &Path) -> Result<Option<Rewrite>, super::StorageError> {
    let path = dir.join(REWRITE_FILE);
    match durable::read_bounded(&path, 4096)? {
        None => Ok(None),
        Some(bytes) => ciborium::from_reader(bytes.as_slice())
            .map(Some)
            .map_err(|e| super::StorageError::Corrupt { path, reason: e.to_string() }),
    }
}

pub(crate) fn clear_rewrite(files: &Files, dir: &Path) -> crate::wal::Result<()> {
    files.remove(&dir.join(REWRITE_FILE))
}

/// Most certificates read from `actor.cert`.
const MAX_CHAIN_FILE: u64 = 4096 * 160;

/// The succession certificates of this directory's actors, oldest first,
/// each verified (a damaged or foreign entry is dropped).
pub(crate) fn load_chain(dir: &Path, doc: &str) -> Vec<Succession> {
    let Ok(Some(bytes)) = durable::read_bounded(&dir.join(CERT_FILE), MAX_CHAIN_FILE) else { return Vec::new() };
    let chain: Vec<Succession> = ciborium::from_reader(bytes.as_slice()).unwrap_or_default();
    chain.into_iter().filter(|c| c.verify(doc).is_ok()).collect()
}

/// Whether the directory's `actor.key` is the file the actor was made in.
/// `None` when that was never recorded (replicas of earlier versions).
pub(crate) fn at_home(dir: &Path, key_file: &Path) -> Option<bool> {
    let recorded = durable::read_bounded(&dir.join(HOME_FILE), 64).ok().flatten()?;
    let recorded = std::str::from_utf8(&recorded).ok()?.trim().to_string();
    Some(identity(key_file).is_some_and(|id| id == recorded))
}

/// Records where `actor.key` lives now.
pub(crate) fn record_home(files: &Files, dir: &Path, key_file: &Path) -> crate::wal::Result<()> {
    match identity(key_file) {
        Some(id) => files.write_atomic(&dir.join(HOME_FILE), id.as_bytes(), false),
        None => Ok(()),
    }
}

/// The file's identity: inode number and birth time (or, where the file
/// system keeps none, the inode change time). A copy or a restore makes a
/// new file — whose inode number a file system may reuse, but not with the
/// same birth time — while a rollback of the file system, a hard link or a
/// change of permissions keeps it.
#[cfg(unix)]
fn identity(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let born = match m.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
        Some(d) => format!("b{}.{:09}", d.as_secs(), d.subsec_nanos()),
        None => format!("c{}.{:09}", m.ctime(), m.ctime_nsec()),
    };
    Some(format!("{} {born}", m.ino()))
}

#[cfg(not(unix))]
fn identity(_path: &Path) -> Option<String> {
    None
}

/// Retires `old`: a new key is made, `old` certifies it, the certificate
/// is appended to `actor.cert`, and the new key replaces `actor.key` (the
/// old secret is not kept: it must never sign again). Each step is durable
/// before the next; a crash part-way leaves the old actor current (the
/// next open, or the next sign from a peer, retires it again) or the new
/// one with its whole chain of certificates.
pub(crate) fn rotate(
    files: &Files,
    dir: &Path,
    key_file: &Path,
    old: &ActorKey,
    doc: &str,
) -> crate::wal::Result<Current> {
    let new = ActorKey::generate().map_err(|e| crate::wal::Error::InvalidArgument(e.to_string()))?;
    let cert = Succession::sign(old, doc, new.actor());
    let mut chain = load_chain(dir, doc);
    chain.push(cert);
    let mut bytes = Vec::new();
    ciborium::into_writer(&chain, &mut bytes).map_err(|e| crate::wal::Error::InvalidArgument(e.to_string()))?;
    files.write_atomic(&dir.join(CERT_FILE), &bytes, false)?;
    files.write_atomic(key_file, &new.seed(), true)?;
    record_home(files, dir, key_file)?;
    Ok(Current { key: new, cert: Some(cert) })
}
