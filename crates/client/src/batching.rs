//! [`BatchingConnection`]: many callers' writes and reads over one connection,
//! coalesced into `batch` RPCs ([`raftkv_rpc::RaftKv::batch`]), as TiKV's clients
//! coalesce theirs into batch commands.
//!
//! How: an operation that finds fewer than `max_in_flight` batches on their way leaves
//! at once, in a batch with whatever else waits; otherwise it waits for the next batch,
//! which leaves the moment one comes back. So a lone caller never waits for company
//! (its batch holds one operation), and under load a batch holds what arrived during
//! one round trip, up to [`MAX_BATCH_OPS`]. There is no timer: nothing waits for a
//! batch to fill.
//!
//! Each operation keeps its own answer: batching changes the frames, not what the
//! server does with each operation (its own log entry, its own result).
//!
//! What it must never do: retry or look for the leader (it is a transport for callers
//! that do that themselves, such as the benchmark), or report an operation whose batch
//! failed as anything but an error: when the RPC fails, or no answer comes within
//! the caller's timeout, a write's outcome is unknown, and the error says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use raftkv_rpc::tarpc::context;
use raftkv_rpc::{BatchOp, BatchOpReply, MAX_BATCH_OPS, RaftKvClient, RequestError};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Why one operation of a [`BatchingConnection`] has no answer from the server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchCallError {
    /// The server answered this operation with an error.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The batch's RPC failed (the connection broke, its deadline passed): a write's
    /// outcome is unknown.
    #[error("the batch RPC failed, the outcome is unknown: {0}")]
    Rpc(String),
    /// No answer within the caller's timeout: a write's outcome is unknown.
    #[error("no answer within {0:?}; the outcome is unknown")]
    TimedOut(Duration),
}

/// How many batches and operations a [`BatchingConnection`] has sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    pub ops: u64,
}

type Answer = Result<BatchOpReply, BatchCallError>;

/// An operation waiting for its batch.
struct Waiter {
    op: BatchOp,
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    in_flight: usize,
}

struct Shared {
    conn: RaftKvClient,
    max_in_flight: usize,
    queue: Mutex<Queue>,
    batches: AtomicU64,
    ops: AtomicU64,
}

/// One connection whose callers' operations travel in `batch` RPCs (see the module
/// documentation). Clones share the connection and its queue.
#[derive(Clone)]
pub struct BatchingConnection {
    shared: Arc<Shared>,
}

impl BatchingConnection {
    /// Batches over `conn`, with at most `max_in_flight` (at least 1) batches on their
    /// way at once.
    pub fn new(conn: RaftKvClient, max_in_flight: usize) -> BatchingConnection {
        let shared = Shared {
            conn,
            max_in_flight: max_in_flight.max(1),
            queue: Mutex::default(),
            batches: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        };
        BatchingConnection { shared: Arc::new(shared) }
    }

    /// Sends `op` in the next batch and waits at most `timeout` for its answer.
    /// Must run inside a tokio runtime (a batch is sent by a task of its own).
    pub async fn call(&self, op: BatchOp, timeout: Duration) -> Result<BatchOpReply, BatchCallError> {
        let deadline = Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        if let Some(batch) = self.shared.enqueue(Waiter { op, deadline, reply }) {
            tokio::spawn(send_batches(self.shared.clone(), batch));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(BatchCallError::Rpc("the batch was dropped before its answer came".into())),
            Err(_) => Err(BatchCallError::TimedOut(timeout)),
        }
    }

    /// The batches and operations sent so far.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            ops: self.shared.ops.load(Ordering::Relaxed),
        }
    }
}

/// Yields at most this often, while callers keep arriving, before the next batch.
const MAX_GATHER_YIELDS: usize = 8;

impl Shared {
    fn waiting(&self) -> usize {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).waiting.len()
    }

    /// Queues `waiter`; returns the batch to send now if fewer than `max_in_flight`
    /// are on their way (the caller sends it).
    fn enqueue(&self, waiter: Waiter) -> Option<Vec<Waiter>> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.waiting.push(waiter);
        if q.in_flight >= self.max_in_flight {
            return None;
        }
        q.in_flight += 1;
        Some(take_batch(&mut q.waiting))
    }

    /// After a batch came back: the next one, or `None` (and one fewer in flight) when
    /// nothing waits.
    fn next_batch(&self) -> Option<Vec<Waiter>> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(q.in_flight > 0, "a batch came back that was never counted as sent");
        if q.waiting.is_empty() {
            q.in_flight -= 1;
            return None;
        }
        Some(take_batch(&mut q.waiting))
    }

    /// Sends one batch and hands each caller its answer.
    async fn send(&self, batch: Vec<Waiter>) {
        let deadline = batch.iter().map(|w| w.deadline).max().unwrap_or_else(Instant::now);
        let (ops, replies): (Vec<BatchOp>, Vec<oneshot::Sender<Answer>>) =
            batch.into_iter().map(|w| (w.op, w.reply)).unzip();
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        let mut ctx = context::current();
        ctx.deadline = deadline.into_std();
        let sent = ops.len();
        match self.conn.batch(ctx, ops).await {
            Ok(Ok(answers)) if answers.len() == sent => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer.map_err(BatchCallError::Request));
                }
            }
            Ok(Ok(answers)) => {
                let e = BatchCallError::Rpc(format!("the server answered {} of {sent} operations", answers.len()));
                fail_all(replies, &e);
            }
            Ok(Err(e)) => fail_all(replies, &BatchCallError::Request(e)),
            Err(e) => fail_all(replies, &BatchCallError::Rpc(e.to_string())),
        }
    }
}

/// The first [`MAX_BATCH_OPS`] waiters, in arrival order.
fn take_batch(waiting: &mut Vec<Waiter>) -> Vec<Waiter> {
    if waiting.len() <= MAX_BATCH_OPS {
        return std::mem::take(waiting);
    }
    waiting.drain(..MAX_BATCH_OPS).collect()
}

fn fail_all(replies: Vec<oneshot::Sender<Answer>>, e: &BatchCallError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

/// Sends `batch`, then every batch that gathered meanwhile, until none waits.
async fn send_batches(shared: Arc<Shared>, mut batch: Vec<Waiter>) {
    loop {
        shared.send(batch).await;
        // Why yield: the callers just answered are woken but have not run yet; a
        // closed-loop caller queues its next operation as soon as it runs. Deciding
        // now would find the queue nearly empty and send a batch of one or two, with
        // the rest a whole round trip behind it. Yielding while callers keep arriving
        // (a bounded number of times) lets them into the next batch. Measured with 64
        // clients and one batch in flight: one yield took writes from 47k to 63k/s
        // (a mean batch of 50), yielding while the queue grows to 74k/s (a mean batch
        // of 64, every client); never waiting on a timer.
        for _ in 0..MAX_GATHER_YIELDS {
            let waiting = shared.waiting();
            tokio::task::yield_now().await;
            if shared.waiting() == waiting {
                break;
            }
        }
        match shared.next_batch() {
            Some(next) => batch = next,
            None => return,
        }
    }
}
