//! The clients waiting in the Raft loop, and their answers: a write once its entry is
//! applied (if that entry is the one it proposed), a membership change likewise, a
//! linearizable read once its read index is confirmed and applied.

use std::collections::{BTreeMap, HashMap};

use raftkv_kv::CommandError;
use raftkv_raft::{Entry, Index, NodeId, ReadState, SnapshotMeta, Term};
use raftkv_replica::{ApplyHooks, ApplyOutcome, Replica};
use raftkv_rpc::{GetReply, HashKvReply, MemberChangeReply, RequestError, ScanReply, WriteReply};
use raftkv_telemetry::opentelemetry::KeyValue;
use raftkv_telemetry::opentelemetry::trace::Span as _;
use tokio::time::Instant;

use super::intake::{ReadOp, ReadOutput, Reply};
use super::take_through;
use crate::admin::AdminState;
use crate::metrics::NodeMetrics;
use crate::trace::{self, BoxedSpan, WriteTrace};

pub(crate) struct PendingWrite {
    /// The term `propose` returned: the write is ours only if the entry applied at its
    /// index has this term.
    pub term: Term,
    pub reply: Reply<WriteReply>,
    pub proposed_at: Instant,
    pub trace: Option<WriteTrace>,
}

/// A membership change waiting to be applied (like [`PendingWrite`]).
pub(crate) struct PendingChange {
    pub term: Term,
    /// The member it is about.
    pub id: NodeId,
    pub reply: Reply<MemberChangeReply>,
}

pub(crate) struct PendingRead {
    pub op: ReadOp,
    pub reply: Reply<ReadOutput>,
    /// When it arrived (for the ReadIndex wait histogram).
    pub asked_at: Instant,
}

/// Everything clients wait for.
#[derive(Default)]
pub(crate) struct Pending {
    pub writes: BTreeMap<Index, PendingWrite>,
    pub member_changes: BTreeMap<Index, PendingChange>,
    /// Linearizable reads waiting for their ReadIndex, by context.
    pub reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for the state machine to reach their index.
    pub parked: BTreeMap<Index, Vec<PendingRead>>,
    next_read_ctx: u64,
    /// Changes that committed, to answer with the member list once applying is done.
    pub changes_done: Vec<PendingChange>,
    /// Reads that can no longer be confirmed (leadership lost), to answer likewise.
    pub reads_dropped: Vec<PendingRead>,
    /// `hash_kv` requests waiting for the state machine to reach their index.
    hashes: BTreeMap<Index, Vec<Reply<HashKvReply>>>,
}

impl Pending {
    pub fn next_read_ctx(&mut self) -> u64 {
        self.next_read_ctx += 1;
        self.next_read_ctx
    }

    /// Forgets requests whose client stopped waiting.
    pub fn sweep(&mut self) {
        self.writes.retain(|_, w| {
            let keep = !w.reply.is_closed();
            if !keep && let Some(t) = &mut w.trace {
                t.end_propose(false);
            }
            keep
        });
        self.reads.retain(|_, r| !r.reply.is_closed());
        self.member_changes.retain(|_, c| !c.reply.is_closed());
        self.parked.retain(|_, reads| {
            reads.retain(|r| !r.reply.is_closed());
            !reads.is_empty()
        });
        self.hashes.retain(|_, waiting| {
            waiting.retain(|r| !r.is_closed());
            !waiting.is_empty()
        });
    }

    /// A `hash_kv` request for `index`: answered now if the state machine is there or
    /// past it (then without a digest), else once it applies exactly `index`.
    pub fn hash_at(&mut self, index: Index, reply: Reply<HashKvReply>, replica: &Replica) {
        self.hashes.entry(index).or_default().push(reply);
        self.answer_hashes(replica.id(), replica.kv());
    }

    /// Answers the `hash_kv` requests at `kv`'s applied index (its digest) and below it
    /// (passed: no digest).
    fn answer_hashes(&mut self, node: NodeId, kv: &raftkv_kv::KvStateMachine) {
        let applied = kv.applied_index();
        for (index, waiting) in take_through(&mut self.hashes, applied) {
            let digest = (index == applied).then(|| kv.digest());
            for reply in waiting {
                let _ = reply.send(Ok(HashKvReply { node, applied_index: applied, digest }));
            }
        }
    }

    /// Reads `op` from the state machine as it stands.
    pub fn serve_read(&self, replica: &Replica, op: &ReadOp) -> Result<ReadOutput, RequestError> {
        let kv = replica.kv();
        let (index, node) = (kv.applied_index(), replica.id());
        match op {
            ReadOp::Get(key) => {
                let leader = replica.status().leader;
                Ok(ReadOutput::Get(GetReply { value: kv.get(key), index, node, leader, forwarded: None }))
            }
            ReadOp::Scan { prefix, start, limit } => {
                let page =
                    kv.scan_range(prefix, start.bound(), *limit).map_err(|e| RequestError::Invalid(e.to_string()))?;
                Ok(ReadOutput::Scan(ScanReply { items: page.items, more: page.more, index, node, forwarded: None }))
            }
        }
    }

    /// Serves the confirmed reads whose index the state machine has reached.
    pub fn serve_parked(&mut self, replica: &Replica, metrics: &NodeMetrics) {
        for (_, reads) in take_through(&mut self.parked, replica.applied_index()) {
            for read in reads {
                metrics.read_index_seconds.observe(read.asked_at.elapsed().as_secs_f64());
                let _ = read.reply.send(self.serve_read(replica, &read.op));
            }
        }
    }

