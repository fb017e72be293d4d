//! The Raft state machine proper: one `step` per role, elections, replication,
//! ReadIndex, leadership transfer and snapshot shipping. [`crate::RawNode`] wraps it
//! with the Ready/advance interface.

use bytes::{Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::config::Config;
use crate::event::{CandidateRequest, ElectionOutcome, Event, StepDownReason, VoteReason};
use crate::log::{LogError, RaftLog};
use crate::progress::ProgressState;
use crate::read_only::{ReadOnly, ReadState};
use crate::tracker::{ProgressTracker, VoteResult};
use crate::types::*;

mod election;
mod follower;
mod leader;
mod proposal;

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// A message the core refused. The node's state is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    #[error("message for node {to} delivered to node {me}")]
    WrongRecipient { to: NodeId, me: NodeId },
    #[error("message from invalid sender {from}")]
    BadSender { from: NodeId },
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Why a proposal or read was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("too much uncommitted data ({bytes} bytes, limit {limit})")]
    Backpressure { bytes: usize, limit: usize },
    #[error("too many pending reads (limit {limit})")]
    TooManyReads { limit: usize },
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// Only one configuration change may be uncommitted at a time.
    #[error("the configuration change at index {index} has not committed yet")]
    ConfChangePending { index: Index },
    /// A new leader accepts configuration changes only once it has committed an entry
    /// of its own term (the fix for the single-server change bug, raft-dev 2015).
    #[error("the leader has not yet committed an entry of its term")]
    NoCommitInTerm,
    #[error(transparent)]
    InvalidConfChange(#[from] ConfChangeError),
    /// A learner is promoted only once it is within `limit` entries of the leader.
    #[error("node {node} is {lag} entries behind the leader (limit {limit})")]
    NotCaughtUp { node: NodeId, lag: u64, limit: u64 },
    /// The node is recovering from lost state: it may not vote, so it is neither
    /// promoted nor handed leadership until its recovery ends.
    #[error("node {0} is recovering from lost state")]
    Recovering(NodeId),
    /// The change would leave fewer voters that are not recovering from lost state
    /// than a quorum (a voter added or promoted by it counted as one that may be):
    /// nothing could commit, recoveries included, until one came back.
    #[error(
        "the change would leave {recovering} of {voters} voters recovering from lost state: no quorum without them"
    )]
    WouldStall { voters: usize, recovering: usize },
}

/// A snapshot arriving in chunks from the leader.
#[derive(Debug)]
struct IncomingSnapshot {
    meta: SnapshotMeta,
    total_len: u64,
    buf: BytesMut,
}

/// The longest wait, in ticks, before a snapshot refused for its size is offered again.
const MAX_SNAPSHOT_BACKOFF_TICKS: u32 = 6_000;

/// A follower's answer to a snapshot chunk, as the leader handles it.
#[derive(Clone, Copy, Debug)]
struct SnapshotAnswer {
    meta_index: Index,
    next_offset: u64,
    done: bool,
    rejected: bool,
    too_large: Option<u64>,
    /// The follower was not recovering: its acknowledgement counts.
    counted: bool,
}

/// An election in progress, for reporting how it ended.
#[derive(Clone, Copy, Debug)]
struct Election {
    term: Term,
    pre_vote: bool,
}

