//! The operation envelope: one CRDT operation with its author, its place
//! in the author's chain (sequence number, the previous operation's hash,
//! its own hash) and, on a chain head, the author's signature. Its bytes
//! are encoded once, when it is written; they are hashed, logged and sent
//! as they are.

use std::sync::Arc;

use super::legacy::LegacyEnvelope;
use super::{ActorId, ActorKey, ChainHash, ChainKey, Document, EnvelopeError, OpContext, Signature, Succession};

/// An operation as applied, logged and sent to peers.
///
/// The author signs chain heads, not every operation: the last operation
/// of each write ([`Replica::update`](super::Replica::update) signs its
/// operation, [`Replica::update_many`](super::Replica::update_many) the
/// last of its batch), and each operation's hash commits to the one before
/// it, so that signature authenticates the whole run. Send the operations
/// of one write together (a page holds whole runs).
///
/// ```
/// use walrus::replica::{KvDoc, Replica, ReplicaOptions};
/// let dir = tempfile::tempdir()?;
/// let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
/// let env = r.update(|d, actor| d.put_op(actor, "title", "Groceries"))?;
/// assert_eq!((env.actor(), env.seq()), (r.actor(), 1));
/// assert!(env.signature().is_some(), "a single write is its own chain head");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpEnvelope<O> {
    actor: ActorId,
    seq: u64,
    op: O,
    bytes: Arc<[u8]>,
    prev: ChainHash,
    hash: ChainHash,
    /// Boxed: most operations carry none, and envelopes move a lot.
    sig: Option<Box<Signature>>,
    succeeds: Option<Box<Succession>>,
    /// Which document's key computed `hash` ([`ChainKey::tag`]): a replica
    /// of another document computes it again.
    key_tag: [u8; 16],
}

