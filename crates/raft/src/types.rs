//! The values the core exchanges with its runtime: log entries, hard state,
//! snapshots, cluster configuration and messages between peers.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's identity. Ids are chosen by the operator and must be non-zero.
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;
/// A log position. Index 0 is the empty log; real entries start at 1.
pub type Index = u64;

/// What an entry carries. The core interprets `Noop` and `ConfChange`; `Command` data
/// is opaque and goes to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Appended by a new leader so it can commit entries of earlier terms (§5.4.2)
    /// and serve ReadIndex reads.
    Noop,
    /// A state machine command.
    Command,
    /// A membership change: `data` is an encoded [`ConfChange`]. It takes effect on every
    /// node as soon as it is in the node's log (committed or not); the state machine
    /// treats it as a no-op. One that does not decode, or is invalid for the
    /// configuration before it, changes nothing (on every node alike).
    ConfChange,
}

impl EntryKind {
    /// The byte that identifies the kind on disk and on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            EntryKind::Noop => 0,
            EntryKind::Command => 1,
            EntryKind::ConfChange => 2,
        }
    }

    /// The inverse of [`EntryKind::to_byte`]; `None` for an unknown byte.
    pub fn from_byte(byte: u8) -> Option<EntryKind> {
        match byte {
            0 => Some(EntryKind::Noop),
            1 => Some(EntryKind::Command),
            2 => Some(EntryKind::ConfChange),
            _ => None,
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in size-bounded batches.
    pub fn size(&self) -> usize {
        self.data.len() + 24
    }
}

/// What must survive a crash besides the log: the current term, the vote cast in it,
/// the commit index (stored so a restart can re-apply without waiting for a leader),
/// and whether the node is still recovering from lost state (see
/// [`crate::Recovered::lost_state`]): a crash must not end a recovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
    pub recovering: bool,
}

/// The voting and non-voting members of the cluster.
///
/// Learners receive the log but never vote and never count toward a quorum. Membership
/// changes ([`ConfChange`]) move one id at a time between these sets and "not a member".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    /// A configuration whose voters are exactly `ids`.
    pub fn with_voters(ids: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState { voters: ids.into_iter().collect(), learners: BTreeSet::new() }
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// The configuration after `cc`, or why `cc` is not valid in this one. A valid change
    /// always changes the configuration, and changes the voters by at most one node.
    pub fn apply_change(&self, cc: &ConfChange) -> Result<ConfState, ConfChangeError> {
        let id = cc.node;
        if id == 0 {
            return Err(ConfChangeError::InvalidNode);
        }
        let mut next = self.clone();
        match cc.change {
            ConfChangeKind::AddLearner | ConfChangeKind::AddVoter if self.contains(id) => {
                return Err(ConfChangeError::AlreadyMember(id));
            }
            ConfChangeKind::AddLearner => {
                next.learners.insert(id);
            }
            ConfChangeKind::AddVoter => {
                next.voters.insert(id);
            }
            ConfChangeKind::PromoteVoter => {
                if !next.learners.remove(&id) {
                    return Err(ConfChangeError::NotALearner(id));
                }
                next.voters.insert(id);
            }
            ConfChangeKind::Remove => {
                if !next.learners.remove(&id) && !next.voters.remove(&id) {
                    return Err(ConfChangeError::NotAMember(id));
                }
                if next.voters.is_empty() {
                    return Err(ConfChangeError::NoVoters);
                }
            }
        }
        Ok(next)
    }
}

/// What a [`ConfChange`] does to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeKind {
    /// A non-member becomes a learner: it receives the log but does not vote.
    AddLearner,
    /// A learner becomes a voter. The leader accepts this only once the learner has
    /// caught up to within [`crate::Config::max_promotion_lag`] entries.
    PromoteVoter,
    /// A non-member becomes a voter at once (the dissertation's plain single-server
    /// addition). Adding a learner and promoting it is kinder to availability.
    AddVoter,
    /// A voter or learner leaves the configuration.
    Remove,
}

impl ConfChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfChangeKind::AddLearner => "add_learner",
            ConfChangeKind::PromoteVoter => "promote_voter",
            ConfChangeKind::AddVoter => "add_voter",
            ConfChangeKind::Remove => "remove",
        }
    }
}

