//! The yrs adapter (feature `yrs`): a [yrs](https://docs.rs/yrs) document
//! replicated by walrus.
//!
//! An operation is one yrs transaction's update in yrs' v2 update encoding
//! (lib0 v2, as `TransactionMut::encode_update_v2` writes it and
//! `Update::decode_v2` reads it); a writer's yrs client id is
//! [`engine_peer_id`] of its actor; a checkpoint holds the document's
//! integrated state as one update (v1 encoding) and the updates still
//! waiting for predecessors (docs/REPLICA.md, "Engine documents").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};

use ciborium::Value;
use crdts::{CmRDT, CvRDT};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use yrs::types::{AsPrelim, ToJson};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, ArrayRef, Doc, GetString, In, MapRef, Options, Out, ReadTxn, StateVector, Text, TextRef, Transact,
    TransactionMut, Update, WriteTxn, XmlElementRef, XmlTextRef,
};

use super::{canonical_tree, check_text_edits, engine_peer_id, EngineUpdate, TextDocument, TextEdit};
use crate::replica::{ActorId, Document, OpContext};

/// A yrs document: texts, arrays, maps and nested trees as yrs holds them,
/// edited in place ([`Document::EDITS_IN_PLACE`]) under the writer's own
/// yrs client id.
///
/// Text positions ([`TextDocument`]) are in characters (Unicode scalar
/// values); the engine's own API ([`YrsDocument::edit`]) counts text offsets
/// in UTF-8 bytes ([`yrs::OffsetKind::Bytes`]).
///
/// ```
/// use walrus::replica::engines::{TextDocument, TextEdit, YrsDocument};
/// use walrus::replica::ActorId;
/// use yrs::{Map, ReadTxn, Transact, WriteTxn};
///
/// let doc = YrsDocument::default();
/// let actor = ActorId([7; 32]);
/// doc.edit_text(actor, "body", &[TextEdit::Insert { pos: 0, text: "héllo".into() }])?;
/// assert_eq!(doc.text("body"), "héllo");
/// let (_op, ()) = doc.edit(actor, |txn| {
///     let meta = txn.get_or_insert_map("meta");
///     meta.insert(txn, "title", "Notes");
/// })?;
/// let title = doc.with_doc(|d| {
///     let txn = d.transact();
///     txn.get_map("meta").and_then(|m| yrs::Map::get(&m, &txn, "title")).map(|v| v.to_string(&txn))
/// });
/// assert_eq!(title.as_deref(), Some("Notes"));
/// # Ok::<(), String>(())
/// ```
pub struct YrsDocument {
    /// The live document (a `Doc` is a shared handle: cloning it is cheap
    /// and shares the store; replaced only to change its client id) and
    /// the updates waiting for predecessors.
    engine: Mutex<Engine>,
}

/// A yrs document with client id `client_id`, counting text offsets in
/// UTF-8 bytes (adapter text positions are converted from characters).
fn new_doc(client_id: u64) -> Doc {
    Doc::with_options(Options {
        client_id: yrs::ClientID::new(client_id),
        offset_kind: yrs::OffsetKind::Bytes,
        ..Options::default()
    })
}

/// Decodes untrusted bytes as a v2 update. yrs' decoder returns errors on
/// malformed input; a panic in it is caught all the same and reported as
/// an error.
fn decode(bytes: &[u8]) -> Result<Update, String> {
    match catch_unwind(|| Update::decode_v2(bytes)) {
        Ok(Ok(u)) => Ok(u),
        Ok(Err(e)) => Err(format!("not a yrs v2 update: {e}")),
        Err(_) => Err("not a yrs v2 update (the decoder panicked)".into()),
    }
}

/// Decodes a state as a v1 update (see [`Engine::state`]).
fn decode_v1(bytes: &[u8]) -> Result<Update, String> {
    match catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(u)) => Ok(u),
        Ok(Err(e)) => Err(format!("not a yrs v1 update: {e}")),
        Err(_) => Err("not a yrs v1 update (the decoder panicked)".into()),
    }
}

