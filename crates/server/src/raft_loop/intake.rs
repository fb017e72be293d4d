//! What comes into the Raft loop: client requests from the RPC service and batches of
//! peer messages. Requests are handed to the replica; their answers wait in
//! [`super::replies::Pending`] until the entry is applied or the read can be served.

use bytes::Bytes;
use raftkv_raft::{Index, Message, NodeId, ProposeError};
use raftkv_replica::{MemberView, Proposed, Refusal, StepRefusal};
use raftkv_rpc::{
    GetReply, HashKvReply, MemberChange, MemberChangeReply, MemberInfo, MemberList, MemberRole, NodeStatus,
    ReadConsistency, RequestError, ScanReply, ScanStart, WriteReply,
};
use raftkv_telemetry::opentelemetry::Context as OtelContext;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::replies::{PendingChange, PendingRead, PendingWrite};
use super::{MAX_PENDING_WRITES, RaftLoop};
use crate::trace::WriteTrace;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

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
    /// The state machine's digest once exactly `index` is applied (`hash_kv`).
    HashKv {
        index: Index,
        reply: Reply<HashKvReply>,
    },
    /// The writes and reads of one `batch` RPC, handled in order as if each had come
    /// alone; one send into the loop's queue instead of one per operation.
    Batch(Vec<Request>),
}

/// A batch of Raft messages from one peer, with the spans it opened here (see
/// [`crate::trace::inbound_spans`]), which end once the loop has persisted what it
/// brought.
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
pub(crate) struct BatchReply {
    pub from: NodeId,
    pub reply: oneshot::Sender<Vec<Message>>,
}

pub(crate) enum ReadOp {
    Get(Bytes),
    Scan { prefix: Bytes, start: ScanStart, limit: usize },
}

pub(crate) enum ReadOutput {
    Get(GetReply),
    Scan(ScanReply),
}

impl ReadOutput {
    /// The answer to a get (a scan's answer here is a server bug).
    pub fn into_get(self) -> Result<GetReply, RequestError> {
        match self {
            ReadOutput::Get(reply) => Ok(reply),
            ReadOutput::Scan(_) => Err(RequestError::Internal("a get was answered with a scan".into())),
        }
    }

    /// The answer to a scan (a get's answer here is a server bug).
    pub fn into_scan(self) -> Result<ScanReply, RequestError> {
        match self {
            ReadOutput::Scan(reply) => Ok(reply),
            ReadOutput::Get(_) => Err(RequestError::Internal("a scan was answered with a get".into())),
        }
    }
}

impl Request {
    /// A validated write for the loop, and where its answer will come (see
    /// [`Request::wait_write`]).
    pub fn write(
        command: &raftkv_kv::Command,
        trace: OtelContext,
    ) -> (Request, oneshot::Receiver<Result<WriteReply, RequestError>>) {
        let (reply, rx) = oneshot::channel();
        (Request::Write { data: command.encode(), reply, trace }, rx)
    }

    /// A read for the loop, and where its answer will come.
    pub fn read(
        op: ReadOp,
        consistency: ReadConsistency,
    ) -> (Request, oneshot::Receiver<Result<ReadOutput, RequestError>>) {
        let (reply, rx) = oneshot::channel();
        (Request::Read { op, consistency, reply }, rx)
    }
}

impl RaftLoop {
    pub(super) fn step_batch(&mut self, batch: RaftBatch) {
        self.inbound_spans.extend(batch.spans);
        if let (Some(reply), Some(first)) = (batch.reply, batch.messages.first()) {
            self.batch_replies.push(BatchReply { from: first.from, reply });
        }
        for m in batch.messages {
            let (from, kind) = (m.from, m.body.name());
            match self.replica.step(m) {
                Ok(()) => {}
                Err(e @ (StepRefusal::NotForMe { .. } | StepRefusal::Removed(_))) => {
                    tracing::debug!(from, kind, error = %e, "dropping a message not meant for this node");
                }
                Err(e) => tracing::debug!(from, kind, error = %e, "refused a raft message"),
            }
        }
    }

    pub(super) fn handle_request(&mut self, request: Request) {
        match request {
            Request::Write { data, reply, trace } => self.write_request(data, reply, &trace),
            Request::Read { op, consistency: ReadConsistency::Stale, reply } => {
                self.admin.metrics.reads.inc();
                let _ = reply.send(self.pending.serve_read(&self.replica, &op));
            }
            Request::Read { op, consistency: ReadConsistency::Linearizable, reply } => {
                self.admin.metrics.reads.inc();
                let ctx = self.pending.next_read_ctx();
                match self.replica.read_index(ctx) {
                    Ok(()) => {
                        self.pending.reads.insert(ctx, PendingRead { op, reply, asked_at: Instant::now() });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.refusal(e)));
                    }
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Transfer { target, reply } => {
                let result = self.replica.transfer(target).map_err(|e| self.transfer_refusal(e));
                if let Ok(target) = result {
                    tracing::info!(id = self.id, target, "transferring leadership");
                }
                let _ = reply.send(result);
            }
            Request::Members(reply) => {
                let _ = reply.send(Ok(self.member_list()));
            }
            Request::ChangeMember { change, reply } => self.member_request(change, reply),
            Request::ConfirmNewCluster(reply) => {
                let _ = reply.send(self.replica.confirm_new_cluster());
            }
            Request::HashKv { index, reply } => self.pending.hash_at(index, reply, &self.replica),
            Request::Batch(requests) => {
                for request in requests {
                    debug_assert!(
                        matches!(request, Request::Write { .. } | Request::Read { .. }),
                        "a batch holds only writes and reads"
                    );
                    self.handle_request(request);
                }
            }
        }
    }

