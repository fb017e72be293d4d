//! The nemesis's faults: one at a time, each injected and healed.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use raftkv_client::{NodeId, NodeStatus};
use rand::RngExt;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use super::checks::Wipe;
use crate::TestCluster;
use crate::netns::Net;

/// SIGSTOP lasts this long: well over the election timeout (10 ticks of 50 ms, so
/// 0.5-1 s).
const PAUSE: Duration = Duration::from_secs(2);
/// How long a killed node stays down.
const DOWN: Duration = Duration::from_secs(1);
/// How long a partition holds: several election timeouts.
pub(crate) const PARTITION: Duration = Duration::from_secs(3);
/// The longest a fault lasts from injection to heal (a partition; a pause, a kill are
/// shorter), leader waits apart.
pub(crate) const LONGEST_FAULT: Duration = PARTITION;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `kill -9` of the leader, restarted after [`DOWN`].
    KillLeader,
    /// `kill -9` of a random node.
    KillRandom,
    /// SIGSTOP of the leader for [`PAUSE`], then SIGCONT.
    PauseLeader,
    /// SIGSTOP of a random node.
    PauseRandom,
    /// A follower killed and restarted with an empty data directory.
    WipeFollower,
    /// A random minority (1 or 2 nodes of 5) cut off from the majority, for
    /// [`PARTITION`].
    SplitMajority,
    /// The leader cut off from every other node.
    IsolateLeader,
    /// Two halves that share one node, which alone reaches both (`A B [C] D E`: A and
    /// B reach C; D and E reach C; A and B do not reach D and E).
    Bridge,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillRandom => "kill-random",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseRandom => "pause-random",
            Fault::WipeFollower => "wipe-follower",
            Fault::SplitMajority => "partition-majority-minority",
            Fault::IsolateLeader => "partition-isolated-leader",
            Fault::Bridge => "partition-bridge",
        }
    }

    fn is_partition(self) -> bool {
        matches!(self, Fault::SplitMajority | Fault::IsolateLeader | Fault::Bridge)
    }
}

/// The faults of the 3-node run, in the order the nemesis cycles through them.
pub const PROCESS_FAULTS: [Fault; 5] =
    [Fault::KillLeader, Fault::PauseRandom, Fault::WipeFollower, Fault::PauseLeader, Fault::KillRandom];

/// The faults of the partition run: each partition kind, then a process fault.
pub const ALL_FAULTS: [Fault; 8] = [
    Fault::IsolateLeader,
    Fault::KillLeader,
    Fault::SplitMajority,
    Fault::PauseRandom,
    Fault::Bridge,
    Fault::WipeFollower,
    Fault::PauseLeader,
    Fault::KillRandom,
];

/// One injected (or skipped) fault.
#[derive(Debug)]
pub struct Injected {
    pub fault: Fault,
    /// False if it could not be injected (e.g. a wipe with no leader to catch up).
    pub done: bool,
    /// For an isolated leader: whether the rest elected another leader meanwhile.
    pub new_leader: Option<bool>,
    pub what: String,
    /// When it was injected and when it was healed, in the history's nanoseconds (set
    /// by the run).
    pub started: u64,
    pub healed: u64,
    /// For a wipe: the node, and whether it could only catch up by a snapshot.
    pub wipe: Option<Wipe>,
}

/// Injects one fault and heals it.
pub(crate) async fn inject(cluster: &mut TestCluster, net: Option<&Net>, fault: Fault, rng: &mut SmallRng) -> Injected {
    let ids = cluster.ids();
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.ok();
    let random = ids[rng.random_range(0..ids.len())];
    let mut injected =
        Injected { fault, done: true, new_leader: None, what: String::new(), started: 0, healed: 0, wipe: None };
    if fault.is_partition() {
        let net = net.expect("partitions need a network of namespaces");
        injected.what = partition(cluster, net, fault, leader.as_ref(), rng, &mut injected.new_leader).await;
        return injected;
    }
    let (target, what): (NodeId, &str) = match (fault, &leader) {
        (Fault::KillLeader | Fault::PauseLeader, Some(l)) => (l.id, "the leader"),
        (Fault::WipeFollower, Some(l)) => {
            let followers: Vec<NodeId> = ids.iter().copied().filter(|id| *id != l.id).collect();
            let target = followers[rng.random_range(0..followers.len())];
            // The fault model: a minority of voters lose their disks at a time. More is
            // a lost quorum, which no protocol survives; so a node still recovering
            // (or not answering, which may be one) counts as a lost disk already.
            let (lost, min_snapshot) = lost_disks(cluster, target).await;
            if lost.len() + 1 > (ids.len() - 1) / 2 {
                injected.done = false;
                injected.what = format!("wipe of node {target} skipped: nodes {lost:?} may still be recovering");
                return injected;
            }
            // Each node keeps `compaction_slack` entries behind its snapshot (the
            // server's raft default): beyond that, entry 1 is gone from every log.
            let slack = raftkv_raft::Config::new(target).compaction_slack;
            injected.wipe = Some(Wipe { node: target, needs_snapshot: min_snapshot > slack });
            (target, "a follower")
        }
        (Fault::WipeFollower, None) => (random, "a random node, no leader known"),
        _ => (random, "a random node"),
    };
    injected.what = match fault {
        Fault::KillLeader | Fault::KillRandom => {
            cluster.node_mut(target).expect("node").kill().await.expect("kill -9");
            tokio::time::sleep(DOWN).await;
            cluster.node_mut(target).expect("node").restart().await.expect("restart");
            format!("kill -9 node {target} ({what}), restarted after {DOWN:?}")
        }
        Fault::PauseLeader | Fault::PauseRandom => {
            assert!(cluster.signal(target, Signal::SIGSTOP), "SIGSTOP node {target}");
            tokio::time::sleep(PAUSE).await;
            assert!(cluster.signal(target, Signal::SIGCONT), "SIGCONT node {target}");
            format!("SIGSTOP node {target} ({what}) for {PAUSE:?}, then SIGCONT")
        }
        Fault::WipeFollower => {
            // No waiting for it to catch up: it recovers (no votes, no quorum counted)
            // while the next faults come. `run` requires it recovered once all heal.
            cluster.restart_empty(target).await;
            format!("restart node {target} ({what}) with an empty data dir")
        }
        Fault::SplitMajority | Fault::IsolateLeader | Fault::Bridge => unreachable!("handled above"),
    };
    injected
}

