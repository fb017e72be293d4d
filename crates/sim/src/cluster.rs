//! A simulated cluster: real Raft cores and real state machines over a simulated
//! network and simulated disks, all driven by one seeded RNG and one logical clock.
//!
//! One time unit is the smallest step; nodes tick every [`TICK`] units. A node's Ready
//! is "fsynced" a random few units after it is taken, and a crash before then loses it:
//! a restarted node has exactly what its disk had. With `async_persist`, nodes go on
//! while Readies that allow it are being written (as the server does): up to
//! [`MAX_PENDING_WRITES`] writes in flight, durable in the order they were taken.
//!
//! The cluster's membership can change: nodes `1..=opts.nodes` bootstrap the cluster,
//! and ids up to [`MAX_NODES`] can join later as brand-new empty nodes (learners first).
//! A removed node keeps running (harmlessly) unless crashed; adding an id again starts
//! a new incarnation with a wiped disk.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use bytes::Bytes;
use raftkv_kv::{Command, KvStateMachine, WriteOp};
use raftkv_raft::{
    ConfChange, ConfChangeKind, ConfState, Config, Entry, EntryKind, Event, HardState, Index, Message, NodeId,
    PlantedBug, ProposeError, RawNode, Ready, Recovered, Role, Snapshot, SnapshotMeta, Term,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::checker::{Checker, Observation, Violation};

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
    /// A Ready becomes durable 0..=max_fsync units after it is taken.
    pub max_fsync: u64,
    /// Nodes write Readies without a new term, vote or snapshot in the background
    /// ([`RawNode::advance_async`]) and go on meanwhile.
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
}

impl SimOptions {
    pub fn new(nodes: usize) -> SimOptions {
        SimOptions {
            nodes,
            drop_percent: 0,
            duplicate_percent: 0,
            max_delay: 3,
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
        }
    }
}

/// What a simulated disk holds: exactly what was fsynced.
#[derive(Clone, Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Disk {
    fn write_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        self.entries.retain(|e| e.index < first.index);
        self.entries.extend_from_slice(entries);
    }

    /// A snapshot from the leader replaces the log unless the log already has the
    /// entry the snapshot ends at.
    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = &snapshot.meta;
        let matches = self.entries.iter().any(|e| e.index == meta.index && e.term == meta.term);
        if matches {
            self.entries.retain(|e| e.index > meta.index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(snapshot);
    }
}

struct InFlightReady {
    durable_at: u64,
    ready: Ready,
    /// What the checker learns from this Ready, once it is durable: a crash before then
    /// loses the Ready, and nothing of it left the node that the receivers do not
    /// report themselves.
    observations: Vec<Observation>,
}

/// A Ready advanced before its write was durable (`async_persist`).
struct PendingWrite {
    durable_at: u64,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    persisted_messages: Vec<Message>,
    last_entry: Option<(Index, Term)>,
    observations: Vec<Observation>,
}

struct SimNode {
    raw: Option<RawNode>,
    kv: KvStateMachine,
    disk: Disk,
    in_flight: Option<InFlightReady>,
    /// Background writes, oldest first; lost in a crash.
    writes: std::collections::VecDeque<PendingWrite>,
    tick_phase: u64,
    last_snapshot_index: Index,
    restarts: u64,
    /// Stopped (SIGSTOP): it neither ticks nor handles anything; messages to it wait in
    /// `backlog` and are handled, in order, when it resumes.
    paused: bool,
    backlog: Vec<Message>,
    /// An initial member: it bootstraps the cluster's first entries whenever its disk
    /// is empty (as raftkv-server does from `--peers`), wiped or not; false for nodes
    /// that join later.
    bootstrap: bool,
}

#[derive(Clone, Debug)]
struct Outstanding {
    command: Bytes,
    sent_at: u64,
    at: Option<(NodeId, Index, Term)>,
}

#[derive(Clone, Debug)]
struct SimClient {
    id: u64,
    seq: u64,
    outstanding: Option<Outstanding>,
}

struct InTransit {
    deliver_at: u64,
    /// Send order: a unique tie-breaker, so delivery order depends only on the seed.
    order: u64,
    msg: Message,
}

impl PartialEq for InTransit {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.order) == (other.deliver_at, other.order)
    }
}

impl Eq for InTransit {}

