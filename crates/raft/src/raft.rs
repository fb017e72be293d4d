//! The Raft state machine proper: one `step` per role, elections, replication,
//! ReadIndex, leadership transfer and snapshot shipping. [`crate::RawNode`] wraps it
//! with the Ready/advance interface.

use bytes::{Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::config::Config;
use crate::event::{ElectionOutcome, Event, StepDownReason};
use crate::log::{LogError, RaftLog};
use crate::progress::ProgressState;
use crate::read_only::{ReadOnly, ReadState};
use crate::tracker::{ProgressTracker, VoteResult};
use crate::types::*;

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
        // The configuration lives in the log and in snapshots. The startup flags only
        // bootstrap a brand-new cluster — and serve as the base of a log written before
        // configurations were logged (its first entry is not a ConfChange).
        let bootstrap = meta.index == 0 && entries.is_empty() && !changes.is_empty();
        let legacy = meta.index == 0 && entries.first().is_some_and(|e| e.kind != EntryKind::ConfChange);
        let base = if meta.index > 0 {
            meta.conf.clone()
        } else if legacy {
            conf.clone()
        } else {
            ConfState::default()
        };
        let mut log = RaftLog::recovered(&meta, base, entries, hard_state.commit);
        let (mut term, mut vote) = (hard_state.term, hard_state.vote);
        if bootstrap {
            // Like etcd-raft: every initial member appends the same entries, one per
            // member, at term 1 and commits them, so that a node joining later learns the
            // initial configuration from the log like any other.
            for cc in changes {
                let index = log.last_index() + 1;
                log.append(Entry { index, term: 1, kind: EntryKind::ConfChange, data: cc.encode() });
            }
            log.commit_to(log.last_index());
            if term == 0 {
                (term, vote) = (1, None);
            }
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
        let msg = Message { from: self.id, to, term, body, recovery: self.recovery };
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

    // ---- role transitions ----

    fn finish_election(&mut self, outcome: ElectionOutcome) {
        if let Some(e) = self.election.take() {
            let (granted, _, needed) = self.tracker.vote_counts();
            self.events.push(Event::ElectionFinished { term: e.term, pre_vote: e.pre_vote, outcome, granted, needed });
        }
    }

    fn set_term(&mut self, term: Term) {
        if term != self.term {
            assert!(term > self.term, "term must never decrease ({} -> {term})", self.term);
            self.events.push(Event::TermChanged { from: self.term, to: term });
            self.term = term;
            self.vote = None;
            self.leader_verified = 0;
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if self.role == Role::Leader {
            let reason = if term > self.term { StepDownReason::HigherTerm } else { StepDownReason::LostQuorum };
            self.events.push(Event::SteppedDown { term: self.term, reason });
            self.dropped_reads.extend(self.read_only.drain());
        }
        let outcome =
            if leader.is_some() || term > self.term { ElectionOutcome::Superseded } else { ElectionOutcome::Lost };
        self.finish_election(outcome);
        self.set_term(term);
        self.role = Role::Follower;
        self.set_leader(leader);
        self.lead_transferee = None;
        // Proposals waiting to be broadcast are a leader's business; a follower sends
        // no AppendEntries (its progress view is stale, its log may be truncated).
        self.needs_broadcast = false;
        self.reset_timers();
    }

    /// A leader whose removal committed steps down.
    fn step_down_removed(&mut self) {
        debug_assert_eq!(self.role, Role::Leader);
        self.events.push(Event::SteppedDown { term: self.term, reason: StepDownReason::Removed });
        self.dropped_reads.extend(self.read_only.drain());
        self.role = Role::Follower;
        self.become_follower(self.term, None);
    }

    fn set_leader(&mut self, leader: Option<NodeId>) {
        if let Some(id) = leader
            && leader != self.leader
            && id != self.id
        {
            self.events.push(Event::LeaderKnown { term: self.term, leader: id });
        }
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader never pre-campaigns");
        self.role = Role::PreCandidate;
        self.leader = None;
        self.tracker.reset_votes();
        self.reset_timers();
        self.election = Some(Election { term: self.term + 1, pre_vote: true });
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader never campaigns");
        self.set_term(self.term + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.tracker.reset_votes();
        self.reset_timers();
        self.election = Some(Election { term: self.term, pre_vote: false });
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        self.finish_election(ElectionOutcome::Won);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.lead_transferee = None;
        self.reset_timers();
        self.tracker.reset_for_leader(self.log.last_index());
        let persisted = self.log.persisted();
        if let Some(me) = self.tracker.get_mut(self.id) {
            me.maybe_update(persisted, true);
            me.become_replicate();
        }
        self.uncommitted_bytes = 0;
        // Any configuration change in the log may be uncommitted; the no-op must commit
        // before another is accepted anyway.
        self.pending_conf_index = self.log.last_index();
        // A no-op of the new term lets the leader commit earlier terms' entries (§5.4.2)
        // and learn its commit index for ReadIndex.
        let index = self.log.last_index() + 1;
        self.log.append(Entry { index, term: self.term, kind: EntryKind::Noop, data: Bytes::new() });
        self.needs_broadcast = true;
        self.events.push(Event::BecameLeader { term: self.term });
    }

    // ---- elections ----

    /// Starts an election: a pre-vote first unless `transfer` (leadership transfer skips
    /// it and overrides the voters' leader lease).
    pub(crate) fn campaign(&mut self, transfer: bool) {
        if !self.promotable() || self.role == Role::Leader {
            return;
        }
        self.finish_election(ElectionOutcome::TimedOut);
        let pre_vote = self.cfg.pre_vote && !transfer;
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        let term = if pre_vote { self.term + 1 } else { self.term };
        self.events.push(Event::ElectionStarted { term, pre_vote, transfer });
        self.tracker.record_vote(self.id, true);
        if self.check_votes(pre_vote, transfer) {
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            let body = MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, force: transfer };
            self.send_with_term(peer, term, body);
        }
    }

    /// Acts on the votes counted so far. Returns true if the election is decided.
    fn check_votes(&mut self, pre_vote: bool, transfer: bool) -> bool {
        match self.tracker.tally_votes() {
            VoteResult::Won if pre_vote => {
                self.finish_election(ElectionOutcome::Won);
                self.campaign_after_pre_vote(transfer);
                true
            }
            VoteResult::Won => {
                self.become_leader();
                true
            }
            VoteResult::Lost => {
                self.become_follower(self.term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    fn campaign_after_pre_vote(&mut self, transfer: bool) {
        // The pre-vote succeeded: run the real election without another pre-vote.
        let saved = self.cfg.pre_vote;
        self.cfg.pre_vote = false;
        self.campaign(transfer);
        self.cfg.pre_vote = saved;
    }

    /// Votes are given without consulting the configuration (dissertation §4.1): a
    /// candidate may be a voter in a configuration this node has not received yet, and
    /// refusing it could leave a cluster with a majority up unable to elect (a lagging
    /// voter that does not know the only up-to-date candidate). A removed node cannot
    /// disrupt anyway: it lacks its committed removal, so a majority of its old
    /// configuration has a more up-to-date log and refuses its pre-vote, and voters in
    /// a leader's lease ignore it — it never gets to raise anyone's term.
    ///
    /// A node recovering from lost state never votes: it may have voted in this term or
    /// acknowledged entries the candidate lacks, and cannot remember.
    fn handle_vote_request(&mut self, m: &Message, pre_vote: bool, last_log_index: Index, last_log_term: Term) {
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && m.term > self.term);
        let granted = self.recovery.is_none() && can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
        if granted && !pre_vote {
            self.election_elapsed = 0;
            self.vote = Some(m.from);
        }
        // A granted response echoes the request's term; a refusal carries ours, so a
        // stale candidate learns the current term.
        let term = if granted { m.term } else { self.term };
        self.send_with_term(m.from, term, MessageBody::RequestVoteResponse { pre_vote, granted });
    }

    // ---- the message entry point ----

    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        self.validate(&m)?;
        if m.term > self.term {
            if !self.accept_higher_term(&m) {
                return Ok(());
            }
        } else if m.term < self.term {
            self.answer_stale(&m);
            return Ok(());
        }
        if let MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } = m.body {
            self.handle_vote_request(&m, pre_vote, last_log_index, last_log_term);
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
            MessageBody::RequestVote { pre_vote: true, .. } => {
                self.send(m.from, MessageBody::RequestVoteResponse { pre_vote: true, granted: false });
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

    fn step_follower(&mut self, m: Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
                self.heard_from_leader(m.from);
                self.handle_append(m.from, prev_log_index, prev_log_term, &entries, leader_commit)?;
            }
            MessageBody::Heartbeat { leader_commit, read_round } => {
                self.heard_from_leader(m.from);
                // A heartbeat's commit index rests on the leader's view of this node's
                // log, which is stale for a node that lost its state (the leader may not
                // know yet): while recovering, no further than this leader's appends
                // checked, entry by entry.
                let verified = if self.recovery.is_some() { self.leader_verified } else { self.log.last_index() };
                self.commit_to(leader_commit.min(verified));
                // The leader sends min(our match, its commit); a log ending below that
                // lost entries it once acknowledged.
                let last = self.log.last_index();
                let missing_from = (leader_commit > last).then_some(last + 1);
                self.send(m.from, MessageBody::HeartbeatResponse { read_round, missing_from });
            }
            MessageBody::InstallSnapshot { meta, offset, total_len, data, done } => {
                self.heard_from_leader(m.from);
                self.handle_snapshot_chunk(m.from, meta, offset, total_len, data, done);
            }
            MessageBody::TimeoutNow => self.campaign(true),
            _ => {}
        }
        Ok(())
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.set_leader(Some(leader));
        // A recovering node may have voted in this term before it lost its state; the
        // only vote that cannot hurt now is one for the term's leader.
        if self.recovery.is_some() && self.vote.is_none() {
            self.vote = Some(leader);
        }
    }

    /// A follower's commit index moves to `index` (if higher); a recovery ends when it
    /// covers this node's marker.
    fn commit_to(&mut self, index: Index) {
        let old = self.log.committed;
        if self.log.commit_to(index) {
            self.check_recovered(old);
        }
    }

    /// Ends this node's recovery if an entry committed after `old_commit` is the marker
    /// of its nonce: a quorum that did not count this node accepted an entry its leader
    /// appended after the node lost its state, so no leader elected with the node's
    /// forgotten votes can win any more, and the node's log holds every entry committed
    /// before it (Protocol-Aware Recovery, Alagappan et al., FAST 2018).
    fn check_recovered(&mut self, old_commit: Index) {
        let Some(nonce) = self.recovery else { return };
        let committed = self.log.committed;
        let found = self.log.entries().iter().find(|e| {
            e.index > old_commit
                && e.index <= committed
                && e.kind == EntryKind::Noop
                && RecoveryMarker::decode(&e.data) == Some(RecoveryMarker { node: self.id, nonce })
        });
        if let Some(marker) = found {
            let index = marker.index;
            self.recovery = None;
            self.events.push(Event::RecoveryFinished { term: self.term, index });
        }
    }

    /// Ends a recovery at the start of a brand-new cluster: the runtime learned that
    /// every other founding member is at term 1 or below, so nobody ever voted for or
    /// acknowledged anything this node might have forgotten. Refused (false) once this
    /// node itself is past term 1.
    pub(crate) fn confirm_new_cluster(&mut self) -> bool {
        if self.recovery.is_none() {
            return true;
        }
        if self.term > 1 || self.vote.is_some() {
            return false;
        }
        self.recovery = None;
        self.events.push(Event::RecoveryFinished { term: self.term, index: 0 });
        true
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m)
            }
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                if pre_vote == (self.role == Role::PreCandidate) {
                    self.tracker.record_vote(m.from, granted);
                    self.check_votes(pre_vote, false);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    // ---- follower side of replication ----

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: Index,
        prev_term: Term,
        entries: &[Entry],
        leader_commit: Index,
    ) -> Result<(), StepError> {
        if prev < self.log.committed {
            let index = self.log.committed;
            self.send(from, MessageBody::AppendEntriesResponse { success: true, index, reject_hint: 0, hint_term: 0 });
            return Ok(());
        }
        let appended = self.log.maybe_append(prev, prev_term, entries);
        self.sync_conf();
        match appended? {
            Some(last_new) => {
                self.leader_verified = self.leader_verified.max(last_new);
                self.commit_to(leader_commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse { success: true, index: last_new, reject_hint: 0, hint_term: 0 },
                );
            }
            None => {
                let hint = self.log.find_conflict_by_term(prev.min(self.log.last_index()), prev_term);
                let hint_term = self.log.term(hint).unwrap_or(0);
                let body =
                    MessageBody::AppendEntriesResponse { success: false, index: prev, reject_hint: hint, hint_term };
                self.send(from, body);
            }
        }
        Ok(())
    }

    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        total_len: u64,
        data: Bytes,
        done: bool,
    ) {
        let meta_index = meta.index;
        let respond = |raft: &mut Raft, next_offset: u64, done: bool, rejected: bool| {
            let body =
                MessageBody::InstallSnapshotResponse { meta_index, next_offset, done, rejected, too_large: None };
            raft.send(from, body);
        };
        if meta.index <= self.log.committed {
            // Already have everything it covers: tell the leader to probe from here.
            self.incoming = None;
            return respond(self, total_len, true, false);
        }
        if total_len > self.cfg.max_snapshot_bytes {
            self.incoming = None;
            let too_large = Some(self.cfg.max_snapshot_bytes);
            let body = MessageBody::InstallSnapshotResponse {
                meta_index,
                next_offset: 0,
                done: false,
                rejected: true,
                too_large,
            };
            return self.send(from, body);
        }
        if offset == 0 {
            let capacity = total_len.min(64 << 20) as usize;
            self.incoming =
                Some(IncomingSnapshot { meta: meta.clone(), total_len, buf: BytesMut::with_capacity(capacity) });
        }
        let expected = match &self.incoming {
            Some(inc) if inc.meta == meta && inc.total_len == total_len => inc.buf.len() as u64,
            _ => 0,
        };
        if offset != expected {
            return respond(self, expected, false, true);
        }
        let incoming = self.incoming.as_mut().expect("started at offset 0");
        incoming.buf.extend_from_slice(&data);
        let received = incoming.buf.len() as u64;
        if !done {
            return respond(self, received, false, false);
        }
        let incoming = self.incoming.take().expect("present");
        if received != total_len {
            return respond(self, 0, false, true);
        }
        self.restore(Snapshot { meta: incoming.meta, data: incoming.buf.freeze() });
        respond(self, total_len, true, false);
    }

    /// Installs a snapshot from the leader, unless the log already covers it.
    fn restore(&mut self, snapshot: Snapshot) {
        let meta = &snapshot.meta;
        self.leader_verified = self.leader_verified.max(meta.index);
        if self.log.match_term(meta.index, meta.term) {
            // Our log has the entry it ends at, so it has everything before: just commit.
            self.commit_to(meta.index);
            return;
        }
        self.log.restore(meta);
        self.events.push(Event::SnapshotInstalled { index: meta.index, term: meta.term });
        self.sync_conf();
        self.pending_snapshot = Some(snapshot.clone());
        self.snapshot = Some(snapshot);
    }

    // ---- leader side ----

    fn step_leader(&mut self, m: Message) -> Result<(), StepError> {
        let Some(progress) = self.tracker.get_mut(m.from) else { return Ok(()) };
        // A recovering node's word counts toward no quorum, check-quorum included.
        let counted =
            m.recovery.is_none() || self.cfg.planted_bug == Some(crate::config::PlantedBug::CountRecoveringAcks);
        progress.recovering = !counted;
        if counted {
            progress.recent_active = true;
        }
        if let Some(nonce) = m.recovery {
            self.mark_recovery(m.from, nonce);
        }
        match m.body {
            // Within one term a leader's log only grows, so an acknowledgement beyond its
            // last index is forged or corrupt; counting it could commit what no majority holds.
            MessageBody::AppendEntriesResponse { success: true, index, .. } if index > self.log.last_index() => {
                return Err(StepError::Malformed {
                    kind: "AppendEntriesResponse",
                    reason: format!(
                        "acknowledges index {index} beyond the leader's last index {}",
                        self.log.last_index()
                    ),
                });
            }
            MessageBody::AppendEntriesResponse { success: true, index, .. } => {
                self.handle_append_success(m.from, index, counted)
            }
            MessageBody::AppendEntriesResponse { success: false, index, reject_hint, hint_term } => {
                let next_probe =
                    if hint_term > 0 { self.log.find_conflict_by_term(reject_hint, hint_term) } else { reject_hint };
                let pr = self.tracker.get_mut(m.from).expect("checked");
                if pr.maybe_decrease_to(index, next_probe) {
                    if pr.state == ProgressState::Replicate {
                        pr.become_probe();
                    }
                    self.send_append(m.from, true);
                }
            }
            MessageBody::HeartbeatResponse { read_round, missing_from } => {
                if let Some(next) = missing_from {
                    self.peer_lost_log(m.from, next);
                }
                self.handle_heartbeat_response(m.from, read_round, counted)
            }
            MessageBody::InstallSnapshotResponse { meta_index, next_offset, done, rejected, too_large } => {
                let answer = SnapshotAnswer { meta_index, next_offset, done, rejected, too_large, counted };
                self.handle_snapshot_response(m.from, answer)
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append_success(&mut self, from: NodeId, index: Index, counted: bool) {
        let pr = self.tracker.get_mut(from).expect("known peer");
        if !pr.maybe_update(index, counted) {
            if counted && self.maybe_commit() {
                self.broadcast_append();
            }
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot { index: snap } if pr.match_index >= snap => pr.become_probe(),
            ProgressState::Replicate => pr.inflights.free_to(index),
            ProgressState::Snapshot { .. } => {}
        }
        if self.maybe_commit() {
            self.broadcast_append();
        }
        while self.send_append(from, false) {}
        if self.lead_transferee == Some(from)
            && self.tracker.get(from).is_some_and(|p| p.match_index == self.log.last_index())
        {
            self.send(from, MessageBody::TimeoutNow);
            if self.removal_committed() {
                self.step_down_removed();
                return;
            }
        }
        self.maybe_hand_off_removed();
    }

    /// This leader is not a voter of its configuration, and that configuration has
    /// committed.
    fn removal_committed(&self) -> bool {
        self.role == Role::Leader && !self.tracker.is_voter(self.id) && self.log.conf_index() <= self.log.committed
    }

    /// A leader that removed itself keeps leading (without counting itself) until the
    /// removal commits; then it hands leadership to the most caught-up voter and steps
    /// down. If that voter lags, it first catches up, as in a leadership transfer.
    fn maybe_hand_off_removed(&mut self) {
        if !self.removal_committed() || self.lead_transferee.is_some() {
            return;
        }
        let best = self
            .tracker
            .conf()
            .voters
            .iter()
            .filter(|&&id| self.tracker.get(id).is_some_and(|p| !p.recovering))
            .map(|&id| (self.tracker.get(id).map_or(0, |p| p.match_index), std::cmp::Reverse(id)))
            .max();
        let Some((matched, std::cmp::Reverse(target))) = best else {
            self.step_down_removed();
            return;
        };
        if matched == self.log.last_index() {
            self.send(target, MessageBody::TimeoutNow);
            self.step_down_removed();
        } else {
            self.lead_transferee = Some(target);
            self.election_elapsed = 0;
            self.send_append(target, true);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64, counted: bool) {
        let pr = self.tracker.get_mut(from).expect("known peer");
        if counted {
            pr.read_round_acked = pr.read_round_acked.max(read_round);
        }
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
            pr.inflights.free_first();
        }
        if pr.match_index < self.log.last_index() {
            self.send_append(from, true);
        }
        self.release_confirmed_reads();
    }

    /// A follower no longer has entries it acknowledged (its disk was wiped or lost).
    /// Forget what it matched and probe from where its log now ends; the normal
    /// backtracking, or a snapshot, brings it back.
    fn peer_lost_log(&mut self, peer: NodeId, next: Index) {
        let Some(pr) = self.tracker.get_mut(peer) else { return };
        if next > pr.match_index {
            return;
        }
        self.events.push(Event::PeerLostLog { peer, match_index: pr.match_index, last_index: next - 1 });
        pr.reset_after_lost_log(next);
    }

    fn release_confirmed_reads(&mut self) {
        let confirmed = self.tracker.quorum_value(|p| p.read_round_acked);
        let released = self.read_only.release(confirmed);
        self.read_states.extend(released);
    }

    fn handle_snapshot_response(&mut self, from: NodeId, a: SnapshotAnswer) {
        let pr = self.tracker.get_mut(from).expect("known peer");
        if pr.state != (ProgressState::Snapshot { index: a.meta_index }) {
            return;
        }
        if a.done && !a.rejected {
            pr.maybe_update(a.meta_index, a.counted);
            pr.snapshot_refusals = 0;
            pr.become_probe();
            // The snapshot covers the marker of a recovering peer: the peer cannot see
            // it in its log, so it gets a new one (see `mark_recovery`).
            if pr.recovery_marker.is_some_and(|(_, index)| index <= a.meta_index) {
                pr.recovery_marker = None;
            }
            if a.counted && self.maybe_commit() {
                self.broadcast_append();
            }
            self.send_append(from, true);
            return;
        }
        if let Some(limit) = a.too_large {
            // Resending at once would ping-pong for ever: wait, longer each time.
            pr.snapshot_refusals = pr.snapshot_refusals.saturating_add(1);
            let backoff = (self.cfg.election_tick << pr.snapshot_refusals.min(6)).min(MAX_SNAPSHOT_BACKOFF_TICKS);
            pr.snapshot_retry_ticks = backoff;
            pr.snapshot_offset = 0;
            let bytes = self.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
            let refusals = pr.snapshot_refusals;
            self.events.push(Event::SnapshotRefused {
                peer: from,
                index: a.meta_index,
                bytes,
                limit,
                refusals,
                retry_in_ticks: backoff,
            });
            return;
        }
        pr.snapshot_offset = a.next_offset;
        self.send_snapshot_chunk(from);
    }

    /// A recovering peer said `nonce`: append a marker for it, once per nonce, so that
    /// its recovery can end (see `check_recovered`). Needs no client write: an idle
    /// cluster finishes recoveries too.
    fn mark_recovery(&mut self, peer: NodeId, nonce: u64) {
        let index = self.log.last_index() + 1;
        let Some(pr) = self.tracker.get_mut(peer) else { return };
        if pr.recovery_nonce != Some(nonce) {
            // A new incarnation: what the peer matched before it lost its state is gone,
            // and a heartbeat's commit index must not vouch for a log it never checked.
            pr.recovery_nonce = Some(nonce);
            let match_index = pr.match_index;
            pr.reset_after_lost_log(index);
            if match_index > 0 {
                self.events.push(Event::PeerLostLog { peer, match_index, last_index: 0 });
            }
        }
        if pr.recovery_marker.is_some_and(|(n, _)| n == nonce) {
            return;
        }
        pr.recovery_marker = Some((nonce, index));
        let data = RecoveryMarker { node: peer, nonce }.encode();
        let entry = Entry { index, term: self.term, kind: EntryKind::Noop, data };
        self.uncommitted_bytes += entry.size();
        self.log.append(entry);
        self.needs_broadcast = true;
        self.events.push(Event::RecoveryMarked { peer, index });
    }

    /// Commits the highest index a quorum has durably stored, if it is of this term
    /// (§5.4.2: never commit an earlier term's entry by counting replicas).
    fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.tracker.committed_index();
        let old = self.log.committed;
        if quorum_index <= old || self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        self.log.commit_to(quorum_index);
        let committed = self.log.entries_from(old + 1, usize::MAX).unwrap_or_default();
        let committed: Vec<&Entry> = committed.iter().filter(|e| e.index <= quorum_index).collect();
        let bytes: u64 = committed.iter().map(|e| e.data.len() as u64).sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(committed.iter().map(|e| e.size()).sum());
        let acked_by = self.tracker.iter().filter(|(_, p)| p.quorum_match >= quorum_index).map(|(id, _)| *id).collect();
        self.events.push(Event::Committed {
            first: old + 1,
            last: quorum_index,
            term: self.term,
            entries: committed.len() as u64,
            bytes,
            acked_by,
        });
        self.read_only.commit_known(quorum_index);
        true
    }

    /// Sends new entries (or a probe) to every peer.
    pub(crate) fn broadcast_append(&mut self) {
        for peer in self.peers() {
            self.send_append(peer, true);
        }
    }

    /// Sends the next AppendEntries to `to` if its progress allows. With `allow_empty`,
    /// an AppendEntries with no entries is sent too (to probe or carry the commit index).
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let Some(pr) = self.tracker.get(to) else { return false };
        if pr.is_paused() {
            return false;
        }
        let prev = pr.next_index - 1;
        let (Some(prev_term), Some(entries)) =
            (self.log.term(prev), self.log.entries_from(pr.next_index, self.cfg.max_append_bytes))
        else {
            return self.start_snapshot(to);
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        let body = MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: self.log.committed,
        };
        self.send(to, body);
        self.tracker.get_mut(to).expect("checked").sent_append(last);
        true
    }

    fn start_snapshot(&mut self, to: NodeId) -> bool {
        let Some(index) = self.snapshot.as_ref().map(|s| s.meta.index) else {
            debug_assert!(false, "log compacted without a snapshot");
            return false;
        };
        self.tracker.get_mut(to).expect("known peer").become_snapshot(index);
        self.send_snapshot_chunk(to);
        true
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let snapshot = self.snapshot.as_ref().expect("sending a snapshot we have");
        let pr = self.tracker.get_mut(to).expect("known peer");
        if pr.state != (ProgressState::Snapshot { index: snapshot.meta.index }) {
            // A newer snapshot replaced the one being sent: start it from the beginning.
            pr.become_snapshot(snapshot.meta.index);
        }
        let total = snapshot.data.len() as u64;
        let offset = pr.snapshot_offset.min(total);
        let end = (offset + self.cfg.snapshot_chunk_bytes as u64).min(total);
        pr.snapshot_idle_ticks = 0;
        let body = MessageBody::InstallSnapshot {
            meta: snapshot.meta.clone(),
            offset,
            total_len: total,
            data: snapshot.data.slice(offset as usize..end as usize),
            done: end == total,
        };
        self.send(to, body);
    }

    fn broadcast_heartbeat(&mut self) {
        let round = self.read_only.round();
        for peer in self.peers() {
            let matched = self.tracker.get(peer).map_or(0, |p| p.match_index);
            // Never tell a follower to commit past what it is known to hold.
            let leader_commit = matched.min(self.log.committed);
            self.send(peer, MessageBody::Heartbeat { leader_commit, read_round: round });
        }
    }

    /// Starts a confirmation round for reads that arrived since the last one.
    pub(crate) fn flush_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(round) = self.read_only.start_round() {
            if let Some(me) = self.tracker.get_mut(self.id) {
                me.read_round_acked = round;
            }
            self.broadcast_heartbeat();
            self.release_confirmed_reads();
        }
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

    // ---- client-facing operations ----

    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.check_leader()?;
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let index = self.log.last_index() + 1;
        let entry = Entry { index, term: self.term, kind: EntryKind::Command, data };
        let limit = self.cfg.max_uncommitted_bytes;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + entry.size() > limit {
            return Err(ProposeError::Backpressure { bytes: self.uncommitted_bytes, limit });
        }
        self.uncommitted_bytes += entry.size();
        self.log.append(entry);
        self.needs_broadcast = true;
        Ok((index, self.term))
    }

    /// Appends a configuration change to the leader's log; it takes effect at once.
    /// Refused unless this leader has committed an entry of its term and no other
    /// change is uncommitted, if the change does not fit the configuration, or (for a
    /// promotion) if the learner lags by more than `max_promotion_lag` entries or has
    /// not acknowledged any entry yet.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(Index, Term), ProposeError> {
        self.check_leader()?;
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            return Err(ProposeError::NoCommitInTerm);
        }
        if self.pending_conf_index > self.log.committed {
            return Err(ProposeError::ConfChangePending { index: self.pending_conf_index });
        }
        let next = self.log.conf().apply_change(&cc)?;
        // A node added as a voter at once starts with an empty disk: it recovers. A
        // learner being promoted may lose its disk while the change replicates (this
        // leader would hear of it only later): the new configuration must live with
        // either as if it were recovering.
        let new_voter = matches!(cc.change, ConfChangeKind::AddVoter | ConfChangeKind::PromoteVoter).then_some(cc.node);
        let recovering = next
            .voters
            .iter()
            .filter(|&&id| {
                id != self.id && (Some(id) == new_voter || self.tracker.get(id).is_some_and(|p| p.recovering))
            })
            .count();
        if next.voters.len() - recovering < crate::tracker::majority(next.voters.len()) {
            return Err(ProposeError::WouldStall { voters: next.voters.len(), recovering });
        }
        if cc.change == ConfChangeKind::PromoteVoter {
            // A recovering voter counts toward the majority but not toward a quorum: one
            // too many and no quorum could commit the markers that end recoveries.
            if self.tracker.get(cc.node).is_some_and(|p| p.recovering) {
                return Err(ProposeError::Recovering(cc.node));
            }
            let matched = self.tracker.get(cc.node).map_or(0, |p| p.match_index);
            let lag = self.log.last_index().saturating_sub(matched);
            let limit = self.cfg.max_promotion_lag;
            if lag > limit || matched == 0 {
                return Err(ProposeError::NotCaughtUp { node: cc.node, lag, limit });
            }
        }
        let index = self.log.last_index() + 1;
        let entry = Entry { index, term: self.term, kind: EntryKind::ConfChange, data: cc.encode() };
        self.uncommitted_bytes += entry.size();
        self.log.append(entry);
        self.pending_conf_index = index;
        self.sync_conf();
        self.needs_broadcast = true;
        Ok((index, self.term))
    }

    fn check_leader(&self) -> Result<(), ProposeError> {
        if self.role == Role::Leader { Ok(()) } else { Err(ProposeError::NotLeader { leader: self.leader }) }
    }

    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.check_leader()?;
        let commit_in_term = self.log.term(self.log.committed) == Some(self.term);
        let commit = commit_in_term.then_some(self.log.committed);
        self.read_only
            .request(ctx, commit)
            .map_err(|_| ProposeError::TooManyReads { limit: self.cfg.max_pending_reads })
    }

    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.check_leader()?;
        if !self.tracker.is_voter(target) {
            return Err(ProposeError::NotAVoter(target));
        }
        if target == self.id || self.lead_transferee == Some(target) {
            return Ok(());
        }
        if self.tracker.get(target).is_some_and(|p| p.recovering) {
            return Err(ProposeError::Recovering(target));
        }
        self.lead_transferee = Some(target);
        self.election_elapsed = 0;
        let caught_up = self.tracker.get(target).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        Ok(())
    }

    /// The leader's own log became durable up to `persisted`.
    pub(crate) fn self_persisted(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let persisted = self.log.persisted();
        if let Some(me) = self.tracker.get_mut(self.id)
            && me.maybe_update(persisted, true)
            && self.maybe_commit()
        {
            self.needs_broadcast = true;
        }
    }

    /// The runtime took a snapshot of the state machine at `snapshot.meta.index`.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        assert!(index <= self.log.applied, "snapshot at {index} beyond applied {}", self.log.applied);
        if self.snapshot.as_ref().is_some_and(|s| s.meta.index >= index) {
            return;
        }
        self.snapshot = Some(snapshot);
        self.log.compact(index.saturating_sub(self.cfg.compaction_slack));
    }

    /// Reads registered but not yet part of a confirmation round.
    pub(crate) fn has_unconfirmed_reads(&self) -> bool {
        self.role == Role::Leader && self.read_only.has_unassigned()
    }
}
