//! Writes the committed seed corpus: `fuzz/corpus/<target>/seed-<name>`.
//!
//! Run from `fuzz/` with `cargo run --example gen_seeds`. Seeds are built
//! with the crate's own encoders (and, where a real segment file is needed,
//! by appending through `Wal`), and each is checked by its target's checks
//! before it is written.

use std::fs;
use std::path::{Path, PathBuf};

use walrus::wal::format::{
    encode_frame, SegmentHeader, FLAG_SYNCED_BEFORE, FRAME_HEADER_LEN, KIND_LAST, KIND_MORE, MAX_PAYLOAD_LEN,
};
use walrus::wal::{SyncPolicy, Wal, WalOptions};
use walrus_fuzz::decode::Config;
use walrus_fuzz::recover::{CraftedFrame, Op, Plan, SEGMENT_SIZE};

fn frame(salt: u32, lsn: u64, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, salt, lsn, kind, flags, payload);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The first segment file of a log that received `records` through `Wal`.
fn real_segment(records: &[&[u8]]) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut opts = WalOptions::new(SyncPolicy::Always).segment_size(SEGMENT_SIZE);
    opts.preallocate = false;
    let wal = Wal::open(tmp.path(), opts).expect("opening a log");
    for r in records {
        wal.append(r).expect("appending");
    }
    wal.close().expect("closing");
    fs::read(tmp.path().join("00000000000000000001.wal")).expect("reading the segment")
}

fn record_decode_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let salt = 0x5eed_0001;
    let cfg = Config { salt, max_payload: 4096 }.encode();
    let hello = frame(salt, 1, KIND_LAST, FLAG_SYNCED_BEFORE, b"hello");
    let batch = cat(&[
        &frame(salt, 2, KIND_MORE, FLAG_SYNCED_BEFORE, b"first of a batch"),
        &frame(salt, 3, KIND_MORE, 0, b""),
        &frame(salt, 4, KIND_LAST, 0, b"last of a batch"),
    ]);
    let seg_salt = 0x0bad_cafe;
    let header = SegmentHeader { salt: seg_salt, first_lsn: 1 }.encode();
    let segment = cat(&[
        &header,
        &frame(seg_salt, 1, KIND_LAST, FLAG_SYNCED_BEFORE, b"one"),
        &frame(seg_salt, 2, KIND_LAST, FLAG_SYNCED_BEFORE, b"two"),
        &[0u8; 24],
    ]);
    let mut huge = frame(salt, 9, KIND_LAST, 0, b"");
    huge[4..8].copy_from_slice(&MAX_PAYLOAD_LEN.to_le_bytes());
    vec![
        ("frame", cat(&[&cfg, &hello])),
        ("batch", cat(&[&cfg, &batch])),
        ("torn-frame", cat(&[&cfg, &hello[..hello.len() - 1]])),
        ("zeroed", cat(&[&cfg, &[0u8; FRAME_HEADER_LEN]])),
        ("too-long", cat(&[&Config { salt, max_payload: 4 }.encode(), &hello])),
        ("length-at-format-limit", cat(&[&Config { salt, max_payload: u32::MAX }.encode(), &huge])),
        ("segment", cat(&[&cfg, &segment])),
        ("wal-segment", cat(&[&cfg, &real_segment(&[b"alpha", b"", &[7u8; 300]])])),
    ]
}

fn crafted(delta: i8, kind: u8, payload: &[u8]) -> CraftedFrame {
    CraftedFrame { delta, kind, flags: FLAG_SYNCED_BEFORE, payload: payload.to_vec() }
}

