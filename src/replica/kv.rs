//! The key-value document: an observed-remove map of multi-value registers,
//! built as a dot store with a causal context.
//!
//! Every write of a value is identified by a *dot* (actor, counter). A key
//! holds the dotted values nobody has overwritten or deleted yet. A write or
//! delete names the dots it has seen for the key and removes exactly those,
//! so a value written concurrently (unseen) survives: concurrent writes show
//! up as several values, and a delete never removes a concurrent write. The
//! causal context remembers every dot seen (added or removed), so an old
//! write that arrives late is not resurrected.
//!
//! This replaces `crdts::Map<_, MVReg<_>>`, whose state merge is not
//! associative once keys are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use crdts::{CmRDT, CvRDT};
use serde::{Deserialize, Serialize};

use super::{varint, ActorId, Document, OpContext};

/// Identifies one write: the writer and its write counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Writer.
    pub actor: ActorId,
    /// The writer's write counter (1, 2, …).
    pub counter: u64,
}

/// Every dot seen, per actor: all counters up to `upto`, plus `extra`
/// counters above it (seen out of order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext(BTreeMap<ActorId, (u64, BTreeSet<u64>)>);

impl CausalContext {
    /// Whether `dot` was seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.0.get(&dot.actor).is_some_and(|(upto, extra)| dot.counter <= *upto || extra.contains(&dot.counter))
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        let (upto, extra) = self.0.entry(dot.actor).or_default();
        if dot.counter > *upto {
            extra.insert(dot.counter);
        }
        // Checked: hostile state may hold u64::MAX.
        while upto.checked_add(1).is_some_and(|next| extra.remove(&next)) {
            *upto += 1;
        }
    }

    /// Union.
    pub fn merge(&mut self, other: &CausalContext) {
        for (actor, (upto, extra)) in &other.0 {
            let e = self.0.entry(*actor).or_default();
            if *upto > e.0 {
                e.0 = *upto;
                e.1.retain(|c| c > upto);
            }
            for c in extra {
                if *c > e.0 {
                    e.1.insert(*c);
                }
            }
            while e.0.checked_add(1).is_some_and(|next| e.1.remove(&next)) {
                e.0 += 1;
            }
        }
    }

    /// Highest contiguous counter seen for `actor`.
    pub fn upto(&self, actor: &ActorId) -> u64 {
        self.0.get(actor).map_or(0, |(u, _)| *u)
    }
}

/// An operation on a [`KvDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets `key` to `value` (as write `dot`), removing the values `seen`.
    Put {
        /// The key.
        key: String,
        /// Identifies this write.
        dot: Dot,
        /// The new value.
        value: String,
        /// Dots of the key's values the writer had seen.
        seen: Vec<Dot>,
    },
    /// Removes the values `seen` from `key`.
    Del {
        /// The key.
        key: String,
        /// Dots of the key's values the writer had seen.
        seen: Vec<Dot>,
    },
}

/// Key-value map whose values are multi-value registers: concurrent writes
/// to a key are all kept until a later write supersedes them; a delete
/// removes only the values it saw.
///
/// ```
/// use walrus::replica::{ActorId, KvDoc};
/// use crdts::CmRDT;
/// let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
/// let mut phone = KvDoc::default();
/// let mut laptop = KvDoc::default();
/// let op1 = phone.put_op(a, "title", "Groceries");
/// let op2 = laptop.put_op(b, "title", "Shopping");
/// phone.apply(op1.clone());
/// laptop.apply(op2.clone());
/// phone.apply(op2);
/// laptop.apply(op1);
/// assert_eq!(phone.values_of("title"), vec!["Groceries", "Shopping"]);
/// assert_eq!(phone.values_of("title"), laptop.values_of("title"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDoc {
    entries: BTreeMap<String, BTreeMap<Dot, String>>,
    context: CausalContext,
}

impl KvDoc {
    fn seen(&self, key: &str) -> Vec<Dot> {
        self.entries.get(key).map(|vals| vals.keys().copied().collect()).unwrap_or_default()
    }

