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
    codec::{FrameCodec, RequestFrame, SYNC_PROTOCOL},
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
