//! The `envelope` target: `OpEnvelope::<KvOp>::decode` and `verify` on
//! arbitrary bytes and on damaged encodings of validly signed operations,
//! then `Replica::receive` of whatever decodes.
//!
//! Input layout: byte 0 is the mode.
//!
//! - Even: raw. Bytes 1.. are the encoded envelope.
//! - Odd: mutation. The harness signs an operation, encodes it, edits the
//!   encoding and decodes the result:
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | signer: `ActorKey::from_seed([b; 32])` |
//! | 2 | sequence number ([`seq_of`]) |
//! | 3, 4 | the operation: shape and seen bytes of an [`OpSpec`](crate::harness::OpSpec) (a forged put names the first peer) |
//! | 5 | number of edits, modulo `MAX_EDITS + 1` |
//! | 6.. | edits of 4 bytes: kind (modulo 6, see [`Edit`]), position (u16 LE, modulo the current length), value |
//!
//! Checks:
//! - decoding never panics and refuses more than [`limits`]`().max_op` bytes;
//! - a decoded envelope re-encodes to bytes that decode to the same
//!   envelope and re-encode to themselves (the log stores re-encodings);
//! - mutation mode: without edits the original comes back and verifies;
//!   with edits, an envelope that decodes to the signed actor, sequence
//!   number, operation and signature verifies, and one that differs in any
//!   of them does not (strict verification: no malleated signature passes,
//!   and no other signature can be made without the key);
//! - a fresh replica of [`DOC`] without operations receiving the envelope:
//!   a bad signature fails with `BadSignature` for exactly that (actor,
//!   seq) and changes neither version vector, state nor buffer; a valid
//!   one whose put names another actor is `Rejected` and changes nothing;
//!   a valid sequence number 1 is applied (the state is the operation
//!   applied to an empty document) and survives a reopen; a valid later one
//!   is buffered and nothing else changes.

use crdts::CmRDT;
use walrus::replica::{
    ActorKey, Document, EnvelopeError, KvDoc, KvOp, OpEnvelope, PeerError, ReceiveError, VersionVector,
};

use crate::harness::{
    actor, check_reopen, from_template, kv_op, limits, observe, open_as, options, seq_of, DOC, LOCAL_SEED,
};
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
        if let Ok(env) = OpEnvelope::<KvOp>::decode(input.rest(), limits().max_op) {
            check_decoded(&env);
        }
        return;
    }
    let key = ActorKey::from_seed([input.u8(); 32]);
    let seq = seq_of(input.u8());
    let (shape, seen) = (input.u8(), input.u8());
    let op = kv_op(shape, seen, key.actor(), actor(0), seq);
    let signed = OpEnvelope::signed(&key, DOC, seq, op).expect("signing an operation");
    let mut bytes = signed.encode().expect("encoding an operation");
    let edits = input.u8() % (MAX_EDITS + 1);
    for _ in 0..edits {
        let edit = Edit { kind: input.u8(), pos: input.u16(), value: input.u8() };
        edit.apply(&mut bytes);
    }
    let decoded = OpEnvelope::<KvOp>::decode(&bytes, limits().max_op);
    if edits == 0 {
        // A signed sequence number 0 is refused by the decoder; anything
        // else must come back as it was signed.
        match &decoded {
            Ok(env) => assert_eq!(*env, signed, "an envelope does not decode to itself"),
            Err(e) => assert!(seq == 0 && matches!(e, EnvelopeError::ZeroSeq), "an envelope does not decode: {e}"),
        }
    }
    let Ok(env) = decoded else { return };
    let same = env.actor == signed.actor && env.seq == signed.seq && env.op == signed.op;
    let verified = env.verify(DOC).is_ok();
    if same && env.sig == signed.sig {
        assert!(verified, "the signer's own signature does not verify");
    } else {
        assert!(!verified, "an altered envelope verifies: signed {signed:?}, decoded {env:?}");
    }
    check_decoded(&env);
}

/// Checks every decoded envelope gets: the round trip and a replica's
/// treatment of it.
fn check_decoded(env: &OpEnvelope<KvOp>) {
    let bytes = env.encode().expect("re-encoding a decoded envelope");
    // The re-encoding may exceed the decoding limit by a byte or so (an
    // actor id sent as an array of small integers is shorter than as a
    // byte string), so it is decoded without one.
    let again = OpEnvelope::<KvOp>::decode(&bytes, usize::MAX).expect("a re-encoded envelope decodes");
    assert_eq!(again, *env, "a re-encoded envelope decodes to something else");
    assert_eq!(again.encode().ok(), Some(bytes.clone()), "re-encoding is not a fixed point");

    let tmp = crate::temp_dir();
    let opts = options();
    let dir = tmp.path().join("replica");
    from_template(&dir, "empty", |d| open_as(d, LOCAL_SEED, options()).close().expect("closing a replica"));
    let mut r = open_as(&dir, LOCAL_SEED, opts.clone());
    let before = observe(&r);
    let result = r.receive([env.clone()]);
    let after = observe(&r);
    if env.verify(DOC).is_err() {
        assert!(
            matches!(&result, Err(ReceiveError::Peer(PeerError::Envelope(EnvelopeError::BadSignature { actor, seq })))
                if *actor == env.actor && *seq == env.seq),
            "receiving a badly signed operation gave {result:?}"
        );
        assert_eq!(after, before, "a badly signed operation changed the replica");
        return;
    }
    if KvDoc::check_author(&env.op, &env.actor).is_err() {
        assert!(
            matches!(&result, Err(ReceiveError::Peer(PeerError::Rejected { actor, seq, .. })) if *actor == env.actor && *seq == env.seq),
            "receiving a forged put gave {result:?}"
        );
        assert_eq!(after, before, "a forged put changed the replica");
        return;
    }
    if env.seq > 1 {
        let report = result.expect("an early operation is buffered");
        assert_eq!((report.applied, report.buffered), (0, 1), "an early operation: {report:?}");
        assert_eq!((after.clock, after.state), (before.clock, before.state), "an early operation was applied");
        assert_eq!(after.buffered, 1, "an early operation is not buffered");
        return;
    }
    if bytes.len() > opts.max_op_size {
        assert!(matches!(result, Err(ReceiveError::TooLarge { .. })), "an oversized operation gave {result:?}");
        assert_eq!(after, before, "an oversized operation changed the replica");
        return;
    }
    let report = result.expect("a valid first operation is applied");
    assert_eq!((report.applied, report.buffered), (1, 0), "a valid first operation: {report:?}");
    let mut doc = KvDoc::default();
    doc.apply(env.op.clone());
    let clock: VersionVector = [(env.actor, 1)].into_iter().collect();
    assert_eq!(after.clock, clock, "the version vector after one operation");
    assert!(after.state.canonical() == doc.canonical(), "the state after one operation");
    check_reopen(r, LOCAL_SEED, opts);
}
