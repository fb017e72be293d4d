//! [`FaultyFs`]: the real file system with faults injected on demand. Test support only:
//! compiled with the `fault-injection` feature, which only dev-dependencies enable, so
//! no release binary carries it.
//!
//! What it can do, each switched on and off at run time through any clone of the
//! [`FaultyFs`] (clones share one state; put one clone in [`crate::StorageOptions::fs`]
//! and keep another to steer it):
//!
//! - **failed fsync** ([`FaultyFs::fail_fsyncs`], [`FaultyFs::fail_all_fsyncs`]): file
//!   and directory fsyncs return `EIO`. A failed file fsync also drops what was written
//!   through that handle since its last good fsync (the file is cut back), as the kernel
//!   may drop dirty pages whose write-back failed: data never made durable is lost.
//!   Zero-filled space ahead of the data stays, zeros again where writes were lost.
//! - **short write** ([`FaultyFs::short_writes`], [`FaultyFs::short_all_writes`]): half
//!   of the buffer lands, then the write fails with `EIO`.
//! - **full disk** ([`FaultyFs::set_space_left`]): after that many more bytes, a write
//!   lands what fits and fails with `ENOSPC` ("No space left on device").
//! - **slow fsync** ([`FaultyFs::set_fsync_delay`]): each file and directory fsync
//!   takes that much longer (it sleeps before syncing), so that writers pile up
//!   behind one, as on a slow disk.
//! - **scope** ([`FaultyFs::only_paths_containing`]): faults hit only paths containing a
//!   string (e.g. `"snap"`), everything else behaves normally.
//! - **counts** ([`FaultyFs::counts`]): calls made and faults injected.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::fs::{FileHandle, FileSystem, RealFs};

/// How many of the next operations of one kind fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Budget {
    #[default]
    None,
    Next(u64),
    All,
}

impl Budget {
    /// Whether this operation fails; consumes one from `Next`.
    fn take(&mut self) -> bool {
        match self {
            Budget::None => false,
            Budget::All => true,
            Budget::Next(n) => {
                *n -= 1;
                if *n == 0 {
                    *self = Budget::None;
                }
                true
            }
        }
    }
}

/// Calls seen and faults injected since the [`FaultyFs`] was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// File fsyncs asked for (failed ones included).
    pub file_syncs: u64,
    /// Directory fsyncs asked for (failed ones included).
    pub dir_syncs: u64,
    /// `write_all` calls (failed ones included).
    pub writes: u64,
    /// Bytes that reached the files.
    pub bytes_written: u64,
    pub failed_fsyncs: u64,
    pub short_writes: u64,
    pub enospc_writes: u64,
}

#[derive(Debug, Default)]
struct State {
    fsync: Budget,
    short: Budget,
    /// Bytes that may still be written; `None` is unlimited.
    space_left: Option<u64>,
    fsync_delay: Duration,
    scope: Option<String>,
    counts: FaultCounts,
}

impl State {
    fn in_scope(&self, path: &Path) -> bool {
        self.scope.as_deref().is_none_or(|s| path.to_string_lossy().contains(s))
    }
}

/// The real file system with injectable faults; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct FaultyFs(Arc<Mutex<State>>);

impl FaultyFs {
    /// A file system with no fault switched on.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Why not unwrap: a test that panicked while holding the lock must not hide
        // its own failure behind a poisoned-mutex panic elsewhere.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` fsyncs (file or directory, in scope) fail with `EIO`.
    pub fn fail_fsyncs(&self, n: u64) {
        self.state().fsync = if n == 0 { Budget::None } else { Budget::Next(n) };
    }

    /// Every fsync in scope fails with `EIO` until [`FaultyFs::heal`].
    pub fn fail_all_fsyncs(&self) {
        self.state().fsync = Budget::All;
    }

    /// The next `n` writes in scope are short: half lands, then `EIO`.
    pub fn short_writes(&self, n: u64) {
        self.state().short = if n == 0 { Budget::None } else { Budget::Next(n) };
    }

    /// Every write in scope is short until [`FaultyFs::heal`].
    pub fn short_all_writes(&self) {
        self.state().short = Budget::All;
    }

