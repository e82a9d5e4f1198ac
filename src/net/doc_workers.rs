//! The document workers a node runs: starting one (its replica opens on
//! its own thread), the senders the network side reaches them by, and
//! closing them.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::config::{doc_dir, NodeConfig};
use super::error::NodeError;
use super::event::NodeEvent;
use super::lock::DirLock;
use super::node::{Control, DocSenders};
use super::worker::{Blocked, DocCmd, FromDoc, Worker, REOPEN_MIN};
use crate::replica::{Document, Replica, ReplicaOptions};

/// Commands queued per document before network input is shed.
const DOC_QUEUE: usize = 4096;

/// The open documents' workers and what a new one is given.
pub(crate) struct DocWorkers<D: Document> {
    cfg: NodeConfig,
    /// Senders to the workers, shared with the node's handles.
    docs: DocSenders<D>,
    threads: HashMap<String, JoinHandle<()>>,
    events: broadcast::Sender<NodeEvent<D::Operation>>,
    /// Weak, so that the driver stops once every handle is dropped.
    control_tx: mpsc::WeakUnboundedSender<Control<D>>,
    from_docs_tx: mpsc::UnboundedSender<FromDoc>,
    /// Peers blocked or banned, as the document workers see them.
    blocked: Blocked,
    /// The data directory's lock; every document worker holds a clone.
    lock: DirLock,
}

impl<D: Document> DocWorkers<D> {
    /// No workers yet.
    pub fn new(
        cfg: NodeConfig,
        docs: DocSenders<D>,
        events: broadcast::Sender<NodeEvent<D::Operation>>,
        control_tx: mpsc::WeakUnboundedSender<Control<D>>,
        from_docs_tx: mpsc::UnboundedSender<FromDoc>,
        blocked: Blocked,
        lock: DirLock,
    ) -> DocWorkers<D> {
        DocWorkers { cfg, docs, threads: HashMap::new(), events, control_tx, from_docs_tx, blocked, lock }
    }

    /// The sender to document `doc`'s worker, if it is open (or opening).
    pub fn tx(&self, doc: &str) -> Option<mpsc::Sender<DocCmd<D>>> {
        self.docs.lock().ok()?.get(doc).cloned()
    }

    /// Names of the open (or opening) documents.
    pub fn names(&self) -> Vec<String> {
        self.docs.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default()
    }

    /// Lets go of every worker at once, without closing them.
    pub fn clear(&self) {
        if let Ok(mut d) = self.docs.lock() {
            d.clear();
        }
    }

    /// Whether `tx` is still the sender of document `name` (it was not
    /// closed, and maybe reopened, meanwhile).
    pub fn is_current(&self, name: &str, tx: &mpsc::Sender<DocCmd<D>>) -> bool {
        self.docs.lock().is_ok_and(|d| d.get(name).is_some_and(|t| t.same_channel(tx)))
    }

    /// Keeps the thread of `name`'s worker, to join when it closes.
    pub fn add_thread(&mut self, name: String, thread: JoinHandle<()>) {
        self.threads.insert(name, thread);
    }

    /// Stops routing to `name`'s worker; returns it to close.
    pub fn detach(&mut self, name: &str) -> (Option<mpsc::Sender<DocCmd<D>>>, Option<JoinHandle<()>>) {
        let tx = self.docs.lock().ok().and_then(|mut d| d.remove(name));
        (tx, self.threads.remove(name))
    }

    /// Starts a worker for document `name` on its own thread. The driver
    /// learns the outcome from [`Control::Opened`], which carries `reply`.
    pub fn open(&mut self, name: String, reply: oneshot::Sender<Result<(), NodeError>>) {
        if self.docs.lock().map(|d| d.contains_key(&name)).unwrap_or(true) {
            let _ = reply.send(Err(NodeError::DocOpen(name)));
            return;
        }
        let Some(control) = self.control_tx.upgrade() else {
            let _ = reply.send(Err(NodeError::Stopped));
            return;
        };
        let (tx, rx) = mpsc::channel(DOC_QUEUE);
        // Reserve the name so a second open fails instead of racing.
        if let Ok(mut d) = self.docs.lock() {
            d.insert(name.clone(), tx.clone());
        }
        let dir = doc_dir(&self.cfg.data_dir, &name);
        // Signatures bind the document name: an operation cannot be
        // replayed into another document.
        let opts = ReplicaOptions { document: Some(name.clone()), ..self.cfg.replica.clone() };
        let (to_swarm, events, limits, budget) =
            (self.from_docs_tx.clone(), self.events.clone(), self.cfg.limits, self.cfg.sync_budget);
        let snapshot_peers = self.cfg.snapshot_peers.clone();
        let blocked = Arc::clone(&self.blocked);
        let thread_name = format!("walrus-doc-{name}");
        // Opening replays the log: do it on the document's own thread.
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Result<(), NodeError>>();
        let worker_name = name.clone();
        let lock = self.lock.clone();
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
            let mut replica = match Replica::<D>::open(&dir, opts.clone()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = opened_tx.send(Err(e.into()));
                    return;
                }
            };
            let changes = replica.subscribe();
            let _ = opened_tx.send(Ok(()));
            let worker = Worker {
                name: worker_name,
                dir,
                opts,
                changes,
                to_swarm,
                events,
                limits,
                budget,
                snapshot_peers,
                blocked,
                _lock: lock,
                last_error: None,
                backoff: REOPEN_MIN,
                reopened_at: None,
                recovered_seen: 0,
                unpublished: Vec::new(),
                unpublished_bytes: 0,
                unpublished_since: None,
                last_publish: None,
                timer: tokio::runtime::Builder::new_current_thread().enable_time().build().ok(),
            };
            worker.run(replica, rx);
        });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                if let Ok(mut d) = self.docs.lock() {
                    d.remove(&name);
                }
                let _ = reply.send(Err(NodeError::Transport(format!("cannot start a thread: {e}"))));
                return;
            }
        };
        tokio::task::spawn_blocking(move || {
            let result = match opened_rx.recv().unwrap_or(Err(NodeError::Stopped)) {
                Ok(()) => Ok(thread),
                Err(e) => {
                    let _ = thread.join();
                    Err(e)
                }
            };
            let _ = control.send(Control::Opened { name, tx, result, reply });
        });
    }
}

/// Closes a document worker (its replica syncs and closes) and joins its thread.
pub(crate) async fn close_worker<D: Document>(
    name: String,
    tx: Option<mpsc::Sender<DocCmd<D>>>,
    thread: Option<JoinHandle<()>>,
) -> Result<(), NodeError> {
    let Some(tx) = tx else { return Err(NodeError::UnknownDoc(name)) };
    let (reply, rx) = oneshot::channel();
    let result = match tx.send(DocCmd::Close { reply }).await {
        Ok(()) => rx.await.unwrap_or(Err(NodeError::Stopped)),
        Err(_) => Err(NodeError::Stopped),
    };
    if let Some(t) = thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    result
}
