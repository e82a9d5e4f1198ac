//! The sync protocol in a simulated network: several `Replica<KvDoc>` wired
//! together in-process through `walrus::sync` only (every message goes
//! through its CBOR bytes), over a network that drops, duplicates, reorders
//! and partitions messages.
//!
//! - `faulty_network_converges` (proptest), `faulty_network_with_snapshots_converges`
//!   (fixed seeds, checkpoints and a late joiner) and
//!   `gossip_alone_converges_in_any_order` (quickcheck): convergence under
//!   faults, checked against a model built from every operation written.
//! - `partition_then_heal`: two groups write (also the same keys) while cut
//!   off from each other, with anti-entropy driven by `Schedule`; after
//!   healing, concurrent puts show up as conflicting values everywhere.
//! - `checkpointed_source_serves_a_newcomer_a_snapshot_then_pages`: the
//!   snapshot path after the log was truncated; `snapshot_releases_early_gossip`:
//!   buffered gossip around a snapshot merge.
//! - `small_budgets_page`: paging and the response size limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use quickcheck::{QuickCheck, TestResult};
use tempfile::TempDir;
use walrus::internals::page_of;
use walrus::replica::WAL_DIR;
use walrus::replica::{
    ActorId, Catchup, ChainHash, Document, KvDoc, KvOp, OpEnvelope, Replica, ReplicaOptions, VersionVector,
};
use walrus::sync::{
    apply_gossip, apply_response, decode, encode, gossip_messages, request, respond, Applied, Gossip, Limits, Schedule,
    SyncRequest, SyncResponse, MAX_PAGE,
};
use walrus::wal::{SyncPolicy, WalOptions};

const DOC: &str = "sim";

/// No fsync per write, checkpoints only when a test asks, and small
/// segments so that a checkpoint really truncates the log.
fn opts() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions { wal, checkpoint_bytes: 0, ..ReplicaOptions::default() }
}

