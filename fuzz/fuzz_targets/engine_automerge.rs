//! The automerge adapter on hostile operation bytes: no panics, exact
//! round trips, idempotent apply. Input layout: see
//! `walrus_fuzz::engine_automerge`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::engine_automerge::check(data);
});
