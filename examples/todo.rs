//! A local-first todo list: each instance keeps the whole list in its own
//! data directory, works offline, and converges with the instances it can
//! reach.
//!
//! In a first terminal:
//!
//! ```sh
//! cargo run --example todo -- --data /tmp/todo-a --listen /ip4/127.0.0.1/tcp/4001
//! ```
//!
//! It prints `listening on /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…`; give that
//! address to a second instance:
//!
//! ```sh
//! cargo run --example todo -- --data /tmp/todo-b --peer /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…
//! ```
//!
//! Commands: `add <text>`, `done <id>`, `undo <id>`, `edit <id> <text>`,
//! `rm <id>`, `ls`, `quit` (or end of input). An id may be shortened to any
//! unique prefix.
//!
//! - `add buy milk` in the first terminal: the second prints
//!   `remote: 3fa9c2 [ ] buy milk`; `done 3f` there shows up in the first.
//! - `quit` the second instance, `add call mum` in the first, then start the
//!   second again with the same command: it reopens its list from
//!   /tmp/todo-b and pulls the item it missed.
//! - The other way round: `quit` the first instance and keep editing in the
//!   second (every edit is durable when the command returns). The second
//!   re-dials its `--peer` with backoff (at most 10 s apart), so once the
//!   first restarts (same data directory, hence same peer id, same port)
//!   both catch up on their own.
//! - Conflicts: quit the second instance, `edit <id> buy oat milk` in the
//!   first, start the second without `--peer` (offline), `edit <id> buy soy
//!   milk`, quit, and restart it with `--peer`. Both now list
//!   `<id> CONFLICT: [ ] buy oat milk | [ ] buy soy milk`: concurrent writes
//!   are all kept until a later `edit`, `done` or `undo` replaces them. An
//!   `rm` concurrent with an edit keeps the edited todo.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast::error::RecvError;
use walrus::net::Multiaddr;
use walrus::replica::{KvOp, Origin};
use walrus::{ActorId, Change, KvDoc, Node, NodeConfig, NodeEvent};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DOC: &str = "todos";
/// Each todo is the key `todo/<id>` with the value `open|<text>` or `done|<text>`.
const PREFIX: &str = "todo/";
const USAGE: &str = "usage: todo --data <dir> [--listen <multiaddr>]... [--peer <multiaddr>]...";
const HELP: &str = "commands: add <text>, done <id>, undo <id>, edit <id> <text>, rm <id>, ls, quit";

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}\n{USAGE}");
        std::process::exit(2);
    });
    let (node, mut events) = Node::<KvDoc>::start(cfg).await?;
    for addr in node.listen_addrs().await? {
        println!("listening on {addr}");
    }
    println!("{HELP}");
    list(&node).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match command(&node, line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("error: {e}"),
                },
                Ok(None) => break,
                Err(e) => {
                    println!("error reading standard input: {e}");
                    break;
                }
            },
            event = events.recv() => match event {
                Ok(event) => show_event(&node, event).await?,
                Err(RecvError::Lagged(_)) => println!("(missed some updates; type ls)"),
                Err(RecvError::Closed) => break,
            },
        }
    }
    node.shutdown().await?;
    Ok(())
}

