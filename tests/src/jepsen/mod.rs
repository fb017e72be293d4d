//! The Jepsen-style run shared by `jepsen.rs` (3 nodes on 127.0.0.1) and
//! `jepsen_partition.rs` (5 nodes in network namespaces): the workload of concurrent
//! clients recording a history and a unique-key writer (here), the faults
//! ([`nemesis`]), the checks and the report ([`report`]).
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

mod checks;
mod nemesis;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientError, ClientOptions};
use raftkv_linearizability::{Call, Options, Ret, check};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::netns::Net;
use crate::{Load, LoadResult, Recorder, TestCluster, scan_map, text};

pub use checks::Wipe;
pub use nemesis::{ALL_FAULTS, Fault, Injected, PROCESS_FAULTS};
pub use report::{Figures, Report};

const PREFIX: &str = "jepsen/k";
const KEYS: u64 = 5;
const CLIENTS: u64 = 5;
/// Clients that each talk to one node only, a follower when the run starts: what
/// they do is forwarded to the leader (they never learn its address, as a client
/// behind a port-forward cannot).
const FOLLOWER_CLIENTS: u64 = 2;
/// The unique-key writer's keys: `jepsen-acked/w0/<n:07>`.
pub(crate) const ACKED_PREFIX: &str = "jepsen-acked";
/// Its puts are bounded (and its keys keep 7 digits, so that blocks of 1,000 can be
/// scanned by prefix): at about 100 puts/s, a day of load.
const ACKED_MAX: usize = 10_000_000;
/// How long, once every fault is healed, a node restarted with an empty data dir may
/// take to end its recovery (its leader's marker commits) and apply what the leader had
/// committed (it gets a snapshot, then the log after it).
const WIPE_CATCH_UP: Duration = Duration::from_secs(60);
/// What a server logs when it installs a snapshot from the leader.
const SNAPSHOT_INSTALLED: &str = "installed a snapshot from the leader";
/// Healthy time between two faults.
const QUIET: Duration = Duration::from_millis(800);

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
async fn run_client(p: u64, client: Client, rec: Arc<Recorder>, until: Instant, seed: u64) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let key = format!("{PREFIX}{}", rng.random_range(0..KEYS));
        match rng.random_range(0..10) {
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
                    Ok(o) => {
                        let cas = o.cas_result().map(|(swapped, current)| (swapped, current.map(|b| text(&b))));
                        match checks::write_ret(!is_put, cas) {
                            Ok(ret) => {
                                if let Ret::CasFailed { current } = &ret {
                                    seen.insert(key, current.clone());
                                }
                                rec.complete(id, ret);
                            }
                            // It stays unknown in the history: it may have been applied.
                            Err(e) => failures.push(format!("write {key}: {e}")),
                        }
                    }
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

/// Runs the clients, the unique-key writer and the nemesis for `setup.secs`, heals
/// everything, reads every key and checks the history.
pub async fn run(cluster: &mut TestCluster, setup: Setup<'_>) -> Report {
    let Setup { title, net, faults: cycle, secs, seed } = setup;
    eprintln!(
        "jepsen: {title}; {secs} s of load, seed {seed}; {CLIENTS} clients of every node, {FOLLOWER_CLIENTS} of one follower each"
    );
    let started = Instant::now();
    cluster.leader().await;

    let rec = Arc::new(Recorder::new());
    let until = Instant::now() + Duration::from_secs(secs);
    let mut clients = tokio::task::JoinSet::new();
    for p in 0..CLIENTS {
        let client = Client::new(cluster.endpoints(), client_options(p)).expect("client");
        clients.spawn(run_client(p, client, rec.clone(), until, seed.wrapping_add(p)));
    }
    let leader = cluster.leader().await.id;
    let followers: Vec<String> =
        cluster.ids().into_iter().filter(|id| *id != leader).map(|id| cluster.addr(id)).collect();
    for (p, endpoint) in (CLIENTS..).zip(followers.into_iter().cycle().take(FOLLOWER_CLIENTS as usize)) {
        let opts = ClientOptions { stay_on_endpoints: true, ..client_options(p) };
        let client = Client::new(vec![endpoint], opts).expect("client");
        clients.spawn(run_client(p, client, rec.clone(), until, seed.wrapping_add(p)));
    }
    let writer =
        Load::start(cluster.endpoints(), ACKED_PREFIX, 1, ACKED_MAX, client_options(2), Duration::from_secs(secs));

    // The nemesis: one fault at a time, then a healthy spell; every fault healed 3 s
    // before the load ends, so the last one too has a window in which writes must be
    // acknowledged again (the loop is bounded by `until` and by the number of faults).
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xFA17);
    let mut faults: Vec<Injected> = Vec::new();
    tokio::time::sleep(QUIET).await;
    for fault in cycle.iter().cycle().take(100_000) {
        if Instant::now() + Duration::from_secs(3) + nemesis::LONGEST_FAULT >= until {
            break;
        }
        let (at, started) = (rec.secs(), rec.nanos());
        let mut injected = nemesis::inject(cluster, net, *fault, &mut rng).await;
        (injected.started, injected.healed) = (started, rec.nanos());
        injected.what = format!("{at:8.3}s .. {:8.3}s: {}", rec.secs(), injected.what);
        eprintln!("nemesis {}", injected.what);
        faults.push(injected);
        let _ = cluster.wait_for_leader(Duration::from_secs(10)).await;
        tokio::time::sleep(QUIET).await;
    }

    nemesis::heal(cluster, net).await;
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
    // The clients invoke nothing after `until`: the last fault window ends here.
    let load_end = rec.nanos();
    let written = writer.join(Duration::from_secs(20)).await;
    failures.extend(written.errors.iter().cloned());

    // Final linearizable reads of every key (part of the history too).
    let reader = cluster.client();
    for k in 0..KEYS {
        let key = format!("{PREFIX}{k}");
        let id = rec.invoke(CLIENTS + FOLLOWER_CLIENTS, &key, Call::Get);
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
    // Each node's log spans all its starts (wipes keep it: it is outside the data dir).
    let installs = cluster
        .nodes()
        .iter()
        .map(|n| {
            (n.id(), std::fs::read_to_string(n.log_path()).unwrap_or_default().matches(SNAPSHOT_INSTALLED).count())
        })
        .collect();
    Report {
        title,
        secs,
        seed,
        figures: report::figures(&history),
        history,
        check,
        check_time,
        faults,
        named: cycle.to_vec(),
        load_end,
        failures,
        written,
        lost,
        invented,
        unknown_applied,
        installs,
        total: started.elapsed(),
    }
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