struct Node {
    r: Replica<KvDoc>,
    dir: TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Replica::open(dir.path(), opts()).expect("open replica");
        Node { r, dir }
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Gossip(Vec<u8>),
    Request(Vec<u8>),
    Response(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Packet {
    from: usize,
    to: usize,
    payload: Payload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
}

#[derive(Debug, Default)]
struct Stats {
    sent: usize,
    cut: usize,
    dropped: usize,
    duplicated: usize,
    requests: usize,
    snapshots: usize,
}

/// A response that arrived and was applied: `at` asked `peer`.
struct Answered {
    at: usize,
    peer: usize,
    applied: Applied,
}

/// Replicas and the messages in flight between them.
struct Sim {
    nodes: Vec<Node>,
    net: Vec<Packet>,
    limits: Limits,
    /// Every operation written locally, on any node.
    written: Vec<OpEnvelope<KvOp>>,
    /// Partition: a group per node; messages between groups vanish.
    groups: Option<Vec<u8>>,
    stats: Stats,
    /// Per node: remote operations reported applied, snapshots merged.
    applied: Vec<(usize, usize)>,
}

impl Sim {
    fn new(n: usize, limits: Limits) -> Sim {
        Sim {
            nodes: (0..n).map(|_| Node::new()).collect(),
            net: Vec::new(),
            limits,
            written: Vec::new(),
            groups: None,
            stats: Stats::default(),
            applied: vec![(0, 0); n],
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g[a] == g[b])
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.stats.sent += 1;
        if self.connected(from, to) {
            self.net.push(Packet { from, to, payload });
        } else {
            self.stats.cut += 1;
        }
    }

    /// Gossips freshly written operations of `node` to every other node.
    fn gossip(&mut self, node: usize, envs: &[OpEnvelope<KvOp>]) {
        let msgs = gossip_messages(DOC, envs, self.limits.max_gossip);
        for m in &msgs {
            assert!(m.len() <= self.limits.max_gossip, "gossip of {} bytes", m.len());
        }
        for peer in 0..self.nodes.len() {
            if peer != node {
                for m in &msgs {
                    self.send(node, peer, Payload::Gossip(m.clone()));
                }
            }
        }
    }

    fn put(&mut self, node: usize, key: &str, value: &str) {
        let env = self.nodes[node].r.update(|d, a| d.put_op(a, key, value)).expect("local put");
        self.written.push(env.clone());
        self.gossip(node, &[env]);
    }

    fn del(&mut self, node: usize, key: &str) {
        let env = self.nodes[node].r.update(|d, _| d.del_op(key)).expect("local del");
        self.written.push(env.clone());
        self.gossip(node, &[env]);
    }

    /// Several puts with one group commit, gossiped together.
    fn put_many(&mut self, node: usize, kvs: &[(String, String)]) {
        let makers = kvs.iter().map(|(k, v)| move |d: &KvDoc, a: ActorId| d.put_op(a, k, v));
        let envs: Vec<_> =
            self.nodes[node].r.update_many(makers).into_iter().map(|r| r.expect("local batch put")).collect();
        assert_eq!(envs.len(), kvs.len());
        for w in envs.windows(2) {
            assert_eq!(w[1].seq(), w[0].seq() + 1, "a batch takes consecutive sequence numbers");
        }
        self.written.extend(envs.iter().cloned());
        self.gossip(node, &envs);
    }

    /// `node` asks `peer` for what it is missing.
    fn pull(&mut self, node: usize, peer: usize, budget: u64) {
        self.stats.requests += 1;
        let req = encode(&request(&self.nodes[node].r, DOC, budget));
        self.send(node, peer, Payload::Request(req));
    }

    /// Takes the packet at `pick` (modulo the queue: any order) and drops,
    /// delivers, or delivers it and keeps a copy for later.
    fn deliver(&mut self, pick: usize, fate: Fate) -> Option<Answered> {
        if self.net.is_empty() {
            return None;
        }
        let packet = self.net.swap_remove(pick % self.net.len());
        match fate {
            Fate::Drop => {
                self.stats.dropped += 1;
                return None;
            }
            Fate::Duplicate => {
                self.stats.duplicated += 1;
                self.net.push(packet.clone());
            }
            Fate::Deliver => {}
        }
        self.handle(packet)
    }

    fn handle(&mut self, p: Packet) -> Option<Answered> {
        let limits = self.limits;
        match p.payload {
            Payload::Gossip(bytes) => {
                let got = apply_gossip(&mut self.nodes[p.to].r, DOC, &bytes, &limits).expect("genuine gossip applies");
                self.count(p.to, got.applied, false);
                None
            }
            Payload::Request(bytes) => {
                let req: SyncRequest = decode(&bytes, limits.max_request, "request").expect("request decodes");
                let resp = respond(&self.nodes[p.to].r, DOC, &req, &limits);
                assert!(
                    matches!(resp, SyncResponse::Ops { .. } | SyncResponse::Snapshot { .. }),
                    "unexpected answer {resp:?}"
                );
                if matches!(resp, SyncResponse::Snapshot { .. }) {
                    self.stats.snapshots += 1;
                }
                self.send(p.to, p.from, Payload::Response(encode(&resp)));
                None
            }
            Payload::Response(bytes) => {
                let resp: SyncResponse = decode(&bytes, limits.max_response, "response").expect("response decodes");
                let applied =
                    apply_response(&mut self.nodes[p.to].r, DOC, resp, &limits).expect("genuine response applies");
                self.count(p.to, applied.received.applied, applied.snapshot);
                Some(Answered { at: p.to, peer: p.from, applied })
            }
        }
    }

    fn count(&mut self, node: usize, applied: usize, snapshot: bool) {
        if self.applied.len() < self.nodes.len() {
            self.applied.resize(self.nodes.len(), (0, 0));
        }
        self.applied[node].0 += applied;
        self.applied[node].1 += usize::from(snapshot);
    }

    /// Fault-free pull of everything `node` is missing from `peer`, page by
    /// page (through the wire encoding). Returns operations applied plus
    /// snapshots merged.
    fn pull_all(&mut self, node: usize, peer: usize, budget: u64) -> usize {
        let limits = self.limits;
        let mut moved = 0;
        // Every page moves at least one operation, and a snapshot is
        // followed by pages: more rounds than operations is a loop.
        for _ in 0..self.written.len() + 8 {
            let req = encode(&request(&self.nodes[node].r, DOC, budget));
            let req: SyncRequest = decode(&req, limits.max_request, "request").expect("request decodes");
            let resp = encode(&respond(&self.nodes[peer].r, DOC, &req, &limits));
            let resp: SyncResponse = decode(&resp, limits.max_response, "response").expect("response decodes");
            let applied = apply_response(&mut self.nodes[node].r, DOC, resp, &limits).expect("response applies");
            self.count(node, applied.received.applied, applied.snapshot);
            moved += applied.received.applied + usize::from(applied.snapshot);
            if !applied.more {
                let (mine, theirs) = (self.nodes[node].r.clock(), self.nodes[peer].r.clock());
                assert!(mine.covers(theirs), "after a full pull {node} must cover {peer}: {mine:?} vs {theirs:?}");
                return moved;
            }
        }
        panic!("pulling from {peer} into {node} never ended");
    }

    /// Fault-free anti-entropy between every connected ordered pair until a
    /// pass changes nothing. Returns the number of passes.
    fn converge(&mut self, budget: u64) -> usize {
        let n = self.nodes.len();
        for pass in 1..=10 {
            let mut moved = 0;
            for node in 0..n {
                for peer in 0..n {
                    if node != peer && self.connected(node, peer) {
                        moved += self.pull_all(node, peer, budget);
                    }
                }
            }
            if moved == 0 {
                // Node 0 has everything after its pulls in the first pass,
                // and every other node pulls from it: the second pass must
                // find nothing.
                assert!(pass <= 2, "anti-entropy needed {pass} passes");
                return pass;
            }
        }
        panic!("anti-entropy did not converge in 10 passes");
    }

    /// The state every replica must reach: every written operation applied,
    /// actor by actor.
    fn model(&self) -> (VersionVector, KvDoc) {
        self.model_upto(None)
    }

    /// [`model`](Self::model) of the written operations `upto` covers
    /// (all of them if `None`).
    fn model_upto(&self, upto: Option<&VersionVector>) -> (VersionVector, KvDoc) {
        let mut ops: Vec<&OpEnvelope<KvOp>> =
            self.written.iter().filter(|e| upto.is_none_or(|c| e.seq() <= c.get(&e.actor()))).collect();
        ops.sort_by_key(|e| (e.actor(), e.seq()));
        let mut clock = VersionVector::default();
        let mut doc = KvDoc::default();
        for env in ops {
            assert_eq!(env.seq(), clock.get(&env.actor()) + 1, "written ops have gapless sequence numbers");
            clock.observe(env.actor(), env.seq());
            crdts::CmRDT::apply(&mut doc, env.op().clone());
        }
        (clock, doc)
    }

    /// Checks that `members` agree with each other, and with the model if
    /// they are all the nodes; then that another round moves nothing.
    fn assert_agree(&self, members: &[usize]) {
        let first = &self.nodes[members[0]].r;
        for &i in members {
            let r = &self.nodes[i].r;
            assert_eq!(r.clock(), first.clock(), "clocks of {} and {i} differ", members[0]);
            assert!(
                r.doc().canonical() == first.doc().canonical(),
                "documents of {} and {i} differ:\n{:?}\n{:?}",
                members[0],
                first.doc().entries(),
                r.doc().entries()
            );
            assert_eq!(r.buffered(), 0, "node {i} still holds early operations");
            // Each remote operation is applied once (a snapshot brings
            // some without applying them).
            let own = r.clock().get(&r.actor());
            let foreign = (r.clock().total() - own) as usize;
            let (applied, snapshots) = self.applied.get(i).copied().unwrap_or_default();
            if snapshots == 0 {
                assert_eq!(applied, foreign, "node {i} applied {applied} remote operations for {foreign} it has");
            } else {
                assert!(applied <= foreign, "node {i} applied {applied} remote operations for {foreign} it has");
            }
        }
        // Invariant 8: once converged, a round transfers nothing.
        for &i in members {
            for &j in members {
                if i != j {
                    let resp = respond(&self.nodes[j].r, DOC, &request(&self.nodes[i].r, DOC, 1), &self.limits);
                    match resp {
                        SyncResponse::Ops { page, more, .. } => {
                            assert!(is_empty_page(&page) && !more, "{j} still sends a page (more={more}) to {i}")
                        }
                        other => panic!("{j} answers converged {i} with {other:?}"),
                    }
                }
            }
        }
        if members.len() == self.nodes.len() {
            let (clock, doc) = self.model();
            assert_eq!(first.clock(), &clock, "the common clock is not every operation written");
            assert!(
                first.doc().canonical() == doc.canonical(),
                "converged state differs from the model:\n{:?}\n{:?}",
                first.doc().entries(),
                doc.entries()
            );
        }
    }
}

/// Whether a page carries no operation.
fn is_empty_page(page: &[u8]) -> bool {
    page == page_of::<KvOp>(&[]).as_slice()
}

// ---------------------------------------------------------------------------
// 1. Convergence under faults (proptest).

const KEYS: usize = 5;

#[derive(Debug, Clone)]
enum Step {
    Put { node: usize, key: usize, big: bool },
    Del { node: usize, key: usize },
    Batch { node: usize, keys: Vec<usize> },
    Pull { node: usize, peer: usize, budget: u64 },
    Deliver { pick: usize, fate: Fate },
    Checkpoint { node: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let fate = prop_oneof![6 => Just(Fate::Deliver), 2 => Just(Fate::Drop), 2 => Just(Fate::Duplicate)];
    prop_oneof![
        5 => (0..5usize, 0..KEYS, prop::bool::weighted(0.2)).prop_map(|(node, key, big)| Step::Put { node, key, big }),
        2 => (0..5usize, 0..KEYS).prop_map(|(node, key)| Step::Del { node, key }),
        1 => (0..5usize, prop::collection::vec(0..KEYS, 1..6)).prop_map(|(node, keys)| Step::Batch { node, keys }),
        3 => (0..5usize, 0..5usize, 64u64..2048).prop_map(|(node, peer, budget)| Step::Pull { node, peer, budget }),
        12 => (any::<usize>(), fate).prop_map(|(pick, fate)| Step::Deliver { pick, fate }),
        1 => (0..5usize).prop_map(|node| Step::Checkpoint { node }),
    ]
}

/// Gossip messages hold about three operations; a "big" value does not fit
/// one at all and travels by anti-entropy only.
fn sim_limits() -> Limits {
    Limits { max_gossip: 1100, ..Limits::default() }
}

fn run_schedule(n: usize, steps: &[Step]) -> Sim {
    let mut sim = Sim::new(n, sim_limits());
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Put { node, key, big } => {
                let node = node % n;
                let mut value = format!("{node}:{i}");
                if *big {
                    value.push_str(&"x".repeat(1500));
                }
                sim.put(node, &format!("k{key}"), &value);
            }
            Step::Del { node, key } => sim.del(node % n, &format!("k{key}")),
            Step::Batch { node, keys } => {
                let node = node % n;
                let kvs: Vec<_> =
                    keys.iter().enumerate().map(|(j, k)| (format!("k{k}"), format!("{node}:{i}.{j}"))).collect();
                sim.put_many(node, &kvs);
            }
            Step::Pull { node, peer, budget } => {
                let (node, peer) = (node % n, peer % n);
                if node != peer {
                    sim.pull(node, peer, *budget);
                }
            }
            Step::Deliver { pick, fate } => {
                if let Some(a) = sim.deliver(*pick, *fate) {
                    if a.applied.more {
                        // Keep paging; the follow-up may be lost too.
                        sim.pull(a.at, a.peer, 512);
                    }
                }
            }
            Step::Checkpoint { node } => sim.nodes[node % n].r.checkpoint().expect("checkpoint"),
        }
    }
    // The network dies with whatever it still carries; anti-entropy alone
    // must repair everything.
    sim.net.clear();
    sim
}

proptest! {
    // Few shrink steps: each one opens up to five replicas.
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn faulty_network_converges(n in 3usize..=5, steps in prop::collection::vec(step(), 20..300)) {
        let mut sim = run_schedule(n, &steps);
        sim.converge(700);
        let all: Vec<usize> = (0..n).collect();
        sim.assert_agree(&all);
    }
}

/// Fixed long schedules, so the snapshot path under faults is always hit
/// (the random ones rarely truncate a log before a peer needs it); half-way
/// a fifth replica joins with an empty directory.
#[test]
fn faulty_network_with_snapshots_converges() {
    for seed in [0xfa17, 0xbeef, 0x5eed] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut sim = Sim::new(4, sim_limits());
        for i in 0..1000 {
            if i == 500 {
                sim.nodes.push(Node::new());
            }
            let n = sim.nodes.len();
            match rng.usize(..100) {
                0..=29 => {
                    let node = rng.usize(..n);
                    sim.put(node, &format!("k{}", rng.usize(..8)), &format!("{node}:{i}"));
                }
                30..=34 => sim.del(rng.usize(..n), &format!("k{}", rng.usize(..8))),
                35..=44 => {
                    let (node, peer) = (rng.usize(..n), rng.usize(..n));
                    if node != peer {
                        sim.pull(node, peer, 300);
                    }
                }
                45..=46 => sim.nodes[rng.usize(..n)].r.checkpoint().expect("checkpoint"),
                _ => {
                    let fate = match rng.usize(..10) {
                        0..=1 => Fate::Drop,
                        2 => Fate::Duplicate,
                        _ => Fate::Deliver,
                    };
                    let pick = rng.usize(..);
                    if let Some(a) = sim.deliver(pick, fate) {
                        if a.applied.more {
                            sim.pull(a.at, a.peer, 300);
                        }
                    }
                }
            }
        }
        sim.net.clear();
        assert!(sim.stats.snapshots > 0, "no snapshot was ever sent: {:?}", sim.stats);
        assert!(sim.stats.dropped > 0 && sim.stats.duplicated > 0, "{:?}", sim.stats);
        sim.converge(500);
        sim.assert_agree(&(0..sim.nodes.len()).collect::<Vec<_>>());
    }
}

