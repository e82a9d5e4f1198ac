//! Anti-entropy requests and answers from a hostile peer: answers fit their
//! limits and are applicable; pages and snapshots do exactly what they may.
//! Input layout: see `walrus_fuzz::sync_exchange`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::sync_exchange::check(data);
});
