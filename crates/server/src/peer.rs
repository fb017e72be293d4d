//! Outbound Raft traffic: one task per peer, each with a bounded queue, one reused
//! connection, batching, per-RPC deadlines and reconnection with backoff.
//!
//! The Raft loop only ever calls [`PeerSender::send`], which never waits: when a peer's
//! queue is full the message is dropped (and counted); Raft retransmits what matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raftkv_raft::{Entry, Message, MessageBody, NodeId};
use raftkv_rpc::{PeerError, RaftKvClient, tarpc};
use raftkv_telemetry::OpenTelemetrySpanExt as _;
use raftkv_telemetry::opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::raft_loop::RaftBatch;

/// Messages waiting for one peer; more are dropped.
const QUEUE_CAPACITY: usize = 4096;
/// Upper bounds on one `raft` RPC.
const MAX_BATCH_MESSAGES: usize = 512;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Deadline of one connection attempt and of one RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Counters of one peer link.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

/// A message and the spans of the traced client requests whose entries it carries
/// (empty for most messages).
#[derive(Debug)]
pub(crate) struct Outbound {
    pub msg: Message,
    pub traces: Vec<SpanContext>,
}

/// The Raft loop's handle on one peer's outbound queue.
#[derive(Debug)]
pub(crate) struct PeerSender {
    id: NodeId,
    tx: mpsc::Sender<Outbound>,
    stats: Arc<PeerStats>,
}

