//! Background writes of the Raft log. The Raft loop hands a Ready's entries and hard
//! state to the group-commit writer and goes on (stepping acknowledgements, taking new
//! proposals, sending AppendEntries) while the fsync runs; the Ready's
//! `persisted_messages` (a follower's acknowledgements) leave only once that write, and
//! every write before it, is durable.
//!
//! Writes complete in the order they were submitted (the writer is one FIFO thread), and
//! the queue here releases in that order too, so a later Ready's acknowledgement can
//! never overtake an earlier Ready's entries.

use std::collections::VecDeque;

use raftkv_raft::{Index, Message, Term};
use raftkv_storage::{BatchReport, StorageError};
use raftkv_telemetry::opentelemetry::trace::SpanContext;
use tokio::sync::mpsc;

/// Writes one node may have in flight; a Ready beyond that is written synchronously.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// A write's outcome, from the writer thread to the Raft loop.
pub(crate) struct Completion {
    pub seq: u64,
    pub result: Result<BatchReport, StorageError>,
}

/// What a write carries besides its bytes: what to do once it is durable.
pub(crate) struct AfterWrite {
    /// The last entry written, for [`raftkv_raft::RawNode::persisted`].
    pub last_entry: Option<(Index, Term)>,
    pub messages: Vec<Message>,
    /// For the `storage.fsync` span: entries of this write, whether it held a hard
    /// state, and the traced work that rode on it.
    pub entries: u64,
    pub hard_state: bool,
    pub traced: Vec<SpanContext>,
}

struct Queued {
    /// `None` for a Ready that needed no write (it still waits behind earlier ones).
    seq: Option<u64>,
    report: Option<BatchReport>,
    after: AfterWrite,
}

/// A released write: durable, and every write before it too.
pub(crate) struct Durable {
    pub report: Option<BatchReport>,
    pub after: AfterWrite,
}

pub(crate) struct BackgroundWrites {
    queue: VecDeque<Queued>,
    next_seq: u64,
    done_tx: mpsc::UnboundedSender<Completion>,
}

impl BackgroundWrites {
    /// The receiver gets every completion; pass each to [`BackgroundWrites::complete`].
    pub fn new() -> (BackgroundWrites, mpsc::UnboundedReceiver<Completion>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        (BackgroundWrites { queue: VecDeque::new(), next_seq: 0, done_tx }, done_rx)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= MAX_IN_FLIGHT
    }

    /// Queues a submitted write; returns the callback the writer calls when done.
    pub fn push_write(&mut self, after: AfterWrite) -> raftkv_storage::WriteCallback {
        assert!(!self.is_full(), "at most {MAX_IN_FLIGHT} writes in flight");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Queued { seq: Some(seq), report: None, after });
        let tx = self.done_tx.clone();
        Box::new(move |result| {
            // The loop may have stopped; then nothing waits for the outcome.
            let _ = tx.send(Completion { seq, result });
        })
    }

    /// Queues what needs no write of its own but must wait for the writes before it.
    /// Returns it at once when nothing is in flight.
    pub fn push_nothing(&mut self, after: AfterWrite) -> Option<Durable> {
        if self.queue.is_empty() {
            return Some(Durable { report: None, after });
        }
        assert!(!self.is_full(), "at most {MAX_IN_FLIGHT} writes in flight");
        self.queue.push_back(Queued { seq: None, report: None, after });
        None
    }

    /// Records a completion; returns the writes now released, oldest first. A failed
    /// write is an error: nothing after it may be released.
    pub fn complete(&mut self, done: Completion) -> Result<Vec<Durable>, StorageError> {
        let report = done.result?;
        let entry = self.queue.iter_mut().find(|q| q.seq == Some(done.seq));
        let entry = entry.expect("a completion for a queued write");
        assert!(entry.report.is_none(), "write {} completed twice", done.seq);
        entry.report = Some(report);
        let mut released = Vec::new();
        while let Some(front) = self.queue.front()
            && (front.seq.is_none() || front.report.is_some())
        {
            let q = self.queue.pop_front().expect("checked");
            released.push(Durable { report: q.report, after: q.after });
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn after(last: Index) -> AfterWrite {
        AfterWrite { last_entry: Some((last, 1)), messages: Vec::new(), entries: 1, hard_state: false, traced: vec![] }
    }

    fn report() -> BatchReport {
        BatchReport { requests_in_batch: 1, entries: 1, bytes: 10, fsync_duration: Duration::ZERO }
    }

    fn last_entries(d: &[Durable]) -> Vec<Index> {
        d.iter().map(|d| d.after.last_entry.expect("set").0).collect()
    }

    #[tokio::test]
    async fn writes_are_released_in_submission_order_only() {
        let (mut bw, mut rx) = BackgroundWrites::new();
        let first = bw.push_write(after(1));
        let second = bw.push_write(after(2));
        assert!(bw.push_nothing(after(3)).is_none(), "waits behind the writes in flight");
        second(Ok(report()));
        let done = bw.complete(rx.recv().await.unwrap()).unwrap();
        assert!(done.is_empty(), "the second write waits for the first");
        first(Ok(report()));
        let done = bw.complete(rx.recv().await.unwrap()).unwrap();
        assert_eq!(last_entries(&done), vec![1, 2, 3]);
        assert!(bw.is_empty());
        assert!(bw.push_nothing(after(4)).is_some(), "nothing in flight: released at once");
    }

    #[tokio::test]
    async fn a_failed_write_releases_nothing() {
        let (mut bw, mut rx) = BackgroundWrites::new();
        let first = bw.push_write(after(1));
        first(Err(StorageError::Closed));
        assert!(bw.complete(rx.recv().await.unwrap()).is_err());
    }
}
