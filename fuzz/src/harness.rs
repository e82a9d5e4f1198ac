//! Shared code of the sync targets `gossip` and `sync_exchange` (and of
//! `envelope` and `converge`): the replica under test, signed operations
//! built from input bytes, and the oracle that says what a message from a
//! hostile peer may change.
//!
//! # The replica under test
//!
//! [`replica`] opens a fresh replica of a [`KvDoc`] (fresh per input, in a
//! temp directory, with the fixed key [`LOCAL_SEED`] so that runs are
//! reproducible and seeds can name its actor) for the document [`DOC`]. It
//! writes [`LOCAL_OPS`] operations of its own; a [`Setup`] byte can add a
//! checkpoint (so catch-up answers become snapshots and old operations lose
//! their log records) and up to three more operations after it. Its causal
//! buffer is small ([`BUFFER_LIMIT`], [`BUFFER_PER_ACTOR`]) and [`limits`]
//! are small, so inputs reach every limit.
//!
//! # Signed operations from input bytes ([`OpSpec`], 6 bytes each)
//!
//! Random bytes never carry a valid ed25519 signature, so the structured
//! modes describe operations that the harness signs itself, with one of
//! four keys: three peers ([`PEER_SEEDS`]) and the replica's own
//! ([`LOCAL_SEED`]: a peer replaying or forging its history), then damage
//! them in a chosen way:
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | signer, modulo 4: 0..=2 a peer, 3 the replica's own key |
//! | 1 | sequence number (see [`seq_of`]): `0x00..=0x7F` are 1 to 6, `0x80..=0xEF` are 0 to 111, `0xF0..` are `u64::MAX - 0..=15` |
//! | 2 | shape: bit 0 delete (else put); bit 1 the put's dot names the next signer (a forgery `check_author` refuses); bits 2-3 the key `k0..k3`; bits 4-7 the value `v0..v15` |
//! | 3 | seen dots: bit `i` adds the dot (signer `i % 4`, counter `1 + i / 4`) |
//! | 4 | damage after signing, modulo 8: see the `TAMPER_*` constants |
//! | 5 | parameter of the damage |
//!
//! A message ([`MessageSpec`]) is a header byte (bits 0-1: 3 = addressed to
//! [`OTHER_DOC`], else [`DOC`]; bit 2: a page's `more` flag; bits 3-5: the
//! number of operations, 0 to 7) followed by that many operation specs.
//!
//! # The oracle
//!
//! Every operation of a message is judged independently of the replica
//! ([`judge_ops`]): the message is refused as a whole if its document is not
//! [`DOC`] or one of its operations does not decode; otherwise an operation
//! is *valid* if its signature verifies for [`DOC`] and its author check
//! passes. Then ([`Twin::check`]):
//! - a message refused as a whole fails with a peer-fault error and leaves
//!   the replica's version vector, canonical state and number of buffered
//!   operations unchanged;
//! - a message without any valid operation leaves all three unchanged,
//!   whatever the result (nothing unverified is applied or buffered);
//! - a message with valid and invalid operations has exactly the effect of
//!   its valid operations before the first bad signature (the replica stops
//!   there): a second replica (the *twin*, same setup) that received only
//!   those operations of every message so far ends
//!   in the same state, buffer included;
//! - a message of valid operations only fails, if at all, because the
//!   buffer is full, never as a peer fault;
//! - when the replica reports success, its version vector grew by exactly
//!   the number of operations it says it applied.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde_bytes::ByteBuf;
use walrus::replica::ACTOR_FILE;
use walrus::replica::{
    ActorId, ActorKey, Document, Dot, KvDoc, KvOp, OpEnvelope, ReceiveError, Received, Replica, ReplicaOptions,
    Signature, VersionVector,
};
use walrus::sync::{self, Limits, SyncError};
use walrus::wal::{SyncPolicy, WalOptions};

use crate::Bytes;

