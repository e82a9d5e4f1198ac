//! The `page` target: arbitrary bytes as a framed page of runs
//! (docs/PROTOCOL.md, "Pages"), decoded as a receiver of a [`KvDoc`] does
//! (`internals::decode_page`: unframe, decode the runs, decode and chain
//! each operation).
//!
//! Input layout: all of it is the page.
//!
//! Checks:
//! - decoding never panics;
//! - allocation is bounded by what the input holds, not by what it
//!   declares: the largest single allocation while decoding is at most
//!   [`ALLOC_FLOOR`] plus [`ALLOC_PER_BYTE`] per input byte (zstd expands
//!   at most about that much), although the frame limit is
//!   `Limits::default().max_response` (64 MiB). Measured only in the fuzz
//!   binary, which installs [`crate::alloc::Counting`];
//! - a frame's body re-frames (`internals::frame_page`) to a frame that
//!   unframes to the same body;
//! - a page that decodes re-encodes (`internals::page_of`) to a page that
//!   decodes to exactly the same operations (runs, chain hashes, head
//!   signatures, certificates), and that re-encoding is a fixed point.

use walrus::internals;
use walrus::replica::KvDoc;
use walrus::sync::Limits;

use crate::harness::DOC;

/// Allocation any decode may make, whatever its input.
pub const ALLOC_FLOOR: usize = 1 << 20;
/// Allocation allowed per input byte.
pub const ALLOC_PER_BYTE: usize = 40_000;

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let limits = Limits::default();
    let (decoded, largest) =
        crate::alloc::largest_during(|| internals::decode_page::<KvDoc>(data, limits.max_response, limits.max_op, DOC));
    if let Some(largest) = largest {
        let bound = ALLOC_FLOOR.saturating_add(ALLOC_PER_BYTE.saturating_mul(data.len()));
        assert!(
            largest <= bound,
            "decoding a page of {} bytes allocated {largest} bytes at once (bound {bound})",
            data.len()
        );
    }
    if let Ok(body) = internals::unframe_page(data, limits.max_response) {
        let again = internals::unframe_page(&internals::frame_page(&body), limits.max_response);
        assert_eq!(again.as_ref(), Ok(&body), "a body does not survive framing");
    }
    let Ok(envs) = decoded else { return };
    let page = internals::page_of(&envs);
    let back = internals::decode_page::<KvDoc>(&page, limits.max_response, limits.max_op, DOC)
        .expect("a re-encoded page decodes");
    assert_eq!(back, envs, "a re-encoded page decodes to other operations");
    assert_eq!(internals::page_of(&back), page, "re-encoding a page is not a fixed point");
}
