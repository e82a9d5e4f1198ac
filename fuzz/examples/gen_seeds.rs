//! Writes the committed seed corpus: `fuzz/corpus/<target>/seed-<name>`.
//! (The two seeds holding a real segment file, `record_decode/seed-wal-segment`
//! and `recover_dir/seed-raw-segment`, come out different on every run: a
//! new segment gets a random salt.)
//!
//! Run from `fuzz/` with `cargo run --example gen_seeds`. Seeds are built
//! with the crate's own encoders (and, where a real segment file is needed,
//! by appending through `Wal`), and each is checked by its target's checks
//! before it is written.

use std::fs;
use std::path::{Path, PathBuf};

use crdts::CmRDT;
use serde_bytes::ByteBuf;
use walrus::internals;
use walrus::internals::format::{
    encode_frame, SegmentHeader, FLAG_SYNCED_BEFORE, FRAME_HEADER_LEN, KIND_LAST, KIND_MORE, MAX_PAYLOAD_LEN,
};
use walrus::replica::{Catchup, Document, KvDoc, KvOp, OpContext, OpEnvelope, VersionVector};
use walrus::sync::{self, Gossip, SyncRequest, SyncResponse};
use walrus::wal::{SyncPolicy, Wal, WalOptions};
use walrus_fuzz::envelope::Edit;
use walrus_fuzz::harness::{
    messages_to_bytes, seq_byte, Chains, MessageSpec, OpSpec, Setup, DOC, LOCAL_OPS, OTHER_DOC, TAMPER_ACTOR,
    TAMPER_DOC, TAMPER_NOT_A_KEY, TAMPER_OP, TAMPER_PREV, TAMPER_SIG_BIT, TAMPER_UNSIGNED,
};
use walrus_fuzz::record_decode::Config;
use walrus_fuzz::recover_dir::{CraftedFrame, Op, Plan, SEGMENT_SIZE};

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

/// The envelopes of `specs`, each following the one built before it for
/// its actor's previous sequence number.
fn chained(specs: &[OpSpec]) -> Vec<OpEnvelope<KvOp>> {
    let mut chains = Chains::default();
    specs.iter().map(|spec| spec.build(&mut chains).0).collect()
}

fn gossip(doc: &str, envs: &[OpEnvelope<KvOp>]) -> Vec<u8> {
    sync::encode(&Gossip { doc: doc.into(), page: ByteBuf::from(internals::page_of(envs)) })
}

/// `env` with bit `bit` of its signature flipped.
fn bad_sig(env: &OpEnvelope<KvOp>, bit: usize) -> OpEnvelope<KvOp> {
    let mut sig = *env.signature().expect("a signed operation");
    sig.0[bit / 8] ^= 1 << (bit % 8);
    env.clone().with_signature(Some(sig))
}

/// The operations the replica under test writes itself with `setup`, as
/// its peers would have received them.
fn own_ops(setup: Setup) -> Vec<OpEnvelope<KvOp>> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let r = walrus_fuzz::harness::replica(tmp.path(), Setup { checkpoint: false, ..setup });
    match r.ops_since(&VersionVector::default(), 1 << 20).expect("ops_since") {
        Catchup::Ops { ops, .. } => ops,
        Catchup::Snapshot { .. } => unreachable!("never checkpointed"),
    }
}

fn op(signer: u8, seq: u64, shape: u8, seen: u8, tamper: u8, param: u8) -> OpSpec {
    OpSpec { signer, seq: seq_byte(seq).expect("a spec sequence number"), shape, seen, tamper, param }
}

fn msg(ops: Vec<OpSpec>) -> MessageSpec {
    MessageSpec { ops, ..MessageSpec::default() }
}