/// The document every replica under test holds; signatures bind it.
pub const DOC: &str = "doc";
/// Another valid document name (messages routed to the wrong document).
pub const OTHER_DOC: &str = "other";
/// Operations the replica wrote itself before the input's messages arrive.
pub const LOCAL_OPS: usize = 3;
/// Seed of the replica's own key.
pub const LOCAL_SEED: [u8; 32] = [0x10; 32];
/// Seeds of the peers' keys.
pub const PEER_SEEDS: [[u8; 32]; 3] = [[0x21; 32], [0x22; 32], [0x23; 32]];
/// Most early operations the replica holds at once.
pub const BUFFER_LIMIT: usize = 8;
/// Most early operations it holds for one actor.
pub const BUFFER_PER_ACTOR: usize = 4;
/// Most messages a structured input sends.
pub const MAX_MESSAGES: usize = 8;
/// Most operations in a structured message.
pub const MAX_MESSAGE_OPS: usize = 7;

/// The limits the targets run with.
pub fn limits() -> Limits {
    Limits { max_gossip: 8 << 10, max_request: 4 << 10, max_response: 16 << 10, max_op: 2 << 10 }
}

/// Options of the replica under test: no fsync (the file system is memory
/// anyway), no automatic checkpoints, small limits.
pub fn options() -> ReplicaOptions {
    let mut wal = WalOptions::new(SyncPolicy::None).segment_size(4096);
    wal.preallocate = false;
    ReplicaOptions {
        wal,
        checkpoint_bytes: 0,
        max_op_size: limits().max_op,
        buffer_limit: BUFFER_LIMIT,
        buffer_per_actor: BUFFER_PER_ACTOR,
        document: Some(DOC.into()),
        ..ReplicaOptions::default()
    }
}

/// Opens the replica in `dir` as the actor of `seed`: the key file is
/// written before the first open, so the actor (and every signature, ed25519
/// being deterministic) is the same on every run.
pub fn open_as(dir: &Path, seed: [u8; 32], opts: ReplicaOptions) -> Replica<KvDoc> {
    let key = dir.join(ACTOR_FILE);
    if !key.exists() {
        fs::create_dir_all(dir).expect("creating a replica dir");
        ActorKey::from_seed(seed).store(&key).expect("storing an actor key");
    }
    Replica::open(dir, opts).expect("opening a replica")
}

/// How the replica under test is prepared (one input byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Setup {
    /// Bit 0: checkpoint after the first [`LOCAL_OPS`] operations.
    pub checkpoint: bool,
    /// Bits 1-2: this many more local operations after that.
    pub extra: u8,
}

impl Setup {
    pub fn parse(b: u8) -> Setup {
        Setup { checkpoint: b & 1 != 0, extra: (b >> 1) & 3 }
    }

    pub fn to_byte(self) -> u8 {
        u8::from(self.checkpoint) | (self.extra & 3) << 1
    }
}

/// A fresh replica under test in `dir` (see the module documentation). Its
/// local operations put `k0`, `k1`, … so that input operations can see and
/// overwrite them. Their values are long enough that the first
/// [`LOCAL_OPS`] fill more than one 4 KiB log segment, so that a checkpoint
/// deletes some of their records.
pub fn replica(dir: &Path, setup: Setup) -> Replica<KvDoc> {
    from_template(dir, &format!("sync-{}", setup.to_byte()), |dir| {
        let mut r = open_as(dir, LOCAL_SEED, options());
        let value = format!("local {}", "x".repeat(1400));
        let write = |r: &mut Replica<KvDoc>, i: usize| {
            r.update(|d: &KvDoc, a| d.put_op(a, &format!("k{}", i % 4), &value)).expect("a local write");
        };
        for i in 0..LOCAL_OPS {
            write(&mut r, i);
        }
        if setup.checkpoint {
            r.checkpoint().expect("a checkpoint");
        }
        for i in 0..usize::from(setup.extra) {
            write(&mut r, LOCAL_OPS + i);
        }
        r.close().expect("closing a replica");
    });
    open_as(dir, LOCAL_SEED, options())
}

/// Files of a directory tree: relative path and contents.
type Files = Vec<(PathBuf, Vec<u8>)>;

