//! The `op_codec` target: arbitrary bytes as one operation's encoding,
//! decoded with `Document::decode_op` for each ready-made document: the
//! compact layout of [`KvDoc`] and the CBOR default of [`SetDoc`],
//! [`CounterDoc`] and [`RegisterDoc`].
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | document, modulo 4: `KvDoc`, `SetDoc`, `CounterDoc`, `RegisterDoc` |
//! | 1 | the context's author: actor `b % 4` of the harness's keys |
//! | 2 | the context's sequence number ([`seq_of`]) |
//! | 3.. | the operation's bytes |
//!
//! Checks:
//! - decoding never panics and allocates at most [`ALLOC_FLOOR`] plus
//!   [`ALLOC_PER_BYTE`] per input byte at once (measured in the fuzz
//!   binary only);
//! - an operation that decodes encodes (`Document::encode_op`, same
//!   context) to bytes that decode to the same operation and encode to
//!   themselves;
//! - `KvDoc` has one encoding per operation: those bytes are exactly the
//!   input.

use walrus::replica::{CounterDoc, Document, KvDoc, OpContext, RegisterDoc, SetDoc};

use crate::harness::{actor, seq_of};
use crate::Bytes;

/// Allocation any decode may make, whatever its input.
pub const ALLOC_FLOOR: usize = 64 << 10;
/// Allocation allowed per input byte.
pub const ALLOC_PER_BYTE: usize = 64;

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let mut input = Bytes::new(data);
    let which = input.u8() % 4;
    let author = actor(input.u8());
    let seq = seq_of(input.u8()).max(1);
    let bytes = input.rest();
    let cx = OpContext { author: &author, seq };
    match which {
        0 => round_trip::<KvDoc>(bytes, &cx, true),
        1 => round_trip::<SetDoc>(bytes, &cx, false),
        2 => round_trip::<CounterDoc>(bytes, &cx, false),
        _ => round_trip::<RegisterDoc>(bytes, &cx, false),
    }
}

fn round_trip<D: Document>(bytes: &[u8], cx: &OpContext<'_>, exact: bool)
where
    D::Operation: std::fmt::Debug,
{
    let (decoded, largest) = crate::alloc::largest_during(|| D::decode_op(bytes, cx));
    if let Some(largest) = largest {
        let bound = ALLOC_FLOOR + ALLOC_PER_BYTE * bytes.len();
        assert!(largest <= bound, "decoding {} bytes allocated {largest} bytes at once", bytes.len());
    }
    let Ok(op) = decoded else { return };
    let mut out = Vec::new();
    D::encode_op(&op, cx, &mut out).expect("a decoded operation encodes");
    let again = D::decode_op(&out, cx).expect("an encoded operation decodes");
    assert_eq!(format!("{again:?}"), format!("{op:?}"), "an operation does not survive encoding");
    let mut twice = Vec::new();
    D::encode_op(&again, cx, &mut twice).expect("a decoded operation encodes");
    assert_eq!(twice, out, "encoding an operation is not a fixed point");
    if exact {
        assert_eq!(out, bytes, "an operation decoded from other bytes than its encoding");
    }
}
