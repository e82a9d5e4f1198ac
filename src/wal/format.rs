//! Byte layout of segment headers and record frames (see `docs/FORMAT.md`).
//!
//! Everything here is pure: encoding into a `Vec`, decoding from a slice.
//! Decoders never panic and never allocate on behalf of the input.

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALRUSLG";
/// Segment format version written by this crate.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a record frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 20;
/// Largest payload the format can describe. Options may set a lower limit.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;
/// Largest LSN a log may use (2^62). A segment header claiming more is
/// malformed, and appends beyond it fail, so LSN arithmetic never overflows.
pub const MAX_LSN: u64 = 1 << 62;

/// Frame kind: the record completes a commit unit (a single append, or the
/// last record of a batch).
pub const KIND_LAST: u8 = 1;
/// Frame kind: the record belongs to a batch and more records of the same
/// batch follow. A batch whose final `KIND_LAST` frame is missing was never
/// committed.
pub const KIND_MORE: u8 = 2;

/// Flag: every byte of this segment before this frame had been made durable
/// (fdatasync) before this frame was written. Recovery uses it to tell a torn
/// tail (possible only in never-synced bytes) from damage to durable records.
pub const FLAG_SYNCED_BEFORE: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_SYNCED_BEFORE;

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Random per-segment value mixed into every record checksum, so bytes
    /// left over from another segment never validate in this one.
    pub salt: u32,
    /// LSN of the first record this segment holds (or would hold).
    pub first_lsn: u64,
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short,
    /// Magic bytes do not match.
    BadMagic,
    /// Checksum mismatch.
    BadChecksum,
    /// A format version this build cannot read.
    UnsupportedVersion(u16),
    /// Reserved bytes are not zero or first LSN is 0.
    Malformed,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => write!(f, "segment header is truncated"),
            HeaderError::BadMagic => write!(f, "not a walrus segment (bad magic)"),
            HeaderError::BadChecksum => write!(f, "segment header checksum mismatch"),
            HeaderError::UnsupportedVersion(v) => write!(f, "unsupported segment format version {v}"),
            HeaderError::Malformed => write!(f, "malformed segment header"),
        }
    }
}

impl SegmentHeader {
    /// Encodes the header into its fixed 32-byte form.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 10..12 reserved
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        // 24..28 reserved
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let b = buf.get(..SEGMENT_HEADER_LEN).ok_or(HeaderError::Short)?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32fast::hash(&b[0..28]) != le_u32(&b[28..32]) {
            return Err(HeaderError::BadChecksum);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let first_lsn = le_u64(&b[16..24]);
        if b[10..12] != [0, 0] || b[24..28] != [0; 4] || first_lsn == 0 || first_lsn > MAX_LSN {
            return Err(HeaderError::Malformed);
        }
        Ok(SegmentHeader { salt: le_u32(&b[12..16]), first_lsn })
    }
}

/// A record frame decoded from a byte slice; `payload` borrows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Log sequence number of the record.
    pub lsn: u64,
    /// [`KIND_LAST`] or [`KIND_MORE`].
    pub kind: u8,
    /// Flag bits ([`FLAG_SYNCED_BEFORE`]).
    pub flags: u8,
    /// The record's bytes.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame occupies on disk (header + payload).
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }
}

