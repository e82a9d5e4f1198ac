//! Hash-chained authorship: each operation's hash commits to its author's
//! previous operation, so one signature over a run's last hash (its head)
//! authenticates every operation of the run, and checking the others is a
//! hash each. The hash is BLAKE3 keyed per document (docs/REPLICA.md,
//! "Operation chains").

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ActorId, ActorKey, Signature, Succession};

/// Length of a chain hash.
pub const CHAIN_HASH_LEN: usize = 32;

/// The hash of an operation in its author's chain (BLAKE3, 32 bytes).
/// The hash before an actor's first operation is all zeros
/// ([`ChainHash::ZERO`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ChainHash(pub [u8; CHAIN_HASH_LEN]);

impl ChainHash {
    /// What the first operation of every actor chains to.
    pub const ZERO: ChainHash = ChainHash([0; CHAIN_HASH_LEN]);
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ChainHash, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ChainHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte hash")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ChainHash, E> {
                v.try_into().map(ChainHash).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// BLAKE3 key-derivation contexts: globally unique, so these keys are
/// never any other use's.
const OP_CONTEXT: &str = "walrus 2026-12 operation chain v3";
const LEGACY_CONTEXT: &str = "walrus 2026-12 format 2 operation";
/// What a head signature signs before the hash.
const HEAD_DOMAIN: &[u8] = b"walrus/head/v3\0";

/// The hashing keys of one document: a chain never verifies in another
/// document.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainKey {
    op: [u8; 32],
    legacy: [u8; 32],
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainKey({})", ChainHash(self.op))
    }
}

impl ChainKey {
    /// The keys of document `doc`: `BLAKE3::derive_key` of the document id
    /// under this format's contexts.
    pub fn new(doc: &str) -> ChainKey {
        ChainKey {
            op: blake3::derive_key(OP_CONTEXT, doc.as_bytes()),
            legacy: blake3::derive_key(LEGACY_CONTEXT, doc.as_bytes()),
        }
    }

    /// A short name of this document's key: the first 16 bytes of it (no
    /// document id can be found whose key shares them without about 2^128
    /// hashes).
    pub(crate) fn tag(&self) -> [u8; 16] {
        let mut t = [0u8; 16];
        t.copy_from_slice(&self.op[..16]);
        t
    }

    /// The hash of operation `seq` of `actor` whose encoding is `bytes`,
    /// following the operation whose hash is `prev`, carrying `succeeds`
    /// if given: keyed BLAKE3 of `actor ‖ seq (u64 BE) ‖ prev ‖ 0x00`, or
    /// `… ‖ 0x01 ‖ from ‖ to ‖ certificate signature`, then `‖ bytes`.
    pub fn op_hash(
        &self,
        actor: &ActorId,
        seq: u64,
        prev: &ChainHash,
        succeeds: Option<&Succession>,
        bytes: &[u8],
    ) -> ChainHash {
        let mut h = blake3::Hasher::new_keyed(&self.op);
        h.update(&actor.0);
        h.update(&seq.to_be_bytes());
        h.update(&prev.0);
        match succeeds {
            None => {
                h.update(&[0]);
            }
            Some(c) => {
                h.update(&[1]);
                h.update(&c.from.0);
                h.update(&c.to.0);
                h.update(&c.sig.0);
            }
        }
        h.update(bytes);
        ChainHash(*h.finalize().as_bytes())
    }

    /// The chain hash given to an operation written in format 2 (one
    /// signature per operation): keyed BLAKE3 (under the legacy key) of
    /// `actor ‖ seq (u64 BE) ‖ its signature`. The first format-3
    /// operation after it chains to this.
    pub fn legacy_hash(&self, actor: &ActorId, seq: u64, sig: &Signature) -> ChainHash {
        let mut h = blake3::Hasher::new_keyed(&self.legacy);
        h.update(&actor.0);
        h.update(&seq.to_be_bytes());
        h.update(&sig.0);
        ChainHash(*h.finalize().as_bytes())
    }
}

/// The bytes a head signature covers: `walrus/head/v3\0` and the hash.
/// The hash binds the document, the actor, the position and everything
/// before it in the chain.
fn head_message(hash: &ChainHash) -> [u8; HEAD_DOMAIN.len() + CHAIN_HASH_LEN] {
    let mut m = [0u8; HEAD_DOMAIN.len() + CHAIN_HASH_LEN];
    m[..HEAD_DOMAIN.len()].copy_from_slice(HEAD_DOMAIN);
    m[HEAD_DOMAIN.len()..].copy_from_slice(&hash.0);
    m
}

impl ChainHash {
    /// `key`'s signature of this hash as a chain head: it authenticates the
    /// operation with this hash and every one before it in the chain.
    pub fn sign_head(&self, key: &ActorKey) -> Signature {
        Signature(key.sign(&head_message(self)))
    }

    /// Whether `sig` is `actor`'s signature of this hash as a chain head.
    pub fn verify_head(&self, actor: &ActorId, sig: &Signature) -> bool {
        actor.verify(&head_message(self), &sig.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_binds_every_input() {
        let k = ChainKey::new("notes");
        let a = ActorId([1; 32]);
        let h = k.op_hash(&a, 1, &ChainHash::ZERO, None, b"op");
        assert_ne!(h, ChainKey::new("other").op_hash(&a, 1, &ChainHash::ZERO, None, b"op"));
        assert_ne!(h, k.op_hash(&ActorId([2; 32]), 1, &ChainHash::ZERO, None, b"op"));
        assert_ne!(h, k.op_hash(&a, 2, &ChainHash::ZERO, None, b"op"));
        assert_ne!(h, k.op_hash(&a, 1, &ChainHash([1; 32]), None, b"op"));
        assert_ne!(h, k.op_hash(&a, 1, &ChainHash::ZERO, None, b"oq"));
        let c = Succession { from: ActorId([3; 32]), to: a, sig: Signature([4; 64]) };
        assert_ne!(h, k.op_hash(&a, 1, &ChainHash::ZERO, Some(&c), b"op"));
        assert_ne!(h, k.legacy_hash(&a, 1, &Signature([0; 64])));
    }

    #[test]
    fn a_head_signature_is_its_actor_s_over_that_hash() {
        let key = ActorKey::from_seed([9; 32]);
        let h = ChainKey::new("d").op_hash(&key.actor(), 1, &ChainHash::ZERO, None, b"x");
        let sig = h.sign_head(&key);
        assert!(h.verify_head(&key.actor(), &sig));
        assert!(!h.verify_head(&ActorKey::from_seed([8; 32]).actor(), &sig));
        assert!(!ChainHash([7; 32]).verify_head(&key.actor(), &sig));
    }
}
