//! File operations with this crate's error mapping, fsync policy and counters.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::StorageError;
use crate::fs::{FileHandle, FileSystem};

/// Counters behind [`crate::StorageStats`], shared with the group-commit writer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub dir_fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub records_written: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A [`FileSystem`] plus whether to fsync, and the counters every write updates.
#[derive(Clone)]
pub(crate) struct Disk {
    pub fs: Arc<dyn FileSystem>,
    pub sync: bool,
    pub counters: Arc<Counters>,
}

type Result<T> = std::result::Result<T, StorageError>;

impl Disk {
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        self.fs.create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))
    }

    pub fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        self.fs.list_dir(dir).map_err(|e| StorageError::io("list dir", dir, e))
    }

    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        self.fs.read(path).map_err(|e| StorageError::io("read", path, e))
    }

    pub fn read_shared(&self, path: &Path) -> Result<Bytes> {
        self.fs.read_shared(path).map_err(|e| StorageError::io("map", path, e))
    }

    pub fn create(&self, path: &Path) -> Result<Box<dyn FileHandle>> {
        self.fs.create(path).map_err(|e| StorageError::io("create", path, e))
    }

    pub fn open_append(&self, path: &Path) -> Result<Box<dyn FileHandle>> {
        self.fs.open_append(path).map_err(|e| StorageError::io("open for append", path, e))
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.fs.rename(from, to).map_err(|e| StorageError::io("rename", from, e))
    }

    pub fn remove_file(&self, path: &Path) -> Result<()> {
        self.fs.remove_file(path).map_err(|e| StorageError::io("remove", path, e))
    }

    pub fn write(&self, file: &mut dyn FileHandle, path: &Path, buf: &[u8]) -> Result<()> {
        file.write_all(buf).map_err(|e| StorageError::io("write", path, e))?;
        Counters::add(&self.counters.bytes_written, buf.len() as u64);
        Ok(())
    }

    pub fn set_len(&self, file: &mut dyn FileHandle, path: &Path, len: u64) -> Result<()> {
        file.set_len(len).map_err(|e| StorageError::io("truncate", path, e))
    }

    /// fsyncs `file` if the policy says so; returns how long it took (zero if not).
    pub fn sync_file(&self, file: &mut dyn FileHandle, path: &Path) -> Result<Duration> {
        if !self.sync {
            return Ok(Duration::ZERO);
        }
        let start = Instant::now();
        file.sync_data().map_err(|e| StorageError::io("fsync", path, e))?;
        Counters::add(&self.counters.fsyncs, 1);
        Ok(start.elapsed())
    }

    /// fsyncs directory `dir` if the policy says so.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        if !self.sync {
            return Ok(());
        }
        self.fs.sync_dir(dir).map_err(|e| StorageError::io("fsync dir", dir, e))?;
        Counters::add(&self.counters.dir_fsyncs, 1);
        Ok(())
    }
}
