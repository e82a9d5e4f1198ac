//! Format 2's operation envelope: one CRDT operation with its author, its
//! place in the author's sequence and the author's signature of it alone;
//! CBOR-encoded as one log record. Logs written before format 3 still hold
//! them: they are read, never written.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "internals"))]
use super::ActorKey;
use super::{ActorId, EnvelopeError, Signature, Succession};

/// An operation as format 2 stored it in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyEnvelope<O> {
    /// Author: the public key that signed it.
    pub actor: ActorId,
    /// Position in the author's sequence: 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// The CRDT operation.
    pub op: O,
    /// The author's signature of the document id, `actor`, `seq` and `op`
    /// (the bytes are in `docs/REPLICA.md`, "Signature").
    pub sig: Signature,
    /// On the first operation of an actor that replaced a retired one: the
    /// retired actor's certificate naming it (see [`Succession`]). `sig`
    /// covers it too (see [`LegacyEnvelope::signed_succeeding`]).
    /// Absent from the encoding when `None`, so envelopes without it are
    /// byte for byte what they were before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeds: Option<Box<Succession>>,
}

/// Domain separation: these signatures cannot be mistaken for any other
/// use of the same key.
#[cfg(any(test, feature = "internals"))]
const SIGNING_DOMAIN: &[u8] = b"walrus/op/v1\0";

/// The bytes an operation's signature covers: a domain tag, the document
/// id (length-prefixed), the actor, the sequence number (big-endian) and the
/// CBOR of the operation. Binding the document and the sequence number
/// means a signed operation cannot be replayed into another document or at
/// another position.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn signing_bytes<O: Serialize>(
    doc: &str,
    actor: &ActorId,
    seq: u64,
    op: &O,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 4 + doc.len() + 32 + 8 + 64);
    out.extend_from_slice(SIGNING_DOMAIN);
    let len = u32::try_from(doc.len()).map_err(|_| EnvelopeError::Encode("document id too long".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(doc.as_bytes());
    out.extend_from_slice(&actor.0);
    out.extend_from_slice(&seq.to_be_bytes());
    ciborium::into_writer(op, &mut out).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    Ok(out)
}

/// What an operation carrying a succession certificate signs after its
/// [`signing_bytes`]: the byte `0x01`, then the certificate's `from`, `to`
/// and signature (129 bytes in all). The operation's CBOR is
/// self-delimiting, so these bytes cannot be mistaken for another
/// operation's.
#[cfg(any(test, feature = "internals"))]
fn append_succession(bytes: &mut Vec<u8>, c: &Succession) {
    bytes.push(1);
    bytes.extend_from_slice(&c.from.0);
    bytes.extend_from_slice(&c.to.0);
    bytes.extend_from_slice(&c.sig.0);
}

#[cfg(any(test, feature = "internals"))]
impl<O: Serialize> LegacyEnvelope<O> {
    /// Operation `seq` of `key`'s actor in document `doc`, signed.
    pub fn signed(key: &ActorKey, doc: &str, seq: u64, op: O) -> Result<LegacyEnvelope<O>, EnvelopeError> {
        Self::signed_succeeding(key, doc, seq, op, None)
    }

    /// Like [`signed`](Self::signed), carrying the succession certificate
    /// of the key's actor (on its operation 1): the signature covers it too,
    /// so nobody relaying the operation can strip or swap it.
    pub fn signed_succeeding(
        key: &ActorKey,
        doc: &str,
        seq: u64,
        op: O,
        succeeds: Option<Succession>,
    ) -> Result<LegacyEnvelope<O>, EnvelopeError> {
        let actor = key.actor();
        let mut bytes = signing_bytes(doc, &actor, seq, &op)?;
        if let Some(c) = &succeeds {
            append_succession(&mut bytes, c);
        }
        let sig = Signature(key.sign(&bytes));
        Ok(LegacyEnvelope { actor, seq, op, sig, succeeds: succeeds.map(Box::new) })
    }

    /// Checks that the signature is the actor's, over this operation at this
    /// position in document `doc` (and over its succession certificate, if
    /// it carries one).
    pub fn verify(&self, doc: &str) -> Result<(), EnvelopeError> {
        let mut bytes = signing_bytes(doc, &self.actor, self.seq, &self.op)?;
        if let Some(c) = &self.succeeds {
            append_succession(&mut bytes, c);
        }
        if self.actor.verify(&bytes, &self.sig.0) {
            Ok(())
        } else {
            Err(EnvelopeError::BadSignature { actor: self.actor, seq: self.seq })
        }
    }
}

#[cfg(any(test, feature = "internals"))]
impl<O: Serialize> LegacyEnvelope<O> {
    /// CBOR encoding (the log record and wire form). Fails only if the
    /// operation type's `Serialize` implementation does.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        Ok(out)
    }
}

impl<O: DeserializeOwned> LegacyEnvelope<O> {
    /// Decodes untrusted bytes, refusing anything over `limit` bytes first.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<LegacyEnvelope<O>, EnvelopeError> {
        if bytes.len() > limit {
            return Err(EnvelopeError::TooLarge { len: bytes.len(), limit });
        }
        let env: LegacyEnvelope<O> = ciborium::de::from_reader_with_recursion_limit(bytes, 64)
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
        let key = ActorKey::from_seed([3; 32]);
        let env = LegacyEnvelope::signed(&key, "d", 9, ("key".to_string(), 42u32)).unwrap();
        let bytes = env.encode().unwrap();
        assert_eq!(LegacyEnvelope::<(String, u32)>::decode(&bytes, 1024).unwrap(), env);
        assert!(matches!(LegacyEnvelope::<(String, u32)>::decode(&bytes, 4), Err(EnvelopeError::TooLarge { .. })));
        assert!(matches!(LegacyEnvelope::<u64>::decode(&bytes, 1024), Err(EnvelopeError::Malformed(_))));
        let zero = LegacyEnvelope { seq: 0, ..env }.encode().unwrap();
        assert!(matches!(LegacyEnvelope::<(String, u32)>::decode(&zero, 1024), Err(EnvelopeError::ZeroSeq)));
    }

    #[test]
    fn signature_binds_document_actor_position_and_op() {
        let key = ActorKey::from_seed([5; 32]);
        let env = LegacyEnvelope::signed(&key, "d", 2, "op".to_string()).unwrap();
        assert!(env.verify("d").is_ok());
        let bad = |e: &LegacyEnvelope<String>, doc| matches!(e.verify(doc), Err(EnvelopeError::BadSignature { .. }));
        assert!(bad(&env, "e"), "another document");
        assert!(bad(&LegacyEnvelope { seq: 3, ..env.clone() }, "d"), "another position");
        assert!(bad(&LegacyEnvelope { op: "oq".into(), ..env.clone() }, "d"), "another operation");
        let other = ActorKey::from_seed([6; 32]).actor();
        assert!(bad(&LegacyEnvelope { actor: other, ..env.clone() }, "d"), "another actor");
        let mut sig = env.sig;
        sig.0[40] ^= 1;
        assert!(bad(&LegacyEnvelope { sig, ..env.clone() }, "d"), "a damaged signature");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = LegacyEnvelope::<(String, Vec<u64>)>::decode(&bytes, 200);
        }
    }
}
