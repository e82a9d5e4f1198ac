//! walrus: local-first, peer-to-peer replication built on a durable
//! write-ahead log.
//!
//! An application keeps its data in CRDT documents. Every change is an
//! operation, made durable in a local write-ahead log before it applies,
//! then exchanged with peers so that replicas converge without
//! coordination.
//!
//! ```
//! use walrus::{KvDoc, Replica, ReplicaOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let mut todos: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
//! todos.update(|doc, actor| doc.put_op(actor, "milk", "buy"))?; // durable on return
//! drop(todos);
//! let todos: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
//! assert_eq!(todos.doc().values_of("milk"), vec!["buy"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The public API
//!
//! The crate is layered; each layer is usable on its own. The types most
//! applications need are also at the crate root: [`Wal`], [`WalOptions`],
//! [`SyncPolicy`], [`Replica`], [`ReplicaOptions`], [`ReplicaView`],
//! [`Document`], [`KvDoc`], [`ActorId`], [`VersionVector`], [`Change`], and
//! with the `net` feature `Node`, `NodeConfig` and `NodeEvent`.
//!
//! - [`wal`]: a segmented, checksummed, crash-safe log of opaque records.
//!   [`Wal`] appends (alone or in batches, with group commit) and reads
//!   records by [`wal::Lsn`]; [`WalOptions`] and [`SyncPolicy`] say when
//!   records are durable, [`wal::RecoveryMode`] what opening does about
//!   damage. Offline tools: [`wal::LogReader`] reads a log without opening
//!   it for writing, [`wal::plan_repair`] and [`wal::repair`] say what a
//!   repair would discard and do it. Testing aids for your own crash tests:
//!   [`wal::FaultInjector`] (fail chosen file operations) and
//!   [`wal::PowerLoss`] (lose what was not synced, as a power cut would).
//! - [`replica`]: durable CRDT documents on the log. [`Replica`] holds one
//!   [`Document`] (any `crdts` CmRDT + CvRDT with serde, or the ready-made
//!   [`KvDoc`], [`replica::SetDoc`], [`replica::CounterDoc`],
//!   [`replica::RegisterDoc`]); local writes are
//!   [`replica::OpEnvelope`]s, hash-chained per actor
//!   ([`replica::ChainHash`]) and signed at each run's head, made durable
//!   before they apply; remote ones are verified up to their heads and
//!   applied in per-actor order ([`Replica::receive`]);
//!   [`Replica::ops_since`] answers what a peer is missing.
//!   [`ReplicaView`] reads a replica directory without writing to it;
//!   [`Replica::subscribe`] streams every [`Change`]. Identities are
//!   [`replica::ActorKey`] / [`ActorId`]; what was applied is a
//!   [`VersionVector`]. Retiring an actor: [`Replica::retire_actor`],
//!   [`replica::request_retirement`].
//! - [`sync`]: the sans-IO sync protocol, for any transport: wire messages
//!   ([`sync::SyncRequest`], [`sync::SyncResponse`], [`sync::Gossip`]) and
//!   their [`sync::encode`] / [`sync::decode`], the request and its answer
//!   ([`sync::request`], [`sync::respond`]), applying answers and gossip
//!   ([`sync::apply_response`], [`sync::apply_gossip`]), the size
//!   [`sync::Limits`] and the anti-entropy [`sync::Schedule`].
//! - `net` (feature `net`, on by default): the libp2p node that runs the
//!   protocol over TCP. `Node::start` takes a `NodeConfig` and returns the
//!   node (a cloneable handle: update documents, connect, block peers) and
//!   a stream of `NodeEvent`s.
//! - `testing` (feature `testing`): CRDT law checks to run on your own
//!   [`Document`] type (`testing::check_laws`).
//!
//! Features: `net` (default) builds the network layer; `testing` the law
//! checks; `internals`
//! exposes `walrus::internals`, items walrus's own tests, fuzz targets and
//! benchmarks reach into. **`internals` is not a stable API**: semver does
//! not cover it. Embedders that only need the log and replicas build with
//! `default-features = false`.
//!
//! The on-disk formats are in `docs/FORMAT.md` (the log) and
//! `docs/REPLICA.md` (replica directories), the wire protocol in
//! `docs/PROTOCOL.md`.
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

#[cfg(feature = "net")]
pub use net::{Node, NodeConfig, NodeEvent};
pub use replica::{ActorId, Change, Document, KvDoc, Replica, ReplicaOptions, ReplicaView, VersionVector};
pub use wal::{SyncPolicy, Wal, WalOptions};

// Keeps the README's example compiling.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
