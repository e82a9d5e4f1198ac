//! Runs: consecutive operations of one actor as their encoded bytes, with
//! the hash the first one follows and the signature of the last. A log
//! record of format 3 is one run (a *block*); a sync page or gossip
//! message is a sequence of them. The layout is in docs/REPLICA.md,
//! "Runs".

use super::varint;
use super::{ActorId, ChainHash, ChainKey, Document, EnvelopeError, OpEnvelope, Signature, Succession};

/// Most operations in one run of a page (one signed head): a receiver
/// refuses longer runs, so a stretch of its log without a signed head is
/// at most this long.
pub(crate) const MAX_RUN_OPS: usize = 16_384;
/// Most operation bytes in one run of a page.
pub(crate) const MAX_RUN_BYTES: usize = 1 << 20;
/// A page's run for one actor is split at the first signed head after
/// this many operations…
pub(crate) const RUN_SPLIT_OPS: usize = 4096;
/// …or this many bytes.
pub(crate) const RUN_SPLIT_BYTES: usize = 256 << 10;
/// A page stops taking new operations after this many (then finishes its
/// runs at their heads, at most [`MAX_RUN_OPS`] more each), so it holds
/// at most 65,536 (`sync::MAX_OPS_PER_MESSAGE`).
pub(crate) const PAGE_CUT_OPS: usize = 65_536 - MAX_RUN_OPS;

/// A run owning its operations' bytes (read from the log, to be sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedRun {
    pub actor: ActorId,
    pub first: u64,
    pub prev: ChainHash,
    pub succeeds: Option<Succession>,
    pub ops: Vec<Vec<u8>>,
    pub sig: Option<Signature>,
}

impl OwnedRun {
    /// The run, borrowing.
    pub fn as_run(&self) -> Run<'_> {
        Run {
            actor: self.actor,
            first: self.first,
            prev: self.prev,
            succeeds: self.succeeds,
            ops: self.ops.iter().map(|o| &o[..]).collect(),
            sig: self.sig,
        }
    }
}

/// First byte of a format-3 log record. Format 2's records are CBOR maps
/// (first byte 0xa0..=0xbf), so the two never meet.
pub(crate) const BLOCK_TAG: u8 = 0x03;

const FLAG_SUCCESSION: u8 = 0x01;
const FLAG_SIGNED: u8 = 0x02;
const SUCCESSION_LEN: usize = 32 + 32 + 64;

/// A run, borrowing its operations' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    pub actor: ActorId,
    /// Sequence number of the first operation (≥ 1).
    pub first: u64,
    /// The hash the first operation follows.
    pub prev: ChainHash,
    /// The first operation's succession certificate.
    pub succeeds: Option<Succession>,
    /// Each operation's bytes, in order (at least one).
    pub ops: Vec<&'a [u8]>,
    /// The author's signature of the last operation's hash.
    pub sig: Option<Signature>,
}

