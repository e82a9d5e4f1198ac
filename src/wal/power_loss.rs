//! A power-loss simulator on the fault seam: see [`PowerLoss`].
//!
//! One file of about 750 lines, a quarter of them its own tests: the model
//! (files, directory entries, what a crash keeps of each) is one state
//! machine, and its parts are only correct together.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::fault::{FaultInjector, FileEvent, FileOp, Injected};

/// Sector size: the unit a write is torn at.
const SECTOR: u64 = 512;
/// The model refuses files larger than this (it keeps them in memory).
const MAX_FILE: u64 = 1 << 30;

/// A power-loss simulator on the fault seam. Install it with
/// [`WalOptions::with_faults`](super::WalOptions::with_faults).
///
/// A killed process keeps everything it handed to the kernel; a machine that
/// loses power keeps only what was made durable. [`PowerLoss`] watches the
/// log's file operations (through [`FaultInjector::observe`]) and keeps a
/// model of the directory tree under a root: what is durable, and what is
/// still pending. At a chosen operation the power fails: that operation and
/// every later one return an error. [`PowerLoss::materialize`] then writes a
/// copy of the tree as the machine could find it on reboot: the durable
/// state plus a random subset of what was pending, chosen from a seed.
///
/// The rules, worst case but within what storage promises:
///
/// - File data written since the file's last `fdatasync` may be kept, lost,
///   or torn at 512-byte sector boundaries (sectors are atomic). A lost
///   write before a kept one leaves what was there before, or zeros past
///   the old end of the file.
/// - A creation, rename, link or removal of a name since the last `fsync`
///   of its directory may be kept or lost. An `fdatasync` of a file does not
///   make its name durable, and renaming a synced file into place is
///   durable only once the directory is synced.
/// - Each crash either keeps a prefix of the pending operations in issue
///   order (the last kept write possibly torn), as a journaling file system
///   tends to, or keeps each one independently, as a disk cache that
///   reorders writes may.
///
/// Operations of concurrent threads are ordered as they are reported, once
/// each completed: a sync that overlaps another thread's operation on the
/// same directory or file is taken to cover it if that one was reported
/// first. The model holds file contents in memory, so it suits small
/// workloads.
/// Operations the seam does not see (opening the lock file, a best-effort
/// cleanup outside it) are not modelled; an operation on a path the model
/// does not know makes [`PowerLoss::materialize`] fail rather than guess.
///
/// ```
/// use std::sync::Arc;
/// use walrus::wal::{PowerLoss, SyncPolicy, Wal, WalOptions};
///
/// let root = tempfile::tempdir()?;
/// let dir = root.path().join("log");
/// // Power fails at the 12th file operation.
/// let power = Arc::new(PowerLoss::new(root.path())?.cut_at(12));
/// let opts = WalOptions::new(SyncPolicy::Always).segment_size(4096);
/// let mut acked = Vec::new();
/// if let Ok(wal) = Wal::open(&dir, opts.clone().with_faults(power.clone())) {
///     for i in 0..10u8 {
///         match wal.append(&[i]) {
///             Ok(lsn) => acked.push((lsn, i)),
///             Err(_) => break,
///         }
///     }
/// }
/// assert!(power.power_lost());
///
/// // Reboot: any crash state must hold every acknowledged record.
/// for seed in 0..4 {
///     let crashed = tempfile::tempdir()?;
///     power.materialize(crashed.path(), seed)?;
///     let wal = Wal::open(crashed.path().join("log"), opts.clone())?;
///     for &(lsn, i) in &acked {
///         let record = wal.iter_from(lsn)?.next().ok_or("acknowledged record lost")??;
///         assert_eq!(record.payload, [i]);
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PowerLoss {
    root: PathBuf,
    model: Mutex<Model>,
}

/// What one [`PowerLoss::materialize`] kept of the pending operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashSummary {
    /// Writes (and truncations) that reached the disk whole.
    pub writes_kept: usize,
    /// Writes of which only some sectors reached the disk.
    pub writes_torn: usize,
    /// Writes (and truncations) lost entirely.
    pub writes_lost: usize,
    /// Directory operations that reached the disk.
    pub dir_ops_kept: usize,
    /// Directory operations lost.
    pub dir_ops_lost: usize,
}

