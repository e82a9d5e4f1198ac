//! The `envelope` target: a log record of format 3 (one *run*: consecutive
//! chained operations of one actor, the last signed) decoded with
//! `internals::decode_block`, from arbitrary bytes and from damaged
//! encodings of validly signed runs, then `Replica::receive` of whatever
//! decodes. (Pages of runs are the `page` target's, single operations the
//! `op_codec` target's.)
//!
//! Input layout: byte 0 is the mode.
//!
//! - Even: raw. Bytes 1.. are the record.
//! - Odd: mutation. The harness signs a run, encodes it, edits the
//!   encoding and decodes the result:
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | signer: `ActorKey::from_seed([b; 32])` |
//! | 2 | sequence number of the first operation ([`seq_of`]) |
//! | 3, 4 | the operations: shape and seen bytes of an [`OpSpec`](crate::harness::OpSpec) (a forged put names the first peer); operation `i` has shape `shape + 16 * i` |
//! | 5 | bits 0-1: operations in the run, 1 to 4; then the number of edits (`>> 2`), modulo `MAX_EDITS + 1` |
//! | 6.. | edits of 4 bytes: kind (modulo 6, see [`Edit`]), position (u16 LE, modulo the current length), value |
//!
//! Checks:
//! - decoding never panics;
//! - a decoded run re-encodes (`internals::block_of`) to a record that
//!   decodes to the same operations and re-encodes to itself;
//! - mutation mode: without edits the run comes back exactly and its head
//!   verifies; with edits, a head that still verifies ends a suffix of the
//!   signed run, exactly (the hash chain commits to every operation
//!   before it: strict verification, no malleated signature passes);
//! - a fresh replica of [`DOC`] without operations receiving the run: a
//!   head that does not verify fails with `BadSignature` for the run's
//!   first (actor, seq) and changes neither version vector, state nor
//!   buffer; a single valid operation whose put names another actor is
//!   `Rejected` and changes nothing; a valid run from sequence number 1 is
//!   applied (the state is its operations applied to an empty document)
//!   and survives a reopen; a valid single later one is buffered and
//!   nothing else changes.

use crdts::CmRDT;
use walrus::internals;
use walrus::replica::{
    ActorKey, ChainHash, Document, EnvelopeError, KvDoc, KvOp, OpEnvelope, PeerError, ReceiveError, VersionVector,
};

use crate::harness::{actor, check_reopen, from_template, kv_op, observe, open_as, options, seq_of, DOC, LOCAL_SEED};
use crate::Bytes;

/// Most edits of a mutation input.
pub const MAX_EDITS: u8 = 8;

/// One edit of an encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    /// 0 overwrite the byte with `value`, 1 xor `value` into it, 2 insert
    /// `value` before it, 3 delete it, 4 truncate there, 5 swap it with
    /// the byte `value` positions later.
    pub kind: u8,
    pub pos: u16,
    pub value: u8,
}

impl Edit {
    pub fn to_bytes(self) -> [u8; 4] {
        let [a, b] = self.pos.to_le_bytes();
        [self.kind, a, b, self.value]
    }

    fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        // Inserting and truncating may happen at the end; the rest needs a byte.
        let at = |n: usize| usize::from(self.pos) % n.max(1);
        match self.kind % 6 {
            2 => bytes.insert(at(len + 1), self.value),
            4 => bytes.truncate(at(len + 1)),
            _ if len == 0 => {}
            0 => bytes[at(len)] = self.value,
            1 => bytes[at(len)] ^= self.value,
            3 => {
                bytes.remove(at(len));
            }
            _ => {
                let i = at(len);
                bytes.swap(i, (i + usize::from(self.value)) % len);
            }
        }
    }
}

/// Runs one input through the checks; panics on a violated invariant.
pub fn check(data: &[u8]) {
    crate::init_tracing();
    let mut input = Bytes::new(data);
    if input.u8() & 1 == 0 {
        if let Ok(envs) = internals::decode_block::<KvDoc>(input.rest(), DOC) {
            check_decoded(&envs);
        }
        return;
    }
    let key = ActorKey::from_seed([input.u8(); 32]);
    let first = seq_of(input.u8()).max(1);
    let (shape, seen) = (input.u8(), input.u8());
    let b = input.u8();
    let n = usize::from(b & 3) + 1;
    let mut run: Vec<OpEnvelope<KvOp>> = Vec::new();
    let mut prev = ChainHash::ZERO;
    for i in 0..n {
        let Some(seq) = first.checked_add(i as u64) else { break };
        let op = kv_op(shape.wrapping_add(16 * i as u8), seen, key.actor(), actor(0), seq);
        let env = OpEnvelope::signed::<KvDoc>(&key, DOC, seq, prev, op).expect("signing an operation");
        prev = env.hash();
        run.push(env);
    }
    // Only the head keeps its signature.
    let last = run.len() - 1;
    for env in &mut run[..last] {
        *env = env.clone().with_signature(None);
    }
    let mut bytes = internals::block_of(&run).expect("a run of at least one operation");
    let edits = (b >> 2) % (MAX_EDITS + 1);
    for _ in 0..edits {
        let edit = Edit { kind: input.u8(), pos: input.u16(), value: input.u8() };
        edit.apply(&mut bytes);
    }
    let decoded = internals::decode_block::<KvDoc>(&bytes, DOC);
    if edits == 0 {
        let envs = decoded.as_ref().expect("a signed run decodes");
        assert_eq!(*envs, run, "a run does not decode to itself");
        envs[last].verify_head().expect("the signer's own head signature verifies");
    }
    let Ok(envs) = decoded else { return };
    let verified = envs.last().is_some_and(|e| e.verify_head().is_ok());
    if verified {
        let suffix = run.len() >= envs.len() && run[run.len() - envs.len()..] == envs[..];
        assert!(suffix, "an altered run verifies: signed {run:?}, decoded {envs:?}");
    }
    check_decoded(&envs);
}