/// Gossip alone, reordered and duplicated but never lost, makes replicas
/// equal without any anti-entropy.
#[test]
fn gossip_alone_converges_in_any_order() {
    fn prop(writes: Vec<(u8, u8, bool)>, seed: u64) -> TestResult {
        if writes.is_empty() {
            return TestResult::discard();
        }
        let n = 3;
        let mut sim = Sim::new(n, sim_limits());
        let mut rng = fastrand::Rng::with_seed(seed);
        for (i, (node, key, del)) in writes.iter().enumerate() {
            let node = usize::from(*node) % n;
            let key = format!("k{}", key % 4);
            if *del {
                sim.del(node, &key);
            } else {
                sim.put(node, &key, &format!("{node}:{i}"));
            }
            // Deliver some of what is in flight, in random order.
            while !sim.net.is_empty() && rng.u64(..100) < 40 {
                let fate = if rng.u64(..100) < 20 { Fate::Duplicate } else { Fate::Deliver };
                let pick = rng.usize(..);
                sim.deliver(pick, fate);
            }
        }
        while !sim.net.is_empty() {
            let fate = if rng.u64(..100) < 10 { Fate::Duplicate } else { Fate::Deliver };
            let pick = rng.usize(..);
            sim.deliver(pick, fate);
        }
        sim.assert_agree(&(0..n).collect::<Vec<_>>());
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(20)
        .rng(quickcheck::Gen::new(40))
        .quickcheck(prop as fn(Vec<(u8, u8, bool)>, u64) -> TestResult);
}

// ---------------------------------------------------------------------------
// 2. Partition and heal, anti-entropy driven by `Schedule`.

/// Anti-entropy driven by one `Schedule` per node on simulated time, with
/// request timeouts.
struct Driver {
    schedules: Vec<Schedule<usize>>,
    in_flight: BTreeMap<(usize, usize), Instant>,
    now: Instant,
    rng: fastrand::Rng,
}

const TICK: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(400);

impl Driver {
    fn new(n: usize, seed: u64) -> Driver {
        let now = Instant::now();
        let mut schedules = Vec::new();
        for i in 0..n {
            let mut s = Schedule::new(Duration::from_millis(300), seed + i as u64);
            for j in (0..n).filter(|&j| j != i) {
                s.add(j, DOC, now);
            }
            schedules.push(s);
        }
        Driver { schedules, in_flight: BTreeMap::new(), now, rng: fastrand::Rng::with_seed(seed) }
    }

    /// One tick of lossy traffic: due requests go out, some packets are
    /// delivered (dropped, duplicated, reordered), overdue requests fail.
    fn tick(&mut self, sim: &mut Sim) {
        for i in 0..self.schedules.len() {
            for (peer, doc) in self.schedules[i].due(self.now) {
                assert_eq!(doc, DOC);
                sim.pull(i, peer, 400);
                self.in_flight.insert((i, peer), self.now);
            }
        }
        for _ in 0..1 + self.rng.usize(..sim.net.len().max(1)) {
            let fate = match self.rng.usize(..10) {
                0..=1 => Fate::Drop,
                2 => Fate::Duplicate,
                _ => Fate::Deliver,
            };
            let pick = self.rng.usize(..);
            if let Some(a) = sim.deliver(pick, fate) {
                // A duplicate or late answer is applied but does not count
                // as the answer to the request in flight.
                if self.in_flight.remove(&(a.at, a.peer)).is_some() {
                    self.schedules[a.at].completed(&a.peer, DOC, a.applied.more, self.now);
                }
            }
        }
        let overdue: Vec<_> =
            self.in_flight.iter().filter(|(_, &sent)| self.now - sent > TIMEOUT).map(|(&k, _)| k).collect();
        for (i, peer) in overdue {
            self.in_flight.remove(&(i, peer));
            self.schedules[i].failed(&peer, DOC, self.now);
        }
        self.now += TICK;
    }
}

#[test]
fn partition_then_heal() {
    let n = 4;
    let mut sim = Sim::new(n, sim_limits());
    let mut drv = Driver::new(n, 0x9a27);
    let mut rng = fastrand::Rng::with_seed(0x1234);
    let actors: Vec<ActorId> = sim.nodes.iter().map(|nd| nd.r.actor()).collect();

    // Connected: a common past, spread by the schedule and finished off
    // fault-free.
    sim.put(0, "base", "v0");
    sim.put(1, "gone", "g0");
    for i in 0..40 {
        if rng.u64(..100) < 30 {
            let node = rng.usize(..n);
            sim.put(node, &format!("r{}", rng.usize(..5)), &format!("{node}:{i}"));
        }
        drv.tick(&mut sim);
    }
    sim.converge(400);
    sim.assert_agree(&[0, 1, 2, 3]);
    let before = sim.nodes[0].r.clock().clone();

    // Partition {0, 1} | {2, 3}; both sides write, also the same keys.
    sim.groups = Some(vec![0, 0, 1, 1]);
    let cut_before = sim.stats.cut;
    sim.put(0, "shared", "left");
    sim.put(2, "shared", "right");
    sim.del(1, "base");
    sim.put(3, "base", "right-base");
    sim.del(1, "gone");
    sim.del(2, "gone");
    for i in 0..80 {
        if rng.u64(..100) < 40 {
            let node = rng.usize(..n);
            if rng.u64(..100) < 20 {
                sim.del(node, &format!("r{}", rng.usize(..5)));
            } else {
                sim.put(node, &format!("r{}", rng.usize(..5)), &format!("p{node}:{i}"));
            }
        }
        drv.tick(&mut sim);
    }
    assert!(sim.stats.cut > cut_before, "the partition never cut a message");
    sim.converge(400);
    sim.assert_agree(&[0, 1]);
    sim.assert_agree(&[2, 3]);
    for (side, other) in [([0, 1], [2, 3]), ([2, 3], [0, 1])] {
        for i in side {
            for j in other {
                let seen = sim.nodes[i].r.clock().get(&actors[j]);
                assert_eq!(seen, before.get(&actors[j]), "{i} saw writes of {j} across the partition");
            }
        }
    }
    assert_eq!(sim.nodes[0].r.doc().values_of("shared"), vec!["left"]);
    assert_eq!(sim.nodes[3].r.doc().values_of("shared"), vec!["right"]);
    assert!(sim.nodes[0].r.doc().values_of("base").is_empty());
    assert_eq!(sim.nodes[2].r.doc().values_of("base"), vec!["right-base"]);

    // Heal: lossy traffic for a while, then fault-free anti-entropy.
    sim.groups = None;
    for _ in 0..60 {
        drv.tick(&mut sim);
    }
    sim.converge(400);
    sim.assert_agree(&[0, 1, 2, 3]);
    for nd in &sim.nodes {
        let doc = nd.r.doc();
        // Concurrent puts: both values, the same everywhere.
        assert_eq!(doc.values_of("shared"), vec!["left", "right"]);
        // A delete loses to a concurrent put; concurrent deletes agree.
        assert_eq!(doc.values_of("base"), vec!["right-base"]);
        assert!(doc.values_of("gone").is_empty());
    }

    // A later put, having seen both, resolves the conflict everywhere.
    sim.put(1, "shared", "resolved");
    for _ in 0..20 {
        drv.tick(&mut sim);
    }
    sim.converge(400);
    sim.assert_agree(&[0, 1, 2, 3]);
    for nd in &sim.nodes {
        assert_eq!(nd.r.doc().values_of("shared"), vec!["resolved"]);
    }
    assert!(sim.stats.requests > 50, "the schedule sent few requests: {:?}", sim.stats);
}

// ---------------------------------------------------------------------------
// 3. Snapshot path.

fn wire_round(from: &Replica<KvDoc>, to: &Replica<KvDoc>, budget: u64, limits: &Limits) -> SyncResponse {
    let req: SyncRequest = decode(&encode(&request(to, DOC, budget)), limits.max_request, "request").unwrap();
    decode(&encode(&respond(from, DOC, &req, limits)), limits.max_response, "response").unwrap()
}

fn assert_nothing_to_send(from: &Replica<KvDoc>, to: &Replica<KvDoc>, limits: &Limits) {
    match wire_round(from, to, 1, limits) {
        SyncResponse::Ops { page, more, .. } => {
            assert!(is_empty_page(&page) && !more, "a page of {} bytes, more={more}", page.len())
        }
        other => panic!("expected an empty page, got {other:?}"),
    }
}

fn wal_files(r: &Replica<KvDoc>) -> usize {
    std::fs::read_dir(r.dir().join(WAL_DIR)).unwrap().count()
}

#[test]
fn checkpointed_source_serves_a_newcomer_a_snapshot_then_pages() {
    let limits = Limits::default();
    let mut sim = Sim::new(2, limits);
    // The source holds its own operations and a peer's.
    for i in 0..40 {
        sim.put(1, &format!("h{}", i % 9), &format!("helper {i}"));
    }
    for i in 0..120 {
        if i % 10 == 9 {
            sim.del(0, &format!("k{}", i % 13));
        } else {
            sim.put(0, &format!("k{}", i % 13), &format!("source {i}"));
        }
    }
    sim.net.clear();
    assert!(sim.pull_all(0, 1, 1 << 20) == 40);
    let files = wal_files(&sim.nodes[0].r);
    // Two: the log is kept back to the checkpoint before last.
    sim.nodes[0].r.checkpoint().unwrap();
    sim.nodes[0].r.checkpoint().unwrap();
    assert!(wal_files(&sim.nodes[0].r) < files, "the checkpoint truncated no segment");
    // A tail after the checkpoint.
    for i in 0..10 {
        sim.put(0, "tail", &format!("t{i}"));
    }
    sim.net.clear();

    let newcomer = Node::new();
    let mut fresh = newcomer.r;
    let src = &sim.nodes[0].r;
    match wire_round(src, &fresh, 256, &limits) {
        resp @ SyncResponse::Snapshot { .. } => {
            let SyncResponse::Snapshot { clock, .. } = &resp else { unreachable!() };
            assert_eq!(clock, src.clock());
            let applied = apply_response(&mut fresh, DOC, resp, &limits).unwrap();
            assert!(applied.snapshot && applied.more, "{applied:?}");
        }
        other => panic!("a newcomer to a truncated log must get a snapshot, got {other:?}"),
    }
    assert_eq!(fresh.clock(), src.clock());
    assert!(fresh.doc().canonical() == src.doc().canonical());

    // The source keeps writing; the newcomer keeps paging.
    for i in 0..60 {
        sim.put(0, &format!("after{}", i % 7), &format!("a{i}"));
    }
    sim.net.clear();
    let src = &sim.nodes[0].r;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 1000, "paging never ends");
        let resp = wire_round(src, &fresh, 256, &limits);
        assert!(matches!(resp, SyncResponse::Ops { .. }), "after the snapshot only pages: {resp:?}");
        let applied = apply_response(&mut fresh, DOC, resp, &limits).unwrap();
        assert_eq!(applied.received.buffered + applied.received.duplicates, 0, "{applied:?}");
        if !applied.more {
            break;
        }
    }
    assert!(pages > 3, "a 256-byte budget must page: {pages} pages");
    assert!(fresh.clock().covers(src.clock()));
    assert_eq!(fresh.clock(), src.clock());
    assert!(fresh.doc().canonical() == src.doc().canonical());
    assert_nothing_to_send(src, &fresh, &limits);
    assert_nothing_to_send(&fresh, src, &limits);

    // The merged snapshot is durable: the newcomer reopens to the same state.
    let (clock, canon) = (fresh.clock().clone(), fresh.doc().canonical());
    fresh.close().unwrap();
    let fresh = Replica::<KvDoc>::open(newcomer.dir.path(), opts()).unwrap();
    assert_eq!(fresh.clock(), &clock);
    assert!(fresh.doc().canonical() == canon);

    // The newcomer lacks the log of what the snapshot brought, so it too
    // serves a snapshot to the next newcomer.
    let mut third = Node::new();
    let mut saw_snapshot = false;
    for _ in 0..1000 {
        let resp = wire_round(&fresh, &third.r, 256, &limits);
        saw_snapshot |= matches!(resp, SyncResponse::Snapshot { .. });
        if !apply_response(&mut third.r, DOC, resp, &limits).unwrap().more {
            break;
        }
    }
    assert!(saw_snapshot, "the newcomer paged operations it has no log of");
    assert_eq!(third.r.clock(), src.clock());
    assert!(third.r.doc().canonical() == src.doc().canonical());
    assert_nothing_to_send(&fresh, &third.r, &limits);

    // And the helper, missing the truncated operations, catches up too.
    sim.converge(256);
    sim.assert_agree(&[0, 1]);
    assert_eq!(sim.nodes[1].r.clock(), third.r.clock());
}

