//! The replica and its inputs: messages, client requests, membership requests.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_kv::KvStateMachine;
use raftkv_raft::{
    ConfChange, ConfChangeKind, Entry, Index, Message, MessageBody, NodeId, ProposeError, RawNode, Role, Snapshot,
    SnapshotMeta, Status, StepError, Term,
};

use crate::membership::{self, AddPlan, AddRefusal, Membership};
use crate::policy::Stop;

/// Settings of the policies (the core's own are in [`raftkv_raft::Config`]).
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Ticks of an election timeout: the period of the membership policies, and the
    /// unit of the shutdown and removal deadlines (two election timeouts each).
    pub election_ticks: u32,
    /// Take a snapshot every this many applied entries (0: never).
    pub snapshot_entries: u64,
    /// The core's `max_promotion_lag`: auto-promotion waits for a learner this close.
    pub max_promotion_lag: u64,
}

/// A failure that stops the node: the state it would go on from is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the snapshot at index {index} cannot be restored: {reason}")]
    Snapshot { index: Index, reason: String },
}

/// Why a client or membership request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Core(#[from] ProposeError),
    #[error(transparent)]
    Member(#[from] AddRefusal),
    #[error("node {0} was already removed from this cluster")]
    AlreadyRemoved(NodeId),
    /// The learner at `addr` is being added; the joining node asks again once that
    /// change committed (it could still be overwritten).
    #[error("learner {id} at {addr} is being added; retry once that change has committed")]
    BeingAdded { id: NodeId, addr: String },
}

/// Why a peer message was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepRefusal {
    #[error("message for node {to}")]
    NotForMe { to: NodeId },
    #[error("node {0} was removed from the cluster")]
    Removed(NodeId),
    #[error(transparent)]
    Core(#[from] StepError),
}

/// What became of a membership request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// Nothing to change: the learner `id` already has that address.
    Existing(NodeId),
    /// Proposed at `index` in `term`, about member `id`.
    At { index: Index, term: Term, id: NodeId },
}

/// A snapshot to take now: its position, and the bytes that precede the state
/// machine's in it (see [`membership::snapshot_prefix`]).
#[derive(Clone, Debug)]
pub struct SnapshotPlan {
    pub meta: SnapshotMeta,
    pub prefix: Vec<u8>,
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEntry {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    pub auto_promote: bool,
    /// The leader's view of its log (on the leader only).
    pub match_index: Option<Index>,
}

/// This node's view of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub leader: Option<NodeId>,
    pub conf_index: Index,
    pub committed: bool,
    pub members: Vec<MemberEntry>,
    pub removed: Vec<NodeId>,
}

/// Whether `m`, from a node this one knows was removed, is refused (and the sender told
/// it was removed). All but the hand-off of a leader that removed itself: it sends
/// `TimeoutNow` once its removal committed, which the target may have applied already.
pub fn refused_from_removed(m: &Message) -> bool {
    !matches!(m.body, MessageBody::TimeoutNow)
}

