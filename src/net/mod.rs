//! The libp2p node: replicates documents with peers over TCP (noise,
//! yamux), pushing new operations with gossipsub (one topic per document)
//! and pulling what is missing with a request-response anti-entropy
//! protocol. docs/PROTOCOL.md is the wire format.
//!
//! One tokio task drives the swarm; each open document has its own thread
//! that owns its [`Replica`](crate::replica::Replica), so log fsyncs never
//! stall the network.
//!
//! Admission: [`NodeConfig::allow`] restricts the peers a node connects
//! with, [`NodeConfig::psk`] makes a private network (libp2p pnet, below
//! noise), and every peer's sync requests are rate limited; peers with too
//! many faults are banned for a while ([`NodeEvent::PeerBanned`]).
//! docs/PROTOCOL.md §12 has the rules.
//!
//! A data directory serves one node at a time: a node holds a lock on the
//! file `LOCK` in it while it runs ([`NodeError::Locked`] for another).
//! A document whose log cannot be written (a full disk) is reopened by the
//! node itself, with backoff ([`NodeEvent::DocumentFailed`]).
//!
//! ```no_run
//! use walrus::net::{Node, NodeConfig};
//! use walrus::replica::KvDoc;
//! # async fn run() -> Result<(), walrus::net::NodeError> {
//! let mut cfg = NodeConfig::new("/var/lib/myapp/walrus");
//! cfg.docs = vec!["todos".into()];
//! cfg.peers = vec!["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".parse().unwrap()];
//! let (node, mut events) = Node::<KvDoc>::start(cfg).await?;
//! node.update("todos", |doc, actor| doc.put_op(actor, "milk", "buy")).await?; // durable now
//! while let Ok(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

mod admission;
pub(crate) mod behaviour;
pub(crate) mod codec;
mod config;
mod dialer;
mod doc_workers;
mod driver;
mod error;
mod event;
pub(crate) mod identity;
pub(crate) mod lock;
mod node;
mod pulls;
mod queued;
mod traffic;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use tracing::info;

pub use config::{check_local_doc_name, NodeConfig};
pub use error::NodeError;
pub use event::{NodeEvent, PeerInfo};
pub use identity::read_psk_file;
use identity::IDENTITY_FILE;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use node::Node;
pub use traffic::Traffic;

use crate::replica::Document;
use crate::wal::durable::{self, Files};

/// Events buffered per subscriber before it lags.
const EVENT_CAPACITY: usize = 4096;

impl<D: Document> Node<D> {
    /// Starts a node: locks `cfg.data_dir` for as long as the node runs
    /// (failing with [`NodeError::Locked`] if another node holds it),
    /// loads (or creates) its identity there,
    /// opens `cfg.docs`, listens on `cfg.listen` and dials `cfg.peers`.
    /// Returns once every listener has its first address; the receiver
    /// already holds the `Listening` events. Must be called within a tokio
    /// runtime.
    pub async fn start(cfg: NodeConfig) -> Result<(Node<D>, broadcast::Receiver<NodeEvent<D::Operation>>), NodeError> {
        for doc in &cfg.docs {
            check_local_doc_name(doc)?;
        }
        cfg.check()?;
        let dir = cfg.data_dir.clone();
        let faults = cfg.replica.wal.faults.clone();
        // The lock comes first: nothing else in the directory is touched
        // unless it is this node's. Held until the driver and every document
        // worker are gone.
        let (lock, key) = tokio::task::spawn_blocking(move || {
            let files = Files::new(faults.clone());
            let lock = lock::lock_data_dir(&dir, faults)?;
            // Left by a creator that crashed; no other creator runs now.
            durable::remove_stale(&files, &dir.join(IDENTITY_FILE))?;
            let key = identity::load_or_create(&files, &dir)?;
            Ok::<_, NodeError>((lock, key))
        })
        .await
        .map_err(|e| NodeError::Transport(e.to_string()))??;
        let peer_id = key.public().to_peer_id();
        if let Some(psk) = &cfg.psk {
            // The fingerprint lets operators compare keys without showing them.
            info!(fingerprint = %psk.fingerprint(), "private network");
        }
        let counters = Arc::new(traffic::Counters::default());
        let mut swarm = behaviour::build_swarm(&cfg, key, counters.clone())?;
        let mut listeners = Vec::new();
        for addr in &cfg.peers {
            behaviour::check_dialable(addr)?;
        }
        for addr in &cfg.listen {
            behaviour::check_port_free(addr)?;
            let id =
                swarm.listen_on(addr.clone()).map_err(|e| NodeError::Transport(format!("listen on {addr}: {e}")))?;
            listeners.push(id);
        }
        let (events, first_rx) = broadcast::channel(EVENT_CAPACITY);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (from_docs_tx, from_docs_rx) = mpsc::unbounded_channel();
        let docs = Arc::new(Mutex::new(HashMap::new()));
        let mut driver = driver::Driver::<D>::new(
            swarm,
            cfg.clone(),
            docs.clone(),
            events.clone(),
            control_tx.clone(),
            from_docs_tx,
            lock,
        );
        // Wait for the listeners before anything else happens.
        driver.await_listeners(&listeners).await?;
        for addr in &cfg.peers {
            driver.add_configured(addr.clone());
        }
        tokio::spawn(driver.run(control_rx, from_docs_rx));
        let handle = Node { peer_id, control: control_tx, docs, events, counters };
        for doc in &cfg.docs {
            if let Err(e) = handle.open_doc(doc).await {
                // Leave nothing running behind a failed start.
                let _ = handle.shutdown().await;
                return Err(e);
            }
        }
        info!(%peer_id, "node started");
        Ok((handle, first_rx))
    }
}
