//! The Raft loop: one task owns the [`RawNode`], the [`KvStateMachine`] and the storage
//! writer, and carries out each [`Ready`](raftkv_raft::Ready) in the order the core
//! documents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use raftkv_kv::{Applied, CommandError, KvStateMachine, SnapshotLayout};
use raftkv_raft::{
    ConfChange, ConfChangeKind, EntryKind, Event, HardState, Index, Message, MessageBody, NodeId, ProposeError,
    RawNode, Role, Snapshot, SnapshotMeta, Term,
};
use raftkv_rpc::{
    ClientError, GetReply, MemberChange, MemberChangeReply, MemberInfo, MemberList, MemberRole, NodeStatus,
    ReadConsistency, ScanReply, WriteReply,
};
use raftkv_storage::{BatchReport, GroupCommitWriter, StorageError, WriteRequest, WrittenSnapshot};
use raftkv_telemetry::opentelemetry::trace::{Span as _, SpanContext};
use raftkv_telemetry::opentelemetry::{Context as OtelContext, KeyValue};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument as _;

use crate::admin::{AdminState, role_code};
use crate::membership::{self, AddPlan, Membership};
use crate::peer::{LinkContext, PeerSender};
use crate::service::Shared;
use crate::trace::{self, ElectionTrace, WriteTrace};

/// Inputs handled per loop iteration from each channel before the Ready is processed.
const MAX_DRAIN: usize = 1024;
/// Writes waiting to commit; more are refused with `Overloaded`.
const MAX_PENDING_WRITES: usize = 100_000;
/// Every this many ticks, forget requests whose client stopped waiting.
const SWEEP_TICKS: u64 = 10;

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A client request, from the RPC service to the Raft loop.
pub(crate) enum Request {
    /// An encoded, validated [`raftkv_kv::Command`].
    Write {
        data: Bytes,
        reply: Reply<WriteReply>,
        /// The request's span (empty when it is not traced).
        trace: OtelContext,
    },
    Read {
        op: ReadOp,
        consistency: ReadConsistency,
        reply: Reply<ReadOutput>,
    },
    Status(oneshot::Sender<NodeStatus>),
    Transfer {
        target: Option<NodeId>,
        reply: Reply<NodeId>,
    },
    Members(Reply<MemberList>),
    ChangeMember {
        change: MemberChange,
        reply: Reply<MemberChangeReply>,
    },
    /// Every other founding member is at term 1 or below: end this founder's recovery
    /// (see [`crate::new_cluster`]). Answers whether it ended.
    ConfirmNewCluster(oneshot::Sender<bool>),
}

/// A batch of Raft messages from one peer, with the spans it opened here (see
/// [`trace::inbound_spans`]), which end once the loop has persisted what it brought.
pub(crate) struct RaftBatch {
    pub messages: Vec<Message>,
    pub spans: Vec<tracing::Span>,
    /// Where the sender waits for this node's responses to it (see [`BatchReply`]);
    /// `None` for responses that came back that way themselves.
    pub reply: Option<oneshot::Sender<Vec<Message>>>,
}

/// A received batch whose sender waits for an answer: once the Ready that stepped it
/// is persisted, the responses to that sender travel back in the answer of its RPC
/// rather than in an RPC of their own (which would cost two more frames per batch).
struct BatchReply {
    from: NodeId,
    reply: oneshot::Sender<Vec<Message>>,
}

pub(crate) enum ReadOp {
    Get(Bytes),
    Scan { prefix: Bytes, limit: usize },
}

pub(crate) enum ReadOutput {
    Get(GetReply),
    Scan(ScanReply),
}

struct PendingWrite {
    /// The term `propose` returned: the write is ours only if the entry applied at its
    /// index has this term.
    term: Term,
    reply: Reply<WriteReply>,
    proposed_at: Instant,
    trace: Option<WriteTrace>,
}

/// A membership change waiting to be applied (like [`PendingWrite`]).
struct PendingChange {
    term: Term,
    /// The member it is about.
    id: NodeId,
    reply: Reply<MemberChangeReply>,
}

/// What became of a membership change request.
enum Proposed {
    /// Nothing to change: the answer.
    Done(MemberChangeReply),
    /// Proposed at `index` in `term`, about member `id`.
    At { index: Index, term: Term, id: NodeId },
}

struct PendingRead {
    op: ReadOp,
    reply: Reply<ReadOutput>,
}

/// Settings of the loop that are not the core's.
pub(crate) struct LoopConfig {
    pub tick: Duration,
    pub election_ticks: u32,
    pub election_timeout: Duration,
    pub snapshot_entries: u64,
    /// The core's `max_promotion_lag`: auto-promotion waits for a learner this close.
    pub max_promotion_lag: u64,
}

/// How the loop ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Asked to shut down.
    Shutdown,
    /// This node was removed from the cluster: by the committed change at `index`
    /// (applied here), or as peer `by` said.
    Removed { index: Index, by: Option<NodeId> },
}

/// One outbound link.
struct Peer {
    addr: String,
    sender: PeerSender,
    task: JoinHandle<()>,
}

/// The state the Raft loop owns.
pub(crate) struct Node {
    id: NodeId,
    cfg: LoopConfig,
    raw: RawNode,
    kv: KvStateMachine,
    writer: Option<GroupCommitWriter>,
    peers: HashMap<NodeId, Peer>,
    /// Members' addresses and removed ids (the replicated part of membership).
    membership: Membership,
    shared: Arc<Shared>,
    link: LinkContext,
    writes: BTreeMap<Index, PendingWrite>,
    member_changes: BTreeMap<Index, PendingChange>,
    /// Set once this node learned it was removed: why, and when to stop at the latest
    /// (a leader that removed itself first hands off).
    removed: Option<(Stopped, Instant)>,
    /// The tick at which a leader was last heard from.
    leader_contact: u64,
    /// Linearizable reads waiting for their ReadIndex, by context.
    reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for the state machine to reach their index.
    parked: BTreeMap<Index, Vec<PendingRead>>,
    next_read_ctx: u64,
    /// A commit-only hard state not yet written: it needs no fsync of its own and rides
    /// along with the next write (or is flushed on the next tick).
    deferred_hs: Option<HardState>,
    flush_due: bool,
    snapshot_index: Index,
    role: Role,
    leader: Option<NodeId>,
    ticks: u64,
    /// Set once shutdown began: when to give up on handing off leadership.
    draining: Option<Instant>,
    /// The election this node runs, from its pre-vote to its end.
    election: Option<ElectionTrace>,
    /// Spans of received batches, ended once what they brought is persisted.
    inbound_spans: Vec<tracing::Span>,
    /// Received batches whose senders wait for this node's responses; answered once
    /// the next Ready is persisted (at most one per batch stepped since).
    batch_replies: Vec<BatchReply>,
    /// What the admin port reports (probes and metrics).
    admin: Arc<AdminState>,
}