/// The nodes other than `except` that are recovering from lost state, or do not answer
/// (a node down or paused may be one); and the lowest snapshot index of the others
/// (0 if any is lost).
async fn lost_disks(cluster: &TestCluster, except: NodeId) -> (Vec<NodeId>, u64) {
    let mut lost = Vec::new();
    let mut min_snapshot = u64::MAX;
    for id in cluster.ids().into_iter().filter(|id| *id != except) {
        let (client, addr) = (cluster.node_client(id), cluster.addr(id));
        let status = tokio::time::timeout(Duration::from_secs(1), client.status(&addr)).await;
        match status {
            Ok(Ok(s)) if !s.recovering => min_snapshot = min_snapshot.min(s.snapshot_index),
            _ => lost.push(id),
        }
    }
    let min_snapshot = if lost.is_empty() { min_snapshot } else { 0 };
    (lost, min_snapshot)
}

/// Cuts the network as `fault` says, holds it for [`PARTITION`], heals it.
async fn partition(
    cluster: &TestCluster,
    net: &Net,
    fault: Fault,
    leader: Option<&NodeStatus>,
    rng: &mut SmallRng,
    new_leader: &mut Option<bool>,
) -> String {
    let mut order = cluster.ids();
    order.shuffle(rng);
    let n = order.len();
    let (a, b, what): (Vec<NodeId>, Vec<NodeId>, String) = match (fault, leader) {
        (Fault::IsolateLeader, Some(l)) => {
            let rest = order.iter().copied().filter(|id| *id != l.id).collect();
            (vec![l.id], rest, format!("leader {} isolated", l.id))
        }
        (Fault::IsolateLeader, None) => {
            (order[..1].to_vec(), order[1..].to_vec(), "no leader known: a random node isolated".into())
        }
        (Fault::SplitMajority, _) => {
            let minority = 1 + rng.random_range(0..(n - 1) / 2);
            (order[..minority].to_vec(), order[minority..].to_vec(), "minority / majority".into())
        }
        (Fault::Bridge, _) => {
            // order[n / 2] is the bridge: in neither cut set, it reaches both halves.
            let half = n / 2;
            (order[..half].to_vec(), order[half + 1..].to_vec(), format!("bridge node {}", order[half]))
        }
        _ => unreachable!("not a partition: {fault:?}"),
    };
    let started = Instant::now();
    net.cut(&a, &b).await.unwrap_or_else(|e| panic!("cut {a:?} / {b:?}: {e}"));
    let mut elected = String::new();
    if let (Fault::IsolateLeader, Some(l)) = (fault, leader) {
        // The partition is real if the others elect a leader of their own.
        let other = raftkv_client::local::poll_until(PARTITION, "a new leader", || async {
            match cluster.wait_for_leader(Duration::from_millis(500)).await {
                Ok(s) if s.id != l.id => Ok(s),
                Ok(s) => Err(format!("node {} still leads in term {}", s.id, s.term)),
                Err(e) => Err(e),
            }
        })
        .await;
        *new_leader = Some(other.is_ok());
        elected = match other {
            Ok(s) => format!("; node {} elected in term {} after {:.1?}", s.id, s.term, started.elapsed()),
            Err(_) => format!("; no other leader within {PARTITION:?}"),
        };
    }
    tokio::time::sleep(PARTITION.saturating_sub(started.elapsed())).await;
    net.heal().await.unwrap_or_else(|e| panic!("heal: {e}"));
    format!("partition {a:?} | {b:?} ({what}) for {PARTITION:?}{elected}, healed")
}

/// Every node running, resumed and connected; a leader elected.
pub(crate) async fn heal(cluster: &mut TestCluster, net: Option<&Net>) {
    if let Some(net) = net {
        net.heal().await.unwrap_or_else(|e| panic!("heal: {e}"));
    }
    for id in cluster.ids() {
        cluster.signal(id, Signal::SIGCONT);
        let node = cluster.node_mut(id).expect("node");
        if !node.is_running() {
            node.restart().await.expect("restart");
        }
    }
    cluster.leader().await;
}
