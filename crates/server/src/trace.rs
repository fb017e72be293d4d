//! OpenTelemetry spans of the node: what the Raft loop and the RPC service record, and
//! the conversions between span contexts and what travels on the wire.
//!
//! Every span and attribute name here is listed in `observability/README.md`; keep
//! the two in step.
//!
//! Spans that start in the past (a commit spans from the first proposal of its batch
//! to the quorum) or whose links are known only at their start are built with the
//! OpenTelemetry API ([`raftkv_telemetry::tracer`]); the others are `tracing` spans.
//! With no exporter installed, both cost next to nothing.

use std::time::{Duration, Instant, SystemTime};

use raftkv_raft::{Index, Message, MessageBody, NodeId, Term};
use raftkv_rpc::TraceLink;
use raftkv_rpc::tarpc::context::Context as RpcContext;
use raftkv_rpc::tarpc::trace::SamplingDecision;
use raftkv_telemetry::OpenTelemetrySpanExt as _;
use raftkv_telemetry::opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
};
use raftkv_telemetry::opentelemetry::{Context, KeyValue};

pub(crate) use raftkv_telemetry::opentelemetry::global::BoxedSpan;

/// The wire form of a sampled span context.
pub(crate) fn to_link(sc: &SpanContext) -> TraceLink {
    TraceLink {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
    }
}

/// A span context received from a peer (sampled, remote).
pub(crate) fn from_link(l: &TraceLink) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(l.trace_id.to_be_bytes()),
        SpanId::from_bytes(l.span_id.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// A context whose (only) span is `sc`: the parent to give a new span.
pub(crate) fn parent(sc: &SpanContext) -> Context {
    Context::new().with_remote_span_context(sc.clone())
}

/// The span context of `cx` when it is worth parenting on or linking to.
pub(crate) fn sampled(cx: &Context) -> Option<SpanContext> {
    raftkv_telemetry::sampled_span_context(cx)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A span from `start` to now, built with the OpenTelemetry API.
pub(crate) fn past_span(
    name: &'static str,
    start: SystemTime,
    parent_cx: &Context,
    links: Vec<Link>,
    attributes: Vec<KeyValue>,
) -> BoxedSpan {
    let tracer = raftkv_telemetry::tracer();
    tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_links(links)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent_cx)
}

/// The trace of one client write while the loop holds it.
pub(crate) struct WriteTrace {
    /// The server's `kv.put`/`kv.delete`/`kv.cas` span: parent of `raft.propose` and
    /// `kv.apply`, and what commits and fsyncs link to.
    pub request: SpanContext,
    /// `raft.propose`, open from the proposal until the entry commits.
    pub propose: Option<BoxedSpan>,
    /// `raft.propose`'s context: the parent of `raft.replicate` to each follower.
    pub propose_sc: SpanContext,
}

impl WriteTrace {
    /// Starts `raft.propose` when the request is traced.
    pub fn start(node: NodeId, request: &Context, index: Index, term: Term) -> Option<WriteTrace> {
        let request_sc = sampled(request)?;
        let span = past_span(
            "raft.propose",
            SystemTime::now(),
            request,
            Vec::new(),
            vec![
                KeyValue::new("node", i64_of(node)),
                KeyValue::new("index", i64_of(index)),
                KeyValue::new("term", i64_of(term)),
            ],
        );
        let propose_sc = span.span_context().clone();
        Some(WriteTrace { request: request_sc, propose: Some(span), propose_sc })
    }

    /// Ends `raft.propose` (committed, or given up).
    pub fn end_propose(&mut self, committed: bool) {
        if let Some(mut span) = self.propose.take() {
            span.set_attribute(KeyValue::new("committed", committed));
            span.end();
        }
    }
}

/// A `kv.apply` span: open while the state machine applies one traced entry.
pub(crate) fn apply_span(node: NodeId, request: &SpanContext, index: Index, term: Term) -> BoxedSpan {
    past_span(
        "kv.apply",
        SystemTime::now(),
        &parent(request),
        Vec::new(),
        vec![
            KeyValue::new("node", i64_of(node)),
            KeyValue::new("index", i64_of(index)),
            KeyValue::new("term", i64_of(term)),
        ],
    )
}

/// What a `raft.commit` span reports.
pub(crate) struct CommitInfo<'a> {
    pub node: NodeId,
    pub first: Index,
    pub last: Index,
    pub term: Term,
    pub entries: u64,
    pub bytes: u64,
    pub acked_by: &'a [NodeId],
    /// When the oldest entry of the batch was proposed here, if known.
    pub proposed_at: Option<Instant>,
    /// The traced requests committed, by index.
    pub requests: Vec<(Index, SpanContext)>,
}

