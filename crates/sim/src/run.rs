//! One seeded run: a period of random faults (the nemesis), then healing, then the
//! liveness and convergence checks.
//!
//! The nemesis mixes membership changes — add a learner (a brand-new empty node),
//! promote a learner, remove a member (the leader too) — with crashes, restarts and
//! network faults. Liveness is then required of the configuration the cluster ends
//! with: once faults heal and every node is back up (removed nodes too, to show they
//! do not disrupt), a leader commits, and every member of its configuration converges.

use std::fmt;

use bytes::Bytes;
use raftkv_raft::{ConfChange, ConfChangeKind, Event, NodeId, PlantedBug, TraceTag};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::checker::Violation;
use crate::cluster::{Cluster, MAX_NODES, SimOptions};

/// Time units of random faults.
const FAULT_UNITS: u64 = 5_000;
/// After healing, a leader must commit a new command within this many units…
const LIVENESS_UNITS: u64 = 4_000;
/// …and every node must then catch up within this many.
const CONVERGENCE_UNITS: u64 = 4_000;
/// On average one fault action per this many units; each seed draws its own, from a
/// calm cluster to one in constant turmoil (short leaderships are what expose commit
/// rule bugs such as Raft's Figure 8).
const FAULT_EVERY: [u64; 4] = [300, 150, 60, 25];
/// How long a crash may wait for a node in the middle of a write (torn writes on).
const TORN_WAIT_UNITS: u64 = 100;
/// The nemesis never promotes beyond this many voters, to keep runs fast.
const MAX_VOTERS: usize = 5;

#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub faults: u64,
    pub acked_commands: u64,
    pub time: u64,
    /// Configuration changes accepted by leaders, and how many removed their proposer.
    pub conf_changes: usize,
    pub leader_removals: usize,
    /// Messages delivered beyond an election timeout, and those of an older term than
    /// their recipient's by then.
    pub late_messages: u64,
    pub stale_late_messages: u64,
    /// ReadIndex reads whose value was checked once their node applied their index.
    pub value_reads: u64,
    /// Crashes that tore a write (kept part of its entries).
    pub torn_writes: u64,
    /// Fsyncs that failed and stopped their node.
    pub failed_fsyncs: u64,
    /// A fingerprint of every event every node reported, in order, with trace tags
    /// left out: what the nodes decided (see [`decisions_fingerprint`]).
    pub decisions: u64,
    /// Events that handed a message's trace tag back (a run with `trace_tags`).
    pub traced_events: u64,
}