fn envelope_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let raw = |bytes: &[u8]| [&[0u8][..], bytes].concat();
    let block = |envs: &[OpEnvelope<KvOp>]| internals::block_of(envs).expect("a run");
    let run = chained(&[OpSpec::unsigned_put(0, 1, 0, 1), OpSpec::unsigned_put(0, 2, 1, 2), OpSpec::put(0, 3, 2, 3)]);
    let del = chained(&[op(1, 3, 0b0000_0101, 0b0001_0001, 0, 0)]);
    let forged = chained(&[op(0, 1, 0b0010_0010, 0, 0, 0)]);
    let bad = [run[0].clone(), run[1].clone(), bad_sig(&run[2], 333)];
    // Mutation mode: [1, key byte, seq byte, shape, seen, count | edits << 2, edits].
    let mutate = |key: u8, seq: u64, shape: u8, seen: u8, count: u8, edits: &[Edit]| {
        let mut out = vec![1, key, seq_byte(seq).expect("seq"), shape, seen, (count - 1) | (edits.len() as u8) << 2];
        for e in edits {
            out.extend_from_slice(&e.to_bytes());
        }
        out
    };
    let edit = |kind, pos, value| Edit { kind, pos, value };
    // A block: tag, actor (32), first seq, count, prev (32), flags at 67,
    // the lengths, the bytes, the signature (64) last.
    let len = block(&chained(&[OpSpec::put(0, 1, 0, 0)])).len() as u16;
    vec![
        ("raw-put", raw(&block(&chained(&[OpSpec::put(0, 1, 0, 1)])))),
        ("raw-run", raw(&block(&run))),
        ("raw-del", raw(&block(&del))),
        ("raw-forged-put", raw(&block(&forged))),
        ("raw-bad-signature", raw(&block(&bad))),
        ("raw-garbage", raw(b"\x03\x00\x01\x01")),
        ("mutate-none", mutate(0x21, 1, 0b0011_0000, 0, 1, &[])),
        ("mutate-none-run", mutate(0x21, 1, 0b0011_0000, 0, 4, &[])),
        ("mutate-none-later", mutate(0x10, 5, 0b0001_0101, 0b1000_0001, 2, &[])),
        ("mutate-signature", mutate(0x21, 1, 0, 0, 1, &[edit(1, len - 3, 0x40)])),
        ("mutate-seq", mutate(0x22, 2, 0, 0, 2, &[edit(0, 33, 0x03)])),
        ("mutate-prev", mutate(0x22, 2, 0, 0, 2, &[edit(1, 40, 0x01)])),
        ("mutate-flags", mutate(0x22, 1, 0, 0, 1, &[edit(1, 67, 0x01)])),
        ("mutate-value", mutate(0x23, 1, 0b0111_0000, 0, 3, &[edit(1, len - 70, 0x01)])),
        ("mutate-truncate", mutate(0x21, 1, 0, 0, 1, &[edit(4, len - 1, 0)])),
        ("mutate-insert-delete", mutate(0x21, 1, 0, 0, 2, &[edit(2, 10, 0x00), edit(3, 10, 0)])),
        ("mutate-swap", mutate(0x21, 3, 0, 0b0000_0011, 1, &[edit(5, 45, 7)])),
    ]
}

