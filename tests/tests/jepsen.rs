//! A Jepsen-style fault test: concurrent clients run get / put / cas on a few keys of a
//! 3-node cluster of real server processes while a nemesis kills (`kill -9`) and
//! restarts the leader or a random node, pauses one (SIGSTOP for longer than an
//! election timeout, then SIGCONT), and restarts a follower with an empty data
//! directory. Every operation is recorded with its wall-clock invoke and complete
//! times and its outcome (ok, definitely failed, or unknown), and the history is then
//! checked for linearizability by `raftkv-linearizability`: there must be no violation.
//!
//! The workload runs for `RAFTKV_JEPSEN_SECS` seconds (default 40; the whole test takes
//! about 45-60 s). Set it higher for a long run:
//!
//! ```sh
//! RAFTKV_JEPSEN_SECS=600 cargo test -p raftkv-tests --test jepsen -- --nocapture
//! ```
//!
//! Not injected here: network partitions (they need network namespaces or iptables,
//! i.e. root), disk faults, clock skew.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestCluster, text};
use nix::sys::signal::Signal;
use raftkv_client::{Client, ClientError, ClientOptions, NodeId};
use raftkv_linearizability::{Call, History, Options, Outcome, Ret, Verdict, check};

const PREFIX: &str = "jepsen/k";
const KEYS: u64 = 5;
const CLIENTS: u64 = 5;
const DEFAULT_SECS: u64 = 40;
/// SIGSTOP lasts this long: well over the election timeout (10 ticks of 50 ms, so
/// 0.5-1 s).
const PAUSE: Duration = Duration::from_secs(2);
/// How long a killed node stays down.
const DOWN: Duration = Duration::from_secs(1);
/// What a server logs when it installs a snapshot from the leader.
const SNAPSHOT_INSTALLED: &str = "installed a snapshot from the leader";
/// Healthy time between two faults.
const QUIET: Duration = Duration::from_millis(800);

/// A tiny deterministic generator (xorshift64*), seeded per client.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// The shared history, with times in nanoseconds since `base`.
struct Recorder {
    base: Instant,
    history: Mutex<History>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn invoke(&self, process: u64, key: &str, call: Call) -> usize {
        let mut h = self.lock();
        h.invoke(process, key, call, self.now())
    }
    fn complete(&self, id: usize, ret: Ret) {
        let at = self.now();
        self.lock().complete(id, ret, at);
    }
    fn fail(&self, id: usize) {
        let at = self.now();
        self.lock().fail(id, at);
    }
    fn secs(&self) -> f64 {
        self.base.elapsed().as_secs_f64()
    }
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

/// Definite failures a client saw (they must be rare: a rejected request).
#[derive(Default)]
struct ClientStats {
    failures: Vec<String>,
}

/// One client: get (40%), put (30%), cas (30%) on random keys until `until`. A cas
/// expects the value this client last saw on that key. Every put and cas value is
/// unique.
async fn run_client(p: u64, endpoints: Vec<String>, rec: Arc<Recorder>, until: Instant, seed: u64) -> ClientStats {
    let client = Client::new(endpoints, client_options(p)).expect("client");
    let mut rng = Rng::new(seed);
    let mut stats = ClientStats::default();
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
                        stats.failures.push(format!("get {key}: {e}"));
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
                        stats.failures.push(format!("write {key}: rejected: {e}"));
                    }
                    // Unknown, or anything else after the write may have been sent:
                    // it may or may not have been applied (the default outcome).
                    Err(_) => {}
                }
            }
        }
    }
    stats
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    PauseLeader,
    KillRandom,
    PauseRandom,
    WipeFollower,
}

const FAULTS: [Fault; 5] =
    [Fault::KillLeader, Fault::PauseRandom, Fault::WipeFollower, Fault::PauseLeader, Fault::KillRandom];

/// Injects one fault and heals it; returns what was done.
async fn inject(cluster: &mut TestCluster, fault: Fault, rng: &mut Rng) -> String {
    let ids = cluster.ids();
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.ok();
    let random = ids[rng.below(ids.len() as u64) as usize];
    let (target, what): (NodeId, &str) = match (fault, &leader) {
        (Fault::KillLeader | Fault::PauseLeader, Some(l)) => (l.id, "the leader"),
        (Fault::WipeFollower, Some(l)) => {
            let followers: Vec<NodeId> = ids.iter().copied().filter(|id| *id != l.id).collect();
            (followers[rng.below(followers.len() as u64) as usize], "a follower")
        }
        // No leader known: a random node (never wipe without a leader to catch it up).
        (Fault::WipeFollower, None) => return "no leader: wipe skipped".into(),
        _ => (random, "a random node"),
    };
    match fault {
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
            cluster.restart_empty(target).await;
            // A node restarted empty has forgotten its log and vote: until it has caught
            // up, the cluster does not tolerate another failure (a majority of it and a
            // lagging node could lose committed entries), so the nemesis waits.
            let caught_up = match cluster.wait_for_leader(Duration::from_secs(10)).await {
                Ok(l) => cluster.wait_applied(target, l.commit_index, Duration::from_secs(20)).await.is_ok(),
                Err(_) => false,
            };
            format!("restart node {target} ({what}) with an empty data dir; caught up: {caught_up}")
        }
    }
}

