//! `walrus doc …`: open a key-value replica directory offline and edit or
//! inspect it.
//!
//! Everything printed on standard output is JSON (one value per line), so
//! keys and values with spaces, quotes, newlines or any Unicode come out
//! unambiguous. Writes (`put`, `del`, `import`) print only after the
//! operation is durable. Errors go to standard error with a non-zero exit.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Map, Value};
use walrus::replica::{
    KvDoc, OpenError, Recovered, Replica, ReplicaOptions, ReplicaView, StorageError, ACTOR_FILE, WAL_DIR,
};
use walrus::wal;

use crate::{progress, DocCommand};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub(crate) use walrus_cli::SEGMENT_SIZE;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// The replica must already exist.
    Existing,
    /// Create it if the directory is missing or empty.
    CreateIfMissing,
}

fn looks_like_replica(dir: &Path) -> bool {
    dir.join(ACTOR_FILE).is_file() || dir.join(WAL_DIR).is_dir()
}

/// Opens the replica in `dir`, refusing to turn a missing path (for reads) or
/// an unrelated non-empty directory (always) into a replica.
fn open(dir: &Path, how: Open) -> Result<Replica<KvDoc>> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("{shown} is not a replica directory (it is not a directory)").into());
        }
        Ok(_) if looks_like_replica(dir) => {}
        Ok(_) => {
            let empty = std::fs::read_dir(dir).map_err(|e| format!("reading {shown}: {e}"))?.next().is_none();
            if how == Open::Existing || !empty {
                return Err(format!(
                    "{shown} is not a replica directory (no `{ACTOR_FILE}` file or `{WAL_DIR}/` inside)"
                )
                .into());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if how == Open::Existing {
                return Err(format!("{shown} is not a replica directory (it does not exist)").into());
            }
        }
        Err(e) => return Err(format!("{shown}: {e}").into()),
    }
    let r = Replica::open(dir, options()).map_err(|e| explain(dir, e))?;
    warn_recovered(r.recovered());
    Ok(r)
}

fn options() -> ReplicaOptions {
    let defaults = ReplicaOptions::default();
    ReplicaOptions { wal: defaults.wal.clone().segment_size(SEGMENT_SIZE), ..defaults }
}

/// What was repaired on open goes to standard error: the command's output
/// stays JSON, and the user learns that something needs a look.
fn warn_recovered(notes: &[Recovered]) {
    for note in notes {
        eprintln!("walrus: warning: {note}");
    }
}

/// Reads the replica in `dir` without writing to it or locking it: works on
/// a read-only directory and while another process has it open.
fn view(dir: &Path) -> Result<ReplicaView<KvDoc>> {
    view_dir_check(dir)?;
    let v = ReplicaView::open(dir, &options()).map_err(|e| explain(dir, e))?;
    warn_recovered(v.recovered());
    Ok(v)
}

/// `dir` must be an existing replica directory.
fn view_dir_check(dir: &Path) -> Result<()> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() && looks_like_replica(dir) => {}
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("{shown} is not a replica directory (it is not a directory)").into())
        }
        Ok(_) => {
            return Err(
                format!("{shown} is not a replica directory (no `{ACTOR_FILE}` file or `{WAL_DIR}/` inside)").into()
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{shown} is not a replica directory (it does not exist)").into())
        }
        Err(e) => return Err(format!("{shown}: {e}").into()),
    }
    Ok(())
}

fn explain(dir: &Path, e: OpenError) -> Box<dyn std::error::Error> {
    let shown = dir.display();
    match e.as_storage().and_then(StorageError::as_wal) {
        Some(wal::Error::Locked { .. }) => {
            format!("replica directory {shown} is in use by another process (its log is locked)").into()
        }
        Some(wal::Error::Corrupt { .. }) => {
            let log = dir.join(WAL_DIR);
            format!("{e} (inspect it with `walrus log verify {}`)", log.display()).into()
        }
        _ => e.into(),
    }
}

/// One value as a JSON string, several (concurrent writes) as an array.
pub(crate) fn json_values(values: &[String]) -> Value {
    match values {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    }
}

fn print_line(out: &mut impl Write, v: &Value) -> io::Result<()> {
    writeln!(out, "{v}")?;
    out.flush()
}

