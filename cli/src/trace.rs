//! Public editing traces (Joseph Gentle's editing-traces collection, CC BY
//! 4.0) replayed through walrus replicas of an engine document: the
//! sequential ones through one replica, the concurrent ones with one
//! replica per author, synced through `walrus::sync` exactly when a
//! transaction needs another author's edits. Shared by `walrus bench trace`
//! and the tests.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use walrus::replica::engines::{check_text_edits, TextDocument, TextEdit};
use walrus::replica::{OpEnvelope, Replica, ReplicaOptions};
use walrus::sync::{self, Limits};

/// What goes wrong replaying a trace.
pub type Error = Box<dyn std::error::Error>;

/// The text every trace edits.
pub const TEXT: &str = "text";
/// The document name replicas of a trace sign under.
pub const DOC: &str = "trace";
/// Largest trace file read, compressed or not (the public ones are under 1 MB
/// compressed and 40 MB as JSON).
const MAX_TRACE_BYTES: u64 = 256 << 20;

/// A trace: the text it ends with and its transactions in order. A
/// sequential trace's transactions each follow the one before.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The text every replica must end with.
    pub end: String,
    /// The authors (1 for a sequential trace).
    pub agents: usize,
    /// The transactions, each after its parents.
    pub txns: Vec<Txn>,
}

/// One transaction: an author's patches, made on the document as its
/// parents left it.
#[derive(Debug, Clone)]
pub struct Txn {
    /// Earlier transactions this one comes after (empty: the empty text).
    pub parents: Vec<usize>,
    /// Its author, `0..agents`.
    pub agent: usize,
    /// The edits, in order: each a deletion then an insertion.
    pub edits: Vec<TextEdit>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrace {
    #[serde(default)]
    start_content: String,
    end_content: String,
    #[serde(default)]
    num_agents: Option<usize>,
    txns: Vec<RawTxn>,
}

#[derive(Deserialize)]
struct RawTxn {
    #[serde(default)]
    parents: Option<Vec<usize>>,
    #[serde(default)]
    agent: Option<usize>,
    patches: Vec<(usize, usize, String)>,
}

impl Trace {
    /// Reads a trace file (`.json.gz` or `.json`) in the editing-traces
    /// format, sequential or concurrent.
    pub fn load(path: &Path) -> Result<Trace, Error> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut json = Vec::new();
        let gz = path.extension().is_some_and(|e| e == "gz");
        let read = if gz {
            flate2::read::GzDecoder::new(file).take(MAX_TRACE_BYTES).read_to_end(&mut json)
        } else {
            file.take(MAX_TRACE_BYTES).read_to_end(&mut json)
        };
        read.map_err(|e| format!("{}: {e}", path.display()))?;
        Trace::parse(&json).map_err(|e| format!("{}: {e}", path.display()).into())
    }

    /// Parses a trace from its JSON.
    pub fn parse(json: &[u8]) -> Result<Trace, Error> {
        let raw: RawTrace = serde_json::from_slice(json)?;
        if !raw.start_content.is_empty() {
            return Err("traces that start from a non-empty text are not supported".into());
        }
        let agents = raw.num_agents.unwrap_or(1).max(1);
        let mut txns = Vec::with_capacity(raw.txns.len());
        for (i, t) in raw.txns.into_iter().enumerate() {
            // A sequential trace: each transaction after the one before.
            let parents = t.parents.unwrap_or_else(|| if i == 0 { vec![] } else { vec![i - 1] });
            if parents.iter().any(|&p| p >= i) {
                return Err(format!("transaction {i} names a parent that is not before it").into());
            }
            let agent = t.agent.unwrap_or(0);
            if agent >= agents {
                return Err(format!("transaction {i}: agent {agent} of {agents}").into());
            }
            let mut edits = Vec::new();
            for (pos, del, ins) in t.patches {
                if del > 0 {
                    edits.push(TextEdit::Delete { pos, len: del });
                }
                if !ins.is_empty() {
                    edits.push(TextEdit::Insert { pos, text: ins });
                }
            }
            txns.push(Txn { parents, agent, edits });
        }
        Ok(Trace { end: raw.end_content, agents, txns })
    }
}

/// Per author: how many operations of each author its replica holds.
type Seen = Vec<Vec<u64>>;