/// Records one `raft.commit`: from the batch's first proposal to now (the quorum),
/// a child of the first traced request's span, linked to the others; a root span
/// when no request of the batch is traced (the leader's no-op entry).
pub(crate) fn commit(info: CommitInfo<'_>) {
    let now = SystemTime::now();
    let elapsed = info.proposed_at.map(|t| t.elapsed());
    let start = elapsed.and_then(|d| now.checked_sub(d)).unwrap_or(now);
    let mut attributes = vec![
        KeyValue::new("node", i64_of(info.node)),
        KeyValue::new("first_index", i64_of(info.first)),
        KeyValue::new("last_index", i64_of(info.last)),
        KeyValue::new("term", i64_of(info.term)),
        KeyValue::new("entries", i64_of(info.entries)),
        KeyValue::new("bytes", i64_of(info.bytes)),
        KeyValue::new(
            "acked_by",
            raftkv_telemetry::opentelemetry::Value::Array(
                info.acked_by.iter().map(|id| i64_of(*id)).collect::<Vec<_>>().into(),
            ),
        ),
        KeyValue::new("requests", i64_of(info.requests.len() as u64)),
    ];
    if let Some(d) = elapsed {
        attributes.push(KeyValue::new("propose_to_quorum_ms", ms(d)));
    }
    let (parent_cx, links) = parent_and_links(&info.requests);
    let mut span = past_span("raft.commit", start, &parent_cx, links, attributes);
    span.end_with_timestamp(now);
}

/// The first request's context as parent, links (with their index) to the others.
fn parent_and_links(requests: &[(Index, SpanContext)]) -> (Context, Vec<Link>) {
    match requests.split_first() {
        None => (Context::new(), Vec::new()),
        Some(((_, first), others)) => (
            parent(first),
            others
                .iter()
                .map(|(index, sc)| Link::new(sc.clone(), vec![KeyValue::new("index", i64_of(*index))], 0))
                .collect(),
        ),
    }
}

/// What a `storage.fsync` span reports.
pub(crate) struct FsyncInfo {
    pub node: NodeId,
    /// Entries of this node's write (the batch may hold other writes too).
    pub entries: u64,
    pub hard_state: bool,
    pub batch_requests: u64,
    pub batch_entries: u64,
    pub batch_bytes: u64,
    pub fsync: Duration,
}

/// Records one `storage.fsync` (its duration is the fsync's) under the first of
/// `traced` and linked to the others. Nothing when no traced work rode on it.
pub(crate) fn fsync(info: FsyncInfo, traced: &[SpanContext]) {
    let Some((first, others)) = traced.split_first() else { return };
    let now = SystemTime::now();
    let start = now.checked_sub(info.fsync).unwrap_or(now);
    let links = others.iter().map(|sc| Link::with_context(sc.clone())).collect();
    let mut span = past_span(
        "storage.fsync",
        start,
        &parent(first),
        links,
        vec![
            KeyValue::new("node", i64_of(info.node)),
            KeyValue::new("entries", i64_of(info.entries)),
            KeyValue::new("hard_state", info.hard_state),
            KeyValue::new("batch_requests", i64_of(info.batch_requests)),
            KeyValue::new("batch_entries", i64_of(info.batch_entries)),
            KeyValue::new("batch_bytes", i64_of(info.batch_bytes)),
            KeyValue::new("fsync_ms", ms(info.fsync)),
            KeyValue::new("linked", i64_of(others.len() as u64)),
        ],
    );
    span.end_with_timestamp(now);
}

