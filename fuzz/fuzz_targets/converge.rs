//! Replicas receiving signed operations by any schedule (reordered,
//! duplicated, dropped, damaged, paged, checkpointed, restarted) converge.
//! Input layout: see `walrus_fuzz::converge`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::converge::check(data);
});