/// Prints the result of a read; a reader that went away is not an error.
fn print_read(v: &Value) -> Result<ExitCode> {
    match print_line(&mut io::stdout().lock(), v) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(format!("writing to standard output: {e}").into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Prints the acknowledgement of a durable write.
fn print_ack(out: &mut impl Write, v: &Value) -> Result<()> {
    print_line(out, v).map_err(|e| format!("operation {v} is durable, but reporting it failed: {e}").into())
}

fn not_found(key: &str) -> Result<ExitCode> {
    eprintln!("walrus: key {} not found", Value::String(key.to_string()));
    Ok(ExitCode::FAILURE)
}

pub fn run(cmd: DocCommand) -> Result<ExitCode> {
    match cmd {
        DocCommand::Put { dir, key, value } => {
            let mut r = open(&dir, Open::CreateIfMissing)?;
            let env = r.update(|d, actor| d.put_op(actor, &key, &value))?;
            let ack = json!({"ok": "put", "key": key, "actor": env.actor().to_string(), "seq": env.seq()});
            print_ack(&mut io::stdout().lock(), &ack)?;
            r.close()?;
        }
        DocCommand::Del { dir, key } => {
            let mut r = open(&dir, Open::Existing)?;
            let removed = r.doc().values_of(&key).len();
            if removed == 0 {
                return not_found(&key);
            }
            let env = r.update(|d, _| d.del_op(&key))?;
            let ack = json!({
                "ok": "del", "key": key, "removed": removed, "actor": env.actor().to_string(), "seq": env.seq()
            });
            print_ack(&mut io::stdout().lock(), &ack)?;
            r.close()?;
        }
        DocCommand::Get { dir, key } => {
            let r = view(&dir)?;
            let values = r.doc().values_of(&key);
            if values.is_empty() {
                return not_found(&key);
            }
            return print_read(&json_values(&values));
        }
        DocCommand::Dump { dir } => {
            let r = view(&dir)?;
            let entries: Map<String, Value> =
                r.doc().entries().iter().map(|(k, v)| (k.clone(), json_values(v))).collect();
            let clock: Map<String, Value> = r.clock().iter().map(|(a, s)| (a.to_string(), json!(s))).collect();
            return print_read(&json!({"entries": entries, "clock": clock, "actor": r.actor().map(|a| a.to_string())}));
        }
        DocCommand::Import { dir } => import(&dir)?,
        DocCommand::Rebuild { dir } => {
            view_dir_check(&dir)?;
            let r = Replica::<KvDoc>::rebuild(&dir, options()).map_err(|e| explain(&dir, e))?;
            warn_recovered(r.recovered());
            let ack = json!({"ok": "rebuild", "ops": r.clock().total(), "actor": r.actor().to_string()});
            print_ack(&mut io::stdout().lock(), &ack)?;
            r.close()?;
        }
        DocCommand::Checkpoint { dir } => {
            let mut r = open(&dir, Open::Existing)?;
            r.checkpoint()?;
            let ack = json!({"ok": "checkpoint", "ops": r.clock().total()});
            print_ack(&mut io::stdout().lock(), &ack)?;
            r.close()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEY VALUE` lines from standard input, one durable put each, each
/// acknowledged (and flushed) as soon as it is durable.
fn import(dir: &Path) -> Result<()> {
    let mut r = open(dir, Open::CreateIfMissing)?;
    let actor = r.actor().to_string();
    let mut out = io::stdout().lock();
    // On a terminal the acknowledgements already show the progress; the
    // count is for acknowledgements going to a file or a pipe.
    let bar =
        if io::stdout().is_terminal() { indicatif::ProgressBar::hidden() } else { progress::counter("keys imported") };
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("standard input, line {}: {e}", n + 1))?;
        let Some((key, value)) = line.split_once(' ') else {
            return Err(format!("standard input, line {}: expected `KEY VALUE`, got {:?}", n + 1, line).into());
        };
        let env = r.update(|d, a| d.put_op(a, key, value))?;
        print_ack(&mut out, &json!({"ok": "put", "key": key, "actor": actor, "seq": env.seq()}))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    r.close()?;
    Ok(())
}
