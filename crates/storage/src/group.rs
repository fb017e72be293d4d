//! Group commit: one writer thread turns many concurrent requests into one write and
//! one fsync per batch. A caller with nothing to do while its write is made durable can
//! make it on its own thread instead ([`GroupCommitWriter::write_here`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use raftkv_raft::{Entry, HardState, Snapshot, SnapshotMeta};

use crate::disk::Counters;
use crate::error::StorageError;
use crate::snap::{SnapDir, SnapshotFile, WrittenSnapshot};
use crate::storage::{DiskStorage, StorageStats};

/// Entries and/or a hard state to persist together (see [`DiskStorage::append`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteRequest {
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

/// What the batch that carried a request cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub requests_in_batch: usize,
    /// Entries written by the whole batch.
    pub entries: usize,
    /// Bytes written by the whole batch.
    pub bytes: u64,
    pub fsync_duration: Duration,
}

/// Called on the writer thread once the request is durable (or failed). It must not
/// panic or block on the writer (for instance by submitting to a full queue).
pub type WriteCallback = Box<dyn FnOnce(Result<BatchReport, StorageError>) + Send>;
/// Called on the writer thread once a snapshot is saved and the WAL compacted.
pub type SnapshotCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
/// Called on the writer thread once a streamed snapshot is saved and the WAL compacted,
/// with the snapshot as saved (see [`DiskStorage::commit_snapshot`]).
pub type CommitCallback = Box<dyn FnOnce(Result<Snapshot, StorageError>) + Send>;

/// Limits of the group-commit writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitOptions {
    /// Requests that may wait in the queue; a full queue blocks `submit`.
    pub queue_capacity: usize,
    /// At most this many requests per batch.
    pub max_batch_requests: usize,
    /// A batch stops taking requests once its entry bytes reach this.
    pub max_batch_bytes: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions { queue_capacity: 1024, max_batch_requests: 1024, max_batch_bytes: 16 << 20 }
    }
}

enum Job {
    Write(WriteRequest, WriteCallback),
    Snapshot(Snapshot, SnapshotCallback),
    Commit(WrittenSnapshot, CommitCallback),
}

impl Job {
    /// Answers the job with `error` without doing it (a written snapshot's file is
    /// removed).
    fn fail(self, error: StorageError, snaps: &SnapDir) {
        match self {
            Job::Write(_, done) => done(Err(error)),
            Job::Snapshot(_, done) => done(Err(error)),
            Job::Commit(written, done) => {
                snaps.discard(written);
                done(Err(error))
            }
        }
    }
}

/// Owns a [`DiskStorage`] on a dedicated thread and commits requests in batches.
///
/// After a failed write or fsync the writer fails that batch and every later request:
/// the files' state is unknown, so it never reports success again.
pub struct GroupCommitWriter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Locked by the writer thread for each batch and by [`Self::write_here`].
    storage: Option<Arc<Mutex<DiskStorage>>>,
    /// Jobs sent to the writer thread and not finished yet.
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    /// Where [`snapshot_file`](Self::snapshot_file) starts files, off the writer thread.
    snaps: SnapDir,
}

impl GroupCommitWriter {
    /// Starts the writer thread.
    pub fn spawn(storage: DiskStorage, opts: GroupCommitOptions) -> Result<Self, StorageError> {
        if opts.max_batch_requests == 0 {
            return Err(StorageError::invalid("max_batch_requests must be positive"));
        }
        let (tx, rx) = sync_channel(opts.queue_capacity);
        let counters = storage.counters();
        let snaps = storage.snap_dir_handle();
        let wal_dir = storage.wal_dir().to_path_buf();
        let storage = Arc::new(Mutex::new(storage));
        let queued = Arc::new(AtomicUsize::new(0));
        let (theirs, their_queued, their_snaps) = (storage.clone(), queued.clone(), snaps.clone());
        let thread = thread::Builder::new()
            .name("raftkv-wal".into())
            .spawn(move || run(&theirs, &their_queued, &their_snaps, &rx, opts))
            .map_err(|e| StorageError::io("spawn writer thread", wal_dir, e))?;
        Ok(GroupCommitWriter { tx: Some(tx), thread: Some(thread), storage: Some(storage), queued, counters, snaps })
    }

