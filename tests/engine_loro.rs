//! The loro adapter through walrus: the CRDT laws, forged updates,
//! durable replicas, catch-up, poisoning and hostile bytes.
#![cfg(all(feature = "loro", feature = "testing"))]

use walrus::replica::engines::{engine_peer_id, EngineUpdate, LoroDocument, TextDocument, TextEdit};
use walrus::replica::{ActorId, ActorKey, ChainHash, Document, OpContext, OpEnvelope, Replica, ReplicaOptions};
use walrus::sync::{self, Limits};

fn ins(pos: usize, text: &str) -> TextEdit {
    TextEdit::Insert { pos, text: text.into() }
}

/// Random inserts and deletes in two texts, and nested maps and lists.
fn gen(doc: &LoroDocument, actor: ActorId, r: u64) -> EngineUpdate {
    let name = if r & 1 == 0 { "a" } else { "b" };
    let len = doc.text(name).chars().count();
    let at = |x: u64| (x as usize) % (len + 1);
    match (r >> 1) % 5 {
        0 | 1 => {
            doc.edit_text(actor, name, &[ins(at(r >> 8), ["x", "é", "yz", "😀w"][(r >> 4) as usize % 4])]).unwrap()
        }
        2 if len > 0 => {
            let pos = (r >> 8) as usize % len;
            let n = 1 + (r >> 20) as usize % (len - pos).min(3);
            doc.edit_text(actor, name, &[TextEdit::Delete { pos, len: n }]).unwrap()
        }
        3 => {
            let (op, ()) = doc
                .edit(actor, |d| {
                    let meta = d.get_map("meta");
                    meta.insert(&format!("k{}", (r >> 8) % 3), (r >> 12) as i64 % 100).unwrap();
                    let tags = meta.ensure_mergeable_list("tags").unwrap();
                    tags.push(format!("t{}", (r >> 16) % 7)).unwrap();
                })
                .unwrap();
            op
        }
        _ => {
            let (op, ()) = doc
                .edit(actor, |d| {
                    let list = d.get_list("items");
                    if (r >> 8).is_multiple_of(3) && !list.is_empty() {
                        list.delete((r >> 10) as usize % list.len(), 1).unwrap();
                    } else {
                        let item = list.insert_container(0, loro::LoroMap::new()).unwrap();
                        item.insert("n", (r >> 16) as i64 % 10).unwrap();
                        let body = item.insert_container("body", loro::LoroText::new()).unwrap();
                        body.insert(0, "note").unwrap();
                    }
                })
                .unwrap();
            op
        }
    }
}

#[test]
fn loro_documents_keep_the_laws() {
    walrus::testing::check_laws_cases::<LoroDocument>(&gen, 24);
}

#[test]
fn an_update_under_another_writers_id_is_refused() {
    let (x, y) = (ActorKey::generate().unwrap(), ActorKey::generate().unwrap());
    // Made under X's engine id, signed by Y.
    let op = LoroDocument::default().edit_text(x.actor(), "body", &[ins(0, "forged")]).unwrap();
    let why = LoroDocument::check_author(&op, &y.actor()).unwrap_err();
    assert!(why.contains(&engine_peer_id(&x.actor()).to_string()), "{why}");
    assert!(LoroDocument::check_author(&op, &x.actor()).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let mut r: Replica<LoroDocument> = Replica::open(dir.path(), ReplicaOptions::default()).unwrap();
    let env = OpEnvelope::signed::<LoroDocument>(&y, r.document(), 1, ChainHash::ZERO, op).unwrap();
    let err = r.receive([env]).unwrap_err();
    assert!(err.is_peer_fault(), "{err}");
    assert_eq!(r.doc().text("body"), "");

    // A snapshot is no update, whoever signs it.
    let snap = LoroDocument::default();
    snap.edit_text(y.actor(), "body", &[ins(0, "s")]).unwrap();
    let bytes = snap.with_doc(|d| d.export(loro::ExportMode::Snapshot).unwrap());
    assert!(LoroDocument::check_author(&EngineUpdate(bytes), &y.actor()).is_err());
}

#[test]
fn a_durable_replica_reopens_and_a_peer_catches_up() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opts = || ReplicaOptions { document: Some("notes".into()), ..ReplicaOptions::default() };
    {
        let mut a: Replica<LoroDocument> = Replica::open(da.path(), opts()).unwrap();
        a.update(|d, actor| d.edit_text(actor, "body", &[ins(0, "hello wörld")]).unwrap()).unwrap();
        a.update(|d, actor| d.edit_text(actor, "body", &[TextEdit::Delete { pos: 5, len: 6 }, ins(5, "!")]).unwrap())
            .unwrap();
        a.update(|d, actor| d.edit(actor, |doc| doc.get_map("meta").insert("title", "greeting").unwrap()).unwrap().0)
            .unwrap();
        assert_eq!(a.doc().text("body"), "hello!");
    }
    let mut a: Replica<LoroDocument> = Replica::open(da.path(), opts()).unwrap();
    assert_eq!(a.doc().text("body"), "hello!");
    a.update(|d, actor| d.edit_text(actor, "body", &[ins(0, ">")]).unwrap()).unwrap();

    let mut b: Replica<LoroDocument> = Replica::open(db.path(), opts()).unwrap();
    let limits = Limits::default();
    for _ in 0..4 {
        let req = sync::request(&b, b.document(), 1 << 20);
        let resp = sync::respond(&a, a.document(), &req, &limits);
        let applied = sync::apply_response(&mut b, a.document(), resp, &limits).unwrap();
        if !applied.more {
            break;
        }
    }
    assert_eq!(b.doc().text("body"), ">hello!");
    assert_eq!(b.doc().canonical(), a.doc().canonical());
    // The peer edits too, and the first catches up.
    b.update(|d, actor| d.edit_text(actor, "body", &[ins(7, "?")]).unwrap()).unwrap();
    let req = sync::request(&a, a.document(), 1 << 20);
    let resp = sync::respond(&b, b.document(), &req, &limits);
    sync::apply_response(&mut a, b.document(), resp, &limits).unwrap();
    assert_eq!(a.doc().text("body"), ">hello!?");
    assert_eq!(b.doc().canonical(), a.doc().canonical());
}

