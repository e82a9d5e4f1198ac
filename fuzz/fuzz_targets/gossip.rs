//! Gossip messages from a hostile peer: no panics; refused messages and
//! badly signed operations change nothing; mixed messages do what their
//! valid operations alone do. Input layout: see `walrus_fuzz::gossip`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::gossip::check(data);
});
