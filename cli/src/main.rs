//! The `walrus` command-line tool: inspect and drive write-ahead logs and
//! replicas, run a networked node, and run the demo.

mod demo;
mod doc_cmd;
mod log_cmd;
mod node_cmd;
mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use walrus_cli::sync_bench;

#[derive(Parser)]
#[command(name = "walrus", version, about = "Local-first replication on a durable write-ahead log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with a write-ahead log directory.
    #[command(subcommand)]
    Log(LogCommand),
    /// Inspect or edit a key-value replica directory offline.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Run a networked replica of a key-value document: commands on
    /// standard input, JSON-line events and answers on standard output.
    Node {
        /// Data directory (identity and replicas; created if missing).
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (repeatable).
        #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: Vec<walrus::net::Multiaddr>,
        /// Peer to stay connected to, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3… (repeatable).
        #[arg(long)]
        peer: Vec<walrus::net::Multiaddr>,
        /// Document to replicate.
        #[arg(long, default_value = "default")]
        doc: String,
        /// Discover peers on the local network with mDNS.
        #[arg(long)]
        mdns: bool,
        /// Mean milliseconds between anti-entropy rounds with each peer.
        #[arg(long, default_value_t = 5000)]
        sync_interval_ms: u64,
        /// Connect only with this peer id, in either direction (repeatable).
        /// Without --allow any peer may connect. Every --peer that names a
        /// peer id (/p2p/…) must be allowed.
        #[arg(long, value_name = "PEER_ID", value_parser = parse_peer_id)]
        allow: Vec<walrus::net::PeerId>,
        /// Join the private network of this pre-shared key (the standard
        /// swarm.key file: "/key/swarm/psk/1.0.0/", "/base16/", then 64 hex
        /// digits, one per line). Only nodes with the same key can connect.
        #[arg(long, value_name = "PATH")]
        psk_file: Option<PathBuf>,
        /// Accept operations of this actor only (repeatable; 64 hex digits,
        /// as `dump` shows a node's own). Give every node of the document
        /// the same list, including its own actor, or its writes fail.
        /// Without --writer anyone may write.
        #[arg(long, value_name = "ACTOR_ID")]
        writer: Vec<walrus::replica::ActorId>,
        /// Merge snapshots only from this peer (repeatable). Without it,
        /// snapshots from any connected peer are merged.
        #[arg(long, value_name = "PEER_ID", value_parser = parse_peer_id)]
        snapshot_peer: Vec<walrus::net::PeerId>,
    },
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Three nodes on loopback: concurrent writes, a partition, a crash and a
    /// lost disk, converging each time. Exits non-zero if a check fails.
    Demo {
        /// Instead: a write-ahead log surviving SIGKILL under each sync policy.
        #[arg(long)]
        log: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Replication over loopback: convergence time, ops/s and bytes on the
    /// wire per op; catch-up of a new node, as two `walrus node` processes
    /// (`cargo bench --bench sync` in the source tree also runs automerge's
    /// sync on the same catch-up).
    Sync {
        /// Operations written, spread over the nodes.
        #[arg(long, default_value_t = 100_000)]
        ops: usize,
        /// Operations a new node catches up on.
        #[arg(long, default_value_t = 50_000)]
        catchup: usize,
        /// Cluster sizes to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "3,10")]
        nodes: Vec<usize>,
    },
    /// A sequential editing trace (editing-traces format, `.json` or
    /// `.json.gz`) replayed through a replica of an engine document, next to
    /// the bare engine: time, log bytes and a fresh replica's catch-up bytes.
    Trace {
        /// The engine whose document holds the text.
        #[arg(long, value_enum)]
        engine: walrus_cli::trace_bench::Engine,
        /// Transactions of the trace grouped into one write.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// The replica's log sync policy.
        #[arg(long, value_enum, default_value = "none")]
        sync: walrus_cli::trace_bench::Sync,
        /// The trace file.
        trace: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum LogCommand {
    /// Append standard input, one record per line; print each LSN once durable.
    Append {
        /// Log directory (created if missing).
        dir: PathBuf,
        /// When a record counts as written: always (fdatasync per record),
        /// batch (group commit), none (handed to the OS).
        #[arg(long, default_value = "always", value_parser = ["always", "batch", "none"])]
        sync: String,
        /// Segment size in bytes for new segments.
        #[arg(long, default_value_t = 64 << 20)]
        segment_size: u64,
    },
    /// Print `<lsn>\t<payload>` for every record, in order. Payloads are
    /// printed raw (so one holding a newline spans lines) unless --hex is given.
    Dump {
        /// Log directory.
        dir: PathBuf,
        /// First LSN to print (default: the first one the log holds).
        #[arg(long)]
        from: Option<u64>,
        /// Print each payload as lowercase hex digits (two per byte; an empty
        /// payload prints nothing after the tab), one record per line whatever
        /// the payload holds.
        #[arg(long)]
        hex: bool,
    },
    /// Check every record without modifying anything; exit 0 when clean.
    Verify {
        /// Log directory.
        dir: PathBuf,
    },
    /// Delete whole segments whose records all precede LSN.
    TruncateBefore {
        /// Log directory.
        dir: PathBuf,
        /// Keep records from this LSN on.
        lsn: u64,
    },
    /// Repair a damaged log so it opens again: print the plan (what is kept,
    /// what is discarded and why), then carry it out. Refuses, changing
    /// nothing, if it would discard intact records no checkpoint covers,
    /// unless --force is given. When DIR is a replica's `wal` directory, the
    /// records its checkpoint covers count as redundant.
    Repair {
        /// Log directory.
        dir: PathBuf,
        /// Discard intact records that no checkpoint covers, too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum DocCommand {
    /// Set KEY to VALUE, creating the replica if the directory is missing or
    /// empty. Prints {"ok":"put","key":…,"actor":…,"seq":…} once durable.
    Put {
        /// Replica directory.
        dir: PathBuf,
        /// Key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// Value.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Delete KEY (fails if it has no value). Prints
    /// {"ok":"del","key":…,"removed":N,"actor":…,"seq":…} once durable.
    Del {
        /// Replica directory.
        dir: PathBuf,
        /// Key.
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Print KEY's value as JSON: a string, or an array of the concurrent
    /// values (sorted) written on different replicas before they synced.
    /// Fails if KEY is absent.
    Get {
        /// Replica directory.
        dir: PathBuf,
        /// Key.
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Print one JSON object: {"entries": {key: value or [values]},
    /// "clock": {actor: seq}, "actor": this replica's actor}.
    Dump {
        /// Replica directory.
        dir: PathBuf,
    },
    /// Set keys from standard input, one `KEY VALUE` line each (KEY ends at
    /// the first space, VALUE is the rest of the line); prints one JSON line
    /// per op, flushed, once it is durable.
    Import {
        /// Replica directory (created if missing or empty).
        dir: PathBuf,
    },
    /// Write a checkpoint and drop the log segments it covers.
    Checkpoint {
        /// Replica directory.
        dir: PathBuf,
    },
    /// Rebuild a replica that no intact checkpoint restores: start from an
    /// empty state and the log that is left, write this replica's own
    /// operations again under a new actor; peers refill the rest when a
    /// node serves the directory.
    Rebuild {
        /// Replica directory.
        dir: PathBuf,
    },
}

/// A peer id argument, with a hint of what one looks like when it is not.
fn parse_peer_id(arg: &str) -> Result<walrus::net::PeerId, String> {
    arg.parse().map_err(|e| format!("not a peer id (they look like 12D3KooW…): {e}"))
}

/// Sends the library's logs to standard error, filtered by `RUST_LOG` (for
/// example `walrus=debug`; warnings and errors only when it is unset).
/// Standard output stays the commands' own (JSON lines of `walrus node`).
fn init_logging() {
    let builder = EnvFilter::builder().with_default_directive(LevelFilter::WARN.into());
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => builder.parse_lossy(directives),
        // gossipsub warns of routine events (a message asked for after it
        // left its cache), which would read as trouble to a user.
        Err(_) => builder.parse_lossy("warn,libp2p_gossipsub=error"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Log(cmd) => log_cmd::run(cmd),
        Command::Doc(cmd) => doc_cmd::run(cmd),
        Command::Node { data, listen, peer, doc, mdns, sync_interval_ms, allow, psk_file, writer, snapshot_peer } => {
            node_cmd::run(node_cmd::NodeArgs {
                data,
                listen,
                peers: peer,
                doc,
                mdns,
                sync_interval_ms,
                allow,
                psk_file,
                writers: writer,
                snapshot_peers: snapshot_peer,
            })
        }
        Command::Demo { log } => demo::run(log),
        Command::Bench(BenchCommand::Trace { engine, batch, sync, trace }) => {
            let args = walrus_cli::trace_bench::TraceBenchArgs { engine, trace, batch, sync };
            walrus_cli::trace_bench::run_trace(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Sync { ops, catchup, nodes }) => {
            let args = sync_bench::SyncBenchArgs { ops, catchup, nodes, walrus: None };
            sync_bench::run_sync(args, None).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrus: error: {e}");
            ExitCode::FAILURE
        }
    }
}
