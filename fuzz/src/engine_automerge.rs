//! The automerge adapter on hostile bytes: `decode_op`, `check_op`,
//! `check_author` and `apply` of arbitrary bytes on a document with some
//! content never panic; what decodes encodes to exactly the input (an
//! operation's bytes are the engine's update); an update that passes the
//! checks changes nothing more when applied twice.
//!
//! Input: the bytes of one operation as they come off the wire, authored
//! (signed) by `ActorId([2; 32])`; the document holds a text `body` of
//! `ActorId([1; 32])`, written by one change with no timestamp (so its
//! hash, which a seed may depend on, is the same on every run).

use crdts::CmRDT;
use walrus::replica::engines::{AutomergeDocument, EngineUpdate, TextDocument, TextEdit};
use walrus::replica::{ActorId, Document, OpContext};

/// The owner of the document's text.
pub const OWNER: ActorId = ActorId([1; 32]);
/// The author of the fuzzed operation.
pub const PEER: ActorId = ActorId([2; 32]);

/// The document the input is applied to, and the owner's operation that
/// made it.
pub fn document() -> (AutomergeDocument, EngineUpdate) {
    let doc = AutomergeDocument::default();
    let op = doc.edit_text(OWNER, "body", &[TextEdit::Insert { pos: 0, text: "some text".into() }]).expect("an edit");
    (doc, op)
}

pub fn check(data: &[u8]) {
    let (doc, _) = document();
    let cx = OpContext { author: &PEER, seq: 1 };
    let Ok(op) = AutomergeDocument::decode_op(data, &cx) else { return };
    let mut out = Vec::new();
    AutomergeDocument::encode_op(&op, &cx, &mut out).expect("encoding an update");
    assert_eq!(out, data, "an operation's bytes are the update");
    let checked = doc.check_op(&op).is_ok() && AutomergeDocument::check_author(&op, &PEER).is_ok();
    let mut applied = doc.clone();
    applied.apply(op.clone());
    let once = applied.canonical();
    if checked {
        applied.apply(op);
        assert_eq!(applied.canonical(), once, "applying an update twice");
    }
}