impl PartialOrd for InTransit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InTransit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at, self.order).cmp(&(other.deliver_at, other.order))
    }
}

/// A simulated cluster. Public methods let tests script scenarios; [`crate::run_seed`]
/// drives it with random faults.
pub struct Cluster {
    pub opts: SimOptions,
    seed: u64,
    rng: ChaCha8Rng,
    pub now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    in_transit: BinaryHeap<Reverse<InTransit>>,
    sent: u64,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    checker: Checker,
    clients: Vec<SimClient>,
    acked_max_index: Index,
    acked_commands: u64,
    pending_reads: BTreeMap<(NodeId, u64), Index>,
    released: Vec<(u64, NodeId, u64, Index)>,
    next_read_ctx: u64,
    /// (node, client, seq) → index of the one non-duplicate application.
    applied_commands: BTreeMap<(NodeId, u64, u64), Index>,
    harness_violations: Vec<String>,
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
    /// Messages handed to the network, by recipient and kind (dropped ones included).
    pub sent_by_kind: BTreeMap<(NodeId, &'static str), u64>,
}

fn fnv(data: &[u8], kind: EntryKind) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(kind.to_byte());
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Cluster {
    pub fn new(seed: u64, opts: SimOptions) -> Cluster {
        let mut cluster = Cluster {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            now: 0,
            nodes: BTreeMap::new(),
            in_transit: BinaryHeap::new(),
            sent: 0,
            blocked: BTreeSet::new(),
            checker: Checker::new(),
            clients: Vec::new(),
            acked_max_index: 0,
            acked_commands: 0,
            pending_reads: BTreeMap::new(),
            released: Vec::new(),
            next_read_ctx: 1,
            applied_commands: BTreeMap::new(),
            harness_violations: Vec::new(),
            events: Vec::new(),
            recent: Vec::new(),
            clients_active: true,
            conf_changes: Vec::new(),
            background_writes: 0,
            sent_by_kind: BTreeMap::new(),
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
            raw: None,
            kv: KvStateMachine::new(),
            disk: Disk::default(),
            in_flight: None,
            writes: Default::default(),
            tick_phase,
            paused: false,
            backlog: Vec::new(),
            last_snapshot_index: 0,
            restarts,
            bootstrap,
        };
        self.nodes.insert(id, node);
    }

    /// The configuration the initial members bootstrap.
    fn initial_conf(&self) -> ConfState {
        ConfState::with_voters(1..=self.opts.nodes as NodeId)
    }

    fn raft_config(&self, id: NodeId, restarts: u64) -> Config {
        let mut cfg = Config::new(id);
        cfg.seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (id << 32) ^ restarts;
        cfg.compaction_slack = self.opts.compaction_slack;
        cfg.snapshot_chunk_bytes = self.opts.snapshot_chunk_bytes;
        cfg.max_append_bytes = self.opts.max_append_bytes;
        cfg.max_inflight_appends = 8;
        cfg.max_promotion_lag = MAX_PROMOTION_LAG;
        cfg.planted_bug = self.opts.planted_bug;
        if let Some(&max) = self.opts.max_snapshot_bytes.get(&id) {
            cfg.max_snapshot_bytes = max;
        }
        cfg
    }

    /// Starts (or restarts) a node from exactly what its disk holds.
    fn boot(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let conf = if node.bootstrap { self.initial_conf() } else { ConfState::default() };
        let node = self.nodes.get_mut(&id).expect("known node");
        node.restarts += 1;
        let restarts = node.restarts;
        let cfg = self.raft_config(id, restarts);
        let node = self.nodes.get_mut(&id).expect("known node");
        let disk = node.disk.clone();
        node.kv = match &disk.snapshot {
            Some(s) => KvStateMachine::restore(&s.data).expect("simulated disk holds a valid snapshot"),
            None => KvStateMachine::new(),
        };
        node.last_snapshot_index = disk.snapshot.as_ref().map_or(0, |s| s.meta.index);
        // An empty disk cannot tell a first start from a lost one: the node recovers,
        // unless (an initial member) the cluster turns out to be brand new (see
        // `confirm_new_cluster`).
        let lost_state = disk.snapshot.is_none() && disk.entries.is_empty();
        let recovered =
            Recovered { hard_state: disk.hard_state, snapshot: disk.snapshot, entries: disk.entries, lost_state };
        node.raw = Some(RawNode::new(cfg, conf, recovered).expect("valid config"));
        node.in_flight = None;
        node.writes.clear();
        self.checker.node_restarted(id);
    }

    fn note(&mut self, line: String) {
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
        self.nodes[&id].raw.is_some()
    }

    pub fn raw(&self, id: NodeId) -> Option<&RawNode> {
        self.nodes[&id].raw.as_ref()
    }

    pub fn raw_mut(&mut self, id: NodeId) -> Option<&mut RawNode> {
        self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut())
    }