    /// Answers the write waiting at `index` (and any skipped below it).
    fn complete_writes(
        &mut self,
        node: NodeId,
        (index, term): (Index, Term),
        mut applied: Option<raftkv_kv::Applied>,
        metrics: &NodeMetrics,
    ) {
        for (at, mut w) in take_through(&mut self.writes, index) {
            if at == index && w.term == term {
                metrics.proposals_committed.inc();
                metrics.commit_seconds.observe(w.proposed_at.elapsed().as_secs_f64());
            }
            if let Some(t) = &mut w.trace {
                t.end_propose(at == index && w.term == term);
            }
            let result = if at < index {
                Err(RequestError::Timeout)
            } else if w.term != term {
                Err(RequestError::Unavailable(
                    "leadership changed before the write committed; it was not applied".into(),
                ))
            } else {
                write_reply(node, index, applied.take())
            };
            let _ = w.reply.send(result);
        }
    }

    /// Settles the membership change waiting at `index` (and any skipped below it):
    /// the one that committed goes to `changes_done`, to be answered with the list.
    fn complete_member_changes(&mut self, index: Index, term: Term) {
        for (at, c) in take_through(&mut self.member_changes, index) {
            if at < index {
                let _ = c.reply.send(Err(RequestError::Timeout));
            } else if c.term != term {
                let _ = c.reply.send(Err(RequestError::Unavailable(
                    "leadership changed before the membership change committed; it was not applied".into(),
                )));
            } else {
                self.changes_done.push(c);
            }
        }
    }
}

fn write_reply(node: NodeId, index: Index, applied: Option<raftkv_kv::Applied>) -> Result<WriteReply, RequestError> {
    let Some(a) = applied else {
        return Err(RequestError::Internal(format!("entry {index} carried no command")));
    };
    match a.result {
        Ok(result) => Ok(WriteReply {
            index: a.index,
            term: a.term,
            leader: node,
            result,
            duplicate: a.duplicate,
            forwarded: None,
        }),
        Err(e @ CommandError::IndexNotAfterApplied { .. }) => Err(RequestError::Internal(e.to_string())),
        Err(e) => Err(RequestError::Invalid(e.to_string())),
    }
}

/// The Raft loop's [`ApplyHooks`]: answers and apply spans.
pub(crate) struct Hooks<'a> {
    pub node: NodeId,
    pub pending: &'a mut Pending,
    pub admin: &'a AdminState,
    /// The `raft.apply` span of the traced write being applied.
    span: Option<BoxedSpan>,
    /// When the entry being applied started.
    applying_since: Option<std::time::Instant>,
}

impl<'a> Hooks<'a> {
    pub fn new(node: NodeId, pending: &'a mut Pending, admin: &'a AdminState) -> Hooks<'a> {
        Hooks { node, pending, admin, span: None, applying_since: None }
    }
}

impl ApplyHooks for Hooks<'_> {
    fn applying(&mut self, entry: &Entry) {
        self.applying_since = Some(std::time::Instant::now());
        self.span = self
            .pending
            .writes
            .get(&entry.index)
            .filter(|w| w.term == entry.term)
            .and_then(|w| w.trace.as_ref())
            .map(|t| trace::apply_span(self.node, &t.request, entry.index, entry.term));
    }

    fn applied(&mut self, entry: &Entry, outcome: ApplyOutcome, kv: &raftkv_kv::KvStateMachine) {
        if let Some(since) = self.applying_since.take() {
            self.admin.metrics.apply_seconds.observe(since.elapsed().as_secs_f64());
        }
        let applied = match outcome {
            ApplyOutcome::Command(a) => Some(a),
            ApplyOutcome::Other => None,
        };
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("duplicate", applied.as_ref().is_some_and(|a| a.duplicate)));
            span.end();
        }
        self.pending.complete_writes(self.node, (entry.index, entry.term), applied, &self.admin.metrics);
        self.pending.complete_member_changes(entry.index, entry.term);
        if self.pending.hashes.first_key_value().is_some_and(|(index, _)| *index <= entry.index) {
            self.pending.answer_hashes(self.node, kv);
        }
    }

    fn reads(&mut self, released: Vec<ReadState>, dropped: Vec<u64>) {
        for rs in released {
            if let Some(read) = self.pending.reads.remove(&rs.ctx) {
                self.pending.parked.entry(rs.index).or_default().push(read);
            }
        }
        for ctx in dropped {
            if let Some(read) = self.pending.reads.remove(&ctx) {
                self.pending.reads_dropped.push(read);
            }
        }
    }

    fn snapshot_installed(&mut self, meta: &SnapshotMeta, kv: &raftkv_kv::KvStateMachine) {
        self.pending.answer_hashes(self.node, kv);
        self.admin.metrics.snapshots_installed.inc();
        // Writes at or below the snapshot: whether they were the entries committed
        // there cannot be told any more.
        for (_, mut w) in take_through(&mut self.pending.writes, meta.index) {
            if let Some(t) = &mut w.trace {
                t.end_propose(false);
            }
            let _ = w.reply.send(Err(RequestError::Timeout));
        }
        for (_, c) in take_through(&mut self.pending.member_changes, meta.index) {
            let _ = c.reply.send(Err(RequestError::Timeout));
        }
        tracing::info!(id = self.node, index = meta.index, term = meta.term, "installed a snapshot from the leader");
    }
}
