//! The `converge` target: replicas that receive a fixed set of signed
//! operations by any schedule (any order, duplicates, drops, damaged
//! copies, catch-up pages with small budgets, gossip, checkpoints,
//! restarts) and then everything, converge.
//!
//! The operations come from one of [`HISTORIES`] small histories (built
//! once per process by [`histories`]): two or three actors (keys
//! [`ACTOR_SEEDS`]) writing puts and deletes on three keys of the document
//! [`DOC`], sometimes after catching up on each other, so that operations
//! see and overwrite other actors' values. Values are long enough that a
//! history spans more than one 4 KiB log segment, so checkpoints truncate
//! the log and catch-up falls back to snapshots.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | bits 0-1: history; bit 2: three replicas (else two); bits 3-4: automatic checkpoints every 0 (never), 800, 2500 or 0 log bytes; bit 5: final delivery through replica 0 (else directly to each); bit 6: final direct delivery one operation per call (else one batch) |
//! | 1 | seed of the final delivery order |
//! | 2.. | up to [`MAX_STEPS`] steps, see [`Step`] |
//!
//! Replicas (keys [`REPLICA_SEEDS`], none of them an author) live in
//! temporary directories, without fsync.
//!
//! Checks:
//! - every valid delivery, page and gossip message is accepted without
//!   error; a damaged copy of an operation changes nothing;
//! - after every step, the replica it touched has a version vector within
//!   the history's, a state equal to applying exactly the operations its
//!   version vector covers (per actor, in order) to an empty document, and
//!   at most as many buffered operations as the history has;
//! - a full pull terminates and leaves the puller covering the peer;
//! - after the final delivery every replica has the history's version
//!   vector and state and nothing buffered, still has them after a reopen,
//!   and a second catch-up round from replica 0 transfers nothing.

use std::sync::OnceLock;

use crdts::CmRDT;
use walrus::internals;
use walrus::replica::{
    ActorKey, Catchup, ChainHash, Document, EnvelopeError, KvDoc, KvOp, OpEnvelope, PeerError, ReceiveError, Replica,
    ReplicaOptions, VersionVector,
};
use walrus::sync::{self, SyncRequest, SyncResponse};
use walrus::wal::{SyncPolicy, WalOptions};

use crate::harness::{check_reopen, from_template, limits, observe, open_as, DOC};
use crate::Bytes;

/// Keys of the authors of the histories.
pub const ACTOR_SEEDS: [[u8; 32]; 3] = [[0x31; 32], [0x32; 32], [0x33; 32]];
/// Keys of the replicas.
pub const REPLICA_SEEDS: [[u8; 32]; 3] = [[0x41; 32], [0x42; 32], [0x43; 32]];
/// Number of histories an input can pick.
pub const HISTORIES: usize = 4;
/// Most steps an input runs before the final delivery.
pub const MAX_STEPS: usize = 48;
/// Automatic checkpoint thresholds (log bytes) header bits 3-4 pick.
pub const CHECKPOINT_BYTES: [u64; 4] = [0, 800, 2500, 0];

/// A fixed set of signed operations.
#[derive(Debug)]
pub struct History {
    /// In the order they were written (each actor's in sequence order).
    pub ops: Vec<OpEnvelope<KvOp>>,
    /// Operations per actor.
    pub clock: VersionVector,
    /// `canonical` of all operations applied.
    pub state: Vec<u8>,
}

impl History {
    /// The state of exactly the operations `clock` covers.
    pub fn state_at(&self, clock: &VersionVector) -> KvDoc {
        let mut doc = KvDoc::default();
        for env in self.ops.iter().filter(|e| e.seq() <= clock.get(&e.actor())) {
            doc.apply(env.op().clone());
        }
        doc
    }
}

