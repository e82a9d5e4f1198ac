//! Actor identities: who wrote an operation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies the replica that authored an operation: the ed25519 public
/// key of its [`ActorKey`](super::ActorKey), so anyone can check that an
/// operation is signed by the actor it names.
///
/// ```
/// use walrus::replica::{ActorId, ActorKey};
/// let a = ActorKey::generate()?.actor();
/// let text = a.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<ActorId>().unwrap(), a);
/// # Ok::<(), walrus::replica::KeyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ActorId(pub [u8; ACTOR_ID_LEN]);

/// Length of an [`ActorId`] in bytes (an ed25519 public key).
pub const ACTOR_ID_LEN: usize = 32;

// Serialized as a 32-byte string (compact in CBOR), not 32 integers.
impl Serialize for ActorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ActorId, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ActorId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte actor id")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ActorId, E> {
                let bytes: [u8; ACTOR_ID_LEN] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(ActorId(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ActorId, A::Error> {
                let mut out = [0u8; ACTOR_ID_LEN];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(ACTOR_ID_LEN + 1, &self));
                }
                Ok(ActorId(out))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

impl ActorId {
    /// A random id that is not the key of any known actor (for tests and
    /// tools that need distinct ids; operations under it cannot be signed).
    pub fn random() -> ActorId {
        use std::hash::{BuildHasher, Hasher};
        let mut out = [0u8; ACTOR_ID_LEN];
        for (i, half) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        ActorId(out)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({self})")
    }
}

/// Error parsing an [`ActorId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an actor id is 64 hexadecimal digits, got {0:?}")]
pub struct ParseActorIdError(pub String);

impl FromStr for ActorId {
    type Err = ParseActorIdError;

    fn from_str(s: &str) -> Result<ActorId, ParseActorIdError> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 * ACTOR_ID_LEN {
            return Err(ParseActorIdError(s.to_string()));
        }
        let mut out = [0u8; ACTOR_ID_LEN];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| ParseActorIdError(s.to_string()))?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| ParseActorIdError(s.to_string()))?;
        }
        Ok(ActorId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_differ_and_parse_back() {
        let a = ActorId::random();
        let b = ActorId::random();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<ActorId>(), Ok(a));
        assert!("xyz".parse::<ActorId>().is_err());
        assert!("zz".repeat(32).parse::<ActorId>().is_err());
        assert!("é".repeat(32).parse::<ActorId>().is_err());
        let mut cbor = Vec::new();
        ciborium::into_writer(&a, &mut cbor).unwrap();
        assert_eq!(cbor.len(), 34, "a CBOR byte string of 32 bytes");
        assert_eq!(ciborium::from_reader::<ActorId, _>(&cbor[..]).unwrap(), a);
        let mut short = Vec::new();
        ciborium::into_writer(&ciborium::Value::Bytes(vec![1; 31]), &mut short).unwrap();
        assert!(ciborium::from_reader::<ActorId, _>(&short[..]).is_err());
    }
}