    fn write_request(&mut self, data: Bytes, reply: Reply<WriteReply>, trace: &OtelContext) {
        let result = if self.pending.writes.len() >= MAX_PENDING_WRITES {
            Err(RequestError::Overloaded(format!("{MAX_PENDING_WRITES} writes are already waiting to commit")))
        } else {
            self.replica.propose(data).map_err(|e| self.refusal(e))
        };
        match result {
            Ok((index, term)) => {
                self.admin.metrics.proposals.inc();
                let trace = WriteTrace::start(self.id, trace, index, term);
                let write = PendingWrite { term, reply, proposed_at: Instant::now(), trace };
                if let Some(old) = self.pending.writes.insert(index, write) {
                    // This node led an earlier term whose entry at `index` was
                    // overwritten before it was applied: that write was not applied.
                    assert!(old.term < term, "two writes proposed at {index} in term {term}");
                    let _ = old.reply.send(Err(RequestError::Unavailable(
                        "leadership changed before the write committed; it was not applied".into(),
                    )));
                }
            }
            Err(e) => {
                self.admin.metrics.proposals_failed.inc();
                let _ = reply.send(Err(e));
            }
        }
    }

    fn member_request(&mut self, change: MemberChange, reply: Reply<MemberChangeReply>) {
        let result = match change {
            MemberChange::Add { id, addr, auto_promote, allocate_if_taken } => {
                self.replica.add_member(id, &addr, auto_promote, allocate_if_taken)
            }
            MemberChange::Promote { id } => self.replica.promote_member(id),
            MemberChange::Remove { id } => self.replica.remove_member(id),
        };
        match result {
            Ok(Proposed::Existing(id)) => {
                let _ = reply.send(Ok(MemberChangeReply { id, members: self.member_list() }));
            }
            Ok(Proposed::At { index, term, id }) => {
                tracing::info!(id = self.id, node = id, index, "proposed a membership change");
                self.pending.member_changes.insert(index, PendingChange { term, id, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(self.refusal(e)));
            }
        }
    }

    /// The client-facing error for a refused request.
    pub(super) fn refusal(&self, e: Refusal) -> RequestError {
        match e {
            Refusal::ShuttingDown => shutting_down(),
            Refusal::Core(e) => self.propose_error(e),
            Refusal::Member(e) => RequestError::Invalid(e.to_string()),
            Refusal::AlreadyRemoved(_) => RequestError::Invalid(e.to_string()),
            Refusal::BeingAdded { .. } => RequestError::Unavailable(e.to_string()),
        }
    }

    fn transfer_refusal(&self, e: Refusal) -> RequestError {
        match e {
            // No target named and none to pick.
            Refusal::Core(ProposeError::NotAVoter(0)) if self.replica.is_leader() => {
                RequestError::Unavailable("no other voter to hand leadership to".into())
            }
            e => self.refusal(e),
        }
    }

    fn propose_error(&self, e: ProposeError) -> RequestError {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader_hint(leader),
            ProposeError::TransferInProgress => RequestError::Unavailable("leadership transfer in progress".into()),
            ProposeError::Backpressure { .. } | ProposeError::TooManyReads { .. } => {
                RequestError::Overloaded(e.to_string())
            }
            ProposeError::ConfChangePending { .. } | ProposeError::NoCommitInTerm => {
                RequestError::Unavailable(e.to_string())
            }
            ProposeError::NotAVoter(_) | ProposeError::InvalidConfChange(_) | ProposeError::NotCaughtUp { .. } => {
                RequestError::Invalid(e.to_string())
            }
            ProposeError::Recovering(_) | ProposeError::WouldStall { .. } => RequestError::Unavailable(e.to_string()),
        }
    }

    pub(super) fn not_leader_hint(&self, leader: Option<NodeId>) -> RequestError {
        let leader = leader.filter(|l| *l != self.id);
        let leader_addr = leader.and_then(|l| self.replica.membership().addr(l).map(str::to_string));
        RequestError::NotLeader { leader, leader_addr }
    }

    fn status(&self) -> NodeStatus {
        let st = self.replica.status();
        NodeStatus {
            id: self.id,
            role: st.role.as_str().to_string(),
            term: st.term,
            leader: st.leader,
            commit_index: st.commit_index,
            applied_index: self.replica.applied_index(),
            last_index: st.last_index,
            snapshot_index: self.replica.snapshot_index(),
            peers: self.shared.addrs(),
            cluster_id: self.shared.cluster_id,
            recovering: st.recovering,
        }
    }

    /// This node's view of the configuration.
    pub(super) fn member_list(&self) -> MemberList {
        member_list(self.id, self.shared.cluster_id, self.replica.member_view())
    }
}

fn member_list(node: NodeId, cluster_id: u64, view: MemberView) -> MemberList {
    let members = view
        .members
        .into_iter()
        .map(|m| MemberInfo {
            id: m.id,
            addr: m.addr,
            role: if m.voter { MemberRole::Voter } else { MemberRole::Learner },
            auto_promote: m.auto_promote,
            match_index: m.match_index,
        })
        .collect();
    MemberList {
        cluster_id,
        node,
        leader: view.leader,
        conf_index: view.conf_index,
        committed: view.committed,
        members,
        removed: view.removed,
    }
}

pub(super) fn shutting_down() -> RequestError {
    RequestError::Unavailable("the node is shutting down".into())
}
