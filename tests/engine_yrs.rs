//! The yrs adapter through replicas: the CRDT laws, authorship, durable
//! replicas, sync, poisoning by an unlogged edit, hostile bytes.
#![cfg(feature = "yrs")]

use walrus::replica::engines::{engine_peer_id, EngineUpdate, TextDocument, TextEdit, YrsDocument};
use walrus::replica::{ActorId, ActorKey, ChainHash, Document, OpContext, OpEnvelope, Replica, ReplicaOptions};
use walrus::sync::{apply_response, request, respond, Limits};
use yrs::{Array, ArrayPrelim, Map, MapPrelim, Out, ReadTxn, Transact, WriteTxn};

/// Random inserts and deletes in two texts, and nested maps and lists made
/// with yrs' own API.
fn gen(doc: &YrsDocument, actor: ActorId, r: u64) -> EngineUpdate {
    let name = if r & 1 == 0 { "a" } else { "b" };
    let len = doc.text(name).chars().count() as u64;
    let pieces = ["x", "yé", "🦀z", "hello "];
    match (r >> 1) % 5 {
        0 | 1 => {
            let pos = ((r >> 8) % (len + 1)) as usize;
            let text = pieces[((r >> 16) % 4) as usize].to_string();
            doc.edit_text(actor, name, &[TextEdit::Insert { pos, text }]).unwrap()
        }
        2 if len > 0 => {
            let pos = (r >> 8) % len;
            let n = 1 + (r >> 16) % (len - pos).min(3);
            let edits = [
                TextEdit::Delete { pos: pos as usize, len: n as usize },
                TextEdit::Insert { pos: 0, text: "é".into() },
            ];
            doc.edit_text(actor, name, &edits).unwrap()
        }
        _ => {
            let key = format!("k{}", (r >> 8) % 3);
            let (op, ()) = doc
                .edit(actor, |txn| {
                    let m = txn.get_or_insert_map("m");
                    match (m.get(txn, &key), (r >> 12) % 4) {
                        (Some(Out::YArray(list)), 0 | 1) => {
                            let at = ((r >> 20) as u32) % (list.len(txn) + 1);
                            list.insert(txn, at, format!("v{}", (r >> 28) % 10));
                        }
                        (Some(Out::YArray(list)), 2) if list.len(txn) > 0 => {
                            let at = ((r >> 20) as u32) % list.len(txn);
                            list.remove(txn, at);
                        }
                        (Some(Out::YMap(inner)), 0 | 1) => {
                            inner.insert(txn, format!("n{}", (r >> 20) % 3), (r >> 28) as i64 % 100);
                        }
                        (Some(_), 3) => {
                            m.remove(txn, &key);
                        }
                        _ if (r >> 16).is_multiple_of(2) => {
                            m.insert(txn, key.clone(), ArrayPrelim::from(["first".to_string()]));
                        }
                        _ => {
                            m.insert(txn, key.clone(), MapPrelim::from([("n0", 1i64)]));
                        }
                    }
                })
                .unwrap();
            op
        }
    }
}

#[test]
fn yrs_documents_keep_the_crdt_laws() {
    walrus::testing::check_laws_cases::<YrsDocument>(&gen, 24);
}

fn opts() -> ReplicaOptions {
    ReplicaOptions::default()
}

fn ins(pos: usize, t: &str) -> TextEdit {
    TextEdit::Insert { pos, text: t.into() }
}

#[test]
fn a_forged_update_is_refused_as_a_peer_fault() {
    let dir = tempfile::tempdir().unwrap();
    let mut r: Replica<YrsDocument> = Replica::open(dir.path(), opts()).unwrap();
    // An update made under X's engine id, signed by Y.
    let (x, y) = (ActorKey::from_seed([9; 32]), ActorKey::from_seed([10; 32]));
    let op = YrsDocument::default().edit_text(x.actor(), "t", &[ins(0, "not mine")]).unwrap();
    let e = YrsDocument::check_author(&op, &y.actor()).unwrap_err();
    assert!(e.contains(&engine_peer_id(&x.actor()).to_string()), "{e}");
    let env = OpEnvelope::signed::<YrsDocument>(&y, "", 1, ChainHash::ZERO, op.clone()).unwrap();
    let err = r.receive([env]).unwrap_err();
    assert!(err.is_peer_fault(), "{err}");
    assert_eq!(r.doc().text("t"), "");
    // The same update signed by its own writer is accepted.
    let env = OpEnvelope::signed::<YrsDocument>(&x, "", 1, ChainHash::ZERO, op).unwrap();
    r.receive([env]).unwrap();
    assert_eq!(r.doc().text("t"), "not mine");
}