/// The spans a received `raft` batch opens on this node, ended by the Raft loop once
/// it has stepped the batch and persisted what it brought:
///
/// - `raft.append_entries` when the batch carries entries and its sender traced it
///   (a child of tarpc's server span, so of the leader's `raft.replicate`, linked to
///   the other requests in `links`);
/// - `raft.install_snapshot` for each snapshot chunk (a root span when untraced).
pub(crate) fn inbound_spans(
    node: NodeId,
    ctx: &RpcContext,
    messages: &[Message],
    links: &[TraceLink],
) -> Vec<tracing::Span> {
    let traced =
        ctx.trace_context.sampling_decision == SamplingDecision::Sampled && !ctx.trace_context.trace_id.is_none();
    let mut spans = Vec::new();
    let (mut entries, mut first_index, mut last_index, mut from, mut term) = (0u64, u64::MAX, 0u64, 0, 0);
    for m in messages {
        match &m.body {
            MessageBody::AppendEntries { entries: es, .. } => {
                if let (Some(f), Some(l)) = (es.first(), es.last()) {
                    entries += es.len() as u64;
                    first_index = first_index.min(f.index);
                    last_index = last_index.max(l.index);
                    from = m.from;
                    term = m.term;
                }
            }
            MessageBody::InstallSnapshot { meta, offset, total_len, data, done } => {
                let span = tracing::info_span!(
                    "raft.install_snapshot",
                    node,
                    from = m.from,
                    term = m.term,
                    index = meta.index,
                    snapshot_term = meta.term,
                    offset,
                    total_bytes = total_len,
                    chunk_bytes = data.len() as u64,
                    done,
                );
                if !traced {
                    let _ = span.set_parent(Context::new());
                }
                spans.push(span);
            }
            _ => {}
        }
    }
    if traced && entries > 0 {
        let span = tracing::info_span!(
            "raft.append_entries",
            node,
            from,
            term,
            entries,
            first_index,
            last_index,
            linked_requests = links.len() as u64,
        );
        for l in links {
            span.add_link(from_link(l));
        }
        spans.push(span);
    }
    spans
}

/// An election in progress on this node: one `raft.election` root span from the
/// start of its pre-vote to the end of its vote.
pub(crate) struct ElectionTrace {
    pub span: tracing::Span,
    pub started: Instant,
}

impl ElectionTrace {
    pub fn start(node: NodeId, term: Term, pre_vote: bool, transfer: bool) -> ElectionTrace {
        let span = tracing::info_span!(
            parent: None,
            "raft.election",
            node,
            term,
            pre_vote,
            transfer,
            outcome = tracing::field::Empty,
            granted = tracing::field::Empty,
            needed = tracing::field::Empty,
            pre_vote_granted = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        ElectionTrace { span, started: Instant::now() }
    }

    pub fn finish(&self, term: Term, outcome: &str, granted: usize, needed: usize) {
        self.span.record("term", term);
        self.span.record("outcome", outcome);
        self.span.record("granted", granted as u64);
        self.span.record("needed", needed as u64);
        self.span.record("duration_ms", ms(self.started.elapsed()));
    }
}

/// Adds event `name` to `span` (an OpenTelemetry span event; not a log line).
pub(crate) fn event(span: &tracing::Span, name: &'static str, attributes: Vec<KeyValue>) {
    span.add_event(name, attributes);
}

pub(crate) fn kv(key: &'static str, v: u64) -> KeyValue {
    KeyValue::new(key, i64_of(v))
}
