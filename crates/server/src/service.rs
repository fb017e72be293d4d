//! The tarpc [`RaftKv`] service: validates requests, hands them to the Raft loop through
//! bounded channels and waits for the answer within the request's deadline.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Message, NodeId};
use raftkv_rpc::tarpc::context::Context;
use raftkv_rpc::{
    FaultReply, FaultRequest, ForwardReply, ForwardRequest, GetReply, HashKvReply, MemberChange, MemberChangeReply,
    MemberList, MemberStatus, NodeStatus, PeerError, PeerIdentity, RaftKv, ReadConsistency, RequestError, ScanReply,
    ScanStart, ServerInfo, TraceLink, WriteReply,
};
use raftkv_telemetry::OpenTelemetrySpanExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::faults::Faults;
use crate::forward::Forwarder;
use crate::log_limit::LogLimit;
use crate::metrics::{NodeMetrics, RpcMethod};
use crate::raft_loop::{RaftBatch, ReadOp, ReadOutput, Request};

/// No request waits longer than this, whatever deadline its client set.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);

/// The longest a `raft` RPC waits for the loop's responses to its batch.
const MAX_BATCH_REPLY_WAIT: Duration = Duration::from_secs(1);

/// A peer of another cluster is logged at most this often.
const WRONG_CLUSTER_LOG_EVERY: Duration = Duration::from_secs(10);
/// A refused connection is logged at most this often.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// One clone per connection; all share the node's input channels.
#[derive(Clone)]
pub(crate) struct Service {
    pub id: NodeId,
    pub shared: Arc<Shared>,
    pub raft_tx: mpsc::Sender<RaftBatch>,
    pub client_tx: mpsc::Sender<Request>,
    /// Passes what this node cannot serve to the leader.
    pub forwarder: Arc<Forwarder>,
    /// Who is on the other end of this connection: with TLS, only a node certificate
    /// may send Raft messages (without TLS, anyone may).
    pub peer: PeerIdentity,
}

/// What the service needs to know of the Raft loop's state without asking it: the
/// cluster, the removed ids (to refuse their traffic), the members' addresses.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cluster_id: u64,
    removed: RwLock<BTreeSet<NodeId>>,
    addrs: RwLock<Vec<(NodeId, String)>>,
    wrong_cluster_log: LogLimit,
    /// Refused connections (a failed TLS handshake; a full table evicts instead).
    pub refused_log: LogLimit,
    /// The node's metrics (RPC latencies are observed here).
    pub metrics: Arc<NodeMetrics>,
    /// The leader this node knows of, as the Raft loop last published it.
    leader: watch::Sender<Option<NodeId>>,
    /// Faults injected into this node (`--enable-faults`).
    pub faults: Arc<Faults>,
}

impl Shared {
    pub fn new(cluster_id: u64, metrics: Arc<NodeMetrics>, faults: Arc<Faults>) -> Shared {
        Shared {
            faults,
            metrics,
            cluster_id,
            removed: RwLock::default(),
            addrs: RwLock::default(),
            wrong_cluster_log: LogLimit::new(WRONG_CLUSTER_LOG_EVERY),
            refused_log: LogLimit::new(REFUSED_LOG_EVERY),
            leader: watch::Sender::new(None),
        }
    }

    /// The Raft loop publishes the leader it knows of (`None` during an election).
    pub fn set_leader(&self, leader: Option<NodeId>) {
        self.leader.send_if_modified(|known| std::mem::replace(known, leader) != leader);
    }

    /// Waits until the known leader changes or `until` passes.
    pub async fn leader_changed(&self, until: Instant) {
        let mut rx = self.leader.subscribe();
        let _ = tokio::time::timeout_at(until, rx.changed()).await;
    }

    pub fn set_removed(&self, removed: &BTreeSet<NodeId>) {
        if let Ok(mut r) = self.removed.write() {
            r.clone_from(removed);
        }
    }

    fn is_removed(&self, id: NodeId) -> bool {
        self.removed.read().is_ok_and(|r| r.contains(&id))
    }

    /// The members and their addresses, for status.
    pub fn set_addrs(&self, addrs: Vec<(NodeId, String)>) {
        if let Ok(mut a) = self.addrs.write() {
            *a = addrs;
        }
    }

