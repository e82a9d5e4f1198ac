//! End-to-end tests of `walrus::net`: real nodes on 127.0.0.1 replicating a
//! `KvDoc` over libp2p, plus a hostile peer built directly on libp2p.
//!
//! Nothing here sleeps to synchronise: every wait is on node events (from
//! `subscribe()` / `Node::start`), re-reading the nodes' state after each
//! batch of events, under an overall deadline. The only timed wait is the
//! partition test's observation window, in which a leak across the
//! partition would have to show up as an event.

use std::collections::BTreeMap;

use crate::common::client::{Client, Seen};
use crate::common::{config, del, put, start, values, within, Ev, Events, DOC, SYNC_INTERVAL, WAIT};
use crdts::CmRDT;
use futures::future::join_all;
use tokio::time::Instant;
use walrus::internals::page_of;
use walrus::net::{Multiaddr, Node, NodeEvent, PeerId};
use walrus::replica::{
    ActorId, ActorKey, Catchup, ChainHash, Change, Document, KvDoc, KvOp, OpEnvelope, Origin, Replica, ReplicaOptions,
    VersionVector,
};

async fn state(node: &Node<KvDoc>) -> (VersionVector, Vec<u8>) {
    node.with(DOC, |r| (r.clock().clone(), r.doc().canonical())).await.expect("node answers")
}

async fn actor(node: &Node<KvDoc>) -> ActorId {
    node.with(DOC, |r| r.actor()).await.expect("node answers")
}

/// Waits until every node's clock is `want`, then checks that their
/// canonical states are byte-identical; returns that state.
async fn converge(nodes: &[&Node<KvDoc>], events: &mut Events, want: &VersionVector) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut states = Vec::new();
        for n in nodes {
            states.push(state(n).await);
        }
        if states.iter().all(|(clock, _)| clock == want) {
            // Everything the nodes emitted up to these answers.
            events.drain();
            for (i, (_, canonical)) in states.iter().enumerate() {
                assert_eq!(canonical, &states[0].1, "node {i} has the same clock as node 0 but another state");
            }
            return states.swap_remove(0).1;
        }
        if !events.wait(deadline).await {
            let clocks: Vec<_> = states.iter().map(|(c, _)| c).collect();
            let mut peers = Vec::new();
            for n in nodes {
                peers.push(n.peers().await);
            }
            panic!("not converged within {WAIT:?}\nwant {want:?}\nhave {clocks:#?}\npeers {peers:#?}");
        }
    }
}

/// Every acknowledged write of a test.
#[derive(Default, Clone)]
struct Writes(Vec<OpEnvelope<KvOp>>);

impl Writes {
    fn add(&mut self, envs: impl IntoIterator<Item = OpEnvelope<KvOp>>) {
        self.0.extend(envs);
    }

    /// These writes and `more`.
    fn with(&self, more: &Writes) -> Writes {
        let mut all = self.clone();
        all.add(more.0.iter().cloned());
        all
    }

    fn by_actor(&self) -> BTreeMap<ActorId, Vec<&OpEnvelope<KvOp>>> {
        let mut out: BTreeMap<ActorId, Vec<&OpEnvelope<KvOp>>> = BTreeMap::new();
        for env in &self.0 {
            out.entry(env.actor()).or_default().push(env);
        }
        for envs in out.values_mut() {
            envs.sort_by_key(|e| e.seq());
        }
        out
    }

    /// The version vector covering exactly the acknowledged writes; checks
    /// that each actor's acknowledged sequence numbers are 1..=n, each once.
    fn clock(&self) -> VersionVector {
        let mut clock = VersionVector::default();
        for (actor, envs) in self.by_actor() {
            let seqs: Vec<u64> = envs.iter().map(|e| e.seq()).collect();
            let want: Vec<u64> = (1..=envs.len() as u64).collect();
            assert_eq!(seqs, want, "acknowledged sequence numbers of {actor}");
            clock.observe(actor, envs.len() as u64);
        }
        assert_eq!(clock.total(), self.0.len() as u64);
        clock
    }

    /// The canonical state of a document that applied exactly the
    /// acknowledged writes (each actor's in order, actor after actor).
    fn oracle(&self) -> Vec<u8> {
        let mut doc = KvDoc::default();
        for envs in self.by_actor().values() {
            for env in envs {
                doc.apply(env.op().clone());
            }
        }
        doc.canonical()
    }
}

/// `len` seeded pseudo-random bytes.
fn bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    rng.fill(&mut out);
    out
}

