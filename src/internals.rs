//! **Not a stable API.** Internals of walrus that its own integration
//! tests, fuzz targets and benchmarks reach into (feature `internals`).
//!
//! Nothing here is meant for applications: these items may change or
//! disappear in any release, patch releases included, and **semver does not
//! cover them**. Everything an application needs is public elsewhere in the
//! crate; if you find yourself needing something from this module, please
//! open an issue instead.

use crate::replica::{Document, Replica, StorageError, VersionVector};

/// The byte layout of log segment headers and record frames
/// (`docs/FORMAT.md`): pure encoders and decoders.
pub mod format {
    pub use crate::wal::format::*;
}

pub use crate::replica::causal::{CausalBuffer, Offer};
pub use crate::replica::dir::DOCUMENT_FILE;
pub use crate::replica::legacy::LegacyEnvelope;

#[cfg(feature = "net")]
pub use crate::net::{
    behaviour::{IDENTIFY_VERSION, TOPIC_PREFIX},
    codec::{FrameCodec, RequestFrame, SYNC_PROTOCOL, SYNC_PROTOCOL_V1},
    identity::IDENTITY_FILE,
    lock::LOCK_FILE,
};

/// Makes `replica`'s next checkpoints stop after `step` steps (1: header
/// written, 2: body written, 3: temp file synced, 4: renamed), as if the
/// process crashed there; `None` lets them finish again.
pub fn set_checkpoint_crash_point<D: Document>(replica: &mut Replica<D>, step: Option<u8>) {
    replica.set_checkpoint_crash_point(step);
}

/// [`Replica::ops_since`] as the page a sync answer carries (the frame of
/// docs/PROTOCOL.md, "Pages"), and whether more follow; `None` means a
/// snapshot is needed.
pub fn page_since<D: Document>(
    replica: &Replica<D>,
    theirs: &VersionVector,
    byte_budget: usize,
) -> Result<Option<(Vec<u8>, bool)>, StorageError> {
    Ok(replica.runs_since(theirs, byte_budget)?.map(|(runs, more)| (crate::sync::page::encode_page(&runs), more)))
}

/// A framed page (docs/PROTOCOL.md, "Pages") of `envs`: consecutive
/// operations of one actor, each following the one before, form a run,
/// cut after each signed one; a run is written even if its last operation
/// is unsigned (a receiver refuses that page), so tests can send anything.
pub fn page_of<O>(envs: &[crate::replica::OpEnvelope<O>]) -> Vec<u8> {
    crate::sync::page::page_of(envs)
}

/// A framed page's body (the frame of docs/PROTOCOL.md, "Pages"), if it
/// declares and expands to at most `limit` bytes.
pub fn unframe_page(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    crate::sync::page::unframe(bytes, limit, "page").map_err(|e| e.to_string())
}

/// `body` framed as a page (compressed when that makes it smaller).
pub fn frame_page(body: &[u8]) -> Vec<u8> {
    crate::sync::page::frame(body)
}

/// The operations of a framed page, as a receiver of document `doc` reads
/// them (at most `limit` bytes once expanded, each operation at most
/// `max_op` bytes): decoded and chained, run by run, nothing verified.
pub fn decode_page<D: Document>(
    bytes: &[u8],
    limit: usize,
    max_op: usize,
    doc: &str,
) -> Result<Vec<crate::replica::OpEnvelope<D::Operation>>, String> {
    let body = crate::sync::page::unframe(bytes, limit, "page").map_err(|e| e.to_string())?;
    let runs = crate::sync::page::decode_runs(&body, max_op, "page").map_err(|e| e.to_string())?;
    let chain = crate::replica::ChainKey::new(doc);
    let mut out = Vec::new();
    for run in &runs {
        out.extend(run.envelopes::<D>(&chain).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The operations of a format-3 log record (one run) of document `doc`,
/// decoded and chained, nothing verified.
pub fn decode_block<D: Document>(
    record: &[u8],
    doc: &str,
) -> Result<Vec<crate::replica::OpEnvelope<D::Operation>>, String> {
    let run = crate::replica::run::Run::from_block(record)?;
    run.envelopes::<D>(&crate::replica::ChainKey::new(doc)).map_err(|e| e.to_string())
}

/// The format-3 log record (one run) of `envs`: consecutive operations of
/// one actor, each following the one before, carrying the last one's
/// signature; `None` if `envs` is empty.
pub fn block_of<O>(envs: &[crate::replica::OpEnvelope<O>]) -> Option<Vec<u8>> {
    crate::replica::run::Run::of(envs).map(|r| r.block())
}