impl PeerSender {
    /// Queues `msg` without waiting; drops it if the queue is full. `traces`: see
    /// [`Outbound`].
    pub fn send(&self, msg: Message, traces: Vec<SpanContext>) {
        match self.tx.try_send(Outbound { msg, traces }) {
            Ok(()) => {}
            Err(TrySendError::Full(Outbound { msg: m, .. })) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(peer = self.id, kind = m.body.name(), dropped, "peer queue full; dropping messages");
                }
            }
            Err(TrySendError::Closed(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &PeerStats {
        &self.stats
    }
}

/// What every peer link of a node shares: who sends, in which cluster, and where to
/// report that a peer said this node was removed.
#[derive(Clone, Debug)]
pub(crate) struct LinkContext {
    pub node: NodeId,
    pub cluster_id: u64,
    /// Receives the id of a peer that answered [`PeerError::Removed`] for this node.
    pub removed_tx: mpsc::Sender<NodeId>,
    /// Mutual TLS to peers, when configured.
    pub tls: Option<raftkv_rpc::TlsConfig>,
    /// The node's own Raft input: where a peer's responses to a batch, carried back in
    /// the RPC's answer, go.
    pub raft_tx: mpsc::Sender<RaftBatch>,
}

/// Starts the task that delivers messages to peer `id` at `addr` (resolved on every
/// connection attempt). It ends once its [`PeerSender`] is dropped and its queue is
/// delivered (or dropped).
pub(crate) fn spawn_peer(id: NodeId, addr: String, link: LinkContext) -> (PeerSender, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let stats = Arc::new(PeerStats::default());
    let peer = PeerLink { id, addr, link, rx, stats: stats.clone(), conn: None, backoff: MIN_BACKOFF };
    let task = tokio::spawn(peer.run());
    (PeerSender { id, tx, stats }, task)
}

struct PeerLink {
    id: NodeId,
    addr: String,
    link: LinkContext,
    rx: mpsc::Receiver<Outbound>,
    stats: Arc<PeerStats>,
    conn: Option<RaftKvClient>,
    backoff: Duration,
}

/// What one `raft` RPC answered.
type BatchResult = Result<Result<Vec<Message>, PeerError>, tarpc::client::RpcError>;

impl PeerLink {
    async fn run(mut self) {
        let mut carry: Option<Outbound> = None;
        let mut healthy = true;
        // Why: a peer of another cluster refuses every batch; say so once per episode.
        let mut wrong_cluster_logged = false;
        loop {
            let first = match carry.take() {
                Some(m) => m,
                None => match self.rx.recv().await {
                    Some(m) => m,
                    None => return,
                },
            };
            let Some(first) = self.connected(first, &mut healthy).await else { continue };
            let (batch, traces) = self.collect_batch(first, &mut carry);
            let n = batch.len() as u64;
            let result = self.send_batch(batch, traces).await;
            self.handle_result(result, n, &mut wrong_cluster_logged).await;
        }
    }

    /// Connects if not connected; gives `first` back once connected, else drops it
    /// with the queue and backs off.
    async fn connected(&mut self, first: Outbound, healthy: &mut bool) -> Option<Outbound> {
        if self.conn.is_some() {
            return Some(first);
        }
        match tokio::time::timeout(RPC_TIMEOUT, raftkv_rpc::connect_with(&self.addr, self.link.tls.as_ref())).await {
            Ok(Ok(client)) => {
                tracing::info!(peer = self.id, addr = %self.addr, "connected to peer");
                self.conn = Some(client);
                self.backoff = MIN_BACKOFF;
                *healthy = true;
                Some(first)
            }
            Ok(Err(e)) => {
                self.connect_failed(first, &e.to_string(), healthy).await;
                None
            }
            Err(_) => {
                self.connect_failed(first, "connection attempt timed out", healthy).await;
                None
            }
        }
    }

    /// `first` and what else is queued, within the batch bounds (a message that would
    /// exceed them is carried to the next batch), with the traces they carry.
    fn collect_batch(&mut self, first: Outbound, carry: &mut Option<Outbound>) -> (Vec<Message>, Vec<SpanContext>) {
        let mut bytes = message_bytes(&first.msg);
        let mut traces = first.traces;
        let mut batch = vec![first.msg];
        while batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
            let Ok(m) = self.rx.try_recv() else { break };
            let size = message_bytes(&m.msg);
            if bytes + size > MAX_BATCH_BYTES {
                *carry = Some(m);
                break;
            }
            bytes += size;
            for t in m.traces {
                if !traces.iter().any(|have| have.span_id() == t.span_id()) {
                    traces.push(t);
                }
            }
            batch.push(m.msg);
        }
        (batch, traces)
    }

    async fn send_batch(&self, batch: Vec<Message>, traces: Vec<SpanContext>) -> BatchResult {
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + RPC_TIMEOUT;
        let client = self.conn.as_ref().expect("connected before sending");
        // Why a span only for traced batches: tarpc's client span (and so the trace
        // context the peer receives) exists only inside one of ours, and heartbeats
        // must not open traces.
        let cluster_id = self.link.cluster_id;
        match traces.split_first() {
            None => client.raft(ctx, cluster_id, batch, Vec::new()).await,
            Some((parent, others)) => {
                let span = self.replicate_span(&batch, parent, others);
                let links = others.iter().map(crate::trace::to_link).collect();
                async { client.raft(ctx, cluster_id, batch, links).await }.instrument(span).await
            }
        }
    }

    /// Counts, logs and backs off as the answer to a batch of `n` messages says.
    async fn handle_result(&mut self, result: BatchResult, n: u64, wrong_cluster_logged: &mut bool) {
        if !matches!(result, Ok(Ok(_))) {
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
        match result {
            Ok(Ok(responses)) => {
                self.stats.sent.fetch_add(n, Ordering::Relaxed);
                *wrong_cluster_logged = false;
                self.deliver_responses(responses);
            }
            Ok(Err(PeerError::WrongCluster { expected, got })) => {
                if !std::mem::replace(wrong_cluster_logged, true) {
                    tracing::error!(
                        peer = self.id,
                        addr = %self.addr,
                        peer_cluster = format!("{expected:016x}"),
                        our_cluster = format!("{got:016x}"),
                        "the peer belongs to another cluster and refuses our messages: is {} the \
                         address of another cluster's node?",
                        self.addr
                    );
                }
                tokio::time::sleep(MAX_BACKOFF).await;
            }
            Ok(Err(PeerError::Removed { id })) if id == self.link.node => {
                tracing::error!(peer = self.id, id, "the peer says this node was removed from the cluster");
                let _ = self.link.removed_tx.try_send(self.id);
                tokio::time::sleep(MAX_BACKOFF).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = self.id, error = %e, messages = n, "peer refused a batch");
                if e == PeerError::Busy {
                    // Let its Raft loop catch up instead of hammering it.
                    tokio::time::sleep(MIN_BACKOFF).await;
                }
            }
            Err(tarpc::client::RpcError::DeadlineExceeded) => {
                tracing::debug!(peer = self.id, messages = n, "raft RPC to peer timed out");
            }
            Err(e) => {
                tracing::warn!(peer = self.id, addr = %self.addr, error = %e, "lost connection to peer");
                self.conn = None;
            }
        }
    }

    /// Hands the peer's responses to this node's Raft loop; dropped if its queue is
    /// full (Raft retransmits what matters).
    fn deliver_responses(&self, responses: Vec<Message>) {
        if responses.is_empty() {
            return;
        }
        let n = responses.len();
        let batch = RaftBatch { messages: responses, spans: Vec::new(), reply: None };
        if self.link.raft_tx.try_send(batch).is_err() {
            tracing::debug!(peer = self.id, messages = n, "raft queue full; dropped a peer's responses");
        }
    }

    /// The `raft.replicate` span of one traced batch: a child of the first traced
    /// request's `raft.propose`, linked to the others.
    fn replicate_span(&self, batch: &[Message], parent: &SpanContext, others: &[SpanContext]) -> tracing::Span {
        let (mut entries, mut first_index, mut last_index) = (0u64, u64::MAX, 0u64);
        for m in batch {
            if let MessageBody::AppendEntries { entries: es, .. } = &m.body
                && let (Some(f), Some(l)) = (es.first(), es.last())
            {
                entries += es.len() as u64;
                first_index = first_index.min(f.index);
                last_index = last_index.max(l.index);
            }
        }
        let span = tracing::info_span!(
            parent: None,
            "raft.replicate",
            otel.kind = "client",
            peer = self.id,
            messages = batch.len() as u64,
            entries,
            first_index = if entries > 0 { first_index } else { 0 },
            last_index,
            linked_requests = others.len() as u64,
        );
        let _ =
            span.set_parent(raftkv_telemetry::opentelemetry::Context::new().with_remote_span_context(parent.clone()));
        for sc in others {
            span.add_link(sc.clone());
        }
        span
    }

    /// Drops `first` and everything queued (it would be stale by the next attempt; Raft
    /// resends), then waits out the backoff.
    async fn connect_failed(&mut self, first: Outbound, error: &str, healthy: &mut bool) {
        drop(first);
        let mut dropped = 1;
        while self.rx.try_recv().is_ok() {
            dropped += 1;
        }
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        if *healthy {
            tracing::warn!(peer = self.id, addr = %self.addr, error, "cannot connect to peer; retrying with backoff");
            *healthy = false;
        } else {
            tracing::debug!(peer = self.id, addr = %self.addr, error, backoff_ms = self.backoff.as_millis() as u64, "cannot connect to peer");
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Approximate bytes of `m` on the wire, for batch limits.
fn message_bytes(m: &Message) -> usize {
    64 + match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().map(Entry::size).sum(),
        MessageBody::InstallSnapshot { data, .. } => data.len(),
        _ => 0,
    }
}
