//! The writable log: open/recovery, appends, group commit, rotation and
//! truncation.
//!
//! Appenders encode frames into an in-memory buffer under the state lock.
//! Whoever needs records persisted and finds no I/O in progress becomes the
//! *leader*: it takes the whole buffer, writes it with one `pwrite` and (for
//! durable policies) one `fdatasync`, then wakes everyone it covered.
//! Appends continue into a fresh buffer meanwhile, forming the next group.
//!
//! Longer than most modules (about 730 lines) on purpose: appends, group
//! commit, rotation and truncation share one lock and one set of invariants
//! over `State`, which read best in one place. Repair is in `repair.rs`.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{info, info_span, warn};

use super::error::{Error, Result};
use super::format::{
    self, SegmentHeader, FLAG_SYNCED_BEFORE, FRAME_HEADER_LEN, KIND_LAST, KIND_MORE, SEGMENT_HEADER_LEN,
};
use super::reader::{Positions, WalIter};
use super::recovery::{plan_repair, scan_dir, RepairPlan, Scan};
use super::repair::{apply_repair, RepairRequest};
use super::segment::{self, new_segment_file, Io, LOCK_FILE, NEW_SEGMENT_FILE, PREALLOC_FILE};
use super::{Lsn, RecoveryMode, SyncPolicy, WalOptions};

/// Commit units a `Batch` leader waits for before syncing (see `gather`).
const GATHER_TARGET: usize = 2;

/// A write-ahead log open for appending. `Send + Sync`: share it between
/// threads with an `Arc` (or by reference) and append concurrently.
///
/// Holding a `Wal` holds an exclusive lock on its directory.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    io: Io,
    /// Gaps a repair left between segments (`(first missing, next held)`).
    gaps: Vec<(Lsn, Lsn)>,
    state: Mutex<State>,
    /// Signalled when I/O finishes, durability advances or the log is poisoned.
    done: Condvar,
    /// Signalled when a gathering leader's group is complete.
    appended: Condvar,
    /// Durability waiters, by parity of their group's generation: a finished
    /// sync wakes its own group and one waiter of the next group (to lead
    /// it), not everyone.
    groups: [Condvar; 2],
    /// Held by `truncate_before`: two truncations at once could unlink
    /// segments out of order.
    truncating: Mutex<()>,
    /// Where some records are, so that reading from the middle of a
    /// segment starts near there (see [`Positions`]).
    pub(crate) positions: Arc<Mutex<Positions>>,
    _lock: File,
}

struct Active {
    file: Arc<File>,
    path: PathBuf,
    salt: u32,
    /// Bytes of the segment on disk (written to the OS).
    written_end: u64,
    /// `written_end` plus buffered bytes.
    end: u64,
}

struct Prealloc {
    handle: JoinHandle<Result<File>>,
    cancel: Arc<AtomicBool>,
}

struct State {
    next_lsn: Lsn,
    written_lsn: Lsn,
    durable_lsn: Lsn,
    buf: Vec<u8>,
    buf_units: usize,
    spare: Vec<u8>,
    /// A leader is writing or syncing (or rotating segments).
    io_busy: bool,
    /// Appends must wait: the active segment is being replaced.
    rotating: bool,
    /// Commit units (appends or batches) in the last synced group: the
    /// `Batch` gathering target.
    last_group: usize,
    /// A leader is waiting for more records to join its group.
    gathering: bool,
    /// Generation of the buffer being filled; +1 each time a leader takes it.
    gen: u64,
    /// Generation and last LSN of the group a leader is writing.
    inflight: Option<(u64, Lsn)>,
    poisoned: Option<String>,
    /// `(first_lsn, path)` of every segment, the active one last.
    segments: Vec<(Lsn, PathBuf)>,
    active: Active,
    prealloc: Option<Prealloc>,
}