type Ino = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(Ino),
    Dir,
}

#[derive(Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    /// Operations since the last sync, with their issue numbers.
    pending: Vec<(u64, DataOp)>,
}

/// A change of names; paths are relative to the root.
#[derive(Debug)]
enum DirOp {
    Create { path: PathBuf, node: Node },
    Rename { from: PathBuf, to: PathBuf, ino: Ino },
    Link { to: PathBuf, ino: Ino },
    Remove { path: PathBuf, ino: Ino },
}

impl DirOp {
    /// Whether an `fsync` of `dir` makes this operation durable. A rename
    /// between directories counts as one operation, durable once either is
    /// synced.
    fn in_dir(&self, dir: &Path) -> bool {
        let parent = |p: &PathBuf| p.parent().unwrap_or(Path::new("")) == dir;
        match self {
            DirOp::Create { path, .. } | DirOp::Remove { path, .. } | DirOp::Link { to: path, .. } => parent(path),
            DirOp::Rename { from, to, .. } => parent(from) || parent(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Node>) {
        match self {
            DirOp::Create { path, node } => {
                names.insert(path.clone(), *node);
            }
            DirOp::Rename { from, to, ino } => {
                // The file exists whether or not the name it had was durable.
                if names.get(from) == Some(&Node::File(*ino)) {
                    names.remove(from);
                }
                names.insert(to.clone(), Node::File(*ino));
            }
            DirOp::Link { to, ino } => {
                names.insert(to.clone(), Node::File(*ino));
            }
            DirOp::Remove { path, ino } => {
                if names.get(path) == Some(&Node::File(*ino)) {
                    names.remove(path);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Operations checked so far.
    ops: u64,
    /// The operation at which power fails (0: never).
    cut_at: u64,
    lost: bool,
    /// Issue number of the next pending operation.
    seq: u64,
    inodes: Vec<Inode>,
    /// Names as the running system sees them.
    names: BTreeMap<PathBuf, Node>,
    /// Names as of the last sync of their directories.
    durable_names: BTreeMap<PathBuf, Node>,
    /// Directory operations not yet durable, with their issue numbers.
    pending_dir: Vec<(u64, DirOp)>,
    /// Operations the model could not follow.
    errors: Vec<String>,
}

impl PowerLoss {
    /// Simulates a power loss under `root`, an existing directory whose
    /// present contents count as durable. Operations outside it are allowed
    /// and not modelled. Use the same form of path (absolute or relative) as
    /// the log does.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<PowerLoss> {
        let root = root.into();
        let mut model = Model::default();
        snapshot(&root, Path::new(""), &mut model)?;
        model.durable_names = model.names.clone();
        Ok(PowerLoss { root, model: Mutex::new(model) })
    }

    /// Makes the power fail at the `n`-th operation checked (counting from 1
    /// since [`PowerLoss::new`]): it and every later operation fail. Without
    /// it the power never fails; [`PowerLoss::operations`] after a run says
    /// how many operations a workload does.
    pub fn cut_at(self, n: u64) -> PowerLoss {
        self.lock().cut_at = n;
        self
    }

    /// Operations checked so far (including failed ones).
    pub fn operations(&self) -> u64 {
        self.lock().ops
    }

    /// Whether the power has failed.
    pub fn power_lost(&self) -> bool {
        self.lock().lost
    }

    /// Writes the tree under the root as it could be found after a power
    /// loss now into `dest` (created if missing; it should be empty): the
    /// durable state and a subset of the pending operations chosen by
    /// `seed`. The same seed gives the same state.
    pub fn materialize(&self, dest: &Path, seed: u64) -> io::Result<CrashSummary> {
        let model = self.lock();
        if let Some(e) = model.errors.first() {
            return Err(io::Error::other(format!(
                "power-loss model of {} is incomplete ({} operations not followed), first: {e}",
                self.root.display(),
                model.errors.len()
            )));
        }
        let mut rng = Rng::new(seed);
        let mut summary = CrashSummary::default();
        let pick = Pick::new(&model, &mut rng);

        let mut names = model.durable_names.clone();
        for (seq, op) in &model.pending_dir {
            if pick.keep(*seq, &mut rng) {
                op.apply(&mut names);
                summary.dir_ops_kept += 1;
            } else {
                summary.dir_ops_lost += 1;
            }
        }

        fs::create_dir_all(dest)?;
        let mut contents: HashMap<Ino, Vec<u8>> = HashMap::new();
        let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
        for (path, node) in &names {
            // A name is reachable only if its directory survived.
            let parent = path.parent().unwrap_or(Path::new(""));
            if !dirs.iter().any(|d| d == parent) {
                continue;
            }
            let target = dest.join(path);
            match node {
                Node::Dir => {
                    fs::create_dir(&target).map_err(|e| annotate(e, "creating", &target))?;
                    dirs.push(path.clone());
                }
                Node::File(ino) => {
                    if !contents.contains_key(ino) {
                        let bytes = crash_contents(&model.inodes[*ino], &pick, &mut rng, &mut summary);
                        contents.insert(*ino, bytes);
                    }
                    let bytes = contents.get(ino).map_or(&[][..], |b| &b[..]);
                    fs::write(&target, bytes).map_err(|e| annotate(e, "writing", &target))?;
                }
            }
        }
        Ok(summary)
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` relative to the root; `None` if it is outside.
    fn relative(&self, path: &Path) -> Result<Option<PathBuf>, String> {
        let Ok(rel) = path.strip_prefix(&self.root) else { return Ok(None) };
        // `a/./b` and `a/../b` would alias names in the model.
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("{} is not a plain path below the root", path.display()));
        }
        Ok(Some(rel.to_path_buf()))
    }
}

impl std::fmt::Debug for PowerLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.lock();
        f.debug_struct("PowerLoss")
            .field("root", &self.root)
            .field("operations", &m.ops)
            .field("cut_at", &m.cut_at)
            .field("power_lost", &m.lost)
            .field("pending_dir_ops", &m.pending_dir.len())
            .finish()
    }
}

impl FaultInjector for PowerLoss {
    fn check(&self, _op: FileOp, _path: &Path, _len: usize) -> Result<(), Injected> {
        let mut m = self.lock();
        m.ops += 1;
        if m.lost || (m.cut_at != 0 && m.ops >= m.cut_at) {
            m.lost = true;
            return Err(Injected::fail(io::Error::other("simulated power loss")));
        }
        Ok(())
    }

    fn observe(&self, event: &FileEvent<'_>) {
        let mut m = self.lock();
        // An operation allowed before the power failed completed before it.
        if let Err(e) = self.record(&mut m, event) {
            m.errors.push(e);
        }
    }
}

impl PowerLoss {
    fn record(&self, m: &mut Model, event: &FileEvent<'_>) -> Result<(), String> {
        let rel = |p: &Path| self.relative(p);
        // Operations outside the root are not modelled.
        match *event {
            FileEvent::Write { path, offset, data } => {
                let Some(p) = rel(path)? else { return Ok(()) };
                let ino = m.file(&p)?;
                if offset.saturating_add(data.len() as u64) > MAX_FILE {
                    return Err(format!("write past {MAX_FILE} bytes in {}", path.display()));
                }
                let seq = m.next_seq();
                m.inodes[ino].pending.push((seq, DataOp::Write { offset, data: data.to_vec() }));
            }
            FileEvent::SyncData { path } => {
                let Some(p) = rel(path)? else { return Ok(()) };
                let ino = m.file(&p)?;
                let inode = &mut m.inodes[ino];
                for (_, op) in std::mem::take(&mut inode.pending) {
                    apply_data(&mut inode.durable, &op, None);
                }
            }
            FileEvent::SyncDir { path } => {
                let Some(dir) = rel(path)? else { return Ok(()) };
                let (now, later): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut m.pending_dir).into_iter().partition(|(_, op)| op.in_dir(&dir));
                for (_, op) in &now {
                    op.apply(&mut m.durable_names);
                }
                m.pending_dir = later;
            }
            FileEvent::Create { path } => {
                let Some(p) = rel(path)? else { return Ok(()) };
                match m.names.get(&p) {
                    Some(Node::File(ino)) => {
                        let ino = *ino;
                        let seq = m.next_seq();
                        m.inodes[ino].pending.push((seq, DataOp::SetLen(0)));
                    }
                    Some(Node::Dir) => return Err(format!("{} created as a file over a directory", path.display())),
                    None => {
                        m.inodes.push(Inode::default());
                        let node = Node::File(m.inodes.len() - 1);
                        m.dir_op(DirOp::Create { path: p, node });
                    }
                }
            }
            FileEvent::CreateDir { path } => {
                let Some(p) = rel(path)? else { return Ok(()) };
                m.dir_op(DirOp::Create { path: p, node: Node::Dir });
            }
            FileEvent::Rename { from, to } | FileEvent::Link { from, to } => {
                let (f, t) = match (rel(from)?, rel(to)?) {
                    (Some(f), Some(t)) => (f, t),
                    (None, None) => return Ok(()),
                    _ => return Err(format!("{} to {} crosses the root", from.display(), to.display())),
                };
                let ino = m.file(&f)?;
                m.dir_op(match event {
                    FileEvent::Rename { .. } => DirOp::Rename { from: f, to: t, ino },
                    _ => DirOp::Link { to: t, ino },
                });
            }
            FileEvent::Remove { path } => {
                let Some(p) = rel(path)? else { return Ok(()) };
                let ino = m.file(&p)?;
                m.dir_op(DirOp::Remove { path: p, ino });
            }
        }
        Ok(())
    }
}

impl Model {
    fn file(&self, path: &Path) -> Result<Ino, String> {
        match self.names.get(path) {
            Some(Node::File(ino)) => Ok(*ino),
            Some(Node::Dir) => Err(format!("{} is a directory", path.display())),
            None => Err(format!("{} is not a file the model knows", path.display())),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Applies a change of names to the running view and queues it until its
    /// directory is synced.
    fn dir_op(&mut self, op: DirOp) {
        op.apply(&mut self.names);
        let seq = self.next_seq();
        self.pending_dir.push((seq, op));
    }
}

/// How a crash treats each pending operation.
enum Pick {
    /// Operations issued before `upto` are kept, the one at `upto` torn (if
    /// a write) or lost, later ones lost.
    Prefix { upto: u64 },
    /// Each operation independently.
    Independent,
}

impl Pick {
    fn new(m: &Model, rng: &mut Rng) -> Pick {
        if rng.below(2) == 0 {
            return Pick::Independent;
        }
        let mut seqs: Vec<u64> = m.pending_dir.iter().map(|(s, _)| *s).collect();
        seqs.extend(m.inodes.iter().flat_map(|i| i.pending.iter().map(|(s, _)| *s)));
        seqs.sort_unstable();
        let k = rng.below(seqs.len() as u64 + 1) as usize;
        Pick::Prefix { upto: seqs.get(k).copied().unwrap_or(u64::MAX) }
    }

    /// Whether a whole (directory or truncation) operation survives.
    fn keep(&self, seq: u64, rng: &mut Rng) -> bool {
        match self {
            Pick::Prefix { upto } => seq < *upto,
            Pick::Independent => rng.below(2) == 0,
        }
    }
}

/// The contents of a file after the crash: durable bytes plus the pending
/// operations the pick keeps.
fn crash_contents(inode: &Inode, pick: &Pick, rng: &mut Rng, summary: &mut CrashSummary) -> Vec<u8> {
    let mut bytes = inode.durable.clone();
    for (seq, op) in &inode.pending {
        match op {
            DataOp::SetLen(_) => {
                if pick.keep(*seq, rng) {
                    apply_data(&mut bytes, op, None);
                    summary.writes_kept += 1;
                } else {
                    summary.writes_lost += 1;
                }
            }
            DataOp::Write { offset, data } => {
                let sectors = sectors(*offset, data.len());
                let kept: Vec<bool> = match pick {
                    Pick::Prefix { upto } if *seq < *upto => vec![true; sectors],
                    Pick::Prefix { upto } if *seq == *upto => {
                        let n = rng.below(sectors as u64 + 1) as usize;
                        (0..sectors).map(|i| i < n).collect()
                    }
                    Pick::Prefix { .. } => vec![false; sectors],
                    Pick::Independent => match rng.below(3) {
                        0 => vec![true; sectors],
                        1 => vec![false; sectors],
                        _ => (0..sectors).map(|_| rng.below(2) == 0).collect(),
                    },
                };
                match kept.iter().filter(|&&k| k).count() {
                    0 => summary.writes_lost += 1,
                    n if n == sectors => summary.writes_kept += 1,
                    _ => summary.writes_torn += 1,
                }
                apply_data(&mut bytes, op, Some(&kept));
            }
        }
    }
    bytes
}

/// Number of sectors `len` bytes at `offset` touch.
fn sectors(offset: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let end = offset + len as u64;
    (end.div_ceil(SECTOR) - offset / SECTOR) as usize
}

/// Applies a data operation; for a write, only the sectors `kept` says
/// (all if `None`). Lengths were bounded when the operation was recorded.
fn apply_data(bytes: &mut Vec<u8>, op: &DataOp, kept: Option<&[bool]>) {
    match op {
        DataOp::SetLen(len) => bytes.resize(*len as usize, 0),
        DataOp::Write { offset, data } => {
            let first_sector = offset / SECTOR;
            let mut at = 0usize;
            let mut i = 0usize;
            while at < data.len() {
                let pos = offset + at as u64;
                let sector_end = (first_sector + i as u64 + 1) * SECTOR;
                let n = ((sector_end - pos) as usize).min(data.len() - at);
                if kept.is_none_or(|k| k.get(i).copied().unwrap_or(false)) {
                    let pos = pos as usize;
                    if bytes.len() < pos + n {
                        bytes.resize(pos + n, 0);
                    }
                    bytes[pos..pos + n].copy_from_slice(&data[at..at + n]);
                }
                at += n;
                i += 1;
            }
        }
    }
}

/// Records the tree under `root` (at `rel`) as durable contents.
fn snapshot(root: &Path, rel: &Path, m: &mut Model) -> io::Result<()> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(|e| annotate(e, "listing", &dir))? {
        let entry = entry.map_err(|e| annotate(e, "listing", &dir))?;
        let kind = entry.file_type().map_err(|e| annotate(e, "inspecting", &entry.path()))?;
        let path = rel.join(entry.file_name());
        if kind.is_dir() {
            m.names.insert(path.clone(), Node::Dir);
            snapshot(root, &path, m)?;
        } else if kind.is_file() {
            let full = entry.path();
            let len = entry.metadata().map_err(|e| annotate(e, "inspecting", &full))?.len();
            if len > MAX_FILE {
                return Err(io::Error::other(format!("{} is too large to model ({len} bytes)", full.display())));
            }
            let durable = fs::read(&full).map_err(|e| annotate(e, "reading", &full))?;
            m.inodes.push(Inode { durable, pending: Vec::new() });
            m.names.insert(path, Node::File(m.inodes.len() - 1));
        }
    }
    Ok(())
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// A seeded generator: the same seed picks the same crash state.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::durable::Files;
    use crate::wal::segment::Io;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn setup() -> (tempfile::TempDir, Arc<PowerLoss>, Io) {
        let root = tempfile::tempdir().unwrap();
        let power = Arc::new(PowerLoss::new(root.path()).unwrap());
        let io = Io { faults: Some(power.clone()) };
        (root, power, io)
    }

    /// Contents of `name` in each of `n` crash states (`None`: absent).
    fn outcomes(power: &PowerLoss, name: &str, n: u64) -> Vec<Option<Vec<u8>>> {
        (0..n)
            .map(|seed| {
                let dest = tempfile::tempdir().unwrap();
                power.materialize(dest.path(), seed).unwrap();
                std::fs::read(dest.path().join(name)).ok()
            })
            .collect()
    }

    #[test]
    fn a_new_name_needs_the_directory_synced() {
        let (root, power, io) = setup();
        let path = root.path().join("a");
        let file = io.create(&path).unwrap();
        io.write_at(&file, &path, b"hello", 0).unwrap();
        io.sync_data(&file, &path).unwrap();
        let seen: BTreeSet<_> = outcomes(&power, "a", 32).into_iter().collect();
        assert_eq!(seen, BTreeSet::from([None, Some(b"hello".to_vec())]));
        io.sync_dir(root.path()).unwrap();
        assert!(outcomes(&power, "a", 16).iter().all(|o| o.as_deref() == Some(&b"hello"[..])));
    }

    #[test]
    fn unsynced_writes_are_kept_lost_or_torn_at_sector_boundaries() {
        let (root, power, io) = setup();
        let path = root.path().join("f");
        let file = io.create(&path).unwrap();
        io.write_at(&file, &path, &[1u8; 1024], 0).unwrap();
        io.sync_data(&file, &path).unwrap();
        io.sync_dir(root.path()).unwrap();
        // Overwrite the synced kilobyte and append one more, unsynced,
        // starting mid-sector.
        io.write_at(&file, &path, &[2u8; 1536], 256).unwrap();
        let mut shapes = BTreeSet::new();
        for o in outcomes(&power, "f", 64) {
            let bytes = o.expect("a synced file in a synced directory survives");
            assert!(bytes.len() >= 1024 && bytes.len() <= 1792, "length {}", bytes.len());
            assert!(bytes[..256].iter().all(|&b| b == 1));
            // Each sector is all old, all new, or (past the old end) zeros.
            let sectors: Vec<u8> = bytes
                .chunks(512)
                .enumerate()
                .map(|(i, c)| {
                    let part = if i == 0 { &c[256..] } else { c };
                    let first = part[0];
                    assert!(part.iter().all(|&b| b == first), "sector {i} mixes bytes: {part:?}");
                    first
                })
                .collect();
            shapes.insert(sectors);
        }
        assert!(shapes.contains(&vec![1, 1]), "all lost never happened: {shapes:?}");
        assert!(shapes.contains(&vec![2, 2, 2, 2]), "all kept never happened: {shapes:?}");
        assert!(shapes.len() > 3, "no torn write: {shapes:?}");
    }

    #[test]
    fn a_rename_is_durable_only_once_the_directory_is_synced() {
        let (root, power, io) = setup();
        let files = Files::new(Some(power.clone()));
        let path = root.path().join("doc");
        files.write_atomic(&path, b"old", false).unwrap();
        let tmp = root.path().join("doc.new");
        let file = io.create(&tmp).unwrap();
        io.write_at(&file, &tmp, b"new", 0).unwrap();
        io.sync_data(&file, &tmp).unwrap();
        io.rename(&tmp, &path).unwrap();
        let seen: BTreeSet<_> = outcomes(&power, "doc", 32).into_iter().collect();
        assert_eq!(seen, BTreeSet::from([Some(b"old".to_vec()), Some(b"new".to_vec())]));
        io.sync_dir(root.path()).unwrap();
        assert!(outcomes(&power, "doc", 16).iter().all(|o| o.as_deref() == Some(&b"new"[..])));
        assert!(outcomes(&power, "doc.new", 16).iter().all(Option::is_none));
    }

    #[test]
    fn the_power_stays_off_from_the_cut_on() {
        let root = tempfile::tempdir().unwrap();
        let power = Arc::new(PowerLoss::new(root.path()).unwrap().cut_at(3));
        let io = Io { faults: Some(power.clone()) };
        let path = root.path().join("f");
        let file = io.create(&path).unwrap();
        io.sync_dir(root.path()).unwrap();
        assert!(!power.power_lost());
        assert!(io.write_at(&file, &path, b"x", 0).is_err());
        assert!(io.sync_dir(root.path()).is_err());
        assert!(power.power_lost());
        assert_eq!(power.operations(), 4);
        assert!(outcomes(&power, "f", 8).iter().all(|o| o.as_deref() == Some(&[][..])));
    }

    #[test]
    fn an_operation_the_model_cannot_follow_fails_materialize() {
        let (root, power, io) = setup();
        let path = root.path().join("made-behind-its-back");
        let file = std::fs::File::create(&path).unwrap();
        io.write_at(&file, &path, b"x", 0).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let err = power.materialize(dest.path(), 0).unwrap_err();
        assert!(err.to_string().contains("made-behind-its-back"), "{err}");
    }

    #[test]
    fn the_present_tree_counts_as_durable() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), b"before").unwrap();
        let power = PowerLoss::new(root.path()).unwrap();
        assert!(outcomes(&power, "d/f", 4).iter().all(|o| o.as_deref() == Some(&b"before"[..])));
    }

    /// Durable small files at every cut point of a sequence of writes:
    /// after a power loss each is absent (only if no write of it was
    /// acknowledged), the last acknowledged version, or the one being
    /// written; never partial.
    #[test]
    fn durable_files_are_old_or_new_at_every_cut() {
        const DOC: &str = "state/doc";
        const KEY: &str = "state/key";
        let versions: Vec<Vec<u8>> = (0..4u8).map(|v| vec![b'a' + v; 700 + 300 * v as usize]).collect();
        let workload = |power: &Arc<PowerLoss>, root: &Path| -> (Option<usize>, Option<usize>, bool) {
            let files = Files::new(Some(power.clone()));
            let (mut acked, mut attempted, mut key) = (None, None, false);
            if files.create_dir_all(&root.join("state")).is_err() {
                return (acked, attempted, key);
            }
            for (i, v) in versions.iter().enumerate() {
                attempted = Some(i);
                if files.write_atomic(&root.join(DOC), v, false).is_err() {
                    return (acked, attempted, key);
                }
                acked = Some(i);
                if i == 1 {
                    match files.create_new(&root.join(KEY), b"secret key", true) {
                        Ok(created) => key = created,
                        Err(_) => return (acked, attempted, key),
                    }
                }
            }
            (acked, attempted, key)
        };
        let dry = tempfile::tempdir().unwrap();
        let power = Arc::new(PowerLoss::new(dry.path()).unwrap());
        assert_eq!(workload(&power, dry.path()), (Some(3), Some(3), true));
        let total = power.operations();
        let mut seen_absent_after_attempt = false;
        for cut in 1..=total {
            let root = tempfile::tempdir().unwrap();
            let power = Arc::new(PowerLoss::new(root.path()).unwrap().cut_at(cut));
            let (acked, attempted, key) = workload(&power, root.path());
            assert!(power.power_lost(), "cut {cut}");
            for seed in 0..12 {
                let dest = tempfile::tempdir().unwrap();
                power.materialize(dest.path(), seed).unwrap();
                let ctx = format!("cut {cut} of {total}, seed {seed}");
                match std::fs::read(dest.path().join(DOC)).ok() {
                    None => {
                        assert_eq!(acked, None, "{ctx}: acknowledged document lost");
                        seen_absent_after_attempt |= attempted.is_some();
                    }
                    Some(bytes) => {
                        let v = versions.iter().position(|v| *v == bytes);
                        let Some(v) = v else { panic!("{ctx}: partial document of {} bytes", bytes.len()) };
                        assert!(acked.is_none_or(|a| v >= a), "{ctx}: version {v} after {acked:?} was acknowledged");
                        assert!(attempted.is_some_and(|a| v <= a), "{ctx}: version {v} was never written");
                    }
                }
                match std::fs::read(dest.path().join(KEY)).ok() {
                    None => assert!(!key, "{ctx}: created key lost"),
                    Some(bytes) => assert_eq!(bytes, b"secret key", "{ctx}: partial key"),
                }
            }
        }
        assert!(seen_absent_after_attempt, "no crash state lost an unacknowledged first write");
    }
}
