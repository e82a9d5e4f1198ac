//! The loro adapter (feature `loro`): a [`loro::LoroDoc`] replicated by
//! walrus, one operation per loro transaction (docs/REPLICA.md, "Engine
//! documents").

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ciborium::Value;
use crdts::{CmRDT, CvRDT};
use loro::{EncodedBlobMode, ExportMode, LoroDoc, LoroValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{canonical_tree, check_text_edits, engine_peer_id, EngineUpdate, TextDocument, TextEdit};
use crate::replica::{ActorId, Document, OpContext};

/// A loro document replicated by walrus: texts, lists, maps, trees and
/// counters, nested, as [`loro`] holds them.
///
/// An operation ([`EngineUpdate`]) is the bytes of one loro transaction's
/// update (`LoroDoc::export(ExportMode::updates(..))`), made under the
/// writer's loro peer id ([`engine_peer_id`] of its actor); the state is
/// the live [`LoroDoc`], and a checkpoint holds its snapshot. Edits are made
/// on the live document ([`Document::EDITS_IN_PLACE`]): make them inside a
/// replica's `update` closure, with [`edit_text`](TextDocument::edit_text)
/// or [`edit`](Self::edit).
///
/// ```
/// use walrus::replica::engines::{LoroDocument, TextDocument, TextEdit};
/// use walrus::replica::{ActorId, Document};
/// use crdts::CmRDT;
///
/// let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
/// let (phone, mut laptop) = (LoroDocument::default(), LoroDocument::default());
/// let op = phone.edit_text(a, "body", &[TextEdit::Insert { pos: 0, text: "héllo".into() }])?;
/// laptop.apply(op);
/// let (op, ()) = laptop.edit(b, |doc| {
///     doc.get_map("meta").insert("title", "Greeting").unwrap();
/// })?;
/// assert_eq!(laptop.text("body"), "héllo");
/// assert_eq!(laptop.with_doc(|doc| doc.get_map("meta").len()), 1);
/// assert!(LoroDocument::check_author(&op, &b).is_ok());
/// assert!(LoroDocument::check_author(&op, &a).is_err());
/// # Ok::<(), String>(())
/// ```
pub struct LoroDocument {
    doc: LoroDoc,
}

/// Why loro bytes were refused: they are no update of this engine (or no
/// snapshot, for a state), or loro failed on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoroRefused(pub String);

impl fmt::Display for LoroRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoroRefused {}

/// A panic's message, for an error.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

/// Runs loro on untrusted bytes: a panic of its decoder is an error.
fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => Err(format!("loro panicked on {what}: {}", panic_message(&*panic))),
    }
}

/// The loro metadata of update bytes: their version range, after a full
/// decode of their changes. Anything but an update blob (a snapshot, an
/// outdated format, garbage) is refused.
fn update_meta(bytes: &[u8]) -> Result<loro::ImportBlobMetadata, String> {
    let meta = guarded("an update", || {
        LoroDoc::decode_import_blob_meta(bytes, true).map_err(|e| format!("not a loro update: {e}"))
    })?;
    if meta.mode != EncodedBlobMode::Updates {
        return Err(format!("a loro {} blob, not an update", meta.mode));
    }
    Ok(meta)
}

fn new_doc() -> LoroDoc {
    let doc = LoroDoc::new();
    // A root container read but never written (`text` of a missing name)
    // must not show up in the contents of one replica only.
    doc.set_hide_empty_root_containers(true);
    doc
}

impl LoroDocument {
    /// Makes whatever `f` does with loro's own API (lists, maps, trees,
    /// nesting) one operation of `actor` (the replica's actor, given to an
    /// `update` closure), made on this document at once. Use it inside
    /// `Replica::update`; `f` must only edit (never import, check out or
    /// commit), and an edit that fails half-way is still part of the
    /// operation.
    ///
    /// ```
    /// use walrus::replica::engines::LoroDocument;
    /// use walrus::replica::{ActorId, Document, Replica, ReplicaOptions};
    /// use loro::LoroList;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut r: Replica<LoroDocument> = Replica::open(dir.path(), ReplicaOptions::default()).unwrap();
    /// r.update(|doc, actor| {
    ///     let (op, ()) = doc
    ///         .edit(actor, |d| {
    ///             let todo = d.get_list("todo");
    ///             let item = todo.push_container(loro::LoroMap::new()).unwrap();
    ///             item.insert("title", "milk").unwrap();
    ///         })
    ///         .unwrap();
    ///     op
    /// })
    /// .unwrap();
    /// assert_eq!(r.doc().with_doc(|d| d.get_list("todo").len()), 1);
    /// ```
    pub fn edit<R>(&self, actor: ActorId, f: impl FnOnce(&LoroDoc) -> R) -> Result<(EngineUpdate, R), String> {
        // Nothing may be pending under another id (a peer id is changed
        // between transactions only).
        self.doc.commit();
        self.doc.set_peer_id(engine_peer_id(&actor)).map_err(|e| format!("loro peer id: {e}"))?;
        let before = self.doc.oplog_vv();
        let out = f(&self.doc);
        self.doc.commit();
        let bytes = self.doc.export(ExportMode::updates(&before)).map_err(|e| format!("loro export: {e}"))?;
        Ok((EngineUpdate(bytes), out))
    }