/// A history of `len` operations by `actors` actors: each step either
/// writes an operation on one actor's state (mostly puts, some deletes, on
/// keys `a`, `b`, `c`) or catches one actor up on another's operations.
fn build_history(seed: u64, actors: usize, len: usize) -> History {
    let keys: Vec<ActorKey> = ACTOR_SEEDS[..actors].iter().map(|s| ActorKey::from_seed(*s)).collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut states = vec![KvDoc::default(); actors];
    // seen[i][j]: how many of j's operations actor i has applied.
    let mut seen = vec![vec![0usize; actors]; actors];
    let mut by_actor: Vec<Vec<OpEnvelope<KvOp>>> = vec![Vec::new(); actors];
    let mut ops = Vec::new();
    while ops.len() < len {
        let (i, j) = (rng.usize(..actors), rng.usize(..actors));
        if i != j && rng.usize(..3) == 0 {
            for env in &by_actor[j][seen[i][j]..] {
                states[i].apply(env.op().clone());
            }
            seen[i][j] = by_actor[j].len();
            continue;
        }
        let key = ["a", "b", "c"][rng.usize(..3)];
        let op = if rng.usize(..5) == 0 {
            states[i].del_op(key)
        } else {
            // Long values: a history spans several log segments.
            let value = format!("{i}:{}:{}", rng.u32(..100), "x".repeat(700));
            states[i].put_op(keys[i].actor(), key, &value)
        };
        states[i].apply(op.clone());
        let seq = by_actor[i].len() as u64 + 1;
        let prev = by_actor[i].last().map_or(ChainHash::ZERO, |e| e.hash());
        let env = OpEnvelope::signed::<KvDoc>(&keys[i], DOC, seq, prev, op).expect("signing an operation");
        by_actor[i].push(env.clone());
        seen[i][i] += 1;
        ops.push(env);
    }
    let clock: VersionVector = ops.iter().map(|e| (e.actor(), e.seq())).collect();
    let mut h = History { ops, clock, state: Vec::new() };
    h.state = h.state_at(&h.clock).canonical();
    h
}

/// The histories inputs pick from (signing is slow: built once).
pub fn histories() -> &'static [History] {
    static H: OnceLock<Vec<History>> = OnceLock::new();
    H.get_or_init(|| {
        vec![build_history(1, 2, 6), build_history(2, 3, 9), build_history(3, 3, 8), build_history(4, 2, 8)]
    })
}

/// One step of an input: a byte `s`, and for some kinds a parameter byte
/// `p`. The kind is `s & 7`; the replica acted on is `x = (s >> 3) % n`; a
/// second replica, where one is needed, is `y`, the `1 + (s >> 5) % (n -
/// 1)`-th after `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// 0 [p]: `x` receives operation `p % len`.
    Deliver(u8),
    /// 1 [p]: `x` receives, in one call and in reverse order, up to
    /// `1 + p / 32` operations from `p % len` on.
    Run(u8),
    /// 2 [p]: `x` asks `y` for one page with a budget of `16 + 8 p` bytes.
    Page(u8),
    /// 3: `y` gossips every operation in its log to `x`.
    Gossip,
    /// 4: `x` checkpoints.
    Checkpoint,
    /// 5: `x` is closed and reopened.
    Reopen,
    /// 6 [p]: `x` receives a damaged copy of operation `p % len`: `(p >> 4)
    /// % 4` picks a flipped signature bit, a changed sequence number or
    /// a changed operation (each carrying the original's signature), or
    /// the operation signed for another document (sent in a gossip page).
    Damaged(u8),
    /// 7 [p]: `x` pulls from `y` until nothing more is missing, with a
    /// budget of `16 + 8 p` bytes per page.
    Pull(u8),
}

impl Step {
    pub fn kind(self) -> u8 {
        match self {
            Step::Deliver(_) => 0,
            Step::Run(_) => 1,
            Step::Page(_) => 2,
            Step::Gossip => 3,
            Step::Checkpoint => 4,
            Step::Reopen => 5,
            Step::Damaged(_) => 6,
            Step::Pull(_) => 7,
        }
    }

    fn parse(s: u8, b: &mut Bytes<'_>) -> Step {
        match s & 7 {
            0 => Step::Deliver(b.u8()),
            1 => Step::Run(b.u8()),
            2 => Step::Page(b.u8()),
            3 => Step::Gossip,
            4 => Step::Checkpoint,
            5 => Step::Reopen,
            6 => Step::Damaged(b.u8()),
            _ => Step::Pull(b.u8()),
        }
    }

    /// The step's bytes acting on replica `x` (with `y` the `1 + other`-th
    /// after it).
    pub fn to_bytes(self, x: u8, other: u8) -> Vec<u8> {
        let s = self.kind() | (x & 3) << 3 | (other & 7) << 5;
        match self {
            Step::Deliver(p) | Step::Run(p) | Step::Page(p) | Step::Damaged(p) | Step::Pull(p) => vec![s, p],
            Step::Gossip | Step::Checkpoint | Step::Reopen => vec![s],
        }
    }
}

/// The header byte of an input.
pub fn header(history: u8, three: bool, checkpoints: u8, via_first: bool, one_by_one: bool) -> u8 {
    (history & 3) | u8::from(three) << 2 | (checkpoints & 3) << 3 | u8::from(via_first) << 5 | u8::from(one_by_one) << 6
}

fn options(checkpoint_bytes: u64) -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes, document: Some(DOC.into()), ..ReplicaOptions::default() }
}

struct Run<'h> {
    h: &'h History,
    replicas: Vec<Option<Replica<KvDoc>>>,
    opts: ReplicaOptions,
}

