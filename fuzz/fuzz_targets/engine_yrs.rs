//! The yrs adapter on hostile bytes: `decode_op`, `check_op`,
//! `check_author` and `apply` of arbitrary bytes on a document with some
//! content never panic; bytes that `check_op` accepts apply twice as once,
//! and the state survives its snapshot round trip.
#![no_main]

use std::sync::OnceLock;

use crdts::CmRDT;
use libfuzzer_sys::fuzz_target;
use walrus::replica::engines::{TextDocument, TextEdit, YrsDocument};
use walrus::replica::{ActorId, Document, OpContext};

/// A document with a text by one writer and a nested map by another (the
/// state the seeds under `corpus/engine_yrs` were made on).
fn base() -> &'static YrsDocument {
    static BASE: OnceLock<YrsDocument> = OnceLock::new();
    BASE.get_or_init(|| {
        let doc = YrsDocument::default();
        let ins = |pos, t: &str| TextEdit::Insert { pos, text: t.into() };
        doc.edit_text(ActorId([1; 32]), "t", &[ins(0, "hello wörld")]).unwrap();
        doc.edit(ActorId([2; 32]), |txn| {
            use yrs::{Map, WriteTxn};
            let m = txn.get_or_insert_map("m");
            m.insert(txn, "k", yrs::ArrayPrelim::from([1i64, 2]));
        })
        .unwrap();
        doc
    })
}

/// yrs debug-asserts inside its decoder (a client id over 53 bits), and the
/// adapter catches that panic and refuses the bytes, as in a release
/// build. libFuzzer's hook would abort on the caught panic: a panic that
/// escapes the target still aborts (it cannot unwind out of it).
fn quiet_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    quiet_caught_panics();
    let author = ActorId([1; 32]);
    let cx = OpContext { author: &author, seq: 1 };
    let op = YrsDocument::decode_op(data, &cx).expect("decode_op takes any bytes");
    assert_eq!(op.0, data, "an operation's bytes are the update");
    let mut doc = base().clone();
    if doc.check_op(&op).is_err() {
        return;
    }
    let _ = YrsDocument::check_author(&op, &author);
    doc.apply(op.clone());
    let once = doc.canonical();
    doc.apply(op);
    assert_eq!(doc.canonical(), once, "applying an update twice changes nothing more");
    let _ = doc.text("t");
    let mut bytes = Vec::new();
    ciborium::into_writer(&doc, &mut bytes).unwrap();
    let back: YrsDocument = ciborium::from_reader(&bytes[..]).expect("a snapshot loads back");
    assert_eq!(back.canonical(), once, "the snapshot holds the state");
});