#[derive(Debug)]
pub struct Raft {
    pub(crate) cfg: Config,
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) log: RaftLog,
    pub(crate) tracker: ProgressTracker,
    read_only: ReadOnly,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    rng: ChaCha8Rng,
    /// Messages safe to send at once (a leader's replication traffic).
    pub(crate) msgs: Vec<Message>,
    /// Messages to send only once this Ready's state is durable (votes, acks).
    pub(crate) msgs_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) dropped_reads: Vec<u64>,
    pub(crate) events: Vec<Event>,
    lead_transferee: Option<NodeId>,
    /// The newest snapshot this node has, to send to lagging followers.
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot received from the leader, to hand to the runtime.
    pub(crate) pending_snapshot: Option<Snapshot>,
    incoming: Option<IncomingSnapshot>,
    election: Option<Election>,
    uncommitted_bytes: usize,
    /// New entries were proposed: replicate them when the runtime next asks for a Ready,
    /// so a burst of proposals shares AppendEntries.
    pub(crate) needs_broadcast: bool,
    /// The index of the last configuration change this leader may not have committed
    /// yet; another is refused until the commit index reaches it.
    pending_conf_index: Index,
    /// The nonce of this node's recovery from lost state, while it lasts. Until then it
    /// never votes or campaigns, and every message it sends carries the nonce so that
    /// leaders count none of it toward a quorum. It ends when the node's commit index
    /// covers a [`RecoveryMarker`] of its nonce (see [`Raft::check_recovered`]).
    pub(crate) recovery: Option<u64>,
    /// The highest index this node's log is known to share with the leader of its
    /// term: checked by an AppendEntries of that leader, or covered by its snapshot. A
    /// recovering node lets heartbeats move its commit index no further.
    leader_verified: Index,
    /// The trace of the message being stepped, handed back in the events it causes.
    /// Never read to decide anything.
    cause: Option<TraceTag>,
}

/// The log a node resumes with. The configuration lives in the log and in snapshots;
/// the startup flags (`conf`, `changes`) only bootstrap a brand-new cluster — and serve
/// as the base of a log written before configurations were logged (its first entry is
/// not a ConfChange). Returns whether it bootstrapped.
fn recovered_log(
    meta: &SnapshotMeta,
    conf: ConfState,
    changes: Vec<ConfChange>,
    entries: Vec<Entry>,
    commit: Index,
) -> (RaftLog, bool) {
    let bootstrap = meta.index == 0 && entries.is_empty() && !changes.is_empty();
    let legacy = meta.index == 0 && entries.first().is_some_and(|e| e.kind != EntryKind::ConfChange);
    let base = if meta.index > 0 {
        meta.conf.clone()
    } else if legacy {
        conf
    } else {
        ConfState::default()
    };
    let mut log = RaftLog::recovered(meta, base, entries, commit);
    if bootstrap {
        // Like etcd-raft: every initial member appends the same entries, one per member,
        // at term 1 and commits them, so that a node joining later learns the initial
        // configuration from the log like any other.
        for cc in changes {
            let index = log.last_index() + 1;
            log.append(Entry { index, term: 1, kind: EntryKind::ConfChange, data: cc.encode() });
        }
        log.commit_to(log.last_index());
    }
    (log, bootstrap)
}

