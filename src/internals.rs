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
    use crate::replica::run::Run;
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 0..envs.len() {
        let follows = envs.get(i + 1).is_some_and(|n| {
            n.actor() == envs[i].actor() && n.seq() == envs[i].seq() + 1 && n.prev() == envs[i].hash()
        });
        if envs[i].signature().is_some() || !follows {
            runs.extend(Run::of(&envs[start..=i]));
            start = i + 1;
        }
    }
    crate::sync::page::frame(&crate::sync::page::encode_runs(runs))
}
