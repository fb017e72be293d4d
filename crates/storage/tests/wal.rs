//! WAL durability and recovery: round trips, torn tails, corruption, rollover.

mod common;

use std::fs;

use common::*;
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{DiskStorage, StorageError, StorageOptions};

#[test]
fn round_trip_with_suffix_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, rec) = open(dir.path());
    assert_eq!(rec, raftkv_raft::Recovered::empty(), "a new directory recovers nothing: a lost state");

    s.append(&entries(1..=5, 1), Some(&hs(1, Some(1), 0))).unwrap();
    s.append(&[], Some(&hs(1, Some(1), 2))).unwrap();
    // A new leader overwrites the conflicting suffix 4..=5 and adds 6.
    s.append(&entries(4..=6, 2), Some(&hs(2, Some(3), 3))).unwrap();
    assert_eq!(s.last_index(), 6);
    drop(s);

    let (mut s, rec) = open(dir.path());
    let mut expected = entries(1..=3, 1);
    expected.extend(entries(4..=6, 2));
    assert_eq!(rec.entries, expected);
    assert_eq!(rec.hard_state, hs(2, Some(3), 3));
    assert_eq!(rec.snapshot, None);

    // Overwriting with a shorter suffix drops the tail, also across a reopen.
    s.append(&entries(3..=3, 3), None).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    let mut expected = entries(1..=2, 1);
    expected.push(entry(3, 3));
    assert_eq!(rec.entries, expected);
}

#[test]
fn gap_and_vote_zero_are_refused_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=2, 1), None).unwrap();
    let err = s.append(&entries(4..=4, 1), None).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("gap"), "{err}");
    let err = s.append(&[], Some(&hs(1, Some(0), 0))).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    s.append(&entries(3..=3, 1), None).unwrap();
    drop(s);
    assert_eq!(open(dir.path()).1.entries, entries(1..=3, 1));
}

#[test]
fn oversized_record_is_refused_and_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { max_record_size: 1024, ..StorageOptions::default() };
    let (mut s, _) = DiskStorage::open(dir.path(), opts.clone()).unwrap();
    let mut big = entry(1, 1);
    big.data = vec![7; 2000].into();
    let err = s.append(&[big], None).unwrap_err();
    assert!(matches!(err, StorageError::RecordTooLarge { limit: 1024, .. }), "{err}");
    assert!(err.to_string().contains("1024"), "{err}");
    s.append(&entries(1..=1, 1), None).unwrap();
    drop(s);
    assert_eq!(DiskStorage::open(dir.path(), opts).unwrap().1.entries, entries(1..=1, 1));
}

/// Writes `n` single-entry records (after the open's hard-state header) and returns
/// the segment length after each.
fn write_records(dir: &std::path::Path, n: u64) -> Vec<u64> {
    let (mut s, _) = open(dir);
    let mut ends = vec![file_len(&segment(dir, 1))];
    for i in 1..=n {
        s.append(&entries(i..=i, 1), None).unwrap();
        ends.push(file_len(&segment(dir, 1)));
    }
    ends
}

#[test]
fn crash_at_every_byte_of_the_last_record_recovers_the_complete_ones() {
    let src = tempfile::tempdir().unwrap();
    let n = 5;
    let ends = write_records(src.path(), n);
    let (start, end) = (ends[n as usize - 1], ends[n as usize]);
    assert!(end - start > 20, "the record is long enough to tear in many places");
    for len in start..=end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        truncate(&segment(dir.path(), 1), len);
        let (_, rec) = open(dir.path());
        let survivors = if len == end { n } else { n - 1 };
        assert_eq!(rec.entries, entries(1..=survivors, 1), "cut at byte {len}");
        let expected_len = if len == end { end } else { start };
        assert_eq!(file_len(&segment(dir.path(), 1)), expected_len, "cut at byte {len}");
    }
}

