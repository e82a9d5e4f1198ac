//! `walrus node`: a replica of one key-value document on the network,
//! driven by commands on standard input, reporting JSON lines on standard
//! output (one object per line, flushed per line).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use walrus::net::{Multiaddr, Node, NodeConfig, NodeEvent, PeerId};
use walrus::replica::{ActorId, Change, KvDoc, KvOp, Origin, Recovered, ReplicaOptions, VersionVector};

use crate::doc_cmd::{json_values, SEGMENT_SIZE};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Options of `walrus node`.
pub struct NodeArgs {
    pub data: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub doc: String,
    pub mdns: bool,
    pub sync_interval_ms: u64,
    /// Peers allowed to connect; empty: any.
    pub allow: Vec<PeerId>,
    /// Pre-shared key file of a private network.
    pub psk_file: Option<PathBuf>,
    /// Actors that may write; empty: any.
    pub writers: Vec<ActorId>,
    /// Peers whose snapshots are merged; empty: any.
    pub snapshot_peers: Vec<PeerId>,
}

/// Prints one JSON line. Standard output is shared by the event task and
/// the command loop; the lock keeps lines whole.
fn emit(v: &Value) {
    // A reader that stops reading blocks this write: let the runtime move
    // its other work (the swarm) to another thread meanwhile.
    tokio::task::block_in_place(|| {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the node; its state is in the log.
        let _ = writeln!(out, "{v}").and_then(|()| out.flush());
    });
}

fn error(message: impl std::fmt::Display) {
    emit(&json!({"event": "error", "message": message.to_string()}));
}

fn clock_json(clock: &VersionVector) -> Value {
    Value::Object(clock.iter().map(|(a, s)| (a.to_string(), json!(s))).collect())
}

fn event_json(ev: NodeEvent<KvOp>) -> Option<Value> {
    Some(match ev {
        NodeEvent::Listening { addr } => json!({"event": "listening", "addr": addr.to_string()}),
        NodeEvent::PeerConnected { peer, addr } => {
            json!({"event": "peer_connected", "peer": peer.to_string(), "addr": addr.to_string()})
        }
        NodeEvent::PeerDisconnected { peer } => json!({"event": "peer_disconnected", "peer": peer.to_string()}),
        NodeEvent::Changed { change: Change::Op { origin: Origin::Remote, op }, .. } => {
            let (kind, key, value) = match &op.op() {
                KvOp::Put { key, value, .. } => ("put", key, Value::String(value.clone())),
                KvOp::Del { key, .. } => ("del", key, Value::Null),
            };
            json!({"event": "remote_change", "op": kind, "key": key, "value": value,
                   "actor": op.actor().to_string(), "seq": op.seq()})
        }
        NodeEvent::Changed { change: Change::Snapshot { clock }, .. } => {
            json!({"event": "snapshot_merged", "clock": clock_json(&clock)})
        }
        NodeEvent::Changed { .. } => return None,
        NodeEvent::Synced { peer, applied, snapshot, .. } => {
            json!({"event": "synced", "peer": peer.to_string(), "applied": applied, "snapshot": snapshot})
        }
        NodeEvent::PeerFault { peer, reason, .. } => {
            json!({"event": "peer_fault", "peer": peer.to_string(), "reason": reason})
        }
        NodeEvent::Equivocation { actor, seq, peer, proof, .. } => {
            // Each side as a run's body (docs/REPLICA.md, "Runs"), in hex.
            let proof = proof.as_ref().map(|p| json!({"a": hex(&p.a.encode()), "b": hex(&p.b.encode())}));
            json!({"event": "equivocation", "actor": actor.to_string(), "seq": seq, "peer": peer.to_string(),
                   "proof": proof})
        }
        NodeEvent::SnapshotRefused { peer, .. } => json!({"event": "snapshot_refused", "peer": peer.to_string()}),
        NodeEvent::PeerBanned { peer, reason } => {
            json!({"event": "peer_banned", "peer": peer.to_string(), "reason": reason})
        }
        NodeEvent::DocumentFailed { doc, error } => json!({"event": "doc_failed", "doc": doc, "error": error}),
        NodeEvent::DocumentReopened { doc } => json!({"event": "doc_reopened", "doc": doc}),
        NodeEvent::Recovered { doc, note } => {
            eprintln!("walrus: warning: document {doc:?}: {note}");
            match note {
                Recovered::ActorRetired { old, new, .. } => json!({
                    "event": "actor_retired", "doc": doc, "old": old.to_string(), "actor": new.to_string(),
                    "message": note.to_string()
                }),
                _ => json!({"event": "recovered", "doc": doc, "message": note.to_string()}),
            }
        }
    })
}