/// A failed run, with what is needed to replay it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub nodes: usize,
    pub reason: String,
    pub recent: Vec<String>,
    /// What the invariant checker itself reported, from the nodes' observations (a
    /// failure may also come from the harness's own checks, or from liveness).
    pub checker_violations: Vec<Violation>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation failed: seed={} nodes={}: {}", self.seed, self.nodes, self.reason)?;
        writeln!(
            f,
            "replay: RAFT_SIM_SEED={} RAFT_SIM_NODES={} cargo test -p raftkv-sim --test simulation replay -- --nocapture",
            self.seed, self.nodes
        )?;
        writeln!(f, "last events:")?;
        for line in &self.recent {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seed on a cluster of `nodes`.
pub fn run_seed(seed: u64, nodes: usize) -> Result<RunReport, Failure> {
    run_seed_with(seed, nodes, None)
}

/// [`run_seed`] with a bug planted in every node's core (tests of the checker only).
pub fn run_seed_with(seed: u64, nodes: usize, planted_bug: Option<PlantedBug>) -> Result<RunReport, Failure> {
    run_seed_opts(seed, nodes, planted_bug, false)
}

/// [`run_seed`] with every message stamped with a trace tag, as a traced runtime does.
pub fn run_seed_traced(seed: u64, nodes: usize) -> Result<RunReport, Failure> {
    run_seed_opts(seed, nodes, None, true)
}

fn run_seed_opts(
    seed: u64,
    nodes: usize,
    planted_bug: Option<PlantedBug>,
    trace_tags: bool,
) -> Result<RunReport, Failure> {
    let mut knobs = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed);
    let mut opts = SimOptions::new(nodes);
    opts.drop_percent = knobs.next_u64() % 10;
    opts.duplicate_percent = knobs.next_u64() % 5;
    opts.max_delay = 1 + knobs.next_u64() % 20;
    opts.max_fsync = knobs.next_u64() % 6;
    opts.max_append_bytes = [64, 512, 4096][(knobs.next_u64() % 3) as usize];
    let fault_every = FAULT_EVERY[(knobs.next_u64() % FAULT_EVERY.len() as u64) as usize];
    opts.async_persist = knobs.next_u64().is_multiple_of(2);
    // Drawn last, so the knobs above are what they were before late messages existed.
    opts.late_percent = [0, 1, 3][(knobs.next_u64() % 3) as usize];
    opts.torn_writes = knobs.next_u64().is_multiple_of(2);
    // Rare: each failure stops a node until the nemesis restarts it.
    opts.failed_fsync_percent = [0, 0, 1][(knobs.next_u64() % 3) as usize];
    opts.planted_bug = planted_bug;
    opts.trace_tags = trace_tags;
    let mut cluster = Cluster::new(seed, opts);
    let fail = |c: &Cluster, reason: String| Failure {
        seed,
        nodes,
        reason,
        recent: c.recent_history().to_vec(),
        checker_violations: c.checker_violations().to_vec(),
    };

    let mut faults = 0;
    for _ in 0..FAULT_UNITS {
        cluster.step();
        if cluster.rng().next_u64().is_multiple_of(fault_every) {
            inject_fault(&mut cluster);
            faults += 1;
        }
        if let Some(v) = cluster.violations().first() {
            return Err(fail(&cluster, format!("safety: {v}")));
        }
    }

    if let Err(reason) = settle(&mut cluster) {
        return Err(fail(&cluster, reason));
    }
    let conf_changes = cluster.conf_changes.len();
    let leader_removals = cluster.conf_changes.iter().filter(|c| c.2).count();
    Ok(RunReport {
        seed,
        nodes,
        faults,
        acked_commands: cluster.acked_commands(),
        time: cluster.now,
        conf_changes,
        leader_removals,
        late_messages: cluster.net.late_delivered,
        stale_late_messages: cluster.net.stale_late_delivered,
        value_reads: cluster.value_reads.served,
        torn_writes: cluster.torn_writes,
        failed_fsyncs: cluster.failed_fsyncs,
        decisions: decisions_fingerprint(&cluster.events, false),
        traced_events: cluster.events.iter().filter(|(_, _, e)| trace_of(e).is_some()).count() as u64,
    })
}

/// A hash of `events` (time, node, event), trace tags left out unless `with_tags`.
/// `DefaultHasher::new` has fixed keys, so equal histories hash equal in any run.
pub fn decisions_fingerprint(events: &[(u64, NodeId, Event)], with_tags: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for (time, node, event) in events {
        let mut event = event.clone();
        if !with_tags {
            strip_trace(&mut event);
        }
        (time, node, format!("{event:?}")).hash(&mut h);
    }
    h.finish()
}

fn trace_of(e: &Event) -> Option<TraceTag> {
    match e {
        Event::VoteDecided { trace, .. } => *trace,
        Event::ElectionStarted { cause, .. } | Event::SteppedDown { cause, .. } => *cause,
        _ => None,
    }
}

fn strip_trace(e: &mut Event) {
    match e {
        Event::VoteDecided { trace, .. } => *trace = None,
        Event::ElectionStarted { cause, .. } | Event::SteppedDown { cause, .. } => *cause = None,
        _ => {}
    }
}

