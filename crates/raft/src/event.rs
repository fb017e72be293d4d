//! Things that happened inside the core, reported through `Ready` so the runtime can
//! log and trace them without the core knowing about either.

use crate::types::{ConfState, Index, LogPosition, NodeId, Term, TraceTag};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A (pre-)election began. `transfer` when started by leadership transfer;
    /// `cause`: the trace of the message that started it (a TimeoutNow).
    ElectionStarted { term: Term, pre_vote: bool, transfer: bool, cause: Option<TraceTag> },
    /// This node answered (or, in a leader's lease, ignored) `candidate`'s request for
    /// a vote in `term`. `trace`: the request's trace (the candidate's election).
    VoteDecided {
        candidate: CandidateRequest,
        granted: bool,
        reason: VoteReason,
        /// This node's last log position when it decided.
        own_last: LogPosition,
        trace: Option<TraceTag>,
    },
    /// A candidate counted `from`'s answer to its (pre-)vote request of `term`.
    VoteReceived { from: NodeId, term: Term, pre_vote: bool, granted: bool },
    /// A (pre-)election ended.
    ElectionFinished { term: Term, pre_vote: bool, outcome: ElectionOutcome, granted: usize, needed: usize },
    /// This node became leader of `term`.
    BecameLeader { term: Term },
    /// This node stopped being leader. `cause`: the trace of the message that made it
    /// step down (a higher-term vote request of an election), if any.
    SteppedDown { term: Term, reason: StepDownReason, cause: Option<TraceTag> },
    /// The term changed.
    TermChanged { from: Term, to: Term },
    /// A follower learned who leads its term.
    LeaderKnown { term: Term, leader: NodeId },
    /// The leader committed `first..=last` (one event per commit advance).
    Committed { first: Index, last: Index, term: Term, entries: u64, bytes: u64, acked_by: Vec<NodeId> },
    /// A follower accepted a snapshot from its leader.
    SnapshotInstalled { index: Index, term: Term },
    /// A follower's log ends below what it had acknowledged (its disk was lost); the
    /// leader resends it what it needs.
    PeerLostLog { peer: NodeId, match_index: Index, last_index: Index },
    /// A leadership transfer did not finish within an election timeout.
    TransferAborted { target: NodeId },
    /// This node starts recovering from lost state (`lost_state`: its storage was empty;
    /// else its hard state says a recovery was under way): it will not vote, campaign
    /// or count toward a quorum until a leader's marker of `nonce` commits.
    RecoveryStarted { nonce: u64, lost_state: bool },
    /// This node's recovery ended: its marker committed at `index` in `term` (index 0:
    /// the runtime confirmed a brand-new cluster).
    RecoveryFinished { term: Term, index: Index },
    /// The leader appended the recovery marker of `peer` at `index`.
    RecoveryMarked { peer: NodeId, index: Index },
    /// `peer` refused the snapshot at `index` (`bytes` long) as larger than its `limit`
    /// for the `refusals`-th time in a row; the leader offers it again in
    /// `retry_in_ticks` ticks.
    SnapshotRefused { peer: NodeId, index: Index, bytes: u64, limit: u64, refusals: u32, retry_in_ticks: u32 },
    /// The node's configuration — the latest in its log, committed or not — changed:
    /// a ConfChange entry at `index` was appended, or truncation or a snapshot took the
    /// log back to the configuration as of `index`.
    ConfChanged { index: Index, conf: ConfState },
}

/// What a candidate asked for, as a voter saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateRequest {
    pub id: NodeId,
    /// The term of the request (for a pre-vote, the term the candidate would campaign in).
    pub term: Term,
    pub pre_vote: bool,
    pub last: LogPosition,
}

/// Why a voter decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteReason {
    /// Granted: the candidate's log is at least as up to date, and this node is free
    /// to vote for it.
    Granted,
    /// The candidate's last log position is behind this node's (§5.4.1).
    StaleLog,
    /// This node already voted for another candidate in this term.
    AlreadyVoted { voted_for: NodeId },
    /// This node follows a leader of this term.
    LeaderKnown { leader: NodeId },
    /// This node heard from its leader within an election timeout; it ignores the
    /// request (no answer is sent), so a rejoining node cannot depose a healthy leader.
    LeaderLease { leader: NodeId },
    /// The request's term is below this node's.
    LowerTerm { own_term: Term },
    /// This node is recovering from lost state and never votes until it has recovered.
    Recovering,
}

impl VoteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteReason::Granted => "granted",
            VoteReason::StaleLog => "stale_log",
            VoteReason::AlreadyVoted { .. } => "already_voted",
            VoteReason::LeaderKnown { .. } => "leader_known",
            VoteReason::LeaderLease { .. } => "leader_lease",
            VoteReason::LowerTerm { .. } => "lower_term",
            VoteReason::Recovering => "recovering",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionOutcome {
    Won,
    Lost,
    /// The election timer fired again before a result; a new attempt follows.
    TimedOut,
    /// A message of a higher term, or a leader of this term, ended it.
    Superseded,
}

impl ElectionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionOutcome::Won => "won",
            ElectionOutcome::Lost => "lost",
            ElectionOutcome::TimedOut => "timed_out",
            ElectionOutcome::Superseded => "superseded",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDownReason {
    /// A message carried a higher term.
    HigherTerm,
    /// Check-quorum: no quorum heard from within an election timeout.
    LostQuorum,
    /// The leader's removal from the configuration committed; it handed leadership off.
    Removed,
}

impl StepDownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::HigherTerm => "higher_term",
            StepDownReason::LostQuorum => "lost_quorum",
            StepDownReason::Removed => "removed",
        }
    }
}