impl State {
    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(msg) => Err(Error::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering it first.
    ///
    /// Fails with [`Error::Locked`] if another `Wal` holds the directory and
    /// with [`Error::Corrupt`] if a record outside the torn tail is damaged
    /// (unless [`RecoveryMode::Repair`] is set).
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal> {
        let repair = (opts.recovery == RecoveryMode::Repair).then_some(RepairRequest {
            covered: 0,
            allow_loss: true,
            only_if_damaged: true,
        });
        Ok(Wal::open_inner(dir.as_ref(), opts, repair)?.0)
    }

    /// Opens the log, repairing it first as `repair` allows (even if it
    /// looks clean, so the plan is returned); see [`repair`].
    pub(super) fn open_inner(
        dir: &Path,
        opts: WalOptions,
        repair: Option<RepairRequest>,
    ) -> Result<(Wal, Option<RepairPlan>)> {
        let dir = dir.to_path_buf();
        let span = info_span!("wal_open", dir = %dir.display());
        let _g = span.enter();
        opts.validate()?;
        super::durable::Files::new(opts.faults.clone()).create_dir_all(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io("opening", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("locking", &lock_path, e)),
        }
        let io = Io { faults: opts.faults.clone() };
        for tmp in [PREALLOC_FILE, NEW_SEGMENT_FILE] {
            let p = dir.join(tmp);
            if p.exists() {
                io.remove(&p)?;
            }
        }
        let started = Instant::now();
        let mut scan = scan_dir(&dir)?;
        let mut applied = None;
        if let Some(req) = repair.filter(|r| !r.only_if_damaged || scan.damage.is_some()) {
            // Planned under the lock, so nothing changes between plan and act.
            let plan = plan_repair(&dir, req.covered)?;
            if !plan.is_noop() {
                if !req.allow_loss && plan.loses_records() {
                    return Err(Error::InvalidArgument(format!(
                        "repair would discard intact records no checkpoint covers ({}); nothing was changed",
                        plan.describe_lost()
                    )));
                }
                warn!(plan = %plan, "repairing the log");
                apply_repair(&dir, &opts, &io, &plan)?;
                scan = scan_dir(&dir)?;
            }
            applied = Some(plan);
        }
        if let Some(damage) = scan.damage.take() {
            return Err(damage.to_error(&scan.segments, &scan.paths));
        }
        let gaps = std::mem::take(&mut scan.gaps);
        let (segments, active, next_lsn) = recover(&dir, &opts, &io, scan)?;
        info!(
            segments = segments.len(),
            last_lsn = next_lsn - 1,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log recovered"
        );
        let state = State {
            next_lsn,
            written_lsn: next_lsn - 1,
            durable_lsn: next_lsn - 1,
            buf: Vec::new(),
            buf_units: 0,
            spare: Vec::new(),
            io_busy: false,
            rotating: false,
            last_group: 1,
            gathering: false,
            gen: 0,
            inflight: None,
            poisoned: None,
            segments,
            active,
            prealloc: None,
        };
        let wal = Wal {
            dir,
            opts,
            io,
            gaps,
            state: Mutex::new(state),
            done: Condvar::new(),
            appended: Condvar::new(),
            groups: [Condvar::new(), Condvar::new()],
            truncating: Mutex::new(()),
            positions: Arc::default(),
            _lock: lock,
        };
        Ok((wal, applied))
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (no I/O is
        // done under it), so a poisoned mutex is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, cv: &Condvar, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record and returns its LSN once it is durable under the
    /// sync policy.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn> {
        let range = self.append_batch_nowait(std::slice::from_ref(&payload))?;
        self.commit(range.end - 1)?;
        Ok(range.start)
    }

    /// Appends records atomically: after a crash either all of them or none
    /// are recovered. Returns their LSNs once durable under the policy.
    /// An empty batch returns an empty range and writes nothing.
    pub fn append_batch<I, B>(&self, records: I) -> Result<Range<Lsn>>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let records: Vec<B> = records.into_iter().collect();
        let range = self.append_batch_nowait(&records)?;
        if !range.is_empty() {
            self.commit(range.end - 1)?;
        }
        Ok(range)
    }

    /// Appends one record without waiting for it to be written or synced.
    /// Pair with [`Wal::wait_durable`] to pipeline: keep producing while
    /// earlier records wait for their shared `fdatasync`.
    ///
    /// The LSN returned is not an acknowledgement: the record is durable
    /// only once [`Wal::wait_durable`], [`Wal::sync`] or [`Wal::close`]
    /// returns `Ok`. Under a durable policy, dropping the `Wal` syncs records
    /// nobody waited for (logging a warning if that fails); under
    /// [`SyncPolicy::None`] it only hands them to the OS.
    pub fn append_nowait(&self, payload: &[u8]) -> Result<Lsn> {
        Ok(self.append_batch_nowait(std::slice::from_ref(&payload))?.start)
    }

    /// Waits until every record up to `lsn` is durable (`fdatasync`ed),
    /// syncing if needed, whatever the policy.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.persist(lsn, true)
    }

