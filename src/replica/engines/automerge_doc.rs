//! The automerge adapter (feature `automerge`): an [`automerge::Automerge`]
//! document replicated by walrus.
//!
//! - An operation is one automerge change in its binary format (a change
//!   chunk of the automerge storage format, uncompressed:
//!   [`Change::raw_bytes`]), made by one transaction.
//! - The automerge actor of a writer is the 8 little-endian bytes of
//!   [`engine_peer_id`] of its walrus actor: every replica derives it, the
//!   same 53-bit id the other engines use, and a change carries 8 bytes of
//!   actor instead of 32.
//! - A checkpoint is the automerge document format ([`Automerge::save`],
//!   which keeps changes still waiting for their dependencies).
//! - Text positions are Unicode code points
//!   ([`TextEncoding::UnicodeCodePoint`]).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};

use automerge::transaction::{Transactable, Transaction};
use automerge::{hydrate, Automerge, Change, LoadOptions, ObjType, ReadDoc, ScalarValue, TextEncoding, ROOT};
use ciborium::Value;
use crdts::{CmRDT, CvRDT};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing::warn;

use super::{canonical_tree, check_text_edits, engine_peer_id, EngineUpdate, TextDocument, TextEdit};
use crate::replica::{ActorId, Document, OpContext};

/// The first bytes of every automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The chunk type of an uncompressed change.
const CHUNK_CHANGE: u8 = 1;

/// An automerge document (text, lists, maps, counters, nested) replicated
/// by walrus: each operation is one automerge change, made under the
/// writer's own automerge actor.
///
/// ```
/// use walrus::replica::engines::{AutomergeDocument, TextDocument, TextEdit};
/// use walrus::replica::ActorId;
/// use automerge::{transaction::Transactable, ObjType, ReadDoc, ROOT};
/// use crdts::CmRDT;
///
/// let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
/// let doc = AutomergeDocument::default();
/// let op = doc.edit_text(a, "body", &[TextEdit::Insert { pos: 0, text: "héllo".into() }])?;
/// // The native API: a list inside a map, in one change.
/// let (op2, ()) = doc.edit(a, |tx| {
///     let todo = tx.put_object(ROOT, "todo", ObjType::List).unwrap();
///     tx.insert(&todo, 0, "milk").unwrap();
/// })?;
///
/// let mut other = AutomergeDocument::default();
/// other.apply(op);
/// other.apply(op2);
/// assert_eq!(other.text("body"), "héllo");
/// assert_eq!(other.with_doc(|d| d.length(d.get(ROOT, "todo").unwrap().unwrap().1)), 1);
/// other.edit_text(b, "body", &[TextEdit::Delete { pos: 1, len: 1 }])?;
/// assert_eq!(other.text("body"), "hllo");
/// # Ok::<(), String>(())
/// ```
pub struct AutomergeDocument {
    inner: Mutex<Inner>,
}

#[derive(Clone)]
struct Inner {
    doc: Automerge,
    /// The highest change sequence number held (applied or waiting for
    /// dependencies) of each automerge actor, to refuse a second change
    /// with a number already used.
    seqs: HashMap<automerge::ActorId, u64>,
    /// The bytes of the last local edit (already in `doc`): applying them
    /// again is skipped without decoding.
    last_local: Option<Vec<u8>>,
}

impl Inner {
    fn new(doc: Automerge) -> Inner {
        let mut inner = Inner { doc, seqs: HashMap::new(), last_local: None };
        inner.index_seqs();
        inner
    }

    fn index_seqs(&mut self) {
        for meta in self.doc.get_changes_meta(&[]) {
            let seq = self.seqs.entry(meta.actor.into_owned()).or_insert(0);
            *seq = (*seq).max(meta.seq);
        }
    }

    fn note_seq(&mut self, change: &Change) {
        let seq = self.seqs.entry(change.actor_id().clone()).or_insert(0);
        *seq = (*seq).max(change.seq());
    }
}