#[test]
fn flipped_bit_mid_log_is_refused_with_file_and_offset() {
    let src = tempfile::tempdir().unwrap();
    let ends = write_records(src.path(), 5);
    let record = ends[1]; // the start of the second entry record
    // Payload, checksum and length field of that record: all refused.
    for (offset, bit) in [(record + 12, 3), (record + 5, 0), (record, 1)] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = segment(dir.path(), 1);
        flip_bit(&path, offset, bit);
        let err = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap_err();
        match &err {
            StorageError::Corrupt { file, offset: at, .. } => {
                assert_eq!(file, &path);
                assert_eq!(*at, record, "flip at {offset}");
            }
            other => panic!("expected Corrupt, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("0000000000000001.wal"), "{msg}");
        assert!(msg.contains(&format!("offset {record}")), "{msg}");
        assert_eq!(fs::read(&path).unwrap().len() as u64, ends[5], "nothing was truncated");
    }
}

/// The start of the record that contains byte `offset`, given the record ends.
fn record_start(ends: &[u64], offset: u64) -> u64 {
    ends.iter().rev().copied().find(|end| *end <= offset).unwrap_or(0)
}

#[test]
fn every_flipped_bit_in_a_record_followed_by_another_is_refused_naming_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4;
    let ends = write_records(dir.path(), n);
    let path = segment(dir.path(), 1);
    let last_start = ends[n as usize - 1];
    let original = fs::read(&path).unwrap();
    // Every bit of every record but the last: the hard state header and the entries,
    // their length fields included (a flipped high bit points past the end of the file).
    for offset in 0..last_start {
        for bit in 0..8 {
            flip_bit(&path, offset, bit);
            let err = DiskStorage::open(dir.path(), StorageOptions::default())
                .map(|_| ())
                .expect_err(&format!("bit {bit} of byte {offset} flipped: refused"));
            match &err {
                StorageError::Corrupt { file, offset: at, .. } => {
                    assert_eq!(file, &path);
                    assert_eq!(*at, record_start(&ends, offset), "bit {bit} of byte {offset}: {err}");
                }
                other => panic!("bit {bit} of byte {offset}: expected Corrupt, got {other}"),
            }
            flip_bit(&path, offset, bit);
        }
    }
    assert_eq!(fs::read(&path).unwrap(), original, "refusals change nothing on disk");
    assert_eq!(open(dir.path()).1.entries, entries(1..=n, 1));
}

#[test]
fn a_torn_last_record_followed_by_zeros_is_cut() {
    let src = tempfile::tempdir().unwrap();
    let n = 4;
    let ends = write_records(src.path(), n);
    let (start, end) = (ends[n as usize - 1], ends[n as usize]);
    // A crash at every byte of the last record, the file then extended with zeros (a
    // tail the file system allocated but never filled).
    for len in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = segment(dir.path(), 1);
        truncate(&path, len);
        truncate(&path, end + 64);
        let (_, rec) = open(dir.path());
        assert_eq!(rec.entries, entries(1..n, 1), "zeros from byte {len}");
        assert_eq!(file_len(&path), start, "zeros from byte {len}: cut back to the last whole record");
    }
}

#[test]
fn bad_checksum_followed_by_a_record_in_the_last_segment_is_corrupt() {
    let src = tempfile::tempdir().unwrap();
    let ends = write_records(src.path(), 3);
    flip_bit(&segment(src.path(), 1), ends[2] - 1, 0); // last byte of the 2nd of 3
    let err = DiskStorage::open(src.path(), StorageOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { offset, .. } if offset == ends[1]), "{err}");
}

#[test]
fn torn_tail_is_truncated_and_later_appends_recover() {
    for damage in ["cut", "bad checksum"] {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_records(dir.path(), 3);
        let path = segment(dir.path(), 1);
        match damage {
            "cut" => truncate(&path, ends[3] - 4),
            _ => flip_bit(&path, ends[3] - 1, 7),
        }
        let (mut s, rec) = open(dir.path());
        assert_eq!(rec.entries, entries(1..=2, 1), "{damage}");
        assert_eq!(file_len(&path), ends[2], "{damage}");
        s.append(&entries(3..=4, 2), Some(&hs(2, None, 1))).unwrap();
        drop(s);
        let (_, rec) = open(dir.path());
        let mut expected = entries(1..=2, 1);
        expected.extend(entries(3..=4, 2));
        assert_eq!(rec.entries, expected, "{damage}");
        assert_eq!(rec.hard_state, hs(2, None, 1), "{damage}");
    }
}

#[test]
fn torn_header_leaves_an_empty_segment_that_gets_a_hard_state_header() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1);
    // Segment 1 holds the open's header; each append rolls first (segment size 1).
    s.append(&entries(1..=1, 1), Some(&hs(1, Some(2), 1))).unwrap();
    s.append(&entries(2..=2, 1), None).unwrap();
    drop(s);
    assert_eq!(segments(dir.path()).len(), 3);
    truncate(&segment(dir.path(), 3), 3);
    let (mut s, rec) = open_with(dir.path(), &fs, 1 << 20);
    assert_eq!(rec.entries, entries(1..=1, 1));
    assert_eq!(rec.hard_state, hs(1, Some(2), 1));
    assert!(file_len(&segment(dir.path(), 3)) > 0, "the emptied segment was re-headed");
    s.append(&entries(2..=3, 1), None).unwrap();
    drop(s);
    assert_eq!(open(dir.path()).1.entries, entries(1..=3, 1));
}

/// A log over several tiny segments; returns the segment count.
fn write_segmented(dir: &std::path::Path) -> usize {
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir, &fs, 100);
    for i in 1..=12 {
        s.append(&entries(i..=i, 1), None).unwrap();
    }
    segments(dir).len()
}