    /// Hands buffered records to the OS (a no-op unless the policy is
    /// `None`; durable policies sync as they write).
    pub fn flush(&self) -> Result<()> {
        let last = self.lock().next_lsn - 1;
        self.persist(last, self.opts.sync.is_durable())
    }

    /// Makes every appended record durable. Returns the last LSN.
    pub fn sync(&self) -> Result<Lsn> {
        let last = self.lock().next_lsn - 1;
        self.persist(last, true)?;
        Ok(last)
    }

    /// LSN of the last appended record (0 if none ever was). After a repair
    /// that discarded records, it is the highest LSN the repair skipped past
    /// until something is appended.
    pub fn last_lsn(&self) -> Lsn {
        self.lock().next_lsn - 1
    }

    /// First LSN still held (after [`Wal::truncate_before`]); equals
    /// `last_lsn() + 1` when the log is empty.
    pub fn first_lsn(&self) -> Lsn {
        let st = self.lock();
        st.segments.first().map_or(st.next_lsn, |s| s.0)
    }

    /// LSN up to which records are durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.lock().durable_lsn
    }

    /// Iterates over records from `from` on, up to the last record that is
    /// durable (or, under `SyncPolicy::None`, written) when this is called.
    /// `from` below [`Wal::first_lsn`] is [`Error::Truncated`].
    pub fn iter_from(&self, from: Lsn) -> Result<WalIter> {
        if !self.opts.sync.is_durable() {
            self.flush()?;
        }
        let st = self.lock();
        let limit = if self.opts.sync.is_durable() { st.durable_lsn } else { st.written_lsn };
        Ok(WalIter::new(st.segments.clone(), from, limit)?
            .with_gaps(self.gaps.clone())
            .with_positions(self.positions.clone()))
    }

    /// Deletes whole segments whose records all have LSNs below `lsn` (for
    /// example once a checkpoint covers them). The active segment is never
    /// deleted, so LSNs keep counting. Returns the number of segments removed.
    ///
    /// Crash safety: segments are unlinked oldest first and each unlink is
    /// made durable (directory `fsync`) before the next one is issued, so at
    /// any power loss every older unlink is durable and only the latest may
    /// be undone: the segments left on disk are always a contiguous suffix
    /// of the log. (With one directory sync after all the unlinks, a power
    /// loss may keep any subset of them, bringing back an old segment whose
    /// successor stays deleted: a gap that recovery rightly refuses.)
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        let span = info_span!("wal_truncate", before = lsn);
        let _g = span.enter();
        let _one_at_a_time = self.truncating.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<(Lsn, PathBuf)> = {
            let mut st = self.lock();
            st.check_poisoned()?;
            // Segment i may go if segment i+1 starts at or before `lsn`.
            let removable = st.segments.windows(2).take_while(|w| w[1].0 <= lsn).count();
            // Detached now, so the directory syncs below run without the
            // state lock; appends only ever add segments at the other end.
            st.segments.drain(..removable).collect()
        };
        for (i, (_, path)) in doomed.iter().enumerate() {
            let result = match self.io.remove(path) {
                Err(e) => Err((i, e)),
                Ok(()) => self.io.sync_dir(&self.dir).map_err(|e| (i + 1, e)),
            };
            if let Err((kept, e)) = result {
                // Segments not unlinked are still part of the log.
                let mut st = self.lock();
                st.segments.splice(0..0, doomed[kept..].iter().cloned());
                return Err(e);
            }
        }
        if let Some(first) = self.lock().segments.first().map(|s| s.0) {
            self.positions.lock().unwrap_or_else(|p| p.into_inner()).forget_before(first);
        }
        if !doomed.is_empty() {
            info!(removed = doomed.len(), "segments truncated");
        }
        Ok(doomed.len())
    }

    /// The first LSN of each segment (tests).
    #[cfg(test)]
    pub(crate) fn segments_for_test(&self) -> Vec<Lsn> {
        self.lock().segments.iter().map(|s| s.0).collect()
    }

    /// Makes everything durable and closes the log, releasing the lock.
    pub fn close(self) -> Result<()> {
        self.sync()?;
        Ok(())
    }

    fn commit(&self, lsn: Lsn) -> Result<()> {
        if self.opts.sync.is_durable() {
            return self.persist(lsn, true);
        }
        let over = self.lock().buf.len() >= self.opts.buffer_size;
        if over {
            self.persist(lsn, false)?;
        }
        Ok(())
    }

    fn append_batch_nowait<B: AsRef<[u8]>>(&self, records: &[B]) -> Result<Range<Lsn>> {
        let mut total = 0u64;
        for r in records {
            let len = r.as_ref().len();
            if len > self.opts.max_record_size as usize {
                return Err(Error::RecordTooLarge { len, limit: self.opts.max_record_size });
            }
            total += (FRAME_HEADER_LEN + len) as u64;
        }
        let mut st = self.lock();
        if records.is_empty() {
            return Ok(st.next_lsn..st.next_lsn);
        }
        if st.next_lsn.saturating_add(records.len() as u64) > format::MAX_LSN + 1 {
            return Err(Error::InvalidArgument(format!("LSN space exhausted (the limit is {})", format::MAX_LSN)));
        }
        loop {
            st.check_poisoned()?;
            if st.rotating {
                st = self.wait(&self.done, st);
                continue;
            }
            if self.needs_rotation(&st, total) {
                st = self.rotate(st, total)?;
                continue;
            }
            break;
        }
        let first = st.next_lsn;
        // Under durable policies every write of a buffer happens after the
        // previous one was synced, so the first frame of a buffer can vouch
        // for everything before it (see `FLAG_SYNCED_BEFORE`).
        let mut flags = if self.opts.sync.is_durable() && st.buf.is_empty() { FLAG_SYNCED_BEFORE } else { 0 };
        let salt = st.active.salt;
        if st.buf.is_empty() && st.buf.capacity() == 0 {
            st.buf = std::mem::take(&mut st.spare);
        }
        let n = records.len();
        for (i, r) in records.iter().enumerate() {
            let kind = if i + 1 == n { KIND_LAST } else { KIND_MORE };
            format::encode_frame(&mut st.buf, salt, first + i as u64, kind, flags, r.as_ref());
            flags = 0;
        }
        st.next_lsn += n as u64;
        st.buf_units += 1;
        st.active.end += total;
        if st.gathering && st.buf_units >= GATHER_TARGET {
            self.appended.notify_one();
        }
        if self.opts.zero_fill() && st.prealloc.is_none() && st.active.end > self.opts.segment_size / 2 {
            self.start_prealloc(&mut st);
        }
        Ok(first..first + n as u64)
    }

    fn start_prealloc(&self, st: &mut State) {
        let io = self.io.clone();
        let path = self.dir.join(PREALLOC_FILE);
        let len = self.opts.segment_size;
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let spawned =
            std::thread::Builder::new().name("walrus-prealloc".into()).spawn(move || io.preallocate(&path, len, &c));
        match spawned {
            Ok(handle) => st.prealloc = Some(Prealloc { handle, cancel }),
            Err(e) => {
                warn!(error = %e, "could not start segment preallocation; the next segment is prepared on rotation")
            }
        }
    }

    /// Makes records up to `target` written (and synced if `durable`),
    /// leading a group or waiting for the current leader.
    fn persist(&self, target: Lsn, durable: bool) -> Result<()> {
        let mut st = self.lock();
        loop {
            let done = if durable { st.durable_lsn >= target } else { st.written_lsn >= target };
            if done {
                return Ok(());
            }
            st.check_poisoned()?;
            if target >= st.next_lsn {
                return Err(Error::InvalidArgument(format!(
                    "LSN {target} has not been appended (last is {})",
                    st.next_lsn - 1
                )));
            }
            if st.io_busy || st.rotating {
                let cv = match st.inflight {
                    _ if !durable => &self.done,
                    Some((g, upto)) if target <= upto => &self.groups[(g % 2) as usize],
                    _ => &self.groups[(st.gen % 2) as usize],
                };
                st = self.wait(cv, st);
                continue;
            }
            st.io_busy = true;
            if let SyncPolicy::Batch { max_delay } = self.opts.sync {
                st = self.gather(st, max_delay);
            }
            // Under durable policies every write is followed by a sync.
            let sync = durable || self.opts.sync.is_durable();
            let spare = std::mem::take(&mut st.spare);
            let chunk = std::mem::replace(&mut st.buf, spare);
            let upto = st.next_lsn - 1;
            let units = std::mem::take(&mut st.buf_units);
            let gen = st.gen;
            st.inflight = Some((gen, upto));
            st.gen += 1;
            let (file, path, offset) = (st.active.file.clone(), st.active.path.clone(), st.active.written_end);
            drop(st);

            let mut result = Ok(());
            if !chunk.is_empty() {
                result = self.io.write_at(&file, &path, &chunk, offset);
            }
            if result.is_ok() && sync {
                result = self.io.sync_data(&file, &path);
            }

            st = self.lock();
            st.io_busy = false;
            st.inflight = None;
            if let Err(e) = result {
                return Err(self.poison(st, e));
            }
            st.active.written_end += chunk.len() as u64;
            st.written_lsn = upto;
            if sync {
                st.durable_lsn = upto;
                if units > 0 {
                    st.last_group = units;
                }
            }
            let mut chunk = chunk;
            chunk.clear();
            if chunk.capacity() <= 4 * self.opts.buffer_size.max(1 << 20) {
                st.spare = chunk;
            }
            self.groups[(gen % 2) as usize].notify_all();
            self.groups[((gen + 1) % 2) as usize].notify_one();
            self.done.notify_all();
        }
    }

    /// Wakes every waiter of every kind (state changed in a way all must see).
    fn wake_all(&self) {
        self.done.notify_all();
        for g in &self.groups {
            g.notify_all();
        }
    }

    /// As the elected leader about to sync a lone record while the previous
    /// group had company, waits (at most `max_delay`) for one more appender.
    /// Waiting longer does not pay: writers refill the buffer while a sync
    /// runs, so groups form by themselves under load.
    fn gather<'a>(&self, mut st: MutexGuard<'a, State>, max_delay: std::time::Duration) -> MutexGuard<'a, State> {
        if max_delay.is_zero() || st.last_group <= 1 || st.buf_units >= GATHER_TARGET {
            return st;
        }
        let deadline = Instant::now() + max_delay;
        st.gathering = true;
        while st.buf_units < GATHER_TARGET && st.poisoned.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.appended.wait_timeout(st, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        st.gathering = false;
        st
    }

    fn poison(&self, mut st: MutexGuard<'_, State>, e: Error) -> Error {
        warn!(error = %e, "log poisoned");
        st.poisoned = Some(e.to_string());
        self.wake_all();
        e
    }

    /// A commit unit of `total` bytes does not fit in the active segment,
    /// which already holds records.
    fn needs_rotation(&self, st: &State, total: u64) -> bool {
        st.active.end + total > self.opts.segment_size && st.active.end > SEGMENT_HEADER_LEN as u64
    }

    /// Seals the active segment (writing and syncing what is buffered) and
    /// installs a new one starting at the next LSN.
    fn rotate<'a>(&'a self, mut st: MutexGuard<'a, State>, total: u64) -> Result<MutexGuard<'a, State>> {
        while st.io_busy || st.rotating {
            st = self.wait(&self.done, st);
            st.check_poisoned()?;
        }
        if !self.needs_rotation(&st, total) {
            return Ok(st); // another appender rotated meanwhile
        }
        st.io_busy = true;
        st.rotating = true;
        let chunk = std::mem::take(&mut st.buf);
        st.buf_units = 0;
        let upto = st.next_lsn - 1;
        let (file, path, offset) = (st.active.file.clone(), st.active.path.clone(), st.active.written_end);
        let header = SegmentHeader { salt: segment::random_salt(), first_lsn: st.next_lsn };
        let prealloc = st.prealloc.take();
        drop(st);

        let span = info_span!("wal_rotate", first_lsn = header.first_lsn);
        let _g = span.enter();
        let mut sealed = false;
        let result = (|| {
            if !chunk.is_empty() {
                self.io.write_at(&file, &path, &chunk, offset)?;
            }
            self.io.sync_data(&file, &path)?;
            sealed = true;
            let prepared = self.prepared_segment(prealloc)?;
            self.io.install_segment(&self.dir, prepared, header)
        })();

        let mut st = self.lock();
        st.io_busy = false;
        st.rotating = false;
        match result {
            Err(e) => {
                if sealed {
                    // The buffered records did reach the disk: acknowledge them.
                    st.active.written_end += chunk.len() as u64;
                    st.written_lsn = upto;
                    st.durable_lsn = upto;
                }
                let _ = std::fs::remove_file(self.dir.join(PREALLOC_FILE));
                Err(self.poison(st, e))
            }
            Ok((file, path)) => {
                st.written_lsn = upto;
                st.durable_lsn = upto;
                st.segments.push((header.first_lsn, path.clone()));
                st.active = Active {
                    file: Arc::new(file),
                    path,
                    salt: header.salt,
                    written_end: SEGMENT_HEADER_LEN as u64,
                    end: SEGMENT_HEADER_LEN as u64,
                };
                self.wake_all();
                Ok(st)
            }
        }
    }

    /// A zero-filled file from the background preallocation if it finished,
    /// else a fresh one.
    fn prepared_segment(&self, prealloc: Option<Prealloc>) -> Result<(File, PathBuf)> {
        if let Some(p) = prealloc {
            match p.handle.join() {
                Ok(Ok(file)) => return Ok((file, self.dir.join(PREALLOC_FILE))),
                Ok(Err(e)) if e.is_no_space() => {
                    let _ = std::fs::remove_file(self.dir.join(PREALLOC_FILE));
                    return Err(e);
                }
                Ok(Err(e)) => warn!(error = %e, "segment preallocation failed; creating the segment directly"),
                Err(_) => warn!("segment preallocation thread panicked; creating the segment directly"),
            }
        }
        new_segment_file(&self.dir, &self.io, &self.opts)
    }
}

