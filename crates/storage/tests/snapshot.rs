//! Snapshots: atomic saves, corruption, compaction of the WAL behind them.

mod common;

use std::fs;

use common::*;
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{DiskStorage, StorageError, StorageOptions};

#[test]
fn snapshot_round_trip_drops_covered_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 2), Some(&hs(2, Some(1), 8))).unwrap();
    s.save_snapshot(&snapshot(6, 2)).unwrap();
    assert_eq!((s.snapshot_index(), s.last_index()), (6, 10));
    s.append(&entries(11..=12, 2), None).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(6, 2)));
    assert_eq!(rec.entries, entries(7..=12, 2));
    assert_eq!(rec.hard_state, hs(2, Some(1), 8));
}

#[test]
fn snapshot_that_does_not_match_the_log_discards_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    // From a leader: index 8 has term 3 there, so our whole log is stale (Raft §7).
    s.save_snapshot(&snapshot(8, 3)).unwrap();
    assert_eq!(s.last_index(), 8);
    s.append(&entries(9..=9, 3), None).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(8, 3)));
    assert_eq!(rec.entries, entries(9..=9, 3));
}

#[test]
fn older_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=5, 1), None).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    let err = s.save_snapshot(&snapshot(3, 1)).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    s.append(&entries(6..=6, 1), None).unwrap();
}

#[test]
fn interrupted_snapshot_leaves_the_old_one_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    s.save_snapshot(&snapshot(5, 1)).unwrap();
    drop(s);
    // Snapshot B crashed before its rename: a partial temporary file remains.
    let snap_dir = dir.path().join("snap");
    let tmp = snap_dir.join(format!("{:016x}-{:016x}.snap.tmp", 9, 1));
    fs::write(&tmp, b"RKVSNAP\0partial").unwrap();

    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(5, 1)));
    assert_eq!(rec.entries, entries(6..=10, 1));
    assert!(!tmp.exists(), "the temporary file was removed");
    assert_eq!(sorted_names(&snap_dir), [format!("{:016x}-{:016x}.snap", 5, 1)]);
}

#[test]
fn crash_between_snapshot_rename_and_marker_is_completed_at_open() {
    for (term, expected_entries) in [(1, entries(9..=10, 1)), (3, vec![])] {
        let src = tempfile::tempdir().unwrap();
        let (mut s, _) = open(src.path());
        s.append(&entries(1..=10, 1), None).unwrap();
        drop(s);
        // The snapshot file is in place, but the WAL has no marker for it.
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(src.path(), crashed.path());
        let (mut s, _) = open(src.path());
        s.save_snapshot(&snapshot(8, term)).unwrap();
        let name = format!("{:016x}-{:016x}.snap", 8, term);
        fs::copy(src.path().join("snap").join(&name), crashed.path().join("snap").join(&name)).unwrap();

        let (mut s, rec) = open(crashed.path());
        assert_eq!(rec.snapshot, Some(snapshot(8, term)), "term {term}");
        assert_eq!(rec.entries, expected_entries, "term {term}");
        // Appends after recovery survive the next open (the decision was recorded in
        // the WAL, so it is not re-taken against the new entries).
        let next = s.last_index() + 1;
        s.append(&entries(next..=next, 4), None).unwrap();
        drop(s);
        let (_, rec) = open(crashed.path());
        let mut expected = expected_entries;
        expected.push(entry(next, 4));
        assert_eq!(rec.entries, expected, "term {term}");
    }
}

fn snap_name(index: u64, term: u64) -> String {
    format!("{index:016x}-{term:016x}.snap")
}

#[test]
fn corrupt_newest_snapshot_is_moved_aside_and_the_older_one_plus_the_wal_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), Some(&hs(1, Some(2), 9))).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    s.save_snapshot(&snapshot(8, 1)).unwrap();
    drop(s);
    let snap_dir = dir.path().join("snap");
    flip_bit(&snap_dir.join(snap_name(8, 1)), 30, 2);

    // The WAL was never compacted (one big segment): snapshot 4 plus entries 5..=10
    // cover the log, so that is what recovery uses.
    let (mut s, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)));
    assert_eq!(rec.entries, entries(5..=10, 1));
    assert_eq!(rec.hard_state, hs(1, Some(2), 9));
    // Refused, not deleted: the evidence stays, under a name no later open loads.
    assert_eq!(sorted_names(&snap_dir), [snap_name(4, 1), format!("corrupt-{}", snap_name(8, 1))]);

    // Stable across reopens, with writes after the recovery point following the usual
    // rules even at or below the lost snapshot's index (storage-level: an overwrite
    // from 7 truncates 8..=10), although the WAL still holds the lost one's marker.
    s.append(&entries(7..=8, 2), None).unwrap();
    drop(s);
    let (mut s, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)));
    let mut expected = entries(5..=6, 1);
    expected.extend(entries(7..=8, 2));
    assert_eq!(rec.entries, expected);

    // A new snapshot past the lost one ends the fallback.
    s.append(&entries(9..=10, 2), None).unwrap();
    s.save_snapshot(&snapshot(9, 2)).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(9, 2)));
    assert_eq!(rec.entries, entries(10..=10, 2));
    assert!(snap_dir.join(format!("corrupt-{}", snap_name(8, 1))).exists(), "the evidence stays");
}