fn gossip_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let plain = Setup::default();
    let checkpointed = Setup { checkpoint: true, extra: 2 };
    let raw = |setup: Setup, body: &[u8]| [&[0, setup.to_byte()][..], body].concat();
    let structured =
        |setup: Setup, msgs: &[MessageSpec]| [&[1, setup.to_byte()][..], &messages_to_bytes(msgs)[..]].concat();
    let peer_ops = chained(&[OpSpec::unsigned_put(0, 1, 0, 1), OpSpec::put(0, 2, 1, 2), OpSpec::put(1, 1, 0, 3)]);
    let mixed = chained(&[OpSpec::put(2, 1, 3, 5), OpSpec::put(1, 1, 2, 4), OpSpec::put(2, 2, 3, 6)]);
    let mixed = [mixed[0].clone(), bad_sig(&mixed[1], 30), mixed[2].clone()];
    let out_of_order = chained(&[OpSpec::put(0, 1, 0, 1), OpSpec::put(0, 2, 0, 2), OpSpec::put(0, 3, 0, 1)]);
    let own = own_ops(checkpointed);
    vec![
        ("raw", raw(plain, &gossip(DOC, &peer_ops))),
        ("raw-out-of-order", raw(plain, &gossip(DOC, &[out_of_order[2].clone(), out_of_order[1].clone()]))),
        ("raw-mixed", raw(plain, &gossip(DOC, &mixed))),
        ("raw-echo", raw(plain, &gossip(DOC, &own[..LOCAL_OPS]))),
        ("raw-echo-checkpointed", raw(checkpointed, &gossip(DOC, &own))),
        ("raw-wrong-doc", raw(plain, &gossip(OTHER_DOC, &peer_ops))),
        ("raw-garbage", raw(plain, b"\xa2cdocbdocdpage\x44\x00\x02\x00\x00")),
        ("structured", structured(plain, &[msg(vec![op(0, 1, 0, 0, 0, 0), op(1, 1, 0b1000_0100, 0b1000, 0, 0)])])),
        (
            "structured-chain",
            structured(
                plain,
                &[
                    // Runs are contiguous in a page: interleaved, they
                    // would end unsigned and the page would be refused.
                    msg(vec![
                        OpSpec::unsigned_put(0, 1, 0, 1),
                        OpSpec::unsigned_put(0, 2, 1, 3),
                        OpSpec::put(0, 3, 2, 5),
                        OpSpec::unsigned_put(1, 1, 0, 2),
                        OpSpec::put(1, 2, 1, 4),
                    ]),
                    msg(vec![
                        OpSpec::unsigned_put(2, 1, 0, 1),
                        OpSpec::unsigned_put(1, 3, 0, 2),
                        OpSpec::put(2, 2, 1, 3),
                    ]),
                    msg(vec![OpSpec::unsigned_put(0, 4, 0, 6), OpSpec::put(1, 3, 0, 7)]),
                    msg(vec![
                        OpSpec::unsigned_put(2, 1, 0, 6),
                        OpSpec::unsigned_put(2, 2, 0, 6),
                        OpSpec::put(2, 3, 3, 8),
                    ]),
                ],
            ),
        ),
        (
            "structured-tampered",
            structured(
                plain,
                &[
                    msg(vec![op(0, 1, 0, 0, TAMPER_SIG_BIT, 200), op(0, 1, 0, 0, 0, 0), op(1, 1, 0, 0, TAMPER_OP, 1)]),
                    msg(vec![op(1, 1, 0, 0, TAMPER_DOC, 0), op(2, 1, 0, 0, TAMPER_OP, 0)]),
                    msg(vec![op(2, 1, 0, 0, TAMPER_ACTOR, 1), op(0, 2, 0, 0, TAMPER_PREV, 7)]),
                    msg(vec![op(0, 2, 0, 0, TAMPER_NOT_A_KEY, 9), op(0, 2, 0b0010, 0, 0, 0)]),
                    msg(vec![op(1, 1, 0, 0, TAMPER_UNSIGNED, 0), op(1, 2, 0, 0, TAMPER_SIG_BIT, 3)]),
                ],
            ),
        ),
        (
            "structured-equivocation",
            structured(
                plain,
                &[
                    msg(vec![op(3, 1, 0b0100_0000, 0, 0, 0), op(3, 4, 0, 0b1000, 0, 0)]),
                    msg(vec![op(0, 1, 0, 0, 0, 0), op(0, 2, 0, 0, 0, 0), op(0, 2, 0b0001_0000, 0, 0, 0)]),
                    msg(vec![op(1, 1, 0, 0, 0, 0), op(1, 2, 0, 0, TAMPER_PREV, 1)]),
                ],
            ),
        ),
        (
            "structured-buffer-full",
            structured(
                plain,
                &[
                    msg((2..=7).map(|s| op(0, s, 0, 0, 0, 0)).collect()),
                    msg((2..=5).map(|s| op(1, s, 0, 0, 0, 0)).chain([op(1, 6, 0, 0, TAMPER_SIG_BIT, 7)]).collect()),
                    msg(vec![op(0, 1, 0, 0, 0, 0), op(1, 1, 0, 0, 0, 0)]),
                ],
            ),
        ),
        (
            "structured-edges",
            structured(
                checkpointed,
                &[
                    msg(vec![op(0, 0, 0, 0, 0, 0)]),
                    msg(vec![op(1, u64::MAX, 0, 0, 0, 0), op(1, u64::MAX - 1, 1, 0, 0, 0)]),
                    MessageSpec { wrong_doc: true, ..msg(vec![op(2, 1, 0, 0, 0, 0)]) },
                    msg(vec![op(3, 2, 0, 0, 0, 0), op(3, 6, 0, 0, 0, 0)]),
                    msg(vec![op(2, 1, 0, 0, TAMPER_UNSIGNED, 0)]),
                ],
            ),
        ),
    ]
}