/// Fills `dir` with a copy of the directory `build` makes (a replica,
/// closed). Building means signing and syncing; copying is far cheaper, so
/// each `id` is built once per process and kept in memory (not on disk:
/// nothing is left behind when the process ends).
pub fn from_template(dir: &Path, id: &str, build: impl FnOnce(&Path)) {
    static TEMPLATES: OnceLock<Mutex<HashMap<String, Arc<Files>>>> = OnceLock::new();
    let templates = TEMPLATES.get_or_init(Default::default);
    // A panic while building poisons nothing worth keeping: the map only
    // ever holds complete templates.
    let known = templates.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned();
    let files = match known {
        Some(files) => files,
        None => {
            let tmp = crate::temp_dir();
            build(tmp.path());
            let mut files = Vec::new();
            read_tree(tmp.path(), Path::new(""), &mut files);
            let files = Arc::new(files);
            templates.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_string(), files.clone());
            files
        }
    };
    for (rel, bytes) in files.iter() {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("creating a replica dir");
        }
        fs::write(&path, bytes).expect("copying a replica file");
    }
}

fn read_tree(root: &Path, rel: &Path, out: &mut Files) {
    for entry in fs::read_dir(root.join(rel)).expect("listing a template") {
        let entry = entry.expect("listing a template");
        let rel = rel.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            read_tree(root, &rel, out);
        } else {
            out.push((rel.clone(), fs::read(root.join(&rel)).expect("reading a template")));
        }
    }
}

/// Everything a message may or may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub clock: VersionVector,
    /// The state. (Compared with `==`: for a `KvDoc`, made of ordered maps
    /// and sets, that is equality of `Document::canonical`, and cheaper.)
    pub state: KvDoc,
    pub buffered: usize,
}

pub fn observe(r: &Replica<KvDoc>) -> Observed {
    Observed { clock: r.clock().clone(), state: r.doc().clone(), buffered: r.buffered() }
}

/// Operations a version vector covers. (Not `VersionVector::total`: a
/// hostile snapshot can bring sequence numbers whose sum overflows.)
pub fn covered(clock: &VersionVector) -> u128 {
    clock.iter().map(|(_, &s)| u128::from(s)).sum()
}

/// Closes `r` and opens its directory again: the version vector and state
/// must come back as they were (what was applied is durable; only the
/// in-memory buffer is lost).
pub fn check_reopen(r: Replica<KvDoc>, seed: [u8; 32], opts: ReplicaOptions) -> Replica<KvDoc> {
    let dir = r.dir().to_path_buf();
    let before = observe(&r);
    r.close().expect("closing a replica");
    let again = open_as(&dir, seed, opts);
    let after = observe(&again);
    assert_eq!(after.clock, before.clock, "reopening changed the version vector");
    assert!(after.state == before.state, "reopening changed the state");
    assert_eq!(after.buffered, 0, "a reopened replica has buffered operations");
    again
}

/// The four signing keys: the peers', then the replica's own. (Deriving a
/// public key is a scalar multiplication: do it once.)
fn keys() -> &'static [ActorKey; 4] {
    static KEYS: OnceLock<[ActorKey; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            ActorKey::from_seed(PEER_SEEDS[0]),
            ActorKey::from_seed(PEER_SEEDS[1]),
            ActorKey::from_seed(PEER_SEEDS[2]),
            ActorKey::from_seed(LOCAL_SEED),
        ]
    })
}

/// Signing key `i % 4` (3 is the replica's own).
pub fn key(i: u8) -> &'static ActorKey {
    &keys()[usize::from(i % 4)]
}

/// Actor `i % 4`.
pub fn actor(i: u8) -> ActorId {
    key(i).actor()
}

/// The sequence number a spec byte stands for (small ones are common, 0 and
/// the top of the range are reachable).
pub fn seq_of(b: u8) -> u64 {
    match b {
        0x00..=0x7F => 1 + u64::from(b % 6),
        0x80..=0xEF => u64::from(b - 0x80),
        _ => u64::MAX - u64::from(b - 0xF0),
    }
}

/// A byte [`seq_of`] maps to `seq`, if any.
pub fn seq_byte(seq: u64) -> Option<u8> {
    match seq {
        1..=6 => Some(seq as u8 - 1),
        0..=111 => Some(0x80 + seq as u8),
        s if s >= u64::MAX - 15 => Some(0xF0 + (u64::MAX - s) as u8),
        _ => None,
    }
}