#[test]
fn snapshot_whose_name_disagrees_with_its_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    drop(s);
    let snap_dir = dir.path().join("snap");
    fs::copy(snap_dir.join(snap_name(4, 1)), snap_dir.join(snap_name(9, 1))).unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)));
    assert_eq!(rec.entries, entries(5..=10, 1));
    assert!(snap_dir.join(format!("corrupt-{}", snap_name(9, 1))).exists());
}

/// Entries 1..=30 of term 5 over 200-byte segments, vote for 3, commit 25, snapshots
/// at `snaps` (each compacting the WAL behind it).
fn compacted(dir: &std::path::Path, snaps: &[u64]) {
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir, &fs, 200);
    s.append(&entries(1..=1, 5), Some(&hs(5, Some(3), 0))).unwrap();
    for i in 2..=30 {
        s.append(&entries(i..=i, 5), None).unwrap();
    }
    s.append(&[], Some(&hs(5, Some(3), 25))).unwrap();
    for &i in snaps {
        s.save_snapshot(&snapshot(i, 5)).unwrap();
    }
    assert!(!segment(dir, 1).exists(), "the WAL was compacted");
}

#[test]
fn corrupt_only_snapshot_over_a_compacted_wal_recovers_no_log_but_keeps_the_vote() {
    let dir = tempfile::tempdir().unwrap();
    compacted(dir.path(), &[20]);
    let snap_dir = dir.path().join("snap");
    flip_bit(&snap_dir.join(snap_name(20, 5)), 10, 0);

    // Entries 1..=20 exist nowhere now: no snapshot, no entries (nothing invented),
    // but the term and the vote stay, and the commit index names nothing absent.
    let (mut s, rec) = open(dir.path());
    assert_eq!(rec.snapshot, None);
    assert_eq!(rec.entries, vec![]);
    assert_eq!(rec.hard_state, hs(5, Some(3), 0));
    assert_eq!(sorted_names(&snap_dir), [format!("corrupt-{}", snap_name(20, 5))]);

    // From here the log is rebuilt from index 1 (e.g. the bootstrap entries) ...
    s.append(&entries(1..=3, 1), None).unwrap();
    drop(s);
    let (mut s, rec) = open(dir.path());
    assert_eq!(rec.entries, entries(1..=3, 1));
    assert_eq!(rec.hard_state, hs(5, Some(3), 0));
    // ... until the leader's snapshot arrives, which ends the fallback.
    s.save_snapshot(&snapshot(30, 6)).unwrap();
    s.append(&entries(31..=31, 6), None).unwrap();
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(30, 6)));
    assert_eq!(rec.entries, entries(31..=31, 6));
    assert_eq!(rec.hard_state.vote, Some(3));
}

#[test]
fn corrupt_newest_snapshot_over_a_compacted_wal_falls_back_to_the_older_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    compacted(dir.path(), &[10, 20]);
    let snap_dir = dir.path().join("snap");
    flip_bit(&snap_dir.join(snap_name(20, 5)), 40, 7);
    // Entries 11..=20 were compacted away behind the lost snapshot: the WAL cannot
    // continue snapshot 10, so no entry is kept, and the commit index drops to 10.
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(10, 5)));
    assert_eq!(rec.entries, vec![]);
    assert_eq!(rec.hard_state, hs(5, Some(3), 10));
    // Both snapshots refused: the same as having none.
    flip_bit(&snap_dir.join(snap_name(10, 5)), 40, 7);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, None);
    assert_eq!(rec.entries, vec![]);
    assert_eq!(rec.hard_state, hs(5, Some(3), 0));
    let names = sorted_names(&snap_dir);
    assert_eq!(names, [format!("corrupt-{}", snap_name(10, 5)), format!("corrupt-{}", snap_name(20, 5))]);
}

