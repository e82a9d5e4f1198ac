//! Sync messages from a hostile peer (gossip, requests, answers) handled by
//! a replica: no panics, refused messages change nothing, answers fit their
//! limit. Input layout: see `walrus_fuzz::sync`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::sync::check(data);
});
