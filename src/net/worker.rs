//! One thread per open document owns its [`Replica`]: log writes and fsyncs
//! happen here, never on the task that drives the swarm. A replica that a
//! failed write poisoned is dropped and reopened here too, with backoff.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::PeerId;
use std::panic::AssertUnwindSafe;
use tokio::sync::{broadcast, mpsc, oneshot};

use tracing::{debug, error, info, info_span, warn};

use super::error::NodeError;
use super::event::NodeEvent;
use super::lock::DirLock;
use super::queued::Queued;
use crate::replica::{ActorId, Change, Document, OpEnvelope, Replica, ReplicaOptions, StorageError};
use crate::sync::{self, Limits, SyncError, SyncRequest, SyncResponse};

/// Builds a local operation from the current state and the replica's actor.
pub(crate) type MakeOp<D> = Box<dyn FnOnce(&D, ActorId) -> <D as Document>::Operation + Send>;
type Reply<T> = oneshot::Sender<Result<T, NodeError>>;
/// Runs on the document's thread with its replica, or with the reason the
/// document is unavailable.
pub(crate) type Job<D> = Box<dyn FnOnce(Result<&mut Replica<D>, NodeError>) + Send>;
type PendingWrite<D> = (MakeOp<D>, Reply<OpEnvelope<<D as Document>::Operation>>);

/// Most local writes committed together in one group commit.
const MAX_WRITE_BATCH: usize = 4096;
/// Most gossip messages applied in one group commit.
const MAX_GOSSIP_GROUP: usize = 256;
/// Local operations written while more commands were queued are published
/// together once nothing is queued, once there are this many…
const PUBLISH_OPS: usize = 4096;
/// …or once the oldest of them waited this long (only under a stream of
/// writes: one after a quiet spell is published at once).
const PUBLISH_DELAY: Duration = Duration::from_millis(20);
/// First wait before reopening a failed replica; it doubles per failure
/// up to [`REOPEN_MAX`], and starts afresh once a write succeeds again or
/// the replica stayed up for `REOPEN_MAX`.
pub(crate) const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// How often a document without a timer looks at its queue while it waits
/// for a deadline.
const POLL: Duration = Duration::from_millis(20);

pub(crate) enum DocCmd<D: Document> {
    Write { make: MakeOp<D>, reply: Reply<OpEnvelope<D::Operation>> },
    With(Job<D>),
    Gossip { source: PeerId, id: MessageId, bytes: Queued },
    Request { token: u64, req: SyncRequest },
    Response { peer: PeerId, bytes: Vec<u8> },
    Pull { peer: PeerId },
    Close { reply: Reply<()> },
}

