//! `walrus log …`: append from stdin, dump, verify, truncate, repair.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use walrus::wal::{plan_repair, repair as repair_log, DiscardKind, LogReader, Lsn, SyncPolicy, Wal, WalOptions};

use crate::{progress, LogCommand};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub fn run(cmd: LogCommand) -> Result<ExitCode> {
    match cmd {
        LogCommand::Append { dir, sync, segment_size } => {
            let policy: SyncPolicy = sync.parse()?;
            append(&dir, WalOptions::new(policy).segment_size(segment_size))
        }
        LogCommand::Dump { dir, from, hex } => dump(&dir, from, hex),
        LogCommand::Verify { dir } => {
            let bar = progress::spinner(format!("verifying {}", dir.display()));
            let reader = LogReader::open(&dir, &WalOptions::default());
            bar.finish_and_clear();
            let reader = reader?;
            println!("{}", reader.summary());
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::TruncateBefore { dir, lsn } => {
            require_log_dir(&dir)?;
            let wal = Wal::open(&dir, WalOptions::default())?;
            let removed = wal.truncate_before(lsn)?;
            println!("removed {removed} segments; the log now starts at LSN {}", wal.first_lsn());
            wal.close()?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Repair { dir, force } => repair(&dir, force),
    }
}

/// The replica directory whose log `dir` is, if it is one (it holds the
/// replica's actor key beside it).
fn replica_of(dir: &Path) -> Option<std::path::PathBuf> {
    // Canonical, so that `wal`, `.` or `x/..` still have the right parent.
    let dir = std::fs::canonicalize(dir).ok()?;
    dir.parent().filter(|p| p.join(walrus::replica::ACTOR_FILE).is_file()).map(Path::to_path_buf)
}

/// The LSN up to which a replica's checkpoint makes the records of its log
/// in `dir` redundant (0 when `dir` is not a replica's log: no checkpoint
/// generation beside it). Either generation counts, as on open.
fn covered_by_checkpoint(dir: &Path) -> Lsn {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Some(replica) = dir.parent() else { return 0 };
    match walrus::replica::checkpointed_lsn(replica) {
        Ok(Some(lsn)) => {
            println!("checkpoint of {} covers records up to LSN {lsn}", replica.display());
            lsn
        }
        Ok(None) => 0,
        Err(e) => {
            eprintln!(
                "walrus: warning: cannot read the checkpoint of {}: {e}; treating no record as covered",
                replica.display()
            );
            0
        }
    }
}

fn repair(dir: &Path, force: bool) -> Result<ExitCode> {
    require_log_dir(dir)?;
    let covered = covered_by_checkpoint(dir);
    // Read-only first, so the plan is shown even when it is refused; the
    // repair re-plans under the directory lock and refuses the same way.
    let bar = progress::spinner(format!("reading {}", dir.display()));
    let plan = plan_repair(dir, covered);
    bar.finish_and_clear();
    let plan = plan?;
    if plan.is_noop() {
        // Still open the log: it takes the lock and discards a torn tail.
        let bar = progress::spinner(format!("opening {}", dir.display()));
        let opened = repair_log(dir, WalOptions::default(), covered, false);
        bar.finish_and_clear();
        opened?;
        match &plan.kept {
            Some(r) => println!("nothing to repair: records {}..={}", r.start(), r.end()),
            None => println!("nothing to repair: no records"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("repair plan for {}:\n{plan}", dir.display());
    if plan.loses_records() && !force {
        return Err(format!(
            "refusing to repair {}: it would discard intact records that no checkpoint covers: {}; nothing was changed (rerun with --force to discard them)",
            dir.display(),
            plan.describe_lost()
        )
        .into());
    }
    // Inside a replica, discarded operations may be its own that peers
    // hold: it must not sign their numbers again. Asked for before the
    // repair, so a crash in between cannot forget it.
    let uncovered = plan.discarded.iter().any(|d| matches!(d.kind, DiscardKind::Intact | DiscardKind::Damaged { .. }));
    let replica = replica_of(dir).filter(|_| uncovered);
    if let Some(replica) = &replica {
        walrus::replica::request_retirement(replica).map_err(|e| {
            format!("marking {} to retire its actor failed: {e}; nothing was changed", replica.display())
        })?;
    }
    let bar = progress::spinner(format!("repairing {}", dir.display()));
    let done = repair_log(dir, WalOptions::default(), covered, force);
    bar.finish_and_clear();
    let done = done?;
    match &done.kept {
        Some(r) => println!("repaired: records {}..={} kept; next LSN {}", r.start(), r.end(), done.next_lsn),
        None => println!("repaired: no records kept; next LSN {}", done.next_lsn),
    }
    if let Some(replica) = &replica {
        println!("the replica in {} will write under a new actor from its next open", replica.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn require_log_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    Ok(())
}

/// Reads one line without its trailing newline; `None` at end of input.
fn read_record(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    if input.read_until(b'\n', line)? == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(true)
}

fn print_lsns(out: &mut impl Write, lsns: &[Lsn]) -> io::Result<()> {
    for lsn in lsns {
        writeln!(out, "{lsn}")?;
    }
    out.flush()
}

fn append(dir: &Path, opts: WalOptions) -> Result<ExitCode> {
    let policy = opts.sync;
    let wal = Arc::new(Wal::open(dir, opts)?);
    // Our own buffer (larger than stdin's) so `buffer()` tells whether more
    // input is already at hand.
    let mut input = BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut line = Vec::new();
    match policy {
        SyncPolicy::Always => {
            let mut out = io::stdout().lock();
            while read_record(&mut input, &mut line)? {
                let lsn = wal.append(&line)?;
                print_lsns(&mut out, &[lsn])?;
            }
        }
        SyncPolicy::None => {
            // Hand records to the OS whenever the input has nothing more
            // buffered, then acknowledge them all.
            let mut out = io::stdout().lock();
            let mut pending = Vec::new();
            let mut stopped = None;
            while read_record(&mut input, &mut line)? {
                match wal.append_nowait(&line) {
                    Ok(lsn) => pending.push(lsn),
                    Err(e) => {
                        // Acknowledge what was accepted before the bad record.
                        stopped = Some(e);
                        break;
                    }
                }
                if input.buffer().is_empty() || pending.len() >= 4096 {
                    wal.flush()?;
                    print_lsns(&mut out, &pending)?;
                    pending.clear();
                }
            }
            wal.flush()?;
            print_lsns(&mut out, &pending)?;
            if let Some(e) = stopped {
                return Err(e.into());
            }
        }
        SyncPolicy::Batch { .. } => {
            // The reader keeps appending while the printer thread leads one
            // shared fdatasync for everything appended so far.
            let (tx, rx) = mpsc::sync_channel::<Lsn>(1 << 16);
            let printer_wal = wal.clone();
            let printer = std::thread::spawn(move || -> walrus::wal::Result<io::Result<()>> {
                let mut out = io::stdout().lock();
                let mut batch = Vec::new();
                while let Ok(lsn) = rx.recv() {
                    batch.push(lsn);
                    batch.extend(rx.try_iter());
                    let last = batch[batch.len() - 1];
                    printer_wal.wait_durable(last)?;
                    if let Err(e) = print_lsns(&mut out, &batch) {
                        return Ok(Err(e));
                    }
                    batch.clear();
                }
                Ok(Ok(()))
            });
            let mut produce = || -> Result<()> {
                while read_record(&mut input, &mut line)? {
                    let lsn = wal.append_nowait(&line)?;
                    if tx.send(lsn).is_err() {
                        break; // the printer failed; its error is reported below
                    }
                }
                Ok(())
            };
            let produced = produce();
            drop(tx);
            match printer.join() {
                Ok(r) => r??,
                Err(_) => return Err("printer thread panicked".into()),
            }
            produced?;
        }
    }
    match Arc::try_unwrap(wal) {
        Ok(wal) => wal.close()?,
        Err(wal) => {
            wal.sync()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dump(dir: &Path, from: Option<Lsn>, hex: bool) -> Result<ExitCode> {
    let reader = LogReader::open(dir, &WalOptions::default())?;
    let from = from.unwrap_or_else(|| reader.summary().first_lsn);
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let write = |out: &mut BufWriter<_>, lsn: Lsn, payload: &[u8]| -> io::Result<()> {
        write!(out, "{lsn}\t")?;
        if hex {
            for b in payload {
                write!(out, "{b:02x}")?;
            }
        } else {
            out.write_all(payload)?;
        }
        out.write_all(b"\n")
    };
    for record in reader.iter_from(from)? {
        let record = record?;
        if let Err(e) = write(&mut out, record.lsn, &record.payload) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
