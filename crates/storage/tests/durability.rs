//! Fsync policy, failing disks, and group commit.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use common::*;
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{
    BatchReport, DiskStorage, FsyncPolicy, GroupCommitOptions, GroupCommitWriter, StorageError, StorageOptions,
    WriteRequest,
};

fn request(index: u64) -> WriteRequest {
    WriteRequest { entries: entries(index..=index, 1), hard_state: Some(hs(1, Some(1), index.saturating_sub(1))) }
}

/// A writer on a disk whose faults the returned handle switches on.
fn writer_on_a_faulty_disk(dir: &std::path::Path) -> (FaultyFs, GroupCommitWriter) {
    let fs = FaultyFs::new();
    let (s, _) = open_with(dir, &fs, 1 << 20);
    (fs, GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap())
}

/// A writer whose every fsync takes 20 ms longer.
fn writer_on_a_slow_disk(dir: &std::path::Path) -> GroupCommitWriter {
    let (fs, writer) = writer_on_a_faulty_disk(dir);
    fs.set_fsync_delay(Duration::from_millis(20));
    writer
}

/// Submits and waits for the result.
fn submit_wait(writer: &GroupCommitWriter, req: WriteRequest) -> Result<BatchReport, StorageError> {
    let (tx, rx) = mpsc::channel();
    writer.submit(req, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

#[test]
fn always_fsyncs_before_returning() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = DiskStorage::open(dir.path(), options(&fs, FsyncPolicy::Always, 1 << 20)).unwrap();
    let before = fs.counts().file_syncs;
    let stats = s.append(&entries(1..=3, 1), Some(&hs(1, None, 0))).unwrap();
    assert!(stats.fsynced);
    assert!(stats.bytes > 0);
    assert_eq!(fs.counts().file_syncs, before + 1, "exactly one fsync for one append");
    assert_eq!(s.stats().fsyncs, fs.counts().file_syncs);
    assert_eq!(s.stats().dir_fsyncs, fs.counts().dir_syncs);
}

#[test]
fn opening_fsyncs_the_directory_its_parent_and_the_new_wal_directory() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    // The parent too: the data directory itself may have just been created.
    let (s, _) = DiskStorage::open(&dir.path().join("node"), options(&fs, FsyncPolicy::Always, 1 << 20)).unwrap();
    assert_eq!(fs.counts().dir_syncs, 3, "node/, its parent and node/wal/ (just created)");
    assert_eq!(s.stats().dir_fsyncs, 3);
}

#[test]
fn records_written_counts_each_record_of_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let records = |s: &DiskStorage| s.stats().records_written;
    let before = records(&s);
    s.append(&entries(1..=3, 1), Some(&hs(1, None, 0))).unwrap();
    assert_eq!(records(&s), before + 2, "the entries are one record, the hard state another");
    s.append(&entries(4..=4, 1), None).unwrap();
    assert_eq!(records(&s), before + 3);
    s.append(&[], Some(&hs(1, None, 4))).unwrap();
    assert_eq!(records(&s), before + 4);
}

#[test]
fn never_policy_performs_no_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = DiskStorage::open(dir.path(), options(&fs, FsyncPolicy::Never, 100)).unwrap();
    for i in 1..=10 {
        let stats = s.append(&entries(i..=i, 1), Some(&hs(1, None, i))).unwrap();
        assert!(!stats.fsynced);
    }
    s.save_snapshot(&snapshot(5, 1)).unwrap();
    assert!(segments(dir.path()).len() > 1, "rolled over at least once");
    assert_eq!(
        (fs.counts().file_syncs, fs.counts().dir_syncs),
        (0, 0),
        "no file or directory fsync reached the file system"
    );
    assert_eq!((s.stats().fsyncs, s.stats().dir_fsyncs), (0, 0));
    assert!(s.stats().records_written >= 21);
    drop(s);
    let (_, rec) = DiskStorage::open(dir.path(), options(&fs, FsyncPolicy::Never, 100)).unwrap();
    assert_eq!(rec.entries, entries(6..=10, 1));
}

#[test]
fn failed_fsync_fails_the_append_and_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1 << 20);
    s.append(&entries(1..=1, 1), None).unwrap();
    fs.fail_all_fsyncs();
    let err = s.append(&entries(2..=2, 1), None).unwrap_err();
    assert!(matches!(&err, StorageError::Io { op: "fsync", .. }), "{err}");
    // The disk "recovers", but the file state is unknown: nothing may succeed.
    fs.heal();
    let err = s.append(&entries(2..=2, 1), None).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("fsync"), "names the first failure: {err}");
    assert!(matches!(s.save_snapshot(&snapshot(1, 1)), Err(StorageError::Failed { .. })));
}