impl Run<'_> {
    fn get(&mut self, i: usize) -> &mut Replica<KvDoc> {
        self.replicas[i].as_mut().expect("a replica is only taken out while it is reopened")
    }

    /// The invariant every replica keeps between steps.
    fn check_consistent(&self, i: usize, when: &str) {
        let r = self.replicas[i].as_ref().expect("a replica");
        assert!(self.h.clock.covers(r.clock()), "replica {i} {when}: it has operations nobody wrote: {:?}", r.clock());
        // `==` on a `KvDoc` (ordered maps and sets) is equality of
        // `canonical`, without encoding both.
        assert!(
            *r.doc() == self.h.state_at(r.clock()),
            "replica {i} {when}: its state is not that of the operations its version vector covers"
        );
        assert!(r.buffered() <= self.h.ops.len(), "replica {i} {when}: {} operations buffered", r.buffered());
    }

    fn receive(&mut self, i: usize, ops: Vec<OpEnvelope<KvOp>>) {
        if let Err(e) = self.get(i).receive(ops) {
            panic!("replica {i} refused validly signed operations: {e}");
        }
    }

    /// `x` asks `y` for what it misses, through the wire codec: one page,
    /// or until nothing more is missing.
    fn pull(&mut self, x: usize, y: usize, budget: u64, all: bool) {
        let limits = limits();
        let rounds = if all { self.h.ops.len() + 3 } else { 1 };
        for _ in 0..rounds {
            let req = sync::encode(&sync::request(self.get(x), DOC, budget));
            let req: SyncRequest = sync::decode(&req, limits.max_request, "request").expect("a request decodes");
            let from = self.replicas[y].as_ref().expect("a replica");
            let resp = sync::encode(&sync::respond(from, DOC, &req, &limits));
            let resp: SyncResponse = sync::decode(&resp, limits.max_response, "response").expect("an answer decodes");
            let applied = match sync::apply_response(self.get(x), DOC, resp, &limits) {
                Ok(a) => a,
                Err(e) => panic!("replica {x} refused an honest answer of replica {y}: {e}"),
            };
            if !applied.more {
                if all {
                    let from = self.replicas[y].as_ref().expect("a replica").clock().clone();
                    assert!(
                        self.get(x).clock().covers(&from),
                        "after a full pull replica {x} misses operations of {y}"
                    );
                }
                return;
            }
        }
        assert!(!all, "pulling from replica {y} into {x} does not end");
    }

    fn step(&mut self, step: Step, x: usize, y: usize) {
        let len = self.h.ops.len();
        let op = |p: u8| self.h.ops[usize::from(p) % len].clone();
        match step {
            Step::Deliver(p) => {
                let env = op(p);
                self.receive(x, vec![env]);
            }
            Step::Run(p) => {
                let start = usize::from(p) % len;
                let end = (start + 1 + usize::from(p / 32)).min(len);
                let ops = self.h.ops[start..end].iter().rev().cloned().collect();
                self.receive(x, ops);
            }
            Step::Page(p) => self.pull(x, y, 16 + 8 * u64::from(p), false),
            Step::Pull(p) => self.pull(x, y, 16 + 8 * u64::from(p), true),
            Step::Gossip => {
                let from = self.replicas[y].as_ref().expect("a replica");
                let ops = match from.ops_since(&VersionVector::default(), usize::MAX) {
                    Ok(Catchup::Ops { ops, .. }) => ops,
                    // Truncated: nothing to gossip but what is still logged,
                    // and `ops_since` does not say what that is.
                    Ok(Catchup::Snapshot { .. }) => Vec::new(),
                    Err(e) => panic!("replica {y} cannot list its operations: {e}"),
                };
                let limits = limits();
                for msg in sync::gossip_messages(DOC, &ops, limits.max_gossip) {
                    if let Err(e) = sync::apply_gossip(self.get(x), DOC, &msg, &limits) {
                        panic!("replica {x} refused honest gossip of replica {y}: {e}");
                    }
                }
            }
            Step::Checkpoint => self.get(x).checkpoint().expect("a checkpoint"),
            Step::Reopen => {
                let r = self.replicas[x].take().expect("a replica");
                self.replicas[x] = Some(check_reopen(r, REPLICA_SEEDS[x], self.opts.clone()));
            }
            Step::Damaged(p) => {
                let env = op(p);
                let author = ACTOR_SEEDS.iter().map(|s| ActorKey::from_seed(*s)).find(|k| k.actor() == env.actor());
                let author = author.expect("an author of the history");
                let sig = env.signature().copied();
                let sign = |doc: &str, seq: u64, op: KvOp| {
                    OpEnvelope::signed::<KvDoc>(&author, doc, seq, env.prev(), op).expect("signing")
                };
                let env = match (p >> 4) % 4 {
                    0 => {
                        let mut bad = sig.expect("a signed operation");
                        bad.0[usize::from(p) % 64] ^= 1 << (p % 8);
                        env.with_signature(Some(bad))
                    }
                    1 => sign(DOC, env.seq() + 1, env.op().clone()).with_signature(sig),
                    2 => {
                        let op = match env.op().clone() {
                            KvOp::Put { key, dot, value, seen } => KvOp::Put { key, dot, value: value + "!", seen },
                            KvOp::Del { key, seen } => KvOp::Del { key: key + "!", seen },
                        };
                        sign(DOC, env.seq(), op).with_signature(sig)
                    }
                    // Signed for another document, and sent in a page as a
                    // peer would: the receiver hashes it under its own.
                    _ => sign("another document", env.seq(), env.op().clone()),
                };
                let before = observe(self.get(x));
                let result = if (p >> 4) % 4 == 3 {
                    let limits = limits();
                    let msg = sync::encode(&sync::Gossip {
                        doc: DOC.to_string(),
                        page: serde_bytes::ByteBuf::from(internals::page_of(std::slice::from_ref(&env))),
                    });
                    match sync::apply_gossip(self.get(x), DOC, &msg, &limits) {
                        Ok(report) => Ok(report),
                        Err(sync::SyncError::Receive(e)) => Err(e),
                        Err(e) => panic!("a page of one damaged operation was refused as a whole: {e}"),
                    }
                } else {
                    self.get(x).receive([env.clone()])
                };
                match &result {
                    Ok(report) => assert_eq!(report.duplicates, 1, "a damaged operation was taken: {report:?}"),
                    Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { actor, seq })))
                        if *actor == env.actor() && *seq == env.seq() => {}
                    Err(e) => panic!("a damaged operation gave {e}"),
                }
                assert_eq!(observe(self.get(x)), before, "a damaged operation changed replica {x}");
            }
        }
        self.check_consistent(x, &format!("after {step:?}"));
    }
}

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let mut input = Bytes::new(data);
    let head = input.u8();
    let order_seed = input.u8();
    let h = &histories()[usize::from(head & 3) % HISTORIES];
    let n = if head & 4 != 0 { 3 } else { 2 };
    let opts = options(CHECKPOINT_BYTES[usize::from(head >> 3 & 3)]);
    let (via_first, one_by_one) = (head & 32 != 0, head & 64 != 0);

    let tmp = crate::temp_dir();
    let dir = |i: usize| tmp.path().join(format!("r{i}"));
    let replicas = (0..n)
        .map(|i| {
            let seed = REPLICA_SEEDS[i];
            // The directory does not depend on the options: one template per replica.
            from_template(&dir(i), &format!("converge-{i}"), |d| {
                open_as(d, seed, options(0)).close().expect("closing a replica")
            });
            Some(open_as(&dir(i), seed, opts.clone()))
        })
        .collect();
    let mut run = Run { h, replicas, opts };

    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let s = input.u8();
        let step = Step::parse(s, &mut input);
        let x = usize::from(s >> 3) % n;
        let y = (x + 1 + usize::from(s >> 5) % (n - 1)) % n;
        run.step(step, x, y);
    }

    // Everything, in an order the input picks.
    let targets: Vec<usize> = if via_first { vec![0] } else { (0..n).collect() };
    for i in targets {
        let mut ops = h.ops.clone();
        fastrand::Rng::with_seed(u64::from(order_seed) << 8 | i as u64).shuffle(&mut ops);
        if one_by_one {
            for env in ops {
                run.receive(i, vec![env]);
            }
        } else {
            run.receive(i, ops);
        }
    }
    if via_first {
        for i in 1..n {
            run.pull(i, 0, 200, true);
        }
    }
    for (i, seed) in REPLICA_SEEDS.iter().enumerate().take(n) {
        let r = run.get(i);
        assert_eq!(r.clock(), &h.clock, "replica {i} did not get every operation");
        assert!(r.doc().canonical() == h.state, "replica {i} did not converge");
        assert_eq!(r.buffered(), 0, "replica {i} still buffers operations after receiving everything");
        let r = run.replicas[i].take().expect("a replica");
        run.replicas[i] = Some(check_reopen(r, *seed, run.opts.clone()));
    }
    // A second round transfers nothing.
    let limits = limits();
    let first = run.replicas[0].as_ref().expect("a replica");
    for i in 1..n {
        let other = run.replicas[i].as_ref().expect("a replica");
        match sync::respond(first, DOC, &sync::request(other, DOC, 1 << 20), &limits) {
            SyncResponse::Ops { page, more: false, .. }
                if internals::decode_page::<KvDoc>(&page, usize::MAX, usize::MAX, DOC).is_ok_and(|o| o.is_empty()) => {}
            other => panic!("a second round from replica 0 to {i} still transfers {other:?}"),
        }
    }
}