/// Outcome of trying to decode one frame at the start of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete, valid frame.
    Frame(Frame<'a>),
    /// The slice ends inside the frame; `needed` is the total frame length
    /// (header + payload) if the header could be read, else the header length.
    Incomplete {
        /// Bytes needed to decide.
        needed: usize,
    },
    /// Not a valid frame.
    Invalid(FrameError),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// All header bytes are zero: unwritten (preallocated) space.
    Zeroed,
    /// Unknown kind, unknown flags or non-zero reserved bytes.
    BadHeader,
    /// Payload length exceeds the configured limit.
    TooLong(u32),
    /// Checksum mismatch (torn write, stale bytes or corruption).
    BadChecksum,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Zeroed => write!(f, "zeroed (unwritten) frame header"),
            FrameError::BadHeader => write!(f, "invalid frame header"),
            FrameError::TooLong(n) => write!(f, "record length {n} exceeds the limit"),
            FrameError::BadChecksum => write!(f, "record checksum mismatch"),
        }
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn frame_crc(salt: u32, header_tail: &[u8], payload: &[u8]) -> u32 {
    // salt ‖ header[4..20] hashed as one 20-byte block, then the payload.
    let mut head = [0u8; FRAME_HEADER_LEN];
    head[..4].copy_from_slice(&salt.to_le_bytes());
    head[4..].copy_from_slice(&header_tail[..FRAME_HEADER_LEN - 4]);
    let mut h = crc32fast::Hasher::new();
    h.update(&head);
    h.update(payload);
    h.finalize()
}