fn sync_exchange_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let plain = Setup::default();
    let checkpointed = Setup { checkpoint: true, extra: 2 };
    let with = |kind: u8, setup: Setup, body: &[u8]| [&[kind, setup.to_byte()][..], body].concat();
    let me = walrus_fuzz::harness::actor(3);
    let request = |clock: VersionVector, budget| sync::encode(&SyncRequest { doc: DOC.into(), clock, budget });
    let at = |seq: u64| -> VersionVector { [(me, seq)].into_iter().collect() };
    let page = |envs: &[OpEnvelope<KvOp>], more| {
        sync::encode(&SyncResponse::Ops { doc: DOC.into(), page: ByteBuf::from(internals::page_of(envs)), more })
    };
    let peer_ops = chained(&[OpSpec::unsigned_put(0, 1, 0, 1), OpSpec::put(0, 2, 1, 2), OpSpec::put(1, 1, 2, 3)]);
    let bad = bad_sig(&chained(&[OpSpec::put(1, 1, 2, 4), OpSpec::put(1, 2, 2, 4)])[1], 511);
    let snapshot = |ops: &[OpEnvelope<KvOp>], clock: VersionVector| {
        let mut state = KvDoc::default();
        for e in ops {
            state.apply(e.op().clone());
        }
        sync::encode(&SyncResponse::Snapshot {
            doc: DOC.into(),
            state: ByteBuf::from(internals::frame_page(&sync::encode(&state))),
            clock,
            successions: Vec::new(),
            heads: Vec::new(),
        })
    };
    let clock_of = |ops: &[OpEnvelope<KvOp>]| ops.iter().map(|e| (e.actor(), e.seq())).collect::<VersionVector>();
    let own = own_ops(plain);
    let mut forged_clock = clock_of(&peer_ops);
    forged_clock.observe(me, 10);
    let structured = |msgs: &[MessageSpec]| with(2, plain, &messages_to_bytes(msgs));
    vec![
        ("request", with(0, plain, &request(VersionVector::default(), 300))),
        ("request-one-per-page", with(0, plain, &request(at(1), 1))),
        ("request-up-to-date", with(0, plain, &request(at(LOCAL_OPS as u64), 1 << 20))),
        ("request-snapshot", with(0, checkpointed, &request(VersionVector::default(), 1 << 20))),
        ("request-after-checkpoint", with(0, checkpointed, &request(at(LOCAL_OPS as u64), 100))),
        (
            "request-other-doc",
            with(0, plain, &sync::encode(&SyncRequest { doc: OTHER_DOC.into(), clock: at(1), budget: 9 })),
        ),
        ("response-page", with(1, plain, &page(&peer_ops, true))),
        ("response-page-mixed", with(1, plain, &page(&[peer_ops[0].clone(), peer_ops[1].clone(), bad], false))),
        ("response-page-echo", with(1, checkpointed, &page(&own, false))),
        ("response-snapshot", with(1, plain, &snapshot(&peer_ops, clock_of(&peer_ops)))),
        (
            "response-snapshot-with-own",
            with(1, plain, &snapshot(&[&own[..2], &peer_ops[..]].concat(), clock_of(&own[..2]))),
        ),
        ("response-snapshot-forged", with(1, plain, &snapshot(&peer_ops, forged_clock))),
        ("response-snapshot-checkpointed", with(1, checkpointed, &snapshot(&peer_ops[..1], clock_of(&peer_ops[..1])))),
        ("response-unknown-doc", with(1, plain, &sync::encode(&SyncResponse::UnknownDoc { doc: DOC.into() }))),
        (
            "response-refused",
            with(1, plain, &sync::encode(&SyncResponse::Refused { doc: DOC.into(), reason: "busy".into() })),
        ),
        (
            "pages",
            structured(&[
                MessageSpec { more: true, ..msg(vec![op(0, 1, 0, 0, 0, 0), op(0, 3, 0, 0, 0, 0)]) },
                MessageSpec { more: true, ..msg(vec![op(0, 2, 0, 0, TAMPER_SIG_BIT, 100), op(1, 1, 0, 0, 0, 0)]) },
                msg(vec![op(0, 2, 0b1000, 0b0001_0001, TAMPER_UNSIGNED, 0), op(0, 3, 0, 0, 0, 0)]),
            ]),
        ),
        (
            "pages-refused",
            structured(&[
                MessageSpec { wrong_doc: true, more: true, ..msg(vec![op(0, 1, 0, 0, 0, 0)]) },
                MessageSpec { more: true, ..msg(vec![op(0, 1, 0, 0, TAMPER_DOC, 0), op(1, 0, 0, 0, 0, 0)]) },
                MessageSpec { more: true, ..msg(vec![op(0, 1, 0, 0, 0, 0), op(0, 2, 0, 0, TAMPER_UNSIGNED, 0)]) },
            ]),
        ),
    ]
}

