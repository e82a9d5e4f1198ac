//! Loading a replica's state on open: the checkpoint generation to start
//! from, and the rule for each log record replayed after it. Shared by the
//! writable [`Replica`](super::Replica) and the read-only
//! [`ReplicaView`](super::ReplicaView).

use std::fmt;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, CHECKPOINT_FILE};
use super::legacy::LegacyEnvelope;
use super::run::{Run, BLOCK_TAG};
use super::{
    ActorId, ChainKey, Document, EnvelopeError, OpEnvelope, ReplicaOptions, RetireReason, StorageError, VersionVector,
    WAL_DIR,
};
use crate::wal::Lsn;

/// Something found wrong, and worked around, when a replica was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovered {
    /// A checkpoint generation was damaged (bit rot, a torn write). The
    /// replica opened from the older intact generation (or from the start
    /// of the log) and replayed the log after it: every operation written
    /// through this replica is back; operations of others that only the
    /// damaged generation held come back from peers.
    DamagedCheckpoint {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// Where it was moved for inspection (`None` when opened read-only).
        moved_to: Option<PathBuf>,
        /// LSN covered by the generation used instead (0: none, the whole
        /// log was replayed).
        used_lsn: Lsn,
    },
    /// The replica stopped writing under its actor and goes on under a new
    /// one, certified by the old (see [`Succession`](super::Succession)),
    /// because peers may hold operations of the old actor that it lacks.
    ActorRetired {
        /// The retired actor.
        old: ActorId,
        /// The actor it writes under now.
        new: ActorId,
        /// Why.
        reason: RetireReason,
    },
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovered::DamagedCheckpoint { path, reason, moved_to, used_lsn } => {
                write!(f, "checkpoint {} is damaged ({reason}); ", path.display())?;
                if *used_lsn > 0 {
                    write!(f, "opened from the older checkpoint (up to LSN {used_lsn}) and the log after it")?;
                } else {
                    write!(f, "opened from the whole log")?;
                }
                if let Some(to) = moved_to {
                    write!(f, "; the damaged file was moved to {}", to.display())?;
                }
                Ok(())
            }
            Recovered::ActorRetired { old, new, reason } => {
                write!(f, "actor {old} retired ({reason}); this replica now writes as {new}")
            }
        }
    }
}

/// The state to replay the log onto.
pub(crate) struct Base<D> {
    pub doc: D,
    pub clock: VersionVector,
    /// Last LSN the state includes.
    pub lsn: Lsn,
    /// LSN of the generation before it (0 if none).
    pub older_lsn: Lsn,
    pub successions: Vec<super::Succession>,
    pub heads: Vec<(super::ActorId, super::ChainHash)>,
    pub recovered: Vec<Recovered>,
    /// No checkpoint restores the state: it starts empty (`rebuild`).
    pub rebuilt: bool,
    /// The state is the older generation because the newer one is damaged
    /// or missing: replay skips operations whose predecessors only a
    /// merged snapshot in the newer one held (see [`replay_step`]).
    pub tolerant: bool,
}