/// The engine's state: the live document and the updates it could not
/// integrate yet (their predecessors, another writer's items, have not
/// arrived), as they came.
///
/// yrs keeps such updates pending inside the document, but encoding a
/// document with pending updates can fail (yrs 0.28 re-encodes them and
/// panics when it cannot decode the result), so the adapter takes them out
/// of the document after every import and retries them itself.
struct Engine {
    doc: Doc,
    held: Vec<Vec<u8>>,
}

/// Imports `update` into `doc` in one transaction; true if part of it
/// waits for predecessors (taken out of the document again). A panic in
/// yrs is caught: the update is then not (wholly) imported.
fn apply_one(doc: &Doc, update: Update) -> Result<bool, String> {
    let res = catch_unwind(AssertUnwindSafe(|| {
        let mut txn = doc.try_transact_mut().map_err(|e| format!("{e}"))?;
        txn.apply_update(update).map_err(|e| e.to_string())?;
        let waiting = txn.has_missing_updates();
        if waiting {
            txn.prune_pending();
        }
        Ok(waiting)
    }));
    match res {
        Ok(r) => r,
        Err(_) => Err("yrs panicked importing the update".into()),
    }
}

impl Engine {
    fn new(client_id: u64) -> Engine {
        Engine { doc: new_doc(client_id), held: Vec::new() }
    }

    /// Imports the update `bytes`, then retries the held updates as long
    /// as that integrates anything.
    fn import(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.import_update(decode(bytes)?, bytes)
    }

    /// Imports a state made by [`Engine::state`].
    fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.import_update(decode_v1(state)?, &[])
    }

    fn import_update(&mut self, update: Update, bytes: &[u8]) -> Result<(), String> {
        let before = self.doc.transact().state_vector();
        let waiting = apply_one(&self.doc, update)?;
        if waiting && !bytes.is_empty() && !self.held.iter().any(|h| h == bytes) {
            self.held.push(bytes.to_vec());
        }
        let mut before = before;
        while !self.held.is_empty() {
            let now = self.doc.transact().state_vector();
            if now == before {
                break;
            }
            before = now;
            let mut kept = Vec::new();
            for h in std::mem::take(&mut self.held) {
                if decode(&h).and_then(|u| apply_one(&self.doc, u)).unwrap_or(false) {
                    kept.push(h);
                }
            }
            self.held = kept;
        }
        Ok(())
    }

    /// The document's integrated state as one update, in the v1 encoding:
    /// yrs 0.28 encodes some states (several clients, deletions) in the v2
    /// encoding into bytes its own v2 decoder refuses.
    fn state(&self) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(&StateVector::default())
    }

    /// A document with client id `client_id` holding `state` and the held
    /// updates `held`.
    fn load(client_id: u64, state: &[u8], held: &[Vec<u8>]) -> Result<Engine, String> {
        let mut e = Engine::new(client_id);
        e.import_state(state)?;
        for h in held {
            e.import(h)?;
        }
        Ok(e)
    }

    fn copy(&self, client_id: u64) -> Result<Engine, String> {
        Engine::load(client_id, &self.state(), &self.held)
    }
}

/// A checkpoint's `state`: the integrated document as one v1 update
/// ([`Engine::state`]), and the updates still waiting for predecessors as
/// they came.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
    pending: Vec<serde_bytes::ByteBuf>,
}

/// A yrs value as a CBOR tree.
fn any_to_value(a: &Any) -> Value {
    match a {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(yrs::Number::Int(i)) => Value::from(*i),
        Any::Number(yrs::Number::Float(f)) => Value::Float(*f),
        Any::String(s) => Value::Text(s.to_string()),
        Any::Buffer(b) => Value::Bytes(b.to_vec()),
        Any::Array(items) => Value::Array(items.iter().map(any_to_value).collect()),
        Any::Map(m) => Value::Map(m.iter().map(|(k, v)| (Value::Text(k.clone()), any_to_value(v))).collect()),
    }
}

