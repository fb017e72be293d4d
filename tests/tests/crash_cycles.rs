//! Crash safety: cycles of `kill -9` on every node at once in the middle of a write
//! load, then a restart of all of them from their data directories. Afterwards every
//! acknowledged put is present with its value, nothing holds a value never written,
//! and no acknowledged cas was lost: a counter incremented only by cas ends at least
//! at the number of acknowledged increments and at most that plus the increments whose
//! outcome was unknown, and the counter's whole history of gets and cas (every value
//! unique, across all the crashes) is linearizable. A lost acknowledged cas shows up
//! there even when unknown increments would hide it in the count: a later read or cas
//! then sees the value it replaced.
//!
//! 20 cycles by default (about a minute); `RAFTKV_CRASH_CYCLES` sets another number.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientError, ClientOptions};
use raftkv_linearizability::{Call, History, Options, Outcome, Ret, check};
use raftkv_tests::{LEADER_TIMEOUT, Load, LoadResult, Recorder, TestCluster, eventually, scan_map, text};

const PREFIX: &str = "cycles";
const COUNTER: &str = "counter";
const DEFAULT_CYCLES: usize = 20;

/// Increments of the counter, each by a cas from the value read just before, and the
/// history of those gets and cas.
#[derive(Default)]
struct CasCounts {
    /// Acknowledged swaps.
    acked: AtomicU64,
    /// Cas whose outcome is unknown (they may or may not have swapped).
    unknown: AtomicU64,
    /// Cas that definitely did not swap (the value had changed).
    not_swapped: AtomicU64,
    history: Recorder,
}

/// The counter's value: `<n>.<k>`, where `k` makes every written value unique, so that
/// two swaps from the same `n` are told apart.
fn counter_value(bytes: Option<&[u8]>) -> u64 {
    bytes.map_or(0, |b| {
        let s = text(b);
        s.split('.').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("counter value {s:?}"))
    })
}

/// Reads the counter, recording the get; `None` if the read timed out (it changed
/// nothing, so it stays unknown and the checker drops it).
async fn read_counter(client: &Client, counts: &CasCounts) -> Option<Option<String>> {
    let id = counts.history.invoke(0, COUNTER, Call::Get);
    let value = client.get(COUNTER, false).await.ok()?.map(|b| text(&b));
    counts.history.complete(id, Ret::Value(value.clone()));
    Some(value)
}

/// Increments `COUNTER` by cas until `stop`.
async fn incrementer(client: Arc<Client>, counts: Arc<CasCounts>, stop: Arc<AtomicBool>) {
    let mut k = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // No answer: no leader within the deadline, nothing changed.
        let Some(current) = read_counter(&client, &counts).await else { continue };
        k += 1;
        let new = format!("{}.{k}", counter_value(current.as_deref().map(str::as_bytes)) + 1);
        let id = counts.history.invoke(0, COUNTER, Call::Cas { expected: current.clone(), new: new.clone() });
        match client.cas(COUNTER, current.map(Into::into), new).await {
            Ok(o) => match o.cas_result() {
                Some((true, _)) => {
                    counts.history.complete(id, Ret::Ok);
                    counts.acked.fetch_add(1, Ordering::SeqCst);
                }
                Some((false, current)) => {
                    counts.history.complete(id, Ret::CasFailed { current: current.map(|b| text(&b)) });
                    counts.not_swapped.fetch_add(1, Ordering::SeqCst);
                }
                None => panic!("a cas answered with {o:?}"),
            },
            Err(ClientError::Unknown(_)) => {
                counts.unknown.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => panic!("cas: {e}"),
        }
    }
}

/// Checks the counter's history; `Err` names the violation.
fn check_counter_history(history: &History) -> Result<(), String> {
    let report = check(history, &Options::default())?;
    if report.is_linearizable() { Ok(()) } else { Err(report.to_string()) }
}

/// `history` with its last get made to return what the newest acknowledged swap
/// replaced, as if that swap had been lost in a crash; `None` if no swap was acked.
fn with_last_swap_lost(history: &History) -> Option<History> {
    let ops = history.ops();
    let lost = ops.iter().rev().find(|o| matches!(o.outcome, Outcome::Done { ret: Ret::Ok, .. }))?;
    let (Call::Cas { expected, .. }, Some(acked_at)) = (&lost.call, lost.complete()) else { return None };
    let mut planted = history.clone();
    // Invoked after the swap was acknowledged: it must not see the replaced value.
    let last_get = planted.ops_mut().iter_mut().rev().find(|o| o.call == Call::Get && o.invoke > acked_at)?;
    let Outcome::Done { ret, .. } = &mut last_get.outcome else { return None };
    *ret = Ret::Value(expected.clone());
    Some(planted)
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
    // One scan per cycle: each stays far below the scan limit however many cycles ran.
    let mut stored = std::collections::BTreeMap::new();
    for cycle in 0..cycles {
        stored.extend(scan_map(&client, &format!("{PREFIX}/c{cycle:02}/"), false).await);
    }
    let lost = written.lost(&stored);
    written.assert_nothing_invented(&stored);
    let unknown_applied = written.unknown.keys().filter(|k| stored.contains_key(*k)).count();

    let final_value = tokio::time::timeout(LEADER_TIMEOUT, read_counter(&client, &counts))
        .await
        .expect("get in time")
        .expect("get counter");
    let counter = counter_value(final_value.as_deref().map(str::as_bytes));
    let history = counts.history.lock().clone();
    let planted = with_last_swap_lost(&history).expect("an acknowledged swap followed by the final get");
    assert!(check_counter_history(&planted).is_err(), "the check misses a lost acknowledged cas");
    let (acked, unknown, not_swapped) = (
        counts.acked.load(Ordering::SeqCst),
        counts.unknown.load(Ordering::SeqCst),
        counts.not_swapped.load(Ordering::SeqCst),
    );
    let slowest_election = leader_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "CRASH SUMMARY: cycles={cycles} puts acked={} unknown={} (applied {unknown_applied}) lost={}; \
         cas increments acked={acked} unknown={unknown} not-swapped={not_swapped} counter={counter}, \
         history of {} ops checked; slowest leader after restart {slowest_election:?}; total {:?}",
        written.acked.len(),
        written.unknown.len(),
        lost.len(),
        history.len(),
        started.elapsed()
    );
    assert!(lost.is_empty(), "{} acknowledged puts lost or changed, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(counter >= acked, "counter {counter} < {acked} acknowledged cas increments: an acknowledged cas was lost");
    assert!(counter <= acked + unknown, "counter {counter} > {acked} acknowledged + {unknown} unknown increments");
    if let Err(violation) = check_counter_history(&history) {
        panic!("the counter's history is not linearizable:\n{violation}");
    }
}
