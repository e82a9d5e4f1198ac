//! Actor keys: the ed25519 key a replica signs its operations with. The
//! actor id is the public half, so an operation names the key that must
//! have signed it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::ActorId;
use crate::wal::durable::Files;
use crate::wal::IoError;

/// Length of the key file: the 32-byte ed25519 secret seed.
const KEY_LEN: usize = 32;

/// Why a key could not be created, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
    /// A file operation failed.
    #[error(transparent)]
    Io(IoError),
    /// The key file is not a key.
    #[error("corrupt key file {path}: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The private key of an actor: signs the operations a replica writes.
///
/// ```
/// use walrus::replica::ActorKey;
/// let dir = tempfile::tempdir()?;
/// let key = ActorKey::load_or_create(&dir.path().join("actor.key"))?;
/// let again = ActorKey::load_or_create(&dir.path().join("actor.key"))?;
/// assert_eq!(key.actor(), again.actor());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ActorKey(SigningKey);

impl std::fmt::Debug for ActorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "ActorKey({})", self.actor())
    }
}

impl ActorKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<ActorKey, KeyError> {
        let mut seed = [0u8; KEY_LEN];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(ActorKey::from_seed(seed))
    }

    /// The key derived from a 32-byte secret seed (RFC 8032). Tests use
    /// fixed seeds for reproducible actors.
    pub fn from_seed(seed: [u8; KEY_LEN]) -> ActorKey {
        ActorKey(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte secret seed (what [`store`](Self::store) writes).
    pub fn seed(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// The actor id: the public key.
    pub fn actor(&self) -> ActorId {
        ActorId(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Reads the key in `path`, or creates one there (owner-only
    /// permissions, written to a temporary file, synced and linked into
    /// place, so a crash leaves either no key or the whole key, and of
    /// several processes creating it at once all end up with the same key).
    pub fn load_or_create(path: &Path) -> Result<ActorKey, KeyError> {
        ActorKey::load_or_create_in(&Files::default(), path)
    }

    /// [`load_or_create`](Self::load_or_create), creating the key through
    /// `files` (and so through its fault injector, which then sees the new
    /// key file).
    pub(crate) fn load_or_create_in(files: &Files, path: &Path) -> Result<ActorKey, KeyError> {
        match ActorKey::load(path) {
            Err(KeyError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ActorKey::generate()?;
                if files.create_new(path, &key.seed(), true).map_err(|e| wal_to_key(path, e))? {
                    Ok(key)
                } else {
                    ActorKey::load(path) // another process created it first
                }
            }
            other => other,
        }
    }

    /// Reads the key in `path`.
    pub fn load(path: &Path) -> Result<ActorKey, KeyError> {
        let io = |op, e| KeyError::Io(IoError::new(op, path, e));
        let len = fs::metadata(path).map_err(|e| io("reading", e))?.len();
        if len != KEY_LEN as u64 {
            return Err(KeyError::Corrupt { path: path.into(), reason: format!("{len} bytes, expected {KEY_LEN}") });
        }
        let bytes = fs::read(path).map_err(|e| io("reading", e))?;
        let seed: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Corrupt { path: path.into(), reason: format!("{} bytes", bytes.len()) })?;
        Ok(ActorKey::from_seed(seed))
    }

    /// Writes the key to `path` (which must not exist yet) with owner-only
    /// permissions, durably.
    pub fn store(&self, path: &Path) -> Result<(), KeyError> {
        let io = |op, p: &Path, e| KeyError::Io(IoError::new(op, p, e));
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(&self.seed()).map_err(|e| io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io("renaming to", path, e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing directory", dir, e))
    }
}

fn wal_to_key(path: &Path, e: crate::wal::Error) -> KeyError {
    match e {
        crate::wal::Error::Io(e) => KeyError::Io(e),
        other => KeyError::Io(IoError::new("creating", path, std::io::Error::other(other.to_string()))),
    }
}

impl ActorId {
    /// Whether `signature` is this actor's signature of `message` (strict
    /// RFC 8032 verification: no malleable or small-order encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Some(key) = verifying_key(self) else { return false };
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
    }
}

/// Most decoded public keys kept per thread.
const KEY_CACHE: usize = 1024;

thread_local! {
    /// Public keys decoded before: decoding one (a point decompression)
    /// costs about a fifth of a signature check, and a document has few
    /// writers whose heads are checked over and over.
    static KEYS: std::cell::RefCell<std::collections::HashMap<ActorId, VerifyingKey>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `actor`'s public key, if it is one.
fn verifying_key(actor: &ActorId) -> Option<VerifyingKey> {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(key) = keys.get(actor) {
            return Some(*key);
        }
        let key = VerifyingKey::from_bytes(&actor.0).ok()?;
        // Bounded: many actors (a hostile peer can make up any number)
        // only start the cache afresh.
        if keys.len() >= KEY_CACHE {
            keys.clear();
        }
        keys.insert(*actor, key);
        Some(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_persists_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actor.key");
        let key = ActorKey::load_or_create(&path).unwrap();
        assert_eq!(ActorKey::load_or_create(&path).unwrap().actor(), key.actor());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key must be owner-only, mode {mode:o}");
        }
        let sig = key.sign(b"hello");
        assert!(key.actor().verify(b"hello", &sig));
        assert!(!key.actor().verify(b"hellO", &sig));
        let other = ActorKey::generate().unwrap();
        assert_ne!(other.actor(), key.actor());
        assert!(!other.actor().verify(b"hello", &sig));
        // Not every 32 bytes are a curve point; such an id verifies nothing.
        assert!(!ActorId([0xff; 32]).verify(b"hello", &sig));
        assert_eq!(format!("{key:?}"), format!("ActorKey({})", key.actor()), "Debug shows no secret");
        fs::write(&path, b"short").unwrap();
        assert!(matches!(ActorKey::load_or_create(&path), Err(KeyError::Corrupt { .. })));
    }

    /// A key created through a fault seam is a file a power-loss model
    /// follows: every crash state after the creation holds it whole.
    #[test]
    fn a_key_created_through_the_seam_survives_power_loss() {
        let root = tempfile::tempdir().unwrap();
        let power = std::sync::Arc::new(crate::wal::PowerLoss::new(root.path()).unwrap());
        let files = Files::new(Some(power.clone()));
        let path = root.path().join("actor.key");
        let key = ActorKey::load_or_create_in(&files, &path).unwrap();
        assert_eq!(ActorKey::load_or_create_in(&files, &path).unwrap().actor(), key.actor());
        for seed in 0..8 {
            let crashed = tempfile::tempdir().unwrap();
            power.materialize(crashed.path(), seed).unwrap();
            let again = ActorKey::load(&crashed.path().join("actor.key")).unwrap();
            assert_eq!(again.actor(), key.actor(), "crash state {seed}");
        }
    }
}

/// An ed25519 signature (64 bytes; a CBOR byte string on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-byte signature")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                v.try_into().map(Signature).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}
