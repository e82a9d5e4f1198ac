//! Several documents per node: each is replicated only with the peers that
//! have it, and documents can be opened and closed while the node runs.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use walrus::net::{Multiaddr, Node, NodeConfig, NodeError, NodeEvent};
use walrus::replica::{KvDoc, KvOp};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path, docs: &[&str], peers: Vec<Multiaddr>) -> (Node<KvDoc>, Multiaddr) {
    let mut cfg = NodeConfig::new(dir);
    cfg.docs = docs.iter().map(|d| d.to_string()).collect();
    cfg.peers = peers;
    cfg.sync_interval = Duration::from_millis(200);
    cfg.heartbeat = Duration::from_millis(100);
    let (node, _events) = Node::<KvDoc>::start(cfg).await.expect("node starts");
    let addr = node.listen_addrs().await.unwrap()[0].clone();
    (node, addr)
}

async fn values(node: &Node<KvDoc>, doc: &str, key: &str) -> Vec<String> {
    let key = key.to_string();
    node.with(doc, move |r| r.doc().values_of(&key)).await.unwrap()
}

/// Waits until `doc` on `node` has `key` = `value`, on events only.
async fn await_value(node: &Node<KvDoc>, doc: &str, key: &str, value: &str) {
    let mut events = node.subscribe();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while values(node, doc, key).await != [value] {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => panic!("node stopped"),
            Err(_) => panic!("{doc}/{key} never became {value:?}"),
        }
    }
}

