//! The loro adapter on hostile bytes: `LoroDocument`'s `decode_op`,
//! `check_op`, `check_author` and `apply` of arbitrary bytes, and the
//! loading of an arbitrary checkpoint, never panic.
//!
//! Input layout: byte 0 picks the check (even: the rest is an operation's
//! bytes, applied to a document with some content if `check_op` accepts
//! them; odd: the rest is a checkpoint's snapshot), byte 1 the author (one
//! of four actors, the first of which wrote the document's content).
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrus::replica::engines::{LoroDocument, TextDocument, TextEdit};
use walrus::replica::{ActorId, Document, OpContext};

fn content(actor: ActorId) -> LoroDocument {
    let doc = LoroDocument::default();
    doc.edit_text(actor, "body", &[TextEdit::Insert { pos: 0, text: "héllo wörld".into() }]).unwrap();
    doc.edit_text(actor, "body", &[TextEdit::Delete { pos: 2, len: 3 }]).unwrap();
    doc.edit(actor, |d| {
        let m = d.get_map("meta");
        m.insert("title", "t").unwrap();
        m.insert_container("tags", loro::LoroList::new()).unwrap().push(1).unwrap();
    })
    .unwrap();
    doc
}

fuzz_target!(|data: &[u8]| {
    let (mode, author, bytes) = match data {
        [m, a, rest @ ..] => (*m, *a, rest),
        _ => return,
    };
    let writer = ActorId([1; 32]);
    let author = ActorId([1 + author % 4; 32]);
    if mode % 2 == 0 {
        let cx = OpContext { author: &author, seq: 1 };
        let Ok(op) = LoroDocument::decode_op(bytes, &cx) else { return };
        assert_eq!(op.0, bytes);
        let mut doc = content(writer);
        let ok = doc.check_op(&op).is_ok();
        let _ = LoroDocument::check_author(&op, &author);
        if ok {
            crdts::CmRDT::apply(&mut doc, op);
            let _ = doc.text("body");
            let _ = doc.canonical();
        }
    } else {
        // A checkpoint: CBOR of the snapshot (and no pending updates).
        let state = ciborium::Value::Map(vec![("snapshot".into(), ciborium::Value::Bytes(bytes.to_vec()))]);
        let mut cbor = Vec::new();
        ciborium::into_writer(&state, &mut cbor).unwrap();
        if let Ok(doc) = ciborium::from_reader::<LoroDocument, _>(&cbor[..]) {
            let _ = doc.canonical();
        }
    }
});