    pub fn addrs(&self) -> Vec<(NodeId, String)> {
        self.addrs.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Logs a refused batch of another cluster, at most every
    /// [`WRONG_CLUSTER_LOG_EVERY`].
    fn warn_wrong_cluster(&self, got: u64, from: Option<NodeId>) {
        let Some(suppressed) = self.wrong_cluster_log.admit() else { return };
        tracing::warn!(
            from = ?from,
            their_cluster = format!("{got:016x}"),
            our_cluster = format!("{:016x}", self.cluster_id),
            suppressed,
            "refusing raft messages of another cluster (further refusals are not logged for {}s)",
            self.wrong_cluster_log.every().as_secs()
        );
    }
}

impl Service {
    pub(crate) fn submit(&self, request: Request) -> Result<(), RequestError> {
        self.client_tx.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RequestError::Overloaded("the node's request queue is full".into()),
            mpsc::error::TrySendError::Closed(_) => RequestError::Unavailable("the node is shutting down".into()),
        })
    }

    pub(crate) async fn read(
        &self,
        ctx: Context,
        op: ReadOp,
        consistency: ReadConsistency,
    ) -> Result<ReadOutput, RequestError> {
        let (request, rx) = Request::read(op, consistency);
        self.submit(request)?;
        wait_read(ctx, rx).await
    }
}

/// Waits for a write's answer (see [`wait`]).
pub(crate) async fn wait_write(
    ctx: Context,
    rx: oneshot::Receiver<Result<WriteReply, RequestError>>,
) -> Result<WriteReply, RequestError> {
    // Why Timeout when the loop is gone: the write may have been proposed already.
    wait(ctx, rx, RequestError::Timeout).await
}

/// Waits for a read's answer (see [`wait`]).
pub(crate) async fn wait_read(
    ctx: Context,
    rx: oneshot::Receiver<Result<ReadOutput, RequestError>>,
) -> Result<ReadOutput, RequestError> {
    wait(ctx, rx, RequestError::Unavailable("the node is shutting down".into())).await
}

/// Makes `span` (not yet entered) a root span when the caller sent no trace context
/// (a client without telemetry): its request is still traced from here on. Otherwise
/// it stays a child of tarpc's server span, which continues the caller's trace.
fn root_if_untraced(span: &tracing::Span, ctx: &Context) {
    if ctx.trace_context.trace_id.is_none() {
        let _ = span.set_parent(raftkv_telemetry::opentelemetry::Context::new());
    }
}

fn record_error(span: &tracing::Span, e: &RequestError) {
    span.record("otel.status_code", "ERROR");
    span.record("error", tracing::field::display(e));
}

/// Waits for the Raft loop's answer until the request's deadline (capped at
/// [`MAX_WAIT`]). Dropping `rx` on timeout tells the loop to forget the request.
pub(crate) async fn wait<T>(
    ctx: Context,
    rx: oneshot::Receiver<Result<T, RequestError>>,
    if_dropped: RequestError,
) -> Result<T, RequestError> {
    let now = Instant::now();
    let deadline = Instant::from_std(ctx.deadline).min(now + MAX_WAIT);
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(if_dropped),
        Err(_) => Err(RequestError::Timeout),
    }
}