    /// Makes `request` durable on the calling thread, which blocks until it is (or
    /// failed), after every job submitted before it. For a caller that has nothing to
    /// do meanwhile: it spares the hand-off to the writer thread and the wake-up back,
    /// which on a busy machine take longer than a fast fsync. Concurrent callers'
    /// requests are not batched together this way: they take turns.
    pub fn write_here(&self, request: WriteRequest) -> Result<BatchReport, StorageError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let done: WriteCallback = Box::new(move |result| {
            let _ = tx.send(result);
        });
        let storage = self.storage.as_ref().ok_or(StorageError::Closed)?;
        // Why the writer thread when jobs are queued: they must reach the disk first.
        if self.queued.load(Ordering::Acquire) > 0 {
            self.submit(request, done);
        } else {
            commit_batch(&mut *lock(storage)?, vec![(request, done)]);
        }
        rx.recv().unwrap_or(Err(StorageError::Closed))
    }

    /// Queues `request`; `done` runs once it is durable. Blocks while the queue is
    /// full (backpressure). If the writer is gone, `done` gets [`StorageError::Closed`]
    /// at once.
    pub fn submit(&self, request: WriteRequest, done: WriteCallback) {
        self.send(Job::Write(request, done));
    }

    /// Queues a snapshot save behind the requests already submitted.
    pub fn save_snapshot(&self, snapshot: Snapshot, done: SnapshotCallback) {
        self.send(Job::Snapshot(snapshot, done));
    }

    /// Starts a snapshot file on the calling thread (see [`DiskStorage::snapshot_file`]):
    /// the caller streams the data into it, then hands it to
    /// [`commit_snapshot`](Self::commit_snapshot).
    pub fn snapshot_file(&self, meta: SnapshotMeta, data_len: u64) -> Result<SnapshotFile, StorageError> {
        self.snaps.create(meta, data_len)
    }

    /// Queues the fsync, rename, WAL marker and compaction of a written snapshot file
    /// behind the requests already submitted (see [`DiskStorage::commit_snapshot`]).
    pub fn commit_snapshot(&self, written: WrittenSnapshot, done: CommitCallback) {
        self.send(Job::Commit(written, done));
    }

    fn send(&self, job: Job) {
        let tx = self.tx.as_ref().expect("the sender lives until shutdown");
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(rejected) = tx.send(job) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            rejected.0.fail(StorageError::Closed, &self.snaps);
        }
    }

    /// Totals of the underlying storage.
    pub fn stats(&self) -> StorageStats {
        StorageStats::from_counters(&self.counters)
    }

    /// Writes everything already queued, stops the thread and returns the storage.
    pub fn shutdown(mut self) -> Result<DiskStorage, StorageError> {
        self.stop()
            .ok_or_else(|| StorageError::Failed { reason: "the writer thread panicked (a callback panicked?)".into() })
    }

    fn stop(&mut self) -> Option<DiskStorage> {
        // Why dropping the sender is enough: the thread drains every queued job before
        // `recv` reports the disconnection.
        drop(self.tx.take());
        self.thread.take()?.join().ok()?;
        // The thread is gone, and its handle on the storage with it.
        Arc::try_unwrap(self.storage.take()?).ok()?.into_inner().ok()
    }
}

impl std::fmt::Debug for GroupCommitWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitWriter").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Drop for GroupCommitWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The storage, or why it cannot be had: a callback panicked while it was locked.
fn lock(storage: &Mutex<DiskStorage>) -> Result<MutexGuard<'_, DiskStorage>, StorageError> {
    storage.lock().map_err(|_| StorageError::Failed { reason: "a storage writer callback panicked".into() })
}

/// The writer thread: one batch per iteration until every sender is gone.
fn run(
    storage: &Mutex<DiskStorage>,
    queued: &AtomicUsize,
    snaps: &SnapDir,
    rx: &Receiver<Job>,
    opts: GroupCommitOptions,
) {
    let mut carried = None;
    loop {
        let job = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut storage = match lock(storage) {
            Ok(storage) => storage,
            Err(e) => return fail_all(job, rx, &e, snaps),
        };
        let jobs = match job {
            Job::Snapshot(snapshot, done) => {
                done(storage.save_snapshot(&snapshot));
                1
            }
            Job::Commit(written, done) => {
                done(storage.commit_snapshot(written));
                1
            }
            Job::Write(request, done) => {
                let (batch, next) = collect_batch((request, done), rx, &opts);
                carried = next;
                let n = batch.len();
                commit_batch(&mut storage, batch);
                n
            }
        };
        drop(storage);
        queued.fetch_sub(jobs, Ordering::AcqRel);
    }
}