/// Replays a concurrent trace with one replica per author (in `dir`):
/// before each transaction its author's replica is brought to exactly the
/// transaction's parents (the other authors' operations it lacks arrive as
/// gossip through `walrus::sync`), then the transaction is written there
/// as one operation. At the end the replicas sync fully through the sync
/// protocol. Returns each replica's text.
pub fn replay_concurrent<D: TextDocument>(
    trace: &Trace,
    dir: &Path,
    opts: &ReplicaOptions,
) -> Result<Vec<String>, Error> {
    let n = trace.agents;
    let mut replicas: Vec<Replica<D>> = Vec::with_capacity(n);
    for a in 0..n {
        replicas.push(Replica::open(dir.join(format!("agent-{a}")), opts.clone())?);
    }
    // Each author's operations, in order, as written.
    let mut written: Vec<Vec<OpEnvelope<D::Operation>>> = vec![Vec::new(); n];
    let mut seen: Seen = vec![vec![0; n]; n];
    // The transaction each of them is.
    let mut txn_of: Vec<Vec<usize>> = vec![Vec::new(); n];
    // The version after each transaction: operations of each author.
    let mut versions: Vec<Vec<u64>> = Vec::with_capacity(trace.txns.len());
    let limits = Limits::default();
    for (i, txn) in trace.txns.iter().enumerate() {
        let mut version = vec![0u64; n];
        for &p in &txn.parents {
            for (v, pv) in version.iter_mut().zip(&versions[p]) {
                *v = (*v).max(*pv);
            }
        }
        let a = txn.agent;
        if seen[a][a] != version[a] {
            return Err(format!("transaction {i}: agent {a} did not see all of its own earlier edits").into());
        }
        // The other authors' operations it lacks, in trace order (a
        // topological order: an operation comes after what it depends on).
        let mut missing: Vec<(usize, usize, usize)> = Vec::new();
        for b in (0..n).filter(|&b| b != a) {
            let (have, want) = (seen[a][b] as usize, version[b] as usize);
            if want < have {
                return Err(format!("transaction {i}: agent {a} would have to forget edits of agent {b}").into());
            }
            missing.extend((have..want).map(|k| (txn_of[b][k], b, k)));
            seen[a][b] = want as u64;
        }
        missing.sort_unstable();
        // Consecutive operations of one author travel together.
        for group in missing.chunk_by(|x, y| x.1 == y.1 && x.2 + 1 == y.2) {
            let (b, first, last) = (group[0].1, group[0].2, group[group.len() - 1].2);
            for message in sync::gossip_messages(DOC, &written[b][first..=last], limits.max_gossip) {
                let got = sync::apply_gossip(&mut replicas[a], DOC, &message, &limits)?;
                if got.applied + got.buffered == 0 {
                    return Err(format!("transaction {i}: agent {a} took none of agent {b}'s edits").into());
                }
            }
        }
        if !txn.edits.is_empty() {
            let r = &mut replicas[a];
            check_text_edits(r.doc().text(TEXT).chars().count(), &txn.edits)
                .map_err(|e| format!("transaction {i}: {e}"))?;
            let mut failed = None;
            let env = r.update(|d, actor| {
                d.edit_text(actor, TEXT, &txn.edits).unwrap_or_else(|e| {
                    failed = Some(e);
                    panic!("a checked edit failed")
                })
            });
            let env = env.map_err(|e| format!("transaction {i}: {}", failed.unwrap_or_else(|| e.to_string())))?;
            written[a].push(env);
            txn_of[a].push(i);
            seen[a][a] += 1;
            version[a] += 1;
        }
        versions.push(version);
    }
    sync_all(&mut replicas, &limits)?;
    Ok(replicas.iter().map(|r| r.doc().text(TEXT)).collect())
}

/// Syncs every replica with every other through the sync protocol until
/// none misses anything. Returns the bytes of the messages exchanged.
pub fn sync_all<D: TextDocument>(replicas: &mut [Replica<D>], limits: &Limits) -> Result<u64, Error> {
    let mut bytes = 0;
    for to in 0..replicas.len() {
        for from in (0..replicas.len()).filter(|&f| f != to) {
            bytes += catch_up(replicas, from, to, limits)?;
        }
    }
    // Everything reached the first replicas in the first pass only from
    // those before them: a second pass brings the rest.
    for to in 0..replicas.len() {
        for from in (0..replicas.len()).filter(|&f| f != to) {
            bytes += catch_up(replicas, from, to, limits)?;
        }
    }
    Ok(bytes)
}

/// Replica `to` pulls from `from` until it has everything; the bytes of
/// the requests and answers.
fn catch_up<D: TextDocument>(
    replicas: &mut [Replica<D>],
    from: usize,
    to: usize,
    limits: &Limits,
) -> Result<u64, Error> {
    let mut bytes = 0u64;
    loop {
        let request = sync::encode(&sync::request(&replicas[to], DOC, 1 << 20));
        let req = sync::decode(&request, limits.max_request, "request")?;
        let answer = sync::encode(&sync::respond(&replicas[from], DOC, &req, limits));
        bytes += (request.len() + answer.len()) as u64;
        let resp = sync::decode(&answer, limits.max_response, "response")?;
        let applied = sync::apply_response(&mut replicas[to], DOC, resp, limits)?;
        if !applied.more {
            return Ok(bytes);
        }
    }
}

/// Groups a sequential trace's transactions `batch` at a time, each group
/// one list of edits (one engine transaction, one walrus operation).
pub fn batches(trace: &Trace, batch: usize) -> Vec<Vec<TextEdit>> {
    trace.txns.chunks(batch.max(1)).map(|c| c.iter().flat_map(|t| t.edits.iter().cloned()).collect()).collect()
}
