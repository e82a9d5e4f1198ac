//! Chained runs with stripped signatures and a flipped bit: a replica
//! applies a valid chain in full and never anything its author did not
//! write. Input layout: see `walrus_fuzz::chain`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::chain::check(data);
});