/// After a callback panicked with the storage locked: `job` and every later one fail
/// with `error`.
fn fail_all(job: Job, rx: &Receiver<Job>, error: &StorageError, snaps: &SnapDir) {
    for job in std::iter::once(job).chain(rx.iter()) {
        job.fail(error.clone(), snaps);
    }
}

/// Takes `first` plus every write already queued, within the limits. A snapshot job
/// ends the batch and is returned, to run after it (keeping submission order).
fn collect_batch(
    first: (WriteRequest, WriteCallback),
    rx: &Receiver<Job>,
    opts: &GroupCommitOptions,
) -> (Vec<(WriteRequest, WriteCallback)>, Option<Job>) {
    let mut bytes = request_bytes(&first.0);
    let mut batch = vec![first];
    while batch.len() < opts.max_batch_requests && bytes < opts.max_batch_bytes {
        match rx.try_recv() {
            Ok(Job::Write(request, done)) => {
                bytes += request_bytes(&request);
                batch.push((request, done));
            }
            Ok(job @ (Job::Snapshot(..) | Job::Commit(..))) => return (batch, Some(job)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    (batch, None)
}

fn request_bytes(request: &WriteRequest) -> usize {
    request.entries.iter().map(Entry::size).sum::<usize>() + 24
}

/// Writes a batch with one fsync, then calls every callback in order.
fn commit_batch(storage: &mut DiskStorage, batch: Vec<(WriteRequest, WriteCallback)>) {
    let requests: Vec<_> = batch.iter().map(|(r, _)| (r.entries.as_slice(), r.hard_state)).collect();
    let (results, write) = storage.append_batch(&requests);
    drop(requests);
    debug_assert_eq!(results.len(), batch.len());
    let report = write.map(|stats| BatchReport {
        requests_in_batch: batch.len(),
        entries: batch.iter().map(|(r, _)| r.entries.len()).sum(),
        bytes: stats.bytes,
        fsync_duration: stats.fsync_duration,
    });
    for ((_, done), result) in batch.into_iter().zip(results) {
        done(result.and_then(|()| report.clone()));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use raftkv_raft::EntryKind;

    use super::*;

    fn write(index: u64) -> (WriteRequest, WriteCallback) {
        let entry = Entry { index, term: 1, kind: EntryKind::Command, data: Bytes::from_static(b"0123456789") };
        (WriteRequest { entries: vec![entry], hard_state: None }, Box::new(|_| ()))
    }

    /// The first write of a batch, and a queue holding `queued` more.
    fn first_and_queue(queued: u64) -> ((WriteRequest, WriteCallback), Receiver<Job>) {
        let (tx, rx) = sync_channel(16);
        for i in 2..=queued + 1 {
            let (request, done) = write(i);
            tx.send(Job::Write(request, done)).unwrap();
        }
        (write(1), rx)
    }

    #[test]
    fn request_bytes_are_the_entry_sizes_plus_a_fixed_overhead() {
        assert_eq!(request_bytes(&WriteRequest::default()), 24);
        let two = WriteRequest { entries: vec![write(1).0.entries[0].clone(); 2], hard_state: None };
        assert_eq!(request_bytes(&two), 2 * (10 + 24) + 24);
    }

    #[test]
    fn a_batch_takes_at_most_max_batch_requests() {
        let (first, rx) = first_and_queue(5);
        let opts = GroupCommitOptions { max_batch_requests: 3, ..GroupCommitOptions::default() };
        let (batch, next) = collect_batch(first, &rx, &opts);
        assert_eq!(batch.len(), 3);
        assert!(next.is_none());
        assert_eq!(rx.try_iter().count(), 3, "the rest stays queued");
    }

    #[test]
    fn a_batch_stops_once_its_bytes_reach_max_batch_bytes() {
        let one = request_bytes(&write(1).0);
        for (max_batch_bytes, expected) in [(3 * one, 3), (3 * one + 1, 4), (1, 1)] {
            let (first, rx) = first_and_queue(5);
            let opts = GroupCommitOptions { max_batch_bytes, ..GroupCommitOptions::default() };
            let (batch, _) = collect_batch(first, &rx, &opts);
            assert_eq!(batch.len(), expected, "max_batch_bytes {max_batch_bytes}, {one} bytes per request");
        }
    }
}
