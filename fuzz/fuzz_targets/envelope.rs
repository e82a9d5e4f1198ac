//! Operation envelopes: decoding arbitrary or damaged bytes never panics,
//! round-trips, and a signature verifies exactly for what was signed; a
//! replica refuses bad signatures without a trace. Input layout: see
//! `walrus_fuzz::envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walrus_fuzz::envelope::check(data);
});
