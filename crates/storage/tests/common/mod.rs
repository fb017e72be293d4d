//! Helpers shared by the integration tests: entries, directory copies, and storage
//! opened on a [`FaultyFs`] (the fault-injecting, counting file system of the crate's
//! `fault-injection` feature, which the crate's own dev-dependency switches on).

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raftkv_raft::{ConfState, Entry, EntryKind, HardState, Recovered, Snapshot, SnapshotMeta};
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{DiskStorage, FsyncPolicy, SnapshotFile, StorageError, StorageOptions, WrittenSnapshot};

pub fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, kind: EntryKind::Command, data: Bytes::from(format!("entry {index} of term {term}")) }
}

pub fn entries(indexes: impl IntoIterator<Item = u64>, term: u64) -> Vec<Entry> {
    indexes.into_iter().map(|i| entry(i, term)).collect()
}

pub fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term, vote, commit, recovering: false }
}

pub fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta { index, term, conf: ConfState { voters: [1, 2, 3].into(), learners: [4].into() } },
        data: Bytes::from(format!("state machine at {index}")),
    }
}

/// Opens on the real file system; like [`options`], with no zeros written ahead.
pub fn open(dir: &Path) -> (DiskStorage, Recovered) {
    DiskStorage::open(dir, StorageOptions { zero_fill_bytes: 0, ..StorageOptions::default() }).expect("open")
}

pub fn open_with(dir: &Path, fs: &FaultyFs, segment_size: u64) -> (DiskStorage, Recovered) {
    let opts = options(fs, FsyncPolicy::Always, segment_size);
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

/// Options with the given file system and policy, and no zeros written ahead: these
/// tests find records by the files' lengths (tests/zero_fill.rs tests the zeros).
pub fn options(fs: &FaultyFs, fsync: FsyncPolicy, segment_size: u64) -> StorageOptions {
    StorageOptions { fsync, segment_size, zero_fill_bytes: 0, fs: Arc::new(fs.clone()), ..StorageOptions::default() }
}

/// Streams `snap`'s data into a snapshot file from `start` (in two pieces, as an
/// encoder writes), ready to commit.
pub fn stream_snapshot(
    start: impl FnOnce(SnapshotMeta, u64) -> Result<SnapshotFile, StorageError>,
    snap: &Snapshot,
) -> Result<WrittenSnapshot, StorageError> {
    let mut file = start(snap.meta.clone(), snap.data.len() as u64)?;
    let (head, tail) = snap.data.split_at(snap.data.len() / 2);
    // The write errors are reported again, with their file, by `finish`.
    let _ = file.write_all(head).and_then(|()| file.write_all(tail));
    file.finish()
}
