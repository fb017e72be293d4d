//! The runtime's interface to the core: feed it ticks, messages and proposals, then
//! take a [`Ready`], carry it out, and call [`RawNode::advance`].

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::event::Event;
use crate::raft::{ProposeError, Raft, Role, StepError};
use crate::read_only::ReadState;
use crate::types::*;

/// What a node recovered from its disk at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Storage held nothing: this node cannot tell a first start from a lost disk, so
    /// it may have voted or acknowledged entries it no longer knows of. It starts
    /// recovering: it may receive and persist entries, but never votes, campaigns or
    /// counts toward a quorum until a leader of its cluster brings it up to date (a
    /// recovery marker of the leader's term, appended after this start, commits), or
    /// until the runtime confirms a brand-new cluster ([`RawNode::confirm_new_cluster`]).
    /// A recovery that was under way at a crash resumes (it is in the hard state).
    pub lost_state: bool,
}

impl Recovered {
    /// What an empty storage recovers: nothing, and a lost state.
    pub fn empty() -> Recovered {
        Recovered { lost_state: true, ..Recovered::default() }
    }

    /// Entries without any hard state are a torn first write: a node's first write
    /// with entries records its hard state (a term of at least 1) after them, so
    /// nothing of it was ever acted on. Kept, a founder's prefix of its bootstrap
    /// entries would read as a smaller cluster (`AddVoter 1` alone: a one-voter cluster
    /// that elects itself), and a recovery under way would be forgotten with its hard
    /// state. It is no state at all: the entries go and the state counts as lost; the
    /// node's next first write replaces them from index 1. Returns whether it
    /// discarded anything. [`RawNode`] applies it at start; a runtime that decides
    /// from `lost_state` before that (bootstrap, join) applies it first.
    pub fn discard_torn_first_write(&mut self) -> bool {
        let torn = self.snapshot.is_none() && !self.entries.is_empty() && self.hard_state == HardState::default();
        if torn {
            self.entries.clear();
            self.lost_state = true;
        }
        torn
    }
}

/// Everything the runtime must do, in this order:
/// 1. send `messages` (may overlap with step 2);
/// 2. persist `snapshot`, then `entries`, then `hard_state` — fsynced if [`Ready::must_sync`];
/// 3. send `persisted_messages`;
/// 4. install `snapshot` into the state machine, then apply `committed_entries`;
/// 5. serve `read_states` once the state machine has applied their index;
/// 6. call [`RawNode::advance`].
///
/// Without a `snapshot`, step 4 (and 5) may come before step 2: `committed_entries` are
/// never above the persisted index, so they are durable here as on a majority, and
/// applying them need not wait for this Ready's new entries.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    /// New entries. The first may overwrite the stored log from its index on.
    pub entries: Vec<Entry>,
    pub snapshot: Option<Snapshot>,
    /// A leader's replication traffic: safe to send before persisting.
    pub messages: Vec<Message>,
    /// Votes and acknowledgements: send only after persisting.
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Reads that can no longer be confirmed (leadership lost); fail them.
    pub dropped_reads: Vec<u64>,
    pub events: Vec<Event>,
    must_sync: bool,
    vote_changed: bool,
}

impl Ready {
    /// This Ready may be written while the node goes on ([`RawNode::advance_async`]): it
    /// carries no snapshot and no new term or vote. A new term or vote must be durable
    /// before any later message leaves the node (it could otherwise lead a term it may
    /// forget), so such a Ready is persisted, then advanced.
    pub fn can_persist_async(&self) -> bool {
        !self.vote_changed && self.snapshot.is_none()
    }

    /// Whether this Ready must be fsynced before acknowledging. A change of the commit
    /// index alone need not be: it can be re-learned from the leader.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }
}

/// The leader's view of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: NodeId,
    pub match_index: Index,
    pub next_index: Index,
    /// Its latest message said it is recovering from lost state.
    pub recovering: bool,
}