impl<'a> Run<'a> {
    /// A run of `envs`: consecutive operations of one actor, each following
    /// the one before (the caller's promise), carrying the last one's
    /// signature.
    pub fn of<O>(envs: &'a [OpEnvelope<O>]) -> Option<Run<'a>> {
        let (head, last) = (envs.first()?, envs.last()?);
        Some(Run {
            actor: head.actor(),
            first: head.seq(),
            prev: head.prev(),
            succeeds: head.succeeds().copied(),
            ops: envs.iter().map(|e| e.op_bytes()).collect(),
            sig: last.signature().copied(),
        })
    }

    /// Appends everything after the actor: `first`, the count, `prev`,
    /// flags, the certificate, the lengths, the bytes, the signature.
    pub fn put_body(&self, out: &mut Vec<u8>) {
        varint::put(out, self.first);
        varint::put(out, self.ops.len() as u64);
        out.extend_from_slice(&self.prev.0);
        let mut flags = 0;
        if self.succeeds.is_some() {
            flags |= FLAG_SUCCESSION;
        }
        if self.sig.is_some() {
            flags |= FLAG_SIGNED;
        }
        out.push(flags);
        if let Some(c) = &self.succeeds {
            out.extend_from_slice(&c.from.0);
            out.extend_from_slice(&c.to.0);
            out.extend_from_slice(&c.sig.0);
        }
        for op in &self.ops {
            varint::put(out, op.len() as u64);
        }
        for op in &self.ops {
            out.extend_from_slice(op);
        }
        if let Some(sig) = &self.sig {
            out.extend_from_slice(&sig.0);
        }
    }

    /// Reads a run's body (after its actor) from the front of `bytes`.
    /// Refuses counts the input cannot hold before allocating, sequence
    /// numbers that overflow, unknown flags and truncation.
    pub fn take_body(actor: ActorId, bytes: &mut &'a [u8], max_ops: usize) -> Result<Run<'a>, String> {
        let v = |what: &str, e: varint::VarintError| format!("run of {actor}: {what}: {e}");
        let first = varint::take(bytes).map_err(|e| v("first sequence number", e))?;
        let count = varint::take(bytes).map_err(|e| v("count", e))?;
        if first == 0 {
            return Err(format!("run of {actor}: sequence number 0"));
        }
        // Each operation takes at least its length byte.
        if count == 0 || count > bytes.len() as u64 {
            return Err(format!("run of {actor}: {count} operations cannot fit in {} bytes", bytes.len()));
        }
        if count > max_ops as u64 {
            return Err(format!("run of {actor}: {count} operations, more than {max_ops} under one signature"));
        }
        if first.checked_add(count - 1).is_none() {
            return Err(format!("run of {actor}: sequence numbers past 2^64"));
        }
        let prev = take_array::<32>(bytes).ok_or_else(|| format!("run of {actor}: truncated previous hash"))?;
        let (&flags, rest) = bytes.split_first().ok_or_else(|| format!("run of {actor}: truncated flags"))?;
        *bytes = rest;
        if flags & !(FLAG_SUCCESSION | FLAG_SIGNED) != 0 {
            return Err(format!("run of {actor}: unknown flags {flags:#04x}"));
        }
        let succeeds = if flags & FLAG_SUCCESSION != 0 {
            let c = take_array::<SUCCESSION_LEN>(bytes)
                .ok_or_else(|| format!("run of {actor}: truncated succession certificate"))?;
            let (mut from, mut to, mut sig) = ([0u8; 32], [0u8; 32], [0u8; 64]);
            from.copy_from_slice(&c[..32]);
            to.copy_from_slice(&c[32..64]);
            sig.copy_from_slice(&c[64..]);
            Some(Succession { from: ActorId(from), to: ActorId(to), sig: Signature(sig) })
        } else {
            None
        };
        let mut lens = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for i in 0..count {
            let len = varint::take(bytes).map_err(|e| v(&format!("length of operation {i}"), e))?;
            total = total.saturating_add(len);
            lens.push(len as usize);
        }
        if total > bytes.len() as u64 {
            return Err(format!("run of {actor}: {total} bytes of operations, {} left", bytes.len()));
        }
        let mut ops = Vec::with_capacity(lens.len());
        for len in lens {
            let (op, rest) = bytes.split_at(len);
            ops.push(op);
            *bytes = rest;
        }
        let sig = if flags & FLAG_SIGNED != 0 {
            let s = take_array::<64>(bytes).ok_or_else(|| format!("run of {actor}: truncated signature"))?;
            Some(Signature(s))
        } else {
            None
        };
        Ok(Run { actor, first, prev: ChainHash(prev), succeeds, ops, sig })
    }

    /// A log record of format 3: [`BLOCK_TAG`], the actor, the body.
    pub fn block(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 48 + self.ops.iter().map(|o| o.len() + 2).sum::<usize>() + 64);
        out.push(BLOCK_TAG);
        out.extend_from_slice(&self.actor.0);
        self.put_body(&mut out);
        out
    }

    /// Reads a log record of format 3 (all of `bytes`).
    pub fn from_block(mut bytes: &'a [u8]) -> Result<Run<'a>, String> {
        let (&tag, rest) = bytes.split_first().ok_or("empty record")?;
        if tag != BLOCK_TAG {
            return Err(format!("record tag {tag:#04x} is not a block's"));
        }
        bytes = rest;
        let actor = take_array::<32>(&mut bytes).ok_or("truncated actor")?;
        let run = Run::take_body(ActorId(actor), &mut bytes, MAX_RUN_OPS)?;
        if !bytes.is_empty() {
            return Err(format!("{} bytes after the block", bytes.len()));
        }
        Ok(run)
    }

    /// The run's operations, decoded as `D` does and chained under `chain`:
    /// each one's hash is computed, the last carries the signature. Nothing
    /// is verified here beyond the decoding.
    pub fn envelopes<D: Document>(&self, chain: &ChainKey) -> Result<Vec<OpEnvelope<D::Operation>>, EnvelopeError> {
        let mut out: Vec<OpEnvelope<D::Operation>> = Vec::with_capacity(self.ops.len());
        let mut prev = self.prev;
        for (i, bytes) in self.ops.iter().enumerate() {
            let seq = self.first + i as u64;
            let succeeds = if i == 0 { self.succeeds.map(Box::new) } else { None };
            let sig = if i + 1 == self.ops.len() { self.sig } else { None };
            let env = OpEnvelope::decode::<D>(chain, self.actor, seq, prev, bytes, succeeds, sig)?;
            prev = env.hash();
            out.push(env);
        }
        Ok(out)
    }
}

/// `envs` cut into runs: each a stretch of operations that follow one
/// another, ending after a signed operation or where the next does not
/// follow (so a run may end unsigned).
pub(crate) fn split_runs<O>(envs: &[OpEnvelope<O>]) -> Vec<&[OpEnvelope<O>]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, env) in envs.iter().enumerate() {
        if env.signature().is_some() || !envs.get(i + 1).is_some_and(|n| n.follows(env)) {
            runs.push(&envs[start..=i]);
            start = i + 1;
        }
    }
    runs
}

