//! The automerge adapter through walrus: the CRDT laws, forged updates,
//! durable replicas, catch-up sync, in-place edits that are refused, and
//! hostile bytes.
#![cfg(feature = "automerge")]

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ROOT};
use crdts::CmRDT;
use walrus::replica::engines::{engine_peer_id, AutomergeDocument, EngineUpdate, TextDocument, TextEdit};
use walrus::replica::{ActorId, ActorKey, ChainHash, Document, OpContext, OpEnvelope, Replica, ReplicaOptions};
use walrus::sync::{apply_response, request, respond, Limits};

const DOC: &str = "notes";

fn opts() -> ReplicaOptions {
    ReplicaOptions { document: Some(DOC.into()), ..ReplicaOptions::default() }
}

fn ins(pos: usize, text: &str) -> TextEdit {
    TextEdit::Insert { pos, text: text.into() }
}

/// Random inserts and deletes in two texts, and a nested map holding a
/// list, through the native API.
fn automerge_op(doc: &AutomergeDocument, actor: ActorId, r: u64) -> EngineUpdate {
    let name = if r.is_multiple_of(2) { "a" } else { "b" };
    match (r >> 1) % 5 {
        0 => {
            doc.edit(actor, |tx| {
                let meta = match tx.get(ROOT, "meta").unwrap() {
                    Some((automerge::Value::Object(ObjType::Map), id)) => id,
                    _ => tx.put_object(ROOT, "meta", ObjType::Map).unwrap(),
                };
                tx.put(&meta, format!("k{}", (r >> 8) % 3), (r >> 16) as i64 % 100).unwrap();
                let list = match tx.get(&meta, "items").unwrap() {
                    Some((automerge::Value::Object(ObjType::List), id)) => id,
                    _ => tx.put_object(&meta, "items", ObjType::List).unwrap(),
                };
                let len = tx.length(&list);
                if len > 0 && (r >> 20).is_multiple_of(3) {
                    tx.delete(&list, ((r >> 24) as usize) % len).unwrap();
                } else {
                    tx.insert(&list, ((r >> 24) as usize) % (len + 1), format!("i{}", (r >> 32) % 10)).unwrap();
                }
            })
            .unwrap()
            .0
        }
        1 => {
            let len = doc.text(name).chars().count();
            if len == 0 {
                return doc.edit_text(actor, name, &[ins(0, "x")]).unwrap();
            }
            let pos = ((r >> 8) as usize) % len;
            let n = 1 + ((r >> 16) as usize) % (len - pos).min(3);
            doc.edit_text(actor, name, &[TextEdit::Delete { pos, len: n }]).unwrap()
        }
        _ => {
            let len = doc.text(name).chars().count();
            let pos = ((r >> 8) as usize) % (len + 1);
            let words = ["é", "ab", "🦀z", "hello "];
            doc.edit_text(actor, name, &[ins(pos, words[((r >> 16) % 4) as usize])]).unwrap()
        }
    }
}

#[test]
fn automerge_documents_keep_the_crdt_laws() {
    walrus::testing::check_laws_cases::<AutomergeDocument>(&automerge_op, 24);
}