    /// Reads the loro document (its contents: `get_deep_value`,
    /// `get_text(..).to_string()`, …). Edit it only through
    /// [`edit`](Self::edit): an edit made here would be under no writer's
    /// id and never be logged.
    ///
    /// ```
    /// use walrus::replica::engines::{LoroDocument, TextDocument, TextEdit};
    /// use walrus::replica::ActorId;
    /// let doc = LoroDocument::default();
    /// doc.edit_text(ActorId([1; 32]), "body", &[TextEdit::Insert { pos: 0, text: "hi".into() }])?;
    /// assert_eq!(doc.with_doc(|d| d.get_text("body").len_unicode()), 2);
    /// # Ok::<(), String>(())
    /// ```
    pub fn with_doc<R>(&self, f: impl FnOnce(&LoroDoc) -> R) -> R {
        f(&self.doc)
    }

    /// The document's snapshot and its pending updates (updates received
    /// before others they depend on), as a checkpoint holds them.
    fn export_state(&self) -> Result<LoroState, String> {
        let snapshot = self.doc.export(ExportMode::Snapshot).map_err(|e| format!("loro snapshot: {e}"))?;
        let pending = self.doc.export_pending_updates().map_err(|e| format!("loro pending updates: {e}"))?;
        Ok(LoroState { snapshot, pending: pending.unwrap_or_default() })
    }

    /// A document from a checkpoint's bytes (untrusted: a peer's snapshot).
    fn import_state(state: &LoroState) -> Result<LoroDocument, String> {
        let meta = guarded("a snapshot", || {
            LoroDoc::decode_import_blob_meta(&state.snapshot, true).map_err(|e| format!("not a loro snapshot: {e}"))
        })?;
        if meta.mode != EncodedBlobMode::Snapshot {
            return Err(format!("a loro {} blob, not a snapshot", meta.mode));
        }
        let doc = new_doc();
        guarded("a snapshot", || doc.import(&state.snapshot).map(drop).map_err(|e| format!("loro snapshot: {e}")))?;
        if !state.pending.is_empty() {
            update_meta(&state.pending)?;
            guarded("pending updates", || {
                doc.import(&state.pending).map(drop).map_err(|e| format!("loro pending updates: {e}"))
            })?;
        }
        Ok(LoroDocument { doc })
    }
}

/// What a checkpoint holds of a [`LoroDocument`]: loro's snapshot and the
/// updates it holds back until their dependencies arrive (empty if none).
#[derive(Serialize, Deserialize)]
struct LoroState {
    #[serde(with = "serde_bytes")]
    snapshot: Vec<u8>,
    #[serde(with = "serde_bytes", default)]
    pending: Vec<u8>,
}

impl Default for LoroDocument {
    fn default() -> Self {
        LoroDocument { doc: new_doc() }
    }
}

impl Clone for LoroDocument {
    /// A full, independent copy (pending updates included).
    fn clone(&self) -> Self {
        let doc = self.doc.fork();
        doc.set_hide_empty_root_containers(true);
        if let Ok(Some(pending)) = self.doc.export_pending_updates() {
            let _ = doc.import(&pending);
        }
        LoroDocument { doc }
    }
}

impl fmt::Debug for LoroDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoroDocument").field("value", &self.doc.get_deep_value()).finish()
    }
}

impl Serialize for LoroDocument {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.export_state().map_err(serde::ser::Error::custom)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LoroDocument {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        let state = LoroState::deserialize(d)?;
        LoroDocument::import_state(&state).map_err(serde::de::Error::custom)
    }
}

impl CmRDT for LoroDocument {
    type Op = EngineUpdate;
    type Validation = LoroRefused;

    /// The bytes decode, in full, as a loro update (never a snapshot).
    fn validate_op(&self, op: &EngineUpdate) -> Result<(), LoroRefused> {
        update_meta(&op.0).map(drop).map_err(LoroRefused)
    }