/// The automerge actor of the walrus actor `actor`: the 8 little-endian
/// bytes of [`engine_peer_id`].
pub fn automerge_actor(actor: &ActorId) -> automerge::ActorId {
    automerge::ActorId::from(engine_peer_id(actor).to_le_bytes())
}

/// Decodes an operation's bytes as one uncompressed automerge change
/// whose checksum holds. The decoder is run under `catch_unwind`: a panic
/// on hostile bytes is an error.
fn decode_change(bytes: &[u8]) -> Result<Change, String> {
    if bytes.len() < 10 || bytes[..4] != MAGIC {
        return Err("not an automerge chunk (magic bytes)".into());
    }
    if bytes[8] != CHUNK_CHANGE {
        // Compressed changes are refused: inflating them is unbounded,
        // and local edits are never compressed.
        return Err(format!("automerge chunk type {}: not an uncompressed change", bytes[8]));
    }
    let change = catch_unwind(|| Change::try_from(bytes))
        .map_err(|_| "the automerge decoder panicked on the update".to_string())?
        .map_err(|e| format!("not an automerge change: {e}"))?;
    if change.hash().0[..4] != bytes[4..8] {
        return Err("automerge change: bad checksum".into());
    }
    Ok(change)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_doc() -> Automerge {
    Automerge::new_with_encoding(TextEncoding::UnicodeCodePoint)
}

impl AutomergeDocument {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes one change with automerge's own API (lists, maps, counters,
    /// nesting, texts): `f` edits a transaction under `actor`'s automerge
    /// actor, and the change it commits is the operation. Fails if `f`
    /// changed nothing. The change is made on this document at once
    /// ([`Document::EDITS_IN_PLACE`]).
    ///
    /// ```
    /// use walrus::replica::engines::AutomergeDocument;
    /// use walrus::replica::ActorId;
    /// use automerge::{transaction::Transactable, ReadDoc, ScalarValue, ROOT};
    ///
    /// let doc = AutomergeDocument::default();
    /// let (_op, ()) = doc.edit(ActorId([7; 32]), |tx| tx.put(ROOT, "title", "notes").unwrap())?;
    /// let title = doc.with_doc(|d| d.get(ROOT, "title").unwrap().unwrap().0.to_str().map(String::from));
    /// assert_eq!(title.as_deref(), Some("notes"));
    /// # Ok::<(), String>(())
    /// ```
    pub fn edit<R>(
        &self,
        actor: ActorId,
        f: impl FnOnce(&mut Transaction<'_>) -> R,
    ) -> Result<(EngineUpdate, R), String> {
        self.try_edit(actor, |tx| Ok(f(tx)))
    }

    /// As [`edit`](Self::edit), but an error from `f` rolls the
    /// transaction back: nothing is changed.
    pub fn try_edit<R>(
        &self,
        actor: ActorId,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, String>,
    ) -> Result<(EngineUpdate, R), String> {
        let mut inner = self.lock();
        inner.doc.set_actor(automerge_actor(&actor));
        let mut tx = inner.doc.transaction();
        let r = match f(&mut tx) {
            Ok(r) => r,
            Err(e) => {
                tx.rollback();
                return Err(e);
            }
        };
        let (hash, _) = tx.commit();
        let hash = hash.ok_or_else(|| "the edit changed nothing".to_string())?;
        let change =
            inner.doc.get_change_by_hash(&hash).ok_or_else(|| "the committed change is missing".to_string())?;
        inner.note_seq(&change);
        let bytes = change.raw_bytes().to_vec();
        inner.last_local = Some(bytes.clone());
        Ok((EngineUpdate(bytes), r))
    }

    /// Reads the automerge document.
    ///
    /// ```
    /// use walrus::replica::engines::AutomergeDocument;
    /// use automerge::ReadDoc;
    /// let doc = AutomergeDocument::default();
    /// assert_eq!(doc.with_doc(|d| d.length(automerge::ROOT)), 0);
    /// ```
    pub fn with_doc<R>(&self, f: impl FnOnce(&Automerge) -> R) -> R {
        f(&self.lock().doc)
    }

    /// The document's contents as a CBOR tree: texts as strings, lists in
    /// order, maps (entries in automerge's order), scalars as CBOR values
    /// (counters as their value, timestamps under tag 1).
    pub fn to_value(&self) -> Value {
        hydrated(&self.lock().doc.hydrate(None))
    }
}

fn hydrated(v: &hydrate::Value) -> Value {
    match v {
        hydrate::Value::Scalar(s) => scalar(s),
        hydrate::Value::Map(m) => {
            Value::Map(m.iter().map(|(k, v)| (Value::Text(k.clone()), hydrated(&v.value))).collect())
        }
        hydrate::Value::List(l) => Value::Array(l.iter().map(|v| hydrated(&v.value)).collect()),
        hydrate::Value::Text(t) => Value::Text(String::from(t)),
    }
}

fn scalar(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Bytes(b) => Value::Bytes(b.clone()),
        ScalarValue::Str(s) => Value::Text(s.to_string()),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => Value::Float(*f),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Value::Tag(1, Box::new(Value::from(*t))),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Unknown { type_code, bytes } => {
            Value::Array(vec![Value::from(*type_code), Value::Bytes(bytes.clone())])
        }
        ScalarValue::Null => Value::Null,
    }
}

impl Default for AutomergeDocument {
    fn default() -> Self {
        AutomergeDocument { inner: Mutex::new(Inner::new(new_doc())) }
    }
}

impl Clone for AutomergeDocument {
    fn clone(&self) -> Self {
        AutomergeDocument { inner: Mutex::new(self.lock().clone()) }
    }
}

impl std::fmt::Debug for AutomergeDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        write!(f, "AutomergeDocument({} heads)", inner.doc.get_heads().len())
    }
}

