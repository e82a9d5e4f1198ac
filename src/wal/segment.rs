//! Segment files: names, creation (with optional zero preallocation),
//! positioned I/O through the fault seam, and a buffered frame reader.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::error::{Error, Result};
use super::fault::{FaultInjector, FileEvent, FileOp};
use super::format::{
    self, Decoded, Frame, FrameError, SegmentHeader, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN, SEGMENT_HEADER_LEN,
};
use super::WalOptions;

/// Extension of segment files; the stem is the first LSN, zero-padded to 20 digits.
pub const SEGMENT_EXT: &str = "wal";
/// Name of the lock file inside a log directory.
pub const LOCK_FILE: &str = "LOCK";
/// Zero-filled file being prepared to become the next segment.
pub const PREALLOC_FILE: &str = "next-segment.tmp";
/// A new segment whose header is being written.
pub const NEW_SEGMENT_FILE: &str = "new-segment.tmp";

const READ_CHUNK: usize = 1 << 20;
static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// File name of the segment whose first LSN is `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.{SEGMENT_EXT}")
}

/// Parses a segment file name back into its first LSN.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|&n| n > 0)
}

/// Segment files of `dir`, sorted by first LSN.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        if let Some(lsn) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((lsn, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(lsn, _)| *lsn);
    Ok(out)
}

/// A random salt for a new segment (from the std hasher's random keys).
pub fn random_salt() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    let v = h.finish();
    (v as u32) ^ ((v >> 32) as u32)
}

/// File operations routed through the optional fault injector: each is
/// checked before and observed after it is performed.
#[derive(Clone, Default)]
pub struct Io {
    pub faults: Option<Arc<dyn FaultInjector>>,
}

impl Io {
    fn check(&self, op: FileOp, path: &Path, len: usize) -> std::result::Result<(), (usize, io::Error)> {
        match &self.faults {
            Some(f) => f.check(op, path, len).map_err(|i| (i.written.min(len), i.error)),
            None => Ok(()),
        }
    }

    /// Asks the injector about an operation this module does not perform
    /// itself (linking, creating a directory); report it with
    /// [`Io::observe`] once it succeeded.
    pub fn check_op(&self, op: FileOp, path: &Path) -> io::Result<()> {
        self.check(op, path, 0).map_err(|(_, e)| e)
    }

    /// Tells the injector an operation was performed.
    pub fn observe(&self, event: FileEvent<'_>) {
        if let Some(f) = &self.faults {
            f.observe(&event);
        }
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
        if let Err((written, e)) = self.check(FileOp::Write, path, buf.len()) {
            // Simulate a short write before the failure.
            if written > 0 && file.write_all_at(&buf[..written], offset).is_ok() {
                self.observe(FileEvent::Write { path, offset, data: &buf[..written] });
            }
            return Err(Error::io("writing", path, e));
        }
        file.write_all_at(buf, offset).map_err(|e| Error::io("writing", path, e))?;
        self.observe(FileEvent::Write { path, offset, data: buf });
        Ok(())
    }

    /// `fdatasync`.
    pub fn sync_data(&self, file: &File, path: &Path) -> Result<()> {
        self.check(FileOp::SyncData, path, 0).map_err(|(_, e)| Error::io("syncing", path, e))?;
        file.sync_data().map_err(|e| Error::io("syncing", path, e))?;
        self.observe(FileEvent::SyncData { path });
        Ok(())
    }