/// `rounds` rounds of `per_round` concurrent random puts (70%) and deletes
/// on keys `k0..k{keys}`; returns the acknowledged envelopes.
async fn random_writes(
    node: Node<KvDoc>,
    seed: u64,
    rounds: usize,
    per_round: usize,
    keys: u64,
) -> Vec<OpEnvelope<KvOp>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    for round in 0..rounds {
        let mut writes = Vec::new();
        for j in 0..per_round {
            let key = format!("k{}", rng.u64(..keys));
            let put = rng.u32(..10) < 7;
            let value = format!("s{seed}-r{round}-{j}");
            let node = node.clone();
            writes.push(async move {
                node.update(DOC, move |d, a| if put { d.put_op(a, &key, &value) } else { d.del_op(&key) }).await
            });
        }
        for result in join_all(writes).await {
            out.push(result.expect("write acknowledged"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_converge() {
    within(async {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        // A chain: node i keeps a connection to node i-1, so most
        // operations cross several hops.
        let mut nodes = Vec::new();
        let mut prev: Option<Multiaddr> = None;
        for (i, dir) in dirs.iter().enumerate() {
            let peers: Vec<Multiaddr> = prev.iter().cloned().collect();
            let (node, addr) = start(config(dir.path(), &peers), &mut events, i).await;
            nodes.push(node);
            prev = Some(addr);
        }
        // 5 nodes x 12 rounds x 5 concurrent writes on 8 shared keys.
        let tasks: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| tokio::spawn(random_writes(n.clone(), 1000 + i as u64, 12, 5, 8)))
            .collect();
        let mut writes = Writes::default();
        for t in tasks {
            writes.add(t.await.expect("writer task"));
        }
        assert_eq!(writes.0.len(), 300);
        let want = writes.clock();
        assert_eq!(want.len(), 5, "one actor per node");
        assert_eq!(want.total(), 300);
        let refs: Vec<&Node<KvDoc>> = nodes.iter().collect();
        let canonical = converge(&refs, &mut events, &want).await;
        assert_eq!(canonical, writes.oracle(), "replicas differ from the acknowledged writes applied in order");
        for n in &nodes {
            let (clock, c) = state(n).await;
            assert_eq!(clock.total(), writes.0.len() as u64);
            assert_eq!(c, canonical);
        }
        // Each node applied every other node's operation exactly once, as a
        // remote change, and only its own as local changes.
        for (i, n) in nodes.iter().enumerate() {
            let me = actor(n).await;
            let mut remote = BTreeMap::new();
            for (idx, ev) in &events.log {
                if let (true, NodeEvent::Changed { change: Change::Op { origin, op }, .. }) = (*idx == i, ev) {
                    assert_eq!(*origin == Origin::Local, op.actor() == me, "node {i}: {ev:?}");
                    if *origin == Origin::Remote {
                        *remote.entry((op.actor(), op.seq())).or_insert(0) += 1;
                    }
                }
            }
            assert!(remote.values().all(|&times| times == 1), "node {i} applied an operation twice");
            if events.lagged == 0 {
                let want: Vec<_> = writes
                    .0
                    .iter()
                    .filter(|e| e.actor() != me)
                    .map(|e| (e.actor(), e.seq()))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let got: Vec<_> = remote.keys().copied().collect();
                assert_eq!(got, want, "node {i}: remote changes");
            }
        }
        for n in nodes {
            n.shutdown().await.expect("clean shutdown");
        }
    })
    .await;
}

/// Waits until node `isolated` has no connection and no other node is
/// connected to it.
async fn wait_isolated(nodes: &[&Node<KvDoc>], isolated: usize, events: &mut Events) {
    let id = nodes[isolated].peer_id();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut links = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for p in n.peers().await.expect("peers") {
                if i == isolated || p.peer == id {
                    links.push((i, p.peer));
                }
            }
        }
        if links.is_empty() {
            events.drain();
            return;
        }
        if !events.wait(deadline).await {
            panic!("node {isolated} still connected: {links:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_heals() {
    within(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let (a, a_addr) = start(config(dirs[0].path(), &[]), &mut events, 0).await;
        let (b, b_addr) = start(config(dirs[1].path(), std::slice::from_ref(&a_addr)), &mut events, 1).await;
        let (c, _) = start(config(dirs[2].path(), &[a_addr.clone(), b_addr.clone()]), &mut events, 2).await;
        let (d, _) = start(config(dirs[3].path(), &[a_addr.clone(), b_addr.clone()]), &mut events, 3).await;
        const D: usize = 3;
        let nodes = [&a, &b, &c, &d];
        let mut actors = Vec::new();
        for n in nodes {
            actors.push(actor(n).await);
        }

        // Common history.
        let mut writes = Writes::default();
        writes.add([put(&a, "shared", "base").await, put(&b, "gone", "base").await, put(&d, "mine", "d0").await]);
        converge(&nodes, &mut events, &writes.clock()).await;
        let before = writes.clock();

        // Partition: D and the rest block each other.
        for n in &nodes[..D] {
            d.block(n.peer_id()).await.unwrap();
            n.block(d.peer_id()).await.unwrap();
        }
        wait_isolated(&nodes, D, &mut events).await;
        let mark = events.log.len();

        // Both sides write, including the same keys.
        let mut majority = Writes::default();
        majority.add([put(&a, "shared", "from-A").await, del(&b, "gone").await]);
        for (i, n) in nodes[..D].iter().enumerate() {
            majority.add(random_writes((*n).clone(), 2000 + i as u64, 2, 5, 6).await);
        }
        let mut minority = Writes::default();
        minority.add([put(&d, "shared", "from-D").await, put(&d, "gone", "kept-by-D").await]);
        minority.add(random_writes(d.clone(), 2100, 2, 5, 6).await);

        let want_majority = writes.with(&majority).clock();
        let want_minority = writes.with(&minority).clock();
        converge(&nodes[..D], &mut events, &want_majority).await;
        // Observation window: several anti-entropy rounds and redial
        // attempts, in which anything crossing the partition would show up
        // as an event.
        let window = Instant::now() + SYNC_INTERVAL * 4;
        while events.wait(window).await {}

        let (d_clock, _) = state(&d).await;
        assert_eq!(d_clock, want_minority, "the isolated node received operations across the partition");
        for n in &nodes[..D] {
            let (clock, _) = state(n).await;
            assert_eq!(clock, want_majority, "a majority node received operations across the partition");
            assert_eq!(clock.get(&actors[D]), before.get(&actors[D]));
        }
        assert_eq!(values(&d, "shared").await, vec!["from-D"]);
        assert_eq!(values(&a, "shared").await, vec!["from-A"]);
        assert_eq!(values(&c, "gone").await, Vec::<String>::new());
        let d_id = d.peer_id();
        for (idx, ev) in &events.log[mark..] {
            let leaked = match ev {
                NodeEvent::PeerConnected { peer, .. } => *idx == D || *peer == d_id,
                NodeEvent::Synced { .. } => *idx == D,
                NodeEvent::Changed { change: Change::Snapshot { .. }, .. } => *idx == D,
                NodeEvent::Changed { change: Change::Op { origin: Origin::Remote, op }, .. } => {
                    *idx == D || op.actor() == actors[D]
                }
                _ => false,
            };
            assert!(!leaked, "node {idx} during the partition: {ev:?}");
        }

        // Heal.
        for n in &nodes[..D] {
            d.unblock(n.peer_id()).await.unwrap();
            n.unblock(d.peer_id()).await.unwrap();
        }
        let all = writes.with(&majority).with(&minority);
        let want = all.clock();
        let canonical = converge(&nodes, &mut events, &want).await;
        assert_eq!(canonical, all.oracle());
        for n in nodes {
            // Concurrent puts both survive; a delete loses to a concurrent put.
            assert_eq!(values(n, "shared").await, vec!["from-A", "from-D"]);
            assert_eq!(values(n, "gone").await, vec!["kept-by-D"]);
            assert_eq!(values(n, "mine").await, vec!["d0"]);
        }
        for n in [a, b, c, d] {
            n.shutdown().await.expect("clean shutdown");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joiner_gets_snapshot() {
    within(async {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let mut a_cfg = config(dirs[0].path(), &[]);
        // Small segments, so a checkpoint can drop most of the log.
        a_cfg.replica.wal.segment_size = 4096;
        a_cfg.replica.wal.preallocate = false;
        let (a, a_addr) = start(a_cfg, &mut events, 0).await;
        let mut writes = Writes::default();
        // Enough for several segments: the node logs concurrent writes
        // together, in compact blocks.
        writes.add(random_writes(a.clone(), 3000, 20, 25, 40).await);
        // Two: the log is kept back to the checkpoint before last.
        for _ in 0..2 {
            a.with(DOC, |r| r.checkpoint()).await.unwrap().expect("checkpoint");
        }
        // Written after the checkpoint: the joiner needs the snapshot and these.
        writes.add(random_writes(a.clone(), 3001, 2, 10, 40).await);
        let truncated = a
            .with(DOC, |r| matches!(r.ops_since(&VersionVector::default(), 1 << 20), Ok(Catchup::Snapshot { .. })))
            .await
            .unwrap();
        assert!(truncated, "after a checkpoint an empty replica must need a snapshot");

        // A node that trusts no peer's snapshot does not merge A's.
        let c_dir = tempfile::tempdir().unwrap();
        let mut c_cfg = config(c_dir.path(), std::slice::from_ref(&a_addr));
        c_cfg.snapshot_peers = Some(Default::default());
        let (c, _) = start(c_cfg, &mut events, 2).await;
        let a_id = a.peer_id();
        events
            .wait_for("C refusing A's snapshot", |log| {
                log.iter()
                    .any(|(i, ev)| *i == 2 && matches!(ev, NodeEvent::SnapshotRefused { peer, .. } if *peer == a_id))
            })
            .await;
        assert!(state(&c).await.0.is_empty(), "C merged an untrusted snapshot");
        c.shutdown().await.unwrap();

        // B trusts A's snapshots.
        let mut b_cfg = config(dirs[1].path(), &[a_addr]);
        b_cfg.snapshot_peers = Some([a_id].into());
        let (b, _) = start(b_cfg, &mut events, 1).await;
        let want = writes.clock();
        assert_eq!(want.total(), 520);
        let canonical = converge(&[&a, &b], &mut events, &want).await;
        assert_eq!(canonical, writes.oracle());
        let (a_id, b_id) = (a.peer_id(), b.peer_id());
        let snapshots = events
            .log
            .iter()
            .filter(|(idx, ev)| {
                *idx == 1
                    && matches!(ev, NodeEvent::Synced { snapshot: true, peer, doc, .. } if *peer == a_id && doc == DOC)
            })
            .count();
        assert_eq!(snapshots, 1, "the joiner must merge exactly one snapshot from A: {:#?}", events.log);
        assert!(
            !events.log.iter().any(|(idx, ev)| *idx == 0 && matches!(ev, NodeEvent::Synced { snapshot: true, .. })),
            "A needs no snapshot"
        );

        // The joiner's own writes flow back.
        writes.add([put(&b, "joiner", "hello").await]);
        converge(&[&a, &b], &mut events, &writes.clock()).await;
        assert_eq!(values(&a, "joiner").await, vec!["hello"]);
        assert!(events.log.iter().all(|(_, ev)| !matches!(ev, NodeEvent::PeerFault { .. })), "no peer faults");
        assert_ne!(a_id, b_id);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_acknowledged_writes_and_resyncs() {
    within(async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let (a, a_addr) = start(config(dirs[0].path(), &[]), &mut events, 0).await;
        let (b, b_addr) = start(config(dirs[1].path(), std::slice::from_ref(&a_addr)), &mut events, 1).await;
        let c_cfg = config(dirs[2].path(), &[a_addr, b_addr]);
        let (c, _) = start(c_cfg.clone(), &mut events, 2).await;
        let c_id = c.peer_id();
        let c_actor = actor(&c).await;

        let mut writes = Writes::default();
        let (wa, wb, wc) = tokio::join!(
            random_writes(a.clone(), 4000, 2, 5, 6),
            random_writes(b.clone(), 4001, 2, 5, 6),
            random_writes(c.clone(), 4002, 2, 5, 6),
        );
        writes.add(wa.into_iter().chain(wb).chain(wc));
        writes.add([put(&c, "c-key", "before-restart").await]);
        converge(&[&a, &b, &c], &mut events, &writes.clock()).await;
        let (c_clock, _) = state(&c).await;
        c.shutdown().await.expect("clean shutdown");

        // The others write while C is down.
        let (wa, wb) = tokio::join!(random_writes(a.clone(), 4010, 3, 5, 6), random_writes(b.clone(), 4011, 3, 5, 6));
        writes.add(wa.into_iter().chain(wb));
        writes.add([put(&a, "while-down", "yes").await]);
        let want = writes.clock();
        converge(&[&a, &b], &mut events, &want).await;
        assert_eq!(want.get(&c_actor), 11);

        // Same directory, same peers: same identity, same actor, own writes kept.
        let (c, _) = start(c_cfg, &mut events, 2).await;
        assert_eq!(c.peer_id(), c_id, "identity kept across restarts");
        assert_eq!(actor(&c).await, c_actor, "actor kept across restarts");
        let (clock, _) = state(&c).await;
        assert!(clock.covers(&c_clock), "acknowledged writes lost: {clock:?} does not cover {c_clock:?}");
        assert_eq!(clock.get(&c_actor), 11);

        let canonical = converge(&[&a, &b, &c], &mut events, &want).await;
        assert_eq!(canonical, writes.oracle());
        assert_eq!(values(&c, "while-down").await, vec!["yes"]);

        // New writes continue the sequence (no reuse) and replicate.
        let env = put(&c, "c-key", "after-restart").await;
        assert_eq!(env.seq(), 12);
        writes.add([env]);
        let canonical = converge(&[&a, &b, &c], &mut events, &writes.clock()).await;
        assert_eq!(canonical, writes.oracle());
        assert_eq!(values(&a, "c-key").await, vec!["after-restart"]);
        for n in [a, b, c] {
            n.shutdown().await.expect("clean shutdown");
        }
    })
    .await;
}

/// LEB128, as pages write their integers.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// An uncompressed page (docs/PROTOCOL.md, "Pages") of signed `envs`,
/// each its own run, for a test to patch: what `page_of` makes, short of
/// compression.
fn raw_page(envs: &[OpEnvelope<KvOp>]) -> Vec<u8> {
    let mut actors: Vec<ActorId> = Vec::new();
    for e in envs {
        if !actors.contains(&e.actor()) {
            actors.push(e.actor());
        }
    }
    let mut body = Vec::new();
    varint(&mut body, actors.len() as u64);
    for a in &actors {
        body.extend_from_slice(&a.0);
    }
    varint(&mut body, envs.len() as u64);
    for e in envs {
        let sig = e.signature().expect("signed operations only");
        varint(&mut body, actors.iter().position(|a| *a == e.actor()).unwrap() as u64);
        varint(&mut body, e.seq());
        varint(&mut body, 1);
        body.extend_from_slice(&e.prev().0);
        // Flags: signed, no succession.
        body.push(0x02);
        varint(&mut body, e.op_bytes().len() as u64);
        body.extend_from_slice(e.op_bytes());
        body.extend_from_slice(&sig.0);
    }
    let mut page = vec![0];
    varint(&mut page, body.len() as u64);
    page.extend(body);
    page
}

/// An uncompressed `page` with every occurrence of `from` replaced by `to`.
fn patched(page: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(page[0], 0, "an uncompressed page");
    assert_eq!(from.len(), to.len());
    let (mut out, mut found, mut i) = (page, false, 0);
    while i + from.len() <= out.len() {
        if out[i..i + from.len()] == *from {
            out[i..i + from.len()].copy_from_slice(to);
            found = true;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found, "nothing to patch");
    out
}

/// A peer that speaks the walrus protocols with libp2p directly, and says
/// whatever the test tells it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_are_rejected() {
    use serde_bytes::ByteBuf;
    use walrus::sync::{encode, Gossip, Limits, SyncRequest, SyncResponse};

    within(async {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        // Small limits, so oversize messages are cheap to make.
        let limits =
            Limits { max_gossip: 16 << 10, max_request: 64 << 10, max_response: 64 << 10, ..Limits::default() };
        let mut cfg1 = config(dirs[0].path(), &[]);
        cfg1.limits = limits;
        let (h1, h1_addr) = start(cfg1, &mut events, 0).await;
        let mut cfg2 = config(dirs[1].path(), std::slice::from_ref(&h1_addr));
        cfg2.limits = limits;
        let (h2, _) = start(cfg2, &mut events, 1).await;
        let mut writes = Writes::default();
        writes.add(random_writes(h1.clone(), 5000, 2, 5, 6).await);
        writes.add(random_writes(h2.clone(), 5001, 2, 5, 6).await);
        converge(&[&h1, &h2], &mut events, &writes.clock()).await;
        let (clock_before, canonical_before) = state(&h1).await;

        // A well-formed operation envelope, signed by the hostile peer's
        // own actor key, to wrap in bad messages.
        let evil = ActorKey::from_seed([9; 32]);
        let forged = {
            let actor = evil.actor();
            let op = KvOp::Put {
                key: "evil".into(),
                dot: walrus::replica::Dot { actor, counter: 1 },
                value: "x".into(),
                seen: vec![],
            };
            OpEnvelope::signed::<KvDoc>(&evil, DOC, 1, ChainHash::ZERO, op).unwrap()
        };
        let forged_page = ByteBuf::from(raw_page(std::slice::from_ref(&forged)));
        // The same page, its operation's bytes replaced by garbage.
        let garbage_op =
            ByteBuf::from(patched(forged_page.to_vec(), forged.op_bytes(), &vec![0xff; forged.op_bytes().len()]));
        // The same page, its run starting at sequence number 0 (run: actor
        // index 0, first 1, count 1, the previous hash of zeros).
        let zero_seq = {
            let mut from = vec![0, 1, 1];
            from.extend([0; 32]);
            let mut to = vec![0, 0, 1];
            to.extend([0; 32]);
            ByteBuf::from(patched(forged_page.to_vec(), &from, &to))
        };
        let mut rng = fastrand::Rng::with_seed(5);
        let mut random = bytes(&mut rng, 300);
        // A CBOR "break" where an item must start: never valid.
        random[0] = 0xff;

        // The hostile peer answers H1's pulls with these, one each.
        let answers = vec![
            bytes(&mut rng, 100),
            encode(&SyncResponse::Ops { doc: DOC.into(), page: garbage_op.clone(), more: true }),
            encode(&SyncResponse::Ops { doc: "other".into(), page: forged_page.clone(), more: false }),
            // Over H1's response limit: the pull fails, but that is no
            // fault (a responder sizes answers by its own limits).
            vec![0xa0; 100 << 10],
        ];
        let mut bad = Client::spawn_with(None, answers).await;
        let topic = crate::common::topic();
        bad.join(h1.peer_id(), h1_addr.clone(), topic.clone()).await;

        // Gossip.
        let oversize = encode(&Gossip { doc: DOC.into(), page: ByteBuf::from(vec![7u8; 17 << 10]) });
        assert!(oversize.len() > limits.max_gossip && oversize.len() < limits.max_gossip + 4096);
        let bad_gossip: Vec<(&str, Vec<u8>)> = vec![
            ("random bytes", random),
            ("wrong document", encode(&Gossip { doc: "other".into(), page: forged_page.clone() })),
            ("garbage op", encode(&Gossip { doc: DOC.into(), page: garbage_op })),
            ("zero seq", encode(&Gossip { doc: DOC.into(), page: zero_seq })),
            ("oversize", oversize),
        ];
        for (what, data) in bad_gossip {
            bad.publish(topic.clone(), data).await.unwrap_or_else(|e| panic!("publishing {what}: {e}"));
        }

        // Sync requests.
        let h1_id = h1.peer_id();
        let req =
            |doc: &str| encode(&SyncRequest { doc: doc.into(), clock: VersionVector::default(), budget: 1 << 20 });
        let garbage = bad.request(h1_id, bytes(&mut rng, 64)).await;
        assert!(garbage.is_err(), "a garbage request must get no answer: {garbage:?}");
        let wrong_type = bad.request(h1_id, encode(&Gossip { doc: DOC.into(), page: ByteBuf::new() })).await;
        assert!(wrong_type.is_err(), "a request of the wrong type must get no answer: {wrong_type:?}");
        let bad_name = bad.request(h1_id, req("")).await;
        assert!(bad_name.is_err(), "a request with an empty document name must get no answer: {bad_name:?}");
        let too_big = bad.request(h1_id, vec![0xa0; 100 << 10]).await;
        assert!(too_big.is_err(), "an oversize request must get no answer: {too_big:?}");
        let unknown = bad.request(h1_id, req("nope")).await.expect("an answer for an unknown document");
        let unknown: SyncResponse = walrus::sync::decode(&unknown, 1 << 20, "response").unwrap();
        assert_eq!(unknown, SyncResponse::UnknownDoc { doc: "nope".into() });
        // And a valid request still gets the whole document.
        let all = bad.request(h1_id, req(DOC)).await.expect("an answer");
        match walrus::sync::decode::<SyncResponse>(&all, 64 << 20, "response").unwrap() {
            resp @ SyncResponse::Ops { .. } => {
                assert_eq!(resp.doc(), DOC);
                // It holds every operation: a fresh replica of the
                // document applies the page and has them all.
                let dir = tempfile::tempdir().unwrap();
                let opts = ReplicaOptions { document: Some(DOC.into()), ..ReplicaOptions::default() };
                let mut fresh: Replica<KvDoc> = Replica::open(dir.path(), opts).unwrap();
                let applied = walrus::sync::apply_response(&mut fresh, DOC, resp, &limits).unwrap();
                assert_eq!(applied.received.applied as u64, clock_before.total());
                assert_eq!(fresh.clock(), &clock_before);
                assert!(!applied.more);
            }
            other => panic!("unexpected answer {other:?}"),
        }

        // H1 reports each malformed message, blaming the hostile peer.
        type Check = fn(&Option<String>, &str) -> bool;
        let expected: Vec<(&str, Check)> = vec![
            ("gossip: random bytes", |d, r| d.as_deref() == Some(DOC) && r.starts_with("gossip: malformed gossip")),
            ("gossip: wrong document", |d, r| {
                d.as_deref() == Some(DOC) && r.starts_with("gossip: message for document \"other\"")
            }),
            ("gossip: garbage op", |d, r| d.as_deref() == Some(DOC) && r.starts_with("gossip: malformed operation")),
            ("gossip: zero seq", |d, r| {
                d.as_deref() == Some(DOC)
                    && r.starts_with("gossip: malformed gossip page")
                    && r.ends_with("sequence number 0")
            }),
            ("gossip: oversize", |d, r| d.as_deref() == Some(DOC) && r.starts_with("gossip: gossip of")),
            ("request: garbage", |d, r| d.is_none() && r.starts_with("sync request: malformed sync request")),
            ("request: bad name", |d, r| d.is_none() && r.starts_with("sync request: bad document name")),
            ("request: oversize", |d, r| {
                d.is_none() && r == "sync request of 102400 bytes exceeds the limit of 65536 bytes"
            }),
            ("response: garbage", |d, r| {
                d.as_deref() == Some(DOC) && r.starts_with("sync response: malformed sync response")
            }),
            ("response: garbage op", |d, r| {
                d.as_deref() == Some(DOC) && r.starts_with("sync response: malformed operation")
            }),
            ("response: wrong document", |d, r| {
                d.as_deref() == Some(DOC) && r.starts_with("sync response: message for document \"other\"")
            }),
        ];
        let faults = |log: &[(usize, Ev)]| -> Vec<(PeerId, Option<String>, String)> {
            log.iter()
                .filter_map(|(idx, ev)| match ev {
                    NodeEvent::PeerFault { peer, doc, reason } if *idx == 0 => {
                        Some((*peer, doc.clone(), reason.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        events
            .wait_for("a PeerFault for each malformed message", |log| {
                let f = faults(log);
                expected.iter().all(|(_, check)| f.iter().any(|(_, d, r)| check(d, r)))
            })
            .await;
        // H1's pulls from the hostile peer are well-formed requests for the
        // document. The fifth comes only after the fourth (answered over
        // H1's response limit) failed, so whatever H1 made of that is logged.
        let mut pulls = 0;
        while pulls < 5 {
            if let Seen::Pulled(peer, bytes) = bad.wait("H1's pulls", |s| matches!(s, Seen::Pulled(..))).await {
                assert_eq!(peer, h1_id);
                let r: SyncRequest = walrus::sync::decode(&bytes, 1 << 20, "request").unwrap();
                assert_eq!(r.doc, DOC);
                pulls += 1;
            }
        }
        events.drain();
        let f = faults(&events.log);
        for (peer, doc, reason) in &f {
            assert_eq!(*peer, bad.peer_id, "fault blamed on the wrong peer: {doc:?} {reason}");
            assert!(expected.iter().any(|(_, check)| check(doc, reason)), "unexpected fault {doc:?} {reason}");
        }

        // A gossip frame larger than H1's gossipsub accepts at all.
        bad.publish(topic.clone(), vec![0xa0; 64 << 10]).await.expect("publishing a huge message");

        // Nothing changed H1, and it is still working.
        let (clock, canonical) = state(&h1).await;
        assert_eq!(clock, clock_before, "malformed messages changed the clock");
        assert_eq!(canonical, canonical_before, "malformed messages changed the state");
        assert!(h1.with(DOC, |r| r.buffered()).await.unwrap() == 0, "nothing forged is held");
        writes.add([put(&h1, "after", "h1").await]);
        // A valid write on the other honest node still reaches H1.
        writes.add([put(&h2, "after2", "h2").await]);
        let canonical = converge(&[&h1, &h2], &mut events, &writes.clock()).await;
        assert_eq!(canonical, writes.oracle());
        assert_eq!(values(&h1, "after2").await, vec!["h2"]);
        assert_eq!(values(&h1, "evil").await, Vec::<String>::new());
        // Rejected gossip is not forwarded: H2 never saw any of it.
        assert!(
            !events.log.iter().any(|(idx, ev)| *idx == 1 && matches!(ev, NodeEvent::PeerFault { .. })),
            "H2 received malformed messages: {:#?}",
            events.log
        );
        drop(bad);
        h1.shutdown().await.unwrap();
        h2.shutdown().await.unwrap();
    })
    .await;
}

/// Operations forged, misattributed or equivocated by a hostile peer that
/// speaks the protocol correctly: every honest node refuses the same ones,
/// reports the equivocation naming the actor, and they still converge
/// without losing a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_equivocating_operations_are_refused() {
    use serde_bytes::ByteBuf;
    use walrus::replica::Dot;
    use walrus::sync::{encode, Gossip, SyncResponse};

    within(async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut events = Events::new();
        let (h1, h1_addr) = start(config(dirs[0].path(), &[]), &mut events, 0).await;
        let (h2, _) = start(config(dirs[1].path(), std::slice::from_ref(&h1_addr)), &mut events, 1).await;
        let (h3, _) = start(config(dirs[2].path(), std::slice::from_ref(&h1_addr)), &mut events, 2).await;
        let nodes = [&h1, &h2, &h3];
        let mut writes = Writes::default();
        writes.add([put(&h2, "k", "h2").await]);
        converge(&nodes, &mut events, &writes.clock()).await;
        let victim = actor(&h2).await;

        let evil = ActorKey::from_seed([66; 32]);
        let put_as = |key: &ActorKey, actor: ActorId, seq: u64, prev: ChainHash, value: &str| {
            let op = KvOp::Put { key: "k".into(), dot: Dot { actor, counter: seq }, value: value.into(), seen: vec![] };
            OpEnvelope::signed::<KvDoc>(key, DOC, seq, prev, op).unwrap()
        };
        // A page of the attacker's operations; `as_victim`: claiming to
        // be the victim's (the page's actor table names the victim, the
        // signatures are the attacker's).
        let page_as = |envs: &[OpEnvelope<KvOp>], as_victim: bool| {
            if as_victim {
                ByteBuf::from(patched(raw_page(envs), &evil.actor().0, &victim.0))
            } else {
                ByteBuf::from(page_of(envs))
            }
        };
        // The victim's next operation (following its first), signed by
        // the attacker. Its dot is its author's own, so its bytes are a
        // well-formed operation of the victim's once the page names the
        // victim as author.
        let as_victim = put_as(&evil, evil.actor(), 2, writes.0[0].hash(), "forged");
        // The attacker's own operation, whose write names the victim.
        let misattributed = put_as(&evil, victim, 1, ChainHash::ZERO, "shadow");
        // A damaged signature, far in the victim's future (it must not
        // wait in a buffer).
        let damaged = put_as(&evil, evil.actor(), 50, ChainHash::ZERO, "future");
        let mut sig = *damaged.signature().unwrap();
        sig.0[9] ^= 1;
        let damaged = damaged.with_signature(Some(sig));
        // The hostile peer answers H1's first pull with a page of them.
        let page = encode(&SyncResponse::Ops {
            doc: DOC.into(),
            page: page_as(&[as_victim.clone(), damaged.clone()], true),
            more: false,
        });
        let mut bad = Client::spawn_with(None, vec![page]).await;
        let topic = crate::common::topic();
        bad.join(h1.peer_id(), h1_addr.clone(), topic.clone()).await;
        let publish = |page: ByteBuf| encode(&Gossip { doc: DOC.into(), page });
        bad.publish(topic.clone(), publish(page_as(&[as_victim], true))).await.unwrap();
        bad.publish(topic.clone(), publish(page_as(&[misattributed], false))).await.unwrap();
        bad.publish(topic.clone(), publish(page_as(&[damaged], true))).await.unwrap();
        let fault = |log: &[(usize, Ev)], what: &str| {
            log.iter().any(|(i, ev)| {
                matches!(ev, NodeEvent::PeerFault { peer, reason, .. }
                    if *i == 0 && *peer == bad.peer_id && reason.contains(what))
            })
        };
        events
            .wait_for("H1 refusing forged gossip and a forged page", |log| {
                let bad_sig = log
                    .iter()
                    .filter(|(i, ev)| {
                        *i == 0 && matches!(ev, NodeEvent::PeerFault { reason, .. } if reason.contains("bad signature"))
                    })
                    .count();
                // Two forged gossip messages and the forged page.
                bad_sig >= 3 && fault(log, &format!("writes as actor {victim}"))
            })
            .await;

        // Equivocation: a valid operation of the attacker's own, then a
        // second one for the same sequence number once everyone has the first.
        let first = put_as(&evil, evil.actor(), 1, ChainHash::ZERO, "first");
        let second = put_as(&evil, evil.actor(), 1, ChainHash::ZERO, "second");
        assert_ne!(first.hash(), second.hash());
        bad.publish(topic.clone(), publish(page_as(std::slice::from_ref(&first), false))).await.unwrap();
        writes.add([first.clone()]);
        converge(&nodes, &mut events, &writes.clock()).await;
        bad.publish(topic.clone(), publish(page_as(&[second], false))).await.unwrap();
        events
            .wait_for("an equivocation naming the attacker, with a proof anyone can check", |log| {
                log.iter().any(|(i, ev)| {
                    matches!(ev, NodeEvent::Equivocation { actor, seq: 1, doc, proof: Some(proof), .. }
                        if *i == 0 && *actor == evil.actor() && doc == DOC && proof.verify(DOC)
                            && proof.actor == evil.actor())
                })
            })
            .await;

        // Honest writes keep flowing; every node holds exactly the honest
        // writes and the attacker's first operation.
        writes.add([put(&h1, "after", "h1").await, put(&h3, "after", "h3").await]);
        let canonical = converge(&nodes, &mut events, &writes.clock()).await;
        assert_eq!(canonical, writes.oracle());
        for n in nodes {
            assert_eq!(n.with(DOC, |r| r.buffered()).await.unwrap(), 0, "nothing forged is held");
            assert_eq!(values(n, "k").await, vec!["first", "h2"], "the second variant must not apply anywhere");
        }
        // Faults are blamed on the hostile peer only, never on an honest relay.
        for (i, ev) in &events.log {
            if let NodeEvent::PeerFault { peer, reason, .. } = ev {
                assert_eq!(*peer, bad.peer_id, "node {i} blamed an honest peer: {reason}");
            }
        }
        drop(bad);
        for n in [h1, h2, h3] {
            n.shutdown().await.unwrap();
        }
    })
    .await;
}