/// Gossip that arrived early waits in the causal buffer; merging a
/// snapshot drops what it covers and applies what it unblocks.
#[test]
fn snapshot_releases_early_gossip() {
    let limits = Limits::default();
    let mut sim = Sim::new(2, limits);
    let big = "v".repeat(300);
    for i in 0..20 {
        sim.put(0, &format!("k{}", i % 5), &format!("{i}{big}"));
    }
    sim.nodes[0].r.checkpoint().unwrap();
    sim.nodes[0].r.checkpoint().unwrap();
    sim.put(0, "k0", "21");
    sim.net.clear();
    sim.put(0, "k1", "22");
    let early = sim.net.pop().expect("gossip of op 22");
    // Computed now, delivered after op 23 was written and gossiped.
    let snapshot = wire_round(&sim.nodes[0].r, &sim.nodes[1].r, 1 << 20, &limits);
    assert!(matches!(snapshot, SyncResponse::Snapshot { .. }), "expected a snapshot, got {snapshot:?}");
    sim.put(0, "k2", "23");
    let later = sim.net.pop().expect("gossip of op 23");
    sim.handle(early);
    sim.handle(later);
    let a = sim.nodes[0].r.actor();
    assert_eq!(sim.nodes[1].r.buffered(), 2);
    assert_eq!(sim.nodes[1].r.clock().get(&a), 0);
    let applied = apply_response(&mut sim.nodes[1].r, DOC, snapshot, &limits).unwrap();
    assert!(applied.snapshot && applied.more);
    sim.count(1, applied.received.applied, true);
    // Op 22 is in the snapshot, op 23 follows it.
    assert_eq!(sim.nodes[1].r.buffered(), 0, "the snapshot left buffered operations behind");
    assert_eq!(sim.nodes[1].r.clock().get(&a), 23);
    assert_eq!(sim.nodes[1].r.doc().values_of("k2"), vec!["23"]);
    assert_nothing_to_send(&sim.nodes[0].r, &sim.nodes[1].r, &limits);
    sim.assert_agree(&[0, 1]);
}