#[test]
fn damage_in_a_non_last_segment_is_refused() {
    let src = tempfile::tempdir().unwrap();
    assert!(write_segmented(src.path()) >= 3);
    let first = segment(src.path(), 1);
    let first_len = file_len(&first);

    // A bad checksum in the final record of segment 1: a torn write would be cut, but
    // segment 1 is not the last, so it is corruption.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(src.path(), dir.path());
    flip_bit(&segment(dir.path(), 1), first_len - 1, 0);
    let err = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt { file, .. } if *file == segment(dir.path(), 1)), "{err}");
    assert!(err.to_string().contains("0000000000000001.wal"), "{err}");

    // A cut-short final record of segment 1: also corruption.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(src.path(), dir.path());
    truncate(&segment(dir.path(), 1), first_len - 2);
    let err = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");

    // A missing middle segment.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(src.path(), dir.path());
    fs::remove_file(segment(dir.path(), 2)).unwrap();
    let err = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap_err();
    assert!(err.to_string().contains("0000000000000002.wal"), "{err}");
}

#[test]
fn rollover_writes_the_hard_state_first_and_recovers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 150);
    s.append(&[], Some(&hs(4, Some(2), 0))).unwrap();
    for i in 1..=20 {
        s.append(&entries(i..=i, 4), None).unwrap();
    }
    drop(s);
    let names = segments(dir.path());
    assert!(names.len() >= 4, "{names:?}");
    let (_, rec) = open_with(dir.path(), &fs, 150);
    assert_eq!(rec.entries, entries(1..=20, 4));
    assert_eq!(rec.hard_state, hs(4, Some(2), 0));
}

#[test]
fn a_hard_state_that_goes_back_is_refused_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=2, 3), Some(&hs(3, Some(2), 1))).unwrap();
    for (bad, says) in [
        (hs(2, None, 1), "term 2 after term 3"),
        (hs(3, Some(1), 1), "already has a vote for Some(2)"),
        (hs(3, None, 1), "already has a vote for Some(2)"),
    ] {
        let err = s.append(&[], Some(&bad)).unwrap_err();
        assert!(matches!(err, StorageError::Invalid { .. }) && err.to_string().contains(says), "{bad:?}: {err}");
    }
    // A later term, and a vote in a term that had none, are fine; nothing was poisoned.
    s.append(&entries(3..=3, 5), Some(&hs(5, None, 2))).unwrap();
    s.append(&[], Some(&hs(5, Some(1), 2))).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.hard_state, hs(5, Some(1), 2));
}

#[test]
fn options_are_checked_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let open_with = |opts: StorageOptions| DiskStorage::open(dir.path(), opts).map(drop);
    let err = open_with(StorageOptions { segment_size: 0, ..StorageOptions::default() }).unwrap_err();
    assert!(err.to_string().contains("segment_size must be positive"), "{err}");
    // A hard state record must fit: the smallest limit is 64 bytes.
    let err = open_with(StorageOptions { max_record_size: 63, ..StorageOptions::default() }).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }) && err.to_string().contains("at least 64"), "{err}");
    open_with(StorageOptions { segment_size: 1, max_record_size: 64, ..StorageOptions::default() }).unwrap();
}

#[test]
fn options_are_equal_when_every_setting_is() {
    let opts = StorageOptions::default();
    assert_eq!(opts, opts.clone(), "same settings, same file system instance");
    let differ = [
        StorageOptions { fsync: raftkv_storage::FsyncPolicy::Never, ..opts.clone() },
        StorageOptions { segment_size: opts.segment_size + 1, ..opts.clone() },
        StorageOptions { max_record_size: opts.max_record_size + 1, ..opts.clone() },
        StorageOptions { zero_fill_bytes: opts.zero_fill_bytes + 1, ..opts.clone() },
        StorageOptions { fs: std::sync::Arc::new(raftkv_storage::RealFs), ..opts.clone() },
    ];
    for other in differ {
        assert_ne!(opts, other);
    }
}

/// A reopen with nothing to repair (no torn tail, a commit index the log holds) writes
/// and fsyncs nothing.
#[test]
fn reopening_a_clean_log_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=3, 1), Some(&hs(1, Some(1), 3))).unwrap();
    drop(s);
    let len = file_len(&segment(dir.path(), 1));
    let (s, rec) = open(dir.path());
    assert_eq!(rec.hard_state, hs(1, Some(1), 3));
    let stats = s.stats();
    assert_eq!((stats.bytes_written, stats.records_written, stats.fsyncs), (0, 0, 0));
    assert_eq!(file_len(&segment(dir.path(), 1)), len);
}

/// `lost_state` is set only when nothing at all was recovered: no snapshot and no entry.
#[test]
fn the_state_is_lost_only_when_nothing_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, rec) = open(dir.path());
    assert!(rec.lost_state, "a new directory");
    s.append(&entries(1..=3, 1), Some(&hs(1, None, 3))).unwrap();
    drop(s);
    let (mut s, rec) = open(dir.path());
    assert!(!rec.lost_state, "entries, no snapshot");
    s.save_snapshot(&snapshot(3, 1)).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!((rec.snapshot.is_some(), rec.entries.len()), (true, 0));
    assert!(!rec.lost_state, "a snapshot, no entries");
}
