//! The operation envelope: one CRDT operation with its author and place in
//! the author's sequence; CBOR-encoded as one log record.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ActorId;

/// An operation as stored in the log and sent to peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEnvelope<O> {
    /// Author.
    pub actor: ActorId,
    /// Position in the author's sequence: 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// The CRDT operation.
    pub op: O,
    /// Authentication tag (signature); not yet checked by this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Vec<u8>>,
}

/// Why bytes are not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than the limit; not decoded at all.
    #[error("operation of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// Not the CBOR of an envelope of this document type.
    #[error("malformed operation: {0}")]
    Malformed(String),
    /// The operation could not be serialized.
    #[error("cannot encode operation: {0}")]
    Encode(String),
    /// Sequence numbers start at 1.
    #[error("operation has sequence number 0")]
    ZeroSeq,
}

impl<O: Serialize> OpEnvelope<O> {
    /// CBOR encoding (the log record and wire form). Fails only if the
    /// operation type's `Serialize` implementation does.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        Ok(out)
    }
}

impl<O: DeserializeOwned> OpEnvelope<O> {
    /// Decodes untrusted bytes, refusing anything over `limit` bytes first.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<OpEnvelope<O>, EnvelopeError> {
        if bytes.len() > limit {
            return Err(EnvelopeError::TooLarge { len: bytes.len(), limit });
        }
        let env: OpEnvelope<O> = ciborium::de::from_reader_with_recursion_limit(bytes, 64)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.seq == 0 {
            return Err(EnvelopeError::ZeroSeq);
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_limits() {
        let env = OpEnvelope { actor: ActorId([3; 16]), seq: 9, op: ("key".to_string(), 42u32), auth: None };
        let bytes = env.encode().unwrap();
        assert_eq!(OpEnvelope::<(String, u32)>::decode(&bytes, 1024).unwrap(), env);
        assert!(matches!(OpEnvelope::<(String, u32)>::decode(&bytes, 4), Err(EnvelopeError::TooLarge { .. })));
        assert!(matches!(OpEnvelope::<u64>::decode(&bytes, 1024), Err(EnvelopeError::Malformed(_))));
        let zero = OpEnvelope { seq: 0, ..env }.encode().unwrap();
        assert!(matches!(OpEnvelope::<(String, u32)>::decode(&zero, 1024), Err(EnvelopeError::ZeroSeq)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = OpEnvelope::<(String, Vec<u64>)>::decode(&bytes, 200);
        }
    }
}