/// One node: the core, the state machine, the membership and the policies' state.
pub struct Replica {
    pub(crate) id: NodeId,
    pub(crate) cfg: ReplicaConfig,
    pub(crate) raw: RawNode,
    pub(crate) kv: KvStateMachine,
    pub(crate) membership: Membership,
    /// Ticks since start; the clock of every policy.
    pub(crate) ticks: u64,
    /// The tick at which a leader was last heard from.
    pub(crate) leader_contact: u64,
    pub(crate) snapshot_index: Index,
    /// Set once shutdown began: the tick by which the hand-off must be done.
    pub(crate) draining: Option<u64>,
    /// Set once this node learned it was removed: how, and the tick to stop by (a
    /// leader that removed itself first hands off).
    pub(crate) removed: Option<(Stop, u64)>,
    /// A Ready is being carried out: no other may be taken.
    pub(crate) in_ready: bool,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.id).field("status", &self.raw.status()).finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica of `raw` over the state machine and membership recovered with it
    /// (see [`Replica::restore_state`]).
    pub fn new(raw: RawNode, kv: KvStateMachine, membership: Membership, cfg: ReplicaConfig) -> Replica {
        let status = raw.status();
        assert!(kv.applied_index() <= status.commit_index, "the state machine is ahead of the commit index");
        let snapshot_index = raw.snapshot().map_or(0, |s| s.meta.index);
        Replica {
            id: status.id,
            cfg,
            raw,
            kv,
            membership,
            ticks: 0,
            leader_contact: 0,
            snapshot_index,
            draining: None,
            removed: None,
            in_ready: false,
        }
    }

    /// The state machine and membership a node resumes with: its snapshot's (a
    /// membership section and the state machine's bytes), then the contexts of the
    /// entries after it. `legacy`: the addresses of members of a log written before
    /// ConfChange entries carried them (`--peers`).
    pub fn restore_state(
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        legacy: BTreeMap<NodeId, String>,
    ) -> Result<(KvStateMachine, Membership), ReplicaError> {
        let mut membership = Membership::new(legacy);
        let kv = match snapshot {
            Some(snap) => {
                let bad = |reason: String| ReplicaError::Snapshot { index: snap.meta.index, reason };
                let (section, data) = membership::unwrap_snapshot(&snap.data).map_err(bad)?;
                membership.restore(section.unwrap_or_default());
                KvStateMachine::restore(&data).map_err(|e| bad(e.to_string()))?
            }
            None => KvStateMachine::new(),
        };
        for e in entries {
            membership.observe(e);
        }
        Ok((kv, membership))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raw(&self) -> &RawNode {
        &self.raw
    }

    /// The core itself, for tests that script a scenario (a runtime uses the inputs).
    pub fn raw_mut(&mut self) -> &mut RawNode {
        &mut self.raw
    }

    pub fn kv(&self) -> &KvStateMachine {
        &self.kv
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn status(&self) -> Status {
        self.raw.status()
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    fn role(&self) -> Role {
        self.raw.status().role
    }

    /// Records addresses learned outside the log (a join reply); the log's win later.
    pub fn learn_members(&mut self, members: impl IntoIterator<Item = (NodeId, membership::MemberContext)>) {
        for (id, ctx) in members {
            self.membership.learn(id, ctx);
        }
    }

    // ---- peer messages ----

    /// Takes a peer's message. Refused: one for another node, and one from a node this
    /// one knows was removed. A sender this node does not know yet is taken: a
    /// follower that was down while a new node joined and came to lead learns of it
    /// only from that leader's log.
    pub fn step(&mut self, m: Message) -> Result<(), StepRefusal> {
        if m.to != self.id {
            return Err(StepRefusal::NotForMe { to: m.to });
        }
        if refused_from_removed(&m) && self.membership.removed().contains(&m.from) {
            return Err(StepRefusal::Removed(m.from));
        }
        if matches!(
            m.body,
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. }
        ) {
            self.leader_contact = self.ticks;
        }
        self.raw.step(m)?;
        Ok(())
    }

    // ---- client requests ----

    fn accepting(&self) -> Result<(), Refusal> {
        if self.draining.is_some() || self.removed.is_some() { Err(Refusal::ShuttingDown) } else { Ok(()) }
    }

    /// Proposes an encoded command (leader only); it commits at the returned index if
    /// the entry there has the returned term when applied.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), Refusal> {
        self.accepting()?;
        Ok(self.raw.propose(data)?)
    }

    /// Asks for a linearizable read; its index comes back, with `ctx`, through
    /// [`crate::ApplyHooks::reads`].
    pub fn read_index(&mut self, ctx: u64) -> Result<(), Refusal> {
        if self.draining.is_some() {
            return Err(Refusal::ShuttingDown);
        }
        Ok(self.raw.read_index(ctx)?)
    }

    /// Hands leadership to `target`, or to the most caught-up voter.
    pub fn transfer(&mut self, target: Option<NodeId>) -> Result<NodeId, Refusal> {
        let target = match target {
            Some(t) => t,
            None => self.best_transferee().ok_or(Refusal::Core(ProposeError::NotAVoter(0)))?,
        };
        self.raw.transfer_leader(target)?;
        Ok(target)
    }

    // ---- membership requests (leader) ----

    /// Adds a learner at `addr` (with `id`, or a new one), which the leader promotes
    /// by itself once caught up if `auto_promote`.
    pub fn add_member(
        &mut self,
        id: Option<NodeId>,
        addr: &str,
        auto_promote: bool,
        allocate_if_taken: bool,
    ) -> Result<Proposed, Refusal> {
        self.leading()?;
        let plan = membership::plan_add(self.raw.conf(), &self.membership, id, addr, auto_promote, allocate_if_taken)?;
        match plan {
            AddPlan::Existing(id) if self.raw.conf_index() > self.raw.status().commit_index => {
                Err(Refusal::BeingAdded { id, addr: addr.trim().to_string() })
            }
            AddPlan::Existing(id) => Ok(Proposed::Existing(id)),
            AddPlan::Propose(id, ctx) => {
                self.propose_change(ConfChange::new(ConfChangeKind::AddLearner, id, ctx.encode()))
            }
        }
    }

    pub fn promote_member(&mut self, id: NodeId) -> Result<Proposed, Refusal> {
        self.leading()?;
        self.propose_change(ConfChange::new(ConfChangeKind::PromoteVoter, id, Bytes::new()))
    }

    pub fn remove_member(&mut self, id: NodeId) -> Result<Proposed, Refusal> {
        self.leading()?;
        if self.membership.removed().contains(&id) {
            return Err(Refusal::AlreadyRemoved(id));
        }
        self.propose_change(ConfChange::new(ConfChangeKind::Remove, id, Bytes::new()))
    }

    fn leading(&self) -> Result<(), Refusal> {
        self.accepting()?;
        match self.raw.status() {
            st if st.role == Role::Leader => Ok(()),
            st => Err(Refusal::Core(ProposeError::NotLeader { leader: st.leader })),
        }
    }

    fn propose_change(&mut self, cc: ConfChange) -> Result<Proposed, Refusal> {
        let id = cc.node;
        let (index, term) = self.raw.propose_conf_change(cc)?;
        Ok(Proposed::At { index, term, id })
    }

    /// This node's view of the configuration, with each member's address.
    pub fn member_view(&self) -> MemberView {
        let st = self.raw.status();
        let conf = self.raw.conf();
        let conf_index = self.raw.conf_index();
        let leading = st.role == Role::Leader;
        let entry = |id: NodeId, voter: bool| MemberEntry {
            id,
            addr: self.membership.addr(id).unwrap_or_default().to_string(),
            voter,
            auto_promote: self.membership.context(id).is_some_and(|c| c.auto_promote),
            match_index: st.progress.iter().find(|p| leading && p.id == id).map(|p| p.match_index),
        };
        let voters = conf.voters.iter().map(|id| entry(*id, true));
        let learners = conf.learners.iter().map(|id| entry(*id, false));
        MemberView {
            leader: st.leader,
            conf_index,
            committed: conf_index <= st.commit_index,
            members: voters.chain(learners).collect(),
            removed: self.membership.removed().iter().copied().collect(),
        }
    }

    /// The members to link to, with their addresses: those of the latest and of the
    /// committed configuration (every known address while this node has none yet).
    /// Why the committed one too: a leader that removed itself leads until the removal
    /// commits, and its followers must hear and answer it until then.
    pub fn link_targets(&self) -> (BTreeMap<NodeId, String>, Vec<NodeId>) {
        let mut ids: std::collections::BTreeSet<NodeId> = self.raw.conf().members().collect();
        if let Some(committed) = self.raw.conf_at(self.raw.status().commit_index) {
            ids.extend(committed.members());
        }
        if ids.is_empty() {
            return (self.membership.known(), Vec::new());
        }
        let known = ids.iter().filter_map(|id| Some((*id, self.membership.addr(*id)?.to_string()))).collect();
        let unknown = ids.iter().copied().filter(|id| *id != self.id && self.membership.addr(*id).is_none()).collect();
        (known, unknown)
    }

    /// Ends this founder's recovery: the runtime learned every other founding member
    /// is at term 1 or below (see [`RawNode::confirm_new_cluster`]).
    pub fn confirm_new_cluster(&mut self) -> bool {
        self.raw.confirm_new_cluster()
    }

    pub fn applied_index(&self) -> Index {
        self.kv.applied_index()
    }

    /// Whether the role is leader (as of the last Ready).
    pub fn is_leader(&self) -> bool {
        self.role() == Role::Leader
    }
}