impl Node {
    /// Starts the peer links of the current configuration; `link` is theirs.
    pub fn new(
        raw: RawNode,
        kv: KvStateMachine,
        writer: GroupCommitWriter,
        membership: Membership,
        shared: Arc<Shared>,
        link: LinkContext,
        cfg: LoopConfig,
    ) -> Node {
        let status = raw.status();
        let snapshot_index = raw.snapshot().map_or(0, |s| s.meta.index);
        let mut node = Node {
            id: status.id,
            cfg,
            raw,
            kv,
            writer: Some(writer),
            peers: HashMap::new(),
            membership,
            shared,
            link,
            writes: BTreeMap::new(),
            member_changes: BTreeMap::new(),
            removed: None,
            leader_contact: 0,
            reads: HashMap::new(),
            parked: BTreeMap::new(),
            next_read_ctx: 1,
            deferred_hs: None,
            flush_due: false,
            snapshot_index,
            role: status.role,
            leader: status.leader,
            ticks: 0,
            draining: None,
            election: None,
            inbound_spans: Vec::new(),
            batch_replies: Vec::new(),
            admin: AdminState::new(),
        };
        node.sync_peers();
        node.shared.set_removed(node.membership.removed());
        node
    }

    /// Reports readiness and metrics to `admin` from now on.
    pub fn with_admin(mut self, admin: Arc<AdminState>) -> Node {
        self.admin = admin;
        self.publish_status(&self.raw.status());
        self
    }

