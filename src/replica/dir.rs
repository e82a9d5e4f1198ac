//! The replica directory's layout: the names of its files, and loading
//! (or creating) the document id and the actor key stored there.

use std::path::Path;

use super::{ActorKey, OpenError, StorageError};
use crate::wal;
use crate::wal::durable::{self, Files};

/// File holding a replica's actor key (its ed25519 secret), inside its
/// directory.
pub const ACTOR_FILE: &str = "actor.key";

/// File holding the document id (UTF-8), inside a replica directory.
pub const DOCUMENT_FILE: &str = "document";

/// Longest document id.
const MAX_DOCUMENT_ID: u64 = 4096;

/// The file in which replicas of earlier versions (without signatures)
/// kept their actor id.
const OLD_ACTOR_FILE: &str = "actor";

/// The replica's write-ahead log directory, inside its directory.
pub const WAL_DIR: &str = "wal";

/// The document id stored in the replica directory `dir`, if any.
pub(crate) fn read_document(dir: &Path) -> Result<Option<String>, StorageError> {
    let path = dir.join(DOCUMENT_FILE);
    let corrupt = |reason: String| StorageError::Corrupt { path: path.clone(), reason };
    match durable::read_bounded(&path, MAX_DOCUMENT_ID) {
        Ok(Some(bytes)) => Ok(Some(String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?)),
        Ok(None) => Ok(None),
        Err(wal::Error::Corrupt { reason, .. }) => Err(corrupt(format!("too long for a document id: {reason}"))),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn load_or_create_document(files: &Files, dir: &Path, wanted: Option<&str>) -> Result<String, OpenError> {
    match read_document(dir)? {
        Some(stored) => match wanted {
            Some(w) if w != stored => Err(OpenError::Storage(StorageError::Corrupt {
                path: dir.join(DOCUMENT_FILE),
                reason: format!(
                    "this replica belongs to document {stored:?}, not {w:?}: operations signed for one are invalid in the other"
                ),
            })),
            _ => Ok(stored),
        },
        None => {
            let id = wanted.unwrap_or_default().to_string();
            if id.len() as u64 > MAX_DOCUMENT_ID || id.chars().any(char::is_control) {
                return Err(OpenError::InvalidDocumentId(id.chars().take(64).collect()));
            }
            files.write_atomic(&dir.join(DOCUMENT_FILE), id.as_bytes(), false)?;
            Ok(id)
        }
    }
}

pub(super) fn load_or_create_key(files: &Files, dir: &Path) -> Result<ActorKey, StorageError> {
    let path = dir.join(ACTOR_FILE);
    if !path.exists() && dir.join(OLD_ACTOR_FILE).exists() {
        return Err(StorageError::Corrupt {
            path: dir.join(OLD_ACTOR_FILE),
            reason: "this replica was written by an earlier version without signed operations; \
                     start a new replica directory and sync it from peers"
                .into(),
        });
    }
    Ok(ActorKey::load_or_create_in(files, &path)?)
}