impl Serialize for AutomergeDocument {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.lock().doc.save())
    }
}

impl<'de> Deserialize<'de> for AutomergeDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        let load =
            || Automerge::load_with_options(&bytes, LoadOptions::new().text_encoding(TextEncoding::UnicodeCodePoint));
        let doc = catch_unwind(AssertUnwindSafe(load))
            .map_err(|_| serde::de::Error::custom("the automerge loader panicked on the snapshot"))?
            .map_err(|e| serde::de::Error::custom(format!("not an automerge document: {e}")))?;
        Ok(AutomergeDocument { inner: Mutex::new(Inner::new(doc)) })
    }
}

/// Why an automerge update was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutomergeUpdateError(pub String);

impl std::fmt::Display for AutomergeUpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AutomergeUpdateError {}

impl CmRDT for AutomergeDocument {
    type Op = EngineUpdate;
    type Validation = AutomergeUpdateError;

    /// The bytes are one automerge change that this document either holds
    /// already or can take: its actor's sequence number is not one it
    /// holds another change for.
    fn validate_op(&self, op: &EngineUpdate) -> Result<(), AutomergeUpdateError> {
        let change = decode_change(&op.0).map_err(AutomergeUpdateError)?;
        let inner = self.lock();
        let held = inner.seqs.get(change.actor_id()).copied().unwrap_or(0);
        // Held (applied or waiting): not among the hashes missing from it.
        let hash = change.hash();
        if change.seq() <= held && inner.doc.get_missing_deps(&[hash]).contains(&hash) {
            return Err(AutomergeUpdateError(format!(
                "automerge actor {} already has a change {} (this one is {}): a second change for the same number",
                change.actor_id(),
                held,
                change.seq()
            )));
        }
        Ok(())
    }

    fn apply(&mut self, op: EngineUpdate) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.last_local.as_deref() == Some(&op.0[..]) {
            return;
        }
        let change = match decode_change(&op.0) {
            Ok(c) => c,
            Err(e) => {
                warn!("automerge update not applied: {e}");
                return;
            }
        };
        let applied = catch_unwind(AssertUnwindSafe(|| inner.doc.apply_changes([change.clone()])));
        match applied {
            Ok(Ok(())) => inner.note_seq(&change),
            Ok(Err(e)) => warn!("automerge update not applied: {e}"),
            Err(_) => warn!("automerge panicked applying an update"),
        }
    }
}

impl CvRDT for AutomergeDocument {
    type Validation = AutomergeUpdateError;

