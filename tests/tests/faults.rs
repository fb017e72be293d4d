//! `raftkv fault` against real server processes: refused unless the node runs with
//! `--enable-faults`; with it, a partition, a pause and a slow fsync take effect, are
//! listed, and end by themselves once their duration is up (or at `fault heal`).

use std::time::Duration;

use raftkv_client::NodeId;
use raftkv_client::local::poll_until;
use raftkv_tests::TestCluster;
use raftkv_tests::cli::{CliOutput, raftkv};
use raftkv_tests::test_cluster::LEADER_TIMEOUT;
use serde_json::Value;

const CLI_LIMIT: Duration = Duration::from_secs(60);
/// Bound on a fault ending after its duration (a loaded machine is slow).
const HEAL_LIMIT: Duration = Duration::from_secs(30);

async fn cli(cluster: &TestCluster, args: &[&str]) -> CliOutput {
    let endpoints = cluster.ids().iter().map(|id| cluster.addr(*id)).collect::<Vec<_>>().join(",");
    let all: Vec<&str> = ["--endpoints", endpoints.as_str()].iter().copied().chain(args.iter().copied()).collect();
    raftkv(&all, &[], CLI_LIMIT).await
}

/// The active faults of `node`, as `fault list NODE -o json` says.
async fn active(cluster: &TestCluster, node: NodeId) -> Vec<Value> {
    let out = cli(cluster, &["fault", "list", &node.to_string(), "-o", "json"]).await.expect_code(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.show()));
    v[0]["active"].as_array().cloned().unwrap_or_default()
}

async fn wait_healed(cluster: &TestCluster, node: NodeId) {
    poll_until(HEAL_LIMIT, "the fault to heal by itself", || async {
        let left = active(cluster, node).await;
        if left.is_empty() { Ok(()) } else { Err(format!("still active: {left:?}")) }
    })
    .await
    .expect("the fault heals by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_refused_without_enable_faults() {
    let cluster = TestCluster::start(&[]);
    let leader = cluster.leader().await.id.to_string();
    for args in [vec!["fault", "partition", leader.as_str()], vec!["fault", "list", leader.as_str()]] {
        let out = cli(&cluster, &args).await.expect_code(1);
        assert!(
            out.stderr.contains("--enable-faults") && out.stderr.contains(&format!("node {leader}")),
            "the refusal names the node and the flag: {}",
            out.show()
        );
    }
    // The cluster was not touched: it still commits through the same leader.
    cli(&cluster, &["put", "untouched", "1"]).await.expect_code(0);
    assert_eq!(cluster.leader().await.id.to_string(), leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_takes_effect_and_heals_by_itself() {
    let cluster = TestCluster::start(&["--enable-faults"]);
    let old = cluster.leader().await;
    let node = old.id.to_string();

    // A partition of the leader: the others elect another; it heals by itself.
    let out = cli(&cluster, &["fault", "partition", &node, "--for", "8s"]).await.expect_code(0);
    assert!(out.stdout.contains("injected partition from every other node for 8s"), "{}", out.show());
    let client = cluster.client();
    poll_until(LEADER_TIMEOUT, "another leader", || async {
        for id in cluster.ids().into_iter().filter(|id| *id != old.id) {
            if let Ok(s) = client.status(&cluster.addr(id)).await
                && s.role == "leader"
                && s.term > old.term
            {
                return Ok(());
            }
        }
        Err("the partitioned leader's peers have not elected another".to_string())
    })
    .await
    .expect("the partition cut the leader off");
    wait_healed(&cluster, old.id).await;
    let put = client.put("after-the-partition", "1").await.expect("a put");
    // Healed, it hears from the leader again.
    cluster.caught_up(old.id, put.index).await;

    // A pause of a follower: it applies nothing while paused, catches up after.
    let follower = *cluster.ids().iter().find(|id| **id != put.leader).expect("a follower");
    let f = follower.to_string();
    cli(&cluster, &["fault", "pause", &f, "--for", "8s"]).await.expect_code(0);
    let during = client.put("during-the-pause", "1").await.expect("a put while a follower is paused");
    let listed = active(&cluster, follower).await;
    assert!(listed.iter().any(|a| a["kind"] == "pause"), "the pause is listed: {listed:?}");
    // Its status comes from its Raft loop: a paused node answers late or not at all.
    if let Ok(paused) = client.status(&cluster.addr(follower)).await {
        assert!(paused.applied_index < during.index, "a paused node applies nothing: {paused:?}");
    }
    wait_healed(&cluster, follower).await;
    cluster.caught_up(follower, during.index).await;

    // A slow fsync, ended by `fault heal` (every member) before its time.
    cli(&cluster, &["fault", "delay-fsync", &f, "50ms", "--for", "10m"]).await.expect_code(0);
    assert!(active(&cluster, follower).await.iter().any(|a| a["fault"] == "delay-fsync 50ms"));
    let out = cli(&cluster, &["fault", "heal"]).await.expect_code(0);
    assert!(out.stdout.contains(&format!("node {f}: healed 1 fault(s); 0 active")), "{}", out.show());
    assert!(active(&cluster, follower).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_out_of_bounds_or_for_a_stranger_is_refused_naming_the_limit() {
    let cluster = TestCluster::start(&["--enable-faults"]);
    let node = cluster.leader().await.id.to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["fault", "partition", &node, "--for", "2h"], "1 ms to 3600 s"),
        (&["fault", "delay-fsync", &node, "20s"], "1 ms to 10000 ms"),
        (&["fault", "partition", &node, "--from", &node], "cannot be partitioned from itself"),
        (&["fault", "partition", "9"], "node 9 is not a member"),
    ];
    for (args, says) in cases {
        let out = cli(&cluster, args).await.expect_code(1);
        assert!(out.stderr.contains(says), "{args:?} must say {says:?}: {}", out.show());
    }
    assert!(active(&cluster, node.parse().expect("an id")).await.is_empty(), "nothing was injected");
}