/// What a document worker asks the swarm task to do.
pub(crate) enum FromDoc {
    Publish {
        doc: String,
        data: Vec<u8>,
    },
    Validated {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Respond {
        token: u64,
        bytes: Vec<u8>,
    },
    Pull {
        peer: PeerId,
        doc: String,
        bytes: Vec<u8>,
    },
    Synced {
        peer: PeerId,
        doc: String,
        more: bool,
        ok: bool,
    },
    /// Gossip from `peer` showed operations whose predecessors are missing.
    GapSeen {
        doc: String,
        peer: PeerId,
    },
    /// `peer` sent something invalid: the swarm task reports it and keeps
    /// the peer's fault score.
    Fault {
        peer: PeerId,
        doc: String,
        reason: String,
    },
}

pub(crate) struct Worker<D: Document> {
    pub name: String,
    /// Where the replica lives and how it is opened, to reopen it.
    pub dir: PathBuf,
    pub opts: ReplicaOptions,
    pub changes: std_mpsc::Receiver<Change<D::Operation>>,
    pub to_swarm: mpsc::UnboundedSender<FromDoc>,
    pub events: broadcast::Sender<NodeEvent<D::Operation>>,
    pub limits: Limits,
    pub budget: u64,
    pub snapshot_peers: Option<BTreeSet<PeerId>>,
    /// Peers blocked by the app or banned: their queued messages are dropped.
    pub blocked: Blocked,
    /// The data directory stays locked while any worker runs.
    pub _lock: DirLock,
    /// The error of a write or sync that failed in the command being
    /// handled, to say why the replica was poisoned if it was.
    pub last_error: Option<String>,
    /// Wait before the next reopen after a failure.
    pub backoff: Duration,
    /// When the replica was last reopened after a failure.
    pub reopened_at: Option<Instant>,
    /// How many of the replica's [`Replica::recovered`] notes were reported.
    pub recovered_seen: usize,
    /// Local operations durable but not yet published ([`Worker::publish_due`]).
    pub unpublished: Vec<OpEnvelope<D::Operation>>,
    /// Their bytes.
    pub unpublished_bytes: usize,
    /// When the oldest of them became durable.
    pub unpublished_since: Option<Instant>,
    /// When operations were last published.
    pub last_publish: Option<Instant>,
    /// Waits for the queue with a deadline (a runtime of this thread's
    /// own, with a timer and no threads); without it, the queue is polled.
    pub timer: Option<tokio::runtime::Runtime>,
}

/// Peers blocked or banned, shared by the swarm task (which writes it) and
/// the document workers.
pub(crate) type Blocked = Arc<RwLock<HashSet<PeerId>>>;

/// A document's replica, or why it is down and when to reopen it.
enum Health<D: Document> {
    Up(Box<Replica<D>>),
    Down { reason: String, retry_at: Instant },
}

enum Next<D: Document> {
    Cmd(DocCmd<D>),
    /// The time to reopen came.
    Due,
    /// Every sender is gone.
    Closed,
}

impl<D: Document> Worker<D> {
    pub fn run(mut self, replica: Replica<D>, mut rx: mpsc::Receiver<DocCmd<D>>) {
        self.report_recovered(&replica);
        let mut health = Health::Up(Box::new(replica));
        let mut pending = None;
        loop {
            if pending.is_none() {
                self.publish_due(rx.is_empty(), false);
            }
            if let Health::Down { retry_at, .. } = &health {
                if Instant::now() >= *retry_at {
                    health = self.reopen(health);
                }
            }
            let next = match pending.take() {
                Some(c) => Next::Cmd(c),
                None => {
                    let retry = match &health {
                        Health::Up(_) => None,
                        Health::Down { retry_at, .. } => Some(*retry_at),
                    };
                    let deadline = match (retry, self.publish_deadline()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    self.recv(&mut rx, deadline)
                }
            };
            let cmd = match next {
                Next::Cmd(c) => c,
                Next::Due => continue,
                Next::Closed => break,
            };
            if let DocCmd::Close { reply } = cmd {
                self.forward_changes();
                self.publish_due(true, true);
                let result = match health {
                    Health::Up(replica) => replica.close().map_err(NodeError::from),
                    // Nothing is open, and everything acknowledged is on disk.
                    Health::Down { .. } => Ok(()),
                };
                let _ = reply.send(result);
                return;
            }
            let replica = match &mut health {
                Health::Up(r) => r,
                Health::Down { reason, .. } => {
                    let reason = reason.clone();
                    self.refuse(cmd, reason);
                    continue;
                }
            };
            // An app closure that panics must not take the document down:
            // its caller gets an error (its reply is dropped) and the rest
            // go on. The replica stays consistent: in a write batch a panic
            // falls between whole operations.
            let handled =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(replica, cmd, &mut rx, &mut pending)));
            if handled.is_err() {
                error!(doc = %self.name, "a command panicked; its caller gets an error");
            }
            self.forward_changes();
            self.report_recovered(replica);
            if replica.is_poisoned() {
                health = self.failed_replica(health);
            } else {
                // A failure that did not poison the replica explains nothing later.
                self.last_error = None;
            }
        }
        self.publish_due(true, true);
        if let Health::Up(replica) = health {
            if let Err(e) = replica.close() {
                warn!(doc = %self.name, error = %e, "closing the replica failed");
            }
        }
    }

    /// Reports what the replica found wrong and worked around (a damaged
    /// checkpoint on open, its actor retired) since the last report.
    fn report_recovered(&mut self, replica: &Replica<D>) {
        for note in replica.recovered().iter().skip(self.recovered_seen) {
            warn!(doc = %self.name, "{note}");
            let _ = self.events.send(NodeEvent::Recovered { doc: self.name.clone(), note: note.clone() });
        }
        self.recovered_seen = replica.recovered().len();
    }

