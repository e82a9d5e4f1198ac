//! The `record_decode` target: `decode_frame`, `check_header` and
//! `SegmentHeader::decode` on arbitrary bytes.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0..4 | salt (u32 LE) used to decode frames at the start of the body |
//! | 4..6 | `max_payload` selector (u16 LE): `0xFFFF` = `u32::MAX`, `0xFFFE` = `MAX_PAYLOAD_LEN`, `0xFFFD` = `MAX_PAYLOAD_LEN + 1`, anything else is the limit itself |
//! | 6.. | body |
//!
//! The body is decoded as a run of frames with that salt. It is also decoded
//! as a segment header; if that succeeds, the bytes after the header are
//! decoded as frames with the header's salt, as a segment reader would.

use walrus::wal::format::{
    check_header, decode_frame, encode_frame, Decoded, FrameError, HeaderError, SegmentHeader, FLAG_SYNCED_BEFORE,
    FRAME_HEADER_LEN, KIND_LAST, KIND_MORE, MAX_PAYLOAD_LEN, SEGMENT_HEADER_LEN,
};

use crate::Bytes;

/// Length of the configuration prefix of a `record_decode` input.
pub const CONFIG_LEN: usize = 6;

/// Salt and payload limit of a `record_decode` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub salt: u32,
    pub max_payload: u32,
}

impl Config {
    fn from_selector(salt: u32, sel: u16) -> Config {
        let max_payload = match sel {
            0xFFFF => u32::MAX,
            0xFFFE => MAX_PAYLOAD_LEN,
            0xFFFD => MAX_PAYLOAD_LEN + 1,
            n => u32::from(n),
        };
        Config { salt, max_payload }
    }

    /// The configuration prefix that parses back to `self` (`max_payload`
    /// must be one the selector can express).
    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let sel: u16 = match self.max_payload {
            u32::MAX => 0xFFFF,
            MAX_PAYLOAD_LEN => 0xFFFE,
            n if n == MAX_PAYLOAD_LEN + 1 => 0xFFFD,
            n => u16::try_from(n).ok().filter(|&s| s < 0xFFFD).expect("max_payload not expressible"),
        };
        let mut out = [0u8; CONFIG_LEN];
        out[..4].copy_from_slice(&self.salt.to_le_bytes());
        out[4..].copy_from_slice(&sel.to_le_bytes());
        out
    }
}

/// Splits an input into its configuration and body.
pub fn parse(data: &[u8]) -> (Config, &[u8]) {
    let mut b = Bytes::new(data);
    let salt = b.u32();
    let sel = b.u16();
    (Config::from_selector(salt, sel), b.rest())
}

/// Runs every check on one input. Panics on a violated invariant.
pub fn check(data: &[u8]) {
    let (cfg, body) = parse(data);
    check_frames(body, cfg.salt, cfg.max_payload);
    if let Some(header) = check_segment_header(body) {
        check_frames(&body[SEGMENT_HEADER_LEN..], header.salt, cfg.max_payload);
    }
    // Encoding any header with a non-zero first LSN decodes back to it.
    let first_lsn = u64::from(cfg.max_payload).max(1);
    let h = SegmentHeader { salt: cfg.salt, first_lsn };
    assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
}

/// `SegmentHeader::decode` on `body`; returns the header if it is valid.
fn check_segment_header(body: &[u8]) -> Option<SegmentHeader> {
    match SegmentHeader::decode(body) {
        Ok(h) => {
            assert!(body.len() >= SEGMENT_HEADER_LEN);
            assert_ne!(h.first_lsn, 0, "decoded header with first LSN 0");
            assert_eq!(&h.encode()[..], &body[..SEGMENT_HEADER_LEN], "header does not re-encode to its bytes");
            Some(h)
        }
        Err(HeaderError::Short) => {
            assert!(body.len() < SEGMENT_HEADER_LEN, "Short for a {}-byte buffer", body.len());
            None
        }
        Err(_) => {
            assert!(body.len() >= SEGMENT_HEADER_LEN);
            None
        }
    }
}