    /// Only `bytes` more bytes fit on the "disk" (writes in scope count); the write
    /// that would exceed it lands what fits and fails with `ENOSPC`.
    pub fn set_space_left(&self, bytes: u64) {
        self.state().space_left = Some(bytes);
    }

    /// Each fsync in scope (file or directory) sleeps `delay` first, failed ones too;
    /// `Duration::ZERO` switches it off.
    pub fn set_fsync_delay(&self, delay: Duration) {
        self.state().fsync_delay = delay;
    }

    /// Faults hit only paths containing `part` (`None`: every path).
    pub fn only_paths_containing(&self, part: Option<&str>) {
        self.state().scope = part.map(str::to_string);
    }

    /// Switches every fault off (the counts stay).
    pub fn heal(&self) {
        let mut s = self.state();
        s.fsync = Budget::None;
        s.short = Budget::None;
        s.space_left = None;
        s.fsync_delay = Duration::ZERO;
        s.scope = None;
    }

    pub fn counts(&self) -> FaultCounts {
        self.state().counts
    }

    /// Counts one fsync of `path` (a file's or a directory's) and decides its fate:
    /// whether it fails, after the delay (slept here, outside the lock).
    fn fsync_fails(&self, path: &Path, file: bool) -> bool {
        let (fail, delay) = {
            let mut s = self.state();
            if file {
                s.counts.file_syncs += 1;
            } else {
                s.counts.dir_syncs += 1;
            }
            let in_scope = s.in_scope(path);
            let fail = in_scope && s.fsync.take();
            s.counts.failed_fsyncs += u64::from(fail);
            (fail, if in_scope { s.fsync_delay } else { Duration::ZERO })
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        fail
    }

    fn wrap(&self, path: &Path, inner: Box<dyn FileHandle>, len: u64) -> Box<dyn FileHandle> {
        Box::new(FaultyFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner,
            len,
            synced_len: len,
            zeroed_to: 0,
            synced_zeroed_to: 0,
        })
    }
}

/// `EIO`, as a failing disk reports it ("Input/output error").
fn eio() -> io::Error {
    if cfg!(unix) { io::Error::from_raw_os_error(5) } else { io::Error::other("injected I/O error") }
}

/// `ENOSPC` ("No space left on device").
fn enospc() -> io::Error {
    if cfg!(unix) {
        io::Error::from_raw_os_error(28)
    } else {
        io::Error::new(io::ErrorKind::StorageFull, "No space left on device")
    }
}

struct FaultyFile {
    fs: FaultyFs,
    path: PathBuf,
    inner: Box<dyn FileHandle>,
    /// The end of what was written through this handle (its write position).
    len: u64,
    /// `len` at the last good fsync (or at open).
    synced_len: u64,
    /// The end of the space zero-filled ahead of the writes (0: none).
    zeroed_to: u64,
    /// `zeroed_to` at the last good fsync: the zeros a failed one leaves.
    synced_zeroed_to: u64,
}

/// What a write does after the fault check.
enum WritePlan {
    All,
    /// Land this many bytes, then fail with the error.
    Partial(usize, io::Error),
}

impl FaultyFile {
    fn plan_write(&self, len: usize) -> WritePlan {
        let mut s = self.fs.state();
        s.counts.writes += 1;
        if !s.in_scope(&self.path) {
            return WritePlan::All;
        }
        if s.short.take() {
            s.counts.short_writes += 1;
            return WritePlan::Partial(len / 2, eio());
        }
        match s.space_left {
            Some(left) if (len as u64) > left => {
                s.counts.enospc_writes += 1;
                s.space_left = Some(0);
                WritePlan::Partial(left as usize, enospc())
            }
            Some(left) => {
                s.space_left = Some(left - len as u64);
                WritePlan::All
            }
            None => WritePlan::All,
        }
    }
}

