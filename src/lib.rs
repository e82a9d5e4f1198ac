//! walrus: local-first, peer-to-peer replication built on a durable
//! write-ahead log.
//!
//! The crate is layered; each layer is usable on its own:
//!
//! - [`wal`]: a segmented, checksummed, crash-safe log of opaque records with
//!   fsync policies and group commit.
//! - [`replica`]: durable CRDT documents on the log: local writes made
//!   durable before they apply, per-actor causal delivery of remote
//!   operations, catch-up answers (`ops_since`), snapshots and checkpoints.
//! - [`sync`]: the sans-IO sync protocol: wire messages, catch-up answers,
//!   applying gossip and answers, the anti-entropy schedule.
//! - `net` (feature `net`, default): the libp2p node that runs it.
//! - `testing` (feature `testing`): CRDT law checks for your own documents.
//! - `internals` (feature `internals`): items walrus's own tests, fuzz
//!   targets and benchmarks reach into. Not a stable API: semver does not
//!   cover it.
//!
//! ```
//! use walrus::wal::{SyncPolicy, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(dir.path(), WalOptions::new(SyncPolicy::batch()))?;
//! let lsn = wal.append(b"first record")?; // durable when this returns
//! assert_eq!(lsn, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "internals")]
pub mod internals;
#[cfg(feature = "net")]
pub mod net;
pub mod replica;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wal;

// Keeps the README's example compiling.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