#[test]
fn a_missing_snapshot_is_still_an_error() {
    // Only a snapshot refused at open (whose evidence is kept) relaxes replay; a
    // snapshot file that vanished is not silently tolerated.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    s.save_snapshot(&snapshot(8, 1)).unwrap();
    drop(s);
    fs::remove_file(dir.path().join("snap").join(snap_name(8, 1))).unwrap();
    let err = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("no snapshot file exists"), "{err}");
}

#[test]
fn keeps_the_newest_two_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    for i in [2, 4, 6, 8] {
        s.save_snapshot(&snapshot(i, 1)).unwrap();
    }
    let names = sorted_names(&dir.path().join("snap"));
    assert_eq!(names, [6, 8].map(|i| format!("{i:016x}-{:016x}.snap", 1)));
}

#[test]
fn compaction_deletes_covered_segments_and_keeps_the_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 200);
    // The only hard-state write happens in the first segment.
    s.append(&entries(1..=1, 5), Some(&hs(5, Some(3), 1))).unwrap();
    for i in 2..=30 {
        s.append(&entries(i..=i, 5), None).unwrap();
    }
    let before = segments(dir.path());
    assert!(before.len() >= 5, "{before:?}");

    s.save_snapshot(&snapshot(20, 5)).unwrap();
    let after = segments(dir.path());
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(!after.contains(&before[0]), "the first segment is gone: {after:?}");
    assert_eq!(after.last(), before.last(), "the current segment stays");
    drop(s);

    let (mut s, rec) = open_with(dir.path(), &fs, 200);
    assert_eq!(rec.snapshot, Some(snapshot(20, 5)));
    assert_eq!(rec.entries, entries(21..=30, 5));
    assert_eq!(rec.hard_state, hs(5, Some(3), 1));

    // Compacting everything leaves only the current segment, hard state intact.
    s.save_snapshot(&snapshot(30, 5)).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    drop(s);
    let (_, rec) = open_with(dir.path(), &fs, 200);
    assert_eq!(rec.entries, vec![]);
    assert_eq!(rec.hard_state, hs(5, Some(3), 1));
}

#[test]
fn compaction_never_deletes_an_overwrite_whose_target_survives() {
    // Segment size 1: every write goes to a new segment. Segment 2 holds 1..=12 of
    // term 1, segment 3 overwrites 5..=6 with term 2, truncating 7..=12.
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1);
    s.append(&entries(1..=12, 1), None).unwrap();
    s.append(&entries(5..=6, 2), None).unwrap();
    s.save_snapshot(&snapshot(6, 2)).unwrap();
    // Segment 3 is covered by the snapshot but segment 2 is not: deleting 3 alone
    // would resurrect 7..=12 of term 1.
    let names = segments(dir.path());
    assert!(names.contains(&format!("{:016x}.wal", 3)), "{names:?}");
    assert!(!names.contains(&format!("{:016x}.wal", 1)), "{names:?}");
    drop(s);
    let (_, rec) = open_with(dir.path(), &fs, 1);
    assert_eq!(rec.snapshot, Some(snapshot(6, 2)));
    assert_eq!(rec.entries, vec![]);
}

/// A snapshot streamed into its file and committed is saved like one handed over
/// whole: same compaction, same recovery, and its data comes back from the file.
#[test]
fn streamed_snapshot_commits_like_a_saved_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 2), Some(&hs(2, Some(1), 8))).unwrap();
    let written = stream_snapshot(|meta, len| s.snapshot_file(meta, len), &snapshot(6, 2)).unwrap();
    assert_eq!(written.meta(), &snapshot(6, 2).meta);
    let saved = s.commit_snapshot(written).unwrap();
    assert_eq!(saved, snapshot(6, 2));
    assert_eq!((s.snapshot_index(), s.last_index()), (6, 10));
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(6, 2)));
    assert_eq!(rec.entries, entries(7..=10, 2));
}

/// Committing a streamed snapshot that is not newer is refused like a save, its file
/// is deleted, and the storage goes on.
#[test]
fn streamed_older_snapshot_is_refused_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=5, 1), None).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    let written = stream_snapshot(|meta, len| s.snapshot_file(meta, len), &snapshot(3, 1)).unwrap();
    let err = s.commit_snapshot(written).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    assert_eq!(sorted_names(&dir.path().join("snap")), [format!("{:016x}-{:016x}.snap", 4, 1)]);
    s.append(&entries(6..=6, 1), None).unwrap();
}