// ---------------------------------------------------------------------------
// 4. Paging.

/// A source holding 3 actors' operations, each signed on its own (the
/// others' arrive one by one, by gossip), their count, and the bytes a
/// page budget counts for them (each operation's bytes and one).
fn paging_source() -> (Sim, usize, usize) {
    let mut sim = Sim::new(3, Limits::default());
    for i in 0..60 {
        for node in 0..3 {
            if i % 11 == 10 {
                sim.del(node, &format!("k{}", (i + node) % 17));
            } else {
                sim.put(node, &format!("k{}", (i + node) % 17), &format!("{node} wrote {i}"));
            }
        }
    }
    // The source takes its gossip in order, one operation per message.
    let to_source: Vec<Packet> = sim.net.drain(..).filter(|p| p.to == 0).collect();
    for p in to_source {
        sim.handle(p);
    }
    let total = sim.written.len();
    assert_eq!(sim.nodes[0].r.clock().total() as usize, total);
    let bytes = sim.written.iter().map(|e| e.op_bytes().len() + 1).sum();
    (sim, total, bytes)
}

/// Each actor's operations in a page end at a signed head. Where every
/// operation in the source's log is a signed head on its own (`singles`),
/// the page stops at the first operation (in log order: the last of some
/// actor's here) that brings it to its budget, each operation counting
/// its bytes and one.
fn check_page_budget(ops: &[OpEnvelope<KvOp>], budget: usize, singles: bool) {
    let used = |e: &OpEnvelope<KvOp>| e.op_bytes().len() + 1;
    let mut lasts = Vec::new();
    for (i, e) in ops.iter().enumerate() {
        if ops[i + 1..].iter().all(|n| n.actor() != e.actor()) {
            assert!(e.signature().is_some(), "a page ends ({}, {}) at no signed head", e.actor(), e.seq());
            lasts.push(used(e));
        }
    }
    if singles {
        let total: usize = ops.iter().map(used).sum();
        let last = lasts.iter().copied().max().unwrap_or(0);
        assert!(
            total - last < budget,
            "a page of {} operations and {total} bytes went on past its budget of {budget}",
            ops.len()
        );
    }
}