fn page_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let peer_ops = chained(&[
        OpSpec::unsigned_put(0, 1, 0, 1),
        OpSpec::unsigned_put(1, 1, 1, 2),
        OpSpec::put(0, 2, 1, 2),
        OpSpec::put(1, 2, 2, 3),
        OpSpec::put(2, 5, 3, 4),
    ]);
    let own = own_ops(Setup::default());
    // A zstd frame that declares the most a response may hold.
    let mut lying = vec![1u8];
    let mut n = (64u64 << 20) - 1;
    while n >= 0x80 {
        lying.push(n as u8 | 0x80);
        n >>= 7;
    }
    lying.push(n as u8);
    lying.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 0x01, 0x00, 0x00]);
    vec![
        ("runs", internals::page_of(&peer_ops)),
        ("compressed", internals::page_of(&own)),
        ("empty", internals::frame_page(&[0, 0])),
        ("garbage", vec![0, 3, 1, 2, 3]),
        ("declares-more", lying),
    ]
}

fn chain_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // [signer, count - 1 | no flip << 3, strip mask, bit (u16 LE), (shape, seen) per operation]
    let input = |signer: u8, n: u8, no_flip: bool, strip: u8, bit: u16, ops: &[(u8, u8)]| {
        let [a, b] = bit.to_le_bytes();
        let mut out = vec![signer, (n - 1) | u8::from(no_flip) << 3, strip, a, b];
        for (shape, seen) in ops {
            out.extend([*shape, *seen]);
        }
        out
    };
    let ops = [(0x10, 0), (0x25, 0x01), (0x38, 0), (0x41, 0x10), (0x54, 0)];
    vec![
        ("intact", input(0, 5, true, 0b0110, 0, &ops)),
        ("all-unsigned-but-last", input(1, 5, true, 0xff, 0, &ops)),
        ("flip-head-signature", input(2, 3, false, 0b011, 8 * 40, &ops[..3])),
        ("flip-op-byte", input(0, 5, false, 0b1011, 8 * 120 + 3, &ops)),
        ("flip-actor", input(1, 2, false, 0, 8 * 5, &ops[..2])),
        ("flip-prev", input(2, 4, false, 0b0101, 8 * 45 + 1, &ops[..4])),
    ]
}

fn op_codec_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let author = walrus_fuzz::harness::actor(0);
    let cx = OpContext { author: &author, seq: 1 };
    let with = |which: u8, bytes: &[u8]| [&[which, 0, 0][..], bytes].concat();
    let kv = |op: &KvOp| {
        let mut out = Vec::new();
        KvDoc::encode_op(op, &cx, &mut out).expect("encoding");
        out
    };
    let put = KvDoc::default().put_op(author, "key", "value");
    let mut doc = KvDoc::default();
    doc.apply(put.clone());
    let del = doc.del_op("key");
    let counter = walrus::replica::CounterDoc::default().inc(author);
    let mut cbor = Vec::new();
    walrus::replica::CounterDoc::encode_op(&counter, &cx, &mut cbor).expect("encoding");
    vec![
        ("kv-put", with(0, &kv(&put))),
        ("kv-del", with(0, &kv(&del))),
        ("kv-garbage", with(0, &[0xff, 0xff, 0x01])),
        ("counter", with(2, &cbor)),
        ("set-garbage", with(1, &[0xa1, 0x61, 0x41, 0x80])),
        ("register-garbage", with(3, &[0x9f, 0x9f, 0x9f, 0xff])),
    ]
}

