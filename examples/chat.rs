//! A small chat room: every message is its own key
//! `msg/<unix ms>/<name>/<n>` → text in one shared document, so the history
//! is simply the keys in order and no message ever overwrites another.
//!
//! ```sh
//! cargo run --example chat -- --data /tmp/chat-alice --name alice --listen /ip4/127.0.0.1/tcp/4002
//! ```
//!
//! prints `listening on /ip4/127.0.0.1/tcp/4002/p2p/12D3KooW…`; in a second
//! terminal:
//!
//! ```sh
//! cargo run --example chat -- --data /tmp/chat-bob --name bob --peer /ip4/127.0.0.1/tcp/4002/p2p/12D3KooW…
//! ```
//!
//! Type a line to send it. `/peers` lists the connected peers, `/quit` (or
//! end of input) leaves. On start each instance prints the history it has;
//! messages sent while it was away arrive once it reconnects (a `--peer` is
//! re-dialed with backoff) and print as they come, with their own time.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast::error::RecvError;
use walrus::net::Multiaddr;
use walrus::replica::KvOp;
use walrus::{Change, KvDoc, Node, NodeConfig, NodeEvent};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DOC: &str = "chat";
const PREFIX: &str = "msg/";
const USAGE: &str = "usage: chat --data <dir> --name <name> [--listen <multiaddr>]... [--peer <multiaddr>]...";
const HELP: &str = "type a message, or /peers, /quit";

#[tokio::main]
async fn main() -> Result<()> {
    let (cfg, name) = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}\n{USAGE}");
        std::process::exit(2);
    });
    let (node, mut events) = Node::<KvDoc>::start(cfg).await?;
    for addr in node.listen_addrs().await? {
        println!("listening on {addr}");
    }
    history(&node).await?;
    println!("{HELP}");
    let mut sent = 0u64;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match line.trim() {
                    "" => {}
                    "/quit" => break,
                    "/peers" => {
                        if let Err(e) = peers(&node).await {
                            println!("error: {e}");
                        }
                    }
                    cmd if cmd.starts_with('/') => println!("unknown command {cmd}; {HELP}"),
                    text => {
                        sent += 1;
                        // Unique: a name sends one message per (millisecond, n).
                        // Even a clash would keep both, as concurrent values.
                        let key = format!("{PREFIX}{:013}/{name}/{sent}", now_ms());
                        let text = text.to_string();
                        if let Err(e) = node.update(DOC, move |d, actor| d.put_op(actor, &key, &text)).await {
                            println!("not sent: {e}");
                        }
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    println!("error reading standard input: {e}");
                    break;
                }
            },
            event = events.recv() => match event {
                // Local and remote messages alike, as they are applied.
                Ok(NodeEvent::Changed { change: Change::Op { op, .. }, .. }) => {
                    if let KvOp::Put { key, value, .. } = op.op() {
                        show(key, value);
                    }
                }
                Ok(NodeEvent::Changed { change: Change::Snapshot { .. }, .. }) => {
                    println!("* caught up from a peer's snapshot:");
                    history(&node).await?;
                }
                Ok(NodeEvent::PeerConnected { peer, .. }) => println!("* {peer} joined"),
                Ok(NodeEvent::PeerDisconnected { peer }) => println!("* {peer} left"),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    println!("* fell behind; the history again:");
                    history(&node).await?;
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    node.shutdown().await?;
    println!("bye");
    Ok(())
}

fn parse_args() -> std::result::Result<(NodeConfig, String), String> {
    let (mut data, mut name, mut listen, mut peers) = (None, None, Vec::new(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let addr = || value.parse::<Multiaddr>().map_err(|e| format!("bad address {value}: {e}"));
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(&value)),
            "--name" if value.is_empty() || value.contains(['/', ' ']) => {
                return Err(format!("bad name {value:?}: no spaces or '/'"));
            }
            "--name" => name = Some(value),
            "--listen" => listen.push(addr()?),
            "--peer" => peers.push(addr()?),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let mut cfg = NodeConfig::new(data.ok_or("--data is required")?);
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    cfg.peers = peers;
    cfg.docs = vec![DOC.to_string()];
    Ok((cfg, name.ok_or("--name is required")?))
}

/// Prints every message, oldest first: keys sort by time, as the timestamp
/// has a fixed width.
async fn history(node: &Node<KvDoc>) -> Result<()> {
    for (key, texts) in node.with(DOC, |r| r.doc().entries()).await? {
        for text in texts {
            show(&key, &text);
        }
    }
    Ok(())
}

async fn peers(node: &Node<KvDoc>) -> Result<()> {
    let peers = node.peers().await?;
    if peers.is_empty() {
        println!("* nobody else is here");
    }
    for p in peers {
        let addrs: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
        println!("* {} at {}", p.peer, addrs.join(", "));
    }
    Ok(())
}

/// Prints message `key` → `text` as `[hh:mm:ss] name: text` (UTC).
fn show(key: &str, text: &str) {
    let mut parts = key.strip_prefix(PREFIX).unwrap_or_default().split('/');
    let (Some(ms), Some(name)) = (parts.next().and_then(|t| t.parse::<u64>().ok()), parts.next()) else {
        return; // Not a message.
    };
    let s = ms / 1000 % 86_400;
    println!("[{:02}:{:02}:{:02}] {name}: {text}", s / 3600, s / 60 % 60, s % 60);
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
