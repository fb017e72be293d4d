//! One seeded run: a period of random faults (the nemesis), then healing, then the
//! liveness and convergence checks.

use std::fmt;

use raftkv_raft::NodeId;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::cluster::{Cluster, SimOptions};

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

#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub faults: u64,
    pub acked_commands: u64,
    pub time: u64,
}

/// A failed run, with what is needed to replay it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub nodes: usize,
    pub reason: String,
    pub recent: Vec<String>,
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
    let mut knobs = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed);
    let mut opts = SimOptions::new(nodes);
    opts.drop_percent = knobs.next_u64() % 10;
    opts.duplicate_percent = knobs.next_u64() % 5;
    opts.max_delay = 1 + knobs.next_u64() % 20;
    opts.max_fsync = knobs.next_u64() % 6;
    opts.max_append_bytes = [64, 512, 4096][(knobs.next_u64() % 3) as usize];
    let fault_every = FAULT_EVERY[(knobs.next_u64() % FAULT_EVERY.len() as u64) as usize];
    let mut cluster = Cluster::new(seed, opts);
    let fail = |c: &Cluster, reason: String| Failure { seed, nodes, reason, recent: c.recent_history().to_vec() };

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

    cluster.heal();
    cluster.opts.drop_percent = 0;
    for id in cluster.node_ids() {
        cluster.restart(id);
    }
    let acked = cluster.acked_commands();
    let live = cluster.run_until(LIVENESS_UNITS, |c| {
        !c.violations().is_empty() || (c.leader().is_some() && c.acked_commands() > acked)
    });
    if let Some(v) = cluster.violations().first() {
        return Err(fail(&cluster, format!("safety: {v}")));
    }
    if !live {
        let statuses = cluster.describe();
        return Err(fail(
            &cluster,
            format!("liveness: no command committed within {LIVENESS_UNITS} units after healing:\n{statuses}"),
        ));
    }
    cluster.clients_active = false;
    let converged = cluster.run_until(CONVERGENCE_UNITS, |c| !c.violations().is_empty() || converged(c));
    if let Some(v) = cluster.violations().first() {
        return Err(fail(&cluster, format!("safety: {v}")));
    }
    if !converged {
        let statuses = cluster.describe();
        return Err(fail(
            &cluster,
            format!("liveness: nodes did not converge within {CONVERGENCE_UNITS} units:\n{statuses}"),
        ));
    }
    let digests = cluster.digests();
    let first = digests.values().next().copied();
    if digests.values().any(|d| Some(*d) != first) {
        return Err(fail(&cluster, format!("state machines differ at the same applied index: {digests:?}")));
    }
    cluster.check_nothing_lost();
    if let Some(v) = cluster.violations().first() {
        return Err(fail(&cluster, format!("safety: {v}")));
    }
    Ok(RunReport { seed, nodes, faults, acked_commands: cluster.acked_commands(), time: cluster.now })
}

/// Every node is up and has applied the leader's commit index.
fn converged(c: &Cluster) -> bool {
    let Some(leader) = c.leader() else { return false };
    let commit = c.raw(leader).expect("leader is up").status().commit_index;
    c.node_ids()
        .iter()
        .all(|&id| c.raw(id).is_some_and(|r| r.status().commit_index == commit) && c.kv(id).applied_index() == commit)
}

fn inject_fault(c: &mut Cluster) {
    let ids = c.node_ids();
    let pick = |c: &mut Cluster, from: &[NodeId]| from[(c.rng().next_u64() % from.len() as u64) as usize];
    match c.rng().next_u64() % 7 {
        0 => {
            let up: Vec<NodeId> = ids.iter().copied().filter(|&id| c.is_up(id)).collect();
            if !up.is_empty() {
                let id = pick(c, &up);
                c.crash(id);
            }
        }
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
        _ => c.heal(),
    }
}