#[test]
fn failed_write_poisons_too() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let (mut s, _) = open_with(dir.path(), &fs, 1 << 20);
    s.append(&entries(1..=1, 1), None).unwrap();
    fs.short_all_writes();
    let err = s.append(&entries(2..=3, 1), None).unwrap_err();
    assert!(matches!(&err, StorageError::Io { op: "write", .. }), "{err}");
    fs.heal();
    assert!(matches!(s.append(&entries(2..=2, 1), None), Err(StorageError::Failed { .. })));
    drop(s);
    // The half-written record is a torn tail: recovery keeps what was acknowledged.
    let (_, rec) = open(dir.path());
    assert_eq!(rec.entries, entries(1..=1, 1));
}

#[test]
fn group_commit_batches_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    fs.set_fsync_delay(Duration::from_millis(5));
    let (s, _) = open_with(dir.path(), &fs, 1 << 20);
    let writer = GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap();
    let fsyncs_before = writer.stats().fsyncs;
    let (threads, per_thread) = (4, 25);
    // Indices must reach the queue in order, so each is allocated and submitted under
    // one lock; the fsync delay lets requests pile up behind a batch meanwhile.
    let next_index = Mutex::new(1u64);
    let (tx, rx) = mpsc::channel();
    thread::scope(|scope| {
        for _ in 0..threads {
            let (writer, next_index, tx) = (&writer, &next_index, tx.clone());
            scope.spawn(move || {
                for _ in 0..per_thread {
                    let mut next = next_index.lock().unwrap();
                    let tx = tx.clone();
                    writer.submit(request(*next), Box::new(move |r| tx.send(r).unwrap()));
                    *next += 1;
                }
            });
        }
    });
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    let requests = threads * per_thread;
    assert_eq!(results.len(), requests as usize);
    for r in &results {
        let report = r.as_ref().expect("every request succeeds");
        assert!(report.requests_in_batch >= 1 && report.bytes > 0);
    }
    let fsyncs = writer.stats().fsyncs - fsyncs_before;
    assert!(fsyncs < requests, "{fsyncs} fsyncs for {requests} requests");
    assert!(results.iter().any(|r| r.as_ref().unwrap().requests_in_batch > 1));
    drop(writer.shutdown().unwrap());

    let (_, rec) = open(dir.path());
    assert_eq!(rec.entries, entries(1..=requests, 1));
    assert_eq!(rec.hard_state, hs(1, Some(1), requests - 1));
}

#[test]
fn group_commit_fails_the_batch_and_every_later_request_after_a_failed_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, writer) = writer_on_a_faulty_disk(dir.path());
    submit_wait(&writer, request(1)).unwrap();

    fs.fail_all_fsyncs();
    let err = submit_wait(&writer, request(2)).unwrap_err();
    assert!(matches!(&err, StorageError::Io { op: "fsync", .. }), "{err}");
    fs.heal();
    for i in 2..5 {
        let err = submit_wait(&writer, request(i)).unwrap_err();
        assert!(matches!(err, StorageError::Failed { .. }), "{err}");
    }
    let (tx, rx) = mpsc::channel();
    writer.save_snapshot(snapshot(1, 1), Box::new(move |r| tx.send(r).unwrap()));
    assert!(matches!(rx.recv().unwrap(), Err(StorageError::Failed { .. })));
}

#[test]
fn group_commit_invalid_request_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let writer = GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap();
    submit_wait(&writer, request(1)).unwrap();
    let err = submit_wait(&writer, request(5)).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    submit_wait(&writer, request(2)).unwrap();
    drop(writer);
    assert_eq!(open(dir.path()).1.entries, entries(1..=2, 1));
}

#[test]
fn group_commit_saves_snapshots_in_order_and_flushes_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let opts = GroupCommitOptions { queue_capacity: 2, ..GroupCommitOptions::default() };
    let writer = GroupCommitWriter::spawn(s, opts).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 1..=6 {
        let tx = tx.clone();
        writer.submit(request(i), Box::new(move |r| tx.send(r.map(|_| ())).unwrap()));
    }
    let snap_tx = tx.clone();
    writer.save_snapshot(snapshot(4, 1), Box::new(move |r| snap_tx.send(r).unwrap()));
    for i in 7..=8 {
        let tx = tx.clone();
        writer.submit(request(i), Box::new(move |r| tx.send(r.map(|_| ())).unwrap()));
    }
    drop(writer); // flushes and joins
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len(), 9);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)));
    assert_eq!(rec.entries, entries(5..=8, 1));
}