/// The first `N` bytes of `bytes`, advancing it.
fn take_array<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    if bytes.len() < N {
        return None;
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    head.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{ActorKey, KvDoc};
    use proptest::prelude::*;

    fn chain_of(n: u64, signed_last: bool) -> (ChainKey, Vec<OpEnvelope<crate::replica::KvOp>>) {
        let chain = ChainKey::new("d");
        let key = ActorKey::from_seed([1; 32]);
        let mut doc = KvDoc::default();
        let mut prev = ChainHash::ZERO;
        let mut out = Vec::new();
        for seq in 1..=n {
            let op = doc.put_op(key.actor(), &format!("k{seq}"), "v");
            crdts::CmRDT::apply(&mut doc, op.clone());
            let env = OpEnvelope::encode::<KvDoc>(&chain, key.actor(), seq, prev, op, None).unwrap();
            prev = env.hash();
            out.push(env);
        }
        if signed_last {
            if let Some(last) = out.last_mut() {
                last.sign(&key);
            }
        }
        (chain, out)
    }

    #[test]
    fn a_block_round_trips_and_rebuilds_the_chain() {
        let (chain, envs) = chain_of(5, true);
        let run = Run::of(&envs).unwrap();
        let block = run.block();
        let back = Run::from_block(&block).unwrap();
        assert_eq!(back, run);
        let rebuilt = back.envelopes::<KvDoc>(&chain).unwrap();
        assert_eq!(rebuilt, envs);
        rebuilt.last().unwrap().verify_head().unwrap();
        assert!(Run::from_block(&block[..block.len() - 1]).is_err());
        let mut longer = block.clone();
        longer.push(0);
        assert!(Run::from_block(&longer).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(run) = Run::from_block(&bytes) {
                let _ = run.envelopes::<KvDoc>(&ChainKey::new("d"));
            }
            let mut b = &bytes[..];
            let _ = Run::take_body(ActorId([0; 32]), &mut b, MAX_RUN_OPS);
        }

        #[test]
        fn any_flipped_bit_is_refused_or_changes_what_the_head_covers(n in 1u64..6, byte in any::<usize>(), bit in 0u8..8) {
            let (chain, envs) = chain_of(n, true);
            let mut block = Run::of(&envs).unwrap().block();
            let i = byte % block.len();
            block[i] ^= 1 << bit;
            if let Ok(run) = Run::from_block(&block) {
                if let Ok(got) = run.envelopes::<KvDoc>(&chain) {
                    // Whatever still decodes fails its head signature.
                    let last = got.last().unwrap();
                    prop_assert!(last.verify_head().is_err(), "a flipped bit at {} still verifies", i);
                }
            }
        }
    }
}
