//! Pages: the runs of operations a sync answer or a gossip message
//! carries, behind a per-page actor table, optionally zstd-compressed; and
//! the same compression frame around a snapshot's state. The layout is in
//! docs/PROTOCOL.md, "Pages".

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::message::{MessageError, MAX_OPS_PER_MESSAGE};
use crate::replica::run::{OwnedRun, Run, MAX_RUN_BYTES, MAX_RUN_OPS};
use crate::replica::varint;
use crate::replica::ActorId;

/// The frame's codec byte: the payload is the body itself.
const RAW: u8 = 0;
/// The frame's codec byte: the payload is one zstd frame of the body.
const ZSTD: u8 = 1;
/// zstd level: pages are compressed once and may be read many times; 3
/// is zstd's default, a good ratio at a fraction of the higher levels' cost.
const ZSTD_LEVEL: i32 = 3;
/// Bodies shorter than this are not worth a compression attempt.
const COMPRESS_MIN: usize = 128;

/// Frames `body`: codec byte, the body's length (varint), then the body,
/// compressed with zstd when that makes it smaller.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 2 + 12);
    if body.len() >= COMPRESS_MIN {
        if let Some(z) = compress(body) {
            if z.len() < body.len() {
                out.push(ZSTD);
                varint::put(&mut out, body.len() as u64);
                out.extend_from_slice(&z);
                return out;
            }
        }
    }
    out.push(RAW);
    varint::put(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

thread_local! {
    /// A compression context per thread: making one costs more than
    /// compressing a small page.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

thread_local! {
    /// A decompression context per thread, for the same reason.
    static DECOMPRESSOR: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Largest zstd window a frame may ask for: 8 MiB, room for the largest
/// page (what this crate compresses uses a few MiB at most). A frame
/// asking for more is refused before the decoder allocates its window.
const MAX_WINDOW_LOG: u32 = 23;

fn compress(body: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut()?.compress(body).ok()
    })
}

/// Undoes [`frame`]: the body, if it is at most `limit` bytes. The
/// declared length is checked against `limit` before anything is
/// allocated, and decompression stops at it: a frame that would expand
/// further is refused, whatever it claims.
pub(crate) fn unframe(bytes: &[u8], limit: usize, what: &'static str) -> Result<Vec<u8>, MessageError> {
    let bad = |reason: String| MessageError::Malformed { what, reason };
    let (&codec, mut rest) = bytes.split_first().ok_or_else(|| bad("empty frame".into()))?;
    let len = varint::take(&mut rest).map_err(|e| bad(format!("frame length: {e}")))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > limit {
        return Err(MessageError::TooLarge { what, len, limit });
    }
    match codec {
        RAW if rest.len() == len => Ok(rest.to_vec()),
        RAW => Err(bad(format!("frame says {len} bytes, holds {}", rest.len()))),
        ZSTD => DECOMPRESSOR.with(|d| {
            // Streamed, with a small first buffer: memory grows with what
            // actually comes out, never with what the frame claims.
            use std::io::Read;
            use zstd::zstd_safe::{DCtx, DParameter, ResetDirective};
            let mut slot = d.borrow_mut();
            let ctx = match &mut *slot {
                Some(ctx) => ctx,
                None => {
                    let mut ctx = DCtx::try_create().ok_or_else(|| bad("zstd: no decompression context".into()))?;
                    ctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
                        .map_err(|code| bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))))?;
                    slot.insert(ctx)
                }
            };
            // Whatever an earlier (failed) frame left in it is dropped.
            ctx.reset(ResetDirective::SessionOnly)
                .map_err(|code| bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))))?;
            let decoder = zstd::stream::read::Decoder::with_context(rest, ctx);
            let mut body = Vec::with_capacity(len.min(64 << 10));
            decoder.take(len as u64 + 1).read_to_end(&mut body).map_err(|e| bad(format!("zstd: {e}")))?;
            if body.len() != len {
                return Err(bad(format!("frame says {len} bytes, expands to {}", body.len().min(len + 1))));
            }
            Ok(body)
        }),
        other => Err(bad(format!("unknown codec {other}"))),
    }
}

/// The body of a page of `runs`: the actor table (count, then each
/// 32-byte id once), the run count, then each run as its actor's index in
/// the table and its body.
pub(crate) fn encode_runs<'a>(runs: impl IntoIterator<Item = Run<'a>>) -> Vec<u8> {
    let runs: Vec<Run<'a>> = runs.into_iter().collect();
    let mut table: Vec<ActorId> = Vec::new();
    let mut index: BTreeMap<ActorId, u64> = BTreeMap::new();
    for run in &runs {
        index.entry(run.actor).or_insert_with(|| {
            table.push(run.actor);
            table.len() as u64 - 1
        });
    }
    let mut out = Vec::with_capacity(runs.iter().map(|r| r.ops.iter().map(|o| o.len() + 2).sum::<usize>()).sum());
    varint::put(&mut out, table.len() as u64);
    for a in &table {
        out.extend_from_slice(&a.0);
    }
    varint::put(&mut out, runs.len() as u64);
    for run in &runs {
        varint::put(&mut out, index.get(&run.actor).copied().unwrap_or(0));
        run.put_body(&mut out);
    }
    out
}