/// Saving the current snapshot again is allowed; one at its index with another term is
/// not newer, and is refused.
#[test]
fn a_snapshot_at_the_current_index_is_accepted_only_with_its_term() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=5, 1), None).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    let err = s.save_snapshot(&snapshot(4, 2)).unwrap_err();
    assert!(err.to_string().contains("not newer than the current one at index 4 term 1"), "{err}");
    drop(s);
    let (_, rec) = open(dir.path());
    assert_eq!((rec.snapshot, rec.entries), (Some(snapshot(4, 1)), entries(5..=5, 1)));
}

/// A crash between a snapshot's rename and its marker: the decision taken at open
/// compares the snapshot's term with that of the entry at its index, not with the
/// terms of the entries after it.
#[test]
fn crash_before_the_marker_decides_by_the_term_at_the_snapshot_index() {
    let src = tempfile::tempdir().unwrap();
    let (mut s, _) = open(src.path());
    s.append(&entries(1..=8, 1), None).unwrap();
    s.append(&entries(9..=10, 2), None).unwrap();
    drop(s);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(src.path(), crashed.path());
    let (mut s, _) = open(src.path());
    s.save_snapshot(&snapshot(8, 1)).unwrap();
    let name = snap_name(8, 1);
    fs::copy(src.path().join("snap").join(&name), crashed.path().join("snap").join(&name)).unwrap();
    let (_, rec) = open(crashed.path());
    assert_eq!(rec.snapshot, Some(snapshot(8, 1)));
    assert_eq!(rec.entries, entries(9..=10, 2), "entry 8 has the snapshot's term: the suffix stays");
}

/// A WAL marker of a snapshot whose file is gone is an error, even when a snapshot
/// refused earlier at the index recovered on left its evidence: only a snapshot lost
/// above that index relaxes replay.
#[test]
fn a_missing_newer_snapshot_is_an_error_even_beside_evidence_at_the_recovered_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    s.save_snapshot(&snapshot(8, 1)).unwrap();
    drop(s);
    let snap_dir = dir.path().join("snap");
    fs::remove_file(snap_dir.join(snap_name(8, 1))).unwrap();
    for evidence in [None, Some(format!("corrupt-{}", snap_name(4, 1)))] {
        if let Some(name) = &evidence {
            fs::write(snap_dir.join(name), b"refused at an earlier open").unwrap();
        }
        let err = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap_err();
        assert!(err.to_string().contains("newer than the newest snapshot file (index 4)"), "{evidence:?}: {err}");
    }
}

/// Entries 1..=10 of term 1, snapshots at 4 and 8, then `after` appended, then the
/// snapshot at 8 corrupted: what the reopen recovers over the snapshot at 4.
fn recover_over_a_lost_snapshot(after: &[raftkv_raft::Entry]) -> raftkv_raft::Recovered {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), None).unwrap();
    s.save_snapshot(&snapshot(4, 1)).unwrap();
    s.save_snapshot(&snapshot(8, 1)).unwrap();
    s.append(after, None).unwrap();
    drop(s);
    flip_bit(&dir.path().join("snap").join(snap_name(8, 1)), 30, 2);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)));
    rec
}

/// After a lost snapshot's marker, entries above its index continue the log; entries
/// at or below it were not kept when written (below that snapshot's base), so they
/// cannot be placed, and nothing after them is either.
#[test]
fn replay_over_a_lost_snapshot_places_only_the_entries_above_it() {
    let rec = recover_over_a_lost_snapshot(&entries(11..=12, 1));
    assert_eq!(rec.entries, entries(5..=12, 1));
    let rec = recover_over_a_lost_snapshot(&entries(6..=9, 2));
    assert_eq!(rec.entries, vec![], "6..=8 were not kept when written, so 9 has nothing to follow");
}

/// The only snapshot is lost, and it had discarded the log (its term did not match):
/// the discarded entries do not come back.
#[test]
fn a_lost_snapshot_that_discarded_the_log_leaves_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&entries(1..=10, 1), Some(&hs(3, Some(2), 0))).unwrap();
    s.save_snapshot(&snapshot(8, 3)).unwrap();
    drop(s);
    flip_bit(&dir.path().join("snap").join(snap_name(8, 3)), 30, 2);
    let (_, rec) = open(dir.path());
    assert_eq!((rec.snapshot, rec.entries), (None, vec![]));
    assert_eq!(rec.hard_state, hs(3, Some(2), 0));
}
