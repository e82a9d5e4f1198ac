//! Frame and segment-header decoding on arbitrary bytes: no panics, the
//! documented bounds of `Decoded`, and exact re-encoding of decoded frames.
//! Input layout: see `walrus_fuzz::record_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::record_decode::check(data);
});
