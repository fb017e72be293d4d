//! The `batch` RPC: the writes and reads of several clients in one frame.
//!
//! Why: with many clients on one connection, most of a small operation's cost on both
//! ends is per frame and per RPC (decoding, a future per request, a span, a send into
//! the Raft loop's queue, encoding). A batch pays these once. Each operation is still
//! its own: its own log entry, its own answer and error, validated and served as the
//! RPC of its name would serve it. A batch is never atomic.
//!
//! On the leader every operation goes into the Raft loop in one send. Where this node
//! does not lead, the operations the loop refused as `NotLeader` take the path of a
//! single request ([`Service::serve_or_forward`]): forwarded, following leader
//! changes, within the batch's deadline.

use futures::future::join_all;
use raftkv_rpc::tarpc::context::Context;
use raftkv_rpc::{BatchOp, BatchOpReply, ForwardReply, ForwardRequest, MAX_BATCH_OPS, ReadConsistency, RequestError};
use raftkv_telemetry::OpenTelemetrySpanExt as _;
use tokio::sync::oneshot;

use crate::raft_loop::{ReadOp, ReadOutput, Request};
use crate::service::{Service, mismatched, wait_read, wait_write};

/// What one operation of a batch waits for.
enum Waiting {
    /// Answered without the loop (it was invalid).
    Done(Result<BatchOpReply, RequestError>),
    Write(oneshot::Receiver<Result<raftkv_rpc::WriteReply, RequestError>>),
    Read(oneshot::Receiver<Result<ReadOutput, RequestError>>),
}

impl Service {
    /// Serves the operations of one `batch` RPC (see the module documentation); the
    /// answers are in the order of `ops`.
    pub(crate) async fn serve_batch(
        &self,
        ctx: Context,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<Result<BatchOpReply, RequestError>>, RequestError> {
        if ops.len() > MAX_BATCH_OPS {
            return Err(RequestError::Invalid(format!(
                "a batch holds at most {MAX_BATCH_OPS} operations; this one has {}",
                ops.len()
            )));
        }
        let (requests, waiting) = to_requests(&ops);
        if !requests.is_empty() {
            self.submit(Request::Batch(requests))?;
        }
        let mut answers = Vec::with_capacity(ops.len());
        for w in waiting {
            answers.push(answer(ctx, w).await);
        }
        self.forward_refused(ctx, &ops, &mut answers).await;
        debug_assert_eq!(answers.len(), ops.len(), "one answer per operation");
        Ok(answers)
    }

    /// Serves again, the way a single request is, every operation that this node
    /// refused because it does not lead: concurrently, each forwarded to the leader.
    async fn forward_refused(&self, ctx: Context, ops: &[BatchOp], answers: &mut [Result<BatchOpReply, RequestError>]) {
        let refused: Vec<usize> =
            (0..answers.len()).filter(|&i| matches!(answers[i], Err(RequestError::NotLeader { .. }))).collect();
        if refused.is_empty() {
            return;
        }
        let again = refused.iter().map(|&i| self.serve_one(ctx, ops[i].clone()));
        for (i, answer) in refused.iter().zip(join_all(again).await) {
            answers[*i] = answer;
        }
    }

    async fn serve_one(&self, ctx: Context, op: BatchOp) -> Result<BatchOpReply, RequestError> {
        let name = op.name();
        let request = match op {
            BatchOp::Write(command) => ForwardRequest::Write(command),
            BatchOp::Get { key, consistency: ReadConsistency::Linearizable } => ForwardRequest::Get { key },
            // A stale read is served where it arrives: never refused as NotLeader.
            BatchOp::Get { consistency: ReadConsistency::Stale, .. } => {
                return Err(RequestError::Internal("a stale read was refused as NotLeader".into()));
            }
        };
        match self.serve_or_forward(ctx, request).await? {
            ForwardReply::Write(reply) => Ok(BatchOpReply::Write(reply)),
            ForwardReply::Get(reply) => Ok(BatchOpReply::Get(reply)),
            other => Err(mismatched(name, &other)),
        }
    }
}

/// The loop's requests for the valid operations, and what each operation waits for.
fn to_requests(ops: &[BatchOp]) -> (Vec<Request>, Vec<Waiting>) {
    let trace = tracing::Span::current().context();
    let mut requests = Vec::with_capacity(ops.len());
    let mut waiting = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            BatchOp::Write(command) => {
                if let Err(e) = command.validate() {
                    waiting.push(Waiting::Done(Err(RequestError::Invalid(e.to_string()))));
                    continue;
                }
                let (request, rx) = Request::write(command, trace.clone());
                requests.push(request);
                waiting.push(Waiting::Write(rx));
            }
            BatchOp::Get { key, consistency } => {
                if let Err(e) = raftkv_kv::validate_key(key) {
                    waiting.push(Waiting::Done(Err(RequestError::Invalid(e.to_string()))));
                    continue;
                }
                let (request, rx) = Request::read(ReadOp::Get(key.clone()), *consistency);
                requests.push(request);
                waiting.push(Waiting::Read(rx));
            }
        }
    }
    (requests, waiting)
}

async fn answer(ctx: Context, waiting: Waiting) -> Result<BatchOpReply, RequestError> {
    match waiting {
        Waiting::Done(result) => result,
        Waiting::Write(rx) => wait_write(ctx, rx).await.map(BatchOpReply::Write),
        Waiting::Read(rx) => wait_read(ctx, rx).await?.into_get().map(BatchOpReply::Get),
    }
}