    /// `fsync` of a directory, making renames, creations and deletions durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.check(FileOp::SyncDir, dir, 0).map_err(|(_, e)| Error::io("syncing directory", dir, e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing directory", dir, e))?;
        self.observe(FileEvent::SyncDir { path: dir });
        Ok(())
    }

    /// Creates (or truncates) a file for reading and writing.
    pub fn create(&self, path: &Path) -> Result<File> {
        self.create_with(path, false)
    }

    /// Creates (or truncates) a file for reading and writing; `private`
    /// makes a new file owner-only.
    pub fn create_with(&self, path: &Path, private: bool) -> Result<File> {
        self.check(FileOp::Create, path, 0).map_err(|(_, e)| Error::io("creating", path, e))?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let file = opts.open(path).map_err(|e| Error::io("creating", path, e))?;
        self.observe(FileEvent::Create { path });
        Ok(file)
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(FileOp::Rename, to, 0).map_err(|(_, e)| Error::io("renaming to", to, e))?;
        std::fs::rename(from, to).map_err(|e| Error::io("renaming to", to, e))?;
        self.observe(FileEvent::Rename { from, to });
        Ok(())
    }

    pub fn remove(&self, path: &Path) -> Result<()> {
        self.check(FileOp::Remove, path, 0).map_err(|(_, e)| Error::io("removing", path, e))?;
        std::fs::remove_file(path).map_err(|e| Error::io("removing", path, e))?;
        self.observe(FileEvent::Remove { path });
        Ok(())
    }

    /// Overwrites `[from, to)` with zeros (no new space is needed for
    /// blocks that already exist).
    pub fn zero_range(&self, file: &File, path: &Path, from: u64, to: u64) -> Result<()> {
        let mut off = from;
        while off < to {
            let n = ((to - off) as usize).min(ZEROS.len());
            self.write_at(file, path, &ZEROS[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    /// Creates `path` filled with `len` zero bytes and makes it durable, so
    /// later record writes into it need no block allocation or size update
    /// (and `fdatasync` flushes data only). Stops early if `cancel` is set.
    pub fn preallocate(&self, path: &Path, len: u64, cancel: &AtomicBool) -> Result<File> {
        let file = self.create(path)?;
        let mut off = 0;
        while off < len {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::InvalidArgument("preallocation cancelled".into()));
            }
            let n = ((len - off) as usize).min(ZEROS.len());
            self.write_at(&file, path, &ZEROS[..n], off)?;
            off += n as u64;
        }
        self.sync_data(&file, path)?;
        Ok(file)
    }

    /// Turns a prepared (zero-filled or empty) file into a segment: header,
    /// fdatasync, rename into place, directory fsync. A crash at any point
    /// leaves either no segment or a complete, empty one.
    pub fn install_segment(
        &self,
        dir: &Path,
        prepared: (File, PathBuf),
        header: SegmentHeader,
    ) -> Result<(File, PathBuf)> {
        let (file, tmp) = prepared;
        self.write_at(&file, &tmp, &header.encode(), 0)?;
        self.sync_data(&file, &tmp)?;
        let path = dir.join(segment_name(header.first_lsn));
        self.rename(&tmp, &path)?;
        self.sync_dir(dir)?;
        Ok((file, path))
    }
}

/// Where a [`SegmentReader`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// End of file exactly at a frame boundary.
    Eof,
    /// The file ends inside a frame.
    Incomplete,
    /// Bytes that are not a valid frame.
    Invalid(FrameError),
}

/// One step of a [`SegmentReader`].
pub enum Step<'a> {
    /// A valid frame starting at `offset`.
    Frame { offset: u64, frame: Frame<'a> },
    /// No valid frame at `offset`.
    End { offset: u64, stop: Stop },
}

/// Reads frames sequentially from a segment file through a bounded buffer.
pub struct SegmentReader {
    file: File,
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub file_len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
    /// Index into `buf` of the next frame.
    pos: usize,
}