/// Dropping a `Wal` hands buffered records to the OS under
/// [`SyncPolicy::None`], and under a durable policy makes every appended
/// record durable, including ones from [`Wal::append_nowait`] nobody waited
/// for. A failure there cannot be returned: it is logged as a warning (call
/// [`Wal::close`] to get it as an error).
impl Drop for Wal {
    fn drop(&mut self) {
        let (pending, poisoned) = {
            let st = self.lock();
            (st.next_lsn - 1 > st.durable_lsn, st.poisoned.is_some())
        };
        if !self.opts.sync.is_durable() {
            if let Err(e) = self.flush() {
                warn!(error = %e, "flushing the log on drop failed");
            }
        } else if pending && !poisoned {
            // Records from `append_nowait` that were never waited for: the
            // policy promises durability, so keep the promise on the way out.
            if let Err(e) = self.sync() {
                warn!(error = %e, "syncing records appended without waiting failed on drop; they may be lost");
            }
        } else if pending {
            warn!("the log is poisoned; records appended without waiting were not made durable");
        }
        let prealloc = self.lock().prealloc.take();
        if let Some(p) = prealloc {
            p.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = p.handle.join();
            let _ = std::fs::remove_file(self.dir.join(PREALLOC_FILE));
        }
    }
}

/// Segments, the active segment and the next LSN of a recovered log.
type Recovered = (Vec<(Lsn, PathBuf)>, Active, Lsn);

