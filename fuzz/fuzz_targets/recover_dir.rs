//! Recovery of a damaged log directory: `LogReader::open` and `Wal::open`
//! never panic, agree with each other, and recovery is idempotent.
//! Input layout: see `walrus_fuzz::recover_dir`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::recover_dir::check(data);
});