/// Checks every decoded run gets: the round trip and a replica's
/// treatment of it.
fn check_decoded(envs: &[OpEnvelope<KvOp>]) {
    let bytes = internals::block_of(envs).expect("a decoded run is not empty");
    let again = internals::decode_block::<KvDoc>(&bytes, DOC).expect("a re-encoded run decodes");
    assert_eq!(again, envs, "a re-encoded run decodes to something else");
    assert_eq!(internals::block_of(&again), Some(bytes), "re-encoding is not a fixed point");

    let tmp = crate::temp_dir();
    let opts = options();
    let dir = tmp.path().join("replica");
    from_template(&dir, "empty", |d| open_as(d, LOCAL_SEED, options()).close().expect("closing a replica"));
    let mut r = open_as(&dir, LOCAL_SEED, opts.clone());
    let before = observe(&r);
    let result = r.receive(envs.to_vec());
    let after = observe(&r);
    let (head, env) = (&envs[envs.len() - 1], &envs[0]);
    if env.succeeds().is_some() {
        // A certificate is checked before the signature, and may make the
        // actor another's successor: only the refusal of a bad one is checked.
        if head.verify_head().is_err() {
            assert!(result.is_err(), "a badly signed run with a certificate gave {result:?}");
            assert_eq!(after, before, "a badly signed run changed the replica");
        }
        return;
    }
    if head.verify_head().is_err() {
        assert!(
            matches!(&result, Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { actor, seq })))
                if *actor == env.actor() && *seq == env.seq()),
            "receiving a badly signed run gave {result:?}"
        );
        assert_eq!(after, before, "a badly signed run changed the replica");
        return;
    }
    if let Ok(report) = &result {
        let grew = after.clock.iter().map(|(_, &s)| u128::from(s)).sum::<u128>();
        assert_eq!(grew, report.applied as u128, "the version vector does not match the operations applied");
    }
    let sizes_ok = envs.iter().all(|e| e.op_bytes().len() <= opts.max_op_size);
    let authors_ok = envs.iter().all(|e| KvDoc::check_author(e.op(), &e.actor()).is_ok());
    if envs.len() > 1 {
        if env.seq() == 1 && sizes_ok && authors_ok {
            let report = result.expect("a valid run from sequence number 1 is applied");
            assert_eq!((report.applied, report.buffered), (envs.len(), 0), "a valid run: {report:?}");
            check_applied(&after, envs);
            check_reopen(r, LOCAL_SEED, opts);
        }
        return;
    }
    if !authors_ok {
        assert!(
            matches!(&result, Err(ReceiveError::Peer(PeerError::Rejected { actor, seq, .. })) if *actor == env.actor() && *seq == env.seq()),
            "receiving a forged put gave {result:?}"
        );
        assert_eq!(after, before, "a forged put changed the replica");
        return;
    }
    if env.seq() > 1 {
        let report = result.expect("an early operation is buffered");
        assert_eq!((report.applied, report.buffered), (0, 1), "an early operation: {report:?}");
        assert_eq!((after.clock, after.state), (before.clock, before.state), "an early operation was applied");
        assert_eq!(after.buffered, 1, "an early operation is not buffered");
        return;
    }
    if !sizes_ok {
        assert!(matches!(result, Err(ReceiveError::TooLarge { .. })), "an oversized operation gave {result:?}");
        assert_eq!(after, before, "an oversized operation changed the replica");
        return;
    }
    let report = result.expect("a valid first operation is applied");
    assert_eq!((report.applied, report.buffered), (1, 0), "a valid first operation: {report:?}");
    check_applied(&after, envs);
    check_reopen(r, LOCAL_SEED, opts);
}

/// The replica holds exactly `envs` (one actor's, from sequence number 1).
fn check_applied(after: &crate::harness::Observed, envs: &[OpEnvelope<KvOp>]) {
    let mut doc = KvDoc::default();
    for env in envs {
        doc.apply(env.op().clone());
    }
    let clock: VersionVector = [(envs[0].actor(), envs.len() as u64)].into_iter().collect();
    assert_eq!(after.clock, clock, "the version vector after a run");
    assert!(after.state.canonical() == doc.canonical(), "the state after a run");
}