#[test]
fn durable_replicas_reopen_and_sync() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a: Replica<YrsDocument> = Replica::open(da.path(), opts()).unwrap();
    a.update(|d, actor| d.edit_text(actor, "body", &[ins(0, "héllo wörld")]).unwrap()).unwrap();
    a.update(|d, actor| d.edit_text(actor, "body", &[TextEdit::Delete { pos: 0, len: 1 }, ins(0, "H")]).unwrap())
        .unwrap();
    a.update(|d, actor| {
        d.edit(actor, |txn| {
            let list = txn.get_or_insert_array("list");
            list.push_back(txn, MapPrelim::from([("done", true)]));
        })
        .unwrap()
        .0
    })
    .unwrap();
    a.checkpoint().unwrap();
    a.update(|d, actor| d.edit_text(actor, "body", &[ins(11, "!")]).unwrap()).unwrap();
    assert_eq!(a.doc().text("body"), "Héllo wörld!");
    let canonical = a.doc().canonical();
    drop(a);
    let a: Replica<YrsDocument> = Replica::open(da.path(), opts()).unwrap();
    assert_eq!(a.doc().text("body"), "Héllo wörld!");
    assert_eq!(a.doc().canonical(), canonical);

    let mut b: Replica<YrsDocument> = Replica::open(db.path(), opts()).unwrap();
    let limits = Limits::default();
    for _ in 0..100 {
        let req = request(&b, "doc", 1 << 20);
        let resp = respond(&a, "doc", &req, &limits);
        if !apply_response(&mut b, "doc", resp, &limits).unwrap().more {
            break;
        }
    }
    assert_eq!(b.doc().text("body"), "Héllo wörld!");
    assert_eq!(b.doc().canonical(), a.doc().canonical());
    // b writes on (under its own engine id) and a catches up.
    b.update(|d, actor| d.edit_text(actor, "body", &[ins(0, "¡")]).unwrap()).unwrap();
    let mut a = a;
    let req = request(&a, "doc", 1 << 20);
    apply_response(&mut a, "doc", respond(&b, "doc", &req, &limits), &limits).unwrap();
    assert_eq!(a.doc().text("body"), "¡Héllo wörld!");
    assert_eq!(b.doc().canonical(), a.doc().canonical());
}

#[test]
fn an_edit_the_replica_refuses_poisons_it() {
    let dir = tempfile::tempdir().unwrap();
    let small = || ReplicaOptions { max_op_size: 64, ..opts() };
    let mut r: Replica<YrsDocument> = Replica::open(dir.path(), small()).unwrap();
    r.update(|d, actor| d.edit_text(actor, "t", &[ins(0, "ok")]).unwrap()).unwrap();
    let long = "x".repeat(500);
    assert!(r.update(|d, actor| d.edit_text(actor, "t", &[ins(2, &long)]).unwrap()).is_err());
    assert!(r.is_poisoned());
    drop(r);
    let r: Replica<YrsDocument> = Replica::open(dir.path(), small()).unwrap();
    assert!(!r.is_poisoned());
    assert_eq!(r.doc().text("t"), "ok");
}

#[test]
fn hostile_bytes_never_panic() {
    let key = ActorKey::from_seed([3; 32]);
    let author = key.actor();
    let cx = OpContext { author: &author, seq: 1 };
    let doc = YrsDocument::default();
    let real = doc.edit_text(author, "t", &[ins(0, "hello")]).unwrap();
    let real2 = doc
        .edit(author, |txn| {
            let m = txn.get_or_insert_map("m");
            m.insert(txn, "k", ArrayPrelim::from([1i64, 2, 3]));
        })
        .unwrap()
        .0;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0xff; 64]];
    for base in [&real.0, &real2.0] {
        for cut in 0..base.len() {
            inputs.push(base[..cut].to_vec());
        }
        for _ in 0..300 {
            let mut b = base.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            inputs.push(b);
        }
    }
    for _ in 0..300 {
        inputs.push((0..rng.usize(..64)).map(|_| rng.u8(..)).collect());
    }
    for bytes in inputs {
        let op = YrsDocument::decode_op(&bytes, &cx).unwrap();
        assert_eq!(op.0, bytes);
        let mut d = doc.clone();
        if d.check_op(&op).is_ok() {
            let _ = YrsDocument::check_author(&op, &author);
            crdts::CmRDT::apply(&mut d, op);
            let _ = d.canonical();
            let _ = d.text("t");
        }
    }
}

/// Writes the seeds of the fuzz target `engine_yrs` (real updates made on
/// the document the target starts from): `cargo test --features yrs --test
/// engine_yrs -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let doc = YrsDocument::default();
    doc.edit_text(ActorId([1; 32]), "t", &[ins(0, "hello wörld")]).unwrap();
    doc.edit(ActorId([2; 32]), |txn| {
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "k", ArrayPrelim::from([1i64, 2]));
    })
    .unwrap();
    let state = doc.with_doc(|d| d.transact().encode_state_as_update_v2(&yrs::StateVector::default()));
    let edit = doc.edit_text(ActorId([1; 32]), "t", &[TextEdit::Delete { pos: 2, len: 3 }, ins(4, "✎ yes")]).unwrap();
    let nested = doc
        .edit(ActorId([1; 32]), |txn| {
            let m = txn.get_or_insert_map("m");
            if let Some(Out::YArray(list)) = m.get(txn, "k") {
                list.insert(txn, 1, MapPrelim::from([("x", "y")]));
                list.remove(txn, 0);
            }
        })
        .unwrap()
        .0;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/engine_yrs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seed-state"), state).unwrap();
    std::fs::write(dir.join("seed-text-edit"), edit.0).unwrap();
    std::fs::write(dir.join("seed-nested-edit"), nested.0).unwrap();
}
