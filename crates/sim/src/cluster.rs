//! A simulated cluster: real replicas (the Raft core, the state machine, membership and
//! the runtime's policies, as raftkv-server drives them) over a simulated network and
//! simulated disks, all driven by one seeded RNG and one logical clock.
//!
//! One time unit is the smallest step; nodes tick every [`TICK`] units. A node's Ready
//! is "fsynced" a random few units after it is taken, and a crash before then loses it:
//! a restarted node has exactly what its disk had. With `async_persist`, nodes go on
//! while Readies that allow it are being written: up to [`MAX_PENDING_WRITES`] writes
//! in flight, durable in the order they were taken.
//!
//! The cluster's membership can change: nodes `1..=opts.nodes` bootstrap the cluster,
//! and ids up to [`MAX_NODES`] can join later as brand-new empty nodes (learners first).
//! A removed node stops once it learns of its removal and never starts again (its
//! tombstone); adding an id again starts a new incarnation with a wiped disk.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_kv::{Command, KvStateMachine};
use raftkv_raft::{
    ConfChange, ConfChangeKind, ConfState, Config, Event, Index, NodeId, PlantedBug, ProposeError, RawNode, Recovered,
    Role, Term,
};
use raftkv_replica::{MemberContext, Replica, ReplicaConfig, Stop};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::checker::{Checker, Violation};
use crate::disk::SimDisk;
use crate::driving::{InFlightRun, PendingWrite, SimClient};
use crate::network::Network;

/// Background writes one node may have in flight (`async_persist`).
pub const MAX_PENDING_WRITES: usize = 8;

/// Time units per tick.
pub const TICK: u64 = 10;

/// The simulated network holds at most this many messages; more means a message storm,
/// which is reported as a violation (and the excess dropped, like a full buffer).
pub const MAX_IN_TRANSIT: usize = 20_000;

/// Node ids `1..=MAX_NODES` may exist.
pub const MAX_NODES: NodeId = 7;

/// The simulation's `Config::max_promotion_lag`: small, so that lagging learners are
/// refused promotion in short runs.
pub const MAX_PROMOTION_LAG: u64 = 20;

/// Ticks of an election timeout (the core's default).
pub(crate) const ELECTION_TICKS: u32 = 10;

/// Knobs of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub nodes: usize,
    /// Percent of messages dropped.
    pub drop_percent: u64,
    /// Percent of messages delivered twice.
    pub duplicate_percent: u64,
    /// Messages take 1..=max_delay units; different delays reorder them.
    pub max_delay: u64,
    /// Percent of messages held beyond the longest election timeout (see
    /// `network::LATE_DELAY`): they arrive after a new term may have begun.
    pub late_percent: u64,
    /// A crash may tear the first write not yet durable (see `Cluster::tear`).
    pub torn_writes: bool,
    /// Percent of fsyncs that fail: the node stops at once, its write torn or lost.
    pub failed_fsync_percent: u64,
    /// A Ready becomes durable 0..=max_fsync units after it is taken.
    pub max_fsync: u64,
    /// Nodes write Readies without a new term, vote or snapshot in the background
    /// ([`Replica::detach_ready`]) and go on meanwhile.
    pub async_persist: bool,
    /// Take a state machine snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Raft's compaction slack: small, so lagging followers need snapshots.
    pub compaction_slack: u64,
    /// Small, so snapshots travel in many chunks.
    pub snapshot_chunk_bytes: usize,
    /// Bytes of entries per AppendEntries: small values split a new leader's catch-up
    /// into many messages, so old-term entries travel without the leader's no-op.
    pub max_append_bytes: usize,
    /// Client commands retry after this many units without an answer.
    pub retry_after: u64,
    pub clients: usize,
    /// A bug planted in every node's core (tests of the checker only).
    pub planted_bug: Option<PlantedBug>,
    /// Per-node `Config::max_snapshot_bytes` overrides, applied when a node boots.
    pub max_snapshot_bytes: BTreeMap<NodeId, u64>,
    /// Stamp every message with a trace tag, as a traced runtime does (drawn from no
    /// RNG, so the schedule is the same): the core must decide exactly as without.
    pub trace_tags: bool,
}

