//! A read-only view of a replica directory: its document and version
//! vector, read without a lock and without writing a byte, so it works on
//! a read-only mount, for a user who may only read the files, and while a
//! process (a `walrus node`, say) has the replica open for writing.

use std::path::{Path, PathBuf};

use super::load::{decode_record, load_base, replay_step, Recovered, Step};
use super::{ActorId, ActorKey, ChainKey, Document, OpenError, ReplicaOptions, StorageError, VersionVector};
use super::{ACTOR_FILE, WAL_DIR};
use crate::wal::{self, LogReader};

/// How often opening is tried again when a writer truncated the log
/// between reading the checkpoint and reading the log.
const ATTEMPTS: usize = 5;

/// The state of a replica directory as of one moment, read-only.
///
/// What it shows is a consistent prefix of the replica's history: a
/// checkpoint plus the log records that were durable when it was opened.
///
/// ```
/// use walrus::replica::{KvDoc, Replica, ReplicaOptions, ReplicaView};
/// let dir = tempfile::tempdir()?;
/// let mut r: Replica<KvDoc> = Replica::open(dir.path(), ReplicaOptions::default())?;
/// r.update(|doc, actor| doc.put_op(actor, "k", "v"))?;
/// // The writer still holds the directory: a view reads it anyway.
/// let view: ReplicaView<KvDoc> = ReplicaView::open(dir.path(), &ReplicaOptions::default())?;
/// assert_eq!(view.doc().values_of("k"), vec!["v"]);
/// assert_eq!(view.actor(), Some(r.actor()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReplicaView<D: Document> {
    dir: PathBuf,
    doc: D,
    clock: VersionVector,
    actor: Option<ActorId>,
    document: String,
    recovered: Vec<Recovered>,
}

impl<D: Document> ReplicaView<D> {
    /// Reads the replica in `dir` (which must exist) without modifying
    /// anything. Of `opts`, the size limits apply.
    pub fn open(dir: impl AsRef<Path>, opts: &ReplicaOptions) -> Result<ReplicaView<D>, OpenError> {
        let dir = dir.as_ref();
        let log = dir.join(WAL_DIR);
        if !log.is_dir() {
            return Err(StorageError::Corrupt {
                path: dir.to_path_buf(),
                reason: format!("not a replica directory (no {WAL_DIR}/ inside)"),
            }
            .into());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::read(dir, &log, opts) {
                // A writer may have checkpointed and truncated the log
                // between the two reads: read both again.
                // (A damaged replica fails the same way each time.)
                Err(
                    StorageError::Corrupt { .. } | StorageError::Wal(wal::Error::Io(_) | wal::Error::Truncated { .. }),
                ) if attempt < ATTEMPTS => continue,
                other => return Ok(other?),
            }
        }
    }

    fn read(dir: &Path, log: &Path, opts: &ReplicaOptions) -> Result<ReplicaView<D>, StorageError> {
        let reader = LogReader::open(log, &opts.wal)?;
        let summary = reader.summary();
        let base = load_base::<D>(dir, opts, summary.first_lsn, summary.last_lsn, false)?;
        let tolerant = base.tolerant;
        let (mut doc, mut clock) = (base.doc, base.clock);
        let document = super::dir::read_document(dir)?.unwrap_or_default();
        let chain = ChainKey::new(&document);
        for record in reader.iter_from(base.lsn + 1)? {
            let record = record?;
            let (envs, _) = decode_record::<D>(&chain, &record.payload, record.lsn, opts.max_op_size)?;
            for env in envs {
                if let Step::Apply = replay_step(&clock, &env, record.lsn, tolerant, dir)? {
                    clock.observe(env.actor(), env.seq());
                    doc.apply(env.into_op());
                }
            }
        }
        // The key is the owner's secret: a reader allowed only the rest of
        // the directory still gets the document, without the actor.
        let actor = ActorKey::load(&dir.join(ACTOR_FILE)).ok().map(|k| k.actor());
        Ok(ReplicaView { dir: dir.to_path_buf(), doc, clock, actor, document, recovered: base.recovered })
    }

    /// The document.
    pub fn doc(&self) -> &D {
        &self.doc
    }

    /// Operations the view includes, per actor.
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// The replica's actor, if its key file could be read.
    pub fn actor(&self) -> Option<ActorId> {
        self.actor
    }

    /// The document id.
    pub fn document(&self) -> &str {
        &self.document
    }

    /// The replica directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What was found wrong and worked around (nothing was modified: a
    /// damaged checkpoint stays where it is).
    pub fn recovered(&self) -> &[Recovered] {
        &self.recovered
    }
}