/// Pages everything from `src` into a fresh replica with `budget`,
/// checking each page against what the source's log holds for it
/// (`ops_since` with the page's budget). Returns the fresh replica, the
/// page count and the most operations one page moved.
fn page_into_fresh(src: &Replica<KvDoc>, budget: u64, limits: &Limits, singles: bool) -> (Node, usize, usize) {
    let mut dst = Node::new();
    let page_limit = usize::try_from(budget).unwrap_or(usize::MAX).min(limits.max_response / 2).clamp(1, MAX_PAGE);
    let (mut pages, mut widest) = (0, 0);
    loop {
        pages += 1;
        assert!(pages <= 10_000, "paging never ends");
        let req = encode(&request(&dst.r, DOC, budget));
        let req: SyncRequest = decode(&req, limits.max_request, "request").unwrap();
        let bytes = encode(&respond(src, DOC, &req, limits));
        assert!(bytes.len() <= limits.max_response, "a page of {} bytes exceeds the response limit", bytes.len());
        let resp: SyncResponse = decode(&bytes, limits.max_response, "response").unwrap();
        let SyncResponse::Ops { more, .. } = &resp else { panic!("expected a page, got {resp:?}") };
        let more = *more;
        let Catchup::Ops { ops, more: log_more } = src.ops_since(dst.r.clock(), page_limit).unwrap() else {
            panic!("the source's log is whole")
        };
        assert_eq!(more, log_more);
        check_page_budget(&ops, page_limit, singles);
        let n = ops.len();
        assert!(n > 0, "page {pages} is empty but the source has more");
        widest = widest.max(n);
        let mut want = dst.r.clock().clone();
        for e in &ops {
            assert_eq!(e.seq(), want.get(&e.actor()) + 1, "page out of per-actor order");
            want.observe(e.actor(), e.seq());
        }
        let applied = apply_response(&mut dst.r, DOC, resp, limits).unwrap();
        assert_eq!(applied.received.applied, n, "a page must apply in the order sent: {applied:?}");
        assert_eq!(dst.r.clock(), &want, "the page held other operations than the log's");
        assert_eq!(applied.more, more);
        if !more {
            break;
        }
    }
    assert_eq!(dst.r.clock(), src.clock());
    assert!(dst.r.doc().canonical() == src.doc().canonical());
    assert_nothing_to_send(src, &dst.r, limits);
    (dst, pages, widest)
}