impl Raft {
    /// `conf`: the base of a log written before configurations were logged (its first
    /// entry is not a ConfChange). `changes`: the changes a brand-new cluster starts
    /// with, appended only when storage holds nothing (the caller checked that they
    /// apply in order to an empty configuration and leave voters).
    pub fn new(
        cfg: Config,
        conf: ConfState,
        changes: Vec<ConfChange>,
        hard_state: HardState,
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
        lost_state: bool,
    ) -> Raft {
        let meta = snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default();
        let (log, bootstrap) = recovered_log(&meta, conf, changes, entries, hard_state.commit);
        let (mut term, mut vote) = (hard_state.term, hard_state.vote);
        if bootstrap && term == 0 {
            (term, vote) = (1, None);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let conf = log.conf().clone();
        let mut events = Vec::new();
        if bootstrap {
            events.push(Event::ConfChanged { index: log.conf_index(), conf: conf.clone() });
        }
        // A new nonce per start: a marker appended before a restart proves nothing
        // about what the node knew after it.
        let recovery = (lost_state || hard_state.recovering).then(|| rng.next_u64());
        if let Some(nonce) = recovery {
            events.push(Event::RecoveryStarted { nonce, lost_state });
        }
        let mut raft = Raft {
            id: cfg.id,
            term,
            vote,
            leader: None,
            role: Role::Follower,
            log,
            tracker: ProgressTracker::new(conf, cfg.max_inflight_appends),
            read_only: ReadOnly::new(cfg.max_pending_reads),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_tick,
            rng,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            events,
            lead_transferee: None,
            snapshot,
            pending_snapshot: None,
            incoming: None,
            election: None,
            uncommitted_bytes: 0,
            needs_broadcast: false,
            pending_conf_index: 0,
            recovery,
            leader_verified: 0,
            cause: None,
            cfg,
        };
        raft.reset_timers();
        raft
    }

    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed, recovering: self.recovery.is_some() }
    }

    /// Whether this node may campaign: it is a voter of its latest configuration, or of
    /// its committed one. The latter covers a node whose removal is in its log but not
    /// committed (dissertation §4.2.2): it may be the only one with the removal entry
    /// (say, a leader that removed itself and then lost leadership), and must be able to
    /// lead again to commit it; as a candidate it does not count its own vote, and as a
    /// leader it does not count itself, and hands off once the removal commits. Never a
    /// learner, a node that knows its removal committed, or a new node that has not
    /// learned the configuration yet.
    fn promotable(&self) -> bool {
        self.recovery.is_none()
            && (self.tracker.is_voter(self.id)
                || self.log.conf_at(self.log.committed).is_some_and(|c| c.voters.contains(&self.id)))
    }

    /// Brings the tracker in line with the latest configuration in the log, after the
    /// log changed (append, truncation, snapshot). New members start probing.
    fn sync_conf(&mut self) {
        if self.log.conf() == self.tracker.conf() {
            return;
        }
        let conf = self.log.conf().clone();
        self.tracker.set_conf(conf.clone(), self.log.last_index() + 1);
        if self.lead_transferee.is_some_and(|t| !self.tracker.is_voter(t)) {
            self.lead_transferee = None;
        }
        self.events.push(Event::ConfChanged { index: self.log.conf_index(), conf });
    }

    fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let jitter = (self.rng.next_u64() % u64::from(self.cfg.election_tick)) as u32;
        self.randomized_election_timeout = self.cfg.election_tick + jitter;
    }

    /// A voter that heard from a leader within an election timeout ignores vote
    /// requests, so a rejoining node cannot depose a healthy leader.
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum && self.leader.is_some() && self.election_elapsed < self.cfg.election_tick
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert_ne!(to, self.id, "a node never messages itself");
        let leader_traffic = matches!(
            body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
        );
        let msg = Message { from: self.id, to, term, body, recovery: self.recovery, trace: None };
        if leader_traffic {
            self.msgs.push(msg);
        } else {
            self.msgs_after_persist.push(msg);
        }
    }

    fn peers(&self) -> Vec<NodeId> {
        self.tracker.conf().members().filter(|&id| id != self.id).collect()
    }

    fn voter_peers(&self) -> Vec<NodeId> {
        self.tracker.conf().voters.iter().copied().filter(|&id| id != self.id).collect()
    }

    // ---- the message entry point ----

    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        self.validate(&m)?;
        self.cause = m.trace;
        let result = self.step_valid(m);
        self.cause = None;
        result
    }

    fn step_valid(&mut self, m: Message) -> Result<(), StepError> {
        if m.term > self.term {
            if !self.accept_higher_term(&m) {
                return Ok(());
            }
        } else if m.term < self.term {
            self.answer_stale(&m);
            return Ok(());
        }
        if let MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } = m.body {
            self.handle_vote_request(&m, pre_vote, LogPosition { term: last_log_term, index: last_log_index });
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    /// A message from a higher term. Returns false if it is to be ignored.
    fn accept_higher_term(&mut self, m: &Message) -> bool {
        match m.body {
            MessageBody::RequestVote { force, pre_vote, .. } => {
                if !force && self.in_lease() {
                    let leader = self.leader.unwrap_or(0);
                    self.vote_decided(m, false, VoteReason::LeaderLease { leader });
                    return false;
                }
                if !pre_vote {
                    self.become_follower(m.term, None);
                }
            }
            // A granted pre-vote echoes the term we would campaign in; it is not news.
            MessageBody::RequestVoteResponse { pre_vote: true, granted: true } => {}
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, Some(m.from));
            }
            _ => self.become_follower(m.term, None),
        }
        true
    }

    /// A message from an older term: tell a stale leader or pre-candidate our term so it
    /// steps down; ignore the rest.
    fn answer_stale(&mut self, m: &Message) {
        match m.body {
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.send(m.from, MessageBody::HeartbeatResponse { read_round: 0, missing_from: None });
            }
            MessageBody::RequestVote { pre_vote, .. } => {
                self.vote_decided(m, false, VoteReason::LowerTerm { own_term: self.term });
                if pre_vote {
                    self.send(m.from, MessageBody::RequestVoteResponse { pre_vote: true, granted: false });
                }
            }
            _ => {}
        }
    }

    fn validate(&self, m: &Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(StepError::WrongRecipient { to: m.to, me: self.id });
        }
        if m.from == 0 || m.from == self.id {
            return Err(StepError::BadSender { from: m.from });
        }
        let malformed = |reason: String| Err(StepError::Malformed { kind: m.body.name(), reason });
        match &m.body {
            MessageBody::AppendEntries { prev_log_index, entries, .. } => {
                for (i, e) in entries.iter().enumerate() {
                    if prev_log_index.checked_add(1 + i as u64) != Some(e.index) {
                        return malformed(format!("entry {} does not follow {prev_log_index} contiguously", e.index));
                    }
                    if e.term > m.term || entries.get(i + 1).is_some_and(|next| next.term < e.term) {
                        return malformed(format!("entry {} has term {} out of order", e.index, e.term));
                    }
                }
            }
            MessageBody::InstallSnapshot { offset, total_len, data, .. }
                if offset.checked_add(data.len() as u64).is_none_or(|end| end > *total_len) =>
            {
                return malformed(format!("chunk at {offset} of {} bytes exceeds total {total_len}", data.len()));
            }
            // The entry after a snapshot at u64::MAX has no index.
            MessageBody::InstallSnapshot { meta, .. } if meta.index == u64::MAX => {
                return malformed(format!("snapshot index {} leaves no index for the next entry", meta.index));
            }
            // Log indexes start at 1: "missing from 0" would underflow the leader's math.
            MessageBody::HeartbeatResponse { missing_from: Some(0), .. } => {
                return malformed("missing_from is 0; log indexes start at 1".to_string());
            }
            // The tracker asserts that a node is either voter or learner; a snapshot from
            // the network must not reach that assert.
            MessageBody::InstallSnapshot { meta, .. } if !meta.conf.voters.is_disjoint(&meta.conf.learners) => {
                return malformed(format!("snapshot at {} lists a node as both voter and learner", meta.index));
            }
            _ => {}
        }
        Ok(())
    }

    // ---- time ----

    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.election_elapsed >= self.randomized_election_timeout && self.promotable() {
                self.campaign(false);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.tracker.quorum_active(self.id) {
                self.become_follower(self.term, None);
                return;
            }
            let me = self.id;
            for (id, pr) in self.tracker.iter_mut() {
                pr.recent_active = *id == me;
            }
            if let Some(target) = self.lead_transferee.take() {
                self.events.push(Event::TransferAborted { target });
                if self.removal_committed() {
                    // The hand-off did not finish: step down anyway, the voters elect.
                    self.step_down_removed();
                    return;
                }
            }
        }
        self.maybe_hand_off_removed();
        if self.role != Role::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            self.resend_stalled_snapshots();
        }
    }

    /// A lost chunk would stall a snapshot forever; resend after a few quiet heartbeats.
    fn resend_stalled_snapshots(&mut self) {
        let mut stalled = Vec::new();
        for (id, pr) in self.tracker.iter_mut() {
            if !matches!(pr.state, ProgressState::Snapshot { .. }) {
                continue;
            }
            if pr.snapshot_retry_ticks > 0 {
                // Backing off after a refusal for size; then from the first chunk.
                pr.snapshot_retry_ticks -= 1;
                if pr.snapshot_retry_ticks == 0 {
                    stalled.push(*id);
                }
                continue;
            }
            pr.snapshot_idle_ticks += 1;
            if pr.snapshot_idle_ticks > 3 {
                stalled.push(*id);
            }
        }
        for id in stalled {
            self.send_snapshot_chunk(id);
        }
    }
}