/// A snapshot file streamed on the caller's thread is committed in submission order,
/// behind the writes queued before it, and comes back as saved.
#[test]
fn group_commit_commits_a_streamed_snapshot_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let writer = GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 1..=6 {
        let tx = tx.clone();
        writer.submit(request(i), Box::new(move |r| tx.send(r.map(|_| ())).unwrap()));
    }
    let written = stream_snapshot(|meta, len| writer.snapshot_file(meta, len), &snapshot(4, 1)).unwrap();
    let (snap_tx, snap_rx) = mpsc::channel();
    writer.commit_snapshot(written, Box::new(move |r| snap_tx.send(r).unwrap()));
    assert_eq!(snap_rx.recv().unwrap().unwrap(), snapshot(4, 1));
    drop(tx);
    assert_eq!(rx.iter().filter(Result::is_ok).count(), 6, "the writes before it were done first");
    drop(writer);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(snapshot(4, 1)));
    assert_eq!(rec.entries, entries(5..=6, 1));
}

#[test]
fn group_commit_stats_are_the_storage_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let opened = s.stats();
    assert!(opened.fsyncs > 0, "the open wrote and fsynced the first segment's header");
    let writer = GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap();
    assert_eq!(writer.stats(), opened);
    submit_wait(&writer, request(1)).unwrap();
    let stats = writer.stats();
    assert_eq!((stats.fsyncs, stats.records_written), (opened.fsyncs + 1, opened.records_written + 2));
    assert_eq!(writer.shutdown().unwrap().stats(), stats);
}

/// Dropping the writer shuts it down: every queued request is done when drop returns.
#[test]
fn dropping_the_writer_waits_for_the_queued_requests() {
    let dir = tempfile::tempdir().unwrap();
    // A slow disk: the writer is still busy when drop is called.
    let writer = writer_on_a_slow_disk(dir.path());
    let done = Arc::new(AtomicUsize::new(0));
    for i in 1..=3 {
        let done = done.clone();
        let count = move |r: Result<BatchReport, StorageError>| {
            if r.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        };
        writer.submit(request(i), Box::new(count));
    }
    drop(writer);
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

#[test]
fn debug_output_shows_the_settings_and_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { segment_size: 4096, zero_fill_bytes: 512, ..StorageOptions::default() };
    let shown = format!("{opts:?}");
    assert!(shown.starts_with("StorageOptions") && shown.contains("segment_size: 4096"), "{shown}");
    assert!(shown.contains("zero_fill_bytes: 512"), "{shown}");
    let (mut s, _) = DiskStorage::open(dir.path(), opts).unwrap();
    s.append(&entries(1..=2, 1), None).unwrap();
    let shown = format!("{s:?}");
    assert!(shown.starts_with("DiskStorage") && shown.contains("last_index: 2"), "{shown}");
    let writer = GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap();
    let shown = format!("{writer:?}");
    assert!(shown.starts_with("GroupCommitWriter") && shown.contains("records_written"), "{shown}");
}

/// A write made on the caller's thread is as durable as a queued one, and the two kinds
/// mix in order.
#[test]
fn write_here_is_durable_and_mixes_with_queued_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let writer = GroupCommitWriter::spawn(s, GroupCommitOptions::default()).unwrap();
    let fsyncs = writer.stats().fsyncs;
    let report = writer.write_here(request(1)).unwrap();
    assert_eq!((report.requests_in_batch, report.entries), (1, 1));
    assert_eq!(writer.stats().fsyncs, fsyncs + 1, "fsynced before returning");
    submit_wait(&writer, request(2)).unwrap();
    writer.write_here(request(3)).unwrap();
    drop(writer.shutdown().unwrap());
    let (_, rec) = open(dir.path());
    assert_eq!(rec.entries, entries(1..=3, 1));
    assert_eq!(rec.hard_state, hs(1, Some(1), 2));
}

/// Jobs submitted before a write made on the caller's thread reach the disk first: a
/// write that overtook them would leave a gap in the log and be refused.
#[test]
fn write_here_waits_for_the_jobs_queued_before_it() {
    let dir = tempfile::tempdir().unwrap();
    // A slow disk keeps the queued writes waiting when write_here is called.
    let writer = writer_on_a_slow_disk(dir.path());
    let (tx, rx) = mpsc::channel();
    for i in 1..=3 {
        let tx = tx.clone();
        writer.submit(request(i), Box::new(move |r| tx.send(r.map(|_| ())).unwrap()));
    }
    writer.write_here(request(4)).expect("written after 1..=3");
    drop(tx);
    assert_eq!(rx.iter().filter(Result::is_ok).count(), 3);
    drop(writer);
    assert_eq!(open(dir.path()).1.entries, entries(1..=4, 1));
}

/// A failed fsync on the caller's thread fails the writer for good, as one on the
/// writer thread does.
#[test]
fn write_here_after_a_failed_fsync_fails_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, writer) = writer_on_a_faulty_disk(dir.path());
    writer.write_here(request(1)).unwrap();
    fs.fail_all_fsyncs();
    let err = writer.write_here(request(2)).unwrap_err();
    assert!(matches!(&err, StorageError::Io { op: "fsync", .. }), "{err}");
    fs.heal();
    let err = writer.write_here(request(2)).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
    let err = submit_wait(&writer, request(2)).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
}