#[test]
fn small_budgets_page() {
    let (sim, total, bytes) = paging_source();
    let src = &sim.nodes[0].r;
    assert_eq!(src.clock().total() as usize, total);
    let limits = Limits::default();
    let largest = sim.written.iter().map(|e| e.op_bytes().len() + 1).max().unwrap();

    // Every page but the last reaches the budget; none passes it by more
    // than its last operation (every operation is a signed head here).
    let (_, pages, _) = page_into_fresh(src, 800, &limits, true);
    assert!((pages - 1) * 800 <= bytes, "{pages} pages for {bytes} bytes at 800 per page");
    assert!(pages * (800 + largest) >= bytes, "{pages} pages for {bytes} bytes at 800 per page");
    assert!(pages < total, "an 800-byte page must hold several operations: {pages} pages, {total} ops");

    // A budget below one operation still moves one per page.
    let (_, pages, _) = page_into_fresh(src, 0, &limits, true);
    assert_eq!(pages, total);

    // One page for everything when the budget allows it.
    let (_, pages, _) = page_into_fresh(src, u64::MAX, &limits, true);
    assert_eq!(pages, 1);

    // The responder caps a greedy requester at half its response limit.
    let tight = Limits { max_response: 2048, ..Limits::default() };
    let (_, pages, _) = page_into_fresh(src, u64::MAX, &tight, true);
    assert!((pages - 1) * 1024 <= bytes, "{pages} pages for {bytes} bytes at 1024 per page");
    assert!(pages * (1024 + largest) >= bytes, "{pages} pages for {bytes} bytes at 1024 per page");

    // Pages from a source that also holds unrelated actors skip what the
    // requester already has.
    let mut partial = Node::new();
    let helper = sim.nodes[1].r.actor();
    let half = sim.written.iter().filter(|e| e.actor() == helper).cloned().collect::<Vec<_>>();
    partial.r.receive(half.clone()).unwrap();
    let mut moved = BTreeSet::new();
    loop {
        let before = partial.r.clock().clone();
        let resp = wire_round(src, &partial.r, 200, &limits);
        let SyncResponse::Ops { more, .. } = &resp else { panic!("{resp:?}") };
        let more = *more;
        let applied = apply_response(&mut partial.r, DOC, resp, &limits).unwrap();
        assert_eq!(applied.received.duplicates, 0, "resent an operation the requester has: {applied:?}");
        assert_eq!(applied.received.buffered, 0, "{applied:?}");
        let after = partial.r.clock();
        assert_eq!(after.get(&helper), before.get(&helper), "resent an operation the requester has");
        for (actor, &upto) in after.iter() {
            for seq in before.get(actor) + 1..=upto {
                assert!(moved.insert((*actor, seq)), "sent ({actor}, {seq}) twice");
            }
        }
        assert_eq!(applied.received.applied, after.total() as usize - before.total() as usize);
        if !more {
            break;
        }
    }
    assert_eq!(moved.len() + half.len(), total);
    assert!(partial.r.doc().canonical() == src.doc().canonical());
}

/// Operations a source received together are one run under one signed
/// head in its log: it serves the run whole, however small the budget,
/// since nothing before its head can be proven to the requester.
#[test]
fn a_received_run_is_served_whole_past_the_budget() {
    let limits = Limits::default();
    let mut sim = Sim::new(2, limits);
    for i in 0..30 {
        sim.put(1, &format!("k{}", i % 7), &format!("helper {i}"));
    }
    for i in 0..10 {
        sim.put(0, &format!("own{i}"), "source");
    }
    sim.net.clear();
    // One page: the helper's 30 operations arrive as one run.
    assert_eq!(sim.pull_all(0, 1, 1 << 20), 30);
    let (_, pages, widest) = page_into_fresh(&sim.nodes[0].r, 0, &limits, false);
    assert_eq!((pages, widest), (11, 30), "one page per own operation, one for the received run");
    let (_, pages, _) = page_into_fresh(&sim.nodes[0].r, 100, &limits, false);
    assert!(pages <= 11, "{pages} pages");
}

/// A version vector of many actors makes a request larger than a peer
/// with the same limits accepts: it is not built for sending, and the
/// error is a local one (no peer is at fault).
#[test]
fn a_request_too_large_for_the_limit_is_not_sent() {
    use walrus::replica::ActorKey;
    use walrus::sync::{encode_request, SyncError};
    let dir = tempfile::tempdir().unwrap();
    let mut r: Replica<KvDoc> = Replica::open(dir.path(), opts()).unwrap();
    let limits = Limits { max_request: 400, ..Limits::default() };
    let sizes = |r: &Replica<KvDoc>| encode(&request(r, DOC, 1 << 20)).len();
    assert!(encode_request(&r, DOC, 1 << 20, &limits).is_ok());
    let mut actors = 0;
    while sizes(&r) <= limits.max_request {
        actors += 1;
        let key = ActorKey::from_seed([actors; 32]);
        let dot = walrus::replica::Dot { actor: key.actor(), counter: 1 };
        let op = KvOp::Put { key: "k".into(), dot, value: "v".into(), seen: vec![] };
        let env = OpEnvelope::signed::<KvDoc>(&key, r.document(), 1, ChainHash::ZERO, op).unwrap();
        r.receive([env]).unwrap();
    }
    let err = encode_request(&r, DOC, 1 << 20, &limits).unwrap_err();
    match &err {
        SyncError::RequestTooLarge { len, limit, actors: n, .. } => {
            assert_eq!((*len, *limit, *n), (sizes(&r), 400, usize::from(actors)));
        }
        other => panic!("{other}"),
    }
    assert!(!err.is_peer_fault(), "{err}");
    // The same request at a larger limit goes out.
    let roomy = Limits { max_request: sizes(&r), ..limits };
    let bytes = encode_request(&r, DOC, 1 << 20, &roomy).unwrap();
    let req: SyncRequest = decode(&bytes, roomy.max_request, "request").unwrap();
    assert_eq!(&req.clock, r.clock());
}

// ---------------------------------------------------------------------------
// 5. Pages cut anywhere, and damaged pages.

/// `node` pulls everything it misses from `peer`, each request with the
/// next of `budgets`: every page, wherever its budget cut it, verifies.
fn pull_cut_anywhere(sim: &mut Sim, node: usize, peer: usize, budgets: &mut impl Iterator<Item = u64>) {
    let limits = sim.limits;
    for _ in 0..sim.written.len() + 8 {
        let budget = budgets.next().expect("budgets cycle");
        let resp = wire_round(&sim.nodes[peer].r, &sim.nodes[node].r, budget, &limits);
        assert!(matches!(resp, SyncResponse::Ops { .. }), "no log is truncated here: {resp:?}");
        let applied = apply_response(&mut sim.nodes[node].r, DOC, resp, &limits)
            .unwrap_or_else(|e| panic!("a page cut at a budget of {budget} bytes was refused: {e}"));
        sim.count(node, applied.received.applied, applied.snapshot);
        if !applied.more {
            assert!(sim.nodes[node].r.clock().covers(sim.nodes[peer].r.clock()));
            return;
        }
    }
    panic!("pulling from {peer} into {node} never ended");
}

