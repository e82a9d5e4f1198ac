//! The node's libp2p identity: an ed25519 keypair kept in its data
//! directory, readable by the owner only.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use super::NodeError;

/// File holding the node's keypair (libp2p protobuf encoding) in its data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Largest identity file read.
const MAX_IDENTITY_LEN: u64 = 4096;

/// Loads the keypair of the node in `dir`, creating it on first use.
pub fn load_or_create(dir: &Path) -> Result<Keypair, NodeError> {
    let path = dir.join(IDENTITY_FILE);
    let io = |op: &'static str, p: &Path, e| NodeError::Io { op, path: p.to_path_buf(), source: e };
    match fs::metadata(&path) {
        Ok(meta) => {
            if meta.len() > MAX_IDENTITY_LEN {
                return Err(NodeError::Identity { path, reason: format!("{} bytes is not a keypair", meta.len()) });
            }
            let bytes = fs::read(&path).map_err(|e| io("reading", &path, e))?;
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| NodeError::Identity { path, reason: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Identity { path: path.clone(), reason: e.to_string() })?;
            let tmp = dir.join("identity.key.tmp");
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(|e| io("creating", &tmp, e))?;
            f.write_all(&bytes).map_err(|e| io("writing", &tmp, e))?;
            f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| io("renaming to", &path, e))?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing directory", dir, e))?;
            Ok(key)
        }
        Err(e) => Err(io("reading", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_private_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "identity must be owner-only, mode {mode:o}");
        }
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(NodeError::Identity { .. })));
    }
}