impl RaftKv for Service {
    async fn raft(
        self,
        ctx: Context,
        cluster_id: u64,
        messages: Vec<Message>,
        links: Vec<TraceLink>,
    ) -> Result<Vec<Message>, PeerError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::raft);
        if !self.peer.is_node() {
            let common_name = match &self.peer {
                PeerIdentity::Certificate { common_name } => common_name.clone(),
                PeerIdentity::Plaintext => String::new(),
            };
            tracing::warn!(common_name, "refusing raft messages from a connection without a node certificate");
            return Err(PeerError::NotANode { common_name });
        }
        if cluster_id != self.shared.cluster_id {
            self.shared.warn_wrong_cluster(cluster_id, messages.first().map(|m| m.from));
            return Err(PeerError::WrongCluster { expected: self.shared.cluster_id, got: cluster_id });
        }
        // Why here and not only in the loop: a removed node must hear that it was
        // removed, so it stops for good (the answer to its RPC says so).
        if let Some(m) =
            messages.iter().find(|m| raftkv_replica::refused_from_removed(m) && self.shared.is_removed(m.from))
        {
            return Err(PeerError::Removed { id: m.from });
        }
        // An injected partition drops the messages of the peers it cuts off.
        let mut messages = messages;
        messages.retain(|m| !self.shared.faults.partitioned(m.from));
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let spans = crate::trace::inbound_spans(self.id, &ctx, &messages, &links);
        let (reply, mut rx) = oneshot::channel();
        self.raft_tx.try_send(RaftBatch { messages, spans, reply: Some(reply) }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PeerError::Busy,
            mpsc::error::TrySendError::Closed(_) => PeerError::ShuttingDown,
        })?;
        // The batch is in: answer before the sender's deadline whatever happens, so it
        // never counts an accepted batch as lost. Responses ready later go through
        // this node's own link to the sender.
        let now = Instant::now();
        let wait = Instant::from_std(ctx.deadline).saturating_duration_since(now) / 2;
        match tokio::time::timeout_at(now + wait.min(MAX_BATCH_REPLY_WAIT), &mut rx).await {
            Ok(Ok(responses)) => Ok(responses),
            Ok(Err(_)) => Ok(Vec::new()),
            Err(_) => {
                // Closed first, so that a later answer fails and the loop uses its link
                // instead; one that came in just before is still taken.
                rx.close();
                Ok(rx.try_recv().unwrap_or_default())
            }
        }
    }

    async fn write(self, ctx: Context, command: Command) -> Result<WriteReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::write);
        let name = match &command.op {
            WriteOp::Put { .. } => "kv.put",
            WriteOp::Delete { .. } => "kv.delete",
            WriteOp::Cas { .. } => "kv.cas",
        };
        let span = tracing::info_span!(
            "kv.request",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            node = self.id,
            client_id = command.client_id,
            seq = command.seq,
            index = tracing::field::Empty,
            term = tracing::field::Empty,
            duplicate = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        root_if_untraced(&span, &ctx);
        let result = async {
            command.validate().map_err(|e| RequestError::Invalid(e.to_string()))?;
            match self.serve_or_forward(ctx, ForwardRequest::Write(command)).await? {
                ForwardReply::Write(reply) => Ok(reply),
                other => Err(mismatched("write", &other)),
            }
        }
        .instrument(span.clone())
        .await;
        match &result {
            Ok(r) => {
                span.record("index", r.index);
                span.record("term", r.term);
                span.record("duplicate", r.duplicate);
            }
            Err(e) => record_error(&span, e),
        }
        result
    }

    async fn get(self, ctx: Context, key: Bytes, consistency: ReadConsistency) -> Result<GetReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::get);
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.get",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            node = self.id,
            consistency = ?consistency,
            index = tracing::field::Empty,
            found = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        root_if_untraced(&span, &ctx);
        let result = async {
            raftkv_kv::validate_key(&key).map_err(|e| RequestError::Invalid(e.to_string()))?;
            if consistency == ReadConsistency::Stale {
                return self.read(ctx, ReadOp::Get(key), consistency).await?.into_get();
            }
            match self.serve_or_forward(ctx, ForwardRequest::Get { key }).await? {
                ForwardReply::Get(reply) => Ok(reply),
                other => Err(mismatched("get", &other)),
            }
        }
        .instrument(span.clone())
        .await;
        match &result {
            Ok(r) => {
                span.record("index", r.index);
                span.record("found", r.value.is_some());
            }
            Err(e) => record_error(&span, e),
        }
        result
    }

    async fn scan(
        self,
        ctx: Context,
        prefix: Bytes,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanReply, RequestError> {
        self.scan_page(ctx, prefix, ScanStart::First, limit, consistency).await
    }

    async fn scan_page(
        self,
        ctx: Context,
        prefix: Bytes,
        start: ScanStart,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::scan_page);
        let limit = limit as usize;
        raftkv_kv::validate_scan(&prefix, limit).map_err(|e| RequestError::Invalid(e.to_string()))?;
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.scan",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            node = self.id,
            consistency = ?consistency,
            limit = limit as u64,
            index = tracing::field::Empty,
            items = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        root_if_untraced(&span, &ctx);
        let result = async {
            if consistency == ReadConsistency::Stale {
                return self.read(ctx, ReadOp::Scan { prefix, start, limit }, consistency).await?.into_scan();
            }
            let limit = limit as u32;
            match self.serve_or_forward(ctx, ForwardRequest::ScanPage { prefix, start, limit }).await? {
                ForwardReply::ScanPage(reply) => Ok(reply),
                other => Err(mismatched("scan", &other)),
            }
        }
        .instrument(span.clone())
        .await;
        match &result {
            Ok(r) => {
                span.record("index", r.index);
                span.record("items", r.items.len() as u64);
            }
            Err(e) => record_error(&span, e),
        }
        result
    }

    async fn status(self, ctx: Context) -> NodeStatus {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::status);
        self.local_status(ctx).await
    }

    async fn transfer_leader(self, ctx: Context, target: Option<NodeId>) -> Result<NodeId, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::transfer_leader);
        match self.serve_or_forward(ctx, ForwardRequest::TransferLeader(target)).await? {
            ForwardReply::TransferLeader(id) => Ok(id),
            other => Err(mismatched("transfer_leader", &other)),
        }
    }

    async fn members(self, ctx: Context) -> Result<MemberList, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::members);
        match self.serve_or_forward(ctx, ForwardRequest::Members).await? {
            ForwardReply::Members(list) => Ok(list),
            other => Err(mismatched("members", &other)),
        }
    }

    async fn hash_kv(self, ctx: Context, index: u64) -> Result<HashKvReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::hash_kv);
        let (reply, rx) = oneshot::channel();
        self.submit(Request::HashKv { index, reply })?;
        wait(ctx, rx, RequestError::Unavailable("the node is shutting down".into())).await
    }

    async fn server_info(self, _: Context) -> ServerInfo {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::server_info);
        self.server_info_here()
    }

    async fn change_member(self, ctx: Context, change: MemberChange) -> Result<MemberChangeReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::change_member);
        tracing::info!(node = self.id, ?change, "membership change requested");
        let result = match self.serve_or_forward(ctx, ForwardRequest::ChangeMember(change)).await {
            Ok(ForwardReply::ChangeMember(reply)) => Ok(reply),
            Ok(other) => Err(mismatched("change_member", &other)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::info!(node = self.id, error = %e, "membership change not done");
        }
        result
    }

    async fn forward(
        self,
        ctx: Context,
        cluster_id: u64,
        request: ForwardRequest,
    ) -> Result<ForwardReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::forward);
        if cluster_id != self.shared.cluster_id {
            return Err(RequestError::Invalid(format!(
                "forwarded for cluster {cluster_id:016x}; this node is in cluster {:016x}",
                self.shared.cluster_id
            )));
        }
        let span = tracing::info_span!(
            "kv.forwarded",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            node = self.id,
            request = request.name(),
            error = tracing::field::Empty,
        );
        let result = self.serve_here(ctx, request).instrument(span.clone()).await;
        if let Err(e) = &result {
            record_error(&span, e);
        }
        result
    }

    async fn cluster_status(self, ctx: Context) -> Vec<MemberStatus> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::cluster_status);
        self.member_statuses(ctx).await
    }

    async fn fault(
        self,
        ctx: Context,
        node: NodeId,
        request: FaultRequest,
        relayed: bool,
    ) -> Result<FaultReply, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::fault);
        if node == self.id {
            return self.shared.faults.handle(request);
        }
        if relayed {
            return Err(RequestError::Invalid(format!(
                "a fault request for node {node} was relayed to node {}: the members' addresses disagree",
                self.id
            )));
        }
        self.fault_elsewhere(ctx, node, request).await
    }

    async fn batch(
        self,
        ctx: Context,
        ops: Vec<raftkv_rpc::BatchOp>,
    ) -> Result<Vec<Result<raftkv_rpc::BatchOpReply, RequestError>>, RequestError> {
        let _timer = self.shared.metrics.time_rpc(RpcMethod::batch);
        // One span for the batch, not one per operation: what a batch saves.
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.batch",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            node = self.id,
            ops = ops.len(),
            failed = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        root_if_untraced(&span, &ctx);
        let result = self.serve_batch(ctx, ops).instrument(span.clone()).await;
        match &result {
            Ok(answers) => {
                span.record("failed", answers.iter().filter(|a| a.is_err()).count());
            }
            Err(e) => record_error(&span, e),
        }
        result
    }
}