/// The key-value operation a spec's shape and seen bytes describe, by
/// `author` at sequence number `seq` (also the put's dot counter); a forged
/// put names `other` in its dot.
pub fn kv_op(shape: u8, seen: u8, author: ActorId, other: ActorId, seq: u64) -> KvOp {
    let key = format!("k{}", (shape >> 2) & 3);
    let seen = (0..8u8)
        .filter(|i| seen >> i & 1 == 1)
        .map(|i| Dot { actor: actor(i % 4), counter: 1 + u64::from(i / 4) })
        .collect();
    if shape & 1 == 1 {
        KvOp::Del { key, seen }
    } else {
        let dot_actor = if shape & 2 != 0 { other } else { author };
        KvOp::Put { key, dot: Dot { actor: dot_actor, counter: seq }, value: format!("v{}", shape >> 4), seen }
    }
}

/// No damage.
pub const TAMPER_NONE: u8 = 0;
/// Flip bit `param % 4` of signature byte `param / 4`.
pub const TAMPER_SIG_BIT: u8 = 1;
/// Change the sequence number after signing.
pub const TAMPER_SEQ: u8 = 2;
/// Sign for [`OTHER_DOC`] instead of [`DOC`].
pub const TAMPER_DOC: u8 = 3;
/// Change the operation (its key and value) after signing.
pub const TAMPER_OP: u8 = 4;
/// Name another of the four actors after signing.
pub const TAMPER_ACTOR: u8 = 5;
/// Carry the previous operation's signature (all zeros for the first).
pub const TAMPER_PREV_SIG: u8 = 6;
/// Name the actor `[param; 32]`, mostly not a valid public key.
pub const TAMPER_NOT_A_KEY: u8 = 7;

/// One operation of a structured input (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpSpec {
    pub signer: u8,
    pub seq: u8,
    pub shape: u8,
    pub seen: u8,
    pub tamper: u8,
    pub param: u8,
}

impl OpSpec {
    pub const LEN: usize = 6;

    pub fn parse(b: &mut Bytes<'_>) -> OpSpec {
        OpSpec { signer: b.u8(), seq: b.u8(), shape: b.u8(), seen: b.u8(), tamper: b.u8(), param: b.u8() }
    }

    pub fn to_bytes(self) -> [u8; OpSpec::LEN] {
        [self.signer, self.seq, self.shape, self.seen, self.tamper, self.param]
    }

    /// A valid operation: `signer` (0..=3) puts `v<value>` to `k<key>` as
    /// its operation `seq`.
    pub fn put(signer: u8, seq: u64, key: u8, value: u8) -> OpSpec {
        let seq = seq_byte(seq).expect("a sequence number a spec can express");
        OpSpec { signer, seq, shape: (key & 3) << 2 | (value & 15) << 4, ..OpSpec::default() }
    }

    /// The envelope, signed and then damaged as described, and whether it
    /// is valid (by construction: undamaged, or carrying the previous
    /// operation's signature which happens to be its own, and passing the
    /// author check). `prev` is the previous operation's signature in the
    /// same message.
    pub fn build(&self, prev: Option<&Signature>) -> (OpEnvelope<KvOp>, bool) {
        let seq = seq_of(self.seq);
        let tamper = self.tamper % 8;
        let mut env = signed_cached(self.signer, tamper == TAMPER_DOC, seq, self.shape, self.seen);
        let valid = match tamper {
            TAMPER_NONE => true,
            TAMPER_PREV_SIG => prev == Some(&env.sig),
            _ => false,
        };
        match tamper {
            TAMPER_SIG_BIT => env.sig.0[usize::from(self.param / 4)] ^= 1 << (self.param % 4),
            TAMPER_SEQ => env.seq = env.seq.wrapping_add(1 + u64::from(self.param % 4)).max(1),
            TAMPER_OP => match &mut env.op {
                KvOp::Put { value, .. } => value.push('!'),
                KvOp::Del { key, .. } => key.push('!'),
            },
            TAMPER_ACTOR => env.actor = actor(self.signer.wrapping_add(1 + self.param % 3)),
            TAMPER_PREV_SIG => env.sig = prev.copied().unwrap_or(Signature([0; 64])),
            TAMPER_NOT_A_KEY => env.actor = ActorId([self.param; 32]),
            _ => {}
        }
        let valid = valid && KvDoc::check_author(&env.op, &env.actor).is_ok();
        (env, valid)
    }

    /// The envelope of [`build`](Self::build).
    pub fn envelope(&self, prev: Option<&Signature>) -> OpEnvelope<KvOp> {
        self.build(prev).0
    }
}

