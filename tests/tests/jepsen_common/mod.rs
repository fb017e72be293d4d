//! The Jepsen-style run shared by `jepsen.rs` (3 nodes on 127.0.0.1) and
//! `jepsen_partition.rs` (5 nodes in network namespaces): the workload of concurrent
//! clients recording a history, a unique-key writer, the nemesis, the checks and the
//! report.
//!
//! Every operation is recorded with its wall-clock invoke and complete times and its
//! outcome (ok, definitely failed, or unknown) and the history is checked for
//! linearizability by `raftkv-linearizability`. Beside it, one writer puts unique keys
//! and, at the end, every acknowledged one must be present with its value. The nemesis
//! injects one fault at a time, heals it, and leaves the cluster healthy for a moment
//! before the next one.
//!
//! `RAFTKV_JEPSEN_SECS` sets the seconds of load and `RAFTKV_JEPSEN_SEED` the seed of
//! the clients' and the nemesis's choices (timing still differs between runs).

// Each of the two test binaries uses a different subset of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::netns::Net;
use crate::common::{Load, LoadResult, Recorder, TestCluster, scan_map, text};
use nix::sys::signal::Signal;
use raftkv_client::{Client, ClientError, ClientOptions, NodeId, NodeStatus};
use raftkv_linearizability::{Call, History, Options, Outcome, Report as CheckReport, Ret, Verdict, check};

const PREFIX: &str = "jepsen/k";
const KEYS: u64 = 5;
const CLIENTS: u64 = 5;
/// The unique-key writer's keys: `jepsen-acked/w0/<n:07>`.
const ACKED_PREFIX: &str = "jepsen-acked";
/// Its puts are bounded (and its keys keep 7 digits, so that blocks of 1,000 can be
/// scanned by prefix): at about 100 puts/s, a day of load.
const ACKED_MAX: usize = 10_000_000;
/// SIGSTOP lasts this long: well over the election timeout (10 ticks of 50 ms, so
/// 0.5-1 s).
const PAUSE: Duration = Duration::from_secs(2);
/// How long, once every fault is healed, a node restarted with an empty data dir may
/// take to end its recovery (its leader's marker commits) and apply what the leader had
/// committed (it gets a snapshot, then the log after it).
const WIPE_CATCH_UP: Duration = Duration::from_secs(60);
/// How long a killed node stays down.
const DOWN: Duration = Duration::from_secs(1);
/// How long a partition holds: several election timeouts.
const PARTITION: Duration = Duration::from_secs(3);
/// What a server logs when it installs a snapshot from the leader.
const SNAPSHOT_INSTALLED: &str = "installed a snapshot from the leader";
/// Healthy time between two faults.
const QUIET: Duration = Duration::from_millis(800);

/// A tiny deterministic generator (xorshift64*), seeded per client.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
    /// `items` in a random order.
    fn shuffled<T: Copy>(&mut self, items: &[T]) -> Vec<T> {
        let mut v = items.to_vec();
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
        v
    }
}

/// Seconds of load (`RAFTKV_JEPSEN_SECS`, else `default`) and the seed
/// (`RAFTKV_JEPSEN_SEED`, else the time).
pub fn secs_and_seed(default: u64) -> (u64, u64) {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let secs = var("RAFTKV_JEPSEN_SECS").unwrap_or(default);
    let seed = var("RAFTKV_JEPSEN_SEED")
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    (secs, seed)
}