/// A single-server membership change, carried by an [`EntryKind::ConfChange`] entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    pub change: ConfChangeKind,
    pub node: NodeId,
    /// Opaque to the core; the runtime puts the node's address here.
    pub context: Bytes,
}

/// The first byte of an encoded [`ConfChange`]: the format version.
const CONF_CHANGE_FORMAT: u8 = 1;

impl ConfChange {
    pub fn new(change: ConfChangeKind, node: NodeId, context: impl Into<Bytes>) -> ConfChange {
        ConfChange { change, node, context: context.into() }
    }

    /// The entry data for this change: a version byte, then postcard.
    pub fn encode(&self) -> Bytes {
        let mut out = vec![CONF_CHANGE_FORMAT];
        let body = postcard::to_allocvec(self).expect("postcard encoding of a ConfChange cannot fail");
        out.extend_from_slice(&body);
        out.into()
    }

    /// The inverse of [`ConfChange::encode`]. Never panics: bad bytes are an error, and
    /// trailing bytes are refused so that every byte string has at most one meaning.
    pub fn decode(data: &[u8]) -> Result<ConfChange, ConfChangeError> {
        let malformed = |reason: String| ConfChangeError::Malformed(reason);
        let (&version, body) = data.split_first().ok_or_else(|| malformed("empty".to_string()))?;
        if version != CONF_CHANGE_FORMAT {
            return Err(malformed(format!("unknown format version {version}")));
        }
        let (cc, rest) = postcard::take_from_bytes::<ConfChange>(body).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        Ok(cc)
    }
}

/// A configuration change that cannot be decoded or does not fit the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("malformed configuration change: {0}")]
    Malformed(String),
    #[error("node id 0 is not valid")]
    InvalidNode,
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    #[error("the configuration would have no voters")]
    NoVoters,
}

/// The position and configuration a snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    pub conf: ConfState,
}

/// A state machine snapshot. `data` is opaque to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// A message between two peers. `term` is the sender's term, except in a pre-vote
/// request (the term the sender would campaign in) and a granted pre-vote response
/// (that same term, echoed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
    /// Set by a node that is recovering from lost state: the nonce of its recovery. A
    /// leader counts nothing such a message says toward a quorum (commit, ReadIndex
    /// rounds, check-quorum), and appends a [`RecoveryMarker`] for the nonce; the
    /// sender's recovery ends once it sees that marker committed.
    pub recovery: Option<u64>,
    /// The trace this message belongs to (an election's span, a leadership transfer's),
    /// stamped by the runtime on the way out. The core never reads it to decide
    /// anything: it only hands it back in the events the message causes
    /// ([`crate::Event::VoteDecided`], and the `cause` of an election or step-down),
    /// so a runtime can draw one trace across nodes.
    pub trace: Option<TraceTag>,
}

impl Message {
    /// A message of a node that is not recovering.
    pub fn new(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
        Message { from, to, term, body, recovery: None, trace: None }
    }
}

/// The W3C ids of a sampled span, opaque to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceTag {
    pub trace_id: u128,
    pub span_id: u64,
}

/// A log position: the last entry's term and index, as elections compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPosition {
    pub term: Term,
    pub index: Index,
}

/// The data of a no-op entry that a leader appends for a recovering node: proof,
/// once committed, that a quorum without that node accepted an entry of the leader's
/// term appended after the node lost its state (the node generated `nonce` then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryMarker {
    pub node: NodeId,
    pub nonce: u64,
}

/// The first bytes of an encoded [`RecoveryMarker`]: a tag and a format version.
const RECOVERY_MARKER_TAG: &[u8; 9] = b"recovery1";

