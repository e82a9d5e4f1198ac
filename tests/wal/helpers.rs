//! What several log test modules share.

use walrus::wal::{Lsn, SyncPolicy, Wal, WalOptions};

/// Options with the given sync policy, segment size and preallocation.
pub fn options(sync: SyncPolicy, segment_size: u64, preallocate: bool) -> WalOptions {
    let mut o = WalOptions::new(sync).segment_size(segment_size);
    o.preallocate = preallocate;
    o
}

/// Every record the log holds with its LSN (LSNs may jump over a gap a
/// repair left).
pub fn records(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
    wal.iter_from(wal.first_lsn()).unwrap().map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect()
}