/// The contents of a root type. A root a document received but never
/// declared has no type of its own in yrs: it is read as what its contents
/// show (text, array, map, XML), the same on every replica.
fn root_value<T: ReadTxn>(txn: &T, out: Out) -> Value {
    match out {
        Out::UndefinedRef(branch) => match Out::UndefinedRef(branch).as_prelim(txn) {
            In::Text(_) => Value::Text(TextRef::from(branch).get_string(txn)),
            In::Array(_) => any_to_value(&ArrayRef::from(branch).to_json(txn)),
            In::Map(_) => any_to_value(&MapRef::from(branch).to_json(txn)),
            In::XmlText(_) => Value::Text(XmlTextRef::from(branch).get_string(txn)),
            In::XmlElement(_) => Value::Text(XmlElementRef::from(branch).get_string(txn)),
            _ => Value::Null,
        },
        other => any_to_value(&other.to_json(txn)),
    }
}

impl YrsDocument {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> Doc {
        self.engine().doc.clone()
    }

    /// The live document, under `actor`'s client id: rebuilt once from its
    /// full state if it had another (yrs fixes a document's client id when
    /// it is created).
    fn doc_for(&self, actor: &ActorId) -> Result<Doc, String> {
        let id = engine_peer_id(actor);
        let mut engine = self.engine();
        if engine.doc.client_id().get() != id {
            *engine = engine.copy(id)?;
        }
        Ok(engine.doc.clone())
    }

    /// Makes one operation of `actor` from whatever `f` does with yrs' own
    /// API in one transaction (arrays, maps, nested types, texts with byte
    /// offsets), and returns it with what `f` returned. The edit is made on
    /// this document at once; in an `update` closure, return the operation.
    ///
    /// ```
    /// use walrus::replica::engines::YrsDocument;
    /// use walrus::replica::ActorId;
    /// use yrs::{Array, ArrayPrelim, MapPrelim, WriteTxn};
    ///
    /// let doc = YrsDocument::default();
    /// let (op, len) = doc.edit(ActorId([1; 32]), |txn| {
    ///     let list = txn.get_or_insert_array("todo");
    ///     list.push_back(txn, MapPrelim::from([("done", false)]));
    ///     list.push_back(txn, ArrayPrelim::default());
    ///     list.len(txn)
    /// })?;
    /// assert_eq!(len, 2);
    /// assert!(!op.0.is_empty());
    /// # Ok::<(), String>(())
    /// ```
    pub fn edit<R>(
        &self,
        actor: ActorId,
        f: impl FnOnce(&mut TransactionMut) -> R,
    ) -> Result<(EngineUpdate, R), String> {
        let doc = self.doc_for(&actor)?;
        let mut txn = doc.try_transact_mut().map_err(|e| format!("{e}"))?;
        let r = f(&mut txn);
        txn.commit();
        let update = txn.encode_update_v2();
        Ok((EngineUpdate(update), r))
    }

    /// Reads the document with yrs' own API (`doc.transact()`); edits go
    /// through [`YrsDocument::edit`], never through this.
    ///
    /// ```
    /// use walrus::replica::engines::YrsDocument;
    /// use yrs::{ReadTxn, Transact};
    ///
    /// let doc = YrsDocument::default();
    /// assert_eq!(doc.with_doc(|d| d.transact().root_refs().count()), 0);
    /// ```
    pub fn with_doc<R>(&self, f: impl FnOnce(&Doc) -> R) -> R {
        f(&self.live())
    }

    /// The document's integrated state as one yrs update in the v1
    /// encoding (`Update::decode_v1` reads it; updates still waiting for
    /// predecessors are not in it).
    pub fn encode_state(&self) -> Vec<u8> {
        self.engine().state()
    }
}

impl Default for YrsDocument {
    fn default() -> Self {
        YrsDocument { engine: Mutex::new(Engine::new(0)) }
    }
}

impl Clone for YrsDocument {
    fn clone(&self) -> Self {
        let engine = self.engine();
        let id = engine.doc.client_id().get();
        // Loading a state this document holds cannot fail; if it did, an
        // empty copy would show it at once.
        YrsDocument { engine: Mutex::new(engine.copy(id).unwrap_or_else(|_| Engine::new(id))) }
    }
}

impl std::fmt::Debug for YrsDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "YrsDocument({} bytes of state)", self.encode_state().len())
    }
}