impl SimOptions {
    pub fn new(nodes: usize) -> SimOptions {
        SimOptions {
            nodes,
            drop_percent: 0,
            duplicate_percent: 0,
            max_delay: 3,
            late_percent: 0,
            torn_writes: false,
            failed_fsync_percent: 0,
            max_fsync: 2,
            async_persist: false,
            snapshot_every: 40,
            compaction_slack: 8,
            snapshot_chunk_bytes: 256,
            max_append_bytes: 4096,
            retry_after: 400,
            clients: 3,
            planted_bug: None,
            max_snapshot_bytes: BTreeMap::new(),
            trace_tags: false,
        }
    }
}

pub(crate) struct SimNode {
    pub replica: Option<Replica>,
    pub disk: SimDisk,
    pub in_flight: Option<InFlightRun>,
    /// Background writes, oldest first; lost in a crash.
    pub writes: std::collections::VecDeque<PendingWrite>,
    pub tick_phase: u64,
    pub restarts: u64,
    /// Stopped (SIGSTOP): it neither ticks nor handles anything; messages to it wait in
    /// `backlog` and are handled, in order, when it resumes.
    pub paused: bool,
    pub backlog: Vec<raftkv_raft::Message>,
    /// An initial member: it bootstraps the cluster's first entries whenever its disk
    /// is empty (as raftkv-server does from `--peers`), wiped or not; false for nodes
    /// that join later.
    pub bootstrap: bool,
    /// It stopped because it was removed: it never starts again.
    pub tombstone: bool,
    /// It shut down gracefully: its supervisor starts it again at this time.
    pub restart_at: Option<u64>,
}

/// A simulated cluster. Public methods let tests script scenarios; [`crate::run_seed`]
/// drives it with random faults.
pub struct Cluster {
    pub opts: SimOptions,
    pub(crate) seed: u64,
    pub(crate) rng: ChaCha8Rng,
    pub now: u64,
    pub(crate) nodes: BTreeMap<NodeId, SimNode>,
    pub(crate) net: Network,
    pub(crate) checker: Checker,
    pub(crate) clients: Vec<SimClient>,
    pub(crate) acked_max_index: Index,
    pub(crate) acked_commands: u64,
    pub(crate) pending_reads: BTreeMap<(NodeId, u64), Index>,
    pub(crate) released: Vec<(u64, NodeId, u64, Index)>,
    pub(crate) next_read_ctx: u64,
    pub(crate) value_reads: crate::reads::ValueReads,
    /// (node, client, seq) → index of the one non-duplicate application.
    pub(crate) applied_commands: BTreeMap<(NodeId, u64, u64), Index>,
    pub(crate) harness_violations: Vec<String>,
    /// Everything nodes reported, for scripted tests: (time, node, event).
    pub events: Vec<(u64, NodeId, Event)>,
    /// The last notable things that happened, printed when a run fails.
    recent: Vec<String>,
    pub clients_active: bool,
    /// Configuration changes the leaders accepted: (kind, node, whether the proposer
    /// removed itself).
    pub conf_changes: Vec<(ConfChangeKind, NodeId, bool)>,
    /// Readies advanced before their write was durable (`async_persist`).
    pub background_writes: u64,
    /// Crashes that left a torn write: some, not all, of its entries on disk.
    pub torn_writes: u64,
    /// Fsyncs that failed (each stopped its node).
    pub failed_fsyncs: u64,
    /// Messages handed to the network, by recipient and kind (dropped ones included).
    pub sent_by_kind: BTreeMap<(NodeId, &'static str), u64>,
    /// Graceful stops (drain, hand-off) that ended, and how.
    pub stops: Vec<(NodeId, Stop)>,
}

impl Cluster {
    pub fn new(seed: u64, opts: SimOptions) -> Cluster {
        let mut cluster = Cluster {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            now: 0,
            nodes: BTreeMap::new(),
            net: Network::default(),
            checker: Checker::new(),
            clients: Vec::new(),
            acked_max_index: 0,
            acked_commands: 0,
            pending_reads: BTreeMap::new(),
            released: Vec::new(),
            value_reads: Default::default(),
            next_read_ctx: 1,
            applied_commands: BTreeMap::new(),
            harness_violations: Vec::new(),
            events: Vec::new(),
            recent: Vec::new(),
            clients_active: true,
            conf_changes: Vec::new(),
            background_writes: 0,
            torn_writes: 0,
            failed_fsyncs: 0,
            sent_by_kind: BTreeMap::new(),
            stops: Vec::new(),
            opts,
        };
        for id in 1..=cluster.opts.nodes as NodeId {
            cluster.create_node(id, true);
            cluster.boot(id);
        }
        for i in 0..cluster.opts.clients as u64 {
            cluster.clients.push(SimClient { id: 1000 + i, seq: 0, outstanding: None });
        }
        cluster
    }