pub fn run(args: NodeArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: NodeArgs) -> Result<ExitCode> {
    walrus::net::check_local_doc_name(&args.doc)?;
    let mut cfg = NodeConfig::new(&args.data);
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    cfg.peers = args.peers;
    cfg.docs = vec![args.doc.clone()];
    cfg.mdns = args.mdns;
    cfg.sync_interval = std::time::Duration::from_millis(args.sync_interval_ms.max(10));
    if !args.allow.is_empty() {
        cfg.allow = Some(args.allow.iter().copied().collect());
    }
    if let Some(path) = &args.psk_file {
        cfg.psk = Some(walrus::net::read_psk_file(path)?);
    }
    if !args.snapshot_peers.is_empty() {
        cfg.snapshot_peers = Some(args.snapshot_peers.iter().copied().collect());
    }
    let defaults = ReplicaOptions::default();
    let writers = (!args.writers.is_empty()).then(|| args.writers.iter().copied().collect());
    cfg.replica = ReplicaOptions { wal: defaults.wal.clone().segment_size(SEGMENT_SIZE), writers, ..defaults };
    let (node, mut events) = Node::<KvDoc>::start(cfg).await?;
    let printer = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if let Some(v) = event_json(ev) {
                        emit(&v);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    emit(&json!({"event": "lagged", "missed": n}));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let mut input = BufReader::new(tokio::io::stdin());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_line(&mut input, &mut buf).await {
            Ok(Line::End) => break,
            Ok(Line::TooLong) => {
                error(format!("command longer than {MAX_LINE} bytes ignored"));
                continue;
            }
            Ok(Line::Complete) => {}
            Err(e) => {
                error(format!("reading standard input: {e}"));
                break;
            }
        }
        let line = match std::str::from_utf8(&buf) {
            Ok(line) => line,
            Err(e) => {
                error(format!("command is not valid UTF-8: {e}"));
                continue;
            }
        };
        if !command(&node, &args.doc, line.trim_end_matches('\r')).await {
            break;
        }
    }
    let result = node.shutdown().await;
    // The printer ends once the node's event senders are gone.
    let _ = printer.await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Longest command line accepted; longer ones are skipped without being
/// held in memory (operations are limited to 1 MiB anyway).
const MAX_LINE: usize = 16 << 20;

enum Line {
    Complete,
    TooLong,
    End,
}

/// Reads one line (without its newline) into `buf`, never holding more than
/// [`MAX_LINE`] bytes of it: the rest of a longer line is skipped.
async fn read_line<R: AsyncBufRead + Unpin>(input: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    let mut too_long = false;
    loop {
        let chunk = input.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::End
            } else {
                Line::Complete
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long && buf.len() + take <= MAX_LINE {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            too_long = true;
            buf.clear();
        }
        input.consume(take + usize::from(done));
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Complete });
        }
    }
}

/// A command line shown in an error message, cut to a readable length.
fn shown(line: &str) -> Value {
    let mut s: String = line.chars().take(160).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    Value::String(s)
}

/// Splits `<key> <rest>` at the first space.
fn key_and_rest(args: &str) -> (&str, &str) {
    match args.split_once(' ') {
        Some((k, rest)) => (k, rest),
        None => (args, ""),
    }
}