impl FileHandle for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (landed, result) = match self.plan_write(buf.len()) {
            WritePlan::All => (buf.len(), Ok(())),
            WritePlan::Partial(n, e) => (n, Err(e)),
        };
        self.inner.write_all(&buf[..landed])?;
        self.len += landed as u64;
        self.fs.state().counts.bytes_written += landed as u64;
        result
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.len = self.len.min(len);
        self.synced_len = self.synced_len.min(len);
        self.zeroed_to = self.zeroed_to.min(len);
        self.synced_zeroed_to = self.synced_zeroed_to.min(len);
        Ok(())
    }

    fn zero_fill_ahead(&mut self, len: u64) -> io::Result<()> {
        // Counted apart from `write_all`: it is room, not data.
        self.inner.zero_fill_ahead(len)?;
        self.zeroed_to = self.zeroed_to.max(self.len + len);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if self.fs.fsync_fails(&self.path, true) {
            // The write-back failed: what it carried is gone; zero-filled space
            // reads as zeros again.
            self.inner.set_len(self.synced_len)?;
            self.inner.zero_fill_ahead(self.synced_zeroed_to.saturating_sub(self.synced_len))?;
            self.len = self.synced_len;
            self.zeroed_to = self.synced_zeroed_to;
            return Err(eio());
        }
        self.inner.sync_data()?;
        self.synced_len = self.len;
        self.synced_zeroed_to = self.zeroed_to;
        Ok(())
    }
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let inner = RealFs.create(path)?;
        Ok(self.wrap(path, inner, 0))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let inner = RealFs.open_append(path)?;
        let len = fs::metadata(path)?.len();
        Ok(self.wrap(path, inner, len))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync_fails(dir, false) {
            return Err(eio());
        }
        RealFs.sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(fs: &FaultyFs, dir: &Path, name: &str) -> (PathBuf, Box<dyn FileHandle>) {
        let path = dir.join(name);
        let handle = fs.create(&path).unwrap();
        (path, handle)
    }

    #[test]
    fn failed_fsync_drops_what_was_not_synced_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let (path, mut f) = file(&fs, dir.path(), "a");
        f.write_all(b"durable").unwrap();
        f.sync_data().unwrap();
        f.write_all(b" lost").unwrap();
        fs.fail_fsyncs(1);
        let err = f.sync_data().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"durable");
        // Only the next one failed.
        f.sync_data().unwrap();
        fs.fail_all_fsyncs();
        assert!(f.sync_data().is_err() && fs.sync_dir(dir.path()).is_err());
        fs.heal();
        fs.sync_dir(dir.path()).unwrap();
        let c = fs.counts();
        assert_eq!((c.file_syncs, c.dir_syncs, c.failed_fsyncs, c.writes, c.bytes_written), (4, 2, 3, 2, 12));
    }

    #[test]
    fn short_write_lands_half() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let (path, mut f) = file(&fs, dir.path(), "a");
        fs.short_writes(1);
        assert!(f.write_all(b"0123456789").is_err());
        f.write_all(b"ab").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"01234ab");
        assert_eq!(fs.counts().short_writes, 1);
    }

    #[test]
    fn full_disk_lands_what_fits_then_says_no_space() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let (path, mut f) = file(&fs, dir.path(), "a");
        fs.set_space_left(6);
        f.write_all(b"abcd").unwrap();
        let err = f.write_all(b"efgh").unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert!(f.write_all(b"x").is_err(), "still full");
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        assert_eq!(fs.counts().enospc_writes, 2);
    }

    #[test]
    fn a_write_that_exactly_fills_the_disk_lands() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let (path, mut f) = file(&fs, dir.path(), "a");
        fs.set_space_left(4);
        f.write_all(b"abcd").unwrap();
        assert!(f.write_all(b"e").is_err(), "full");
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        assert_eq!(fs.counts().enospc_writes, 1);
    }

    #[test]
    fn fsync_delay_slows_file_and_directory_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let (_, mut f) = file(&fs, dir.path(), "a");
        let delay = Duration::from_millis(30);
        fs.set_fsync_delay(delay);
        let start = std::time::Instant::now();
        f.sync_data().unwrap();
        fs.sync_dir(dir.path()).unwrap();
        assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());
        let c = fs.counts();
        assert_eq!((c.file_syncs, c.dir_syncs, c.failed_fsyncs), (1, 1, 0));
    }

    #[test]
    fn scope_limits_faults_to_matching_paths() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        fs.only_paths_containing(Some("snap"));
        fs.fail_all_fsyncs();
        let (_, mut wal) = file(&fs, dir.path(), "x.wal");
        let (_, mut snap) = file(&fs, dir.path(), "x.snap");
        wal.sync_data().unwrap();
        assert!(snap.sync_data().is_err());
    }
}