/// A framed page of `runs` (see [`encode_runs`], [`frame`]).
pub(crate) fn encode_page(runs: &[OwnedRun]) -> Vec<u8> {
    frame(&encode_runs(runs.iter().map(OwnedRun::as_run)))
}

/// A framed page of `envs`: consecutive operations of one actor, each
/// following the one before, form a run, cut after each signed one (a run
/// whose last operation is unsigned is written too, for tests to send).
#[cfg(any(test, feature = "internals", feature = "testing"))]
pub(crate) fn page_of<O>(envs: &[crate::replica::OpEnvelope<O>]) -> Vec<u8> {
    let runs = crate::replica::run::split_runs(envs);
    frame(&encode_runs(runs.into_iter().filter_map(Run::of)))
}

/// Reads a page body: its runs, borrowing from `body`. Every run must be
/// signed (a page proves what it carries), the actor indexes must be in
/// the table, and there are at most [`MAX_OPS_PER_MESSAGE`] operations
/// in all, each at most `max_op` bytes.
pub(crate) fn decode_runs<'a>(body: &'a [u8], max_op: usize, what: &'static str) -> Result<Vec<Run<'a>>, MessageError> {
    let bad = |reason: String| MessageError::Malformed { what, reason };
    let mut rest = body;
    let actors = varint::take(&mut rest).map_err(|e| bad(format!("actor count: {e}")))?;
    if actors > (rest.len() / 32) as u64 {
        return Err(bad(format!("{actors} actors cannot fit in {} bytes", rest.len())));
    }
    let mut table = Vec::with_capacity(actors as usize);
    for _ in 0..actors {
        let (id, tail) = rest.split_at(32);
        let mut a = [0u8; 32];
        a.copy_from_slice(id);
        table.push(ActorId(a));
        rest = tail;
    }
    let count = varint::take(&mut rest).map_err(|e| bad(format!("run count: {e}")))?;
    // A run takes at least 36 bytes (index, numbers, hash, flags).
    if count > (rest.len() / 36) as u64 {
        return Err(bad(format!("{count} runs cannot fit in {} bytes", rest.len())));
    }
    let mut runs = Vec::with_capacity(count as usize);
    let mut ops = 0usize;
    for i in 0..count {
        let at = varint::take(&mut rest).map_err(|e| bad(format!("run {i}: actor index: {e}")))?;
        let actor = usize::try_from(at)
            .ok()
            .and_then(|at| table.get(at))
            .copied()
            .ok_or_else(|| bad(format!("run {i}: actor index {at} outside the table of {}", table.len())))?;
        let run = Run::take_body(actor, &mut rest, MAX_RUN_OPS).map_err(|e| bad(format!("run {i}: {e}")))?;
        if run.sig.is_none() {
            return Err(bad(format!("run {i} ({actor}) has no head signature")));
        }
        if let Some(len) = run.ops.iter().map(|o| o.len()).find(|&l| l > max_op) {
            return Err(bad(format!("run {i}: an operation of {len} bytes, over the limit of {max_op}")));
        }
        let bytes: usize = run.ops.iter().map(|o| o.len()).sum();
        if run.ops.len() > MAX_RUN_OPS || bytes > MAX_RUN_BYTES {
            return Err(bad(format!(
                "run {i}: {} operations of {bytes} bytes under one signature (at most {MAX_RUN_OPS} and {MAX_RUN_BYTES})",
                run.ops.len()
            )));
        }
        ops += run.ops.len();
        if ops > MAX_OPS_PER_MESSAGE {
            return Err(bad(format!("more than {MAX_OPS_PER_MESSAGE} operations")));
        }
        runs.push(run);
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the last run", rest.len())));
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{ChainHash, Signature};
    use proptest::prelude::*;

    fn owned(actor: u8, first: u64, ops: Vec<Vec<u8>>) -> OwnedRun {
        OwnedRun {
            actor: ActorId([actor; 32]),
            first,
            prev: ChainHash([actor ^ 0x55; 32]),
            succeeds: None,
            ops,
            sig: Some(Signature([actor; 64])),
        }
    }

    #[test]
    fn pages_round_trip_compressed_or_not() {
        let small = vec![owned(1, 1, vec![vec![1, 2, 3]])];
        let big: Vec<OwnedRun> =
            (0..3).map(|a| owned(a, 5, (0..200).map(|i| format!("item-{i:08}").into_bytes()).collect())).collect();
        for runs in [small, big] {
            let page = encode_page(&runs);
            let body = unframe(&page, 1 << 20, "page").unwrap();
            let back = decode_runs(&body, 1 << 10, "page").unwrap();
            assert_eq!(back, runs.iter().map(OwnedRun::as_run).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_frame_never_expands_past_its_limit() {
        let body = vec![0u8; 1 << 20];
        let framed = frame(&body);
        assert!(framed.len() < 1024, "zeros compress");
        assert!(matches!(unframe(&framed, (1 << 20) - 1, "page"), Err(MessageError::TooLarge { .. })));
        // A frame that lies about its length, under the limit.
        let mut lying = vec![ZSTD];
        varint::put(&mut lying, 1000);
        lying.extend_from_slice(&framed[framed.len() - (framed.len() - 4)..]);
        assert!(unframe(&lying, 1 << 20, "page").is_err());
        assert!(unframe(&[], 10, "page").is_err());
        assert!(unframe(&[9, 0], 10, "page").is_err());
    }

    #[test]
    fn unsigned_runs_and_bad_indexes_are_refused() {
        let mut run = owned(1, 1, vec![vec![1]]);
        run.sig = None;
        let body = encode_runs([run.as_run()]);
        assert!(decode_runs(&body, 100, "page").is_err());
        let mut body = encode_runs([owned(1, 1, vec![vec![1]]).as_run()]);
        // The run's actor index (after the table and the count).
        body[1 + 32 + 1] = 5;
        assert!(decode_runs(&body, 100, "page").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(body) = unframe(&bytes, 4096, "page") {
                let _ = decode_runs(&body, 4096, "page");
            }
            let _ = decode_runs(&bytes, 4096, "page");
        }

        #[test]
        fn random_pages_round_trip(runs in proptest::collection::vec((0u8..4, 1u64..1000, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..20)), 0..6)) {
            let runs: Vec<OwnedRun> = runs.into_iter().map(|(a, f, ops)| owned(a, f, ops)).collect();
            let body = unframe(&encode_page(&runs), 1 << 20, "page").unwrap();
            let back = decode_runs(&body, 1 << 10, "page").unwrap();
            prop_assert_eq!(back, runs.iter().map(OwnedRun::as_run).collect::<Vec<_>>());
        }
    }
}

#[cfg(test)]
mod vectors {
    //! The worked examples of docs/REPLICA.md and docs/PROTOCOL.md.
    use serde_bytes::ByteBuf;

    use crate::replica::run::{OwnedRun, Run};
    use crate::replica::{ActorKey, ChainHash, ChainKey, KvDoc, OpEnvelope, VersionVector};
    use crate::sync::{encode, Gossip, SyncRequest, SyncResponse};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn chain_of(key: &ActorKey, doc: &str, ops: Vec<crate::replica::KvOp>) -> Vec<OpEnvelope<crate::replica::KvOp>> {
        let mut prev = ChainHash::ZERO;
        let mut out = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let mut e =
                OpEnvelope::encode::<KvDoc>(&ChainKey::new(doc), key.actor(), i as u64 + 1, prev, op, None).unwrap();
            e.sign(key);
            prev = e.hash();
            out.push(e);
        }
        out
    }

    fn page(envs: &[OpEnvelope<crate::replica::KvOp>]) -> (Vec<u8>, Vec<u8>) {
        let run = Run::of(envs).unwrap();
        let owned = OwnedRun {
            actor: run.actor,
            first: run.first,
            prev: run.prev,
            succeeds: None,
            ops: run.ops.iter().map(|o| o.to_vec()).collect(),
            sig: run.sig,
        };
        let body = super::encode_runs([owned.as_run()]);
        let mut framed = vec![0];
        crate::replica::varint::put(&mut framed, body.len() as u64);
        framed.extend_from_slice(&body);
        (body, framed)
    }

    /// Asserts `got` is in the specification (docs/REPLICA.md or
    /// docs/PROTOCOL.md), where hex dumps may be split by spaces and lines
    /// and cut by `…`: each piece of `got` long enough to mean something
    /// must appear.
    fn documented(what: &str, got: &str) {
        const DOCS: [&str; 2] = [include_str!("../../docs/REPLICA.md"), include_str!("../../docs/PROTOCOL.md")];
        let squashed: Vec<String> = DOCS.iter().map(|d| d.split_whitespace().collect::<String>()).collect();
        assert!(
            squashed.iter().any(|d| d.contains(got)),
            "{what} = {got} is not in docs/REPLICA.md or docs/PROTOCOL.md"
        );
    }

    #[test]
    fn the_documents_worked_examples_are_what_the_code_makes() {
        use crdts::CmRDT;
        let (a, b, c) =
            (ActorKey::from_seed([0x11; 32]), ActorKey::from_seed([0x22; 32]), ActorKey::from_seed([0x55; 32]));
        let d = KvDoc::default();
        let put = d.put_op(a.actor(), "k", "v");
        let ea = chain_of(&a, "notes", vec![put.clone()]);
        documented("A's operation 1", &hex(ea[0].op_bytes()));
        documented("its hash", &hex(&ea[0].hash().0));
        documented("its head signature", &hex(&ea[0].signature().unwrap().0));
        let (body, framed) = page(&ea);
        assert_eq!(body.len(), 143);
        assert_eq!(framed.len(), 146);
        assert_eq!(super::unframe(&framed, 1 << 10, "page").unwrap(), body);
        let g = encode(&Gossip { doc: "notes".into(), page: ByteBuf::from(framed.clone()) });
        assert_eq!(g.len(), 164);
        use sha2::Digest;
        documented("the gossip message's SHA-256", &hex(&sha2::Sha256::digest(&g)));
        let ops = encode(&SyncResponse::Ops { doc: "notes".into(), page: ByteBuf::from(framed), more: true });
        assert_eq!(ops.len(), 175);
        let empty = super::frame(&super::encode_runs(Vec::new()));
        let none = encode(&SyncResponse::Ops { doc: "notes".into(), page: ByteBuf::from(empty.clone()), more: false });
        assert_eq!(hex(&empty), "00020000");
        documented("an empty Ops", &hex(&none));
        // B: put k (dot B,1), then del k having seen (B, 1).
        let mut db = KvDoc::default();
        let p1 = db.put_op(b.actor(), "k", "w");
        db.apply(p1.clone());
        let del = db.del_op("k");
        let eb = chain_of(&b, "notes", vec![p1, del]);
        documented("B's Del", &hex(eb[1].op_bytes()));
        // C: two puts of a padding key, a delete of it, a put of k.
        let mut dc = KvDoc::default();
        let mut cops = Vec::new();
        for v in ["x", "y"] {
            let o = dc.put_op(c.actor(), "pad", v);
            dc.apply(o.clone());
            cops.push(o);
        }
        let o = dc.del_op("pad");
        dc.apply(o.clone());
        cops.push(o);
        let o = dc.put_op(c.actor(), "k", "v");
        dc.apply(o.clone());
        cops.push(o);
        let ec = chain_of(&c, "notes", cops);
        let state = encode(&dc);
        assert_eq!(state.len(), 111);
        documented("C's head", &hex(&ec[3].hash().0));
        let mut clock = VersionVector::default();
        clock.observe(c.actor(), 4);
        let snap = encode(&SyncResponse::Snapshot {
            doc: "notes".into(),
            state: ByteBuf::from(super::frame(&state)),
            clock,
            successions: Vec::new(),
            heads: vec![(c.actor(), ec[3].hash())],
        });
        assert_eq!(snap.len(), 260);
        let mut clock = VersionVector::default();
        clock.observe(a.actor(), 1);
        let req = encode(&SyncRequest { doc: "notes".into(), clock, budget: 65536 });
        assert_eq!(req.len(), 65);
    }

    #[test]
    fn the_replica_format_s_worked_examples_are_what_the_code_makes() {
        use crdts::CmRDT;
        let key = ActorKey::from_seed([1; 32]);
        let a = key.actor();
        documented("the actor", &hex(&a.0[..4]));
        let mut doc = KvDoc::default();
        let op1 = doc.put_op(a, "title", "Groceries");
        doc.apply(op1.clone());
        let op2 = doc.put_op(a, "title", "Shopping");
        let envs = chain_of(&key, "notes", vec![op1, op2]);
        documented("operation 1", &hex(envs[0].op_bytes()));
        documented("operation 2", &hex(envs[1].op_bytes()));
        documented("operation 1's hash", &hex(&envs[0].hash().0));
        documented("operation 2's hash", &hex(&envs[1].hash().0));
        let mut block_envs = envs.clone();
        block_envs[0].set_signature(None);
        documented("operation 2's head signature", &hex(&block_envs[1].signature().unwrap().0));
        let block = Run::of(&block_envs).unwrap().block();
        assert_eq!(block.len(), 175);
        // The block's fields, as the example lays them out.
        documented("the block's counts", "0102");
        documented("the block's lengths", &hex(&block[1 + 32 + 2 + 32 + 1..1 + 32 + 2 + 32 + 1 + 2]));
    }
}