    fn validate_merge(&self, _other: &Self) -> Result<(), AutomergeUpdateError> {
        Ok(())
    }

    /// Imports every change of `other`, those waiting for dependencies too.
    fn merge(&mut self, other: Self) {
        let other = other.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let bytes = other.doc.save();
        match catch_unwind(AssertUnwindSafe(|| inner.doc.load_incremental(&bytes))) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("automerge state not merged: {e}"),
            Err(_) => warn!("automerge panicked merging a state"),
        }
        for (actor, seq) in other.seqs {
            let held = inner.seqs.entry(actor).or_insert(0);
            *held = (*held).max(seq);
        }
        inner.index_seqs();
    }
}

impl Document for AutomergeDocument {
    type Operation = EngineUpdate;

    const EDITS_IN_PLACE: bool = true;

    /// Refuses an update whose change is made under another automerge
    /// actor than `author`'s ([`automerge_actor`]), or that claims an
    /// automerge author identity (walrus signs every operation; a claimed
    /// author would let one writer label its changes as another's).
    fn check_author(op: &EngineUpdate, author: &ActorId) -> Result<(), String> {
        let change = decode_change(&op.0)?;
        let expected = automerge_actor(author);
        if *change.actor_id() != expected {
            let found = change.actor_id().to_bytes();
            let id = <[u8; 8]>::try_from(found).map(u64::from_le_bytes);
            return Err(match id {
                Ok(id) => format!(
                    "the automerge change is made under engine id {id} (actor {}), but its signer {author} has engine \
                     id {}",
                    hex(found),
                    engine_peer_id(author)
                ),
                Err(_) => format!(
                    "the automerge change is made under actor {}, but its signer {author} has engine id {}",
                    hex(found),
                    engine_peer_id(author)
                ),
            });
        }
        if change.author().is_some() {
            return Err("the automerge change claims an author identity".into());
        }
        Ok(())
    }

    /// The change's bytes as they are.
    fn encode_op(op: &EngineUpdate, _cx: &OpContext, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(&op.0);
        Ok(())
    }

    /// A copy of the bytes, if they start as an uncompressed automerge
    /// change; [`Document::check_op`] and [`Document::check_author`]
    /// decode them.
    fn decode_op(bytes: &[u8], _cx: &OpContext) -> Result<EngineUpdate, String> {
        if bytes.len() < 10 || bytes[..4] != MAGIC || bytes[8] != CHUNK_CHANGE {
            return Err("not an uncompressed automerge change".into());
        }
        Ok(EngineUpdate(bytes.to_vec()))
    }

    fn canonical(&self) -> Vec<u8> {
        canonical_tree(&self.to_value())
    }
}