impl Service {
    pub(crate) fn server_info_here(&self) -> ServerInfo {
        ServerInfo {
            id: self.id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            // Set by a build script (`git rev-parse`), as the CLI's is.
            commit: env!("RAFTKV_GIT_COMMIT").to_string(),
        }
    }

    /// This node's status from its Raft loop, or marked unavailable when the loop does
    /// not answer within the deadline.
    pub(crate) async fn local_status(&self, ctx: Context) -> NodeStatus {
        let unavailable = NodeStatus {
            id: self.id,
            role: "unavailable".into(),
            term: 0,
            leader: None,
            commit_index: 0,
            applied_index: 0,
            last_index: 0,
            snapshot_index: 0,
            peers: self.shared.addrs(),
            cluster_id: self.shared.cluster_id,
            recovering: false,
        };
        let (reply, rx) = oneshot::channel();
        if self.client_tx.try_send(Request::Status(reply)).is_err() {
            return unavailable;
        }
        let deadline = Instant::from_std(ctx.deadline).min(Instant::now() + MAX_WAIT);
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(status)) => status,
            _ => unavailable,
        }
    }
}

/// A reply of the wrong kind for the request: a bug, never a client's fault.
pub(crate) fn mismatched(request: &str, reply: &ForwardReply) -> RequestError {
    RequestError::Internal(format!("a {request} request was answered with {reply:?}"))
}
