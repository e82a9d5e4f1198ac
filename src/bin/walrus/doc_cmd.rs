//! `walrus doc …`: open a key-value replica directory offline and edit or
//! inspect it.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Map, Value};
use walrus::replica::{KvDoc, KvDocExt, Replica, ReplicaOptions};

use crate::DocCommand;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn open(dir: &Path, create: bool) -> Result<Replica<KvDoc>> {
    if !create && !dir.is_dir() {
        return Err(format!("{} is not a replica directory", dir.display()).into());
    }
    Ok(Replica::open(dir, ReplicaOptions::default())?)
}

/// One value as a JSON string, several (a conflict) as an array.
fn json_values(values: &[String]) -> Value {
    match values {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    }
}

pub fn run(cmd: DocCommand) -> Result<ExitCode> {
    match cmd {
        DocCommand::Put { dir, key, value } => {
            let mut r = open(&dir, true)?;
            let env = r.update(|d, actor| d.put_op(actor, &key, &value))?;
            println!("{}", json!({"ok": "put", "key": key, "actor": env.actor.to_string(), "seq": env.seq}));
            r.close()?;
        }
        DocCommand::Del { dir, key } => {
            let mut r = open(&dir, false)?;
            let env = r.update(|d, _| d.del_op(&key))?;
            println!("{}", json!({"ok": "del", "key": key, "actor": env.actor.to_string(), "seq": env.seq}));
            r.close()?;
        }
        DocCommand::Get { dir, key } => {
            let r = open(&dir, false)?;
            let values = r.doc().values_of(&key);
            if values.is_empty() {
                eprintln!("walrus: key {key:?} not found");
                return Ok(ExitCode::FAILURE);
            }
            println!("{}", json_values(&values));
        }
        DocCommand::Dump { dir } => {
            let r = open(&dir, false)?;
            let entries: Map<String, Value> =
                r.doc().entries().iter().map(|(k, v)| (k.clone(), json_values(v))).collect();
            let clock: Map<String, Value> = r.clock().iter().map(|(a, s)| (a.to_string(), json!(s))).collect();
            println!("{}", json!({"entries": entries, "clock": clock, "actor": r.actor().to_string()}));
        }
        DocCommand::Import { dir } => {
            let mut r = open(&dir, true)?;
            let mut out = std::io::stdout().lock();
            for (n, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line?;
                let Some((key, value)) = line.split_once(' ') else {
                    return Err(format!("line {}: expected `KEY VALUE`", n + 1).into());
                };
                let env = r.update(|d, actor| d.put_op(actor, key, value))?;
                writeln!(out, "{}", json!({"ok": "put", "key": key, "seq": env.seq}))?;
                out.flush()?;
            }
            r.close()?;
        }
        DocCommand::Checkpoint { dir } => {
            let mut r = open(&dir, false)?;
            r.checkpoint()?;
            println!("{}", json!({"ok": "checkpoint", "ops": r.clock().total()}));
            r.close()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