/// A summary of the node's state, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    pub applied_index: Index,
    pub last_index: Index,
    pub persisted_index: Index,
    pub first_index: Index,
    pub conf: ConfState,
    /// The leader's view of each member (itself included); empty on followers.
    pub progress: Vec<PeerProgress>,
    /// This node is recovering from lost state (see [`Recovered::lost_state`]).
    pub recovering: bool,
}

#[derive(Debug, Default)]
struct InFlight {
    last_entry: Option<(Index, Term)>,
    last_committed: Option<Index>,
    snapshot: Option<Index>,
    vote_changed: bool,
}

/// One Raft node, driven by its runtime.
#[derive(Debug)]
pub struct RawNode {
    raft: Raft,
    last_hard_state: HardState,
    in_flight: Option<InFlight>,
}

impl RawNode {
    /// A node resuming from what its storage recovered.
    ///
    /// The configuration is recovered from the snapshot and the log, never from `conf`.
    /// `conf` only bootstraps a brand-new cluster: when storage holds nothing and `conf`
    /// has voters, the node appends and commits one ConfChange entry per member (term 1,
    /// the same on every initial member), which its first Ready persists. A node that
    /// joins an existing cluster passes `ConfState::default()`: it starts with no
    /// configuration, never campaigns, and learns the configuration from the leader.
    /// (A log written before configurations were logged — whose first entry is not a
    /// ConfChange — still takes `conf` as its base.)
    pub fn new(cfg: Config, conf: ConfState, recovered: Recovered) -> Result<RawNode, ConfigError> {
        let changes = if conf.voters.is_empty() {
            Vec::new()
        } else {
            let voters = conf.voters.iter().map(|&id| ConfChange::new(ConfChangeKind::AddVoter, id, Bytes::new()));
            let learners =
                conf.learners.iter().map(|&id| ConfChange::new(ConfChangeKind::AddLearner, id, Bytes::new()));
            voters.chain(learners).collect()
        };
        Self::start(cfg, conf, changes, recovered)
    }

    /// Like [`RawNode::new`], but a brand-new cluster bootstraps with exactly `changes`
    /// (in order), so that their `context` — say, each member's address — is in the log
    /// from the first entry on. Each change must apply to the configuration the ones
    /// before it made, starting from an empty one, and the result must have voters;
    /// otherwise this is an error. That resulting configuration is also the base of a
    /// log written before configurations were logged.
    pub fn bootstrap_with(cfg: Config, changes: Vec<ConfChange>, recovered: Recovered) -> Result<RawNode, ConfigError> {
        let mut conf = ConfState::default();
        for cc in &changes {
            conf = conf.apply_change(cc).map_err(|e| ConfigError(format!("invalid bootstrap change: {e}")))?;
        }
        if conf.voters.is_empty() {
            return Err(ConfigError("the bootstrap configuration has no voters".into()));
        }
        Self::start(cfg, conf, changes, recovered)
    }

    fn start(
        cfg: Config,
        conf: ConfState,
        changes: Vec<ConfChange>,
        mut recovered: Recovered,
    ) -> Result<RawNode, ConfigError> {
        cfg.validate()?;
        recovered.discard_torn_first_write();
        let hard_state = recovered.hard_state;
        let raft =
            Raft::new(cfg, conf, changes, hard_state, recovered.snapshot, recovered.entries, recovered.lost_state);
        // What the disk holds: a bootstrap's term and commit index, and a recovery's
        // start, must reach it too.
        Ok(RawNode { raft, last_hard_state: hard_state, in_flight: None })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Delivers a message from a peer. Bad messages are refused without changing state.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        self.raft.step(msg)
    }

