//! Documents of collaborative editing engines: text, lists, maps and nested
//! JSON-like trees as [`yrs`](https://docs.rs/yrs), [`loro`](https://docs.rs/loro)
//! and [`automerge`](https://docs.rs/automerge) hold them, replicated by
//! walrus (each behind the cargo feature of the same name).
//!
//! An adapter is a [`Document`] whose operation is one engine transaction's
//! update bytes ([`EngineUpdate`]), whose state is the engine's document and
//! whose checkpoint is the engine's snapshot. The rules every adapter keeps
//! (docs/REPLICA.md, "Engine documents"):
//!
//! - **Edits are made on the live document** ([`Document::EDITS_IN_PLACE`]):
//!   an engine makes an update by applying it, so the operation an
//!   `update` closure returns is already in the state. The replica keeps the
//!   write-ahead rule as for every write (nothing is seen, acknowledged or
//!   sent before the operation is durable), and an edit made but not logged
//!   (a failed append, an operation refused, a closure that panicked)
//!   leaves the replica poisoned: it is reopened from its log, never read
//!   in between.
//! - **Authorship holds inside the engine**: the engine's own id for a
//!   writer is derived from its walrus actor ([`engine_peer_id`]), and
//!   [`Document::check_author`] refuses an update that inserts anything
//!   under another id, so no writer can forge or shadow another's edits.
//! - **Canonical contents**: [`Document::canonical`] encodes the document's
//!   contents (texts as strings, lists in order, maps by key), equal for
//!   equal contents whatever order the updates arrived in.

use serde::{Deserialize, Serialize};

use super::{ActorId, Document};

#[cfg(feature = "automerge")]
mod automerge_doc;
#[cfg(feature = "automerge")]
pub use automerge_doc::{automerge_actor, AutomergeDocument, AutomergeUpdateError};
#[cfg(feature = "loro")]
mod loro_doc;
#[cfg(feature = "yrs")]
mod yrs_doc;
#[cfg(feature = "yrs")]
pub use yrs_doc::{YrsDocument, YrsUpdateError};

#[cfg(feature = "loro")]
pub use loro_doc::{LoroDocument, LoroRefused};

/// One engine transaction's update, as the engine encoded it: the bytes
/// that are hashed into the author's chain, logged and sent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineUpdate(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for EngineUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineUpdate({} bytes)", self.0.len())
    }
}

/// One edit of a text, positions and lengths counted in Unicode scalar
/// values (`char`s), as editors and the public editing traces count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextEdit {
    /// Inserts `text` before the character at `pos` (at the end if `pos`
    /// is the text's length).
    Insert {
        /// Where, in characters.
        pos: usize,
        /// What.
        text: String,
    },
    /// Deletes `len` characters from `pos`.
    Delete {
        /// Where, in characters.
        pos: usize,
        /// How many characters.
        len: usize,
    },
}

/// A document holding texts by name, edited in place: what every engine
/// adapter offers for plain text, next to the engine's own API for lists,
/// maps and nesting.
///
/// ```ignore
/// let op = doc.edit_text(actor, "body", &[TextEdit::Insert { pos: 0, text: "hello".into() }])?;
/// assert_eq!(doc.text("body"), "hello");
/// ```
pub trait TextDocument: Document {
    /// The text named `name` (empty if there is none).
    fn text(&self, name: &str) -> String;

    /// Makes `edits`, in order, to the text named `name`, as one operation
    /// of `actor` (the replica's actor, given to an `update` closure). The
    /// edit is made on this document at once ([`Document::EDITS_IN_PLACE`]).
    /// Positions past the end are an error, and nothing is changed then.
    fn edit_text(&self, actor: ActorId, name: &str, edits: &[TextEdit]) -> Result<Self::Operation, String>;

    /// The engine's own encoding of the whole document as an update a fresh
    /// peer would import (what the engine alone would send to catch one
    /// up), for comparisons. The default is the document's snapshot (its
    /// serde form).
    fn full_update(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail on the writer's side.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }
}

/// The engine's id for the writer `actor`: 53 bits (what JavaScript peers
/// of yrs can hold) of a BLAKE3 hash of the actor under its own context, so
/// every replica derives the same id and none can be chosen to collide.
pub fn engine_peer_id(actor: &ActorId) -> u64 {
    let hash = blake3::derive_key("walrus 2026-12 engine peer id", &actor.0);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first) & ((1 << 53) - 1)
}

/// Checks a batch of text edits against a text of `len` characters before
/// any is made (an engine would panic or fail part-way): each in range of
/// the text as the edits before it left it.
pub fn check_text_edits(mut len: usize, edits: &[TextEdit]) -> Result<(), String> {
    for (i, e) in edits.iter().enumerate() {
        match e {
            TextEdit::Insert { pos, text } => {
                if *pos > len {
                    return Err(format!("edit {i}: insert at {pos}, past the end of a text of {len} characters"));
                }
                len += text.chars().count();
            }
            TextEdit::Delete { pos, len: n } => {
                let end = pos.checked_add(*n).filter(|end| *end <= len);
                if end.is_none() {
                    return Err(format!("edit {i}: delete {n} at {pos}, past the end of a text of {len} characters"));
                }
                len -= n;
            }
        }
    }
    Ok(())
}

/// CBOR of a document's contents as a tree: maps with their entries sorted
/// by their encoded keys, arrays (lists, in document order) as they are.
/// What adapters build [`Document::canonical`] from.
pub fn canonical_tree(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    super::document::encode_canonical(value, &mut out, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids_are_53_bits_and_differ_per_actor() {
        let a = engine_peer_id(&ActorId([1; 32]));
        let b = engine_peer_id(&ActorId([2; 32]));
        assert_ne!(a, b);
        assert!(a < 1 << 53 && b < 1 << 53);
        assert_eq!(a, engine_peer_id(&ActorId([1; 32])));
    }

    #[test]
    fn text_edits_are_checked_in_order() {
        let ins = |pos, t: &str| TextEdit::Insert { pos, text: t.into() };
        let del = |pos, len| TextEdit::Delete { pos, len };
        assert!(check_text_edits(0, &[ins(0, "héllo"), del(1, 4), ins(1, "i")]).is_ok());
        assert!(check_text_edits(0, &[ins(1, "x")]).is_err());
        assert!(check_text_edits(3, &[del(2, 2)]).is_err());
        assert!(check_text_edits(3, &[del(usize::MAX, 2)]).is_err());
    }

    #[test]
    fn a_tree_keeps_list_order_and_sorts_maps() {
        use ciborium::Value;
        let list = |v: Vec<i64>| Value::Array(v.into_iter().map(Value::from).collect());
        assert_ne!(canonical_tree(&list(vec![1, 2])), canonical_tree(&list(vec![2, 1])));
        let map =
            |v: Vec<(&str, i64)>| Value::Map(v.into_iter().map(|(k, x)| (Value::from(k), Value::from(x))).collect());
        assert_eq!(canonical_tree(&map(vec![("a", 1), ("b", 2)])), canonical_tree(&map(vec![("b", 2), ("a", 1)])));
    }
}
