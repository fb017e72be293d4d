//! Crash safety: cycles of `kill -9` on every node at once in the middle of a write
//! load, then a restart of all of them from their data directories. Afterwards every
//! acknowledged put is present with its value, nothing holds a value never written,
//! and no acknowledged cas was lost: a counter incremented only by cas ends at least
//! at the number of acknowledged increments and at most that plus the increments whose
//! outcome was unknown.
//!
//! 20 cycles by default (about a minute); `RAFTKV_CRASH_CYCLES` sets another number.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LEADER_TIMEOUT, Load, LoadResult, TestCluster, eventually, scan_map, text};
use raftkv_client::{Client, ClientError, ClientOptions};

const PREFIX: &str = "cycles";
const COUNTER: &str = "counter";
const DEFAULT_CYCLES: usize = 20;

/// Increments of the counter, each by a cas from the value read just before.
#[derive(Default)]
struct CasCounts {
    /// Acknowledged swaps.
    acked: AtomicU64,
    /// Cas whose outcome is unknown (they may or may not have swapped).
    unknown: AtomicU64,
    /// Cas that definitely did not swap (the value had changed).
    not_swapped: AtomicU64,
}

/// Increments `COUNTER` by cas until `stop`.
async fn incrementer(client: Arc<Client>, counts: Arc<CasCounts>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let current = match client.get(COUNTER, false).await {
            Ok(v) => v,
            Err(_) => continue, // no leader within the deadline: nothing changed
        };
        let n: u64 = current.as_deref().map_or(0, |b| text(b).parse().expect("a number"));
        match client.cas(COUNTER, current, (n + 1).to_string()).await {
            Ok(o) => match o.cas_result() {
                Some((true, _)) => {
                    counts.acked.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    counts.not_swapped.fetch_add(1, Ordering::SeqCst);
                }
            },
            Err(ClientError::Unknown(_)) => {
                counts.unknown.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => panic!("cas: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_repeated_kill_9_of_all_nodes() {
    let cycles: usize =
        std::env::var("RAFTKV_CRASH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CYCLES);
    let started = Instant::now();
    let mut cluster = TestCluster::start(&[]);
    cluster.leader().await;
    // Short deadlines: the clients notice each crash quickly.
    let opts = ClientOptions::with_timeout(Duration::from_millis(1_500));
    let counter_client = Arc::new(Client::new(cluster.endpoints(), opts.clone()).expect("client"));
    let counts = Arc::new(CasCounts::default());
    let mut written = LoadResult::default();
    let mut leader_times = Vec::new();

    for cycle in 0..cycles {
        let t = Instant::now();
        cluster.leader().await;
        leader_times.push(t.elapsed());
        let load = Load::start(
            cluster.endpoints(),
            &format!("{PREFIX}/c{cycle:02}"),
            3,
            10_000,
            opts.clone(),
            Duration::from_secs(20),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let inc = tokio::spawn(incrementer(counter_client.clone(), counts.clone(), stop.clone()));
        // Mid-load: some puts and some increments of this cycle acknowledged.
        let before = counts.acked.load(Ordering::SeqCst);
        load.wait_acked(30, Duration::from_secs(15)).await;
        eventually(Duration::from_secs(15), "two cas increments this cycle", || async {
            let now = counts.acked.load(Ordering::SeqCst);
            if now >= before + 2 { Ok(()) } else { Err(format!("{} this cycle", now - before)) }
        })
        .await;

        // SIGKILL all three at once, then reap them.
        cluster.kill_all_at_once().await;
        stop.store(true, Ordering::SeqCst);
        let result = load.stop(Duration::from_secs(10)).await;
        tokio::time::timeout(Duration::from_secs(10), inc).await.expect("incrementer stops").expect("incrementer");
        assert!(result.errors.is_empty(), "cycle {cycle}: definite write failures: {:?}", result.errors);
        eprintln!(
            "cycle {cycle:2}: {} puts acknowledged, {} unknown; cas acked so far {}",
            result.acked.len(),
            result.unknown.len(),
            counts.acked.load(Ordering::SeqCst)
        );
        written.acked.extend(result.acked);
        written.unknown.extend(result.unknown);

        cluster.restart_all().await;
    }

    let leader = cluster.leader().await;
    eprintln!("after {cycles} cycles: leader node {} in term {}", leader.id, leader.term);
    let client = cluster.client();
    let stored = scan_map(&client, &format!("{PREFIX}/"), false).await;
    let lost = written.lost(&stored);
    written.assert_nothing_invented(&stored);
    let unknown_applied = written.unknown.keys().filter(|k| stored.contains_key(*k)).count();

    let counter: u64 = tokio::time::timeout(LEADER_TIMEOUT, client.get(COUNTER, false))
        .await
        .expect("get in time")
        .expect("get counter")
        .map_or(0, |b| text(&b).parse().expect("a number"));
    let (acked, unknown, not_swapped) = (
        counts.acked.load(Ordering::SeqCst),
        counts.unknown.load(Ordering::SeqCst),
        counts.not_swapped.load(Ordering::SeqCst),
    );
    let slowest_election = leader_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "CRASH SUMMARY: cycles={cycles} puts acked={} unknown={} (applied {unknown_applied}) lost={}; \
         cas increments acked={acked} unknown={unknown} not-swapped={not_swapped} counter={counter}; \
         slowest leader after restart {slowest_election:?}; total {:?}",
        written.acked.len(),
        written.unknown.len(),
        lost.len(),
        started.elapsed()
    );
    assert!(lost.is_empty(), "{} acknowledged puts lost or changed, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(counter >= acked, "counter {counter} < {acked} acknowledged cas increments: an acknowledged cas was lost");
    assert!(counter <= acked + unknown, "counter {counter} > {acked} acknowledged + {unknown} unknown increments");
}