    /// Imports the update; one the document holds already changes nothing,
    /// and one that depends on updates not yet here waits in loro until
    /// they arrive.
    fn apply(&mut self, op: EngineUpdate) {
        // Checked before (`validate_op`): a failure here is loro's, and
        // leaves the document as it was.
        let _ = guarded("an update", || self.doc.import(&op.0).map(drop).map_err(|e| e.to_string()));
    }
}

impl CvRDT for LoroDocument {
    type Validation = LoroRefused;

    fn validate_merge(&self, _other: &LoroDocument) -> Result<(), LoroRefused> {
        Ok(())
    }

    /// Imports everything `other` holds that this document lacks, its
    /// pending updates included.
    fn merge(&mut self, other: LoroDocument) {
        if let Ok(updates) = other.doc.export(ExportMode::updates(&self.doc.oplog_vv())) {
            let _ = guarded("a merge", || self.doc.import(&updates).map(drop).map_err(|e| e.to_string()));
        }
        if let Ok(Some(pending)) = other.doc.export_pending_updates() {
            let _ = guarded("a merge", || self.doc.import(&pending).map(drop).map_err(|e| e.to_string()));
        }
    }
}

impl Document for LoroDocument {
    type Operation = EngineUpdate;

    const EDITS_IN_PLACE: bool = true;

    /// Refuses an update with changes under any loro peer id but the
    /// author's ([`engine_peer_id`]): every op id loro assigns (and every
    /// container an op creates) is under its change's peer id, so this
    /// keeps one writer from forging or shadowing another's edits.
    fn check_author(op: &EngineUpdate, author: &ActorId) -> Result<(), String> {
        let meta = update_meta(&op.0)?;
        let own = engine_peer_id(author);
        for (peer, end) in meta.partial_end_vv.iter() {
            let start = meta.partial_start_vv.get(peer).copied().unwrap_or(0);
            if *peer != own && *end > start {
                return Err(format!(
                    "it has changes of loro peer {peer}, but its author {author} writes as loro peer {own}"
                ));
            }
        }
        Ok(())
    }

    /// The update's bytes as loro made them.
    fn encode_op(op: &EngineUpdate, _cx: &OpContext, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(&op.0);
        Ok(())
    }

    /// The bytes as they are (checked by [`check_op`](Document::check_op)
    /// and [`check_author`](Document::check_author)).
    fn decode_op(bytes: &[u8], _cx: &OpContext) -> Result<EngineUpdate, String> {
        Ok(EngineUpdate(bytes.to_vec()))
    }

    /// [`canonical_tree`] of the contents (`get_deep_value`): texts as
    /// strings, lists in order, maps by key, nested.
    fn canonical(&self) -> Vec<u8> {
        canonical_tree(&to_cbor(&self.doc.get_deep_value()))
    }
}

/// A loro value as CBOR.
fn to_cbor(v: &LoroValue) -> Value {
    match v {
        LoroValue::Null => Value::Null,
        LoroValue::Bool(b) => Value::Bool(*b),
        LoroValue::Double(d) => Value::Float(*d),
        LoroValue::I64(i) => Value::from(*i),
        LoroValue::Binary(b) => Value::Bytes(b.to_vec()),
        LoroValue::String(s) => Value::Text(s.to_string()),
        LoroValue::List(items) => Value::Array(items.iter().map(to_cbor).collect()),
        LoroValue::Map(entries) => {
            Value::Map(entries.iter().map(|(k, v)| (Value::Text(k.to_string()), to_cbor(v))).collect())
        }
        LoroValue::Container(id) => Value::Text(id.to_string()),
    }
}

impl TextDocument for LoroDocument {
    fn text(&self, name: &str) -> String {
        self.doc.get_text(name).to_string()
    }