    /// Appends a command to the leader's log. Returns the index and term it will commit
    /// at if it commits; the runtime learns the outcome when that index is applied.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.raft.propose(data)
    }

    /// Proposes a membership change (leader only). It takes effect on this node when
    /// appended, and on each other node when it reaches that node's log. See
    /// [`ProposeError`] for why it may be refused; at most one change is uncommitted at
    /// a time. Returns the index and term it will commit at if it commits.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(Index, Term), ProposeError> {
        self.raft.propose_conf_change(cc)
    }

    /// Asks for a linearizable read; it appears in [`Ready::read_states`] with `ctx`.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.raft.read_index(ctx)
    }

    /// Hands leadership to `target`; proposals are refused until it finishes or aborts.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.raft.transfer_leader(target)
    }

    /// Starts an election now (tests and operators).
    pub fn campaign(&mut self) {
        self.raft.campaign(false);
    }

    /// Ends this node's recovery at the start of a brand-new cluster: the runtime
    /// learned that every other founding member of its cluster is still at term 1 or
    /// below (nobody ever voted or replicated anything yet). Returns false, changing
    /// nothing, if this node itself has moved past that (then a leader's marker must
    /// end its recovery).
    pub fn confirm_new_cluster(&mut self) -> bool {
        self.raft.confirm_new_cluster()
    }

    /// Ends a recovery without any proof: the node votes again at once, as if it had
    /// never lost anything. UNSAFE: only for tests that show what the recovery rule
    /// prevents (a runtime must never call it). Returns whether a recovery was ended.
    #[doc(hidden)]
    pub fn confirm_new_cluster_unchecked(&mut self) -> bool {
        self.raft.recovery.take().is_some()
    }

    /// The runtime snapshotted the state machine; the log prefix may be dropped.
    pub fn compact(&mut self, snapshot: Snapshot) {
        self.raft.compact(snapshot);
    }

    pub fn has_ready(&self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let r = &self.raft;
        r.needs_broadcast
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || r.log.has_unstable()
            || r.pending_snapshot.is_some()
            || r.log.has_next_committed()
            || !r.read_states.is_empty()
            || !r.dropped_reads.is_empty()
            || !r.events.is_empty()
            || r.hard_state() != self.last_hard_state
            || r.has_unconfirmed_reads()
    }

    /// Takes the work to do. Call [`RawNode::advance`] before the next one.
    pub fn ready(&mut self) -> Ready {
        assert!(self.in_flight.is_none(), "ready() called before advance()");
        let r = &mut self.raft;
        if r.needs_broadcast {
            r.needs_broadcast = false;
            if r.role == Role::Leader {
                r.broadcast_append();
            }
        }
        r.flush_reads();
        let hard_state = r.hard_state();
        let hard_state_changed = hard_state != self.last_hard_state;
        // A recovery's end lets votes out: it is durable before they leave, like a vote.
        let vote_changed = hard_state.term != self.last_hard_state.term
            || hard_state.vote != self.last_hard_state.vote
            || hard_state.recovering != self.last_hard_state.recovering;
        let entries = r.log.unstable_entries();
        r.log.mark_handed_out();
        let snapshot = r.pending_snapshot.take();
        let committed_entries =
            if snapshot.is_some() { Vec::new() } else { r.log.next_committed(r.cfg.max_apply_bytes) };
        // Nothing of a term or vote that is not durable yet may leave the node. A leader's
        // traffic normally goes out while its entries persist, but a node that won an
        // election this Ready without anyone else's vote (a single-voter configuration)
        // would otherwise send entries of a term it could forget in a crash — and then
        // lead that term again with different entries.
        let mut messages = std::mem::take(&mut r.msgs);
        let mut persisted_messages = std::mem::take(&mut r.msgs_after_persist);
        if vote_changed {
            messages.append(&mut persisted_messages);
            persisted_messages = messages;
            messages = Vec::new();
        }
        self.last_hard_state = hard_state;
        self.in_flight = Some(InFlight {
            last_entry: entries.last().map(|e| (e.index, e.term)),
            last_committed: committed_entries.last().map(|e| e.index),
            snapshot: snapshot.as_ref().map(|s| s.meta.index),
            vote_changed,
        });
        Ready {
            must_sync: vote_changed || !entries.is_empty() || snapshot.is_some(),
            vote_changed,
            hard_state: hard_state_changed.then_some(hard_state),
            entries,
            snapshot,
            messages,
            persisted_messages,
            committed_entries,
            read_states: std::mem::take(&mut r.read_states),
            dropped_reads: std::mem::take(&mut r.dropped_reads),
            events: std::mem::take(&mut r.events),
        }
    }

    /// The last Ready was carried out: persisted, sent and applied.
    pub fn advance(&mut self) {
        let done = self.in_flight.take().expect("advance() without ready()");
        let log = &mut self.raft.log;
        if let Some(index) = done.snapshot {
            log.applied_to(index.min(log.committed));
        }
        if let Some((index, _)) = done.last_entry {
            log.persisted_to(index);
        }
        if let Some(index) = done.last_committed {
            log.applied_to(index);
        }
        self.raft.self_persisted();
    }

    /// The last Ready was carried out except that its entries and hard state are still
    /// being written ([`Ready::can_persist_async`] said so): its messages were sent and
    /// its committed entries applied, but its `persisted_messages` wait for the write.
    /// Returns the last entry handed out; pass it to [`RawNode::persisted`] once the
    /// write is durable. Until then those entries count toward no quorum and are not
    /// applied here, so the next Readies may be taken while the write is in flight.
    ///
    /// The simulation runs half its seeds this way. raftkv-server persists in line
    /// ([`RawNode::advance`]): on a 2-core machine, background writes split the
    /// group-commit batches and cost more CPU per write with no throughput gain.
    pub fn advance_async(&mut self) -> Option<(Index, Term)> {
        let done = self.in_flight.take().expect("advance_async() without ready()");
        assert!(done.snapshot.is_none() && !done.vote_changed, "this Ready must be persisted before advancing");
        if let Some(index) = done.last_committed {
            self.raft.log.applied_to(index);
        }
        done.last_entry
    }

    /// The write of entries up to `index` (term `term`), handed out by a Ready advanced
    /// with [`RawNode::advance_async`], is durable. Writes complete in the order they
    /// were taken; entries replaced since (a new leader's) do not count.
    pub fn persisted(&mut self, index: Index, term: Term) {
        // Log Matching: the same (index, term) means the same entries up to `index`.
        if self.raft.log.term(index) == Some(term) {
            self.raft.log.persisted_to(index);
        }
        self.raft.self_persisted();
    }

    /// The hard state as of the last Ready taken (at start, the one recovered): what a
    /// runtime that persisted every Ready has on disk, or is writing.
    pub fn handed_out_hard_state(&self) -> HardState {
        self.last_hard_state
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role == Role::Leader {
            let peer = |(id, p): (&NodeId, &crate::progress::Progress)| PeerProgress {
                id: *id,
                match_index: p.match_index,
                next_index: p.next_index,
                recovering: p.recovering,
            };
            r.tracker.iter().map(peer).collect()
        } else {
            Vec::new()
        };
        Status {
            id: r.id,
            role: r.role,
            term: r.term,
            vote: r.vote,
            leader: r.leader,
            commit_index: r.log.committed,
            applied_index: r.log.applied,
            last_index: r.log.last_index(),
            persisted_index: r.log.persisted(),
            first_index: r.log.first_index(),
            conf: r.tracker.conf().clone(),
            progress,
            recovering: r.recovery.is_some(),
        }
    }

    /// The entries held in memory (after the last compaction), for checkers.
    pub fn log_entries(&self) -> &[Entry] {
        self.raft.log.entries()
    }

    /// The term of the entry at `index`, if the log still holds it.
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// The configuration as of `index` (after the entry there), or `None` if `index` is
    /// compacted or beyond the log. A snapshot taken at the applied index must carry
    /// `conf_at(applied)`, not the current configuration, which may be newer.
    pub fn conf_at(&self, index: Index) -> Option<ConfState> {
        self.raft.log.conf_at(index).cloned()
    }

    /// The node's current configuration: the latest in its log, committed or not.
    pub fn conf(&self) -> &ConfState {
        self.raft.log.conf()
    }

    /// The index of the entry that made the current configuration (the snapshot's
    /// index if that entry is compacted; 0 for a configuration given at start-up).
    pub fn conf_index(&self) -> Index {
        self.raft.log.conf_index()
    }

    /// The newest snapshot this node holds.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.raft.snapshot.as_ref()
    }
}
