//! Equivocation proofs: two runs of one actor, each under the actor's head
//! signature, whose chains hold different operations at one position. Anyone
//! with the document id can check one, without trusting who reported it.

use super::run::Run;
use super::{ActorId, ChainHash, ChainKey, Signature, Succession};

/// Consecutive operations of one actor, as their bytes, with the hash the
/// first follows and the actor's head signature of the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRun {
    /// Sequence number of the first operation.
    pub first: u64,
    /// The hash the first operation follows.
    pub prev: ChainHash,
    /// The first operation's succession certificate, if it carries one.
    pub succeeds: Option<Succession>,
    /// Each operation's bytes, in order (at least one).
    pub ops: Vec<Vec<u8>>,
    /// The actor's head signature of the last operation's hash.
    pub sig: Signature,
}

impl SignedRun {
    /// The run in the layout of a run's body (REPLICA.md, "Runs": first
    /// sequence number, count, previous hash, flags, certificate, lengths,
    /// bytes, signature), for tools that pass a proof on.
    pub fn encode(&self) -> Vec<u8> {
        let run = Run {
            actor: ActorId([0; 32]),
            first: self.first,
            prev: self.prev,
            succeeds: self.succeeds,
            ops: self.ops.iter().map(|o| &o[..]).collect(),
            sig: Some(self.sig),
        };
        let mut out = Vec::new();
        run.put_body(&mut out);
        out
    }

    /// The hash this run commits `actor`'s chain to at position `seq` (an
    /// operation of the run, or the one just before it), if its head
    /// signature is `actor`'s; `None` otherwise.
    pub fn hash_at(&self, chain: &ChainKey, actor: &ActorId, seq: u64) -> Option<ChainHash> {
        let mut prev = self.prev;
        let mut at = (seq.checked_add(1) == Some(self.first)).then_some(self.prev);
        for (i, bytes) in self.ops.iter().enumerate() {
            let n = self.first.checked_add(i as u64)?;
            let succeeds = if i == 0 { self.succeeds.as_ref() } else { None };
            prev = chain.op_hash(actor, n, &prev, succeeds, bytes);
            if n == seq {
                at = Some(prev);
            }
        }
        if self.ops.is_empty() || !prev.verify_head(actor, &self.sig) {
            return None;
        }
        at
    }
}

/// Proof that `actor` signed two histories: runs `a` and `b` both commit
/// its chain at position `seq`, to different hashes.
///
/// ```
/// # use walrus::replica::{ActorKey, ChainHash, EquivocationProof, KvDoc, OpEnvelope, SignedRun};
/// let key = ActorKey::from_seed([9; 32]);
/// let run = |value: &str| {
///     let op = KvDoc::default().put_op(key.actor(), "k", value);
///     let env = OpEnvelope::signed::<KvDoc>(&key, "notes", 1, ChainHash::ZERO, op).unwrap();
///     SignedRun { first: 1, prev: ChainHash::ZERO, succeeds: None,
///                 ops: vec![env.op_bytes().to_vec()], sig: *env.signature().unwrap() }
/// };
/// let proof = EquivocationProof { actor: key.actor(), seq: 1, a: run("x"), b: run("y") };
/// assert!(proof.verify("notes"));
/// assert!(!proof.verify("another document"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EquivocationProof {
    /// The actor whose key signed both runs.
    pub actor: ActorId,
    /// The position at which they differ.
    pub seq: u64,
    /// One history (the one the reporting replica held).
    pub a: SignedRun,
    /// The other (the one it was sent).
    pub b: SignedRun,
}

impl EquivocationProof {
    /// Whether this proves an equivocation in document `doc`: both runs are
    /// signed by the actor and commit its chain at `seq` to different hashes.
    pub fn verify(&self, doc: &str) -> bool {
        let chain = ChainKey::new(doc);
        match (self.a.hash_at(&chain, &self.actor, self.seq), self.b.hash_at(&chain, &self.actor, self.seq)) {
            (Some(x), Some(y)) => x != y,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{ActorKey, KvDoc, KvOp, OpEnvelope, Replica, ReplicaOptions};

    /// Three puts of `actor`, chained, only the last signed (a run).
    fn history(key: &ActorKey, value: &str) -> Vec<OpEnvelope<KvOp>> {
        let mut doc = KvDoc::default();
        let mut prev = ChainHash::ZERO;
        let mut out = Vec::new();
        for seq in 1..=3u64 {
            let op = doc.put_op(key.actor(), &format!("k{seq}"), value);
            crdts::CmRDT::apply(&mut doc, op.clone());
            let env = OpEnvelope::signed::<KvDoc>(key, "", seq, prev, op).unwrap();
            prev = env.hash();
            out.push(if seq < 3 { env.with_signature(None) } else { env });
        }
        out
    }

    #[test]
    fn an_equivocation_found_by_receive_comes_with_a_proof_anyone_can_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default()).unwrap();
        let eve = ActorKey::from_seed([4; 32]);
        let got = r.receive(history(&eve, "first")).unwrap();
        assert_eq!(got.applied, 3);
        let got = r.receive(history(&eve, "second")).unwrap();
        assert_eq!(got.equivocations.len(), 3, "{got:?}");
        let proofs = r.take_equivocation_proofs();
        assert!(!proofs.is_empty());
        for p in &proofs {
            assert_eq!(p.actor, eve.actor());
            assert!(p.verify(""), "{p:?}");
            assert!(!p.verify("other"), "a proof holds in its own document only");
        }
        // Tampered: the same run twice proves nothing; a changed byte breaks
        // the signature.
        let p = &proofs[0];
        assert!(!EquivocationProof { b: p.a.clone(), ..p.clone() }.verify(""));
        let mut bad = p.clone();
        bad.b.ops[0][3] ^= 1;
        assert!(!bad.verify(""));
        assert_eq!(r.doc().values_of("k1"), vec!["first"], "the first history stays");
    }
}
