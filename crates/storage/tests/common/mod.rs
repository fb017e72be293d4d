//! Helpers shared by the integration tests: entries, directory copies, and a
//! fault-injecting, counting file system.

#![allow(dead_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raftkv_raft::{ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta};
use raftkv_storage::{DiskStorage, FileHandle, FileSystem, FsyncPolicy, RealFs, Recovered, StorageOptions};

pub fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, kind: EntryKind::Command, data: Bytes::from(format!("entry {index} of term {term}")) }
}

pub fn entries(indexes: impl IntoIterator<Item = u64>, term: u64) -> Vec<Entry> {
    indexes.into_iter().map(|i| entry(i, term)).collect()
}

pub fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

pub fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta { index, term, conf: ConfState { voters: [1, 2, 3].into(), learners: [4].into() } },
        data: Bytes::from(format!("state machine at {index}")),
    }
}

pub fn open(dir: &Path) -> (DiskStorage, Recovered) {
    DiskStorage::open(dir, StorageOptions::default()).expect("open")
}

pub fn open_with(dir: &Path, fs: &TestFs, segment_size: u64) -> (DiskStorage, Recovered) {
    let opts = StorageOptions { segment_size, fs: Arc::new(fs.clone()), ..StorageOptions::default() };
    DiskStorage::open(dir, opts).expect("open")
}

pub fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join("wal").join(format!("{seq:016x}.wal"))
}

pub fn segments(dir: &Path) -> Vec<String> {
    sorted_names(&dir.join("wal"))
}

pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

pub fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// A [`FileSystem`] over the real one that counts fsyncs, can delay them, and can make
/// fsyncs or writes fail (as EIO / ENOSPC) while a flag is set.
#[derive(Clone, Default)]
pub struct TestFs(Arc<State>);

#[derive(Default)]
pub struct State {
    pub sync_delay_ms: AtomicU64,
    pub fail_sync: AtomicBool,
    pub fail_write: AtomicBool,
    pub file_syncs: AtomicU64,
    pub dir_syncs: AtomicU64,
}

impl TestFs {
    pub fn state(&self) -> &State {
        &self.0
    }

    pub fn syncs(&self) -> (u64, u64) {
        (self.0.file_syncs.load(Ordering::SeqCst), self.0.dir_syncs.load(Ordering::SeqCst))
    }

    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }
}

struct TestFile {
    inner: Box<dyn FileHandle>,
    state: Arc<State>,
}

impl FileHandle for TestFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.state.fail_write.load(Ordering::SeqCst) {
            // A short write: half lands, then the disk is full.
            self.inner.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.write_all(buf)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.state.file_syncs.fetch_add(1, Ordering::SeqCst);
        let delay = self.state.sync_delay_ms.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(delay));
        if self.state.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync_data()
    }
}

impl FileSystem for TestFs {
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
        Ok(Box::new(TestFile { inner, state: self.0.clone() }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let inner = RealFs.open_append(path)?;
        Ok(Box::new(TestFile { inner, state: self.0.clone() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.dir_syncs.fetch_add(1, Ordering::SeqCst);
        if self.0.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        RealFs.sync_dir(dir)
    }
}

/// Options with the given file system and policy.
pub fn options(fs: &TestFs, fsync: FsyncPolicy, segment_size: u64) -> StorageOptions {
    StorageOptions { fsync, segment_size, fs: Arc::new(fs.clone()), ..StorageOptions::default() }
}