/// Appends one encoded frame to `out`.
///
/// The caller guarantees `payload.len() <= MAX_PAYLOAD_LEN`.
pub fn encode_frame(out: &mut Vec<u8>, salt: u32, lsn: u64, kind: u8, flags: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN as usize);
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    hdr[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    hdr[8..16].copy_from_slice(&lsn.to_le_bytes());
    hdr[16] = kind;
    hdr[17] = flags;
    let crc = frame_crc(salt, &hdr[4..], payload);
    hdr[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
}

/// Checks the header fields that need no payload: cheap, used to skip
/// quickly over bytes that cannot start a frame.
pub fn check_header(hdr: &[u8], max_payload: u32) -> Result<(u64, u32), FrameError> {
    if hdr.len() < FRAME_HEADER_LEN {
        return Err(FrameError::BadHeader);
    }
    if hdr[..FRAME_HEADER_LEN].iter().all(|&b| b == 0) {
        return Err(FrameError::Zeroed);
    }
    let kind = hdr[16];
    let flags = hdr[17];
    if (kind != KIND_LAST && kind != KIND_MORE) || flags & !KNOWN_FLAGS != 0 || hdr[18..20] != [0, 0] {
        return Err(FrameError::BadHeader);
    }
    let len = le_u32(&hdr[4..8]);
    if len > max_payload.min(MAX_PAYLOAD_LEN) {
        return Err(FrameError::TooLong(len));
    }
    Ok((le_u64(&hdr[8..16]), len))
}

/// Decodes the frame at the start of `buf`, validating it against `salt`.
///
/// `max_payload` bounds the length field, so a corrupt length never makes
/// a caller read or allocate more than that.
pub fn decode_frame(buf: &[u8], salt: u32, max_payload: u32) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        // A short run of zeros is unwritten space, not a torn frame.
        if !buf.is_empty() && buf.iter().all(|&b| b == 0) {
            return Decoded::Invalid(FrameError::Zeroed);
        }
        return Decoded::Incomplete { needed: FRAME_HEADER_LEN };
    }
    let (lsn, len) = match check_header(buf, max_payload) {
        Ok(v) => v,
        Err(e) => return Decoded::Invalid(e),
    };
    let total = FRAME_HEADER_LEN + len as usize;
    let Some(payload) = buf.get(FRAME_HEADER_LEN..total) else {
        return Decoded::Incomplete { needed: total };
    };
    if frame_crc(salt, &buf[4..FRAME_HEADER_LEN], payload) != le_u32(&buf[0..4]) {
        return Decoded::Invalid(FrameError::BadChecksum);
    }
    Decoded::Frame(Frame { lsn, kind: buf[16], flags: buf[17], payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let h = SegmentHeader { salt: 0xdead_beef, first_lsn: 42 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(SegmentHeader::decode(&b[..31]), Err(HeaderError::Short));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadChecksum));
        let zero = SegmentHeader { salt: 1, first_lsn: 0 }.encode();
        assert_eq!(SegmentHeader::decode(&zero), Err(HeaderError::Malformed));
        let huge = SegmentHeader { salt: 1, first_lsn: MAX_LSN + 1 }.encode();
        assert_eq!(SegmentHeader::decode(&huge), Err(HeaderError::Malformed));
    }

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 1, KIND_LAST, FLAG_SYNCED_BEFORE, b"hello");
        encode_frame(&mut buf, 7, 2, KIND_MORE, 0, b"");
        let Decoded::Frame(f) = decode_frame(&buf, 7, 1024) else { panic!("first frame") };
        assert_eq!((f.lsn, f.kind, f.flags, f.payload), (1, KIND_LAST, FLAG_SYNCED_BEFORE, &b"hello"[..]));
        let rest = &buf[f.encoded_len()..];
        let Decoded::Frame(g) = decode_frame(rest, 7, 1024) else { panic!("second frame") };
        assert_eq!((g.lsn, g.kind, g.payload.len()), (2, KIND_MORE, 0));
    }

    #[test]
    fn salt_distinguishes_segments() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 1, KIND_LAST, 0, b"payload");
        assert_eq!(decode_frame(&buf, 2, 1024), Decoded::Invalid(FrameError::BadChecksum));
    }

    #[test]
    fn zeros_truncation_and_limits() {
        assert_eq!(decode_frame(&[0; 64], 1, 1024), Decoded::Invalid(FrameError::Zeroed));
        assert_eq!(decode_frame(&[0; 3], 1, 1024), Decoded::Invalid(FrameError::Zeroed));
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 9, KIND_LAST, 0, &[5u8; 100]);
        assert_eq!(decode_frame(&buf[..50], 1, 1024), Decoded::Incomplete { needed: 120 });
        assert_eq!(decode_frame(&buf[..5], 1, 1024), Decoded::Incomplete { needed: 20 });
        assert_eq!(decode_frame(&buf, 1, 99), Decoded::Invalid(FrameError::TooLong(100)));
        let mut bad = buf.clone();
        bad[16] = 9;
        assert_eq!(decode_frame(&bad, 1, 1024), Decoded::Invalid(FrameError::BadHeader));
    }

    proptest! {
        #[test]
        fn prop_round_trip(salt: u32, lsn in 1u64.., more: bool, payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let kind = if more { KIND_MORE } else { KIND_LAST };
            let mut buf = Vec::new();
            encode_frame(&mut buf, salt, lsn, kind, 0, &payload);
            prop_assert_eq!(buf.len(), FRAME_HEADER_LEN + payload.len());
            match decode_frame(&buf, salt, 1 << 20) {
                Decoded::Frame(f) => {
                    prop_assert_eq!(f.lsn, lsn);
                    prop_assert_eq!(f.kind, kind);
                    prop_assert_eq!(f.payload, &payload[..]);
                }
                other => prop_assert!(false, "decode failed: {:?}", other),
            }
        }

        #[test]
        fn prop_any_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..200), bit in 0usize..1760) {
            let mut buf = Vec::new();
            encode_frame(&mut buf, 3, 5, KIND_LAST, 0, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            // A single flipped bit must never decode as the same-length valid frame.
            let ok = matches!(decode_frame(&buf, 3, 1 << 20), Decoded::Frame(_));
            prop_assert!(!ok);
        }

        #[test]
        fn prop_decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), salt: u32, max in 0u32..512) {
            match decode_frame(&bytes, salt, max) {
                Decoded::Frame(f) => prop_assert!(f.encoded_len() <= bytes.len() && f.payload.len() <= max as usize),
                Decoded::Incomplete { needed } => prop_assert!(needed > bytes.len() && needed <= FRAME_HEADER_LEN + max as usize),
                Decoded::Invalid(_) => {}
            }
            let _ = SegmentHeader::decode(&bytes);
        }
    }
}