    /// Drops a poisoned replica (releasing its log) and schedules a reopen.
    fn failed_replica(&mut self, health: Health<D>) -> Health<D> {
        drop(health);
        let reason =
            self.last_error.take().unwrap_or_else(|| "the replica was poisoned by an earlier failure".to_string());
        if self.reopened_at.is_some_and(|t| t.elapsed() >= REOPEN_MAX) {
            // Healthy for a good while since the last failure: start afresh.
            self.backoff = REOPEN_MIN;
        }
        error!(doc = %self.name, error = %reason, retry_in = ?self.backoff, "document failed; reopening it");
        let _ = self.events.send(NodeEvent::DocumentFailed { doc: self.name.clone(), error: reason.clone() });
        let retry_at = Instant::now() + self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(REOPEN_MAX);
        Health::Down { reason, retry_at }
    }

    /// Opens the replica again (recovery decides what of the failed writes
    /// survived; none of them was acknowledged), or schedules another try.
    fn reopen(&mut self, health: Health<D>) -> Health<D> {
        let Health::Down { reason, .. } = health else { return health };
        // After a failed fsync the kernel may have dropped the pages yet
        // call them clean: what the reopened log reads back need not be on
        // disk, and a power loss could take operations peers already hold.
        // A new actor never reuses their numbers.
        // (An actor with nothing in the log has no numbers to reuse.)
        let opened = Replica::<D>::open(&self.dir, self.opts.clone()).and_then(|mut r| {
            if r.clock().get(&r.actor()) > 0 {
                r.retire_actor()?;
            }
            Ok(r)
        });
        match opened {
            Ok(mut replica) => {
                self.changes = replica.subscribe();
                self.recovered_seen = 0;
                self.report_recovered(&replica);
                self.last_error = None;
                self.reopened_at = Some(Instant::now());
                info!(doc = %self.name, "document reopened");
                let _ = self.events.send(NodeEvent::DocumentReopened { doc: self.name.clone() });
                Health::Up(Box::new(replica))
            }
            Err(e) => {
                warn!(doc = %self.name, error = %e, retry_in = ?self.backoff, "reopening the document failed");
                let retry_at = Instant::now() + self.backoff;
                self.backoff = self.backoff.saturating_mul(2).min(REOPEN_MAX);
                Health::Down { reason, retry_at }
            }
        }
    }

