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

use raftkv_raft::{CandidateRequest, Index, LogPosition, Message, MessageBody, NodeId, Term, TraceTag, VoteReason};
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

/// The core's opaque form of a sampled span context (what rides in a Raft message).
pub(crate) fn tag_of(sc: &SpanContext) -> TraceTag {
    let l = to_link(sc);
    TraceTag { trace_id: l.trace_id, span_id: l.span_id }
}

/// A span context carried by a Raft message (sampled, remote).
pub(crate) fn from_tag(t: TraceTag) -> SpanContext {
    from_link(&TraceLink { trace_id: t.trace_id, span_id: t.span_id })
}

/// The context of an OpenTelemetry-API span, when it is sampled.
pub(crate) fn sampled_span(span: &BoxedSpan) -> Option<SpanContext> {
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.clone())
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
    /// The election this commit is the winner's first of (linked), if traced.
    pub election: Option<SpanContext>,
}

/// Records one `raft.commit`: from the batch's first proposal to now (the quorum),
/// a child of the first traced request's span, linked to the others; a root span
/// when no request of the batch is traced (the leader's no-op entry). Returns its
/// context.
pub(crate) fn commit(info: CommitInfo<'_>) -> SpanContext {
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
    let (parent_cx, mut links) = parent_and_links(&info.requests);
    if let Some(sc) = info.election {
        links.push(Link::new(sc, vec![KeyValue::new("election", true)], 0));
    }
    let mut span = past_span("raft.commit", start, &parent_cx, links, attributes);
    let sc = span.span_context().clone();
    span.end_with_timestamp(now);
    sc
}

/// One `raft.vote_request` span: this voter's decision on a candidate's request, a
/// child of the candidate's election span when the request carried it.
pub(crate) fn vote_request(
    node: NodeId,
    c: &CandidateRequest,
    granted: bool,
    reason: VoteReason,
    own_last: LogPosition,
    tag: Option<TraceTag>,
) {
    let parent_cx = tag.map_or_else(Context::new, |t| parent(&from_tag(t)));
    // A voter in a leader's lease sends no answer at all.
    let decision = match (granted, reason) {
        (true, _) => "granted",
        (false, VoteReason::LeaderLease { .. }) => "ignored",
        (false, _) => "rejected",
    };
    let mut attributes = vec![
        KeyValue::new("node", i64_of(node)),
        KeyValue::new("candidate", i64_of(c.id)),
        KeyValue::new("term", i64_of(c.term)),
        KeyValue::new("pre_vote", c.pre_vote),
        KeyValue::new("granted", granted),
        KeyValue::new("decision", decision),
        KeyValue::new("reason", reason.as_str()),
        KeyValue::new("candidate_last_term", i64_of(c.last.term)),
        KeyValue::new("candidate_last_index", i64_of(c.last.index)),
        KeyValue::new("own_last_term", i64_of(own_last.term)),
        KeyValue::new("own_last_index", i64_of(own_last.index)),
    ];
    match reason {
        VoteReason::AlreadyVoted { voted_for } => attributes.push(KeyValue::new("voted_for", i64_of(voted_for))),
        VoteReason::LeaderKnown { leader } | VoteReason::LeaderLease { leader } => {
            attributes.push(KeyValue::new("leader", i64_of(leader)))
        }
        VoteReason::LowerTerm { own_term } => attributes.push(KeyValue::new("own_term", i64_of(own_term))),
        VoteReason::Granted | VoteReason::StaleLog | VoteReason::Recovering => {}
    }
    past_span("raft.vote_request", SystemTime::now(), &parent_cx, Vec::new(), attributes).end();
}

/// One `raft.step_down` span (a root), linked to its causes (`links`, each with a
/// `cause` attribute). Returns its context, for the election it leads to.
pub(crate) fn step_down(
    node: NodeId,
    term: Term,
    reason: &'static str,
    links: Vec<(SpanContext, &'static str)>,
) -> SpanContext {
    let links = links.into_iter().map(|(sc, cause)| Link::new(sc, vec![KeyValue::new("cause", cause)], 0)).collect();
    let attributes =
        vec![KeyValue::new("node", i64_of(node)), KeyValue::new("term", i64_of(term)), KeyValue::new("reason", reason)];
    let mut span = past_span("raft.step_down", SystemTime::now(), &Context::new(), links, attributes);
    let sc = span.span_context().clone();
    span.end();
    sc
}

/// One `raft.transfer_leader` span (a root) for a TimeoutNow this leader sends:
/// the target's election links it. Returns the tag the message carries.
pub(crate) fn transfer_leader(node: NodeId, target: NodeId, term: Term) -> Option<TraceTag> {
    let attributes = vec![
        KeyValue::new("node", i64_of(node)),
        KeyValue::new("target", i64_of(target)),
        KeyValue::new("term", i64_of(term)),
    ];
    let mut span = past_span("raft.transfer_leader", SystemTime::now(), &Context::new(), Vec::new(), attributes);
    let sc = span.span_context().clone();
    span.end();
    (sc.is_valid() && sc.is_sampled()).then(|| tag_of(&sc))
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
            first_commit_index = tracing::field::Empty,
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