fn recover_dir_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let plan = |sync_always, repair, append_after, ops| Plan { sync_always, repair, append_after, ops };
    let appends = || {
        vec![
            Op::Append(b"one".to_vec()),
            Op::Append(b"two".to_vec()),
            Op::Batch(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
            Op::Append(vec![0x42; 200]),
        ]
    };
    // Header 32 + frames of 23, 23, 21, 21, 21, 220 bytes.
    let end_of_records: u16 = 32 + 23 + 23 + 21 + 21 + 21 + 220;
    let with = |mut ops: Vec<Op>, more: Vec<Op>| {
        ops.extend(more);
        ops
    };
    let rotation: Vec<Op> = (0..14u8).map(|i| Op::Append(vec![i; 600])).collect();
    let seeds = vec![
        ("appends", plan(true, false, true, appends())),
        ("rotation", plan(false, false, true, rotation.clone())),
        ("torn-tail", plan(true, false, true, with(appends(), vec![Op::SetLen { seg: 0, len: end_of_records - 50 }]))),
        (
            "garbage-tail",
            plan(true, false, false, with(appends(), vec![Op::Extend { seg: 0, bytes: b"\x01\x02garbage".to_vec() }])),
        ),
        ("zero-tail", plan(false, false, true, with(appends(), vec![Op::SetLen { seg: 0, len: 4096 }]))),
        ("bit-flip", plan(true, false, false, with(appends(), vec![Op::FlipBit { seg: 0, bit: 8 * 40 }]))),
        ("bit-flip-repair", plan(true, true, true, with(appends(), vec![Op::FlipBit { seg: 0, bit: 8 * 40 }]))),
        (
            "overwrite-middle-segment",
            plan(
                false,
                true,
                true,
                with(rotation.clone(), vec![Op::Overwrite { seg: 1, offset: 100, bytes: b"overwritten".to_vec() }]),
            ),
        ),
        ("remove-first-segment", plan(true, false, true, with(rotation, vec![Op::Remove { seg: 0 }]))),
        (
            "crafted",
            plan(
                true,
                false,
                true,
                vec![
                    Op::CraftedSegment {
                        lsn: 1,
                        salt: 7,
                        frames: vec![
                            crafted(0, KIND_LAST, b"x"),
                            crafted(0, KIND_MORE, b"y"),
                            crafted(0, KIND_LAST, b"z"),
                        ],
                    },
                    Op::CraftedSegment { lsn: 4, salt: 8, frames: vec![crafted(0, KIND_LAST, b"w")] },
                    Op::Append(b"after crafted".to_vec()),
                ],
            ),
        ),
        (
            "crafted-gap",
            plan(
                true,
                true,
                false,
                vec![Op::CraftedSegment {
                    lsn: 1,
                    salt: 7,
                    frames: vec![crafted(0, KIND_LAST, b"x"), crafted(1, KIND_LAST, b"skips an LSN")],
                }],
            ),
        ),
        (
            "unfinished-batch",
            plan(
                true,
                false,
                true,
                vec![Op::CraftedSegment {
                    lsn: 1,
                    salt: 9,
                    frames: vec![crafted(0, KIND_LAST, b"x"), crafted(0, KIND_MORE, b"never committed")],
                }],
            ),
        ),
        (
            "starts-above-one",
            plan(
                true,
                false,
                true,
                vec![Op::CraftedSegment { lsn: 5, salt: 3, frames: vec![crafted(0, KIND_LAST, b"5")] }],
            ),
        ),
        (
            "high-lsn",
            plan(
                true,
                false,
                true,
                vec![Op::CraftedSegment {
                    lsn: u64::MAX - 4,
                    salt: 11,
                    frames: vec![crafted(0, KIND_LAST, b"near"), crafted(0, KIND_LAST, b"the end")],
                }],
            ),
        ),
        (
            "raw-segment",
            plan(false, false, true, vec![Op::RawSegment { lsn: 1, bytes: real_segment(&[b"raw one", b"raw two"]) }]),
        ),
        (
            "temp-files",
            plan(
                true,
                false,
                false,
                with(
                    appends(),
                    vec![
                        Op::TempFile { which: 0, bytes: vec![0; 64] },
                        Op::TempFile { which: 1, bytes: SegmentHeader { salt: 1, first_lsn: 9 }.encode().to_vec() },
                    ],
                ),
            ),
        ),
    ];
    seeds.into_iter().map(|(name, p)| (name, p.to_bytes())).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("creating the corpus dir");
    let path = dir.join(format!("seed-{name}"));
    fs::write(&path, bytes).expect("writing a seed");
    println!("{} ({} bytes)", path.display(), bytes.len());
}

/// Messages a peer could really send, each behind its kind byte.
fn sync_message_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use walrus::replica::KvDocExt;
    use walrus::sync::{self, SyncRequest, SyncResponse};
    use walrus_fuzz::sync::{limits, replica, DOC};

    let tmp = tempfile::tempdir().expect("temp dir");
    let mut peer = replica(&tmp.path().join("peer"));
    let env = peer.update(|d, a| d.put_op(a, "from the peer", "hello")).expect("a write");
    let del = peer.update(|d, _| d.del_op("key0")).expect("a delete");
    let gossip = sync::gossip_messages(DOC, &[env, del], limits().max_gossip).remove(0);
    let wrong_doc = sync::gossip_messages(
        "other",
        &peer
            .ops_since(&Default::default(), 1 << 20)
            .map(|c| match c {
                walrus::replica::Catchup::Ops { ops, .. } => ops,
                _ => Vec::new(),
            })
            .expect("ops"),
        4096,
    )
    .remove(0);
    let request = sync::encode(&sync::request(&peer, DOC, 300));
    let empty_request = sync::encode(&SyncRequest { doc: DOC.into(), clock: Default::default(), budget: 1 << 20 });
    let page = sync::encode(&sync::respond(
        &peer,
        DOC,
        &SyncRequest { doc: DOC.into(), clock: Default::default(), budget: 200 },
        &limits(),
    ));
    peer.checkpoint().expect("checkpoint");
    let snapshot = sync::encode(&SyncResponse::Snapshot {
        doc: DOC.into(),
        state: serde_bytes::ByteBuf::from(sync::encode(peer.doc())),
        clock: peer.clock().clone(),
    });
    let with_kind = |kind: u8, body: &[u8]| [&[kind][..], body].concat();
    vec![
        ("gossip", with_kind(0, &gossip)),
        ("gossip-wrong-doc", with_kind(0, &wrong_doc)),
        ("gossip-garbage", with_kind(0, b"\xa2\x63doc\x63doc\x63ops\x81\x41\x00")),
        ("request", with_kind(1, &request)),
        ("request-empty-clock", with_kind(1, &empty_request)),
        ("response-page", with_kind(2, &page)),
        ("response-snapshot", with_kind(2, &snapshot)),
    ]
}

fn main() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, bytes) in record_decode_seeds() {
        walrus_fuzz::decode::check(&bytes);
        write(&corpus.join("record_decode"), name, &bytes);
    }
    for (name, bytes) in recover_dir_seeds() {
        assert_eq!(Plan::parse(&bytes).to_bytes(), bytes, "seed {name} does not round-trip");
        walrus_fuzz::recover::check(&bytes);
        write(&corpus.join("recover_dir"), name, &bytes);
    }
    for (name, bytes) in sync_message_seeds() {
        walrus_fuzz::sync::check(&bytes);
        write(&corpus.join("sync_message"), name, &bytes);
    }
}
