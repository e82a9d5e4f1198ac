//! LEB128 unsigned varints: the integers of the
//! compact operation and page layouts (docs/REPLICA.md, "Integers").

/// Appends `n` as an unsigned LEB128 varint (7 bits per byte, low first,
/// high bit set on every byte but the last; at most 10 bytes).
pub(crate) fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Why bytes are not a valid varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// More than 64 bits, or a non-minimal encoding (a trailing zero byte):
    /// every number has exactly one encoding, so equal operations hash
    /// equally.
    Invalid,
}

impl std::fmt::Display for VarintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarintError::Truncated => f.write_str("truncated varint"),
            VarintError::Invalid => f.write_str("overlong or non-minimal varint"),
        }
    }
}

/// Reads an unsigned varint from the front of `bytes`, advancing it.
pub(crate) fn take(bytes: &mut &[u8]) -> Result<u64, VarintError> {
    let mut n = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = bytes.split_first() else {
            return Err(VarintError::Truncated);
        };
        *bytes = rest;
        let low = u64::from(b & 0x7f);
        // The tenth byte may only hold the 64th bit.
        if i == 9 && b > 1 {
            return Err(VarintError::Invalid);
        }
        n |= low << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(VarintError::Invalid);
            }
            return Ok(n);
        }
    }
    Err(VarintError::Invalid)
}

/// Reads a varint length and then that many bytes, refusing a length over
/// what is left before anything is allocated.
pub(crate) fn take_bytes<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], VarintError> {
    let len = take(bytes)?;
    let len = usize::try_from(len).map_err(|_| VarintError::Truncated)?;
    if len > bytes.len() {
        return Err(VarintError::Truncated);
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(head)
}

/// Appends a varint length and the bytes.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let enc = |n| {
            let mut v = Vec::new();
            put(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }

    #[test]
    fn refuses_non_minimal_overlong_and_truncated() {
        assert_eq!(take(&mut &[0x80, 0x00][..]), Err(VarintError::Invalid));
        assert_eq!(take(&mut &[0x80][..]), Err(VarintError::Truncated));
        assert_eq!(take(&mut &[][..]), Err(VarintError::Truncated));
        assert_eq!(take(&mut &[0xff; 10][..]), Err(VarintError::Invalid));
        assert_eq!(
            take(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]),
            Err(VarintError::Invalid)
        );
        assert_eq!(take_bytes(&mut &[0x05, 1, 2][..]), Err(VarintError::Truncated));
    }

    proptest! {
        #[test]
        fn round_trip(n in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut v = Vec::new();
            put(&mut v, n);
            put_bytes(&mut v, &tail);
            let mut r = &v[..];
            prop_assert_eq!(take(&mut r), Ok(n));
            prop_assert_eq!(take_bytes(&mut r), Ok(&tail[..]));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut r = &b[..];
            let _ = take(&mut r);
            let _ = take_bytes(&mut r);
        }
    }
}