/// Discards the torn tail of the last segment of a scan without damage, or
/// creates the first segment of an empty log.
fn recover(dir: &Path, opts: &WalOptions, io: &Io, scan: Scan) -> Result<Recovered> {
    let Some(last) = scan.segments.last().cloned() else {
        // Empty log: the first segment starts at LSN 1 (a repair never
        // leaves a log without segments).
        let header = SegmentHeader { salt: segment::random_salt(), first_lsn: 1 };
        let prepared = new_segment_file(dir, io, opts)?;
        let (file, path) = io.install_segment(dir, prepared, header)?;
        let hl = SEGMENT_HEADER_LEN as u64;
        let active = Active { file: Arc::new(file), path: path.clone(), salt: header.salt, written_end: hl, end: hl };
        return Ok((vec![(1, path)], active, 1));
    };
    let file =
        OpenOptions::new().read(true).write(true).open(&last.path).map_err(|e| Error::io("opening", &last.path, e))?;
    if last.dirty_end > last.end {
        warn!(segment = %last.path.display(), offset = last.end, bytes = last.dirty_end - last.end, "discarding torn tail");
        io.zero_range(&file, &last.path, last.end, last.dirty_end)?;
    }
    // Records recovered from the page cache may never have been synced; the
    // next write vouches for them with FLAG_SYNCED_BEFORE, so sync them now.
    io.sync_data(&file, &last.path)?;
    let segments = scan.segments.iter().map(|s| (s.header.first_lsn, s.path.clone())).collect();
    let active = Active {
        file: Arc::new(file),
        path: last.path.clone(),
        salt: last.header.salt,
        written_end: last.end,
        end: last.end,
    };
    Ok((segments, active, last.last_lsn + 1))
}