/// The operation `signer` signs for a spec (for [`OTHER_DOC`] if
/// `other_doc`). Signing dominates the cost of building an input and the
/// same operations recur from input to input, so they are remembered (up
/// to a bound; the result does not depend on it).
fn signed_cached(signer: u8, other_doc: bool, seq: u64, shape: u8, seen: u8) -> OpEnvelope<KvOp> {
    type Cache = HashMap<(u8, bool, u64, u8, u8), OpEnvelope<KvOp>>;
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(HashMap::new());
    }
    let signer = signer % 4;
    CACHE.with_borrow_mut(|cache| {
        if cache.len() >= 1 << 16 {
            cache.clear();
        }
        cache
            .entry((signer, other_doc, seq, shape, seen))
            .or_insert_with(|| {
                let op = kv_op(shape, seen, actor(signer), actor(signer.wrapping_add(1)), seq);
                let doc = if other_doc { OTHER_DOC } else { DOC };
                OpEnvelope::signed(key(signer), doc, seq, op).expect("signing an operation")
            })
            .clone()
    })
}

/// One message of a structured input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageSpec {
    /// Addressed to [`OTHER_DOC`].
    pub wrong_doc: bool,
    /// A page's `more` flag (gossip has none).
    pub more: bool,
    pub ops: Vec<OpSpec>,
}

impl MessageSpec {
    pub fn parse(b: &mut Bytes<'_>) -> MessageSpec {
        let h = b.u8();
        let n = usize::from(h >> 3 & 7);
        let ops = (0..n).map(|_| OpSpec::parse(b)).collect();
        MessageSpec { wrong_doc: h & 3 == 3, more: h & 4 != 0, ops }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(self.ops.len() <= MAX_MESSAGE_OPS, "too many operations for a message spec");
        let h = if self.wrong_doc { 3 } else { 0 } | u8::from(self.more) << 2 | (self.ops.len() as u8) << 3;
        let mut out = vec![h];
        for op in &self.ops {
            out.extend_from_slice(&op.to_bytes());
        }
        out
    }

    pub fn doc(&self) -> &'static str {
        if self.wrong_doc {
            OTHER_DOC
        } else {
            DOC
        }
    }

    /// The envelopes, encoded as they travel, and what a receiver must
    /// make of them: `None` if the message must be refused as a whole
    /// (misaddressed, or an operation with sequence number 0, which does
    /// not decode), else every envelope with its validity (see
    /// [`OpSpec::build`]). The same verdict as [`judge_ops`] gives, without
    /// verifying signatures again.
    pub fn build(&self) -> (Vec<ByteBuf>, Verdict) {
        let mut prev: Option<Signature> = None;
        let mut bytes = Vec::with_capacity(self.ops.len());
        let mut judged = Vec::with_capacity(self.ops.len());
        for spec in &self.ops {
            let (env, valid) = spec.build(prev.as_ref());
            prev = Some(env.sig);
            bytes.push(ByteBuf::from(env.encode().expect("encoding an operation")));
            judged.push((env, valid));
        }
        let refused = self.wrong_doc || judged.iter().any(|(env, _)| env.seq == 0);
        (bytes, (!refused).then_some(judged))
    }
}

/// The messages of a structured input body (at most [`MAX_MESSAGES`]).
pub fn parse_messages(body: &[u8]) -> Vec<MessageSpec> {
    let mut b = Bytes::new(body);
    let mut out = Vec::new();
    while !b.is_empty() && out.len() < MAX_MESSAGES {
        out.push(MessageSpec::parse(&mut b));
    }
    out
}

/// Encodes messages as a structured input body.
pub fn messages_to_bytes(msgs: &[MessageSpec]) -> Vec<u8> {
    msgs.iter().flat_map(MessageSpec::to_bytes).collect()
}

/// Whether a replica of [`DOC`] may accept `env` from a peer: signed by its
/// actor for this document, and claiming no other actor's identity.
pub fn is_valid(env: &OpEnvelope<KvOp>) -> bool {
    env.verify(DOC).is_ok() && KvDoc::check_author(&env.op, &env.actor).is_ok()
}

/// What a receiver must make of a message's operations: `None` if the
/// message must be refused as a whole, else every operation with whether it
/// is valid.
pub type Verdict = Option<Vec<(OpEnvelope<KvOp>, bool)>>;