/// Picks the newest checkpoint generation that is intact and that the log
/// continues (`first_lsn..=last_lsn` is what the log holds), reporting
/// damaged generations. Fails, naming the file, when no intact generation
/// (nor the log from LSN 1) can restore the replica.
pub(crate) fn load_base<D: Document>(
    dir: &Path,
    opts: &ReplicaOptions,
    first_lsn: Lsn,
    last_lsn: Lsn,
    rebuild: bool,
) -> Result<Base<D>, StorageError> {
    let gens = checkpoint::read_generations::<D>(dir, opts.max_checkpoint_size)?;
    let (doc, clock, lsn, successions, heads) = match gens.newest {
        Some(cp) => (cp.state, cp.clock, cp.lsn, cp.successions, cp.heads),
        None => (D::default(), VersionVector::default(), 0, Vec::new(), Vec::new()),
    };
    let path = dir.join(CHECKPOINT_FILE);
    if lsn > last_lsn {
        return Err(StorageError::Corrupt {
            path,
            reason: format!("checkpoint covers LSN {lsn} but the log ends at {last_lsn}"),
        });
    }
    // The log must continue the state: hold every record after `lsn`.
    if lsn + 1 < first_lsn && lsn < last_lsn && rebuild {
        // Nothing restores it: start empty, from the log that is left.
        let recovered = damaged_notes(gens.damaged, 0);
        return Ok(Base {
            doc: D::default(),
            clock: VersionVector::default(),
            lsn: first_lsn - 1,
            older_lsn: 0,
            successions,
            heads: Vec::new(),
            recovered,
            rebuilt: true,
            tolerant: true,
        });
    }
    if lsn + 1 < first_lsn && lsn < last_lsn {
        let reason = match gens.damaged.first() {
            Some((_, e)) => {
                let older = if lsn == 0 { "none".to_string() } else { format!("one up to LSN {lsn}") };
                format!(
                    "{e}; the log starts at LSN {first_lsn} and no intact older checkpoint continues it \
                     (intact: {older}): rebuild it (`Replica::rebuild`, `walrus doc rebuild`) and let its peers refill it"
                )
            }
            None => format!("log starts at LSN {first_lsn} but the checkpoint ends at {lsn}"),
        };
        let path = gens.damaged.first().map_or_else(|| dir.join(WAL_DIR), |(p, _)| p.clone());
        return Err(StorageError::Corrupt { path, reason });
    }
    let recovered = damaged_notes(gens.damaged, lsn);
    // Without the newer generation (damaged, moved aside, or never
    // renamed in), or without any checkpoint (a first one may have been
    // lost), the log may hold operations whose predecessors only a merged
    // snapshot had. A replica that never checkpointed has no such gaps.
    let tolerant = gens.newest_is_previous || lsn == 0;
    Ok(Base { doc, clock, lsn, older_lsn: gens.older_lsn, successions, heads, recovered, rebuilt: false, tolerant })
}

fn damaged_notes(damaged: Vec<(PathBuf, StorageError)>, used_lsn: Lsn) -> Vec<Recovered> {
    damaged
        .into_iter()
        .map(|(path, e)| {
            let reason = match e {
                StorageError::Corrupt { reason, .. } => reason,
                other => other.to_string(),
            };
            Recovered::DamagedCheckpoint { path, reason, moved_to: None, used_lsn }
        })
        .collect()
}

/// What replay does with one logged operation.
pub(crate) enum Step {
    Apply,
    Skip,
}

/// The replay rule: an operation already covered by the state is skipped;
/// the next one of its actor is applied; one further ahead means the log
/// and the state disagree — an error, unless the replica opened from an
/// older generation (`tolerant`): then the state lacks what the newer one
/// had merged from a peer's snapshot, and the operation is skipped (peers
/// send it again; it is never one of this replica's own, which the log
/// holds in full after the older generation).
pub(crate) fn replay_step<O>(
    clock: &VersionVector,
    env: &OpEnvelope<O>,
    lsn: Lsn,
    tolerant: bool,
    dir: &Path,
) -> Result<Step, StorageError> {
    let have = clock.get(&env.actor());
    if env.seq() <= have {
        return Ok(Step::Skip);
    }
    if env.seq() == have + 1 {
        return Ok(Step::Apply);
    }
    if tolerant {
        return Ok(Step::Skip);
    }
    Err(StorageError::Corrupt {
        path: dir.join(WAL_DIR),
        reason: format!(
            "LSN {lsn} holds ({}, {}) but ({}, {}) was expected",
            env.actor(),
            env.seq(),
            env.actor(),
            have + 1
        ),
    })
}

/// The operations of one log record, and whether it is of format 2.
type RecordOps<O> = (Vec<OpEnvelope<O>>, bool);

/// The operations of one log record: a format-3 block (a run of one
/// actor's operations) or a format-2 envelope, whose operation is encoded
/// once more here to give it its bytes (its hash is its legacy hash). True
/// with a format-2 record.
pub(crate) fn decode_record<D: Document>(
    chain: &ChainKey,
    payload: &[u8],
    lsn: Lsn,
    max_op: usize,
) -> Result<RecordOps<D::Operation>, StorageError> {
    let bad = |e: String| StorageError::Envelope(EnvelopeError::Malformed(format!("log record {lsn}: {e}")));
    if payload.first() == Some(&BLOCK_TAG) {
        let run = Run::from_block(payload).map_err(bad)?;
        if run.ops.iter().any(|op| op.len() > max_op) {
            return Err(bad(format!("an operation over the limit of {max_op} bytes")));
        }
        return Ok((run.envelopes::<D>(chain).map_err(|e| bad(e.to_string()))?, false));
    }
    let old = LegacyEnvelope::<D::Operation>::decode(payload, max_op)?;
    Ok((vec![OpEnvelope::from_legacy::<D>(chain, old).map_err(|e| bad(e.to_string()))?], true))
}