impl RecoveryMarker {
    /// The no-op entry data for this marker: the tag, then node and nonce (LE).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(RECOVERY_MARKER_TAG.len() + 16);
        out.extend_from_slice(RECOVERY_MARKER_TAG);
        out.extend_from_slice(&self.node.to_le_bytes());
        out.extend_from_slice(&self.nonce.to_le_bytes());
        out.into()
    }

    /// The marker a no-op entry's data holds, if any. Never panics.
    pub fn decode(data: &[u8]) -> Option<RecoveryMarker> {
        let body = data.strip_prefix(RECOVERY_MARKER_TAG.as_slice())?;
        let (node, nonce) = body.split_at_checked(8)?;
        Some(RecoveryMarker {
            node: u64::from_le_bytes(node.try_into().ok()?),
            nonce: u64::from_le_bytes(nonce.try_into().ok()?),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Pre-vote (`pre_vote`) or vote request. `force` is set by leadership transfer and
    /// tells voters to ignore their leader lease.
    RequestVote {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        force: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    /// Replicates `entries`, which directly follow `prev_log_index`.
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    },
    /// On success `index` is the follower's new match index. On rejection `index` is
    /// the rejected `prev_log_index`, and `reject_hint`/`hint_term` locate where the
    /// leader should probe next (fast backtracking, as in etcd-raft).
    AppendEntriesResponse {
        success: bool,
        index: Index,
        reject_hint: Index,
        hint_term: Term,
    },
    /// Leader liveness, commit propagation, and confirmation rounds for ReadIndex.
    Heartbeat {
        leader_commit: Index,
        read_round: u64,
    },
    /// `missing_from` is set when the follower's log ends below the heartbeat's
    /// `leader_commit` — entries the leader believes it holds are gone (a wiped disk).
    HeartbeatResponse {
        read_round: u64,
        missing_from: Option<Index>,
    },
    /// One chunk of a snapshot, at byte `offset` of `total_len`. `meta` repeats in each
    /// chunk so a follower can reject chunks of a snapshot it did not start.
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        total_len: u64,
        data: Bytes,
        done: bool,
    },
    /// `next_offset` is where the follower wants the next chunk; `done` once installed.
    /// `too_large` is set when the follower refused the snapshot for its size: the
    /// follower's `max_snapshot_bytes`, which the snapshot exceeds (the leader then
    /// backs off instead of resending at once).
    InstallSnapshotResponse {
        meta_index: Index,
        next_offset: u64,
        done: bool,
        rejected: bool,
        too_large: Option<u64>,
    },
    /// Leadership transfer: the receiver campaigns at once.
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and span attributes.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }

    /// An answer to another node's message (a vote, an acknowledgement), as opposed to
    /// a request of its own.
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            MessageBody::RequestVoteResponse { .. }
                | MessageBody::AppendEntriesResponse { .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::InstallSnapshotResponse { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_kind_round_trips_through_its_byte_and_other_bytes_are_unknown() {
        for kind in [EntryKind::Noop, EntryKind::Command, EntryKind::ConfChange] {
            assert_eq!(EntryKind::from_byte(kind.to_byte()), Some(kind));
        }
        assert_eq!(EntryKind::from_byte(3), None);
        assert_eq!(EntryKind::from_byte(u8::MAX), None);
    }

    #[test]
    fn requests_and_responses_are_told_apart() {
        let requests = [
            MessageBody::RequestVote { pre_vote: false, last_log_index: 0, last_log_term: 0, force: false },
            MessageBody::AppendEntries { prev_log_index: 0, prev_log_term: 0, entries: Vec::new(), leader_commit: 0 },
            MessageBody::Heartbeat { leader_commit: 0, read_round: 0 },
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta::default(),
                offset: 0,
                total_len: 0,
                data: Bytes::new(),
                done: true,
            },
            MessageBody::TimeoutNow,
        ];
        let responses = [
            MessageBody::RequestVoteResponse { pre_vote: false, granted: true },
            MessageBody::AppendEntriesResponse { success: true, index: 0, reject_hint: 0, hint_term: 0 },
            MessageBody::HeartbeatResponse { read_round: 0, missing_from: None },
            MessageBody::InstallSnapshotResponse {
                meta_index: 0,
                next_offset: 0,
                done: true,
                rejected: false,
                too_large: None,
            },
        ];
        assert!(requests.iter().all(|m| !m.is_response()), "{requests:?}");
        assert!(responses.iter().all(MessageBody::is_response), "{responses:?}");
    }
}