fn converge_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use walrus_fuzz::converge::{header, Step};
    let input = |head: u8, order: u8, steps: &[(Step, u8, u8)]| {
        let mut out = vec![head, order];
        for (step, x, other) in steps {
            out.extend(step.to_bytes(*x, *other));
        }
        out
    };
    vec![
        ("direct", input(header(0, false, 0, false, false), 1, &[])),
        ("direct-one-by-one", input(header(3, true, 2, false, true), 7, &[])),
        (
            "pages",
            input(
                header(0, false, 2, true, false),
                5,
                &[
                    (Step::Deliver(3), 0, 0),
                    (Step::Run(0x20), 0, 0),
                    (Step::Page(0), 1, 0),
                    (Step::Page(0), 1, 0),
                    (Step::Checkpoint, 0, 0),
                    (Step::Pull(1), 1, 0),
                    (Step::Reopen, 1, 0),
                    (Step::Gossip, 0, 0),
                ],
            ),
        ),
        (
            "schedule",
            input(
                header(1, true, 1, true, false),
                3,
                &[
                    (Step::Deliver(4), 0, 0),
                    (Step::Deliver(1), 1, 0),
                    (Step::Run(0x45), 2, 0),
                    (Step::Damaged(0x02), 0, 0),
                    (Step::Damaged(0x13), 1, 0),
                    (Step::Damaged(0x24), 2, 0),
                    (Step::Damaged(0x35), 2, 0),
                    (Step::Page(2), 1, 0),
                    (Step::Gossip, 0, 1),
                    (Step::Reopen, 2, 0),
                    (Step::Pull(40), 2, 0),
                    (Step::Deliver(8), 1, 1),
                ],
            ),
        ),
        (
            "snapshots",
            input(
                header(2, true, 1, true, true),
                9,
                &[
                    (Step::Run(0xE0), 0, 0),
                    (Step::Checkpoint, 0, 0),
                    (Step::Deliver(7), 1, 0),
                    (Step::Pull(0), 1, 1),
                    (Step::Page(1), 2, 1),
                    (Step::Gossip, 2, 0),
                    (Step::Reopen, 1, 0),
                    (Step::Damaged(0x33), 1, 0),
                ],
            ),
        ),
    ]
}

/// Checks each seed with its target's checks, then writes it.
/// Real automerge changes of the fuzzed author: a new text, and an edit
/// of the owner's text (depending on the owner's change).
fn engine_automerge_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use walrus::replica::engines::{AutomergeDocument, TextDocument, TextEdit};
    use walrus_fuzz::engine_automerge::{document, PEER};
    let insert = |text: &str| TextEdit::Insert { pos: 0, text: text.into() };
    let fresh = AutomergeDocument::default().edit_text(PEER, "title", &[insert("fuzz")]).expect("an edit");
    let (doc, _) = document();
    let edit = doc.edit_text(PEER, "body", &[TextEdit::Delete { pos: 0, len: 4 }, insert("🦀 more")]).expect("an edit");
    vec![("seed-new-text", fresh.0), ("seed-edit-owner-text", edit.0)]
}

fn emit(corpus: &Path, target: &str, seeds: Vec<(&'static str, Vec<u8>)>, check: fn(&[u8])) {
    for (name, bytes) in seeds {
        check(&bytes);
        write(&corpus.join(target), name, &bytes);
    }
}

fn main() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, bytes) in record_decode_seeds() {
        walrus_fuzz::record_decode::check(&bytes);
        write(&corpus.join("record_decode"), name, &bytes);
    }
    for (name, bytes) in recover_dir_seeds() {
        assert_eq!(Plan::parse(&bytes).to_bytes(), bytes, "seed {name} does not round-trip");
        walrus_fuzz::recover_dir::check(&bytes);
        write(&corpus.join("recover_dir"), name, &bytes);
    }
    emit(&corpus, "envelope", envelope_seeds(), walrus_fuzz::envelope::check);
    emit(&corpus, "gossip", gossip_seeds(), walrus_fuzz::gossip::check);
    emit(&corpus, "sync_exchange", sync_exchange_seeds(), walrus_fuzz::sync_exchange::check);
    emit(&corpus, "converge", converge_seeds(), walrus_fuzz::converge::check);
    emit(&corpus, "page", page_seeds(), walrus_fuzz::page::check);
    emit(&corpus, "chain", chain_seeds(), walrus_fuzz::chain::check);
    emit(&corpus, "op_codec", op_codec_seeds(), walrus_fuzz::op_codec::check);
    emit(&corpus, "engine_automerge", engine_automerge_seeds(), walrus_fuzz::engine_automerge::check);
}