/// Decodes frames back to back from `buf` until one does not decode,
/// checking each outcome.
fn check_frames(mut buf: &[u8], salt: u32, max: u32) {
    let limit = max.min(MAX_PAYLOAD_LEN) as usize;
    loop {
        match decode_frame(buf, salt, max) {
            Decoded::Frame(f) => {
                let len = f.encoded_len();
                assert!(len <= buf.len(), "frame of {len} bytes decoded from {} bytes", buf.len());
                assert!(f.payload.len() <= max as usize, "payload of {} bytes over max {max}", f.payload.len());
                assert!(f.payload.len() <= limit);
                assert!(f.kind == KIND_LAST || f.kind == KIND_MORE, "decoded frame of kind {}", f.kind);
                assert_eq!(f.flags & !FLAG_SYNCED_BEFORE, 0, "decoded frame with unknown flags");
                assert_eq!(f.payload, &buf[FRAME_HEADER_LEN..len], "payload is not the bytes after the header");
                let mut out = Vec::with_capacity(len);
                encode_frame(&mut out, salt, f.lsn, f.kind, f.flags, f.payload);
                assert_eq!(&out[..], &buf[..len], "decoded frame does not re-encode to its bytes");
                assert_eq!(check_header(buf, max), Ok((f.lsn, f.payload.len() as u32)));
                // Exactly the frame's bytes decode to the same frame; any
                // shorter prefix that holds the header is Incomplete.
                assert_eq!(decode_frame(&buf[..len], salt, max), Decoded::Frame(f));
                if len > FRAME_HEADER_LEN {
                    for cut in [FRAME_HEADER_LEN, len - 1] {
                        assert_eq!(decode_frame(&buf[..cut], salt, max), Decoded::Incomplete { needed: len });
                    }
                    // A lower limit rejects it by length.
                    let n = f.payload.len() as u32;
                    assert_eq!(decode_frame(buf, salt, n - 1), Decoded::Invalid(FrameError::TooLong(n)));
                }
                buf = &buf[len..];
            }
            Decoded::Incomplete { needed } => {
                assert!(needed > buf.len(), "Incomplete needs {needed} but {} bytes were given", buf.len());
                assert!(needed >= FRAME_HEADER_LEN);
                assert!(needed <= FRAME_HEADER_LEN + max as usize, "Incomplete needs {needed} over max {max}");
                if buf.len() >= FRAME_HEADER_LEN {
                    let (_, n) = check_header(buf, max).expect("Incomplete frame with an invalid header");
                    assert_eq!(needed, FRAME_HEADER_LEN + n as usize);
                } else {
                    assert_eq!(needed, FRAME_HEADER_LEN);
                    assert!(buf.is_empty() || buf.iter().any(|&b| b != 0), "short zeros reported Incomplete");
                }
                return;
            }
            Decoded::Invalid(e) => {
                assert!(!buf.is_empty(), "empty input reported {e:?}");
                match e {
                    FrameError::Zeroed => {
                        let hdr = &buf[..buf.len().min(FRAME_HEADER_LEN)];
                        assert!(hdr.iter().all(|&b| b == 0), "non-zero header reported Zeroed");
                    }
                    FrameError::TooLong(n) => {
                        assert!(n as usize > limit, "length {n} rejected though the limit is {limit}");
                        assert_eq!(&n.to_le_bytes()[..], &buf[4..8]);
                        assert_eq!(check_header(buf, max), Err(e));
                    }
                    FrameError::BadHeader => assert_eq!(check_header(buf, max), Err(e)),
                    FrameError::BadChecksum => {
                        let (_, n) = check_header(buf, max).expect("BadChecksum with an invalid header");
                        assert!(FRAME_HEADER_LEN + n as usize <= buf.len());
                    }
                }
                return;
            }
        }
    }
}
