//! Operation codecs: `Document::decode_op` of arbitrary bytes never
//! panics, allocates little, and round-trips (exactly, for `KvDoc`).
//! Input layout: see `walrus_fuzz::op_codec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: walrus_fuzz::alloc::Counting = walrus_fuzz::alloc::Counting;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::op_codec::check(data);
});
