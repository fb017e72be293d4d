//! Zeros written ahead of the WAL's end (`StorageOptions::zero_fill_bytes`): the current
//! segment carries them, a rolled one never does, and a crash or a failed fsync inside
//! them loses no complete record.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::*;
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{DiskStorage, FsyncPolicy, StorageOptions, decode_segment};

const AHEAD: u64 = 4096;

fn zero_filled(fs: &FaultyFs, segment_size: u64) -> StorageOptions {
    StorageOptions { segment_size, zero_fill_bytes: AHEAD, fs: Arc::new(fs.clone()), ..StorageOptions::default() }
}

fn open_zero_filled(dir: &Path) -> (DiskStorage, raftkv_raft::Recovered) {
    DiskStorage::open(dir, zero_filled(&FaultyFs::new(), 64 << 20)).expect("open")
}

/// The length of the complete records of the first segment, as replay reads them.
fn records_len(dir: &Path) -> u64 {
    let bytes = fs::read(segment(dir, 1)).unwrap();
    decode_segment(&bytes, true, None, raftkv_storage::DEFAULT_MAX_RECORD_SIZE).unwrap().valid_len
}

#[test]
fn zeros_are_written_ahead_and_a_reopen_recovers_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_zero_filled(dir.path());
    s.append(&entries(1..=3, 1), Some(&hs(1, Some(1), 0))).unwrap();
    let bytes = fs::read(segment(dir.path(), 1)).unwrap();
    let end = records_len(dir.path()) as usize;
    assert!(end > 0 && bytes.len() >= end + AHEAD as usize / 2, "{} bytes for {end} of records", bytes.len());
    assert!(bytes[end..].iter().all(|b| *b == 0), "zeros after the records");
    drop(s);

    let (mut s, rec) = open_zero_filled(dir.path());
    assert_eq!((rec.entries, rec.hard_state), (entries(1..=3, 1), hs(1, Some(1), 0)));
    s.append(&entries(4..=5, 1), None).unwrap();
    drop(s);
    let (_, rec) = open_zero_filled(dir.path());
    assert_eq!(rec.entries, entries(1..=5, 1), "appends after a reopen land after the records, not after the zeros");
}

#[test]
fn a_write_larger_than_the_zeros_ahead_gets_room_of_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_zero_filled(dir.path());
    let mut data: Vec<_> = (1..=60).map(|i| entry(i, 1)).collect();
    for e in &mut data {
        e.data = vec![7u8; 100].into();
    }
    s.append(&data, None).unwrap();
    let end = records_len(dir.path());
    assert!(end > AHEAD, "the batch ({end} bytes) is larger than the zeros ahead");
    // The next write finds the zeros' end where the last write ended, not before it
    // (the storage's own check).
    s.append(&entries(61..=61, 1), None).unwrap();
    data.push(entry(61, 1));
    drop(s);
    assert_eq!(open_zero_filled(dir.path()).1.entries, data);
}

#[test]
fn a_rolled_segment_ends_at_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = DiskStorage::open(dir.path(), zero_filled(&fs, 300)).unwrap();
    for i in 1..=20 {
        s.append(&entries(i..=i, 1), None).unwrap();
    }
    drop(s);
    let count = segments(dir.path()).len() as u64;
    assert!(count >= 3, "{count} segments");
    for seq in 1..count {
        // The entries' data ends in text: a run of zeros at the end is zero fill.
        let bytes = fs::read(segment(dir.path(), seq)).unwrap();
        assert!(!bytes.ends_with(&[0; 8]), "segment {seq} ends in zeros ({} bytes)", bytes.len());
    }
    let (_, rec) = DiskStorage::open(dir.path(), zero_filled(&fs, 300)).unwrap();
    assert_eq!(rec.entries, entries(1..=20, 1));
}

#[test]
fn a_crash_that_leaves_the_last_record_partly_zeros_recovers_the_complete_ones() {
    let src = tempfile::tempdir().unwrap();
    let (mut s, _) = open_zero_filled(src.path());
    s.append(&entries(1..=4, 1), None).unwrap();
    let start = records_len(src.path());
    s.append(&entries(5..=5, 1), None).unwrap();
    let end = records_len(src.path());
    drop(s);
    // The pages of the last write reached the disk only up to `cut`; zeros after it.
    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = segment(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[cut as usize..end as usize].fill(0);
        fs::write(&path, bytes).unwrap();
        let (_, rec) = open_zero_filled(dir.path());
        assert_eq!(rec.entries, entries(1..=4, 1), "zeros from byte {cut}");
    }
}

#[test]
fn a_failed_fsync_leaves_zeros_where_its_write_was_and_the_synced_records() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = DiskStorage::open(dir.path(), zero_filled(&fs, 64 << 20)).unwrap();
    s.append(&entries(1..=2, 1), None).unwrap();
    let file_len = fs::metadata(segment(dir.path(), 1)).unwrap().len();
    fs.fail_fsyncs(1);
    s.append(&entries(3..=3, 1), None).unwrap_err();
    drop(s);
    let bytes = fs::read(segment(dir.path(), 1)).unwrap();
    assert_eq!(bytes.len() as u64, file_len, "the zeros stay");
    let end = records_len(dir.path()) as usize;
    assert!(bytes[end..].iter().all(|b| *b == 0), "the lost write reads as zeros");
    let (_, rec) = open_zero_filled(dir.path());
    assert_eq!(rec.entries, entries(1..=2, 1));
}

#[test]
fn without_fsync_no_zeros_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { fsync: FsyncPolicy::Never, zero_fill_bytes: AHEAD, ..StorageOptions::default() };
    let (mut s, _) = DiskStorage::open(dir.path(), opts).unwrap();
    s.append(&entries(1..=3, 1), None).unwrap();
    let len = fs::metadata(segment(dir.path(), 1)).unwrap().len();
    assert_eq!(len, records_len(dir.path()));
}