impl<O> OpEnvelope<O> {
    /// An operation whose encoding `bytes` is already made (`op` is what
    /// they decode to); its hash is computed here, so it always matches.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        chain: &ChainKey,
        actor: ActorId,
        seq: u64,
        prev: ChainHash,
        op: O,
        bytes: Arc<[u8]>,
        succeeds: Option<Box<Succession>>,
        sig: Option<Signature>,
    ) -> OpEnvelope<O> {
        let hash = chain.op_hash(&actor, seq, &prev, succeeds.as_deref(), &bytes);
        OpEnvelope { actor, seq, op, bytes, prev, hash, sig: sig.map(Box::new), succeeds, key_tag: chain.tag() }
    }

    /// Encodes `op` as `D` does ([`Document::encode_op`]) and chains it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode<D: Document<Operation = O>>(
        chain: &ChainKey,
        actor: ActorId,
        seq: u64,
        prev: ChainHash,
        op: O,
        succeeds: Option<Box<Succession>>,
    ) -> Result<OpEnvelope<O>, EnvelopeError> {
        if seq == 0 {
            return Err(EnvelopeError::ZeroSeq);
        }
        let mut bytes = Vec::new();
        D::encode_op(&op, &OpContext { author: &actor, seq }, &mut bytes).map_err(EnvelopeError::Encode)?;
        Ok(Self::from_parts(chain, actor, seq, prev, op, bytes.into(), succeeds, None))
    }

    /// Decodes untrusted operation bytes as `D` does
    /// ([`Document::decode_op`]) and chains them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode<D: Document<Operation = O>>(
        chain: &ChainKey,
        actor: ActorId,
        seq: u64,
        prev: ChainHash,
        bytes: &[u8],
        succeeds: Option<Box<Succession>>,
        sig: Option<Signature>,
    ) -> Result<OpEnvelope<O>, EnvelopeError> {
        if seq == 0 {
            return Err(EnvelopeError::ZeroSeq);
        }
        let op = D::decode_op(bytes, &OpContext { author: &actor, seq })
            .map_err(|e| EnvelopeError::Malformed(format!("operation ({actor}, {seq}): {e}")))?;
        Ok(Self::from_parts(chain, actor, seq, prev, op, bytes.into(), succeeds, sig))
    }

    /// A format-2 operation (signed alone), as format 3 holds it: its
    /// bytes as `D` encodes it, its hash the legacy hash of its signature.
    pub(crate) fn from_legacy<D: Document<Operation = O>>(
        chain: &ChainKey,
        old: LegacyEnvelope<O>,
    ) -> Result<OpEnvelope<O>, EnvelopeError> {
        // Its bytes are never hashed or sent (it is served in snapshots
        // only): an operation its type cannot encode compactly keeps none,
        // rather than keeping the replica from opening.
        let mut bytes = Vec::new();
        if D::encode_op(&old.op, &OpContext { author: &old.actor, seq: old.seq }, &mut bytes).is_err() {
            bytes.clear();
        }
        Ok(OpEnvelope {
            actor: old.actor,
            seq: old.seq,
            hash: chain.legacy_hash(&old.actor, old.seq, &old.sig),
            op: old.op,
            bytes: bytes.into(),
            prev: ChainHash::ZERO,
            sig: None,
            succeeds: old.succeeds,
            key_tag: chain.tag(),
        })
    }

    /// Chains this operation under `chain`: unchanged if its hash was
    /// computed under that document's key, else with the hash computed
    /// again (an operation made for another document then fails its head
    /// signature here).
    pub(crate) fn rechain(&mut self, chain: &ChainKey) {
        if self.key_tag != chain.tag() {
            self.hash = chain.op_hash(&self.actor, self.seq, &self.prev, self.succeeds.as_deref(), &self.bytes);
            self.key_tag = chain.tag();
        }
    }

    /// Whether this operation directly follows `before` in its author's
    /// chain: same actor, the next sequence number, `before`'s hash as its
    /// `prev`.
    pub(crate) fn follows(&self, before: &OpEnvelope<O>) -> bool {
        self.actor == before.actor && before.seq.checked_add(1) == Some(self.seq) && self.prev == before.hash
    }

    /// Signs this operation as a chain head with `key` (its actor's).
    pub(crate) fn sign(&mut self, key: &ActorKey) {
        self.sig = Some(Box::new(self.hash.sign_head(key)));
    }

    /// This operation without its head signature (a run carries only its
    /// last operation's).
    pub(crate) fn set_signature(&mut self, sig: Option<Signature>) {
        self.sig = sig.map(Box::new);
    }

    /// Operation `seq` of `key`'s actor in document `doc`, following the
    /// operation whose hash is `prev` ([`ChainHash::ZERO`] for operation
    /// 1), encoded as `D` does and signed as a chain head: what a replica
    /// writes, made outside one (to bridge another system, or to test).
    ///
    /// ```
    /// use walrus::replica::{ActorKey, ChainHash, KvDoc, OpEnvelope};
    /// let key = ActorKey::generate()?;
    /// let op = KvDoc::default().put_op(key.actor(), "k", "v");
    /// let env = OpEnvelope::signed::<KvDoc>(&key, "notes", 1, ChainHash::ZERO, op)?;
    /// assert!(env.verify_head().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn signed<D: Document<Operation = O>>(
        key: &ActorKey,
        doc: &str,
        seq: u64,
        prev: ChainHash,
        op: O,
    ) -> Result<OpEnvelope<O>, EnvelopeError> {
        let mut env = Self::encode::<D>(&ChainKey::new(doc), key.actor(), seq, prev, op, None)?;
        env.sign(key);
        Ok(env)
    }

    /// This operation carrying `sig` as its head signature instead (or
    /// none). A wrong one fails [`verify_head`](Self::verify_head), and a
    /// replica refuses the operation.
    pub fn with_signature(mut self, sig: Option<Signature>) -> OpEnvelope<O> {
        self.sig = sig.map(Box::new);
        self
    }

    /// Author: the public key whose signature covers it.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// Position in the author's sequence: 1, 2, 3, … with no gaps.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The CRDT operation.
    pub fn op(&self) -> &O {
        &self.op
    }

    /// The CRDT operation, taken out.
    pub fn into_op(self) -> O {
        self.op
    }

    /// The operation's encoding ([`Document::encode_op`]), as hashed,
    /// logged and sent.
    pub fn op_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The hash of the author's previous operation ([`ChainHash::ZERO`]
    /// before its first).
    pub fn prev(&self) -> ChainHash {
        self.prev
    }

    /// This operation's hash in its author's chain.
    pub fn hash(&self) -> ChainHash {
        self.hash
    }

    /// The author's signature of [`hash`](Self::hash), if this operation
    /// is a chain head as held here.
    pub fn signature(&self) -> Option<&Signature> {
        self.sig.as_deref()
    }

    /// On the first operation of an actor that replaced a retired one: the
    /// retired actor's certificate naming it (see [`Succession`]); the
    /// hash covers it.
    pub fn succeeds(&self) -> Option<&Succession> {
        self.succeeds.as_deref()
    }

    /// Checks the head signature: present, and the actor's over this
    /// operation's hash.
    pub fn verify_head(&self) -> Result<(), EnvelopeError> {
        match &self.sig {
            Some(sig) if self.hash.verify_head(&self.actor, sig) => Ok(()),
            _ => Err(EnvelopeError::BadSignature { actor: self.actor, seq: self.seq }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::KvDoc;

    #[test]
    fn the_hash_follows_the_bytes_and_the_head_signature_the_hash() {
        let chain = ChainKey::new("d");
        let key = ActorKey::from_seed([3; 32]);
        let a = key.actor();
        let op = crate::replica::KvDoc::default().put_op(a, "k", "v");
        let mut env = OpEnvelope::encode::<KvDoc>(&chain, a, 1, ChainHash::ZERO, op.clone(), None).unwrap();
        assert!(env.verify_head().is_err(), "not signed yet");
        env.sign(&key);
        env.verify_head().unwrap();
        let again =
            OpEnvelope::decode::<KvDoc>(&chain, a, 1, ChainHash::ZERO, env.op_bytes(), None, env.signature().copied())
                .unwrap();
        assert_eq!(again, env);
        let other_doc = OpEnvelope::decode::<KvDoc>(
            &ChainKey::new("e"),
            a,
            1,
            ChainHash::ZERO,
            env.op_bytes(),
            None,
            env.signature().copied(),
        )
        .unwrap();
        assert!(other_doc.verify_head().is_err(), "a signature does not carry over to another document");
        let next = OpEnvelope::encode::<KvDoc>(&chain, a, 2, env.hash(), op, None).unwrap();
        assert_ne!(next.hash(), env.hash());
        assert!(matches!(
            OpEnvelope::encode::<KvDoc>(&chain, a, 0, ChainHash::ZERO, next.op.clone(), None),
            Err(EnvelopeError::ZeroSeq)
        ));
    }
}