    /// Answers a command while the document is down: callers get
    /// [`NodeError::DocUnavailable`], peers' messages are left to
    /// anti-entropy once it is back.
    fn refuse(&mut self, cmd: DocCmd<D>, reason: String) {
        let down = || NodeError::DocUnavailable { doc: self.name.clone(), reason: reason.clone() };
        match cmd {
            DocCmd::Write { reply, .. } => {
                let _ = reply.send(Err(down()));
            }
            DocCmd::With(f) => f(Err(down())),
            DocCmd::Gossip { source, id, .. } => {
                self.send(FromDoc::Validated { id, source, acceptance: MessageAcceptance::Ignore });
            }
            DocCmd::Request { token, req } => {
                self.send(FromDoc::Respond { token, bytes: sync::encode_refusal(&req.doc, "unavailable") });
            }
            DocCmd::Pull { peer } | DocCmd::Response { peer, .. } => {
                self.send(FromDoc::Synced { peer, doc: self.name.clone(), more: false, ok: false });
            }
            DocCmd::Close { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn handle(
        &mut self,
        replica: &mut Replica<D>,
        cmd: DocCmd<D>,
        rx: &mut mpsc::Receiver<DocCmd<D>>,
        pending: &mut Option<DocCmd<D>>,
    ) {
        match cmd {
            DocCmd::Write { .. } | DocCmd::Gossip { .. } => self.group(replica, cmd, rx, pending),
            DocCmd::With(f) => f(Ok(replica)),
            DocCmd::Request { token, req } => {
                let span =
                    info_span!("sync_answer", doc = %self.name, their_ops = req.clock.total(), budget = req.budget);
                let _g = span.enter();
                let resp = sync::respond(replica, &self.name, &req, &self.limits);
                let bytes = sync::encode(&resp);
                debug!(answer = resp.kind(), bytes = bytes.len(), "answered");
                self.send(FromDoc::Respond { token, bytes });
            }
            DocCmd::Pull { peer } => {
                // Never ask for more than our own codec accepts.
                let budget = self.budget.min(self.limits.max_response as u64 / 2);
                match sync::encode_request(replica, &self.name, budget, &self.limits) {
                    Ok(bytes) => self.send(FromDoc::Pull { peer, doc: self.name.clone(), bytes }),
                    Err(e) => {
                        warn!(doc = %self.name, %peer, error = %e, "cannot pull");
                        self.send(FromDoc::Synced { peer, doc: self.name.clone(), more: false, ok: false });
                    }
                }
            }
            DocCmd::Response { peer, .. } if self.is_blocked(&peer) => {
                self.send(FromDoc::Synced { peer, doc: self.name.clone(), more: false, ok: false });
            }
            DocCmd::Response { peer, bytes } => self.response(replica, peer, &bytes),
            // Handled by `run`, which owns the replica.
            DocCmd::Close { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn is_blocked(&self, peer: &PeerId) -> bool {
        self.blocked.read().is_ok_and(|set| set.contains(peer))
    }

    fn send(&self, msg: FromDoc) {
        // The swarm task is gone only during shutdown; nothing to do then.
        let _ = self.to_swarm.send(msg);
    }

    fn forward_changes(&self) {
        while let Ok(change) = self.changes.try_recv() {
            let _ = self.events.send(NodeEvent::Changed { doc: self.name.clone(), change });
        }
    }

    /// Takes `first` and the writes and gossip queued behind it (up to the
    /// first other command, which is left in `pending`) and handles them
    /// as one group commit: gossip applied first, then the writes, then one
    /// wait makes all of it durable. Only then are writes acknowledged,
    /// gossip accepted for forwarding, and the new operations published.
    fn group(
        &mut self,
        replica: &mut Replica<D>,
        first: DocCmd<D>,
        rx: &mut mpsc::Receiver<DocCmd<D>>,
        pending: &mut Option<DocCmd<D>>,
    ) {
        let mut writes: Vec<PendingWrite<D>> = Vec::new();
        let mut gossip: Vec<(PeerId, MessageId, Queued)> = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                DocCmd::Write { make, reply } => writes.push((make, reply)),
                DocCmd::Gossip { source, id, bytes } => gossip.push((source, id, bytes)),
                other => {
                    *pending = Some(other);
                    break;
                }
            }
            if writes.len() < MAX_WRITE_BATCH && gossip.len() < MAX_GOSSIP_GROUP {
                next = rx.try_recv().ok();
            }
        }
        let (makes, replies): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        let ((verdicts, results), settled) = replica.grouped(|r| {
            // Each message's bytes are let go once applied: they count
            // against the node's queued-gossip budget.
            let verdicts: Vec<(PeerId, MessageId, MessageAcceptance)> =
                gossip.into_iter().map(|(source, id, bytes)| (source, id, self.gossip(r, source, &bytes))).collect();
            // An app's closure that panics fails the writes of the group
            // (their callers get an error), not the gossip's verdicts.
            let results = if makes.is_empty() {
                Some(Vec::new())
            } else {
                std::panic::catch_unwind(AssertUnwindSafe(|| r.update_many(makes))).ok()
            };
            (verdicts, results)
        });
        let mut failure = settled.err();
        if let Some(e) = &failure {
            self.last_error = Some(e.to_string());
        }
        let Some(results) = results else {
            error!(doc = %self.name, "a write's closure panicked; the writes of its group get an error");
            for (source, id, acceptance) in verdicts {
                let acceptance = if failure.is_none() { acceptance } else { MessageAcceptance::Ignore };
                self.send(FromDoc::Validated { id, source, acceptance });
            }
            return;
        };
        for (source, id, acceptance) in verdicts {
            // Nothing that is not durable here is forwarded.
            let acceptance = if failure.is_none() { acceptance } else { MessageAcceptance::Ignore };
            self.send(FromDoc::Validated { id, source, acceptance });
        }
        let results: Vec<_> = results
            .into_iter()
            .map(|r| match (r, failure.is_some()) {
                (Ok(env), false) => Ok(env),
                // Applied and logged but not durable: nothing is acknowledged.
                (Ok(_), true) => Err(NodeError::from(failure.take().unwrap_or(StorageError::Poisoned))),
                (Err(e), _) => Err(NodeError::from(e)),
            })
            .collect();
        self.acknowledge(results, replies);
    }

    /// When the operations waiting to be published are due.
    fn publish_deadline(&self) -> Option<Instant> {
        self.unpublished_since.map(|t| t + PUBLISH_DELAY)
    }

    /// The next command; `Due` at `deadline` if one is given and nothing
    /// came before it; `Closed` once every sender is gone.
    fn recv(&self, rx: &mut mpsc::Receiver<DocCmd<D>>, deadline: Option<Instant>) -> Next<D> {
        match (deadline, &self.timer) {
            (None, _) => rx.blocking_recv().map_or(Next::Closed, Next::Cmd),
            (Some(at), Some(timer)) => {
                let at = tokio::time::Instant::from_std(at);
                match timer.block_on(async { tokio::time::timeout_at(at, rx.recv()).await }) {
                    Ok(Some(c)) => Next::Cmd(c),
                    Ok(None) => Next::Closed,
                    Err(_) => Next::Due,
                }
            }
            (Some(at), None) => recv_until(rx, at),
        }
    }

    /// Acknowledges a group's writes and publishes what became durable.
    fn acknowledge(
        &mut self,
        results: Vec<Result<OpEnvelope<D::Operation>, NodeError>>,
        replies: Vec<Reply<OpEnvelope<D::Operation>>>,
    ) {
        let durable: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        if !durable.is_empty() {
            // The disk takes writes again: a later failure starts afresh.
            self.backoff = REOPEN_MIN;
        }
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            self.last_error = Some(e.to_string());
        }
        for (result, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(result);
        }
        // Offered to peers only now that they are durable: at once if
        // nothing else is queued, else with the writes of the groups that
        // follow (one message, one signature to check, for several).
        if self.unpublished.is_empty() && !durable.is_empty() {
            self.unpublished_since = Some(Instant::now());
        }
        self.unpublished_bytes += durable.iter().map(|e| e.op_bytes().len()).sum::<usize>();
        self.unpublished.extend(durable);
    }

    /// Publishes the operations written and not yet offered to peers: at
    /// once when nothing is queued (`idle`) and nothing was published in
    /// the last [`PUBLISH_DELAY`] (a single write goes out without delay);
    /// under a stream of writes, once they fill a gossip message or the
    /// oldest waited `PUBLISH_DELAY`. Fewer, larger messages: one signature
    /// to check per author and message, less framing per operation.
    /// With `force` (the document closes), whatever is waiting goes now.
    fn publish_due(&mut self, idle: bool, force: bool) {
        if self.unpublished.is_empty() {
            return;
        }
        let full = self.unpublished.len() >= PUBLISH_OPS || self.unpublished_bytes >= self.limits.max_gossip / 2;
        let late = self.unpublished_since.is_some_and(|t| t.elapsed() >= PUBLISH_DELAY);
        let quiet = self.timer.is_none() || self.last_publish.is_none_or(|t| t.elapsed() >= PUBLISH_DELAY);
        if !(force || full || late || (idle && quiet)) {
            return;
        }
        let ops = std::mem::take(&mut self.unpublished);
        self.unpublished_bytes = 0;
        self.unpublished_since = None;
        self.last_publish = Some(Instant::now());
        for data in sync::gossip_messages(&self.name, &ops, self.limits.max_gossip) {
            self.send(FromDoc::Publish { doc: self.name.clone(), data });
        }
    }

    /// Applies one gossip message; its verdict, to be sent once the group
    /// it is in is durable.
    fn gossip(&mut self, replica: &mut Replica<D>, source: PeerId, bytes: &[u8]) -> MessageAcceptance {
        if self.is_blocked(&source) {
            return MessageAcceptance::Ignore;
        }
        let acceptance = match sync::apply_gossip(replica, &self.name, bytes, &self.limits) {
            Ok(received) => {
                if received.buffered > 0 {
                    self.send(FromDoc::GapSeen { doc: self.name.clone(), peer: source });
                }
                if received.duplicates + received.not_writers + received.buffered + received.rejected > 0 {
                    // Not forwarded: peers have repeats already, operations
                    // of non-writers interest nobody, and an operation held
                    // for its predecessors has not been through the
                    // document's own check yet (a peer that applies it at
                    // once and refuses it would blame us).
                    MessageAcceptance::Ignore
                } else {
                    // Forwarded even with an equivocation in it: the other
                    // replicas then detect it too.
                    MessageAcceptance::Accept
                }
            }
            Err(e) => self.failed(source, "gossip", e),
        };
        // Also those found in a message that failed otherwise.
        self.report_equivocations(replica, source);
        acceptance
    }

    fn response(&mut self, replica: &mut Replica<D>, peer: PeerId, bytes: &[u8]) {
        // One sync round as the puller sees it: the answer's size, what it
        // brought and how long applying it took.
        let span = info_span!("sync_round", doc = %self.name, %peer, bytes = bytes.len());
        let _g = span.enter();
        let started = Instant::now();
        let resp: Result<SyncResponse, SyncError> =
            sync::decode(bytes, self.limits.max_response, "sync response").map_err(SyncError::from);
        let result = resp.and_then(|r| {
            if matches!(r, SyncResponse::Snapshot { .. })
                && self.snapshot_peers.as_ref().is_some_and(|trusted| !trusted.contains(&peer))
            {
                let _ = self.events.send(NodeEvent::SnapshotRefused { doc: self.name.clone(), peer });
                return Err(SyncError::Remote {
                    doc: self.name.clone(),
                    reason: "answered with a snapshot, which is accepted only from trusted peers".into(),
                });
            }
            sync::apply_response(replica, &self.name, r, &self.limits)
        });
        let (more, ok) = match result {
            Ok(applied) => {
                if applied.received.applied > 0 || applied.snapshot {
                    // Subscribers see the changes before the summary.
                    self.forward_changes();
                    debug!(
                        applied = applied.received.applied,
                        buffered = applied.received.buffered,
                        duplicates = applied.received.duplicates,
                        snapshot = applied.snapshot,
                        more = applied.more,
                        elapsed = ?started.elapsed(),
                        "pulled"
                    );
                    let _ = self.events.send(NodeEvent::Synced {
                        doc: self.name.clone(),
                        peer,
                        applied: applied.received.applied,
                        snapshot: applied.snapshot,
                    });
                }
                (applied.more, true)
            }
            Err(e) => {
                self.failed(peer, "sync response", e);
                (false, false)
            }
        };
        self.report_equivocations(replica, peer);
        self.send(FromDoc::Synced { peer, doc: self.name.clone(), more, ok });
    }

    fn report_equivocations(&mut self, replica: &mut Replica<D>, peer: PeerId) {
        let equivocations = replica.take_equivocations();
        if equivocations.is_empty() {
            return;
        }
        let mut proofs = replica.take_equivocation_proofs();
        for e in equivocations {
            warn!(doc = %self.name, actor = %e.actor, seq = e.seq, %peer, "equivocation");
            let proof = proofs.iter().position(|p| p.actor == e.actor && p.seq == e.seq).map(|i| proofs.swap_remove(i));
            let _ = self.events.send(NodeEvent::Equivocation {
                doc: self.name.clone(),
                actor: e.actor,
                seq: e.seq,
                peer,
                proof: proof.map(Box::new),
            });
        }
    }

    /// Reports a message that could not be applied; the verdict for gossip.
    fn failed(&mut self, peer: PeerId, what: &str, e: SyncError) -> MessageAcceptance {
        if e.is_peer_fault() {
            warn!(doc = %self.name, %peer, error = %e, "rejected {what}");
            self.send(FromDoc::Fault { peer, doc: self.name.clone(), reason: format!("{what}: {e}") });
            MessageAcceptance::Reject
        } else {
            debug!(doc = %self.name, %peer, error = %e, "{what} not applied");
            // Why the replica is poisoned, if this poisoned it.
            self.last_error = Some(format!("{what} from {peer}: {e}"));
            MessageAcceptance::Ignore
        }
    }
}

/// The next command, or `Due` at `deadline`, or `Closed`.
fn recv_until<D: Document>(rx: &mut mpsc::Receiver<DocCmd<D>>, deadline: Instant) -> Next<D> {
    loop {
        match rx.try_recv() {
            Ok(c) => return Next::Cmd(c),
            Err(mpsc::error::TryRecvError::Disconnected) => return Next::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Next::Due;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}