/// Runs one command line; false means stop.
async fn command(node: &Node<KvDoc>, doc: &str, line: &str) -> bool {
    let (cmd, args) = key_and_rest(line.trim_start());
    match (cmd, args) {
        ("", _) => {}
        ("quit", "") => return false,
        ("put", args) => {
            let (key, value) = key_and_rest(args);
            if key.is_empty() {
                error("usage: put <key> <value>");
                return true;
            }
            let (k, v) = (key.to_string(), value.to_string());
            match node.update(doc, move |d, actor| d.put_op(actor, &k, &v)).await {
                Ok(env) => emit(&json!({"event": "ok", "cmd": "put", "key": key, "value": value,
                                        "actor": env.actor().to_string(), "seq": env.seq()})),
                Err(e) => error(e),
            }
        }
        ("del", key) if !key.is_empty() && !key.contains(' ') => {
            let k = key.to_string();
            let present = node.with(doc, move |r| !r.doc().values_of(&k).is_empty()).await;
            match present {
                Ok(false) => error(format!("key {} has no value", Value::String(key.to_string()))),
                Ok(true) => {
                    let k = key.to_string();
                    match node.update(doc, move |d, _| d.del_op(&k)).await {
                        Ok(env) => emit(&json!({"event": "ok", "cmd": "del", "key": key,
                                                "actor": env.actor().to_string(), "seq": env.seq()})),
                        Err(e) => error(e),
                    }
                }
                Err(e) => error(e),
            }
        }
        ("get", key) if !key.is_empty() && !key.contains(' ') => {
            let k = key.to_string();
            match node.with(doc, move |r| r.doc().values_of(&k)).await {
                Ok(values) if values.is_empty() => emit(&json!({"event": "value", "key": key, "value": null})),
                Ok(values) => emit(&json!({"event": "value", "key": key, "value": json_values(&values)})),
                Err(e) => error(e),
            }
        }
        ("dump", "") => {
            let state = node
                .with(doc, |r| {
                    let entries: Map<String, Value> =
                        r.doc().entries().iter().map(|(k, v)| (k.clone(), json_values(v))).collect();
                    json!({"event": "dump", "entries": entries, "clock": clock_json(r.clock()),
                           "actor": r.actor().to_string()})
                })
                .await;
            match state {
                Ok(v) => emit(&v),
                Err(e) => error(e),
            }
        }
        ("peers", "") => match node.peers().await {
            Ok(peers) => {
                let list: Vec<Value> = peers
                    .iter()
                    .map(|p| {
                        let addrs: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
                        json!({"peer": p.peer.to_string(), "addrs": addrs, "docs": p.docs})
                    })
                    .collect();
                emit(&json!({"event": "peers", "peers": list}));
            }
            Err(e) => error(e),
        },
        ("connect", addr) if !addr.is_empty() => match addr.trim().parse::<Multiaddr>() {
            Ok(ma) => match node.connect(ma).await {
                Ok(()) => emit(&json!({"event": "ok", "cmd": "connect", "addr": addr.trim()})),
                Err(e) => error(e),
            },
            Err(e) => error(format!("bad multiaddr {}: {e}", shown(addr))),
        },
        _ => error(format!(
            "unknown or malformed command {}; commands: put <key> <value>, del <key>, get <key>, dump, peers, \
             connect <multiaddr>, quit",
            shown(line)
        )),
    }
    true
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_failures_are_json_lines() {
        let failed = NodeEvent::DocumentFailed { doc: "notes".into(), error: "no space left on device".into() };
        assert_eq!(
            event_json(failed),
            Some(json!({"event": "doc_failed", "doc": "notes", "error": "no space left on device"}))
        );
        let reopened = NodeEvent::DocumentReopened { doc: "notes".into() };
        assert_eq!(event_json(reopened), Some(json!({"event": "doc_reopened", "doc": "notes"})));
    }
}