async fn put(node: &Node<KvDoc>, doc: &str, key: &str, value: &str) {
    let (k, v) = (key.to_string(), value.to_string());
    node.update(doc, move |d, a| d.put_op(a, &k, &v)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_replicate_only_with_peers_that_have_them() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (hub, hub_addr) = start(dirs[0].path(), &["notes", "todos"], vec![]).await;
    let (notes_only, _) = start(dirs[1].path(), &["notes"], vec![hub_addr.clone()]).await;
    let (todos_only, _) = start(dirs[2].path(), &["todos"], vec![hub_addr.clone()]).await;
    let mut seen_by_notes_only = notes_only.subscribe();

    put(&hub, "notes", "n", "from hub").await;
    put(&hub, "todos", "t", "from hub").await;
    put(&notes_only, "notes", "n2", "from notes-only").await;
    put(&todos_only, "todos", "t2", "from todos-only").await;
    await_value(&notes_only, "notes", "n", "from hub").await;
    await_value(&todos_only, "todos", "t", "from hub").await;
    await_value(&hub, "notes", "n2", "from notes-only").await;
    await_value(&hub, "todos", "t2", "from todos-only").await;

    // The hub knows who has what.
    let peers = hub.peers().await.unwrap();
    let docs_of = |p: &Node<KvDoc>| peers.iter().find(|i| i.peer == p.peer_id()).map(|i| i.docs.clone());
    assert_eq!(docs_of(&notes_only), Some(vec!["notes".to_string()]));
    assert_eq!(docs_of(&todos_only), Some(vec!["todos".to_string()]));

    // A node without "todos" neither holds it nor hears about its changes.
    assert!(matches!(notes_only.with("todos", |_| ()).await, Err(walrus::net::NodeError::UnknownDoc(_))));
    while let Ok(ev) = seen_by_notes_only.try_recv() {
        match ev {
            NodeEvent::Changed { doc, .. } | NodeEvent::Synced { doc, .. } => assert_eq!(doc, "notes"),
            NodeEvent::PeerFault { reason, .. } => panic!("unexpected fault: {reason}"),
            _ => {}
        }
    }

    // Opening the document later starts replicating it, with its history.
    notes_only.open_doc("todos").await.unwrap();
    await_value(&notes_only, "todos", "t2", "from todos-only").await;
    assert!(matches!(notes_only.open_doc("todos").await, Err(walrus::net::NodeError::DocOpen(_))));
    assert!(matches!(notes_only.open_doc("../escape").await, Err(walrus::net::NodeError::BadDocName(_))));

    // Closing it stops replication; writes elsewhere no longer arrive, and
    // reopening catches up.
    notes_only.close_doc("todos").await.unwrap();
    put(&hub, "todos", "t3", "while closed").await;
    assert!(notes_only.with("todos", |_| ()).await.is_err());
    notes_only.open_doc("todos").await.unwrap();
    await_value(&notes_only, "todos", "t3", "while closed").await;

    // Bytes crossed the wire in both directions.
    let t = hub.traffic();
    assert!(t.sent > 0 && t.received > 0, "{t:?}");

    for n in [hub, notes_only, todos_only] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_changes_reach_subscribers_after_they_are_durable() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_addr) = start(da.path(), &["d"], vec![]).await;
    let (b, _) = start(db.path(), &["d"], vec![a_addr]).await;
    let mut events = b.subscribe();
    put(&a, "d", "k", "v").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let op = loop {
        match tokio::time::timeout_at(deadline, events.recv()).await.expect("change arrives") {
            Ok(NodeEvent::Changed { change: walrus::replica::Change::Op { op, .. }, .. }) => break op,
            _ => continue,
        }
    };
    assert!(matches!(op.op(), KvOp::Put { key, value, .. } if key == "k" && value == "v"));
    b.shutdown().await.unwrap();
    // Reopened offline, the replica still has it: it was durable before it was announced.
    let r: walrus::replica::Replica<KvDoc> =
        walrus::replica::Replica::open(NodeConfig::new(db.path()).doc_dir("d"), Default::default()).unwrap();
    assert_eq!(r.doc().values_of("k"), vec!["v"]);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_closure_fails_only_its_own_call() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start(dir.path(), &["d"], vec![]).await;
    let panicked = node.with("d", |_| -> u32 { panic!("app bug") }).await;
    assert!(matches!(panicked, Err(walrus::net::NodeError::Stopped)), "{panicked:?}");
    let failed_write = node.update("d", |_, _| -> KvOp { panic!("app bug in a write") }).await;
    assert!(failed_write.is_err());
    // The document is still served.
    put(&node, "d", "k", "v").await;
    assert_eq!(values(&node, "d", "k").await, vec!["v"]);
    assert_eq!(node.with("d", |r| r.clock().total()).await.unwrap(), 1);
    let other = node.clone();
    node.shutdown().await.unwrap();
    // A handle outliving the node says so.
    assert!(matches!(other.with("d", |_| ()).await, Err(walrus::net::NodeError::Stopped)));
    assert!(matches!(other.peers().await, Err(walrus::net::NodeError::Stopped)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    // Free a port to listen on explicitly.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    // The document's directory cannot be created: a file is in the way.
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs").join("blocked"), b"not a directory").unwrap();
    let mut cfg = NodeConfig::new(dir.path());
    cfg.listen = vec![listen.clone()];
    cfg.docs = vec!["fine".into(), "blocked".into()];
    assert!(Node::<KvDoc>::start(cfg.clone()).await.is_err());
    // Port, identity and the document that did open are all free again.
    cfg.docs = vec!["fine".into()];
    let (node, _) = Node::<KvDoc>::start(cfg).await.expect("restart on the same port and directory");
    put(&node, "fine", "k", "v").await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_node() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_addr) = start(da.path(), &["d"], vec![]).await;
    let (b, _) = start(db.path(), &["d"], vec![a_addr]).await;
    let mut events = b.subscribe();
    put(&b, "d", "k", "v").await;
    await_value(&a, "d", "k", "v").await;
    let a_id = a.peer_id();
    drop(a);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await.expect("A disconnects") {
            Ok(NodeEvent::PeerDisconnected { peer }) if peer == a_id => break,
            _ => continue,
        }
    }
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_serves_one_node_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = start(dir.path(), &["one"], vec![]).await;
    put(&a, "one", "k", "v").await;
    // Whatever its documents, a second node would share the first's peer id.
    for docs in [vec!["two".to_string()], vec!["one".to_string()], vec![]] {
        let mut cfg = NodeConfig::new(dir.path());
        cfg.docs = docs.clone();
        let err = match Node::<KvDoc>::start(cfg).await {
            Err(e) => e,
            Ok(_) => panic!("{docs:?}: a second node started on a locked data directory"),
        };
        match &err {
            NodeError::Locked { dir: locked, pid } => {
                assert_eq!(locked, dir.path(), "{docs:?}");
                assert_eq!(*pid, Some(std::process::id()), "{docs:?}");
            }
            other => panic!("{docs:?}: {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("locked"), "{msg}");
    }
    assert!(!dir.path().join("docs").join("two").exists(), "the refused node created its document");
    assert_eq!(values(&a, "one", "k").await, ["v"]);
    let peer_id = a.peer_id();
    a.shutdown().await.unwrap();
    // Released by the shutdown.
    let (b, _) = start(dir.path(), &["two"], vec![]).await;
    assert_eq!(b.peer_id(), peer_id, "the same identity");
    b.shutdown().await.unwrap();
}
