//! Things that happened inside the core, reported through `Ready` so the runtime can
//! log and trace them without the core knowing about either.

use crate::types::{ConfState, Index, NodeId, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A (pre-)election began. `transfer` when started by leadership transfer.
    ElectionStarted { term: Term, pre_vote: bool, transfer: bool },
    /// A (pre-)election ended.
    ElectionFinished { term: Term, pre_vote: bool, outcome: ElectionOutcome, granted: usize, needed: usize },
    /// This node became leader of `term`.
    BecameLeader { term: Term },
    /// This node stopped being leader.
    SteppedDown { term: Term, reason: StepDownReason },
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
    /// The node's configuration — the latest in its log, committed or not — changed:
    /// a ConfChange entry at `index` was appended, or truncation or a snapshot took the
    /// log back to the configuration as of `index`.
    ConfChanged { index: Index, conf: ConfState },
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