/// Three writers (single writes and batches, some too large for a gossip
/// message) gossip with messages of at most `max_gossip` bytes, delivered
/// in a random order (some twice), to each other and to a fourth replica;
/// then everyone pulls from everyone with pages cut at the budgets
/// `budgets` gives in turn, so logs hold runs received cut at arbitrary
/// points, and are served again cut elsewhere. Every message and page
/// verifies, and all four converge on every operation written.
fn split_anywhere(seed: u64, max_gossip: usize, budgets: &[u64]) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sim = Sim::new(4, Limits { max_gossip, ..Limits::default() });
    let mut budgets = budgets.iter().copied().cycle();
    for i in 0..rng.usize(20..60) {
        let node = rng.usize(..3);
        let mut value = format!("{node}:{i}");
        if rng.u8(..4) == 0 {
            value.push_str(&"x".repeat(rng.usize(50..900)));
        }
        if rng.bool() {
            sim.put(node, &format!("k{}", rng.usize(..6)), &value);
        } else {
            let kvs: Vec<_> =
                (0..rng.usize(2..12)).map(|j| (format!("k{}", rng.usize(..6)), format!("{value}.{j}"))).collect();
            sim.put_many(node, &kvs);
        }
        while !sim.net.is_empty() && rng.u8(..3) > 0 {
            let fate = if rng.u8(..5) == 0 { Fate::Duplicate } else { Fate::Deliver };
            let pick = rng.usize(..);
            sim.deliver(pick, fate);
        }
        if rng.u8(..8) == 0 {
            let (node, peer) = (rng.usize(..4), rng.usize(..3));
            if node != peer {
                pull_cut_anywhere(&mut sim, node, peer, &mut budgets);
            }
        }
    }
    while !sim.net.is_empty() {
        let pick = rng.usize(..);
        sim.deliver(pick, Fate::Deliver);
    }
    for _ in 0..2 {
        for node in 0..4 {
            for peer in 0..4 {
                if node != peer {
                    pull_cut_anywhere(&mut sim, node, peer, &mut budgets);
                }
            }
        }
    }
    sim.assert_agree(&[0, 1, 2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn pages_and_gossip_cut_anywhere_verify_and_converge(
        seed: u64,
        max_gossip in 200usize..3000,
        budgets in prop::collection::vec(0u64..3000, 1..12),
    ) {
        split_anywhere(seed, max_gossip, &budgets);
    }
}

/// Every single-bit change of a served page (a sync answer's page, a
/// gossip message's) is caught: the receiver refuses it as the peer's
/// fault, or applies only operations the sender wrote, exactly as written
/// (its document is the sender's operations up to its clock, no other).
#[test]
fn a_flipped_bit_in_a_page_is_refused_or_harmless() {
    let limits = Limits::default();
    let mut sim = Sim::new(3, limits);
    // Three actors, single writes and a batch (a run of several operations
    // under one head), values that compress and values that do not.
    sim.put(1, "a", "one");
    sim.put_many(1, &[("b".into(), "two".into()), ("c".into(), "three".into()), ("a".into(), "four".into())]);
    sim.put(2, "d", &"z".repeat(300));
    sim.put(0, "e", "five");
    sim.del(2, "b");
    sim.put_many(0, &[("f".into(), "y".repeat(200)), ("g".into(), "six".into())]);
    let batch_gossip = gossip_messages(DOC, &sim.written[sim.written.len() - 2..], limits.max_gossip);
    sim.put(0, "h", "seven");
    sim.net.clear();
    sim.pull_all(0, 1, 1 << 20);
    sim.pull_all(0, 2, 1 << 20);

    // A page of everything (compressed), a page of the last operation only
    // (too short to compress), and a gossip message of a batch.
    let page = |sim: &Sim, theirs: &VersionVector| match respond(
        &sim.nodes[0].r,
        DOC,
        &SyncRequest { doc: DOC.into(), clock: theirs.clone(), budget: 1 << 20 },
        &limits,
    ) {
        SyncResponse::Ops { page, .. } => page.into_vec(),
        other => panic!("{other:?}"),
    };
    let all = page(&sim, &VersionVector::default());
    let a0 = sim.nodes[0].r.actor();
    // Everything but the last write, and everything but the batch before it.
    let (mut head, mut before_batch) = (VersionVector::default(), VersionVector::default());
    for (a, &s) in sim.nodes[0].r.clock().iter() {
        head.observe(*a, if *a == a0 { s - 1 } else { s });
        before_batch.observe(*a, if *a == a0 { s - 3 } else { s });
    }
    let last = page(&sim, &head);
    assert_eq!(all[0], 1, "the whole page is compressed");
    assert_eq!(last[0], 0, "a one-operation page is not");
    assert_eq!(batch_gossip.len(), 1);
    let gossip: Gossip = decode(&batch_gossip[0], limits.max_gossip, "gossip").unwrap();

    // Each receiver starts from `start` (nothing, or all but the last
    // operation).
    let fresh_from = |sim: &Sim, start: &VersionVector| {
        let mut n = Node::new();
        let ops: Vec<_> = sim.written.iter().filter(|e| e.seq() <= start.get(&e.actor())).cloned().collect();
        if !ops.is_empty() {
            n.r.receive(ops).unwrap();
        }
        assert_eq!(n.r.clock(), start);
        n
    };
    let src_clock = sim.nodes[0].r.clock().clone();
    let (mut refused, mut applied_some) = (0usize, 0usize);
    let cases: [(&str, &[u8], VersionVector, bool); 3] = [
        ("whole page", &all, VersionVector::default(), false),
        ("one-operation page", &last, head.clone(), false),
        ("gossip page", &gossip.page, before_batch, true),
    ];
    for (what, bytes, start, is_gossip) in cases {
        let mut rx = fresh_from(&sim, &start);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = if is_gossip {
                let msg = encode(&Gossip { doc: DOC.into(), page: damaged.into() });
                apply_gossip(&mut rx.r, DOC, &msg, &limits).map(|r| r.applied)
            } else {
                let resp = SyncResponse::Ops { doc: DOC.into(), page: damaged.into(), more: false };
                apply_response(&mut rx.r, DOC, resp, &limits).map(|a| a.received.applied)
            };
            match result {
                Err(e) => {
                    assert!(e.is_peer_fault(), "{what}, bit {bit}: {e} is not blamed on the peer");
                    refused += 1;
                }
                Ok(n) => applied_some += usize::from(n > 0),
            }
            let clock = rx.r.clock().clone();
            assert!(src_clock.covers(&clock), "{what}, bit {bit}: operations the sender never wrote: {clock:?}");
            assert_eq!(rx.r.buffered(), 0, "{what}, bit {bit}: a damaged operation is held");
            let (_, model) = sim.model_upto(Some(&clock));
            assert!(
                rx.r.doc().canonical() == model.canonical(),
                "{what}, bit {bit}: the receiver holds what the sender did not write:\n{:?}\n{:?}",
                rx.r.doc().entries(),
                model.entries()
            );
            if clock != start {
                rx = fresh_from(&sim, &start);
            }
        }
    }
    eprintln!("{refused} damaged pages refused, {applied_some} applied their intact runs");
    assert!(refused > 0);
}
