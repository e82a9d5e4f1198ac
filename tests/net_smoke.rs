use std::time::Duration;

use walrus::net::{Node, NodeConfig, NodeHandle};
use walrus::replica::{KvDoc, KvDocExt, VersionVector};

async fn start(
    dir: &std::path::Path,
    peers: Vec<walrus::net::Multiaddr>,
) -> (NodeHandle<KvDoc>, walrus::net::Multiaddr) {
    let mut cfg = NodeConfig::new(dir);
    cfg.docs = vec!["d".into()];
    cfg.peers = peers;
    cfg.sync_interval = Duration::from_millis(500);
    let (h, _ev) = Node::<KvDoc>::start(cfg).await.unwrap();
    let addr = h.listen_addrs().await.unwrap()[0].clone();
    (h, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, aa) = start(dirs[0].path(), vec![]).await;
    let (b, _) = start(dirs[1].path(), vec![aa.clone()]).await;
    let (c, _) = start(dirs[2].path(), vec![aa.clone()]).await;
    let nodes = [a, b, c];
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..20 {
            n.update("d", move |d, act| d.put_op(act, &format!("k{k}"), &format!("n{i}"))).await.unwrap();
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in &nodes {
        let mut sub = n.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = sub.recv().await {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut clocks: Vec<VersionVector> = Vec::new();
        for n in &nodes {
            clocks.push(n.with("d", |r| r.clock().clone()).await.unwrap());
        }
        if clocks.iter().all(|c| c == &clocks[0] && c.total() == 60) {
            break;
        }
        if tokio::time::timeout_at(deadline, rx.recv()).await.is_err() {
            for n in &nodes {
                eprintln!("{} peers {:?}", n.peer_id(), n.peers().await.unwrap());
            }
            panic!("not converged: {clocks:?}");
        }
    }
}
