//! The node's secrets: its libp2p identity (an ed25519 keypair kept in its
//! data directory, readable by the owner only), and reading a private
//! network's pre-shared key.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::pnet::{KeyParseError, PreSharedKey};

use super::error::NodeError;
use crate::wal::durable::{self, Files};
use crate::wal::IoError;

/// File holding the node's keypair (libp2p protobuf encoding) in its data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Largest identity file read.
const MAX_IDENTITY_LEN: u64 = 4096;

/// Loads the keypair of the node in `dir`, creating it (owner-only) on
/// first use. Safe against a concurrent creator: every caller ends up with
/// the key that was written first.
pub fn load_or_create(files: &Files, dir: &Path) -> Result<Keypair, NodeError> {
    let path = dir.join(IDENTITY_FILE);
    if let Some(bytes) = read(&path)? {
        return decode(&path, &bytes);
    }
    files.create_dir_all(dir)?;
    let key = Keypair::generate_ed25519();
    let bytes =
        key.to_protobuf_encoding().map_err(|e| NodeError::Identity { path: path.clone(), reason: e.to_string() })?;
    // Whoever links first wins; the others read back the winner's key.
    files.create_new(&path, &bytes, true)?;
    match read(&path)? {
        Some(bytes) => decode(&path, &bytes),
        None => Err(NodeError::Identity { path, reason: "disappeared right after it was created".into() }),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, NodeError> {
    match durable::read_bounded(path, MAX_IDENTITY_LEN) {
        Ok(bytes) => Ok(bytes),
        Err(crate::wal::Error::Corrupt { reason, .. }) => {
            Err(NodeError::Identity { path: path.to_path_buf(), reason: format!("not a keypair: {reason}") })
        }
        Err(e) => Err(e.into()),
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Keypair, NodeError> {
    Keypair::from_protobuf_encoding(bytes)
        .map_err(|e| NodeError::Identity { path: path.to_path_buf(), reason: e.to_string() })
}

/// Largest pre-shared key file read (the standard format is 84 bytes).
const MAX_PSK_LEN: u64 = 4096;

/// Reads a private network's pre-shared key from a file in the standard
/// `swarm.key` format (as go-libp2p, js-libp2p and IPFS write it):
///
/// ```text
/// /key/swarm/psk/1.0.0/
/// /base16/
/// <64 hex digits: the 32-byte key>
/// ```
///
/// Errors name the file and what is wrong with it; they never show the key.
pub fn read_psk_file(path: &Path) -> Result<PreSharedKey, NodeError> {
    let bad = |reason: &str| NodeError::Psk { path: path.to_path_buf(), reason: reason.to_string() };
    let file = File::open(path).map_err(|e| NodeError::Io(IoError::new("opening pre-shared key file", path, e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_PSK_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| NodeError::Io(IoError::new("reading pre-shared key file", path, e)))?;
    if bytes.len() as u64 > MAX_PSK_LEN {
        return Err(bad("larger than 4096 bytes: not a swarm.key file"));
    }
    // ASCII only: the parser slices the key line by bytes.
    let text = std::str::from_utf8(&bytes).ok().filter(|t| t.is_ascii()).ok_or_else(|| bad("not ASCII text"))?;
    let key_line = text.lines().nth(2).unwrap_or("").trim_end();
    if key_line.len() == 64 && !key_line.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the third line must be 64 hex digits (a 32-byte key), and has other characters"));
    }
    text.parse::<PreSharedKey>().map_err(|e| bad(psk_problem(&e)))
}

fn psk_problem(e: &KeyParseError) -> &'static str {
    match e {
        KeyParseError::InvalidKeyFile => {
            "expected three lines: /key/swarm/psk/1.0.0/, /base16/, and 64 hex digits (a 32-byte key)"
        }
        KeyParseError::InvalidKeyType => "the first line must be /key/swarm/psk/1.0.0/",
        KeyParseError::InvalidKeyEncoding => "the second line must be /base16/ (the only encoding supported)",
        KeyParseError::InvalidKeyLength => "the third line must be 64 hex digits (a 32-byte key)",
        KeyParseError::InvalidKeyChar(_) => {
            "the third line must be 64 hex digits (a 32-byte key), and has other characters"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn psk_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let hex = "0123456789abcdef".repeat(4);
        fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
        let key = read_psk_file(&path).unwrap();
        assert_eq!(key.to_key_file(), format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n"));
        // CRLF line ends and no final newline are fine too.
        fs::write(&path, format!("/key/swarm/psk/1.0.0/\r\n/base16/\r\n{hex}")).unwrap();
        assert_eq!(read_psk_file(&path).unwrap(), key);

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "expected three lines"),
            (b"/key/swarm/psk/1.0.0/\n/base16/\n".to_vec(), "expected three lines"),
            (format!("/key/swarm/psk/2.0.0/\n/base16/\n{hex}\n").into_bytes(), "first line"),
            (format!("/key/swarm/psk/1.0.0/\n/base64/\n{hex}\n").into_bytes(), "second line"),
            (format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", &hex[..62]).into_bytes(), "64 hex digits"),
            (format!("/key/swarm/psk/1.0.0/\n/base16/\n{}zz\n", &hex[..62]).into_bytes(), "other characters"),
            (format!("/key/swarm/psk/1.0.0/\n/base16/\n+{}\n", &hex[..63]).into_bytes(), "other characters"),
            // Multi-byte characters where the parser would slice by bytes.
            (format!("/key/swarm/psk/1.0.0/\n/base16/\na\u{e9}{}\n", &hex[..61]).into_bytes(), "ASCII"),
            (vec![0xff, 0xfe, b'\n'], "ASCII"),
            (vec![b'a'; 5000], "larger than 4096"),
        ];
        for (bytes, want) in cases {
            fs::write(&path, &bytes).unwrap();
            match read_psk_file(&path) {
                Err(e @ NodeError::Psk { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want) && msg.contains("swarm.key"), "{msg} (wanted {want:?})");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&bytes)),
            }
        }
        let missing = dir.path().join("missing.key");
        let err = read_psk_file(&missing).unwrap_err();
        assert!(matches!(err, NodeError::Io(_)) && err.to_string().contains("missing.key"), "{err}");
    }

    #[test]
    fn stable_private_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::default();
        let a = load_or_create(&files, dir.path()).unwrap();
        let b = load_or_create(&files, dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "identity must be owner-only, mode {mode:o}");
        }
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(load_or_create(&files, dir.path()), Err(NodeError::Identity { .. })));
        fs::write(dir.path().join(IDENTITY_FILE), vec![0u8; MAX_IDENTITY_LEN as usize + 1]).unwrap();
        match load_or_create(&files, dir.path()) {
            Err(e @ NodeError::Identity { .. }) => assert!(e.to_string().contains(IDENTITY_FILE), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn concurrent_creators_get_the_same_identity() {
        for _ in 0..20 {
            let tmp = tempfile::tempdir().unwrap();
            // Not created yet: the racers create it too.
            let dir = tmp.path().join("data");
            let barrier = std::sync::Barrier::new(4);
            let ids: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        let (dir, barrier) = (&dir, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            load_or_create(&Files::default(), dir).unwrap().public().to_peer_id()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
            assert_eq!(load_or_create(&Files::default(), &dir).unwrap().public().to_peer_id(), ids[0]);
            let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, [IDENTITY_FILE], "temporary files left behind");
        }
    }
}