/// Figures of one run.
#[derive(Debug, Default)]
struct Figures {
    ops: usize,
    ok: usize,
    unknown_writes: usize,
    unknown_reads: usize,
    failed: usize,
    cas_swapped: usize,
    cas_not_swapped: usize,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_crashes_pauses_and_wipes() {
    let secs: u64 = std::env::var("RAFTKV_JEPSEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SECS);
    let seed: u64 = std::env::var("RAFTKV_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    eprintln!("jepsen: {secs} s of load, seed {seed}");
    let started = Instant::now();
    // Frequent snapshots: a node restarted empty is caught up by a snapshot.
    let mut cluster = TestCluster::start(&["--snapshot-entries", "1000"]);
    cluster.leader().await;

    let rec = Arc::new(Recorder { base: Instant::now(), history: Mutex::new(History::new()) });
    let until = Instant::now() + Duration::from_secs(secs);
    let mut clients = tokio::task::JoinSet::new();
    for p in 0..CLIENTS {
        clients.spawn(run_client(p, cluster.endpoints(), rec.clone(), until, seed.wrapping_add(p)));
    }

    // The nemesis: one fault at a time, then a healthy spell; no new fault in the last
    // 3 s (the loop is bounded by `until` and by the number of faults).
    let mut rng = Rng::new(seed ^ 0xFA17);
    let mut faults: Vec<String> = Vec::new();
    tokio::time::sleep(QUIET).await;
    for fault in FAULTS.iter().cycle().take(1_000) {
        if Instant::now() + Duration::from_secs(3) >= until {
            break;
        }
        let at = rec.secs();
        let done = inject(&mut cluster, *fault, &mut rng).await;
        eprintln!("nemesis {at:7.3}s .. {:7.3}s: {done}", rec.secs());
        faults.push(format!("{at:.3}s {done}"));
        let _ = cluster.wait_for_leader(Duration::from_secs(10)).await;
        tokio::time::sleep(QUIET).await;
    }

    // Heal: every node running and resumed, a leader elected.
    for id in cluster.ids() {
        cluster.signal(id, Signal::SIGCONT);
        let node = cluster.node_mut(id).expect("node");
        if !node.is_running() {
            node.restart().await.expect("restart");
        }
    }
    cluster.leader().await;
    let mut failures = Vec::new();
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(r) = clients.join_next().await {
            failures.extend(r.expect("a client task panicked").failures);
        }
    })
    .await;
    assert!(joined.is_ok(), "the clients did not stop within 20 s of the end");

    // Final linearizable reads of every key (part of the history too).
    let reader = cluster.client();
    for k in 0..KEYS {
        let key = format!("{PREFIX}{k}");
        let id = rec.invoke(CLIENTS, &key, Call::Get);
        let v = reader.get(key.clone(), false).await.unwrap_or_else(|e| panic!("final get {key}: {e}"));
        rec.complete(id, Ret::Value(v.map(|b| text(&b))));
    }

    let history = rec.lock().clone();
    let f = figures(&history);
    let check_started = Instant::now();
    let report = check(&history, &Options::default()).expect("a well-formed history");
    let check_time = check_started.elapsed();
    eprintln!("{report}");
    let per_key: Vec<String> = report.keys.iter().map(|k| format!("{}: {} ops", k.key, k.ops)).collect();
    eprintln!("per key: {}", per_key.join(", "));
    eprintln!("faults injected ({}):", faults.len());
    for fault in &faults {
        eprintln!("  {fault}");
    }
    let violations = report.violations().count();
    let snapshots_installed: usize = cluster
        .nodes()
        .iter()
        .map(|n| std::fs::read_to_string(n.log_path()).unwrap_or_default().matches(SNAPSHOT_INSTALLED).count())
        .sum();
    eprintln!(
        "JEPSEN SUMMARY: {secs} s, ops={} ok={} (cas swapped={} not swapped={}) unknown-outcome writes={} \
         timed-out reads={} failed={} faults={} snapshots-installed={snapshots_installed} \
         violations={violations} verdict={:?} check={check_time:?} ({} steps) total={:?}",
        f.ops,
        f.ok,
        f.cas_swapped,
        f.cas_not_swapped,
        f.unknown_writes,
        f.unknown_reads,
        f.failed,
        faults.len(),
        report.verdict(),
        report.steps(),
        started.elapsed()
    );
    assert_eq!(report.verdict(), Verdict::Linearizable, "{report}");
    assert!(failures.is_empty(), "definite client failures: {failures:?}");
    assert!(f.ok >= 100, "too little progress: {f:?}");
    assert!(faults.len() >= 3, "too few faults: {faults:?}");

    // The same pipeline catches bad histories: one acknowledged put's value altered.
    let (bad, victim) = corrupt(&history).expect("some acknowledged put was read");
    let bad_report = check(&bad, &Options::default()).expect("well-formed");
    eprintln!("with operation #{victim}'s value altered:\n{bad_report}");
    assert_eq!(bad_report.verdict(), Verdict::Violation);
    assert_eq!(bad_report.violations().count(), 1);
    // And a stale read planted into it.
    let (bad, victim) = make_stale(&history).expect("a late get after two puts to its key");
    let bad_report = check(&bad, &Options::default()).expect("well-formed");
    eprintln!("with operation #{victim} made a stale read:\n{bad_report}");
    assert_eq!(bad_report.verdict(), Verdict::Violation);
    assert!(bad_report.violations().all(|k| k.witness.iter().any(|o| o.id == victim)), "{bad_report}");
}