fn parse_args() -> std::result::Result<NodeConfig, String> {
    let (mut data, mut listen, mut peers) = (None, Vec::new(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let addr = || value.parse::<Multiaddr>().map_err(|e| format!("bad address {value}: {e}"));
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(&value)),
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
    Ok(cfg)
}

/// Runs one command line; `false` means quit.
async fn command(node: &Node<KvDoc>, line: &str) -> Result<bool> {
    let (cmd, arg) = line.split_once(' ').map_or((line, ""), |(c, rest)| (c, rest.trim()));
    match (cmd, arg) {
        ("", _) => {}
        ("quit", "") => return Ok(false),
        ("ls", "") => list(node).await?,
        ("add", text) if !text.is_empty() => {
            // Random ids never clash in practice; if two replicas did pick
            // the same one, both todos would show as a conflict, not vanish.
            let id = ActorId::random().to_string()[..6].to_string();
            write(node, &id, false, text).await?;
        }
        ("done" | "undo", id) if !id.is_empty() => {
            let (id, values) = find(node, id).await?;
            let text = one_text(&values).ok_or("the text is in conflict: pick one with edit <id> <text>")?;
            write(node, &id, cmd == "done", &text).await?;
        }
        ("edit", arg) if arg.contains(' ') => {
            let (id, text) = arg.split_once(' ').unwrap_or_default();
            let (id, values) = find(node, id).await?;
            // Done only if every concurrent version is done.
            let done = values.iter().all(|v| parse(v).0);
            write(node, &id, done, text.trim()).await?;
        }
        ("rm", id) if !id.is_empty() => {
            let (id, _) = find(node, id).await?;
            let key = format!("{PREFIX}{id}");
            node.update(DOC, move |d, _| d.del_op(&key)).await?;
            println!("removed {id}");
        }
        _ => println!("{HELP}"),
    }
    Ok(true)
}

/// Sets todo `id`, superseding every version of it this replica has seen;
/// durable when this returns (then gossiped to peers).
async fn write(node: &Node<KvDoc>, id: &str, done: bool, text: &str) -> Result<()> {
    let key = format!("{PREFIX}{id}");
    let value = format!("{}|{text}", if done { "done" } else { "open" });
    let shown = describe(id, std::slice::from_ref(&value));
    node.update(DOC, move |d, actor| d.put_op(actor, &key, &value)).await?;
    println!("ok: {shown}");
    Ok(())
}

/// The one todo whose id starts with `prefix`: its full id and values.
async fn find(node: &Node<KvDoc>, prefix: &str) -> Result<(String, Vec<String>)> {
    let mut hits: Vec<_> = todos(node).await?.into_iter().filter(|(id, _)| id.starts_with(prefix)).collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(format!("no todo {prefix}").into()),
        n => Err(format!("{n} todos start with {prefix}; type more of the id").into()),
    }
}

/// Every todo: id and values (several after concurrent edits).
async fn todos(node: &Node<KvDoc>) -> Result<Vec<(String, Vec<String>)>> {
    let entries = node.with(DOC, |r| r.doc().entries()).await?;
    Ok(entries.into_iter().filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?.to_string(), v))).collect())
}

/// Prints the list: open todos first, then by text.
async fn list(node: &Node<KvDoc>) -> Result<()> {
    let mut all = todos(node).await?;
    if all.is_empty() {
        println!("(no todos)");
    }
    all.sort_by_key(|(id, values)| (values.iter().all(|v| parse(v).0), values.first().cloned(), id.clone()));
    for (id, values) in all {
        println!("  {}", describe(&id, &values));
    }
    Ok(())
}

async fn show_event(node: &Node<KvDoc>, event: NodeEvent<KvOp>) -> Result<()> {
    match event {
        NodeEvent::PeerConnected { peer, addr } => println!("peer {peer} connected ({addr})"),
        NodeEvent::PeerDisconnected { peer } => println!("peer {peer} disconnected"),
        NodeEvent::Changed { change: Change::Op { origin: Origin::Remote, op }, .. } => {
            let (KvOp::Put { key, .. } | KvOp::Del { key, .. }) = op.into_op();
            if let Some(id) = key.strip_prefix(PREFIX).map(str::to_string) {
                // Show the todo as it is now, concurrent versions included.
                let values = node.with(DOC, move |r| r.doc().values_of(&key)).await?;
                println!("remote: {}", describe(&id, &values));
            }
        }
        NodeEvent::Changed { change: Change::Snapshot { .. }, .. } => println!("(merged a peer's snapshot; type ls)"),
        NodeEvent::PeerFault { peer, reason, .. } => println!("peer {peer} sent something invalid: {reason}"),
        _ => {}
    }
    Ok(())
}

/// `open|text` → (false, text); `done|text` → (true, text).
fn parse(value: &str) -> (bool, &str) {
    match value.split_once('|') {
        Some((status, text)) => (status == "done", text),
        None => (false, value),
    }
}

/// The text all versions agree on, if they do.
fn one_text(values: &[String]) -> Option<String> {
    let first = parse(values.first()?).1;
    values.iter().all(|v| parse(v).1 == first).then(|| first.to_string())
}

fn describe(id: &str, values: &[String]) -> String {
    let show = |v: &String| {
        let (done, text) = parse(v);
        format!("[{}] {text}", if done { "x" } else { " " })
    };
    match values {
        [] => format!("{id} removed"),
        [one] => format!("{id} {}", show(one)),
        many => format!("{id} CONFLICT: {}", many.iter().map(show).collect::<Vec<_>>().join(" | ")),
    }
}