impl SegmentReader {
    /// Opens a segment and validates its header. A bad header is reported as
    /// [`Error::Corrupt`] at offset 0. Lengths are checked against the format's
    /// limit ([`format::MAX_PAYLOAD_LEN`]), not a writer's configured one, so a
    /// record written under a larger `max_record_size` is never mistaken for
    /// damage; buffers stay bounded by the file's size.
    pub fn open(path: &Path) -> Result<SegmentReader> {
        let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io("reading metadata of", path, e))?.len();
        let mut hdr = [0u8; SEGMENT_HEADER_LEN];
        let n = read_full(&mut file, &mut hdr).map_err(|e| Error::io("reading", path, e))?;
        let header = SegmentHeader::decode(&hdr[..n]).map_err(|e| Error::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            reason: e.to_string(),
        })?;
        Ok(SegmentReader {
            file,
            path: path.to_path_buf(),
            header,
            file_len,
            buf: Vec::new(),
            buf_off: SEGMENT_HEADER_LEN as u64,
            pos: 0,
        })
    }

    /// Continues reading at file offset `offset` (a frame's start, as
    /// [`offset`](Self::offset) once gave it).
    pub fn seek_to(&mut self, offset: u64) {
        self.buf.clear();
        self.buf_off = offset.max(SEGMENT_HEADER_LEN as u64);
        self.pos = 0;
    }

    /// File offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.buf_off + self.pos as u64
    }

    /// Ensures at least `want` bytes are buffered from the current position,
    /// unless the file ends first.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.buf.len() - self.pos >= want {
            return Ok(());
        }
        self.buf.drain(..self.pos);
        self.buf_off += self.pos as u64;
        self.pos = 0;
        let file_end = self.file_len.saturating_sub(self.buf_off + self.buf.len() as u64);
        let target = want.max(READ_CHUNK).min(self.buf.len() + file_end as usize);
        if target <= self.buf.len() {
            return Ok(());
        }
        let start = self.buf.len();
        self.buf.resize(target, 0);
        self.file.seek(SeekFrom::Start(self.buf_off + start as u64))?;
        let n = read_full(&mut self.file, &mut self.buf[start..])?;
        self.buf.truncate(start + n);
        Ok(())
    }

    /// Decodes the next frame, or says why there is none.
    pub fn next_step(&mut self) -> Result<Step<'_>> {
        self.fill(FRAME_HEADER_LEN).map_err(|e| Error::io("reading", &self.path, e))?;
        let offset = self.offset();
        if self.pos == self.buf.len() {
            return Ok(Step::End { offset, stop: Stop::Eof });
        }
        // Header fields first (cheap), so the checksum is computed only once.
        if self.buf.len() - self.pos >= FRAME_HEADER_LEN {
            match format::check_header(&self.buf[self.pos..], MAX_PAYLOAD_LEN) {
                Ok((_, len)) => {
                    let needed = FRAME_HEADER_LEN + len as usize;
                    self.fill(needed).map_err(|e| Error::io("reading", &self.path, e))?;
                }
                Err(e) => return Ok(Step::End { offset, stop: Stop::Invalid(e) }),
            }
        }
        let salt = self.header.salt;
        match format::decode_frame(&self.buf[self.pos..], salt, MAX_PAYLOAD_LEN) {
            Decoded::Frame(frame) => {
                self.pos += frame.encoded_len();
                Ok(Step::Frame { offset, frame })
            }
            Decoded::Incomplete { .. } => Ok(Step::End { offset, stop: Stop::Incomplete }),
            Decoded::Invalid(e) => Ok(Step::End { offset, stop: Stop::Invalid(e) }),
        }
    }

    /// Offset just past the last non-zero byte at or after `from`, or `from`
    /// if every byte up to the end of the file is zero.
    pub fn dirty_end(&mut self, from: u64) -> Result<u64> {
        let mut end = self.file_len;
        let mut chunk = vec![0u8; READ_CHUNK.min(end.saturating_sub(from) as usize)];
        while end > from {
            let start = end.saturating_sub(chunk.len() as u64).max(from);
            let n = (end - start) as usize;
            self.file.read_exact_at(&mut chunk[..n], start).map_err(|e| Error::io("reading", &self.path, e))?;
            if let Some(i) = chunk[..n].iter().rposition(|&b| b != 0) {
                return Ok(start + i as u64 + 1);
            }
            end = start;
        }
        Ok(from)
    }

    /// Looks in `[from, to)` for a valid frame of this segment with an LSN of
    /// at least `min_lsn` carrying [`format::FLAG_SYNCED_BEFORE`]: proof that
    /// the bytes before it had been durable. Returns its offset.
    pub fn find_synced_frame(&mut self, from: u64, to: u64, min_lsn: u64) -> Result<Option<u64>> {
        let mut window = vec![0u8; READ_CHUNK + FRAME_HEADER_LEN];
        let mut start = from;
        while start + FRAME_HEADER_LEN as u64 <= to {
            let n = ((to - start) as usize).min(window.len());
            self.file.read_exact_at(&mut window[..n], start).map_err(|e| Error::io("reading", &self.path, e))?;
            let candidates = n.saturating_sub(FRAME_HEADER_LEN - 1).min(READ_CHUNK);
            for i in 0..candidates {
                let hdr = &window[i..i + FRAME_HEADER_LEN];
                let Ok((lsn, len)) = format::check_header(hdr, MAX_PAYLOAD_LEN) else { continue };
                if lsn < min_lsn || hdr[17] & format::FLAG_SYNCED_BEFORE == 0 {
                    continue;
                }
                let at = start + i as u64;
                let total = FRAME_HEADER_LEN as u64 + len as u64;
                if at + total > self.file_len {
                    continue;
                }
                let mut frame = vec![0u8; total as usize];
                self.file.read_exact_at(&mut frame, at).map_err(|e| Error::io("reading", &self.path, e))?;
                if matches!(format::decode_frame(&frame, self.header.salt, MAX_PAYLOAD_LEN), Decoded::Frame(_)) {
                    return Ok(Some(at));
                }
            }
            start += candidates as u64;
            if candidates == 0 {
                break;
            }
        }
        Ok(None)
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Creates the file a new segment is prepared in (zero-filled to its full
/// size when the options ask for it).
pub(super) fn new_segment_file(dir: &Path, io: &Io, opts: &WalOptions) -> Result<(File, PathBuf)> {
    let path = dir.join(NEW_SEGMENT_FILE);
    let file = if opts.zero_fill() {
        match io.preallocate(&path, opts.segment_size, &AtomicBool::new(false)) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
    } else {
        io.create(&path)?
    };
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1), "00000000000000000001.wal");
        assert_eq!(parse_segment_name(&segment_name(987654321)), Some(987654321));
        assert_eq!(parse_segment_name("00000000000000000000.wal"), None);
        assert_eq!(parse_segment_name("1.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000a.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000001.tmp"), None);
    }
}