    pub fn kv(&self, id: NodeId) -> &KvStateMachine {
        &self.nodes[&id].kv
    }

    /// The live node that believes it leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raw.as_ref().map(|r| (id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| *id)
    }

    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.paused = false;
        node.backlog.clear();
        node.raw = None;
        node.in_flight = None; // not yet fsynced: lost
        node.writes.clear();
        self.pending_reads.retain(|(n, _), _| *n != id);
        self.note(format!("crash {id}"));
    }

    /// Stops `id` as SIGSTOP does: time passes without it, and what is sent to it waits.
    /// A leader paused this way still believes it leads when it resumes.
    pub fn pause(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id).filter(|n| n.raw.is_some()) {
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
        let backlog = std::mem::take(&mut node.backlog);
        if let Some(raw) = node.raw.as_mut() {
            for msg in backlog {
                let _ = raw.step(msg);
            }
        }
        self.note(format!("resume {id}"));
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes[&id].paused
    }

    pub fn restart(&mut self, id: NodeId) {
        if !self.is_up(id) {
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
        node.disk = Disk::default();
        self.boot(id);
        self.note(format!("restart {id} with an empty disk"));
    }

    /// Whether `id` is recovering from lost state, or would be after a crash: as it says
    /// when up, or as its disk says (a recovery's end is final only once durable; an
    /// empty disk recovers when it starts).
    pub fn is_recovering(&self, id: NodeId) -> bool {
        let node = &self.nodes[&id];
        let disk = &node.disk;
        let on_disk = disk.hard_state.recovering || (disk.snapshot.is_none() && disk.entries.is_empty());
        on_disk || node.raw.as_ref().is_some_and(|raw| raw.status().recovering)
    }

    /// The voter sets of every configuration the cluster may settle in: the latest and
    /// the committed one of each node that is not recovering (a down node's as its disk
    /// has them). A recovering node never leads, so its own configuration never rules.
    pub fn candidate_voter_sets(&self) -> Vec<BTreeSet<NodeId>> {
        let mut sets = Vec::new();
        for (id, node) in &self.nodes {
            if self.is_recovering(*id) {
                continue;
            }
            let restored;
            let raw = match &node.raw {
                Some(raw) => raw,
                None => {
                    let conf = if node.bootstrap { self.initial_conf() } else { ConfState::default() };
                    let disk = node.disk.clone();
                    let recovered = Recovered {
                        hard_state: disk.hard_state,
                        snapshot: disk.snapshot,
                        entries: disk.entries,
                        lost_state: false,
                    };
                    restored = RawNode::new(self.raft_config(*id, 0), conf, recovered).expect("valid config");
                    &restored
                }
            };
            sets.push(raw.conf().voters.clone());
            if let Some(committed) = raw.conf_at(raw.status().commit_index) {
                sets.push(committed.voters);
            }
        }
        sets
    }

    /// Whether, in every configuration the cluster may settle in (after `change`, if
    /// any, of the one it is in), the voters recovering from lost state — `also`
    /// counted as one — are a minority that a quorum can do without.
    pub fn recoveries_within_bound(&self, also: Option<NodeId>, change: Option<&ConfChange>) -> bool {
        let mut sets = self.candidate_voter_sets();
        if let Some(cc) = change {
            let changed: Vec<_> = self
                .leader_conf()
                .into_iter()
                .filter_map(|conf| conf.apply_change(cc).ok())
                .map(|conf| conf.voters)
                .collect();
            sets.extend(changed);
        }
        !sets.is_empty()
            && sets.iter().all(|voters| {
                let recovering = voters.iter().filter(|v| Some(**v) == also || self.is_recovering(**v)).count();
                recovering <= (voters.len().max(1) - 1) / 2
            })
    }

    /// Like [`Cluster::restart_empty`], but the node comes back as if it had never lost
    /// anything: a voter at once, as raftkv-server was before recoveries existed. Only
    /// for tests that show the checker catching what that breaks.
    pub fn restart_empty_unprotected(&mut self, id: NodeId) {
        self.restart_empty(id);
        assert!(self.raw_mut(id).expect("just booted").confirm_new_cluster_unchecked());
        self.note(format!("node {id}: recovery skipped (unprotected)"));
    }

    /// What raftkv-server does for a founding member that starts with an empty data
    /// dir: ask every other founding member for its term, and end the recovery if all
    /// are up and at term 1 or below (the cluster is brand new). Run every step.
    fn confirm_new_clusters(&mut self) {
        let founders: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.bootstrap).map(|(id, _)| *id).collect();
        let all_new = founders.iter().all(|id| self.raw(*id).is_some_and(|r| r.status().term <= 1));
        if !all_new {
            return;
        }
        for id in founders {
            let raw = self.raw_mut(id).expect("up");
            if raw.status().recovering && raw.confirm_new_cluster() {
                self.note(format!("node {id}: a brand-new cluster, recovery confirmed over"));
            }
        }
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

    /// Proposes a configuration change at `leader`.
    pub fn propose_conf_change_at(
        &mut self,
        leader: NodeId,
        change: ConfChangeKind,
        node: NodeId,
    ) -> Result<(Index, Term), ProposeError> {
        let context = Bytes::from(format!("sim-node-{node}"));
        let raw = self.raw_mut(leader).ok_or(ProposeError::NotLeader { leader: None })?;
        let result = raw.propose_conf_change(ConfChange::new(change, node, context));
        self.note(format!("node {leader}: propose {} {node}: {result:?}", change.as_str()));
        if result.is_ok() {
            self.conf_changes.push((change, node, node == leader));
        }
        result
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

    /// Cuts every link between the groups (each node may reach only its own group).
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        self.blocked.clear();
        for a in self.node_ids() {
            for b in self.node_ids() {
                let same = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
                if a != b && !same {
                    self.blocked.insert((a, b));
                }
            }
        }
        self.note(format!("partition {groups:?}"));
    }

    pub fn isolate(&mut self, id: NodeId) {
        let rest: Vec<NodeId> = self.node_ids().into_iter().filter(|&n| n != id).collect();
        self.partition(&[vec![id], rest]);
    }

    /// Drops messages from `from` to `to` only.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
        self.note(format!("cut {from} -> {to}"));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
        self.note("heal".to_string());
    }

    /// Runs until `done` holds or `max_units` pass. Returns whether it held.
    pub fn run_until(&mut self, max_units: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..max_units {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn run_for(&mut self, units: u64) {
        for _ in 0..units {
            self.step();
        }
    }

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

    // ---- the clock ----

    pub fn step(&mut self) {
        self.now += 1;
        self.deliver_due();
        for id in self.node_ids() {
            let node = self.nodes.get_mut(&id).expect("known node");
            if (self.now + node.tick_phase).is_multiple_of(TICK)
                && !node.paused
                && let Some(raw) = node.raw.as_mut()
            {
                raw.tick();
            }
        }
        if self.clients_active {
            self.clients_act();
        }
        self.confirm_new_clusters();
        for id in self.node_ids() {
            self.process_node(id);
        }
    }

    fn deliver_due(&mut self) {
        while self.in_transit.peek().is_some_and(|Reverse(m)| m.deliver_at <= self.now) {
            let Reverse(InTransit { msg, .. }) = self.in_transit.pop().expect("peeked");
            if self.blocked.contains(&(msg.from, msg.to)) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&msg.to).filter(|n| n.raw.is_some()) else { continue };
            if node.paused {
                // Bounded like a socket buffer: the excess is lost.
                if node.backlog.len() < MAX_IN_TRANSIT {
                    node.backlog.push(msg);
                }
                continue;
            }
            // A refused message is a peer's bug or corruption; the core stays intact.
            let _ = node.raw.as_mut().expect("checked").step(msg);
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            *self.sent_by_kind.entry((msg.to, msg.body.name())).or_default() += 1;
            if self.in_transit.len() >= MAX_IN_TRANSIT {
                if self.harness_violations.iter().all(|v| !v.starts_with("message storm")) {
                    self.harness_violations.push(format!("message storm: {MAX_IN_TRANSIT} messages in flight"));
                }
                return;
            }
            if self.blocked.contains(&(msg.from, msg.to)) || self.rng.next_u64() % 100 < self.opts.drop_percent {
                continue;
            }
            let copies = if self.rng.next_u64() % 100 < self.opts.duplicate_percent { 2 } else { 1 };
            for _ in 0..copies {
                let deliver_at = self.now + 1 + self.rng.next_u64() % self.opts.max_delay.max(1);
                self.sent += 1;
                self.in_transit.push(Reverse(InTransit { deliver_at, order: self.sent, msg: msg.clone() }));
            }
        }
    }

    fn process_node(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.raw.is_none() || node.paused {
            return;
        }
        self.complete_writes(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.in_flight.as_ref().is_some_and(|f| f.durable_at <= self.now) {
            self.complete_ready(id);
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let raw = node.raw.as_mut().expect("checked");
        if node.in_flight.is_some() || node.writes.len() >= MAX_PENDING_WRITES || !raw.has_ready() {
            return;
        }
        let ready = raw.ready();
        // Writes are durable in the order they were taken.
        let after = node.writes.back().map_or(0, |w| w.durable_at);
        let durable_at = (self.now + self.rng.next_u64() % (self.opts.max_fsync + 1)).max(after);
        let observations = self.observe_ready(id, &ready);
        if self.opts.async_persist && ready.can_persist_async() {
            self.write_in_background(id, ready, durable_at, observations);
            return;
        }
        let messages = self.nodes.get_mut(&id).expect("known node").park_ready(ready, durable_at, observations);
        self.send(messages);
        if durable_at <= self.now {
            self.complete_writes(id);
            self.complete_ready(id);
        }
    }

    /// Sends and applies what `ready` allows now, advances the node, and queues the
    /// write of its entries and hard state.
    fn write_in_background(&mut self, id: NodeId, mut ready: Ready, durable_at: u64, observations: Vec<Observation>) {
        self.send(std::mem::take(&mut ready.messages));
        self.carry_out(id, &ready);
        let node = self.nodes.get_mut(&id).expect("known node");
        let last_entry = node.raw.as_mut().expect("live").advance_async();
        self.background_writes += 1;
        node.writes.push_back(PendingWrite {
            durable_at,
            entries: ready.entries,
            hard_state: ready.hard_state,
            persisted_messages: ready.persisted_messages,
            last_entry,
            observations,
        });
        self.maybe_snapshot(id);
        self.complete_writes(id);
    }

    /// Makes the background writes that are due durable, oldest first.
    fn complete_writes(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            if node.raw.is_none() || node.writes.front().is_none_or(|w| w.durable_at > self.now) {
                return;
            }
            let write = node.writes.pop_front().expect("checked");
            node.disk.write_entries(&write.entries);
            if let Some(hs) = write.hard_state {
                node.disk.hard_state = hs;
            }
            if let Some((index, term)) = write.last_entry {
                node.raw.as_mut().expect("live").persisted(index, term);
            }
            for o in write.observations {
                self.checker.observe(o);
            }
            self.send(write.persisted_messages);
        }
    }

    /// Records a Ready's events, and returns what the checker learns once it is durable.
    fn observe_ready(&mut self, id: NodeId, ready: &Ready) -> Vec<Observation> {
        let raw = self.nodes[&id].raw.as_ref().expect("live node");
        let mut observations = Vec::new();
        for entry in &ready.entries {
            let prev_term = raw.log_term(entry.index - 1).unwrap_or(0);
            let data_hash = fnv(&entry.data, entry.kind);
            observations.push(Observation::Appended {
                node: id,
                index: entry.index,
                term: entry.term,
                prev_term,
                data_hash,
            });
        }
        for event in &ready.events {
            if let Event::Committed { term, last, .. } = event {
                self.checker.observe(Observation::Committed { node: id, term: *term, last: *last });
            }
            if let Event::BecameLeader { term } = event {
                let log = raw.log_entries().iter().map(|e| (e.index, e.term, fnv(&e.data, e.kind))).collect();
                let first_index = raw.status().first_index;
                observations.push(Observation::BecameLeader { node: id, term: *term, first_index, log });
                let (conf_index, conf) = (raw.conf_index(), raw.conf().clone());
                let committed_conf = raw.conf_at(raw.status().commit_index).unwrap_or_default();
                observations.push(Observation::LeaderConf { node: id, term: *term, conf_index, conf, committed_conf });
            }
            self.events.push((self.now, id, event.clone()));
        }
        for event in ready.events.iter().filter(|e| !matches!(e, Event::Committed { .. })) {
            let line = format!("node {id}: {event:?}");
            self.note(line);
        }
        observations
    }

    fn complete_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let InFlightReady { mut ready, observations, .. } = node.in_flight.take().expect("a ready in flight");
        for o in observations {
            self.checker.observe(o);
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(snapshot) = &ready.snapshot {
            node.disk.install_snapshot(snapshot);
            node.kv = KvStateMachine::restore(&snapshot.data).expect("leader sent a valid snapshot");
            node.last_snapshot_index = snapshot.meta.index;
        }
        node.disk.write_entries(&ready.entries);
        if let Some(hs) = ready.hard_state {
            node.disk.hard_state = hs;
        }
        self.send(std::mem::take(&mut ready.persisted_messages));
        self.carry_out(id, &ready);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.raw.as_mut().expect("live").advance();
        self.maybe_snapshot(id);
    }

    /// Applies a Ready's committed entries and releases its reads.
    fn carry_out(&mut self, id: NodeId, ready: &Ready) {
        for entry in &ready.committed_entries {
            self.apply(id, entry);
        }
        for read in &ready.read_states {
            if let Some(acked_before) = self.pending_reads.remove(&(id, read.ctx)) {
                self.checker.observe(Observation::ReadReleased { node: id, read_index: read.index, acked_before });
                self.released.push((self.now, id, read.ctx, read.index));
            }
        }
        for ctx in &ready.dropped_reads {
            self.pending_reads.remove(&(id, *ctx));
        }
    }

    fn apply(&mut self, id: NodeId, entry: &Entry) {
        let data_hash = fnv(&entry.data, entry.kind);
        self.checker.observe(Observation::Applied { node: id, index: entry.index, term: entry.term, data_hash });
        if entry.kind == EntryKind::ConfChange {
            // The node's configuration as of this entry; None if a snapshot replaced the
            // log meanwhile (its maker applied the entry, and was observed then).
            if let Some(conf) = self.nodes[&id].raw.as_ref().and_then(|r| r.conf_at(entry.index)) {
                self.checker.observe(Observation::ConfApplied { node: id, index: entry.index, conf });
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if entry.kind != EntryKind::Command {
            node.kv.apply_noop(entry.index, entry.term).expect("indexes increase");
        } else {
            let applied = node.kv.apply(entry.index, entry.term, &entry.data);
            if !applied.duplicate && applied.result.is_ok() {
                let key = (id, applied.client_id, applied.seq);
                let first = *self.applied_commands.entry(key).or_insert(entry.index);
                if first != entry.index {
                    let v = format!(
                        "node {id} applied client {} seq {} twice: at {first} and {}",
                        key.1, key.2, entry.index
                    );
                    self.harness_violations.push(v);
                }
            }
        }
        self.ack_clients(id, entry);
    }

    fn ack_clients(&mut self, id: NodeId, entry: &Entry) {
        for client in &mut self.clients {
            let Some(out) = &mut client.outstanding else { continue };
            let Some((node, index, term)) = out.at else { continue };
            if node != id || index != entry.index {
                continue;
            }
            if term == entry.term {
                client.outstanding = None;
                self.acked_max_index = self.acked_max_index.max(index);
                self.acked_commands += 1;
            } else {
                out.at = None; // replaced by another leader's entry: retry
            }
        }
    }

    fn maybe_snapshot(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let applied = node.kv.applied_index();
        if applied < node.last_snapshot_index + self.opts.snapshot_every {
            return;
        }
        let raw = node.raw.as_mut().expect("live");
        // The configuration as of the snapshot's index, not the (possibly newer) latest.
        // None if a snapshot from the leader replaced the log since this Ready was taken:
        // it is installed with the next Ready, so skip this one.
        let Some(conf) = raw.conf_at(applied) else { return };
        let meta = SnapshotMeta { index: applied, term: node.kv.applied_term(), conf };
        let snapshot = Snapshot { meta, data: node.kv.snapshot() };
        node.disk.compact(snapshot.clone());
        raw.compact(snapshot);
        node.last_snapshot_index = applied;
    }

    // ---- clients ----

    fn clients_act(&mut self) {
        if !self.rng.next_u64().is_multiple_of(4) {
            return;
        }
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.paused && n.raw.as_ref().is_some_and(|r| r.status().role == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        if leaders.is_empty() {
            return;
        }
        let leader = leaders[(self.rng.next_u64() % leaders.len() as u64) as usize];
        let c = (self.rng.next_u64() % self.clients.len().max(1) as u64) as usize;
        if self.clients.is_empty() {
            return;
        }
        if self.rng.next_u64().is_multiple_of(5) {
            self.read_at(leader);
            return;
        }
        let now = self.now;
        let retry_after = self.opts.retry_after;
        let key = self.rng.next_u64() % 5;
        let client = &mut self.clients[c];
        let due = match &client.outstanding {
            None => true,
            Some(o) => o.at.is_none() || now >= o.sent_at + retry_after,
        };
        if !due {
            return;
        }
        if client.outstanding.is_none() {
            client.seq += 1;
            let op = WriteOp::Put {
                key: Bytes::from(format!("k{key}")),
                value: Bytes::from(format!("{}-{}", client.id, client.seq)),
            };
            let command = Command { client_id: client.id, seq: client.seq, op }.encode();
            client.outstanding = Some(Outstanding { command, sent_at: now, at: None });
        }
        let out = client.outstanding.as_mut().expect("set above");
        out.sent_at = now;
        let command = out.command.clone();
        if let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut())
            && let Ok((index, term)) = raw.propose(command)
        {
            self.clients[c].outstanding.as_mut().expect("set").at = Some((leader, index, term));
        }
    }

    // ---- end-of-run checks ----

    /// Every live member's log or snapshot still holds every committed entry. (A removed
    /// node stops receiving the log, so it may lack later entries.)
    pub fn check_nothing_lost(&mut self) {
        let members = self.members();
        let mut logs = BTreeMap::new();
        for (id, node) in self.nodes.iter().filter(|(id, _)| members.contains(id)) {
            if let Some(raw) = &node.raw {
                let pairs = raw.log_entries().iter().map(|e| (e.index, e.term)).collect();
                logs.insert(*id, (raw.status().first_index, pairs));
            }
        }
        self.checker.check_nothing_lost(&logs);
    }

    /// Whether every member of the leader's configuration is up and has applied `index`.
    pub fn all_applied(&self, index: Index) -> bool {
        self.members()
            .iter()
            .all(|id| self.nodes.get(id).is_some_and(|n| n.raw.is_some() && n.kv.applied_index() >= index))
    }

    /// State machine digests of all nodes (they must agree once converged).
    pub fn digests(&self) -> BTreeMap<NodeId, (Index, u64)> {
        self.nodes.iter().map(|(id, n)| (*id, (n.kv.applied_index(), n.kv.digest()))).collect()
    }

    /// Every node's status, one line each, for failure reports.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            match &node.raw {
                None => out.push_str(&format!("  node {id}: down\n")),
                Some(raw) => {
                    let s = raw.status();
                    out.push_str(&format!(
                        "  node {id}: {} term={} leader={:?} commit={} applied={} kv_applied={} last={} persisted={} first={} in_flight={} voters={:?} learners={:?} conf_index={} progress={:?}\n",
                        s.role.as_str(), s.term, s.leader, s.commit_index, s.applied_index, node.kv.applied_index(),
                        s.last_index, s.persisted_index, s.first_index, node.in_flight.is_some(), s.conf.voters,
                        s.conf.learners, raw.conf_index(), s.progress
                    ));
                }
            }
        }
        out
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

impl SimNode {
    /// Parks a taken Ready until it is durable; returns the messages to send now.
    fn park_ready(&mut self, mut ready: Ready, durable_at: u64, observations: Vec<Observation>) -> Vec<Message> {
        let messages = std::mem::take(&mut ready.messages);
        self.in_flight = Some(InFlightReady { durable_at, ready, observations });
        messages
    }
}