#[test]
fn a_forged_update_is_a_peer_fault() {
    let (x, y) = (ActorKey::from_seed([1; 32]), ActorKey::from_seed([2; 32]));
    // An update made under X's engine id, signed by Y.
    let op = AutomergeDocument::default().edit_text(x.actor(), "body", &[ins(0, "forged")]).unwrap();
    let err = AutomergeDocument::check_author(&op, &y.actor()).unwrap_err();
    assert!(err.contains(&engine_peer_id(&x.actor()).to_string()), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let mut r: Replica<AutomergeDocument> = Replica::open(dir.path(), opts()).unwrap();
    let env = OpEnvelope::signed::<AutomergeDocument>(&y, DOC, 1, ChainHash::ZERO, op).unwrap();
    let got = r.receive([env]).unwrap_err();
    assert!(got.is_peer_fault(), "{got:?}");
    assert_eq!(r.doc().text("body"), "");
    // The same update signed by X is taken.
    let op = AutomergeDocument::default().edit_text(x.actor(), "body", &[ins(0, "mine")]).unwrap();
    let env = OpEnvelope::signed::<AutomergeDocument>(&x, DOC, 1, ChainHash::ZERO, op).unwrap();
    r.receive([env]).unwrap();
    assert_eq!(r.doc().text("body"), "mine");
}

#[test]
fn a_durable_replica_reopens_and_a_peer_catches_up() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a: Replica<AutomergeDocument> = Replica::open(da.path(), opts()).unwrap();
    a.update(|d, me| d.edit_text(me, "body", &[ins(0, "hello world")]).unwrap()).unwrap();
    a.update(|d, me| d.edit_text(me, "body", &[TextEdit::Delete { pos: 5, len: 6 }, ins(5, ", 世界")]).unwrap())
        .unwrap();
    a.update(|d, me| {
        d.edit(me, |tx| {
            let l = tx.put_object(ROOT, "list", ObjType::List).unwrap();
            tx.insert(&l, 0, 42i64).unwrap();
        })
        .unwrap()
        .0
    })
    .unwrap();
    a.checkpoint().unwrap();
    a.update(|d, me| d.edit_text(me, "body", &[ins(0, ">")]).unwrap()).unwrap();
    drop(a);
    let a: Replica<AutomergeDocument> = Replica::open(da.path(), opts()).unwrap();
    assert_eq!(a.doc().text("body"), ">hello, 世界");
    let mut b: Replica<AutomergeDocument> = Replica::open(db.path(), opts()).unwrap();
    let limits = Limits::default();
    for _ in 0..10 {
        let resp = respond(&a, DOC, &request(&b, DOC, 1 << 20), &limits);
        if !apply_response(&mut b, DOC, resp, &limits).unwrap().more {
            break;
        }
    }
    assert_eq!(b.doc().text("body"), ">hello, 世界");
    assert_eq!(b.doc().canonical(), a.doc().canonical());
    assert_eq!(b.doc().with_doc(|d| d.length(d.get(ROOT, "list").unwrap().unwrap().1)), 1);
}

#[test]
fn an_edit_the_replica_refuses_poisons_it_and_a_reopen_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    // Small edits fit; a long insert makes an operation over the limit.
    let small = ReplicaOptions { max_op_size: 256, ..opts() };
    let mut r: Replica<AutomergeDocument> = Replica::open(dir.path(), small.clone()).unwrap();
    r.update(|d, me| d.edit_text(me, "body", &[ins(0, "kept")]).unwrap()).unwrap();
    let long = "x".repeat(2000);
    assert!(r.update(|d, me| d.edit_text(me, "body", &[ins(4, &long)]).unwrap()).is_err());
    assert!(r.is_poisoned());
    assert!(
        r.update(|d, me| d.edit_text(me, "body", &[ins(0, "!")]).unwrap()).is_err(),
        "a poisoned replica writes nothing"
    );
    drop(r);
    let mut r: Replica<AutomergeDocument> = Replica::open(dir.path(), small).unwrap();
    assert!(!r.is_poisoned());
    assert_eq!(r.doc().text("body"), "kept");
    r.update(|d, me| d.edit_text(me, "body", &[ins(4, "!")]).unwrap()).unwrap();
    assert_eq!(r.doc().text("body"), "kept!");
}

#[test]
fn hostile_bytes_never_panic() {
    let doc = AutomergeDocument::default();
    let me = ActorId([9; 32]);
    let real = doc.edit_text(me, "body", &[ins(0, "some text to corrupt")]).unwrap();
    let cx = OpContext { author: &me, seq: 1 };
    let mut rng = fastrand::Rng::with_seed(7);
    let mut inputs: Vec<Vec<u8>> = (0..real.0.len()).map(|n| real.0[..n].to_vec()).collect();
    for _ in 0..2000 {
        let mut b = real.0.clone();
        for _ in 0..1 + rng.usize(..4) {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        inputs.push(b);
        inputs.push((0..rng.usize(..64)).map(|_| rng.u8(..)).collect());
    }
    for bytes in inputs {
        if let Ok(op) = AutomergeDocument::decode_op(&bytes, &cx) {
            let _ = doc.check_op(&op);
            let _ = AutomergeDocument::check_author(&op, &me);
            let mut d = doc.clone();
            d.apply(op);
        }
    }
    assert_eq!(doc.text("body"), "some text to corrupt");
    // A malformed snapshot is an error.
    let bad: Result<AutomergeDocument, _> = ciborium::from_reader(&[0x44, 1, 2, 3, 4][..]);
    assert!(bad.is_err());
}