    /// Copies the gauges of `st` to the admin port's metrics.
    fn publish_status(&self, st: &raftkv_raft::Status) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.admin.metrics;
        m.term.store(st.term, Relaxed);
        m.role.store(role_code(st.role), Relaxed);
        m.leader.store(st.leader.unwrap_or(0), Relaxed);
        m.commit_index.store(st.commit_index, Relaxed);
        m.applied_index.store(self.kv.applied_index(), Relaxed);
        m.last_index.store(st.last_index, Relaxed);
        m.snapshot_index.store(self.snapshot_index, Relaxed);
        m.pending_writes.store(self.writes.len() as u64, Relaxed);
    }

    fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs until `shutdown` resolves (then hands off leadership, bounded), this node is
    /// removed from the cluster (`removed_rx` receives peers that said so), or storage
    /// fails. Returns the storage or state machine failure that stopped it, if any.
    pub async fn run(
        mut self,
        mut raft_rx: mpsc::Receiver<RaftBatch>,
        mut client_rx: mpsc::Receiver<Request>,
        mut removed_rx: mpsc::Receiver<NodeId>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Stopped> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        // Why Delay: after a stall (a slow fsync), a burst of ticks would be handled
        // before the peer messages queued meanwhile and could start a needless election.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown, if self.draining.is_none() => self.start_drain(),
                _ = ticker.tick() => self.on_tick(),
                Some(batch) = raft_rx.recv() => self.step_batch(batch),
                Some(request) = client_rx.recv() => self.handle_request(request),
                Some(by) = removed_rx.recv() => self.removed_by_peer(by),
            }
            for _ in 0..MAX_DRAIN {
                let Ok(batch) = raft_rx.try_recv() else { break };
                self.step_batch(batch);
            }
            for _ in 0..MAX_DRAIN {
                let Ok(request) = client_rx.try_recv() else { break };
                self.handle_request(request);
            }
            if let Err(e) = self.process_readies().await {
                break Err(e);
            }
            if std::mem::take(&mut self.flush_due)
                && let Some(hs) = self.deferred_hs.take()
                && let Err(e) = self.write(WriteRequest { entries: Vec::new(), hard_state: Some(hs) }).await
            {
                break Err(e);
            }
            if let Some((why, deadline)) = self.removed {
                // A leader that removed itself hands off first (the core does, once the
                // removal committed); the others stop at once.
                if self.role != Role::Leader || Instant::now() >= deadline {
                    break Ok(why);
                }
            }
            if let Some(deadline) = self.draining {
                if self.role != Role::Leader {
                    tracing::info!(id = self.id, "shutting down: not the leader");
                    break Ok(Stopped::Shutdown);
                }
                if self.best_transferee().is_none() {
                    tracing::info!(id = self.id, "shutting down: no other voter to hand leadership to");
                    break Ok(Stopped::Shutdown);
                }
                if Instant::now() >= deadline {
                    tracing::warn!(id = self.id, "shutting down: leadership transfer did not finish in time");
                    break Ok(Stopped::Shutdown);
                }
            }
        };
        self.finish(result).await
    }

    // ---- inputs ----

    fn on_tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        self.admin.ticked();
        self.flush_due = self.deferred_hs.is_some();
        if self.ticks.is_multiple_of(u64::from(self.cfg.election_ticks.max(1))) {
            self.auto_promote();
            self.probe_if_forgotten();
        }
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
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
        }
    }

    fn step_batch(&mut self, batch: RaftBatch) {
        self.inbound_spans.extend(batch.spans);
        if let (Some(reply), Some(first)) = (batch.reply, batch.messages.first()) {
            self.batch_replies.push(BatchReply { from: first.from, reply });
        }
        // Messages from ids this node does not know are taken too (the service checked
        // the cluster id and refused removed ids): a follower that was down while a new
        // node joined and became leader learns of it only from that leader's log. The
        // core handles unknown senders (a leader ignores them; votes and terms are
        // checked as for anyone).
        for m in batch.messages {
            if m.to != self.id {
                tracing::debug!(
                    from = m.from,
                    to = m.to,
                    kind = m.body.name(),
                    "dropping a message not meant for this node"
                );
                continue;
            }
            let (from, kind) = (m.from, m.body.name());
            if matches!(
                m.body,
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. }
            ) {
                self.leader_contact = self.ticks;
            }
            if let Err(e) = self.raw.step(m) {
                tracing::debug!(from, kind, error = %e, "refused a raft message");
            }
        }
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::Write { data, reply, trace } => {
                let result = self.propose(data);
                match result {
                    Ok((index, term)) => {
                        Self::count(&self.admin.metrics.proposals);
                        let trace = WriteTrace::start(self.id, &trace, index, term);
                        self.writes.insert(index, PendingWrite { term, reply, proposed_at: Instant::now(), trace });
                    }
                    Err(e) => {
                        Self::count(&self.admin.metrics.proposals_failed);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Read { op, consistency: ReadConsistency::Stale, reply } => {
                Self::count(&self.admin.metrics.reads);
                let _ = reply.send(self.serve_read(&op));
            }
            Request::Read { op, consistency: ReadConsistency::Linearizable, reply } => {
                Self::count(&self.admin.metrics.reads);
                if self.draining.is_some() {
                    let _ = reply.send(Err(shutting_down()));
                    return;
                }
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.raw.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, PendingRead { op, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Transfer { target, reply } => {
                let _ = reply.send(self.transfer(target));
            }
            Request::Members(reply) => {
                let _ = reply.send(Ok(self.member_list()));
            }
            Request::ConfirmNewCluster(reply) => {
                let _ = reply.send(self.raw.confirm_new_cluster());
            }
            Request::ChangeMember { change, reply } => match self.change_member(change) {
                Ok(Proposed::Done(done)) => {
                    let _ = reply.send(Ok(done));
                }
                Ok(Proposed::At { index, term, id }) => {
                    self.member_changes.insert(index, PendingChange { term, id, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ClientError> {
        if self.draining.is_some() {
            return Err(shutting_down());
        }
        if self.writes.len() >= MAX_PENDING_WRITES {
            return Err(ClientError::Overloaded(format!("{MAX_PENDING_WRITES} writes are already waiting to commit")));
        }
        self.raw.propose(data).map_err(|e| self.propose_error(e))
    }

    fn propose_error(&self, e: ProposeError) -> ClientError {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader_hint(leader),
            ProposeError::TransferInProgress => ClientError::Unavailable("leadership transfer in progress".into()),
            ProposeError::Backpressure { .. } | ProposeError::TooManyReads { .. } => {
                ClientError::Overloaded(e.to_string())
            }
            ProposeError::ConfChangePending { .. } | ProposeError::NoCommitInTerm => {
                ClientError::Unavailable(e.to_string())
            }
            ProposeError::NotAVoter(_) | ProposeError::InvalidConfChange(_) | ProposeError::NotCaughtUp { .. } => {
                ClientError::Invalid(e.to_string())
            }
            ProposeError::Recovering(_) | ProposeError::WouldStall { .. } => ClientError::Unavailable(e.to_string()),
        }
    }

    fn not_leader_hint(&self, leader: Option<NodeId>) -> ClientError {
        let leader = leader.filter(|l| *l != self.id);
        let leader_addr = leader.and_then(|l| self.membership.addr(l).map(str::to_string));
        ClientError::NotLeader { leader, leader_addr }
    }

    fn serve_read(&self, op: &ReadOp) -> Result<ReadOutput, ClientError> {
        let index = self.kv.applied_index();
        match op {
            ReadOp::Get(key) => {
                Ok(ReadOutput::Get(GetReply { value: self.kv.get(key), index, node: self.id, leader: self.leader }))
            }
            ReadOp::Scan { prefix, limit } => {
                let page = self.kv.scan(prefix, *limit).map_err(|e| ClientError::Invalid(e.to_string()))?;
                Ok(ReadOutput::Scan(ScanReply { items: page.items, more: page.more, index, node: self.id }))
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let st = self.raw.status();
        NodeStatus {
            id: self.id,
            role: st.role.as_str().to_string(),
            term: st.term,
            leader: st.leader,
            commit_index: st.commit_index,
            applied_index: self.kv.applied_index(),
            last_index: st.last_index,
            snapshot_index: self.snapshot_index,
            peers: self.shared.addrs(),
            cluster_id: self.shared.cluster_id,
            recovering: st.recovering,
        }
    }

    fn transfer(&mut self, target: Option<NodeId>) -> Result<NodeId, ClientError> {
        if self.role != Role::Leader {
            return Err(self.not_leader_hint(self.leader));
        }
        let target = match target {
            Some(t) => t,
            None => self
                .best_transferee()
                .ok_or_else(|| ClientError::Unavailable("no other voter to hand leadership to".into()))?,
        };
        self.raw.transfer_leader(target).map_err(|e| self.propose_error(e))?;
        tracing::info!(id = self.id, target, "transferring leadership");
        Ok(target)
    }

    /// The other voter with the highest match index (leader only).
    fn best_transferee(&self) -> Option<NodeId> {
        let st = self.raw.status();
        st.progress
            .iter()
            .filter(|p| p.id != self.id && st.conf.voters.contains(&p.id) && !p.recovering)
            .max_by_key(|p| (p.match_index, std::cmp::Reverse(p.id)))
            .map(|p| p.id)
    }

    fn start_drain(&mut self) {
        let deadline = Instant::now() + self.cfg.election_timeout * 2;
        self.draining = Some(deadline);
        self.admin.set_draining();
        tracing::info!(id = self.id, role = self.role.as_str(), "shutting down");
        self.hand_off_leadership();
    }

    fn hand_off_leadership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(target) = self.best_transferee() {
            match self.raw.transfer_leader(target) {
                Ok(()) => tracing::info!(
                    id = self.id,
                    target,
                    "shutting down: handing leadership to the most caught-up follower"
                ),
                Err(e) => tracing::warn!(id = self.id, target, error = %e, "shutting down: cannot hand off leadership"),
            }
        }
    }

    // ---- Ready ----

    async fn process_readies(&mut self) -> anyhow::Result<()> {
        let mut any = false;
        while self.raw.has_ready() {
            any = true;
            let mut rd = self.raw.ready();
            // Before anything is persisted or applied: an election's vote fsync is
            // part of its span, and a commit's writes are still waiting here.
            self.trace_events(&rd.events);
            let snapshot_kv = self.observe_ready(&rd)?;
            self.send(std::mem::take(&mut rd.messages));
            if let Some(snap) = &rd.snapshot {
                self.save_snapshot(snap.clone()).await.with_context(|| {
                    format!("saving the snapshot at index {} received from the leader", snap.meta.index)
                })?;
            }
            // Committed entries are at or below the persisted index (the core hands out
            // no others) and durable on a majority: applying them, and answering their
            // clients, need not wait for this Ready's new entries to be fsynced. Only a
            // snapshot must be installed first.
            let apply_early = rd.snapshot.is_none();
            if apply_early {
                self.apply_committed(&mut rd);
            }
            self.persist(std::mem::take(&mut rd.entries), rd.hard_state, rd.must_sync()).await?;
            self.answer_batches(std::mem::take(&mut rd.persisted_messages));
            if let (Some(snap), Some(kv)) = (rd.snapshot.take(), snapshot_kv) {
                self.install_snapshot(&snap.meta, &kv)?;
            }
            if !apply_early {
                self.apply_committed(&mut rd);
            }
            // What the received batches brought is persisted (and applied): their
            // spans end.
            self.inbound_spans.clear();
            self.log_events(rd.events);
            self.raw.advance();
            let st = self.raw.status();
            self.role = st.role;
            self.leader = st.leader;
            self.publish_status(&st);
        }
        // Batches that brought nothing to do are answered too: their senders wait.
        self.answer_batches(Vec::new());
        if any {
            self.maybe_snapshot().await?;
        }
        Ok(())
    }

    /// Sends `messages` (persisted ones), each response to a node that waits for an
    /// answer to its batch inside that answer, and answers every waiting batch. The
    /// others go through the peer links.
    fn answer_batches(&mut self, messages: Vec<Message>) {
        if self.batch_replies.is_empty() {
            self.send(messages);
            return;
        }
        let mut answers: Vec<(BatchReply, Vec<Message>)> =
            self.batch_replies.drain(..).map(|b| (b, Vec::new())).collect();
        let mut others = Vec::new();
        for m in messages {
            match answers.iter_mut().find(|(b, _)| b.from == m.to) {
                Some((_, carried)) if m.body.is_response() => carried.push(m),
                _ => others.push(m),
            }
        }
        self.send(others);
        for (batch, carried) in answers {
            // A sender that stopped waiting (its RPC timed out) still gets them.
            if let Err(carried) = batch.reply.send(carried) {
                self.send(carried);
            }
        }
    }

    /// Applies a Ready's committed entries (answering their writes) and serves or fails
    /// its reads.
    fn apply_committed(&mut self, rd: &mut raftkv_raft::Ready) {
        for entry in std::mem::take(&mut rd.committed_entries) {
            self.apply_entry(&entry);
        }
        for rs in std::mem::take(&mut rd.read_states) {
            if let Some(read) = self.reads.remove(&rs.ctx) {
                self.parked.entry(rs.index).or_default().push(read);
            }
        }
        for ctx in std::mem::take(&mut rd.dropped_reads) {
            if let Some(read) = self.reads.remove(&ctx) {
                let _ = read.reply.send(Err(self.not_leader_hint(self.leader)));
            }
        }
        self.serve_parked();
    }

    /// Applies one committed entry (unless already applied) and answers what waited
    /// for it.
    fn apply_entry(&mut self, entry: &raftkv_raft::Entry) {
        if entry.index <= self.kv.applied_index() {
            return;
        }
        let applied = match entry.kind {
            // The core applies configuration changes itself; to the state
            // machine they are position-only, like a no-op.
            EntryKind::Noop | EntryKind::ConfChange => {
                let _ = self.kv.apply_noop(entry.index, entry.term);
                if entry.kind == EntryKind::ConfChange {
                    self.applied_conf_change(entry);
                }
                None
            }
            EntryKind::Command => {
                let span = self
                    .writes
                    .get(&entry.index)
                    .filter(|w| w.term == entry.term)
                    .and_then(|w| w.trace.as_ref())
                    .map(|t| trace::apply_span(self.id, &t.request, entry.index, entry.term));
                let applied = self.kv.apply(entry.index, entry.term, &entry.data);
                if let Some(mut span) = span {
                    span.set_attribute(KeyValue::new("duplicate", applied.duplicate));
                    span.end();
                }
                Some(applied)
            }
        };
        self.complete_writes(entry.index, entry.term, applied);
        self.complete_member_changes(entry.index, entry.term);
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let traces = self.traces_carried(&m);
            match self.peers.get(&m.to) {
                Some(peer) => peer.sender.send(m, traces),
                None => tracing::debug!(to = m.to, "no link to a message's recipient"),
            }
        }
    }

    /// The `raft.propose` spans of the traced writes whose entries `m` carries.
    fn traces_carried(&self, m: &Message) -> Vec<SpanContext> {
        let MessageBody::AppendEntries { entries, .. } = &m.body else { return Vec::new() };
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Vec::new() };
        if self.writes.is_empty() {
            return Vec::new();
        }
        self.writes
            .range(first.index..=last.index)
            .filter_map(|(_, w)| w.trace.as_ref().map(|t| t.propose_sc.clone()))
            .collect()
    }

    /// The spans a write of `entries` (and a hard state, if `hard_state`) is done
    /// for: the traced client writes among the entries, the received batches that
    /// brought them, the election whose vote it records.
    fn fsync_traces(&self, entries: &[raftkv_raft::Entry], hard_state: bool) -> Vec<SpanContext> {
        let mut traced = Vec::new();
        if let (Some(first), Some(last)) = (entries.first(), entries.last())
            && !self.writes.is_empty()
        {
            traced.extend(
                self.writes
                    .range(first.index..=last.index)
                    .filter_map(|(_, w)| w.trace.as_ref().map(|t| t.request.clone())),
            );
        }
        traced.extend(self.inbound_spans.iter().filter_map(|s| trace::sampled(&raftkv_telemetry::context_of(s))));
        if hard_state && let Some(e) = &self.election {
            traced.extend(trace::sampled(&raftkv_telemetry::context_of(&e.span)));
        }
        traced
    }

    /// Writes entries and hard state durably. A commit-only hard state change is
    /// deferred to the next write (Raft can re-learn the commit index), so it costs no
    /// fsync of its own.
    async fn persist(
        &mut self,
        entries: Vec<raftkv_raft::Entry>,
        hs: Option<HardState>,
        must_sync: bool,
    ) -> anyhow::Result<()> {
        if entries.is_empty() && !must_sync {
            if hs.is_some() {
                self.deferred_hs = hs;
            }
            return Ok(());
        }
        let hard_state = hs.or(self.deferred_hs.take());
        self.deferred_hs = None;
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let traced = self.fsync_traces(&entries, hs.is_some());
        let n = entries.len() as u64;
        let has_hs = hard_state.is_some();
        let report = self.write(WriteRequest { entries, hard_state }).await?;
        trace::fsync(
            trace::FsyncInfo {
                node: self.id,
                entries: n,
                hard_state: has_hs,
                batch_requests: report.requests_in_batch as u64,
                batch_entries: report.entries as u64,
                batch_bytes: report.bytes,
                fsync: report.fsync_duration,
            },
            &traced,
        );
        Ok(())
    }

    fn writer(&self) -> anyhow::Result<&GroupCommitWriter> {
        self.writer.as_ref().ok_or_else(|| anyhow!("the storage writer is closed"))
    }

    async fn write(&self, request: WriteRequest) -> anyhow::Result<BatchReport> {
        let (done, rx) = storage_callback();
        self.writer()?.submit(request, done);
        let result = rx.await.map_err(|_| anyhow!("the storage writer stopped"))?;
        result.context("writing the Raft log")
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let Some(writer) = &self.writer else { return Err(StorageError::Closed) };
        let (done, rx) = storage_callback();
        writer.save_snapshot(snapshot, done);
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Installs the state machine part `data` of the leader's snapshot at `meta`.
    fn install_snapshot(&mut self, meta: &SnapshotMeta, data: &Bytes) -> anyhow::Result<()> {
        let kv = KvStateMachine::restore(data)
            .with_context(|| format!("the snapshot at index {} from the leader cannot be restored", meta.index))?;
        if kv.applied_index() != meta.index {
            bail!(
                "the snapshot at index {} from the leader holds a state machine at index {}",
                meta.index,
                kv.applied_index()
            );
        }
        self.kv = kv;
        self.snapshot_index = meta.index;
        Self::count(&self.admin.metrics.snapshots_installed);
        // Writes at or below the snapshot: whether they were the entries committed there
        // cannot be told any more.
        while let Some(w) = self.writes.first_entry() {
            if *w.key() > meta.index {
                break;
            }
            let mut w = w.remove();
            if let Some(t) = &mut w.trace {
                t.end_propose(false);
            }
            let _ = w.reply.send(Err(ClientError::Timeout));
        }
        while let Some(c) = self.member_changes.first_entry() {
            if *c.key() > meta.index {
                break;
            }
            let _ = c.remove().reply.send(Err(ClientError::Timeout));
        }
        tracing::info!(id = self.id, index = meta.index, term = meta.term, "installed a snapshot from the leader");
        Ok(())
    }

    /// Answers the write waiting at `index` (and any skipped below it).
    fn complete_writes(&mut self, index: Index, term: Term, mut applied: Option<Applied>) {
        while let Some(w) = self.writes.first_entry() {
            let at = *w.key();
            if at > index {
                break;
            }
            let mut w = w.remove();
            if let Some(t) = &mut w.trace {
                t.end_propose(at == index && w.term == term);
            }
            let result = if at < index {
                Err(ClientError::Timeout)
            } else if w.term != term {
                Err(ClientError::Unavailable(
                    "leadership changed before the write committed; it was not applied".into(),
                ))
            } else {
                match applied.take() {
                    Some(a) => match a.result {
                        Ok(result) => Ok(WriteReply {
                            index: a.index,
                            term: a.term,
                            leader: self.id,
                            result,
                            duplicate: a.duplicate,
                        }),
                        Err(e @ CommandError::IndexNotAfterApplied { .. }) => Err(ClientError::Internal(e.to_string())),
                        Err(e) => Err(ClientError::Invalid(e.to_string())),
                    },
                    None => Err(ClientError::Internal(format!("entry {index} carried no command"))),
                }
            };
            let _ = w.reply.send(result);
        }
    }

    fn serve_parked(&mut self) {
        let applied = self.kv.applied_index();
        while let Some(entry) = self.parked.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for read in entry.remove() {
                let _ = read.reply.send(self.serve_read(&read.op));
            }
        }
    }

    /// Turns the core's events into spans: `raft.election` (with its events),
    /// `raft.commit`, and the `raft.leader_elected` / `raft.step_down` /
    /// `raft.term_change` / `raft.leader_known` / `raft.transfer_aborted` /
    /// `raft.snapshot_installed` events, on the election span when one is open, else
    /// on a `raft.state_change` span.
    fn trace_events(&mut self, events: &[Event]) {
        let id = self.id;
        // An election that ended in this Ready still takes the events that follow
        // (BecameLeader comes after ElectionFinished).
        let mut ended: Option<ElectionTrace> = None;
        let mut state: Option<tracing::Span> = None;
        for event in events {
            let (name, attributes) = match event {
                Event::ElectionStarted { term, pre_vote, transfer } => {
                    if let Some(e) = ended.take() {
                        drop(e);
                    }
                    let election =
                        self.election.get_or_insert_with(|| ElectionTrace::start(id, *term, *pre_vote, *transfer));
                    election.span.record("term", *term);
                    let name = if *pre_vote { "raft.pre_vote.started" } else { "raft.vote.started" };
                    trace::event(
                        &election.span,
                        name,
                        vec![trace::kv("term", *term), KeyValue::new("transfer", *transfer)],
                    );
                    continue;
                }
                Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
                    if let Some(election) = &self.election {
                        let name = if *pre_vote { "raft.pre_vote.finished" } else { "raft.vote.finished" };
                        trace::event(
                            &election.span,
                            name,
                            vec![
                                trace::kv("term", *term),
                                KeyValue::new("outcome", outcome.as_str()),
                                trace::kv("granted", *granted as u64),
                                trace::kv("needed", *needed as u64),
                            ],
                        );
                        if *pre_vote && *outcome == raftkv_raft::ElectionOutcome::Won {
                            election.span.record("pre_vote_granted", *granted as u64);
                        } else {
                            election.finish(*term, outcome.as_str(), *granted, *needed);
                            ended = self.election.take();
                        }
                    }
                    continue;
                }
                Event::Committed { first, last, term, entries, bytes, acked_by } => {
                    self.trace_commit(*first, *last, *term, *entries, *bytes, acked_by);
                    continue;
                }
                Event::BecameLeader { term } => {
                    ("raft.leader_elected", vec![trace::kv("node", id), trace::kv("term", *term)])
                }
                Event::SteppedDown { term, reason } => (
                    "raft.step_down",
                    vec![trace::kv("node", id), trace::kv("term", *term), KeyValue::new("reason", reason.as_str())],
                ),
                Event::TermChanged { from, to } => {
                    ("raft.term_change", vec![trace::kv("node", id), trace::kv("from", *from), trace::kv("to", *to)])
                }
                Event::LeaderKnown { term, leader } => (
                    "raft.leader_known",
                    vec![trace::kv("node", id), trace::kv("term", *term), trace::kv("leader", *leader)],
                ),
                Event::TransferAborted { target } => {
                    ("raft.transfer_aborted", vec![trace::kv("node", id), trace::kv("target", *target)])
                }
                Event::ConfChanged { index, .. } => {
                    ("raft.conf_changed", vec![trace::kv("node", id), trace::kv("index", *index)])
                }
                Event::PeerLostLog { peer, match_index, last_index } => (
                    "raft.peer_lost_log",
                    vec![
                        trace::kv("node", id),
                        trace::kv("peer", *peer),
                        trace::kv("match_index", *match_index),
                        trace::kv("last_index", *last_index),
                    ],
                ),
                Event::SnapshotInstalled { index, term } => (
                    "raft.snapshot_installed",
                    vec![trace::kv("node", id), trace::kv("index", *index), trace::kv("term", *term)],
                ),
                Event::RecoveryStarted { lost_state, .. } => {
                    ("raft.recovery_started", vec![trace::kv("node", id), KeyValue::new("lost_state", *lost_state)])
                }
                Event::RecoveryFinished { term, index } => (
                    "raft.recovery_finished",
                    vec![trace::kv("node", id), trace::kv("term", *term), trace::kv("marker_index", *index)],
                ),
                Event::RecoveryMarked { peer, index } => (
                    "raft.recovery_marked",
                    vec![trace::kv("node", id), trace::kv("peer", *peer), trace::kv("index", *index)],
                ),
                Event::SnapshotRefused { peer, index, bytes, limit, .. } => (
                    "raft.snapshot_refused",
                    vec![
                        trace::kv("node", id),
                        trace::kv("peer", *peer),
                        trace::kv("index", *index),
                        trace::kv("bytes", *bytes),
                        trace::kv("limit", *limit),
                    ],
                ),
            };
            let span = match (&self.election, &ended) {
                (Some(e), _) | (None, Some(e)) => &e.span,
                (None, None) => state.get_or_insert_with(|| {
                    let term = self.raw.status().term;
                    tracing::info_span!(parent: None, "raft.state_change", node = id, term)
                }),
            };
            trace::event(span, name, attributes);
        }
    }

    /// One `raft.commit` span per committed batch (leader only), and the end of the
    /// committed writes' `raft.propose` spans.
    fn trace_commit(&mut self, first: Index, last: Index, term: Term, entries: u64, bytes: u64, acked_by: &[NodeId]) {
        let mut proposed_at: Option<Instant> = None;
        let mut requests = Vec::new();
        for (index, w) in self.writes.range_mut(first..=last) {
            proposed_at = Some(proposed_at.map_or(w.proposed_at, |p| p.min(w.proposed_at)));
            if let Some(t) = &mut w.trace {
                requests.push((*index, t.request.clone()));
                if w.term == term {
                    t.end_propose(true);
                }
            }
        }
        trace::commit(trace::CommitInfo {
            node: self.id,
            first,
            last,
            term,
            entries,
            bytes,
            acked_by,
            proposed_at: proposed_at.map(Instant::into_std),
            requests,
        });
    }

    fn log_events(&mut self, events: Vec<Event>) {
        let id = self.id;
        for event in events {
            match event {
                Event::ElectionStarted { term, pre_vote, transfer } => {
                    Self::count(&self.admin.metrics.elections_started);
                    tracing::info!(id, term, pre_vote, transfer, "election started");
                }
                Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
                    tracing::info!(
                        id,
                        term,
                        pre_vote,
                        outcome = outcome.as_str(),
                        granted,
                        needed,
                        "election finished"
                    );
                }
                Event::BecameLeader { term } => {
                    Self::count(&self.admin.metrics.became_leader);
                    tracing::info!(id, term, "became leader");
                }
                Event::SteppedDown { term, reason } => {
                    tracing::info!(id, term, reason = reason.as_str(), "stepped down as leader");
                }
                Event::TermChanged { from, to } => tracing::debug!(id, from, to, "term changed"),
                Event::LeaderKnown { term, leader } => tracing::info!(id, term, leader, "following leader"),
                Event::Committed { first, last, term, entries, bytes, acked_by } => {
                    tracing::debug!(id, first, last, term, entries, bytes, ?acked_by, "committed");
                }
                Event::SnapshotInstalled { index, term } => {
                    tracing::info!(id, index, term, "accepted a snapshot from the leader");
                }
                Event::ConfChanged { index, conf } => {
                    tracing::info!(id, index, voters = ?conf.voters, learners = ?conf.learners, "configuration changed");
                }
                Event::PeerLostLog { peer, match_index, last_index } => {
                    tracing::warn!(
                        id,
                        peer,
                        match_index,
                        last_index,
                        "a follower lost log entries it had acknowledged (wiped disk?); resending from its log's end"
                    );
                }
                Event::TransferAborted { target } => {
                    tracing::warn!(id, target, "leadership transfer did not finish within an election timeout");
                    if self.draining.is_some() {
                        self.hand_off_leadership();
                    }
                }
                Event::RecoveryStarted { nonce, lost_state } => {
                    self.admin.metrics.recovering.store(1, std::sync::atomic::Ordering::Relaxed);
                    let why = if lost_state { "the data dir held no Raft state" } else { "a recovery was under way" };
                    tracing::warn!(
                        id,
                        nonce,
                        "recovering from lost state ({why}): this node will not vote, campaign or count toward a \
                         quorum until a leader's recovery marker for it commits"
                    );
                }
                Event::RecoveryFinished { term, index } => {
                    self.admin.metrics.recovering.store(0, std::sync::atomic::Ordering::Relaxed);
                    match index {
                        0 => {
                            tracing::info!(id, term, "recovery ended: every founding member is new, the cluster is new")
                        }
                        _ => {
                            tracing::info!(id, term, marker_index = index, "recovery ended: caught up from the leader")
                        }
                    }
                }
                Event::RecoveryMarked { peer, index } => {
                    tracing::info!(id, peer, index, "a follower is recovering from lost state: appended its marker");
                }
                Event::SnapshotRefused { peer, index, bytes, limit, refusals, retry_in_ticks } => {
                    Self::count(&self.admin.metrics.snapshots_refused);
                    // One error per follower and snapshot; the retries say so quietly.
                    if refusals == 1 {
                        tracing::error!(
                            id,
                            peer,
                            snapshot_index = index,
                            bytes,
                            limit,
                            "follower {peer} refused the snapshot at index {index}: {bytes} bytes is over its \
                             snapshot size limit of {limit} bytes; it cannot catch up until its limit is raised. \
                             Retrying with backoff"
                        );
                    } else {
                        tracing::debug!(id, peer, bytes, limit, refusals, retry_in_ticks, "snapshot refused again");
                    }
                }
            }
        }
    }

    /// Snapshots the state machine once enough entries were applied since the last one.
    async fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let every = self.cfg.snapshot_entries;
        let applied = self.kv.applied_index();
        if every == 0 || applied < self.snapshot_index.saturating_add(every) {
            return Ok(());
        }
        let st = self.raw.status();
        if applied > st.applied_index {
            return Ok(());
        }
        // The configuration as of the snapshot's index: a newer one may already be in
        // the log, and it must not be baked into state it does not describe.
        let Some(conf) = self.raw.conf_at(applied) else {
            return Ok(());
        };
        let meta = SnapshotMeta { index: applied, term: self.kv.applied_term(), conf };
        let prefix = membership::snapshot_prefix(&self.membership.section(&meta.conf));
        let bytes = prefix.len() + self.kv.snapshot_len();
        let span = tracing::info_span!(
            parent: None,
            "raft.snapshot.create",
            node = self.id,
            index = applied,
            term = meta.term,
            bytes = bytes as u64,
        );
        let (written, layout) = span
            .in_scope(|| self.write_snapshot_file(meta, &prefix, bytes))
            .with_context(|| format!("writing the snapshot file at index {applied}"))?;
        let snapshot = match self.commit_snapshot(written).instrument(span).await {
            Ok(snapshot) => snapshot,
            Err(e @ StorageError::Invalid { .. }) => {
                tracing::warn!(id = self.id, index = applied, error = %e, "snapshot not saved");
                self.snapshot_index = applied;
                return Ok(());
            }
            Err(e) => return Err(e).context(format!("saving a snapshot at index {applied}")),
        };
        // Only now, with the file saved: the pairs move into it (mapped), never into
        // bytes that are not the saved snapshot's.
        if let Err(e) = self.kv.adopt_snapshot(&snapshot.data.slice(prefix.len()..), layout) {
            tracing::error!(id = self.id, index = applied, error = %e, "the state machine keeps its own copy of the pairs");
        }
        self.raw.compact(snapshot);
        self.snapshot_index = applied;
        Self::count(&self.admin.metrics.snapshots_saved);
        tracing::info!(id = self.id, index = applied, bytes, "saved a snapshot and compacted the log");
        Ok(())
    }

    /// Streams `prefix` and the state machine's snapshot (`len` bytes in all) into a
    /// new snapshot file, through a small buffer: the encoding is never whole in
    /// memory. Returns the file, to commit, and where the pairs lie in it.
    fn write_snapshot_file(
        &self,
        meta: SnapshotMeta,
        prefix: &[u8],
        len: usize,
    ) -> anyhow::Result<(WrittenSnapshot, SnapshotLayout)> {
        let mut file = self.writer()?.snapshot_file(meta, len as u64)?;
        let layout = file.write_all(prefix).and_then(|()| self.kv.write_snapshot(&mut file));
        // `finish` reports a failed write again, as the storage error it was.
        let written = file.finish()?;
        Ok((written, layout?))
    }

    /// Hands a written snapshot file to the storage writer to make durable (after the
    /// writes queued before it) and waits for the saved snapshot.
    async fn commit_snapshot(&self, written: WrittenSnapshot) -> Result<Snapshot, StorageError> {
        let Some(writer) = &self.writer else { return Err(StorageError::Closed) };
        let (done, rx) = storage_callback();
        writer.commit_snapshot(written, done);
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    // ---- membership ----

    /// Carries out a membership change on the leader: answered at once if there is
    /// nothing to change, else proposed.
    fn change_member(&mut self, change: MemberChange) -> Result<Proposed, ClientError> {
        if self.draining.is_some() || self.removed.is_some() {
            return Err(shutting_down());
        }
        if self.role != Role::Leader {
            return Err(self.not_leader_hint(self.leader));
        }
        let cc = match change {
            MemberChange::Add { id, addr, auto_promote, allocate_if_taken } => {
                let plan = membership::plan_add(
                    self.raw.conf(),
                    &self.membership,
                    id,
                    &addr,
                    auto_promote,
                    allocate_if_taken,
                )?;
                match plan {
                    AddPlan::Existing(id) => {
                        // Why wait for the commit: the entry adding it could still be
                        // overwritten, and the joining node would wait forever.
                        if self.raw.conf_index() > self.raw.status().commit_index {
                            return Err(ClientError::Unavailable(format!(
                                "learner {id} at {addr} is being added; retry once that change has committed"
                            )));
                        }
                        return Ok(Proposed::Done(MemberChangeReply { id, members: self.member_list() }));
                    }
                    AddPlan::Propose(id, ctx) => ConfChange::new(ConfChangeKind::AddLearner, id, ctx.encode()),
                }
            }
            MemberChange::Promote { id } => ConfChange::new(ConfChangeKind::PromoteVoter, id, Bytes::new()),
            MemberChange::Remove { id } if self.membership.removed().contains(&id) => {
                return Err(ClientError::Invalid(format!("node {id} was already removed from this cluster")));
            }
            MemberChange::Remove { id } => ConfChange::new(ConfChangeKind::Remove, id, Bytes::new()),
        };
        let (kind, id) = (cc.change, cc.node);
        let (index, term) = self.raw.propose_conf_change(cc).map_err(|e| self.propose_error(e))?;
        tracing::info!(id = self.id, change = kind.as_str(), node = id, index, "proposed a membership change");
        Ok(Proposed::At { index, term, id })
    }

    /// This node's view of the configuration.
    fn member_list(&self) -> MemberList {
        let st = self.raw.status();
        let conf = self.raw.conf();
        let conf_index = self.raw.conf_index();
        let leading = st.role == Role::Leader;
        let info = |id: NodeId, role: MemberRole| MemberInfo {
            id,
            addr: self.membership.addr(id).unwrap_or_default().to_string(),
            role,
            auto_promote: self.membership.context(id).is_some_and(|c| c.auto_promote),
            match_index: st.progress.iter().find(|p| leading && p.id == id).map(|p| p.match_index),
        };
        let voters = conf.voters.iter().map(|id| info(*id, MemberRole::Voter));
        let learners = conf.learners.iter().map(|id| info(*id, MemberRole::Learner));
        MemberList {
            cluster_id: self.shared.cluster_id,
            node: self.id,
            leader: st.leader,
            conf_index,
            committed: conf_index <= st.commit_index,
            members: voters.chain(learners).collect(),
            removed: self.membership.removed().iter().copied().collect(),
        }
    }

    /// Answers the membership change waiting at `index` (and any skipped below it).
    fn complete_member_changes(&mut self, index: Index, term: Term) {
        while let Some(c) = self.member_changes.first_entry() {
            let at = *c.key();
            if at > index {
                break;
            }
            let c = c.remove();
            let result = if at < index {
                Err(ClientError::Timeout)
            } else if c.term != term {
                Err(ClientError::Unavailable(
                    "leadership changed before the membership change committed; it was not applied".into(),
                ))
            } else {
                Ok(MemberChangeReply { id: c.id, members: self.member_list() })
            };
            let _ = c.reply.send(result);
        }
    }

    /// Takes in the membership news of a Ready before its messages go out: the contexts
    /// of appended ConfChange entries (the configuration is effective on append, so a
    /// leader must reach a new learner before the change commits) and a snapshot's
    /// section. Returns the snapshot's state machine part.
    fn observe_ready(&mut self, rd: &raftkv_raft::Ready) -> anyhow::Result<Option<Bytes>> {
        let mut changed = rd.events.iter().any(|e| matches!(e, Event::ConfChanged { .. }));
        for e in &rd.entries {
            changed |= self.membership.observe(e);
        }
        let mut kv = None;
        if let Some(snap) = &rd.snapshot {
            let (section, data) = membership::unwrap_snapshot(&snap.data)
                .map_err(|e| anyhow!("the snapshot at index {} from the leader is unusable: {e}", snap.meta.index))?;
            if let Some(section) = section {
                self.membership.restore(section);
                self.shared.set_removed(self.membership.removed());
            }
            changed = true;
            kv = Some(data);
        }
        if changed {
            self.sync_peers();
        }
        Ok(kv)
    }

    /// A committed ConfChange was applied: a removal is final.
    fn applied_conf_change(&mut self, entry: &raftkv_raft::Entry) {
        self.membership.observe(entry);
        // The committed configuration moved: links to members of neither go.
        self.sync_peers();
        let Ok(cc) = ConfChange::decode(&entry.data) else { return };
        if cc.change != ConfChangeKind::Remove {
            return;
        }
        // The core skips a change that was invalid where it stands; so does this.
        let member_before = entry.index < 2 || self.raw.conf_at(entry.index - 1).is_none_or(|c| c.contains(cc.node));
        let gone_after = self.raw.conf_at(entry.index).is_none_or(|c| !c.contains(cc.node));
        if !(member_before && gone_after) {
            return;
        }
        self.membership.remove(cc.node);
        self.shared.set_removed(self.membership.removed());
        tracing::info!(id = self.id, node = cc.node, index = entry.index, "a member's removal committed");
        if cc.node == self.id && self.removed.is_none() {
            tracing::warn!(id = self.id, index = entry.index, "this node's removal committed: stopping");
            let why = Stopped::Removed { index: entry.index, by: None };
            self.removed = Some((why, Instant::now() + self.cfg.election_timeout * 2));
        }
    }

    fn removed_by_peer(&mut self, by: NodeId) {
        if self.removed.is_none() {
            tracing::warn!(id = self.id, by, "a peer says this node was removed from the cluster: stopping");
            // A leader that removed itself may hear it before it handed off.
            let grace = if self.role == Role::Leader { self.cfg.election_timeout * 2 } else { Duration::ZERO };
            self.removed = Some((Stopped::Removed { index: 0, by: Some(by) }, Instant::now() + grace));
        }
    }

    /// Links to exactly the other members of the latest and of the committed
    /// configuration (to every known address while this node has none yet), and
    /// publishes the addresses. Why the committed one too: a leader that removed
    /// itself leads until the removal commits, and its followers must hear and answer
    /// it until then.
    fn sync_peers(&mut self) {
        let mut ids: BTreeSet<NodeId> = self.raw.conf().members().collect();
        if let Some(committed) = self.raw.conf_at(self.raw.status().commit_index) {
            ids.extend(committed.members());
        }
        let members: BTreeMap<NodeId, String> = if ids.is_empty() {
            self.membership.known()
        } else {
            ids.iter().filter_map(|id| Some((*id, self.membership.addr(*id)?.to_string()))).collect()
        };
        for id in ids.iter().filter(|id| **id != self.id && !members.contains_key(id)) {
            tracing::warn!(id = self.id, peer = id, "no address known for a member; cannot reach it");
        }
        let id = self.id;
        self.peers.retain(|peer, p| {
            let keep = members.get(peer) == Some(&p.addr);
            if !keep {
                tracing::info!(id, peer, addr = %p.addr, "closing the link to a former member");
            }
            keep
        });
        for (peer, addr) in members.iter().filter(|(peer, _)| **peer != id) {
            if !self.peers.contains_key(peer) {
                tracing::info!(id, peer, %addr, "opening a link to a member");
                let (sender, task) = crate::peer::spawn_peer(*peer, addr.clone(), self.link.clone());
                self.peers.insert(*peer, Peer { addr: addr.clone(), sender, task });
            }
        }
        self.shared.set_addrs(members.into_iter().collect());
    }

    /// The leader promotes caught-up learners that asked for it; refusals (another
    /// change pending, the learner fell behind) are retried on the next call.
    fn auto_promote(&mut self) {
        if self.role != Role::Leader || self.draining.is_some() || self.removed.is_some() {
            return;
        }
        let st = self.raw.status();
        let ready: Vec<NodeId> = st
            .conf
            .learners
            .iter()
            .copied()
            .filter(|id| self.membership.context(*id).is_some_and(|c| c.auto_promote))
            .filter(|id| {
                let matched = st.progress.iter().find(|p| p.id == *id).map_or(0, |p| p.match_index);
                matched > 0 && st.last_index.saturating_sub(matched) <= self.cfg.max_promotion_lag
            })
            .collect();
        for node in ready {
            match self.raw.propose_conf_change(ConfChange::new(ConfChangeKind::PromoteVoter, node, Bytes::new())) {
                Ok((index, _)) => tracing::info!(id = self.id, node, index, "promoting a caught-up learner to voter"),
                Err(e) => tracing::debug!(id = self.id, node, error = %e, "cannot promote a learner yet"),
            }
        }
    }

    /// A removed learner gets no more traffic (the leader drops non-members) and never
    /// campaigns, so it would never learn of its removal. After three election timeouts
    /// without a leader, a non-voter sends each peer a probe: a message of term 0, which
    /// a member's core ignores and a peer that removed it answers with `Removed`.
    fn probe_if_forgotten(&mut self) {
        let quiet = self.ticks.saturating_sub(self.leader_contact);
        if self.role == Role::Leader
            || self.raw.conf().voters.contains(&self.id)
            || quiet < 3 * u64::from(self.cfg.election_ticks)
        {
            return;
        }
        tracing::debug!(id = self.id, quiet_ticks = quiet, "no leader heard from; probing peers");
        for (peer, p) in &self.peers {
            let body = MessageBody::HeartbeatResponse { read_round: 0, missing_from: None };
            p.sender.send(Message { from: self.id, to: *peer, term: 0, body, recovery: None }, Vec::new());
        }
    }

    /// Closes every peer link. With `deliver`, first waits (bounded) for the links to
    /// send what is queued — a leader that removed itself just queued its hand-off.
    async fn stop_peers(&mut self, deliver: bool) {
        let mut tasks: Vec<JoinHandle<()>> = self.peers.drain().map(|(_, p)| p.task).collect();
        if deliver {
            let all = futures::future::join_all(tasks.iter_mut());
            let _ = tokio::time::timeout(self.cfg.election_timeout, all).await;
        }
        for t in tasks {
            t.abort();
        }
    }

    // ---- shutdown ----

    async fn finish(mut self, result: anyhow::Result<Stopped>) -> anyhow::Result<Stopped> {
        for (_, mut w) in std::mem::take(&mut self.writes) {
            if let Some(t) = &mut w.trace {
                t.end_propose(false);
            }
            let _ = w.reply.send(Err(ClientError::Timeout));
        }
        for (_, c) in std::mem::take(&mut self.member_changes) {
            let _ = c.reply.send(Err(ClientError::Timeout));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            let _ = r.reply.send(Err(shutting_down()));
        }
        for (_, reads) in std::mem::take(&mut self.parked) {
            for r in reads {
                let _ = r.reply.send(Err(shutting_down()));
            }
        }
        if result.is_ok()
            && let Some(hs) = self.deferred_hs.take()
            && let Err(e) = self.write(WriteRequest { entries: Vec::new(), hard_state: Some(hs) }).await
        {
            tracing::warn!(id = self.id, error = %e, "could not write the last commit index");
        }
        let dropped: u64 =
            self.peers.values().map(|p| p.sender.stats().dropped.load(std::sync::atomic::Ordering::Relaxed)).sum();
        self.stop_peers(matches!(result, Ok(Stopped::Removed { .. }))).await;
        tracing::info!(id = self.id, dropped_peer_messages = dropped, "shutting down: stopping the storage writer");
        if let Some(writer) = self.writer.take() {
            match tokio::task::spawn_blocking(move || writer.shutdown()).await {
                Ok(Ok(_storage)) => {}
                Ok(Err(e)) => tracing::error!(id = self.id, error = %e, "the storage writer failed to stop cleanly"),
                Err(e) => tracing::error!(id = self.id, error = %e, "the storage writer failed to stop cleanly"),
            }
        }
        result
    }
}

fn shutting_down() -> ClientError {
    ClientError::Unavailable("the node is shutting down".into())
}

/// A storage writer callback (run on the writer thread) that hands its result to the
/// returned receiver, for the Raft loop to await.
fn storage_callback<T: Send + 'static>() -> (Box<dyn FnOnce(T) + Send>, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    let done = Box::new(move |result| {
        // The loop may have stopped waiting (shutdown): nobody to tell.
        let _ = tx.send(result);
    });
    (done, rx)
}
