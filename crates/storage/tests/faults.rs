//! Disk faults injected with [`FaultyFs`] (feature `fault-injection`): a failed fsync, a
//! short write, a full disk, a snapshot save failing midway. In each case the failing
//! write reports an error, the storage refuses everything after it, and reopening on
//! the real file system recovers exactly what was acknowledged — nothing lost, nothing
//! invented.

mod common;

use std::path::Path;

use common::*;
use raftkv_raft::{Entry, HardState};
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{DiskStorage, StorageError};

/// Asserts that `s` refuses every kind of write, naming the first failure.
fn assert_refuses_everything(s: &mut DiskStorage, first_failure: &str) {
    let next = s.last_index() + 1;
    let err = s.append(&entries(next..=next, 9), None).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
    assert!(err.to_string().contains(first_failure), "names the first failure: {err}");
    let err = s.append(&[], Some(&hs(9, Some(1), 0))).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
    let err = s.save_snapshot(&snapshot(next, 9)).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
}

/// Reopens on the real file system and checks it holds exactly `acked`.
fn assert_recovers_exactly(dir: &Path, acked: &[Entry], hard_state: HardState) {
    assert_recovers(dir, acked, &[], hard_state);
}

/// Reopens on the real file system and checks it holds `acked` followed by at most a
/// prefix of `unacked` (the entries of the failed write: records of it that landed
/// whole may survive, as after a crash before the acknowledgement), and nothing else.
fn assert_recovers(dir: &Path, acked: &[Entry], unacked: &[Entry], hard_state: HardState) {
    let (mut s, rec) = open(dir);
    let (head, tail) = rec.entries.split_at(acked.len().min(rec.entries.len()));
    assert_eq!(head, acked, "every acknowledged entry is recovered");
    assert!(unacked.starts_with(tail), "nothing invented: {tail:?} is not a prefix of the failed write {unacked:?}");
    assert_eq!(rec.hard_state, hard_state);
    // And the recovered storage works: an append survives the next reopen.
    let next = s.last_index() + 1;
    s.append(&entries(next..=next, 7), None).unwrap();
    drop(s);
    let mut expected = rec.entries.clone();
    expected.push(entry(next, 7));
    assert_eq!(open(dir).1.entries, expected);
}

#[test]
fn failed_fsync_fails_the_write_poisons_and_loses_only_the_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1 << 20);
    for i in 1..=3 {
        s.append(&entries(i..=i, 1), Some(&hs(1, Some(1), i - 1))).unwrap();
    }
    fs.fail_fsyncs(1);
    let err = s.append(&entries(4..=5, 1), Some(&hs(2, Some(2), 3))).unwrap_err();
    match &err {
        StorageError::Io { op: "fsync", path, .. } => assert_eq!(path, &segment(dir.path(), 1)),
        other => panic!("expected an fsync error, got {other}"),
    }
    assert!(err.to_string().contains("0000000000000001.wal"), "names the file: {err}");
    assert_eq!(s.last_index(), 3, "nothing of the failed write counts as stored");
    assert_eq!(fs.counts().failed_fsyncs, 1);
    // The disk "recovers", but the file state is unknown: nothing may succeed.
    fs.heal();
    assert_refuses_everything(&mut s, "fsync");
    drop(s);
    // FaultyFs dropped the bytes whose fsync failed, as the kernel may: neither the
    // entries nor the new vote of the failed write come back.
    assert_recovers_exactly(dir.path(), &entries(1..=3, 1), hs(1, Some(1), 2));
}

#[test]
fn failed_directory_fsync_on_rollover_poisons_too() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    // Segment size 1: every append rolls over first, which fsyncs the WAL directory.
    let (mut s, _) = open_with(dir.path(), &fs, 1);
    s.append(&entries(1..=1, 1), Some(&hs(1, None, 0))).unwrap();
    let dir_syncs = fs.counts().dir_syncs;
    fs.fail_fsyncs(1);
    let err = s.append(&entries(2..=2, 1), None).unwrap_err();
    assert!(matches!(&err, StorageError::Io { op: "fsync dir", .. }), "{err}");
    assert_eq!(fs.counts().dir_syncs, dir_syncs + 1);
    fs.heal();
    assert_refuses_everything(&mut s, "fsync dir");
    drop(s);
    assert_recovers_exactly(dir.path(), &entries(1..=1, 1), hs(1, None, 0));
}

#[test]
fn short_write_fails_and_the_torn_record_is_cut_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1 << 20);
    s.append(&entries(1..=3, 1), Some(&hs(1, Some(1), 0))).unwrap();
    let acked_len = file_len(&segment(dir.path(), 1));
    fs.short_writes(1);
    // Entries only: one record, so half of the write is half a record.
    let err = s.append(&entries(4..=6, 1), None).unwrap_err();
    assert!(matches!(&err, StorageError::Io { op: "write", .. }), "{err}");
    assert!(file_len(&segment(dir.path(), 1)) > acked_len, "half of the record landed");
    assert_eq!(fs.counts().short_writes, 1);
    assert_refuses_everything(&mut s, "write");
    drop(s);
    assert_recovers_exactly(dir.path(), &entries(1..=3, 1), hs(1, Some(1), 0));
}