    fn remove_seen(&mut self, key: &str, seen: &[Dot]) {
        for d in seen {
            self.context.insert(*d);
        }
        if let Some(vals) = self.entries.get_mut(key) {
            for d in seen {
                vals.remove(d);
            }
            if vals.is_empty() {
                self.entries.remove(key);
            }
        }
    }
}

/// Building and reading operations.
impl KvDoc {
    /// Operation setting `key` to `value`, superseding every value seen.
    pub fn put_op(&self, actor: ActorId, key: &str, value: &str) -> KvOp {
        let dot = Dot { actor, counter: self.context.upto(&actor).saturating_add(1) };
        KvOp::Put { key: key.to_string(), dot, value: value.to_string(), seen: self.seen(key) }
    }

    /// Operation deleting `key` (values written concurrently survive).
    pub fn del_op(&self, key: &str) -> KvOp {
        KvOp::Del { key: key.to_string(), seen: self.seen(key) }
    }

    /// Current values of `key`, sorted: one normally, several after
    /// concurrent writes, none if absent.
    pub fn values_of(&self, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self.entries.get(key).map(|vals| vals.values().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// All keys with their values, sorted.
    pub fn entries(&self) -> BTreeMap<String, Vec<String>> {
        self.entries
            .iter()
            .map(|(k, vals)| {
                let mut v: Vec<String> = vals.values().cloned().collect();
                v.sort();
                (k.clone(), v)
            })
            .collect()
    }
}

impl CmRDT for KvDoc {
    type Op = KvOp;
    type Validation = Infallible;

    fn validate_op(&self, _op: &KvOp) -> Result<(), Infallible> {
        Ok(())
    }

    fn apply(&mut self, op: KvOp) {
        match op {
            KvOp::Put { key, dot, value, seen } => {
                self.remove_seen(&key, &seen);
                if !self.context.contains(&dot) {
                    self.context.insert(dot);
                    self.entries.entry(key).or_default().insert(dot, value);
                }
            }
            KvOp::Del { key, seen } => self.remove_seen(&key, &seen),
        }
    }
}

impl CvRDT for KvDoc {
    type Validation = Infallible;

    fn validate_merge(&self, _other: &KvDoc) -> Result<(), Infallible> {
        Ok(())
    }

    fn merge(&mut self, other: KvDoc) {
        // A dotted value survives if both sides have it, or if one side has
        // it and the other never saw its dot.
        let mut merged: BTreeMap<String, BTreeMap<Dot, String>> = BTreeMap::new();
        for (key, vals) in &self.entries {
            for (dot, v) in vals {
                let theirs = other.entries.get(key).is_some_and(|o| o.contains_key(dot));
                if theirs || !other.context.contains(dot) {
                    merged.entry(key.clone()).or_default().insert(*dot, v.clone());
                }
            }
        }
        for (key, vals) in other.entries {
            for (dot, v) in vals {
                if !self.context.contains(&dot) {
                    merged.entry(key.clone()).or_default().insert(dot, v);
                }
            }
        }
        self.entries = merged;
        self.context.merge(&other.context);
    }
}

impl Document for KvDoc {
    type Operation = KvOp;

    /// A put of the same value, a delete of the same key, removing what
    /// the original saw — except `distrusted`'s values this state has never
    /// seen (forked writes, which other replicas may hold other operations
    /// for) — and what `actor` already wrote again of the key (so a run of
    /// rewritten puts overwrites itself as the original did). A trusted
    /// original put is replaced by its copy.
    fn reissue(&self, op: &KvOp, distrusted: ActorId, actor: ActorId) -> Option<KvOp> {
        let seen = |key: &str, seen: &[Dot]| -> Vec<Dot> {
            let mut out: Vec<Dot> =
                seen.iter().filter(|d| d.actor != distrusted || self.context.contains(d)).copied().collect();
            let rewritten: Vec<Dot> =
                self.seen(key).into_iter().filter(|d| d.actor == actor && !out.contains(d)).collect();
            out.extend(rewritten);
            out
        };
        Some(match op {
            KvOp::Put { key, value, seen: s, dot: original } => {
                let dot = Dot { actor, counter: self.context.upto(&actor).saturating_add(1) };
                let mut seen = seen(key, s);
                // The original, where trusted, is the same write: replaced.
                if original.actor != distrusted && !seen.contains(original) {
                    seen.push(*original);
                }
                KvOp::Put { key: key.clone(), dot, value: value.clone(), seen }
            }
            KvOp::Del { key, seen: s } => KvOp::Del { key: key.clone(), seen: seen(key, s) },
        })
    }

    fn check_author(op: &KvOp, author: &ActorId) -> Result<(), String> {
        match op {
            KvOp::Put { dot, .. } if dot.actor != *author => {
                Err(format!("it writes as actor {} but is signed by {author}", dot.actor))
            }
            _ => Ok(()),
        }
    }

    /// The compact layout (docs/REPLICA.md, "Operation bytes"), every
    /// integer a LEB128 varint:
    ///
    /// ```text
    /// op       := 0x00 key value dot seen   (Put)
    ///           | 0x01 key seen             (Del)
    /// key      := len bytes                 (UTF-8)
    /// value    := len bytes                 (UTF-8)
    /// dot      := actorref
    /// seen     := n actorref*n
    /// actorref := 0x00 (seq - counter mod 2^64)       (a dot of the author)
    ///           | 0x01 actor(32 bytes) counter        (any other actor's)
    /// ```
    ///
    /// The author's dots are written relative to the operation's sequence
    /// number (wrapping: every counter has exactly one encoding), usually
    /// one byte instead of 33 or more. Fails on a counter 0, which no
    /// write has.
    fn encode_op(op: &KvOp, cx: &OpContext, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let written = encode_kv_op(op, cx, out);
        // A failed encoding leaves nothing half-written behind.
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// Undoes [`encode_op`](Self::encode_op), refusing every byte string
    /// it would not have produced (an unknown tag, invalid UTF-8, a
    /// non-minimal varint, a counter 0 or out of range, the author's dot
    /// written in full, trailing bytes), so an operation has exactly one
    /// encoding.
    fn decode_op(bytes: &[u8], cx: &OpContext) -> Result<KvOp, String> {
        let mut r = Reader { len: bytes.len(), rest: bytes };
        let op = match r.byte("operation tag")? {
            OP_PUT => {
                let key = r.text("key")?;
                let value = r.text("value")?;
                let dot = r.dot("dot", cx)?;
                let seen = r.seen(cx)?;
                KvOp::Put { key, dot, value, seen }
            }
            OP_DEL => {
                let key = r.text("key")?;
                let seen = r.seen(cx)?;
                KvOp::Del { key, seen }
            }
            t => return Err(format!("byte 0: unknown operation tag {t:#04x}")),
        };
        if !r.rest.is_empty() {
            return Err(format!("byte {}: {} bytes after the operation", r.offset(), r.rest.len()));
        }
        Ok(op)
    }
}

/// Operation tags of the compact layout.
const OP_PUT: u8 = 0x00;
const OP_DEL: u8 = 0x01;
/// Actor reference tags: a dot of the operation's author, or of anyone.
const REF_AUTHOR: u8 = 0x00;
const REF_OTHER: u8 = 0x01;
/// The fewest bytes an actor reference takes (a tag and a varint), which
/// bounds how many dots the rest of an input can claim.
const MIN_REF_LEN: usize = 2;

/// The layout of [`KvDoc::encode_op`].
fn encode_kv_op(op: &KvOp, cx: &OpContext, out: &mut Vec<u8>) -> Result<(), String> {
    match op {
        KvOp::Put { key, dot, value, seen } => {
            out.push(OP_PUT);
            varint::put_bytes(out, key.as_bytes());
            varint::put_bytes(out, value.as_bytes());
            put_dot(out, dot, cx).map_err(|e| format!("dot: {e}"))?;
            put_seen(out, seen, cx)
        }
        KvOp::Del { key, seen } => {
            out.push(OP_DEL);
            varint::put_bytes(out, key.as_bytes());
            put_seen(out, seen, cx)
        }
    }
}

fn put_dot(out: &mut Vec<u8>, dot: &Dot, cx: &OpContext) -> Result<(), String> {
    if dot.counter == 0 {
        return Err("counter 0".to_string());
    }
    if dot.actor == *cx.author {
        out.push(REF_AUTHOR);
        varint::put(out, cx.seq.wrapping_sub(dot.counter));
    } else {
        out.push(REF_OTHER);
        out.extend_from_slice(&dot.actor.0);
        varint::put(out, dot.counter);
    }
    Ok(())
}

fn put_seen(out: &mut Vec<u8>, seen: &[Dot], cx: &OpContext) -> Result<(), String> {
    varint::put(out, seen.len() as u64);
    for (i, d) in seen.iter().enumerate() {
        put_dot(out, d, cx).map_err(|e| format!("seen dot {i}: {e}"))?;
    }
    Ok(())
}

/// Untrusted operation bytes being decoded; errors name the field and the
/// byte offset where it starts.
struct Reader<'a> {
    len: usize,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn offset(&self) -> usize {
        self.len - self.rest.len()
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let Some((&b, rest)) = self.rest.split_first() else {
            return Err(format!("byte {}: {what}: truncated", self.offset()));
        };
        self.rest = rest;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let at = self.offset();
        varint::take(&mut self.rest).map_err(|e| format!("byte {at}: {what}: {e}"))
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let at = self.offset();
        let b = varint::take_bytes(&mut self.rest).map_err(|e| format!("byte {at}: {what}: {e}"))?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(format!("byte {at}: {what}: invalid UTF-8: {e}")),
        }
    }

    fn dot(&mut self, what: &str, cx: &OpContext) -> Result<Dot, String> {
        let at = self.offset();
        match self.byte(what)? {
            REF_AUTHOR => {
                let d = varint::take(&mut self.rest).map_err(|e| format!("byte {at}: {what}: {e}"))?;
                let counter = cx.seq.wrapping_sub(d);
                if counter == 0 {
                    return Err(format!("byte {at}: {what}: counter 0"));
                }
                Ok(Dot { actor: *cx.author, counter })
            }
            REF_OTHER => {
                let Some((id, rest)) = self.rest.split_first_chunk::<{ super::ACTOR_ID_LEN }>() else {
                    return Err(format!("byte {at}: {what}: truncated actor id"));
                };
                self.rest = rest;
                let actor = ActorId(*id);
                if actor == *cx.author {
                    return Err(format!("byte {at}: {what}: the author's own dot written in full"));
                }
                let counter = self.varint(what)?;
                if counter == 0 {
                    return Err(format!("byte {at}: {what}: counter 0"));
                }
                Ok(Dot { actor, counter })
            }
            t => Err(format!("byte {at}: {what}: unknown actor reference tag {t:#04x}")),
        }
    }

    fn seen(&mut self, cx: &OpContext) -> Result<Vec<Dot>, String> {
        let at = self.offset();
        let n = self.varint("seen count")?;
        // Checked before reserving: a hostile count must not allocate.
        if n > (self.rest.len() / MIN_REF_LEN) as u64 {
            return Err(format!("byte {at}: seen count {n} exceeds what the {} bytes left can hold", self.rest.len()));
        }
        let mut seen = Vec::with_capacity(n as usize);
        for i in 0..n {
            seen.push(self.dot(&format!("seen dot {i}"), cx)?);
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AUTHOR: ActorId = ActorId([1; 32]);

    fn encode(op: &KvOp, seq: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        KvDoc::encode_op(op, &OpContext { author: &AUTHOR, seq }, &mut out)?;
        Ok(out)
    }

    fn decode(bytes: &[u8], seq: u64) -> Result<KvOp, String> {
        KvDoc::decode_op(bytes, &OpContext { author: &AUTHOR, seq })
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn worked_example_has_the_documented_bytes() {
        let other = ActorId([2; 32]);
        let op = KvOp::Put {
            key: "k".into(),
            dot: Dot { actor: AUTHOR, counter: 5 },
            value: "v".into(),
            seen: vec![Dot { actor: AUTHOR, counter: 3 }, Dot { actor: other, counter: 7 }],
        };
        // 00             Put
        // 01 6b          key "k"
        // 01 76          value "v"
        // 00 00          dot: the author's, 5 - 5 = 0
        // 02             two seen dots
        // 00 02          the author's, 5 - 3 = 2
        // 01 02×32 07    actor [2; 32], counter 7
        // = 00016b017600000200020102020202020202020202020202020202020202020202020202020202020202020207
        let expected = format!("00016b0176000002000201{}07", "02".repeat(32));
        let bytes = encode(&op, 5).unwrap();
        assert_eq!(hex(&bytes), expected);
        assert_eq!(bytes.len(), 44);
        assert_eq!(decode(&bytes, 5), Ok(op));
    }

    #[test]
    fn a_typical_put_is_small() {
        let op = KvOp::Put {
            key: "item-00000042".into(),
            dot: Dot { actor: AUTHOR, counter: 42 },
            value: "value 0000000042".into(),
            seen: vec![],
        };
        let bytes = encode(&op, 42).unwrap();
        let mut cbor = Vec::new();
        ciborium::into_writer(&op, &mut cbor).unwrap();
        println!("compact put: {} bytes ({}), CBOR: {} bytes", bytes.len(), hex(&bytes), cbor.len());
        // The 29 bytes of key and value, plus the tag, two lengths, the
        // author's dot (2) and an empty seen count.
        assert_eq!(bytes.len(), 13 + 16 + 6);
        assert_eq!(decode(&bytes, 42), Ok(op));
    }

    #[test]
    fn non_canonical_and_invalid_bytes_are_refused() {
        let seq = 5;
        let own = "00016b0176000000".to_string();
        let ok = |h: &str| decode(&unhex(h), seq);
        assert!(ok(&own).is_ok());
        // The author's dot written in full.
        let full = format!("00016b017601{}0500", "01".repeat(32));
        let e = ok(&full).unwrap_err();
        assert!(e.contains("author's own dot"), "{e}");
        // Trailing bytes.
        let e = ok(&format!("{own}00")).unwrap_err();
        assert!(e.contains("1 bytes after"), "{e}");
        // Invalid UTF-8 in the key and in the value.
        let e = ok("0001ff0176000000").unwrap_err();
        assert!(e.contains("key") && e.contains("UTF-8"), "{e}");
        let e = ok("00016b01c0000000").unwrap_err();
        assert!(e.contains("value") && e.contains("UTF-8"), "{e}");
        // Counter 0: of another actor, and of the author (seq - 5 = 0).
        let e = ok(&format!("00016b017601{}0000", "02".repeat(32))).unwrap_err();
        assert!(e.contains("counter 0"), "{e}");
        let e = ok("00016b0176000500").unwrap_err();
        assert!(e.contains("counter 0"), "{e}");
        // Past the sequence number the difference wraps: 5 - 10 is the
        // counter 2^64 - 5, which has no other encoding.
        let far = ok("00016b0176000a00").unwrap();
        assert!(matches!(far, KvOp::Put { dot, .. } if dot.counter == u64::MAX - 4));
        // A non-minimal varint (key length 1 as 0x81 0x00).
        assert!(ok("0081006b0176000000").is_err());
        // Unknown tags, a truncated seen dot, an impossible seen count.
        assert!(ok("02016b00").unwrap_err().contains("unknown operation tag"));
        assert!(ok("00016b017602").unwrap_err().contains("unknown actor reference tag"));
        let e = ok("01016b010080").unwrap_err();
        assert!(e.contains("seen dot 0") && e.contains("truncated varint"), "{e}");
        let e = ok("01016bffffffffffffffffff01").unwrap_err();
        assert!(e.contains("seen count"), "{e}");
        assert!(ok("").is_err());
        // Encoding refuses what cannot be decoded.
        let put = |counter| KvOp::Put {
            key: "k".into(),
            dot: Dot { actor: AUTHOR, counter },
            value: "v".into(),
            seen: vec![],
        };
        assert!(encode(&put(0), 5).is_err());
        // Every other counter encodes (and decodes back), whatever the sequence number.
        assert_eq!(decode(&encode(&put(u64::MAX), 1).unwrap(), 1), Ok(put(u64::MAX)));
        assert!(encode(&put(u64::MAX), u64::MAX).is_ok());
        let del = KvOp::Del { key: "k".into(), seen: vec![Dot { actor: ActorId([2; 32]), counter: 0 }] };
        assert!(encode(&del, 5).unwrap_err().contains("seen dot 0: counter 0"));
        // After what `out` held: appended on success, untouched on failure.
        let mut out = vec![0xaa];
        assert!(KvDoc::encode_op(&del, &OpContext { author: &AUTHOR, seq: 5 }, &mut out).is_err());
        assert_eq!(out, [0xaa]);
        KvDoc::encode_op(&put(5), &OpContext { author: &AUTHOR, seq: 5 }, &mut out).unwrap();
        assert_eq!(hex(&out), format!("aa{own}"));
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
    }

    fn arb_seq() -> impl Strategy<Value = u64> {
        prop_oneof![Just(1), Just(u64::MAX), 1..1000u64, any::<u64>().prop_map(|s| s.max(1))]
    }

    fn arb_counter() -> impl Strategy<Value = u64> {
        prop_oneof![Just(1), Just(u64::MAX), 1..1000u64, any::<u64>().prop_map(|c| c.max(1))]
    }

    /// A dot of the author (mostly near `seq`, as real ones are) or of
    /// another actor.
    fn arb_dot(seq: u64) -> impl Strategy<Value = Dot> {
        let own = prop_oneof![
            (0..20u64).prop_map(move |k| seq.saturating_sub(k).max(1)),
            (0..20u64).prop_map(move |k| seq.saturating_add(k)),
            arb_counter(),
        ];
        let actor = prop_oneof![Just(ActorId([2; 32])), Just(ActorId([3; 32])), any::<[u8; 32]>().prop_map(ActorId)];
        prop_oneof![
            own.prop_map(|counter| Dot { actor: AUTHOR, counter }),
            (actor, arb_counter()).prop_map(|(actor, counter)| Dot { actor, counter }),
        ]
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z0-9 é漢🦀-]{0,12}"]
    }

    fn arb_case() -> impl Strategy<Value = (u64, KvOp)> {
        arb_seq().prop_flat_map(|seq| {
            let seen = move || proptest::collection::vec(arb_dot(seq), 0..5);
            let op = prop_oneof![
                (arb_text(), arb_dot(seq), arb_text(), seen()).prop_map(|(key, dot, value, seen)| KvOp::Put {
                    key,
                    dot,
                    value,
                    seen
                }),
                (arb_text(), seen()).prop_map(|(key, seen)| KvOp::Del { key, seen }),
            ];
            (Just(seq), op)
        })
    }

    /// Whether every dot of `op` can be encoded under `seq`.
    fn encodable(op: &KvOp, seq: u64) -> bool {
        let _ = seq;
        let fits = |d: &Dot| d.counter != 0;
        match op {
            KvOp::Put { dot, seen, .. } => fits(dot) && seen.iter().all(fits),
            KvOp::Del { seen, .. } => seen.iter().all(fits),
        }
    }

    proptest! {
        #[test]
        fn operations_round_trip_exactly((seq, op) in arb_case()) {
            match encode(&op, seq) {
                Ok(bytes) => {
                    prop_assert!(encodable(&op, seq));
                    let back = decode(&bytes, seq);
                    prop_assert_eq!(back.as_ref(), Ok(&op));
                    prop_assert_eq!(encode(&back.unwrap(), seq), Ok(bytes));
                }
                Err(e) => prop_assert!(!encodable(&op, seq), "{}", e),
            }
        }

        #[test]
        fn arbitrary_bytes_decode_only_canonically(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
            seq in arb_seq(),
        ) {
            if let Ok(op) = decode(&bytes, seq) {
                prop_assert_eq!(encode(&op, seq), Ok(bytes));
            }
        }

        #[test]
        fn altered_encodings_decode_only_canonically(
            (seq, op) in arb_case(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0..3u8,
        ) {
            let Ok(mut bytes) = encode(&op, seq) else { return Ok(()) };
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
            if let Ok(op) = decode(&bytes, seq) {
                prop_assert_eq!(encode(&op, seq), Ok(bytes));
            }
        }
    }

    #[test]
    fn a_reissued_write_removes_only_what_the_original_saw() {
        let (old, new, other) = (ActorId([1; 32]), ActorId([2; 32]), ActorId([3; 32]));
        let mut doc = KvDoc::default();
        let first = doc.put_op(other, "k", "first");
        doc.apply(first);
        let forked = doc.put_op(old, "k", "mine");
        // Written concurrently by someone else, arrived later.
        let mut elsewhere = KvDoc::default();
        let concurrent = elsewhere.put_op(ActorId([4; 32]), "k", "concurrent");
        elsewhere.apply(concurrent.clone());
        doc.apply(concurrent);
        let again = doc.reissue(&forked, old, new).unwrap();
        assert!(matches!(&again, KvOp::Put { dot, .. } if dot.actor == new && dot.counter == 1));
        doc.apply(again);
        assert_eq!(doc.values_of("k"), vec!["concurrent", "mine"], "the concurrent write survives");
        // A later forked put of the key, which saw the first forked one,
        // overwrites its rewritten version, not the concurrent write.
        let mut forked_state = KvDoc::default();
        forked_state.apply(forked.clone());
        let forked2 = forked_state.put_op(old, "k", "mine, later");
        let again2 = doc.reissue(&forked2, old, new).unwrap();
        doc.apply(again2);
        assert_eq!(doc.values_of("k"), vec!["concurrent", "mine, later"]);
    }

    #[test]
    fn delete_loses_to_a_concurrent_put_and_late_writes_stay_dead() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let mut x = KvDoc::default();
        let put = x.put_op(a, "k", "v1");
        x.apply(put.clone());
        let mut y = x.clone();
        let del = x.del_op("k");
        let put2 = y.put_op(b, "k", "v2");
        x.apply(del.clone());
        y.apply(put2.clone());
        assert!(x.values_of("k").is_empty());
        x.apply(put2.clone());
        y.apply(del);
        assert_eq!(x.values_of("k"), vec!["v2"]);
        assert_eq!(x, y);
        // A superseding write that arrives before the write it supersedes.
        let mut z = KvDoc::default();
        let put3 = x.put_op(a, "k", "v3");
        z.apply(put3.clone());
        z.apply(put.clone());
        z.apply(put2);
        assert_eq!(z.values_of("k"), vec!["v3"]);
        let mut m = x.clone();
        m.apply(put3);
        let mut merged = z.clone();
        merged.merge(m.clone());
        assert_eq!(merged.values_of("k"), vec!["v3"]);
    }

    #[test]
    fn context_compacts() {
        let a = ActorId([1; 32]);
        let mut c = CausalContext::default();
        for n in [3, 1, 2, 5] {
            c.insert(Dot { actor: a, counter: n });
        }
        assert_eq!(c.upto(&a), 3);
        assert!(c.contains(&Dot { actor: a, counter: 5 }) && !c.contains(&Dot { actor: a, counter: 4 }));
    }
}