    fn create_node(&mut self, id: NodeId, bootstrap: bool) {
        assert!((1..=MAX_NODES).contains(&id), "node ids are 1..={MAX_NODES}");
        // A new incarnation keeps counting restarts, so its RNG seed is new too.
        let restarts = self.nodes.get(&id).map_or(0, |n| n.restarts);
        let tick_phase = self.rng.next_u64() % TICK;
        let node = SimNode {
            replica: None,
            disk: SimDisk::default(),
            in_flight: None,
            writes: Default::default(),
            tick_phase,
            restarts,
            paused: false,
            backlog: Vec::new(),
            bootstrap,
            tombstone: false,
            restart_at: None,
        };
        self.nodes.insert(id, node);
    }

    /// The ConfChanges the initial members bootstrap, each with its address.
    fn bootstrap_changes(&self) -> Vec<ConfChange> {
        (1..=self.opts.nodes as NodeId)
            .map(|id| ConfChange::new(ConfChangeKind::AddVoter, id, context(id, false)))
            .collect()
    }

    pub(crate) fn raft_config(&self, id: NodeId, restarts: u64) -> Config {
        let mut cfg = Config::new(id);
        cfg.seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (id << 32) ^ restarts;
        cfg.compaction_slack = self.opts.compaction_slack;
        cfg.snapshot_chunk_bytes = self.opts.snapshot_chunk_bytes;
        cfg.max_append_bytes = self.opts.max_append_bytes;
        cfg.max_inflight_appends = 8;
        cfg.max_promotion_lag = MAX_PROMOTION_LAG;
        cfg.election_tick = ELECTION_TICKS;
        cfg.planted_bug = self.opts.planted_bug;
        if let Some(&max) = self.opts.max_snapshot_bytes.get(&id) {
            cfg.max_snapshot_bytes = max;
        }
        cfg
    }

    /// The replica a node's disk holds, as raftkv-server recovers it: an initial member
    /// with an empty disk bootstraps the first entries; an empty disk cannot tell a
    /// first start from a lost one, so the node recovers (unless the cluster turns out
    /// to be brand new: `confirm_new_clusters`).
    pub(crate) fn replica_from_disk(&self, id: NodeId, disk: &SimDisk, bootstrap: bool, restarts: u64) -> Replica {
        let cfg = self.raft_config(id, restarts);
        let mut recovered = Recovered {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
            lost_state: disk.snapshot.is_none() && disk.entries.is_empty(),
        };
        // As the server does, before anything reads the entries.
        recovered.discard_torn_first_write();
        let (kv, membership) = Replica::restore_state(recovered.snapshot.as_ref(), &recovered.entries, BTreeMap::new())
            .expect("a simulated disk holds a valid state");
        let raw = if bootstrap {
            RawNode::bootstrap_with(cfg, self.bootstrap_changes(), recovered)
        } else {
            RawNode::new(cfg, ConfState::default(), recovered)
        };
        let policy = ReplicaConfig {
            election_ticks: ELECTION_TICKS,
            snapshot_entries: self.opts.snapshot_every,
            max_promotion_lag: MAX_PROMOTION_LAG,
        };
        Replica::new(raw.expect("valid config"), kv, membership, policy)
    }

    /// Starts (or restarts) a node from exactly what its disk holds.
    fn boot(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.restarts += 1;
        let (restarts, bootstrap, disk) = (node.restarts, node.bootstrap, node.disk.clone());
        let replica = self.replica_from_disk(id, &disk, bootstrap, restarts);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.replica = Some(replica);
        node.in_flight = None;
        node.writes.clear();
        self.checker.node_restarted(id);
    }

    pub(crate) fn note(&mut self, line: String) {
        if self.recent.len() >= 40 {
            self.recent.remove(0);
        }
        self.recent.push(format!("t={} {line}", self.now));
    }