/// Clients 0 and 1 are impatient (1 s per operation, less than a failover takes), so
/// their operations often end with an unknown outcome; the others wait up to 3 s.
fn client_options(p: u64) -> ClientOptions {
    let (timeout, rpc) = if p < 2 { (1_000, 300) } else { (3_000, 800) };
    ClientOptions {
        timeout: Duration::from_millis(timeout),
        rpc_timeout: Duration::from_millis(rpc),
        connect_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// One client: get (40%), put (30%), cas (30%) on random keys until `until`. A cas
/// expects the value this client last saw on that key. Every put and cas value is
/// unique. Returns the definite failures it saw (there must be none).
async fn run_client(p: u64, endpoints: Vec<String>, rec: Arc<Recorder>, until: Instant, seed: u64) -> Vec<String> {
    let client = Client::new(endpoints, client_options(p)).expect("client");
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let key = format!("{PREFIX}{}", rng.below(KEYS));
        match rng.below(10) {
            0..=3 => {
                let id = rec.invoke(p, &key, Call::Get);
                match client.get(key.clone(), false).await {
                    Ok(v) => {
                        let v = v.map(|b| text(&b));
                        rec.complete(id, Ret::Value(v.clone()));
                        seen.insert(key, v);
                    }
                    // A read that timed out changed nothing; it stays unknown (ignored).
                    Err(ClientError::NoLeader(_)) => {}
                    Err(e) => {
                        rec.fail(id);
                        failures.push(format!("get {key}: {e}"));
                    }
                }
            }
            r => {
                let is_put = r <= 6;
                let (id, res) = if is_put {
                    let value = format!("p{p}-{n}");
                    let id = rec.invoke(p, &key, Call::Put { value: value.clone() });
                    (id, client.put(key.clone(), value).await)
                } else {
                    let expected = seen.get(&key).cloned().flatten();
                    let new = format!("c{p}-{n}");
                    let call = Call::Cas { expected: expected.clone(), new: new.clone() };
                    let id = rec.invoke(p, &key, call);
                    (id, client.cas(key.clone(), expected.map(Into::into), new).await)
                };
                match res {
                    Ok(o) => match o.cas_result() {
                        None => rec.complete(id, Ret::Ok),
                        Some((true, _)) => rec.complete(id, Ret::Ok),
                        Some((false, current)) => {
                            let current = current.map(|b| text(&b));
                            rec.complete(id, Ret::CasFailed { current: current.clone() });
                            seen.insert(key, current);
                        }
                    },
                    Err(ClientError::Rejected(e)) => {
                        rec.fail(id);
                        failures.push(format!("write {key}: rejected: {e}"));
                    }
                    // Unknown, or anything else after the write may have been sent:
                    // it may or may not have been applied (the default outcome).
                    Err(_) => {}
                }
            }
        }
    }
    failures
}

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
}

