//! kill -9 every node during a write load, restart them all from their data
//! directories: every acknowledged write survives with its value.

use std::time::Duration;

use raftkv_client::ClientOptions;
use raftkv_tests::{LEADER_TIMEOUT, Load, TestCluster, scan_map};

const PREFIX: &str = "crash";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_every_node() {
    let mut cluster = TestCluster::start(&[]);
    cluster.leader().await;

    // Short client deadlines so that writers notice the crash and stop promptly.
    let opts = ClientOptions::with_timeout(Duration::from_secs(2));
    let load = Load::start(cluster.endpoints(), PREFIX, 4, 2_000, opts, Duration::from_secs(30));
    load.wait_acked(100, Duration::from_secs(20)).await;

    // SIGKILL all three at once (then reap them), while the writers keep writing.
    cluster.kill_all_at_once().await;
    let result = load.stop(Duration::from_secs(15)).await;
    assert!(result.errors.is_empty(), "definite write failures: {:?}", result.errors);
    eprintln!(
        "{} puts acknowledged, {} with unknown outcome before the crash",
        result.acked.len(),
        result.unknown.len()
    );

    cluster.restart_all().await;
    let leader = cluster.leader().await;
    eprintln!("after restart: leader node {} in term {}", leader.id, leader.term);

    // Linearizable: the leader confirms its leadership before answering.
    let client = cluster.client();
    let stored = scan_map(&client, &format!("{PREFIX}/"), false).await;
    let lost = result.lost(&stored);
    assert!(lost.is_empty(), "acknowledged puts lost or changed: {lost:?}");
    result.assert_nothing_invented(&stored);
    // Spot-check single-key linearizable reads too (first and last acknowledged key of
    // each writer).
    for w in 0..4 {
        let mine: Vec<_> = result.acked.iter().filter(|(k, _)| k.starts_with(&format!("{PREFIX}/w{w}/"))).collect();
        for (key, value) in [mine.first(), mine.last()].into_iter().flatten() {
            let got = client.get(key.to_string(), false).await.expect("get");
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "{key}");
        }
    }
    let unknown_applied = result.unknown.keys().filter(|k| stored.contains_key(*k)).count();
    eprintln!("{unknown_applied} of {} unknown-outcome puts were applied", result.unknown.len());

    // And the cluster still accepts writes.
    tokio::time::timeout(LEADER_TIMEOUT, client.put("crash-after", "ok")).await.expect("put in time").expect("put");
}