    // ---- scripted control ----

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].replica.is_some()
    }

    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.nodes[&id].replica.as_ref()
    }

    pub fn raw(&self, id: NodeId) -> Option<&RawNode> {
        self.replica(id).map(Replica::raw)
    }

    pub fn raw_mut(&mut self, id: NodeId) -> Option<&mut RawNode> {
        self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()).map(Replica::raw_mut)
    }

    /// The state machine of a live node.
    pub fn kv(&self, id: NodeId) -> &KvStateMachine {
        self.replica(id).unwrap_or_else(|| panic!("node {id} is down")).kv()
    }

    /// The live node that believes it leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.replica.as_ref().map(|r| (id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| *id)
    }

    pub fn crash(&mut self, id: NodeId) {
        self.tear(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.paused = false;
        node.backlog.clear();
        node.replica = None;
        node.in_flight = None; // not yet fsynced: lost
        node.writes.clear();
        self.pending_reads.retain(|(n, _), _| *n != id);
        self.value_reads.forget(id);
        self.note(format!("crash {id}"));
    }

    /// Stops `id` as SIGSTOP does: time passes without it, and what is sent to it waits.
    /// A leader paused this way still believes it leads when it resumes.
    pub fn pause(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id).filter(|n| n.replica.is_some()) {
            node.paused = true;
            self.note(format!("pause {id}"));
        }
    }

    /// Resumes a paused node: it handles its backlog, then goes on.
    pub fn resume(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.paused {
            return;
        }
        node.paused = false;
        for msg in std::mem::take(&mut node.backlog) {
            self.step_at(msg);
        }
        self.note(format!("resume {id}"));
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes[&id].paused
    }

    /// Starts a stopped node again from its disk (not a removed one: its tombstone).
    pub fn restart(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).expect("known node").restart_at = None;
        if !self.is_up(id) && !self.nodes[&id].tombstone {
            self.boot(id);
            self.note(format!("restart {id}"));
        }
    }

    /// Restarts a node whose disk was lost. An initial member bootstraps the first
    /// entries again (as a server does from its flags); every wiped node recovers: it
    /// neither votes nor counts toward a quorum until a leader brings it up to date.
    pub fn restart_empty(&mut self, id: NodeId) {
        self.crash(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.disk = SimDisk::default();
        node.tombstone = false;
        self.boot(id);
        self.note(format!("restart {id} with an empty disk"));
    }

    /// Like [`Cluster::restart_empty`], but the node comes back as if it had never lost
    /// anything: a voter at once, as raftkv-server was before recoveries existed. Only
    /// for tests that show the checker catching what that breaks.
    pub fn restart_empty_unprotected(&mut self, id: NodeId) {
        self.restart_empty(id);
        assert!(self.raw_mut(id).expect("just booted").confirm_new_cluster_unchecked());
        self.note(format!("node {id}: recovery skipped (unprotected)"));
    }

    /// Asks `id` to shut down as SIGTERM does: it hands off leadership (bounded by two
    /// election timeouts), then stops; it restarts like a crashed node.
    pub fn stop_gracefully(&mut self, id: NodeId) {
        if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut())
            && !replica.is_draining()
        {
            let handed = replica.start_drain();
            self.note(format!("node {id}: shutting down, hand-off {handed:?}"));
        }
    }

    /// Whether `id` is recovering from lost state, or would be after a crash: as it says
    /// when up, or as its disk says (a recovery's end is final only once durable; an
    /// empty disk recovers when it starts).
    pub fn is_recovering(&self, id: NodeId) -> bool {
        let node = &self.nodes[&id];
        let on_disk = node.disk.hard_state.recovering || node.disk.holds_no_state();
        on_disk || node.replica.as_ref().is_some_and(|r| r.status().recovering)
    }

    // ---- membership ----

    /// Starts `id` as a brand-new, empty node (a new incarnation if it existed: its disk
    /// is wiped). It has no configuration until a leader adds it and replicates to it.
    ///
    /// Reusing the id of a removed node is unsafe while any node's log may still hold a
    /// configuration that counts the old incarnation as a voter: a stale node could win
    /// an election with the forgetful new incarnation's vote. The nemesis only adds
    /// fresh ids.
    pub fn start_new_node(&mut self, id: NodeId) {
        if self.nodes.contains_key(&id) {
            self.crash(id);
        }
        self.create_node(id, false);
        self.boot(id);
        self.note(format!("start new node {id}"));
    }

    /// Proposes a configuration change at `leader`; a new member is promoted by the
    /// leader itself once caught up if `auto_promote`.
    pub fn propose_member_change(
        &mut self,
        leader: NodeId,
        change: ConfChangeKind,
        node: NodeId,
        auto_promote: bool,
    ) -> Result<(Index, Term), ProposeError> {
        let raw = self.raw_mut(leader).ok_or(ProposeError::NotLeader { leader: None })?;
        let result = raw.propose_conf_change(ConfChange::new(change, node, context(node, auto_promote)));
        self.note(format!("node {leader}: propose {} {node}: {result:?}", change.as_str()));
        if result.is_ok() {
            self.conf_changes.push((change, node, node == leader));
        }
        result
    }

    /// Proposes a configuration change at `leader` (a new member is not auto-promoted).
    pub fn propose_conf_change_at(
        &mut self,
        leader: NodeId,
        change: ConfChangeKind,
        node: NodeId,
    ) -> Result<(Index, Term), ProposeError> {
        self.propose_member_change(leader, change, node, false)
    }

    /// Has the leader add `id` as a learner and, if it accepts, starts `id` as a new
    /// empty node.
    pub fn add_learner(&mut self, id: NodeId) -> Result<(Index, Term), ProposeError> {
        let leader = self.leader().ok_or(ProposeError::NotLeader { leader: None })?;
        let result = self.propose_conf_change_at(leader, ConfChangeKind::AddLearner, id)?;
        self.start_new_node(id);
        Ok(result)
    }

    /// The configuration of the live node that leads the highest term, if any.
    pub fn leader_conf(&self) -> Option<ConfState> {
        self.leader().map(|l| self.raw(l).expect("leader is up").conf().clone())
    }

    /// The members of the leader's configuration; every node if there is no leader.
    pub fn members(&self) -> Vec<NodeId> {
        match self.leader_conf() {
            Some(conf) => conf.members().collect(),
            None => self.node_ids(),
        }
    }

    /// Every configuration the cluster may settle in: the latest and the committed one
    /// of each node that is not recovering (a down node's as its disk has them). A
    /// recovering node never leads, so its own configuration never rules.
    pub fn candidate_confs(&self) -> Vec<ConfState> {
        let mut sets = Vec::new();
        for (id, node) in &self.nodes {
            if self.is_recovering(*id) || node.tombstone {
                continue;
            }
            let restored;
            let raw = match &node.replica {
                Some(replica) => replica.raw(),
                None => {
                    restored = self.replica_from_disk(*id, &node.disk, node.bootstrap, 0);
                    restored.raw()
                }
            };
            sets.push(raw.conf().clone());
            sets.extend(raw.conf_at(raw.status().commit_index));
        }
        sets
    }

    /// Whether, in every configuration the cluster may settle in (after `change`, if
    /// any, of the one it is in), the members recovering from lost state — `also`
    /// counted as one — are a minority of the voters that a quorum can do without.
    /// Learners count too: a leader may promote one before it hears that its disk was
    /// lost.
    /// Whether crashing `id` now is allowed: a crash of a node whose disk holds no
    /// state yet (its first write not durable) loses that state, and counts as a wipe
    /// (see `run::wipe_disk`): allowed only within the bound on recoveries.
    pub fn may_lose_state(&self, id: NodeId) -> bool {
        !self.nodes[&id].disk.holds_no_state() || self.is_recovering_now(id) || self.may_wipe(id)
    }

    /// Whether `id` may lose its disk now: while every node that is not recovering
    /// agrees on the voters, and the recoveries stay within their bound (see
    /// `run::wipe_disk`).
    pub fn may_wipe(&self, id: NodeId) -> bool {
        let confs = self.candidate_confs();
        confs.windows(2).all(|w| w[0].voters == w[1].voters) && self.recoveries_within_bound(Some(id), None)
    }

    /// Whether `id` is up and recovering (it has already lost its state once).
    fn is_recovering_now(&self, id: NodeId) -> bool {
        self.nodes[&id].replica.as_ref().is_some_and(|r| r.status().recovering)
    }

    pub fn recoveries_within_bound(&self, also: Option<NodeId>, change: Option<&ConfChange>) -> bool {
        let mut confs = self.candidate_confs();
        if let Some(cc) = change {
            confs.extend(self.leader_conf().into_iter().filter_map(|conf| conf.apply_change(cc).ok()));
        }
        !confs.is_empty()
            && confs.iter().all(|conf| {
                let recovering = conf.members().filter(|m| Some(*m) == also || self.is_recovering(*m)).count();
                recovering <= (conf.voters.len().max(1) - 1) / 2
            })
    }

    // ---- clients ----

    /// Proposes a command at `node` (it must lead). Returns (index, term).
    pub fn propose_at(&mut self, node: NodeId, command: &Command) -> Option<(Index, Term)> {
        self.raw_mut(node)?.propose(command.encode()).ok()
    }

    /// Asks `node` for a ReadIndex read; returns its context if accepted.
    pub fn read_at(&mut self, node: NodeId) -> Option<u64> {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.raw_mut(node)?.read_index(ctx).ok()?;
        self.pending_reads.insert((node, ctx), self.acked_max_index);
        // A key of the clients' (`k0`..`k4`), checked by value once served.
        self.value_reads.issued(node, ctx, Bytes::from(format!("k{}", ctx % 5)));
        Some(ctx)
    }

    /// Reads released so far, as (time, node, ctx, index).
    pub fn released_reads(&self) -> &[(u64, NodeId, u64, Index)] {
        &self.released
    }

    pub fn violations(&self) -> Vec<String> {
        let mut out: Vec<String> = self.checker.violations().iter().map(|v| format!("{v:?}")).collect();
        out.extend(self.harness_violations.iter().cloned());
        out
    }

    pub fn checker_violations(&self) -> &[Violation] {
        self.checker.violations()
    }

    pub fn acked_commands(&self) -> u64 {
        self.acked_commands
    }

    pub fn recent_history(&self) -> &[String] {
        &self.recent
    }

    // ---- end-of-run checks ----

    /// Every live member's log or snapshot still holds every committed entry. (A removed
    /// node stops receiving the log, so it may lack later entries.)
    pub fn check_nothing_lost(&mut self) {
        let members = self.members();
        let mut logs = BTreeMap::new();
        for (id, node) in self.nodes.iter().filter(|(id, _)| members.contains(id)) {
            if let Some(replica) = &node.replica {
                let raw = replica.raw();
                let pairs = raw.log_entries().iter().map(|e| (e.index, e.term)).collect();
                logs.insert(*id, (raw.status().first_index, pairs));
            }
        }
        self.checker.check_nothing_lost(&logs);
    }

    /// Whether every member of the leader's configuration is up and has applied `index`.
    pub fn all_applied(&self, index: Index) -> bool {
        self.members().iter().all(|id| self.replica(*id).is_some_and(|r| r.applied_index() >= index))
    }

    /// State machine digests of the live nodes (they must agree once converged).
    pub fn digests(&self) -> BTreeMap<NodeId, (Index, u64)> {
        let live = self.nodes.iter().filter_map(|(id, n)| Some((*id, n.replica.as_ref()?)));
        live.map(|(id, r)| (id, (r.applied_index(), r.kv().digest()))).collect()
    }

    /// Every node's status, one line each, for failure reports.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            let Some(replica) = &node.replica else {
                out.push_str(&format!("  node {id}: down{}\n", if node.tombstone { " (removed)" } else { "" }));
                continue;
            };
            let (raw, s) = (replica.raw(), replica.status());
            out.push_str(&format!(
                "  node {id}: {} term={} leader={:?} commit={} applied={} kv_applied={} last={} persisted={} first={} \
                 in_flight={} recovering={} voters={:?} learners={:?} conf_index={} progress={:?}\n",
                s.role.as_str(),
                s.term,
                s.leader,
                s.commit_index,
                s.applied_index,
                replica.applied_index(),
                s.last_index,
                s.persisted_index,
                s.first_index,
                node.in_flight.is_some(),
                s.recovering,
                s.conf.voters,
                s.conf.learners,
                raw.conf_index(),
                s.progress
            ));
        }
        out
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

/// The context a simulated member's ConfChange carries, as a server's does.
fn context(node: NodeId, auto_promote: bool) -> Bytes {
    MemberContext { addr: format!("sim-node-{node}"), auto_promote }.encode()
}
