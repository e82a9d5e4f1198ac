//! The write-ahead log on its own: durable appends from several threads,
//! an atomic batch, reopening, reading back and truncating.
//!
//! ```sh
//! cargo run --example wal_basics
//! ```

use std::sync::Arc;

use walrus::{SyncPolicy, Wal, WalOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // Small segments so truncation has something to delete.
    let options = WalOptions::new(SyncPolicy::batch()).segment_size(8 * 1024);

    let wal = Arc::new(Wal::open(dir.path(), options.clone())?);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || -> walrus::wal::Result<()> {
                for i in 0..250 {
                    // Returns once the record is durable; the four threads
                    // share fdatasync calls (group commit).
                    wal.append(format!("thread {t} event {i}").as_bytes())?;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| "writer thread panicked")??;
    }
    let batch = wal.append_batch(["debit alice 10", "credit bob 10"])?;
    println!("1000 concurrent appends, then a batch at LSNs {batch:?}");
    drop(wal);

    // Reopening recovers the log: every record, same LSNs.
    let wal = Wal::open(dir.path(), options)?;
    println!("reopened: LSNs {}..={}", wal.first_lsn(), wal.last_lsn());
    for record in wal.iter_from(batch.start)? {
        let record = record?;
        println!("  {} {}", record.lsn, String::from_utf8_lossy(&record.payload));
    }

    // Once a checkpoint covers everything before LSN 900, drop those segments.
    let removed = wal.truncate_before(900)?;
    println!("truncated {removed} segments; the log now starts at LSN {}", wal.first_lsn());
    let next = wal.append(b"life goes on")?;
    println!("next append got LSN {next}");
    wal.close()?;
    Ok(())
}