/// Appends single entries (each with a hard state: two records per write) until the
/// disk is full; returns what was acknowledged, the entry of the failed write, and the
/// error.
fn fill_disk(s: &mut DiskStorage) -> (Vec<Entry>, HardState, Entry, StorageError) {
    let mut acked = Vec::new();
    let mut hard_state = HardState::default();
    for i in 1..=1000 {
        let hs = hs(3, Some(2), i - 1);
        match s.append(&entries(i..=i, 3), Some(&hs)) {
            Ok(_) => {
                acked.push(entry(i, 3));
                hard_state = hs;
            }
            Err(e) => return (acked, hard_state, entry(i, 3), e),
        }
    }
    panic!("the disk never filled up");
}

#[test]
fn full_disk_names_the_file_says_no_space_and_corrupts_nothing() {
    // Budgets that run out at many points: inside an entry record, inside a hard
    // state record, on a record boundary, inside the header of a new segment.
    for space in (0..700).step_by(23) {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let (mut s, _) = open_with(dir.path(), &fs, 300);
        fs.set_space_left(space);
        let (acked, hard_state, failed, err) = fill_disk(&mut s);
        match &err {
            StorageError::Io { op: "write", path, .. } => {
                assert!(path.starts_with(dir.path().join("wal")), "space {space}: {err}")
            }
            other => panic!("space {space}: expected a write error, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("No space left on device"), "space {space}: {msg}");
        assert!(msg.contains(".wal"), "space {space}: names the file: {msg}");
        assert_eq!(fs.counts().enospc_writes, 1, "space {space}");
        fs.heal();
        assert_refuses_everything(&mut s, "No space left on device");
        drop(s);
        assert_recovers(dir.path(), &acked, &[failed], hard_state);
    }
}

/// A storage over a `FaultyFs` holding entries 1..=10 and a snapshot at 4, with
/// `fault` armed on the snapshot directory's files only.
fn with_snapshot_at_4(fault: impl FnOnce(&FaultyFs)) -> (tempfile::TempDir, FaultyFs, DiskStorage) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1 << 20);
    s.append(&entries(1..=10, 1), Some(&hs(1, Some(1), 9))).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    fs.only_paths_containing(Some("snap"));
    fault(&fs);
    (dir, fs, s)
}

/// `err` is the I/O error `expected_op` on a snapshot's `.tmp` file.
fn assert_failed_on_the_tmp_file(err: &StorageError, expected_op: &str) {
    match err {
        StorageError::Io { op, path, .. } => {
            assert_eq!(*op, expected_op, "{err}");
            assert!(path.to_string_lossy().ends_with(".snap.tmp"), "{err}");
        }
        other => panic!("expected an I/O error, got {other}"),
    }
}

/// Entries 1..=10 and a snapshot at 4, then a snapshot at 8 that fails as `fault`
/// makes it; the snapshot at 4 must still be what a reopen finds.
fn snapshot_save_fails(fault: impl FnOnce(&FaultyFs), expected_op: &str) {
    let (dir, fs, mut s) = with_snapshot_at_4(fault);
    let err = s.save_snapshot(&snapshot(8, 1)).unwrap_err();
    assert_failed_on_the_tmp_file(&err, expected_op);
    fs.heal();
    assert_refuses_everything(&mut s, expected_op);
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)), "{expected_op}");
    assert_eq!(rec.entries, entries(5..=10, 1), "{expected_op}");
    assert_eq!(rec.hard_state, hs(1, Some(1), 9));
    let names = sorted_names(&dir.path().join("snap"));
    assert_eq!(names, [format!("{:016x}-{:016x}.snap", 4, 1)], "the partial file is gone");
}

/// Like [`snapshot_save_fails`], with the snapshot at 8 streamed into its file and then
/// committed. A failed write while streaming fails the file (the storage, whose files
/// it did not touch, goes on); a failed fsync fails the commit and the storage.
fn streamed_snapshot_fails(fault: impl FnOnce(&FaultyFs), expected_op: &str) {
    let (dir, fs, mut s) = with_snapshot_at_4(fault);
    let big = raftkv_raft::Snapshot { data: vec![7; 1 << 20].into(), ..snapshot(8, 1) };
    let err = match stream_snapshot(|meta, len| s.snapshot_file(meta, len), &big) {
        Err(e) => {
            fs.heal();
            s.append(&entries(11..=11, 1), None).expect("a failed snapshot file does not fail the storage");
            e
        }
        Ok(written) => {
            let e = s.commit_snapshot(written).unwrap_err();
            fs.heal();
            assert_refuses_everything(&mut s, expected_op);
            e
        }
    };
    assert_failed_on_the_tmp_file(&err, expected_op);
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)), "{expected_op}");
    assert_eq!(rec.entries[..6], entries(5..=10, 1), "{expected_op}");
    let names = sorted_names(&dir.path().join("snap"));
    assert_eq!(names, [format!("{:016x}-{:016x}.snap", 4, 1)], "the partial file is gone");
}

#[test]
fn streamed_snapshot_failing_midway_leaves_the_previous_one_usable() {
    streamed_snapshot_fails(|fs| fs.set_space_left(300 << 10), "write");
    streamed_snapshot_fails(|fs| fs.short_writes(1), "write");
    streamed_snapshot_fails(|fs| fs.fail_fsyncs(1), "fsync");
}

#[test]
fn snapshot_save_failing_midway_leaves_the_previous_one_usable() {
    snapshot_save_fails(|fs| fs.set_space_left(20), "write");
    snapshot_save_fails(|fs| fs.short_writes(1), "write");
    snapshot_save_fails(|fs| fs.fail_fsyncs(1), "fsync");
}