/// Heals every fault and restarts every node, then requires liveness (a leader commits
/// a new command), convergence (every member applies the commit index, to the same
/// state) and that nothing committed was lost. Returns the first failure.
fn settle(cluster: &mut Cluster) -> Result<(), String> {
    cluster.heal();
    cluster.opts.drop_percent = 0;
    cluster.opts.late_percent = 0;
    cluster.opts.failed_fsync_percent = 0;
    for id in cluster.node_ids() {
        cluster.resume(id);
        cluster.restart(id);
    }
    let acked = cluster.acked_commands();
    let live = cluster.run_until(LIVENESS_UNITS, |c| {
        !c.violations().is_empty() || (c.leader().is_some() && c.acked_commands() > acked)
    });
    safe(cluster)?;
    if !live {
        let statuses = cluster.describe();
        return Err(format!("liveness: no command committed within {LIVENESS_UNITS} units after healing:\n{statuses}"));
    }
    cluster.clients_active = false;
    let converged = cluster.run_until(CONVERGENCE_UNITS, |c| !c.violations().is_empty() || converged(c));
    safe(cluster)?;
    if !converged {
        let statuses = cluster.describe();
        return Err(format!("liveness: nodes did not converge within {CONVERGENCE_UNITS} units:\n{statuses}"));
    }
    let members = cluster.members();
    let digests: std::collections::BTreeMap<_, _> =
        cluster.digests().into_iter().filter(|(id, _)| members.contains(id)).collect();
    let first = digests.values().next().copied();
    if digests.values().any(|d| Some(*d) != first) {
        return Err(format!("state machines differ at the same applied index: {digests:?}"));
    }
    cluster.check_nothing_lost();
    safe(cluster)
}

/// The first safety violation, if any.
fn safe(cluster: &Cluster) -> Result<(), String> {
    match cluster.violations().first() {
        Some(v) => Err(format!("safety: {v}")),
        None => Ok(()),
    }
}

/// Every member of the leader's configuration is up and has applied its commit index.
fn converged(c: &Cluster) -> bool {
    let Some(leader) = c.leader() else { return false };
    let status = c.raw(leader).expect("leader is up").status();
    let commit = status.commit_index;
    // A new leader knows entries were committed only once its own term's entry is:
    // until then every member may agree on an older commit index.
    if commit < status.last_index {
        return false;
    }
    c.members()
        .iter()
        .all(|&id| c.raw(id).is_some_and(|r| r.status().commit_index == commit) && c.kv(id).applied_index() == commit)
}

/// Proposes a random membership change at the leader: add a learner, promote one, or
/// remove a member (possibly the leader itself). Most attempts that break a rule of
/// the core (one change at a time, a lagging learner, …) are simply refused.
fn change_membership(c: &mut Cluster) {
    let Some(leader) = c.leader() else { return };
    let conf = c.raw(leader).expect("leader is up").conf().clone();
    let pick = |c: &mut Cluster, from: &[NodeId]| from[(c.rng().next_u64() % from.len() as u64) as usize];
    match c.rng().next_u64() % 3 {
        0 => {
            // Only ids never used before: a removed id must not come back with a wiped
            // disk while any node's log may hold an old configuration that counts it as
            // a voter (that node could win an election with the forgetful node's vote
            // and lose committed entries). Node ids stand for incarnations, as etcd's
            // member ids do.
            let fresh: Vec<NodeId> = (1..=MAX_NODES).filter(|&id| !c.node_ids().contains(&id)).collect();
            if fresh.is_empty() {
                return;
            }
            let id = pick(c, &fresh);
            // Half the new learners ask to be promoted by the leader's own policy once
            // they caught up, as a node joining with --join does.
            let auto_promote = c.rng().next_u64().is_multiple_of(2);
            if c.propose_member_change(leader, ConfChangeKind::AddLearner, id, auto_promote).is_ok() {
                c.start_new_node(id);
            }
        }
        1 => {
            let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
            if learners.is_empty() || conf.voters.len() >= MAX_VOTERS {
                return;
            }
            let id = pick(c, &learners);
            // An operator does not grow or shrink the voters into a configuration where
            // recovering nodes are no minority (the leader refuses the cases it knows of;
            // a wipe it has not heard of yet is the operator's to know).
            let cc = ConfChange::new(ConfChangeKind::PromoteVoter, id, Bytes::new());
            if c.recoveries_within_bound(None, Some(&cc)) {
                let _ = c.propose_conf_change_at(leader, ConfChangeKind::PromoteVoter, id);
            }
        }
        _ => {
            let members: Vec<NodeId> = conf.members().collect();
            let id = pick(c, &members);
            let cc = ConfChange::new(ConfChangeKind::Remove, id, Bytes::new());
            if c.recoveries_within_bound(None, Some(&cc)) {
                let _ = c.propose_conf_change_at(leader, ConfChangeKind::Remove, id);
            }
        }
    }
}

