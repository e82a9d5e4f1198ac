//! Pages of runs: decoding arbitrary bytes never panics, allocates in
//! proportion to the input, and round-trips. Input layout: see
//! `walrus_fuzz::page`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: walrus_fuzz::alloc::Counting = walrus_fuzz::alloc::Counting;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::page::check(data);
});