/// Judges a message's operations independently of the replica: `None` if
/// the message must be refused as a whole (not for [`DOC`], or an operation
/// that does not decode), else every operation with its validity.
pub fn judge_ops(doc: &str, ops: &[ByteBuf]) -> Verdict {
    if sync::check_doc_name(doc).is_err() || doc != DOC {
        return None;
    }
    ops.iter()
        .map(|bytes| {
            let env = OpEnvelope::<KvOp>::decode(bytes, limits().max_op).ok()?;
            let valid = is_valid(&env);
            Some((env, valid))
        })
        .collect()
}

/// True for the errors that refuse a message as a whole, before any of its
/// operations reaches the replica.
pub fn is_refusal(e: &SyncError) -> bool {
    matches!(e, SyncError::Message(_) | SyncError::Envelope(_) | SyncError::WrongDoc { .. })
}

/// The valid-only twin of a replica under test: same setup, receives only
/// the valid operations of each message. It is created on first need (a
/// message mixing valid and invalid operations) and then receives, message
/// by message, the valid operations it missed; from then on it is compared
/// after every message.
pub struct Twin {
    dir: PathBuf,
    setup: Setup,
    replica: Option<Replica<KvDoc>>,
    missed: Vec<Vec<OpEnvelope<KvOp>>>,
}

impl Twin {
    /// A twin that would live in `dir` (not created yet).
    pub fn new(dir: PathBuf, setup: Setup) -> Twin {
        Twin { dir, setup, replica: None, missed: Vec::new() }
    }

    fn deliver(&mut self, valid: Vec<OpEnvelope<KvOp>>) {
        match &mut self.replica {
            // Its result is not compared: an error there is one of the
            // valid operations' own (a full buffer), and the states are.
            Some(r) => drop(r.receive(valid)),
            None => self.missed.push(valid),
        }
    }

    fn get(&mut self) -> &Replica<KvDoc> {
        let missed = &mut self.missed;
        let (dir, setup) = (&self.dir, self.setup);
        self.replica.get_or_insert_with(|| {
            let mut r = replica(dir, setup);
            for valid in missed.drain(..) {
                drop(r.receive(valid));
            }
            r
        })
    }

    /// Checks what one message did to `r` (see the module documentation).
    /// `before` is `r` before the message, `verdict` what [`judge_ops`]
    /// said, `result` the replica's report.
    pub fn check(
        &mut self,
        r: &Replica<KvDoc>,
        before: &Observed,
        verdict: Verdict,
        result: &Result<Received, SyncError>,
    ) {
        let after = observe(r);
        let Some(ops) = verdict else {
            match result {
                Err(e) if is_refusal(e) => assert!(e.is_peer_fault(), "a refusal that is no peer fault: {e}"),
                other => panic!("a message that must be refused as a whole gave {other:?}"),
            }
            assert_eq!(after, *before, "a refused message changed the replica");
            self.deliver(Vec::new());
            return;
        };
        if let Err(e) = result {
            assert!(!is_refusal(e), "a well-formed message was refused as a whole: {e}");
        }
        let total = ops.len();
        // A bad signature ends the replica's work on a message: only the
        // operations before it count.
        let cut = ops.iter().position(|(e, _)| e.verify(DOC).is_err()).unwrap_or(total);
        let valid: Vec<_> = ops.into_iter().take(cut).filter(|(_, v)| *v).map(|(e, _)| e).collect();
        if valid.is_empty() {
            assert_eq!(after, *before, "a message without a valid operation changed the replica ({result:?})");
        }
        if valid.len() == total {
            if let Err(e) = result {
                assert!(
                    matches!(e, SyncError::Receive(ReceiveError::BufferFull(_))),
                    "a message of validly signed operations failed: {e}"
                );
            }
        }
        if let Ok(report) = result {
            let grew = covered(&after.clock).checked_sub(covered(&before.clock));
            assert_eq!(grew, Some(report.applied as u128), "the version vector does not match the operations applied");
        }
        let mixed = !valid.is_empty() && valid.len() < total;
        self.deliver(valid);
        if mixed || self.replica.is_some() {
            let twin = observe(self.get());
            assert_eq!(after, twin, "operations without a valid signature changed what the valid ones did");
        }
    }
}