#[test]
fn an_edit_the_replica_refuses_poisons_it_and_is_gone_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || ReplicaOptions { max_op_size: 256, ..ReplicaOptions::default() };
    {
        let mut r: Replica<LoroDocument> = Replica::open(dir.path(), opts()).unwrap();
        r.update(|d, actor| d.edit_text(actor, "body", &[ins(0, "kept")]).unwrap()).unwrap();
        let long = "x".repeat(4096);
        let refused = r.update(|d, actor| d.edit_text(actor, "body", &[ins(4, &long)]).unwrap());
        assert!(refused.is_err());
        assert!(r.is_poisoned());
    }
    let r: Replica<LoroDocument> = Replica::open(dir.path(), opts()).unwrap();
    assert!(!r.is_poisoned());
    assert_eq!(r.doc().text("body"), "kept");
}

#[test]
fn hostile_bytes_never_panic() {
    let doc = LoroDocument::default();
    let actor = ActorId([7; 32]);
    let real = doc.edit_text(actor, "body", &[ins(0, "some text to break")]).unwrap();
    let cx = OpContext { author: &actor, seq: 1 };
    let mut inputs: Vec<Vec<u8>> = vec![vec![], b"loro".to_vec(), vec![0; 64], vec![0xff; 300]];
    for cut in 0..real.0.len() {
        inputs.push(real.0[..cut].to_vec());
    }
    let mut rng = fastrand::Rng::with_seed(1);
    for i in 0..2000 {
        let mut b = real.0.clone();
        for _ in 0..1 + i % 4 {
            let at = rng.usize(..b.len());
            b[at] = rng.u8(..);
        }
        inputs.push(b);
        inputs.push((0..rng.usize(..200)).map(|_| rng.u8(..)).collect());
    }
    let mut target = doc.clone();
    for bytes in inputs {
        let op = LoroDocument::decode_op(&bytes, &cx).unwrap();
        let ok = target.check_op(&op).is_ok();
        let _ = LoroDocument::check_author(&op, &actor);
        if ok {
            crdts::CmRDT::apply(&mut target, op);
        }
    }
    assert_eq!(doc.text("body"), "some text to break");
}

/// The fuzz target's seeds (`fuzz/corpus/engine_loro/`) are real updates
/// of the writer the target's document is made by, after its two bytes.
#[test]
fn the_fuzz_seeds_are_real_updates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/engine_loro");
    let writer = ActorId([1; 32]);
    if std::env::var_os("WALRUS_WRITE_LORO_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        let doc = LoroDocument::default();
        let text = doc.edit_text(writer, "body", &[ins(0, "héllo")]).unwrap();
        let (map, ()) = doc
            .edit(writer, |d| {
                let list = d.get_map("meta").insert_container("tags", loro::LoroList::new()).unwrap();
                list.push("a").unwrap();
            })
            .unwrap();
        let snapshot = doc.with_doc(|d| d.export(loro::ExportMode::Snapshot).unwrap());
        for (name, head, bytes) in [
            ("seed-text-update", [0, 0], text.0),
            ("seed-map-update", [0, 0], map.0),
            ("seed-snapshot", [1, 0], snapshot),
        ] {
            std::fs::write(dir.join(name), [&head[..], &bytes].concat()).unwrap();
        }
    }
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let op = EngineUpdate(bytes[2..].to_vec());
        if bytes[0] % 2 == 0 {
            assert!(LoroDocument::default().check_op(&op).is_ok());
            assert!(LoroDocument::check_author(&op, &writer).is_ok());
        }
        seen += 1;
    }
    assert!(seen >= 2);
}