impl Serialize for YrsDocument {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let engine = self.engine();
        let pending = engine.held.iter().map(|h| serde_bytes::ByteBuf::from(h.clone())).collect();
        Snapshot { state: engine.state(), pending }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for YrsDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let snap = Snapshot::deserialize(d)?;
        let held: Vec<Vec<u8>> = snap.pending.into_iter().map(|b| b.into_vec()).collect();
        let engine =
            Engine::load(0, &snap.state, &held).map_err(|e| serde::de::Error::custom(format!("yrs snapshot: {e}")))?;
        Ok(YrsDocument { engine: Mutex::new(engine) })
    }
}

/// Bytes that are not a yrs update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct YrsUpdateError(pub String);

impl CmRDT for YrsDocument {
    type Op = EngineUpdate;
    type Validation = YrsUpdateError;

    fn validate_op(&self, op: &EngineUpdate) -> Result<(), YrsUpdateError> {
        decode(&op.0).map(|_| ()).map_err(YrsUpdateError)
    }

    /// Imports the update (one the document already holds changes nothing).
    fn apply(&mut self, op: EngineUpdate) {
        let res = self.engine().import(&op.0);
        if let Err(e) = res {
            tracing::warn!("yrs update of {} bytes not imported: {e}", op.0.len());
        }
    }
}

impl CvRDT for YrsDocument {
    type Validation = std::convert::Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        let (state, held) = {
            let o = other.engine();
            (o.state(), o.held.clone())
        };
        let mut engine = self.engine();
        if let Err(e) = engine.import_state(&state) {
            tracing::warn!("yrs state of {} bytes not merged: {e}", state.len());
        }
        for bytes in &held {
            if let Err(e) = engine.import(bytes) {
                tracing::warn!("yrs state of {} bytes not merged: {e}", bytes.len());
            }
        }
    }
}

impl Document for YrsDocument {
    type Operation = EngineUpdate;

    const EDITS_IN_PLACE: bool = true;

    /// Refuses an update holding blocks (insertions, including ones since
    /// deleted or collected) under a yrs client id other than the author's
    /// [`engine_peer_id`]. Its delete set may name any client.
    fn check_author(op: &EngineUpdate, author: &ActorId) -> Result<(), String> {
        let update = decode(&op.0)?;
        let own = engine_peer_id(author);
        let mut others: Vec<u64> =
            update.insertions(true).client_ids().map(|c| c.get()).filter(|c| *c != own).collect();
        others.extend(update.state_vector_lower().iter().map(|(c, _)| c.get()).filter(|c| *c != own));
        others.sort_unstable();
        match others.first() {
            None => Ok(()),
            Some(c) => Err(format!("the yrs update inserts under client id {c}, but its author's client id is {own}")),
        }
    }

    fn encode_op(op: &EngineUpdate, _cx: &OpContext, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(&op.0);
        Ok(())
    }

    fn decode_op(bytes: &[u8], _cx: &OpContext) -> Result<EngineUpdate, String> {
        Ok(EngineUpdate(bytes.to_vec()))
    }

    /// The contents of every root type that holds anything (texts as
    /// strings, arrays in order, maps by key, nested), read from a fresh
    /// copy of the state so that only the contents count (not which roots
    /// this replica declared, nor of which type).
    fn canonical(&self) -> Vec<u8> {
        let fresh = match self.engine().copy(0) {
            Ok(e) => e.doc,
            Err(e) => return canonical_tree(&Value::Text(format!("unreadable: {e}"))),
        };
        let txn = fresh.transact();
        let mut roots = Vec::new();
        for (name, out) in txn.root_refs() {
            let v = root_value(&txn, out);
            let empty = match &v {
                Value::Text(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Map(m) => m.is_empty(),
                Value::Null => true,
                _ => false,
            };
            if !empty {
                roots.push((Value::Text(name.to_string()), v));
            }
        }
        canonical_tree(&Value::Map(roots))
    }
}

impl TextDocument for YrsDocument {
    fn text(&self, name: &str) -> String {
        let doc = self.live();
        let txn = doc.transact();
        txn.get_text(name).map(|t| t.get_string(&txn)).unwrap_or_default()
    }