/// Injects one fault and heals it.
async fn inject(cluster: &mut TestCluster, net: Option<&Net>, fault: Fault, rng: &mut Rng) -> Injected {
    let ids = cluster.ids();
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.ok();
    let random = ids[rng.below(ids.len() as u64) as usize];
    let mut injected = Injected { fault, done: true, new_leader: None, what: String::new() };
    if fault.is_partition() {
        let net = net.expect("partitions need a network of namespaces");
        injected.what = partition(cluster, net, fault, leader.as_ref(), rng, &mut injected.new_leader).await;
        return injected;
    }
    let (target, what): (NodeId, &str) = match (fault, &leader) {
        (Fault::KillLeader | Fault::PauseLeader, Some(l)) => (l.id, "the leader"),
        (Fault::WipeFollower, Some(l)) => {
            let followers: Vec<NodeId> = ids.iter().copied().filter(|id| *id != l.id).collect();
            let target = followers[rng.below(followers.len() as u64) as usize];
            // The fault model: a minority of voters lose their disks at a time. More is
            // a lost quorum, which no protocol survives; so a node still recovering
            // (or not answering, which may be one) counts as a lost disk already.
            let lost = lost_disks(cluster, target).await;
            if lost.len() + 1 > (ids.len() - 1) / 2 {
                injected.done = false;
                injected.what = format!("wipe of node {target} skipped: nodes {lost:?} may still be recovering");
                return injected;
            }
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
/// (a node down or paused may be one).
async fn lost_disks(cluster: &TestCluster, except: NodeId) -> Vec<NodeId> {
    let mut lost = Vec::new();
    for id in cluster.ids().into_iter().filter(|id| *id != except) {
        let (client, addr) = (cluster.node_client(id), cluster.addr(id));
        let status = tokio::time::timeout(Duration::from_secs(1), client.status(&addr)).await;
        if !matches!(status, Ok(Ok(s)) if !s.recovering) {
            lost.push(id);
        }
    }
    lost
}

/// Cuts the network as `fault` says, holds it for [`PARTITION`], heals it.
async fn partition(
    cluster: &TestCluster,
    net: &Net,
    fault: Fault,
    leader: Option<&NodeStatus>,
    rng: &mut Rng,
    new_leader: &mut Option<bool>,
) -> String {
    let order = rng.shuffled(&cluster.ids());
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
            let minority = 1 + rng.below(((n - 1) / 2) as u64) as usize;
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

/// Figures of one history.
#[derive(Debug, Default)]
pub struct Figures {
    pub ops: usize,
    pub ok: usize,
    pub unknown_writes: usize,
    pub unknown_reads: usize,
    pub failed: usize,
    pub cas_swapped: usize,
    pub cas_not_swapped: usize,
}

fn figures(h: &History) -> Figures {
    let mut f = Figures { ops: h.len(), ..Figures::default() };
    for op in h.ops() {
        match (&op.call, &op.outcome) {
            (Call::Get, Outcome::Unknown) => f.unknown_reads += 1,
            (_, Outcome::Unknown) => f.unknown_writes += 1,
            (_, Outcome::Failed { .. }) => f.failed += 1,
            (Call::Cas { .. }, Outcome::Done { ret: Ret::Ok, .. }) => {
                f.ok += 1;
                f.cas_swapped += 1;
            }
            (Call::Cas { .. }, Outcome::Done { .. }) => {
                f.ok += 1;
                f.cas_not_swapped += 1;
            }
            (_, Outcome::Done { .. }) => f.ok += 1,
        }
    }
    f
}

/// What to run.
pub struct Setup<'a> {
    /// One line saying what the cluster is.
    pub title: String,
    /// The network of namespaces, for partitions.
    pub net: Option<&'a Net>,
    /// The faults, cycled through in order.
    pub faults: &'a [Fault],
    pub secs: u64,
    pub seed: u64,
}

/// The outcome of a run.
pub struct Report {
    pub title: String,
    pub secs: u64,
    pub seed: u64,
    pub history: History,
    pub figures: Figures,
    pub check: CheckReport,
    pub check_time: Duration,
    pub faults: Vec<Injected>,
    /// Definite failures the clients saw.
    pub failures: Vec<String>,
    /// The unique-key writer's puts.
    pub written: LoadResult,
    /// Acknowledged unique-key puts missing or changed at the end.
    pub lost: Vec<String>,
    /// Unique keys holding a value no put wrote.
    pub invented: Vec<String>,
    /// Unknown-outcome unique-key puts found applied.
    pub unknown_applied: usize,
    pub snapshots_installed: usize,
    pub total: Duration,
}

/// Runs the clients, the unique-key writer and the nemesis for `setup.secs`, heals
/// everything, reads every key and checks the history.
pub async fn run(cluster: &mut TestCluster, setup: Setup<'_>) -> Report {
    let Setup { title, net, faults: cycle, secs, seed } = setup;
    eprintln!("jepsen: {title}; {secs} s of load, seed {seed}");
    let started = Instant::now();
    cluster.leader().await;

    let rec = Arc::new(Recorder::new());
    let until = Instant::now() + Duration::from_secs(secs);
    let mut clients = tokio::task::JoinSet::new();
    for p in 0..CLIENTS {
        clients.spawn(run_client(p, cluster.endpoints(), rec.clone(), until, seed.wrapping_add(p)));
    }
    let writer =
        Load::start(cluster.endpoints(), ACKED_PREFIX, 1, ACKED_MAX, client_options(2), Duration::from_secs(secs));

    // The nemesis: one fault at a time, then a healthy spell; no new fault in the last
    // 3 s (the loop is bounded by `until` and by the number of faults).
    let mut rng = Rng::new(seed ^ 0xFA17);
    let mut faults: Vec<Injected> = Vec::new();
    tokio::time::sleep(QUIET).await;
    for fault in cycle.iter().cycle().take(100_000) {
        if Instant::now() + Duration::from_secs(3) >= until {
            break;
        }
        let at = rec.secs();
        let mut injected = inject(cluster, net, *fault, &mut rng).await;
        injected.what = format!("{at:8.3}s .. {:8.3}s: {}", rec.secs(), injected.what);
        eprintln!("nemesis {}", injected.what);
        faults.push(injected);
        let _ = cluster.wait_for_leader(Duration::from_secs(10)).await;
        tokio::time::sleep(QUIET).await;
    }

    heal(cluster, net).await;
    let mut failures = Vec::new();
    // Every wiped node ends its recovery and catches up once the faults are healed.
    let target = cluster.leader().await.commit_index;
    for id in cluster.ids() {
        let recovered = raftkv_client::local::poll_until(WIPE_CATCH_UP, "recovery and catch-up", || async {
            match cluster.node_client(id).status(&cluster.addr(id)).await {
                Ok(s) if !s.recovering && s.applied_index >= target => Ok(()),
                Ok(s) => Err(format!("recovering={} applied={} (target {target})", s.recovering, s.applied_index)),
                Err(e) => Err(e.to_string()),
            }
        });
        if let Err(e) = recovered.await {
            failures.push(format!("node {id} did not recover after the faults healed: {e}"));
        }
    }
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(r) = clients.join_next().await {
            failures.extend(r.expect("a client task panicked"));
        }
    })
    .await;
    assert!(joined.is_ok(), "the clients did not stop within 20 s of the end");
    let written = writer.join(Duration::from_secs(20)).await;
    failures.extend(written.errors.iter().cloned());

    // Final linearizable reads of every key (part of the history too).
    let reader = cluster.client();
    for k in 0..KEYS {
        let key = format!("{PREFIX}{k}");
        let id = rec.invoke(CLIENTS, &key, Call::Get);
        let v = reader.get(key.clone(), false).await.unwrap_or_else(|e| panic!("final get {key}: {e}"));
        rec.complete(id, Ret::Value(v.map(|b| text(&b))));
    }
    let stored = acked_keys(&reader, &written).await;
    let lost: Vec<String> = written.lost(&stored).into_iter().cloned().collect();
    let invented: Vec<String> = written.invented(&stored).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let unknown_applied = written.unknown.keys().filter(|k| stored.contains_key(*k)).count();

    let history = rec.lock().clone();
    let check_started = Instant::now();
    let check = check(&history, &Options::default()).expect("a well-formed history");
    let check_time = check_started.elapsed();
    let snapshots_installed = cluster
        .nodes()
        .iter()
        .map(|n| std::fs::read_to_string(n.log_path()).unwrap_or_default().matches(SNAPSHOT_INSTALLED).count())
        .sum();
    Report {
        title,
        secs,
        seed,
        figures: figures(&history),
        history,
        check,
        check_time,
        faults,
        failures,
        written,
        lost,
        invented,
        unknown_applied,
        snapshots_installed,
        total: started.elapsed(),
    }
}

/// Every node running, resumed and connected; a leader elected.
async fn heal(cluster: &mut TestCluster, net: Option<&Net>) {
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

/// The unique-key writer's keys as stored, read by linearizable scans of blocks of
/// 1,000 keys (`<prefix>/w0/0001` holds keys 0001000..0001999), so no scan hits the limit.
async fn acked_keys(client: &Client, written: &LoadResult) -> BTreeMap<String, String> {
    // Keys are numbered from 0 in order: the highest one written bounds the blocks.
    let highest = written
        .acked
        .keys()
        .chain(written.unknown.keys())
        .filter_map(|k| k.rsplit('/').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    let mut stored = BTreeMap::new();
    for block in 0..=highest / 1_000 {
        stored.extend(scan_map(client, &format!("{ACKED_PREFIX}/w0/{block:04}"), false).await);
    }
    stored
}

impl Report {
    pub fn violations(&self) -> usize {
        self.check.violations().count()
    }

    /// Faults injected, by kind (skipped ones apart).
    pub fn faults_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut by_kind = BTreeMap::new();
        for f in self.faults.iter().filter(|f| f.done) {
            *by_kind.entry(f.fault.name()).or_default() += 1;
        }
        by_kind
    }

    /// Prints the checker's report, the faults and one summary block.
    pub fn print(&self) {
        eprintln!("{}", self.check);
        let per_key: Vec<String> = self.check.keys.iter().map(|k| format!("{}: {} ops", k.key, k.ops)).collect();
        eprintln!("per key: {}", per_key.join(", "));
        eprintln!("faults ({}):", self.faults.len());
        for f in &self.faults {
            eprintln!("  {}", f.what);
        }
        let f = &self.figures;
        let injected: usize = self.faults_by_kind().values().sum();
        let kinds: Vec<String> = self.faults_by_kind().iter().map(|(k, n)| format!("{k} {n}")).collect();
        let skipped = self.faults.len() - injected;
        let isolations: Vec<bool> = self.faults.iter().filter_map(|f| f.new_leader).collect();
        let w = &self.written;
        let bar = "=".repeat(78);
        eprintln!("{bar}\nJEPSEN REPORT: {}", self.title);
        eprintln!("  load                  {} s, seed {}; whole run {:.1?}", self.secs, self.seed, self.total);
        eprintln!(
            "  ops                   {} (ok {}: cas swapped {}, cas not swapped {}; failed {})",
            f.ops, f.ok, f.cas_swapped, f.cas_not_swapped, f.failed
        );
        eprintln!("  unknown outcome       {} writes, {} timed-out reads", f.unknown_writes, f.unknown_reads);
        eprintln!("  faults injected       {injected} ({}); skipped {skipped}", kinds.join(", "));
        if !isolations.is_empty() {
            let elected = isolations.iter().filter(|e| **e).count();
            eprintln!("  isolated leaders      {elected} of {} replaced by a leader of the others", isolations.len());
        }
        eprintln!("  snapshots installed   {}", self.snapshots_installed);
        eprintln!(
            "  violations            {} (verdict {:?}; checked in {:.2?}, {} steps)",
            self.violations(),
            self.check.verdict(),
            self.check_time,
            self.check.steps()
        );
        eprintln!(
            "  unique-key puts       {} acknowledged, {} unknown ({} applied)",
            w.acked.len(),
            w.unknown.len(),
            self.unknown_applied
        );
        eprintln!("  lost acked writes     {} (invented values: {})", self.lost.len(), self.invented.len());
        eprintln!("  client failures       {}", self.failures.len());
        eprintln!("{bar}");
    }

    /// The run's verdict: linearizable, nothing lost or invented, no definite failure,
    /// progress made, faults injected.
    pub fn assert_sound(&self) {
        assert_eq!(self.check.verdict(), Verdict::Linearizable, "{}", self.check);
        assert!(self.lost.is_empty(), "{} acknowledged puts lost or changed: {:?}", self.lost.len(), self.lost);
        assert!(self.invented.is_empty(), "values never written: {:?}", self.invented);
        assert!(self.failures.is_empty(), "definite client failures: {:?}", self.failures);
        assert!(self.figures.ok >= 100, "too little progress: {:?}", self.figures);
        assert!(!self.written.acked.is_empty(), "the unique-key writer got no put acknowledged");
        let injected: usize = self.faults_by_kind().values().sum();
        assert!(injected >= 3, "too few faults: {:?}", self.faults);
    }

    /// The same pipeline catches bad histories made from this one.
    pub fn assert_checker_catches_planted_bugs(&self) {
        let (bad, victim) = corrupt(&self.history).expect("some acknowledged put was read");
        let bad_report = check(&bad, &Options::default()).expect("well-formed");
        eprintln!("with operation #{victim}'s value altered:\n{bad_report}");
        assert_eq!(bad_report.verdict(), Verdict::Violation);
        assert_eq!(bad_report.violations().count(), 1);
        let (bad, victim) = make_stale(&self.history).expect("a late get after two puts to its key");
        let bad_report = check(&bad, &Options::default()).expect("well-formed");
        eprintln!("with operation #{victim} made a stale read:\n{bad_report}");
        assert_eq!(bad_report.verdict(), Verdict::Violation);
        assert!(bad_report.violations().all(|k| k.witness.iter().any(|o| o.id == victim)), "{bad_report}");
    }
}

impl Report {
    /// The lost-write check catches a store that lacks an acknowledged put, holds one
    /// with another value, or holds a value nobody wrote (made from this run's puts).
    pub fn assert_lost_write_check_catches_planted_bugs(&self) {
        let w = &self.written;
        let mut keys = w.acked.keys();
        let (Some(dropped), Some(altered)) = (keys.next(), keys.next()) else {
            panic!("fewer than 2 acknowledged unique-key puts: {}", w.acked.len())
        };
        let mut stored = w.acked.clone();
        stored.remove(dropped);
        stored.insert(altered.clone(), "altered".into());
        stored.insert(format!("{ACKED_PREFIX}/w0/never"), "invented".into());
        assert_eq!(w.lost(&stored), vec![dropped, altered]);
        let invented: Vec<&String> = w.invented(&stored).into_iter().map(|(k, _)| k).collect();
        assert_eq!(invented.len(), 2, "{invented:?}");
        assert!(w.lost(&w.acked).is_empty() && w.invented(&w.acked).is_empty());
    }
}

/// Alters the value of one acknowledged put that a later get observed: the checker
/// must then find that get reading a value nobody wrote.
fn corrupt(h: &History) -> Option<(History, usize)> {
    let reads: BTreeMap<&str, u64> = h
        .ops()
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Done { ret: Ret::Value(Some(v)), .. } => Some((v.as_str(), o.invoke)),
            _ => None,
        })
        .collect();
    let victim = h.ops().iter().find(|o| match (&o.call, &o.outcome) {
        (Call::Put { value }, Outcome::Done { ret: Ret::Ok, .. }) => reads.contains_key(value.as_str()),
        _ => false,
    })?;
    let mut bad = h.clone();
    if let Call::Put { value } = &mut bad.ops_mut()[victim.id].call {
        value.push_str("-altered");
    }
    Some((bad, victim.id))
}

/// Makes one late get return an acknowledged put's value although a later put to the
/// same key had completed before that get was invoked: a stale read.
fn make_stale(h: &History) -> Option<(History, usize)> {
    let acked_put = |o: &&raftkv_linearizability::Operation| {
        matches!((&o.call, &o.outcome), (Call::Put { .. }, Outcome::Done { ret: Ret::Ok, .. }))
    };
    let get = h.ops().iter().rev().find(|o| matches!(o.outcome, Outcome::Done { ret: Ret::Value(_), .. }))?;
    let newer = h
        .ops()
        .iter()
        .rev()
        .filter(acked_put)
        .find(|p| p.key == get.key && p.complete().is_some_and(|c| c < get.invoke))?;
    let older = h
        .ops()
        .iter()
        .filter(acked_put)
        .find(|p| p.key == get.key && p.complete().is_some_and(|c| c < newer.invoke))?;
    let Call::Put { value } = &older.call else { return None };
    let mut bad = h.clone();
    bad.ops_mut()[get.id].outcome = Outcome::Done { at: get.complete()?, ret: Ret::Value(Some(value.clone())) };
    Some((bad, get.id))
}