    /// Positions are loro's Unicode ones (chars).
    fn edit_text(&self, actor: ActorId, name: &str, edits: &[TextEdit]) -> Result<EngineUpdate, String> {
        check_text_edits(self.doc.get_text(name).len_unicode(), edits)?;
        let (op, made) = self.edit(actor, |doc| {
            let text = doc.get_text(name);
            for e in edits {
                match e {
                    TextEdit::Insert { pos, text: t } => text.insert(*pos, t)?,
                    TextEdit::Delete { pos, len } => text.delete(*pos, *len)?,
                }
            }
            Ok::<(), loro::LoroError>(())
        })?;
        made.map_err(|e| format!("loro text edit: {e}"))?;
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
    fn an_edit_is_one_update_under_the_writers_id() {
        let a = ActorId([1; 32]);
        let doc = LoroDocument::default();
        let first = doc.edit_text(a, "t", &[ins(0, "ab")]).unwrap();
        let op = doc.edit_text(a, "t", &[ins(2, "ç"), ins(0, "x"), TextEdit::Delete { pos: 1, len: 1 }]).unwrap();
        assert_eq!(doc.text("t"), "xbç");
        let meta = update_meta(&op.0).unwrap();
        let peer = engine_peer_id(&a);
        assert_eq!(meta.change_num, 1);
        assert_eq!(meta.partial_start_vv.get(&peer), Some(&2));
        assert_eq!(meta.partial_end_vv.iter().count(), 1);
        // Applying the updates in order elsewhere gives the same contents.
        let mut other = LoroDocument::default();
        other.apply(first.clone());
        other.apply(op.clone());
        other.apply(first);
        assert_eq!(other.text("t"), "xbç");
        assert_eq!(other.canonical(), doc.canonical());
    }

    #[test]
    fn a_bad_text_edit_changes_nothing() {
        let a = ActorId([1; 32]);
        let doc = LoroDocument::default();
        doc.edit_text(a, "t", &[ins(0, "ab")]).unwrap();
        let before = doc.with_doc(|d| d.oplog_vv());
        assert!(doc.edit_text(a, "t", &[ins(1, "x"), TextEdit::Delete { pos: 2, len: 5 }]).is_err());
        assert_eq!(doc.text("t"), "ab");
        assert_eq!(doc.with_doc(|d| d.oplog_vv()), before);
    }

    #[test]
    fn an_empty_edit_is_a_valid_update() {
        let a = ActorId([1; 32]);
        let doc = LoroDocument::default();
        let op = doc.edit_text(a, "t", &[]).unwrap();
        assert!(doc.check_op(&op).is_ok());
        assert!(LoroDocument::check_author(&op, &ActorId([2; 32])).is_ok());
    }

    #[test]
    fn a_checkpoint_keeps_pending_updates() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let src = LoroDocument::default();
        let first = src.edit_text(a, "t", &[ins(0, "ab")]).unwrap();
        let mut mid = LoroDocument::default();
        mid.apply(first.clone());
        let second = mid.edit_text(b, "t", &[ins(1, "-")]).unwrap();
        // B's update arrives before A's it depends on.
        let mut late = LoroDocument::default();
        late.apply(second);
        let copy = late.clone();
        let mut cbor = Vec::new();
        ciborium::into_writer(&late, &mut cbor).unwrap();
        let mut back: LoroDocument = ciborium::from_reader(&cbor[..]).unwrap();
        for d in [&mut late, &mut back] {
            d.apply(first.clone());
            assert_eq!(d.text("t"), "a-b");
        }
        let mut copy = copy;
        copy.merge(mid.clone());
        assert_eq!(copy.text("t"), "a-b");
        let mut fresh = LoroDocument::default();
        fresh.merge(back);
        assert_eq!(fresh.canonical(), mid.canonical());
    }

    #[test]
    fn a_malformed_checkpoint_is_an_error() {
        let doc = LoroDocument::default();
        doc.edit_text(ActorId([1; 32]), "t", &[ins(0, "ab")]).unwrap();
        let state = doc.export_state().unwrap();
        for cut in [0, 10, state.snapshot.len() / 2, state.snapshot.len() - 1] {
            let bad = LoroState { snapshot: state.snapshot[..cut].to_vec(), pending: Vec::new() };
            assert!(LoroDocument::import_state(&bad).is_err());
        }
        // An update is no snapshot.
        let op = doc.edit_text(ActorId([1; 32]), "t", &[ins(0, "c")]).unwrap();
        assert!(LoroDocument::import_state(&LoroState { snapshot: op.0.clone(), pending: Vec::new() }).is_err());
        // A snapshot is no update.
        assert!(doc.check_op(&EngineUpdate(state.snapshot)).is_err());
    }

    #[test]
    fn canonical_ignores_arrival_order_and_unwritten_reads() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let (da, db) = (LoroDocument::default(), LoroDocument::default());
        let oa = da.edit_text(a, "t", &[ins(0, "from a")]).unwrap();
        let (ob, ()) = db.edit(b, |d| d.get_map("m").insert("k", 1).unwrap()).unwrap();
        let (mut x, mut y) = (LoroDocument::default(), LoroDocument::default());
        x.apply(oa.clone());
        x.apply(ob.clone());
        y.apply(ob);
        assert_eq!(y.text("never written"), "");
        y.apply(oa);
        assert_eq!(x.canonical(), y.canonical());
    }
}