fn inject_fault(c: &mut Cluster) {
    let ids = c.node_ids();
    let pick = |c: &mut Cluster, from: &[NodeId]| from[(c.rng().next_u64() % from.len() as u64) as usize];
    match c.rng().next_u64() % 12 {
        0 => crash_one(c, &ids),
        1 => {
            let down: Vec<NodeId> = ids.iter().copied().filter(|&id| !c.is_up(id)).collect();
            if !down.is_empty() {
                let id = pick(c, &down);
                c.restart(id);
            }
        }
        2 => {
            let mut shuffled = ids.clone();
            for i in (1..shuffled.len()).rev() {
                let j = (c.rng().next_u64() % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let cut = 1 + (c.rng().next_u64() % (ids.len() as u64 - 1)) as usize;
            let (a, b) = shuffled.split_at(cut);
            c.partition(&[a.to_vec(), b.to_vec()]);
        }
        3 => {
            if let Some(leader) = c.leader() {
                c.isolate(leader);
            }
        }
        4 => {
            let from = pick(c, &ids);
            let to = pick(c, &ids);
            if from != to {
                c.cut_one_way(from, to);
            }
        }
        5 | 6 => change_membership(c),
        7 => wipe_disk(c),
        8 => {
            // SIGSTOP of the leader or of any node: it wakes up later believing what it
            // believed, to a backlog of stale messages.
            let target = if c.rng().next_u64().is_multiple_of(2) { c.leader() } else { Some(pick(c, &ids)) };
            if let Some(id) = target {
                c.pause(id);
            }
        }
        9 => {
            // SIGTERM of the leader or of any node: the replica's shutdown policy hands
            // leadership off, then the node stops (restarted like a crashed one).
            let target = if c.rng().next_u64().is_multiple_of(2) { c.leader() } else { Some(pick(c, &ids)) };
            if let Some(id) = target {
                c.stop_gracefully(id);
            }
        }
        _ => {
            c.heal();
            for id in c.node_ids() {
                c.resume(id);
            }
        }
    }
}

/// Crashes a random live node (with torn writes on, preferably one in the middle of a
/// write, waited for a little).
fn crash_one(c: &mut Cluster, ids: &[NodeId]) {
    // With torn writes on, the crash waits (a little) for a node in the middle
    // of a write, and takes it.
    let mid_write = |c: &Cluster| ids.iter().any(|&id| c.is_up(id) && c.mid_write(id));
    if c.opts.torn_writes {
        c.run_until(TORN_WAIT_UNITS, mid_write);
    }
    let mut up: Vec<NodeId> = ids.iter().copied().filter(|&id| c.is_up(id) && c.may_lose_state(id)).collect();
    let writing: Vec<NodeId> = up.iter().copied().filter(|&id| c.mid_write(id)).collect();
    if c.opts.torn_writes && !writing.is_empty() {
        up = writing;
    }
    if !up.is_empty() {
        let id = up[(c.rng().next_u64() % up.len() as u64) as usize];
        c.crash(id);
    }
}

/// Restarts a random node with an empty disk, at once and without waiting for earlier
/// wipes to catch up — unless that would leave more voters recovering from lost state
/// than the cluster can lose (the fault model: a minority of voters lose their disks at
/// a time; more is a lost quorum, which no protocol survives).
///
/// Only members are wiped: a removed node with a wiped disk has lost its tombstone too,
/// and its id must never come back (as `change_membership` never reuses ids). And only
/// while every node that is not recovering agrees on the voters: single-server changes
/// have a known hole when a voter is lost for good mid-change (an uncommitted change on
/// one node, a newer leader's entries only on a learner that would be promoted by it:
/// nobody can win), and a wiped disk is a voter lost for good.
fn wipe_disk(c: &mut Cluster) {
    let Some(conf) = c.leader_conf() else { return };
    let members: Vec<NodeId> = conf.members().collect();
    let id = members[(c.rng().next_u64() % members.len() as u64) as usize];
    if c.may_wipe(id) {
        c.restart_empty(id);
    }
}