    fn edit_text(&self, actor: ActorId, name: &str, edits: &[TextEdit]) -> Result<EngineUpdate, String> {
        let (op, checked) = self.edit(actor, |txn| {
            let text = txn.get_or_insert_text(name);
            let mut now = text.get_string(txn);
            check_text_edits(now.chars().count(), edits)?;
            // Character positions to byte offsets, on a copy kept in step.
            let byte_at = |s: &str, pos: usize| s.char_indices().nth(pos).map_or(s.len(), |(i, _)| i);
            let long = |n: usize| u32::try_from(n).map_err(|_| "the text is longer than 4 GiB".to_string());
            let mut total = now.len();
            for e in edits {
                total += match e {
                    TextEdit::Insert { text, .. } => text.len(),
                    TextEdit::Delete { .. } => 0,
                };
            }
            long(total)?;
            for e in edits {
                match e {
                    TextEdit::Insert { pos, text: t } => {
                        let at = byte_at(&now, *pos);
                        text.insert(txn, at as u32, t);
                        now.insert_str(at, t);
                    }
                    TextEdit::Delete { pos, len } => {
                        let (from, to) = (byte_at(&now, *pos), byte_at(&now, pos + len));
                        text.remove_range(txn, from as u32, (to - from) as u32);
                        now.replace_range(from..to, "");
                    }
                }
            }
            Ok::<(), String>(())
        })?;
        checked.map(|()| op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(pos: usize, t: &str) -> TextEdit {
        TextEdit::Insert { pos, text: t.into() }
    }

    #[test]
    fn text_edits_count_characters() {
        let d = YrsDocument::default();
        let a = ActorId([1; 32]);
        d.edit_text(a, "t", &[ins(0, "héllo wörld")]).unwrap();
        d.edit_text(a, "t", &[TextEdit::Delete { pos: 1, len: 4 }, ins(1, "ey")]).unwrap();
        assert_eq!(d.text("t"), "hey wörld");
        assert!(d.edit_text(a, "t", &[ins(0, "x"), ins(99, "y")]).is_err());
        assert_eq!(d.text("t"), "hey wörld");
        assert_eq!(d.live().client_id().get(), engine_peer_id(&a));
    }

    #[test]
    fn updates_import_in_any_order_and_twice() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let da = YrsDocument::default();
        let op1 = da.edit_text(a, "t", &[ins(0, "abc")]).unwrap();
        let mut db = YrsDocument::default();
        db.apply(op1.clone());
        let op2 = db.edit_text(b, "t", &[ins(1, "X"), TextEdit::Delete { pos: 3, len: 1 }]).unwrap();
        let mut dc = YrsDocument::default();
        dc.apply(op2.clone());
        dc.apply(op1.clone());
        dc.apply(op1.clone());
        let mut da = da;
        da.apply(op2);
        da.apply(op1);
        assert_eq!(da.text("t"), "aXb");
        assert_eq!(dc.text("t"), "aXb");
        assert_eq!(da.canonical(), dc.canonical());
        assert_eq!(db.canonical(), dc.canonical());
        let back: YrsDocument = ciborium::from_reader(
            &{
                let mut v = Vec::new();
                ciborium::into_writer(&dc, &mut v).unwrap();
                v
            }[..],
        )
        .unwrap();
        assert_eq!(back.canonical(), dc.canonical());
    }

    #[test]
    fn authors_cannot_insert_under_another_id() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let d = YrsDocument::default();
        let op = d.edit_text(a, "t", &[ins(0, "abc")]).unwrap();
        assert_eq!(YrsDocument::check_author(&op, &a), Ok(()));
        let e = YrsDocument::check_author(&op, &b).unwrap_err();
        assert!(e.contains(&engine_peer_id(&a).to_string()), "{e}");
        // Deleting another's text is an edit like any other.
        let del = d.edit_text(b, "t", &[TextEdit::Delete { pos: 0, len: 2 }]).unwrap();
        assert_eq!(YrsDocument::check_author(&del, &b), Ok(()));
        // A later edit (its blocks not starting at clock 0) is checked too.
        let more = d.edit_text(a, "t", &[ins(1, "zz")]).unwrap();
        assert!(YrsDocument::check_author(&more, &b).is_err());
    }

    #[test]
    fn malformed_snapshots_are_errors() {
        let r: Result<YrsDocument, _> = ciborium::from_reader(&[0x43, 1, 2, 3][..]);
        assert!(r.is_err());
    }
}