impl TextDocument for AutomergeDocument {
    fn text(&self, name: &str) -> String {
        let inner = self.lock();
        match inner.doc.get(ROOT, name) {
            Ok(Some((automerge::Value::Object(ObjType::Text), id))) => inner.doc.text(&id).unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn edit_text(&self, actor: ActorId, name: &str, edits: &[TextEdit]) -> Result<EngineUpdate, String> {
        let (existing, len) = self.with_doc(|d| match d.get(ROOT, name) {
            Ok(Some((automerge::Value::Object(ObjType::Text), id))) => Ok((Some(id.clone()), d.length(&id))),
            Ok(Some(_)) => Err(format!("{name:?} is not a text")),
            Ok(None) => Ok((None, 0)),
            Err(e) => Err(e.to_string()),
        })?;
        check_text_edits(len, edits)?;
        let (op, ()) = self.try_edit(actor, |tx| {
            let text = match existing {
                Some(id) => id,
                None => tx.put_object(ROOT, name, ObjType::Text).map_err(|e| e.to_string())?,
            };
            for e in edits {
                match e {
                    TextEdit::Insert { pos, text: t } => tx.splice_text(&text, *pos, 0, t),
                    TextEdit::Delete { pos, len } => {
                        let len = isize::try_from(*len).map_err(|_| format!("delete of {len} characters"))?;
                        tx.splice_text(&text, *pos, len, "")
                    }
                }
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        })?;
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(pos: usize, text: &str) -> TextEdit {
        TextEdit::Insert { pos, text: text.into() }
    }

    #[test]
    fn positions_are_chars_and_a_bad_edit_changes_nothing() {
        let a = ActorId([1; 32]);
        let doc = AutomergeDocument::default();
        doc.edit_text(a, "t", &[ins(0, "🦀é"), ins(2, "x"), ins(1, "-")]).unwrap();
        assert_eq!(doc.text("t"), "🦀-éx");
        let before = doc.canonical();
        assert!(doc.edit_text(a, "t", &[ins(0, "y"), TextEdit::Delete { pos: 3, len: 9 }]).is_err());
        assert_eq!(doc.canonical(), before);
        assert!(doc.edit(a, |_| ()).is_err(), "an edit that changes nothing is no operation");
    }

    #[test]
    fn operations_are_the_change_bytes_and_apply_idempotently() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let doc = AutomergeDocument::default();
        let op = doc.edit_text(a, "t", &[ins(0, "hi")]).unwrap();
        let cx = OpContext { author: &a, seq: 1 };
        let mut out = Vec::new();
        AutomergeDocument::encode_op(&op, &cx, &mut out).unwrap();
        assert_eq!(out, op.0);
        assert_eq!(AutomergeDocument::decode_op(&out, &cx).unwrap(), op);
        let change = Change::try_from(&op.0[..]).unwrap();
        assert_eq!(*change.actor_id(), automerge_actor(&a));
        assert!(AutomergeDocument::check_author(&op, &a).is_ok());
        assert!(AutomergeDocument::check_author(&op, &b).unwrap_err().contains(&engine_peer_id(&a).to_string()));
        let mut other = AutomergeDocument::default();
        other.apply(op.clone());
        other.apply(op.clone());
        assert_eq!(other.text("t"), "hi");
        let mut same = doc.clone();
        same.apply(op);
        assert_eq!(same.canonical(), doc.canonical());
    }

    #[test]
    fn a_second_change_for_a_used_sequence_number_is_refused() {
        let a = ActorId([1; 32]);
        let (one, two) = (AutomergeDocument::default(), AutomergeDocument::default());
        let first = one.edit_text(a, "t", &[ins(0, "one")]).unwrap();
        let rival = two.edit_text(a, "t", &[ins(0, "two")]).unwrap();
        assert!(one.check_op(&first).is_ok());
        assert!(one.check_op(&rival).unwrap_err().contains("same number"));
    }

    #[test]
    fn snapshots_keep_changes_waiting_for_their_dependencies() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let doc = AutomergeDocument::default();
        let first = doc.edit_text(a, "t", &[ins(0, "ab")]).unwrap();
        let second = doc.edit_text(b, "t", &[ins(1, "X")]).unwrap();
        let mut late = AutomergeDocument::default();
        late.apply(second);
        assert_eq!(late.text("t"), "");
        let mut bytes = Vec::new();
        ciborium::into_writer(&late, &mut bytes).unwrap();
        let mut back: AutomergeDocument = ciborium::from_reader(&bytes[..]).unwrap();
        back.apply(first.clone());
        assert_eq!(back.text("t"), "aXb");
        let mut merged = AutomergeDocument::default();
        merged.apply(first);
        merged.merge(late);
        assert_eq!(merged.text("t"), "aXb");
        assert_eq!(merged.canonical(), doc.canonical());
    }

    #[test]
    fn canonical_is_independent_of_arrival_order() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let (x, y) = (AutomergeDocument::default(), AutomergeDocument::default());
        let ox = x.edit(a, |tx| tx.put(ROOT, "k", 1).unwrap()).unwrap().0;
        let oy = y.edit(b, |tx| tx.put(ROOT, "j", "v").unwrap()).unwrap().0;
        let mut x2 = x.clone();
        x2.apply(oy.clone());
        let mut y2 = y.clone();
        y2.apply(ox);
        assert_eq!(x2.canonical(), y2.canonical());
        assert_ne!(x2.canonical(), x.canonical());
    }
}
