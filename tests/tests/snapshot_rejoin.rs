//! A follower whose data directory is wiped rejoins empty and catches up through a
//! snapshot from the leader (whose log no longer starts at index 1).

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_client::ClientOptions;
use raftkv_tests::{Load, OP_TIMEOUT, TestCluster};

const PREFIX: &str = "snap";
const INSTALLED: &str = "installed a snapshot from the leader";
/// Entries a server keeps behind its latest snapshot (`raftkv_raft::Config::compaction_slack`).
const COMPACTION_SLACK: u64 = 1_000;

/// Writes `writers * per_writer` distinct keys under `prefix` and returns them.
async fn write_keys(
    cluster: &TestCluster,
    prefix: &str,
    writers: usize,
    per_writer: usize,
) -> BTreeMap<String, String> {
    let opts = ClientOptions::with_timeout(OP_TIMEOUT);
    let load = Load::start(cluster.endpoints(), prefix, writers, per_writer, opts, Duration::from_secs(30));
    let written = load.join(Duration::from_secs(40)).await;
    assert!(written.errors.is_empty() && written.unknown.is_empty(), "{written:?}");
    assert_eq!(written.acked.len(), writers * per_writer);
    written.acked
}

/// Writes 1200 keys with snapshots every 50 entries (the servers keep 1000 entries
/// behind a snapshot, so the leader's log no longer starts at 1), wipes a follower, writes
/// some more, restarts it empty (then, with `change_leader`, moves leadership to the
/// other follower), and checks it catches up through a snapshot.
async fn wiped_follower_rejoins(change_leader: bool) {
    let mut cluster = TestCluster::start(&["--snapshot-entries", "50"]);
    cluster.leader().await;
    let mut expected = write_keys(&cluster, &format!("{PREFIX}/a"), 6, 200).await;

    let leader = cluster.leader().await;
    // Everyone has applied the writes, so every node has compacted its log.
    cluster.all_caught_up().await;
    let leader_snapshot = cluster.status(leader.id).await.snapshot_index;
    assert!(leader_snapshot > COMPACTION_SLACK, "the leader's log still starts at 1: {leader:?}");
    let follower = cluster.ids().into_iter().find(|id| *id != leader.id).expect("a follower");

    // Stop the follower and wipe its data.
    let node = cluster.node_mut(follower).expect("node");
    node.kill().await.expect("kill -9");
    let log_path = node.log_path().to_path_buf();
    let log_before = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
    std::fs::remove_dir_all(node.data_dir()).expect("wipe the data dir");
    expected.extend(write_keys(&cluster, &format!("{PREFIX}/b"), 1, 20).await);
    // Start it empty.
    cluster.node_mut(follower).expect("node").restart().await.expect("restart");
    if change_leader {
        // A new leader starts its view of the follower from scratch.
        let other = cluster.ids().into_iter().find(|id| *id != leader.id && *id != follower).expect("a node");
        cluster.move_leader(other).await;
    }

    let target = cluster.leader().await.commit_index;
    let status = cluster.caught_up(follower, target).await;
    eprintln!(
        "node {follower} caught up: applied {} >= {target}; its snapshot index {}; leader's was {leader_snapshot}",
        status.applied_index, status.snapshot_index
    );
    assert!(status.snapshot_index > 0, "node {follower} has no snapshot: {status:?}");
    // Its log shows it installed the leader's snapshot (not replayed the log).
    let log = std::fs::read(&log_path).expect("node log");
    let new_output = String::from_utf8_lossy(&log[log_before.min(log.len())..]);
    assert!(new_output.contains(INSTALLED), "node {follower}'s log since the restart lacks {INSTALLED:?}");

    // Its own state (stale reads it serves) has every value.
    let stored = cluster.stale_scan(follower, &format!("{PREFIX}/")).await;
    assert_eq!(stored.len(), expected.len());
    assert!(stored == expected, "node {follower} disagrees on some values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_catches_up_via_snapshot() {
    wiped_follower_rejoins(true).await;
}

/// While the same leader stays in office: the follower's heartbeat responses report
/// that its log ends below what it had acknowledged, and the leader probes it afresh.
/// (Before that fix, the leader never probed below the old match index and the
/// follower never caught up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_catches_up_under_the_same_leader() {
    wiped_follower_rejoins(false).await;
}
