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
//! | 1 | sequence number (see [`seq_of`]): `0x00..=0x7F` are 1 to 6, `0x80..=0xEF` are 0 to 111 (0 is taken as 1: nobody can sign an operation 0), `0xF0..` are `u64::MAX - 0..=15` |
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

use walrus::internals;
use walrus::replica::ACTOR_FILE;
use walrus::replica::{
    ActorId, ActorKey, ChainHash, Document, Dot, KvDoc, KvOp, OpEnvelope, ReceiveError, Received, Replica,
    ReplicaOptions, VersionVector,
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

/// No damage: the operation is signed, a chain head of its own.
pub const TAMPER_NONE: u8 = 0;
/// Flip bit `param % 8` of signature byte `param / 4`.
pub const TAMPER_SIG_BIT: u8 = 1;
/// No signature: only a valid head later in the same run (the signer's
/// next operation, following this one) makes it valid.
pub const TAMPER_UNSIGNED: u8 = 2;
/// Carry the signature of the same operation for [`OTHER_DOC`].
pub const TAMPER_DOC: u8 = 3;
/// Carry the signature of another operation (the value or key changed, or
/// with `param` odd the sequence number moved by `1 + param / 2 % 4`).
pub const TAMPER_OP: u8 = 4;
/// Another of the four actors carries this operation's signature.
pub const TAMPER_ACTOR: u8 = 5;
/// Follow another history: `prev` is `[param; 32]` instead of the hash of
/// the signer's previous operation (validly signed: an equivocation if the
/// receiver holds the real one).
pub const TAMPER_PREV: u8 = 6;
/// The page names the actor `[param; 32]` (mostly not a valid public key)
/// wherever it named the signer.
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

/// The hash of the last operation built for each (actor, seq) in one input,
/// so that an operation follows the one built before it for the previous
/// sequence number (in this message or an earlier one).
pub type Chains = HashMap<(ActorId, u64), ChainHash>;

impl OpSpec {
    pub const LEN: usize = 6;

    pub fn parse(b: &mut Bytes<'_>) -> OpSpec {
        OpSpec { signer: b.u8(), seq: b.u8(), shape: b.u8(), seen: b.u8(), tamper: b.u8(), param: b.u8() }
    }

    pub fn to_bytes(self) -> [u8; OpSpec::LEN] {
        [self.signer, self.seq, self.shape, self.seen, self.tamper, self.param]
    }

    /// A valid operation: `signer` (0..=3) puts `v<value>` to `k<key>` as
    /// its operation `seq`, signed.
    pub fn put(signer: u8, seq: u64, key: u8, value: u8) -> OpSpec {
        let seq = seq_byte(seq).expect("a sequence number a spec can express");
        OpSpec { signer, seq, shape: (key & 3) << 2 | (value & 15) << 4, ..OpSpec::default() }
    }

    /// [`put`](Self::put) without a signature (a later head must cover it).
    pub fn unsigned_put(signer: u8, seq: u64, key: u8, value: u8) -> OpSpec {
        OpSpec { tamper: TAMPER_UNSIGNED, ..OpSpec::put(signer, seq, key, value) }
    }

    /// The envelope for [`DOC`], built and damaged as described; its
    /// `prev` follows `chains` (which learns its hash), else
    /// [`ChainHash::ZERO`]. Also returns the actor the page must name
    /// instead of its own, for [`TAMPER_NOT_A_KEY`].
    pub fn build(&self, chains: &mut Chains) -> (OpEnvelope<KvOp>, Option<ActorId>) {
        // Nobody can sign an operation 0 (pages of runs from 0 are the
        // `page` target's): it stands for 1 here.
        let seq = seq_of(self.seq).max(1);
        let signer = self.signer % 4;
        let tamper = self.tamper % 8;
        let me = actor(signer);
        let prev = match tamper {
            TAMPER_PREV => ChainHash([self.param; 32]),
            _ => seq.checked_sub(1).and_then(|p| chains.get(&(me, p))).copied().unwrap_or(ChainHash::ZERO),
        };
        let env = signed_cached(signer, DOC, seq, prev, self.shape, self.seen);
        let sig_of = |e: &OpEnvelope<KvOp>| e.signature().copied();
        let env = match tamper {
            TAMPER_SIG_BIT => {
                let mut sig = sig_of(&env).expect("a signed operation");
                sig.0[usize::from(self.param / 4) % 64] ^= 1 << (self.param % 8);
                env.with_signature(Some(sig))
            }
            TAMPER_UNSIGNED => env.with_signature(None),
            TAMPER_DOC => {
                let other = signed_cached(signer, OTHER_DOC, seq, prev, self.shape, self.seen);
                env.with_signature(sig_of(&other))
            }
            TAMPER_OP => {
                let (s, shape) = if self.param & 1 == 1 {
                    (seq.wrapping_add(1 + u64::from(self.param / 2 % 4)).max(1), self.shape)
                } else {
                    (seq, self.shape ^ 0x10 ^ (self.param & 0x0c))
                };
                signed_cached(signer, DOC, s, prev, shape, self.seen).with_signature(sig_of(&env))
            }
            TAMPER_ACTOR => {
                let other = signer.wrapping_add(1 + self.param % 3) % 4;
                signed_cached(other, DOC, seq, prev, self.shape, self.seen).with_signature(sig_of(&env))
            }
            _ => env,
        };
        chains.insert((env.actor(), env.seq()), env.hash());
        let rename = (tamper == TAMPER_NOT_A_KEY).then_some(ActorId([self.param; 32]));
        (env, rename)
    }
}

/// The operation `signer` signs for a spec, in document `doc`. Signing
/// dominates the cost of building an input and the same operations recur
/// from input to input, so they are remembered (up to a bound; the result
/// does not depend on it).
fn signed_cached(signer: u8, doc: &'static str, seq: u64, prev: ChainHash, shape: u8, seen: u8) -> OpEnvelope<KvOp> {
    type Cache = HashMap<(u8, &'static str, u64, ChainHash, u8, u8), OpEnvelope<KvOp>>;
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(HashMap::new());
    }
    let signer = signer % 4;
    CACHE.with_borrow_mut(|cache| {
        if cache.len() >= 1 << 16 {
            cache.clear();
        }
        cache
            .entry((signer, doc, seq, prev, shape, seen))
            .or_insert_with(|| {
                let op = kv_op(shape, seen, actor(signer), actor(signer.wrapping_add(1)), seq);
                OpEnvelope::signed::<KvDoc>(key(signer), doc, seq, prev, op).expect("signing an operation")
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

    /// The page the message carries ([`internals::page_of`] of its
    /// envelopes: a run ends at each signed operation, and one ending
    /// unsigned makes the page undecodable), and what a receiver must make
    /// of it ([`judge_page`] with the page limit `limit`). `chains` carries the hashes from message to
    /// message.
    pub fn build(&self, chains: &mut Chains, limit: usize) -> (Vec<u8>, Verdict) {
        let mut envs = Vec::with_capacity(self.ops.len());
        let mut renames = Vec::new();
        for spec in &self.ops {
            let (env, rename) = spec.build(chains);
            if let Some(to) = rename {
                renames.push((env.actor(), to));
            }
            envs.push(env);
        }
        let mut page = internals::page_of(&envs);
        if !renames.is_empty() {
            page = rename_actors(&page, &renames);
        }
        let verdict = judge_page(self.doc(), &page, limit);
        (page, verdict)
    }
}

/// `page` with the actors of its table renamed as `renames` says (the
/// table is the body's count, then 32-byte ids).
fn rename_actors(page: &[u8], renames: &[(ActorId, ActorId)]) -> Vec<u8> {
    let Ok(mut body) = internals::unframe_page(page, usize::MAX) else { return page.to_vec() };
    // Tables in these pages hold at most 4 actors: a one-byte count.
    let count = usize::from(body.first().copied().unwrap_or(0));
    for i in 0..count.min(4) {
        let at = 1 + 32 * i;
        let Some(id) = body.get_mut(at..at + 32) else { break };
        if let Some((_, to)) = renames.iter().find(|(from, _)| from.0[..] == id[..]) {
            id.copy_from_slice(&to.0);
        }
    }
    internals::frame_page(&body)
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

/// One operation of a page as the oracle judges it.
#[derive(Debug, Clone)]
pub struct Judged {
    pub env: OpEnvelope<KvOp>,
    /// A valid head signature of its actor, later in the same run (or its
    /// own), covers it.
    pub covered: bool,
    /// It claims no other actor's identity ([`Document::check_author`]).
    pub author_ok: bool,
}

impl Judged {
    /// Valid: covered and passing the author check.
    pub fn valid(&self) -> bool {
        self.covered && self.author_ok
    }
}

/// What a receiver must make of a message's operations: `None` if the
/// message must be refused as a whole, else every operation judged.
pub type Verdict = Option<Vec<Judged>>;

/// Which of `envs` a valid head covers, by the rule of the chain format
/// (modelled here independently of the library): per actor, a run is
/// consecutive operations each following the one before (sequence number
/// and hash); a head (a signed operation) covers what its run holds
/// since the previous head if its signature verifies, and nothing if not;
/// what no head covers before its run ends is not covered.
pub fn coverage(envs: &[OpEnvelope<KvOp>]) -> Vec<bool> {
    let mut out = vec![false; envs.len()];
    let mut open: HashMap<ActorId, (usize, Vec<usize>)> = HashMap::new();
    for (i, env) in envs.iter().enumerate() {
        let continues = open.get(&env.actor()).is_some_and(|(last, _)| {
            let l = &envs[*last];
            l.seq().checked_add(1) == Some(env.seq()) && l.hash() == env.prev()
        });
        if !continues {
            open.remove(&env.actor());
        }
        let (last, pending) = open.entry(env.actor()).or_default();
        *last = i;
        pending.push(i);
        if env.signature().is_some() {
            let ok = env.verify_head().is_ok();
            for p in pending.drain(..) {
                out[p] = ok;
            }
        }
    }
    out
}

/// Judges a page for document `doc` independently of the replica: `None`
/// if the message must be refused as a whole (not for [`DOC`], or a page
/// that does not decode), else every operation with its coverage and
/// author check.
pub fn judge_page(doc: &str, page: &[u8], limit: usize) -> Verdict {
    if sync::check_doc_name(doc).is_err() || doc != DOC {
        return None;
    }
    let envs = internals::decode_page::<KvDoc>(page, limit, limits().max_op, DOC).ok()?;
    let covered = coverage(&envs);
    Some(
        envs.into_iter()
            .zip(covered)
            .map(|(env, covered)| {
                let author_ok = KvDoc::check_author(env.op(), &env.actor()).is_ok();
                Judged { env, covered, author_ok }
            })
            .collect(),
    )
}

/// `env` signed as a head of its own by its actor, one of the four keys
/// (so that it can be delivered alone with the same hash). `None` if its
/// actor is none of them or its bytes are not how the harness encodes its
/// operation (then no key here signed it).
pub fn resigned(env: &OpEnvelope<KvOp>) -> Option<OpEnvelope<KvOp>> {
    let signer = (0..4u8).find(|&i| actor(i) == env.actor())?;
    let again = OpEnvelope::signed::<KvDoc>(key(signer), DOC, env.seq(), env.prev(), env.op().clone()).ok()?;
    (again.hash() == env.hash()).then(|| env.clone().with_signature(again.signature().copied()))
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
        // An operation no valid head covers ends the replica's work on a
        // message: only the operations before it count.
        let cut = ops.iter().position(|j| !j.covered).unwrap_or(total);
        let valid = ops[..cut].iter().filter(|j| j.valid()).count();
        if valid == 0 {
            assert_eq!(after, *before, "a message without a valid operation changed the replica ({result:?})");
        }
        if valid == total {
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
        // The twin gets every covered operation before the cut (those
        // failing the author check too: the replica saw them, signed),
        // each signed as its own head, so no head of the message is needed.
        let twin_ops: Vec<_> = ops[..cut]
            .iter()
            .map(|j| resigned(&j.env).expect("a covered operation signed by one of the harness's keys"))
            .collect();
        let mixed = valid > 0 && valid < total;
        self.deliver(twin_ops);
        if mixed || self.replica.is_some() {
            let twin = observe(self.get());
            assert_eq!(after, twin, "operations without a valid signature changed what the valid ones did");
        }
    }
}
