//! Membership changes on real server processes: a 3-node cluster grows to 5 under a
//! write load (two nodes started with `--join`, promoted to voters by the leader), then
//! shrinks back to 3 (the leader itself removed, under load, then a follower), and no
//! acknowledged write is lost. A removed node stops with exit status 0 and a tombstone,
//! and can never come back: neither from its data dir nor, wiped, under its old id.
//! Finally, a second cluster whose members list a node of the first is refused by it:
//! the two never merge.
//!
//! Membership is driven and observed through the `raftkv member` command line, the way
//! an operator would.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use raftkv_client::local::{Bootstrap, free_ports, wait_for_leader};
use raftkv_client::{Client, ClientOptions, MemberList, MemberRole, NodeId};
use raftkv_tests::{
    EXIT_TIMEOUT, LEADER_TIMEOUT, Load, LoadResult, TestCluster, eventually, print_log_tail, raftkv, scan_map,
    spawn_node,
};

/// Bound on a membership change: a joining node catching up and being promoted, a
/// removal committing, on a loaded 2-core machine.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one CLI run.
const CLI_LIMIT: Duration = Duration::from_secs(40);
/// What a server says when it refuses to start on a removed node's data dir.
const REMOVED_REFUSAL: &str = "which was removed from cluster";
/// What a node logs when it refuses raft messages of another cluster.
const WRONG_CLUSTER: &str = "refusing raft messages of another cluster";

/// Runs `raftkv --endpoints EPS --timeout 20s ARGS`.
async fn cli(endpoints: &[String], args: &[&str]) -> raftkv_tests::CliOutput {
    let eps = endpoints.join(",");
    let mut all = vec!["--endpoints", &eps, "--timeout", "20s"];
    all.extend_from_slice(args);
    raftkv(&all, &[], CLI_LIMIT).await
}

/// `raftkv member list --json`, parsed.
async fn member_list(endpoints: &[String]) -> Result<MemberList, String> {
    let out = cli(endpoints, &["member", "list", "--json"]).await;
    if out.code != Some(0) {
        return Err(out.show());
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.show()))?;
    list_from_json(&v).ok_or_else(|| format!("not a member list: {}", out.show()))
}

/// The parts of `member list --json` the tests check.
fn list_from_json(v: &serde_json::Value) -> Option<MemberList> {
    let ids = |key: &str| -> Option<Vec<NodeId>> { v[key].as_array()?.iter().map(|x| x.as_u64()).collect() };
    let members = v["members"]
        .as_array()?
        .iter()
        .map(|m| {
            Some(raftkv_client::MemberInfo {
                id: m["id"].as_u64()?,
                addr: m["addr"].as_str()?.to_string(),
                role: match m["role"].as_str()? {
                    "voter" => MemberRole::Voter,
                    "learner" => MemberRole::Learner,
                    _ => return None,
                },
                auto_promote: m["auto_promote"].as_bool()?,
                match_index: m["match_index"].as_u64(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(MemberList {
        cluster_id: v["cluster_id"].as_u64()?,
        node: v["node"].as_u64()?,
        leader: v["leader"].as_u64(),
        conf_index: v["conf_index"].as_u64()?,
        committed: v["committed"].as_bool()?,
        members,
        removed: ids("removed")?,
    })
}

fn voters(list: &MemberList) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = list.members.iter().filter(|m| m.role == MemberRole::Voter).map(|m| m.id).collect();
    ids.sort_unstable();
    ids
}

/// Polls `member list` until the committed configuration is exactly `want` voters
/// (and no learner).
async fn wait_voters(endpoints: &[String], want: &[NodeId]) -> MemberList {
    eventually(CHANGE_TIMEOUT, &format!("voters {want:?}, committed"), || async {
        let list = member_list(endpoints).await?;
        if list.committed && voters(&list) == want && list.members.len() == want.len() {
            Ok(list)
        } else {
            let roles: Vec<String> = list.members.iter().map(|m| format!("{}:{:?}", m.id, m.role)).collect();
            Err(format!("members {roles:?}, committed: {}", list.committed))
        }
    })
    .await
}

/// Checks that every acknowledged put is on every node of `cluster` (linearizably on
/// the leader, then in each node's own state once it has caught up) and that nothing
/// holds a value never written.
async fn assert_no_write_lost(cluster: &mut TestCluster, prefix: &str, written: &LoadResult) {
    let stored = scan_map(&cluster.client(), prefix, false).await;
    let lost = written.lost(&stored);
    assert!(lost.is_empty(), "{} acknowledged puts lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    written.assert_nothing_invented(&stored);
    cluster.all_caught_up().await;
    for id in cluster.ids() {
        let local = cluster.stale_scan(id, prefix).await;
        let lost = written.lost(&local);
        assert!(
            lost.is_empty(),
            "node {id} lacks {} acknowledged puts, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        written.assert_nothing_invented(&local);
    }
}

/// Starts a write load, waits for some puts to be acknowledged, runs `change`, then
/// waits for some more before stopping it: the change happened under load.
async fn under_load<F: Future<Output = T>, T>(endpoints: Vec<String>, prefix: &str, change: F) -> (T, LoadResult) {
    let opts = ClientOptions::with_timeout(Duration::from_secs(5));
    let load = Load::start(endpoints, prefix, 3, 100_000, opts, Duration::from_secs(90));
    load.wait_acked(20, LEADER_TIMEOUT).await;
    let t = change.await;
    let acked = load.acked();
    load.wait_acked(acked + 20, LEADER_TIMEOUT).await;
    let result = load.stop(Duration::from_secs(20)).await;
    assert!(result.errors.is_empty(), "definite write failures: {:?}", result.errors);
    (t, result)
}

fn tombstone(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("removed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_to_three_under_load_loses_no_write() {
    let started = Instant::now();
    let mut cluster = TestCluster::start(&[]);
    let first = cluster.leader().await;
    let before = member_list(&cluster.endpoints()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(voters(&before), vec![1, 2, 3], "{before:?}");
    assert_ne!(before.cluster_id, 0);
    assert_eq!(before.leader, Some(first.id));
    let mut written = LoadResult::default();

    // 1. Grow: nodes 4 and 5 join under load; the leader promotes both once caught up.
    let (grown, result) = under_load(cluster.endpoints(), "grow", async {
        cluster.join(4);
        cluster.join(5);
        wait_voters(&cluster.endpoints(), &[1, 2, 3, 4, 5]).await
    })
    .await;
    assert_eq!(grown.cluster_id, before.cluster_id, "joining changed the cluster id");
    assert!(grown.conf_index > before.conf_index, "{grown:?}");
    eprintln!(
        "grew to 5 voters at conf index {} after {:?}: {} puts acknowledged, {} unknown",
        grown.conf_index,
        started.elapsed(),
        result.acked.len(),
        result.unknown.len()
    );
    written.acked.extend(result.acked);
    written.unknown.extend(result.unknown);
    assert_no_write_lost(&mut cluster, "grow/", &written).await;

    // 2. Shrink: remove the leader under load; a new leader takes over and the old one
    //    exits 0, leaving its tombstone.
    let old = cluster.leader().await;
    let (out, result) = under_load(cluster.endpoints(), "shrink", async {
        cli(&cluster.endpoints(), &["member", "remove", &old.id.to_string()]).await
    })
    .await;
    let out = out.expect_code(0);
    assert!(out.stdout.contains(&format!("removed node {}", old.id)), "{}", out.show());
    written.acked.extend(result.acked);
    written.unknown.extend(result.unknown);
    let old_node = cluster.retire(old.id);
    let status = old_node.wait_exit(EXIT_TIMEOUT).await.expect("wait");
    let status = status.unwrap_or_else(|| panic!("the removed leader {} still runs after {EXIT_TIMEOUT:?}", old.id));
    assert_eq!(status.code(), Some(0), "the removed leader {} exited with {status}", old.id);
    let old_dir = old_node.data_dir().to_path_buf();
    assert!(tombstone(&old_dir).is_file(), "no tombstone in {}", old_dir.display());
    let new = cluster.leader().await;
    assert_ne!(new.id, old.id);
    let mut remaining: Vec<NodeId> = [1, 2, 3, 4, 5].into_iter().filter(|id| *id != old.id).collect();
    let list = wait_voters(&cluster.endpoints(), &remaining).await;
    assert!(list.removed.contains(&old.id), "{list:?}");
    eprintln!("removed the leader {}: node {} leads in term {} ({:?})", old.id, new.id, new.term, started.elapsed());

    //    Then a follower: back to 3 voters.
    let follower = *remaining.iter().rev().find(|id| **id != new.id).expect("a follower");
    cli(&cluster.endpoints(), &["member", "remove", &follower.to_string()]).await.expect_code(0);
    remaining.retain(|id| *id != follower);
    let shrunk = wait_voters(&cluster.endpoints(), &remaining).await;
    let node = cluster.retire(follower);
    let status = node.wait_exit(EXIT_TIMEOUT).await.expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "removed node {follower}: {status:?}");
    assert!(tombstone(node.data_dir()).is_file(), "no tombstone of node {follower}");
    assert_no_write_lost(&mut cluster, "", &written).await;

    // 3. A removed node never comes back: not from its data dir...
    let seeds = cluster.endpoints();
    let old_node = cluster.retired(old.id);
    old_node.restart().await.expect("start the removed node again");
    let status = old_node.wait_exit(EXIT_TIMEOUT).await.expect("wait");
    let status = status.unwrap_or_else(|| panic!("removed node {} runs again on its data dir", old.id));
    assert!(!status.success(), "removed node {} restarted: {status}", old.id);
    let log = std::fs::read_to_string(old_node.log_path()).expect("log");
    assert!(log.contains(REMOVED_REFUSAL), "no removal error in node {}'s log", old.id);
    //    ...nor wiped, joining under its old id (ids are never reused).
    std::fs::remove_dir_all(&old_dir).expect("wipe the data dir");
    old_node.config_mut().bootstrap = Bootstrap::Join(seeds);
    let log_len = std::fs::metadata(old_node.log_path()).map(|m| m.len()).unwrap_or(0) as usize;
    old_node.restart().await.expect("start with --join");
    let status = old_node.wait_exit(EXIT_TIMEOUT).await.expect("wait");
    let status = status.unwrap_or_else(|| panic!("node {} rejoined under its removed id", old.id));
    assert!(!status.success(), "node {} joined under its removed id: {status}", old.id);
    let log = std::fs::read_to_string(old_node.log_path()).expect("log");
    let refusal = format!("node {} was removed from this cluster; ids are never reused", old.id);
    assert!(log[log_len..].contains(&refusal), "no refusal in node {}'s log: {}", old.id, &log[log_len..]);
    //    The cluster is unaffected.
    let after = member_list(&cluster.endpoints()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((voters(&after), after.conf_index), (remaining.clone(), shrunk.conf_index), "{after:?}");
    assert_eq!(after.cluster_id, before.cluster_id);
    eprintln!("node {} refused on its data dir and, wiped, under its old id", old.id);

    // 4. End to end on the 3 remaining nodes.
    assert_no_write_lost(&mut cluster, "", &written).await;
    let out = cli(&cluster.endpoints(), &["validate", "--quiet", "--duration", "1s"]).await;
    assert_eq!(out.stdout.lines().last(), Some("SUCCESS"), "{}", out.show());
    out.expect_code(0);
    eprintln!(
        "MEMBERSHIP SUMMARY: 3 -> 5 -> 3 voters ({remaining:?}); puts acknowledged={} unknown={} lost=0; total {:?}",
        written.acked.len(),
        written.unknown.len(),
        started.elapsed()
    );
}

/// A second cluster (its own `--cluster-token`) whose `--peers` name a node of the
/// first: its leader replicates to that node, which refuses every message. Without the
/// cluster id that node would adopt the second cluster's term and log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_never_merge() {
    let mut first = TestCluster::start(&[]);
    first.leader().await;
    let client = first.client();
    for i in 0..20 {
        client.put(format!("first/{i:02}"), format!("v{i}")).await.expect("put on the first cluster");
    }
    let before = first.members().await;
    let shared = first.addr(3);

    // The second cluster: nodes 1 and 2 on their own ports, node 3 at the first's node 3.
    let ports = free_ports(2).expect("ports");
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members = vec![(1, addrs[0].clone()), (2, addrs[1].clone()), (3, shared.clone())];
    let dir = first.path().join("second");
    let mut second: Vec<_> = (0..2)
        .map(|i| {
            let bootstrap = Bootstrap::Peers(members.clone());
            spawn_node(&dir, i as NodeId + 1, &addrs[i], bootstrap, &["--cluster-token", "another-cluster"])
        })
        .collect();
    let second_client =
        Client::new(addrs.clone(), ClientOptions::with_timeout(Duration::from_secs(5))).expect("client");
    let check = async {
        let leader = wait_for_leader(&second_client, 3, LEADER_TIMEOUT).await?;
        for i in 0..20 {
            second_client.put(format!("second/{i:02}"), "x").await.map_err(|e| format!("put on the second: {e}"))?;
        }
        let other = second_client.members().await.map_err(|e| e.to_string())?;
        if other.cluster_id == before.cluster_id {
            return Err(format!("both clusters have id {:016x}", other.cluster_id));
        }
        // Node 3 refused the second cluster's messages (it logs that)...
        let log3 = first.node(3).expect("node 3").log_path().to_path_buf();
        eventually(LEADER_TIMEOUT, "node 3 to refuse the second cluster", || async {
            let log = std::fs::read_to_string(&log3).map_err(|e| e.to_string())?;
            if log.contains(WRONG_CLUSTER) { Ok(()) } else { Err("no refusal logged yet".into()) }
        })
        .await;
        // ...so the second leader never replicated anything to it.
        let progress = other.members.iter().find(|m| m.id == 3).and_then(|m| m.match_index);
        if progress.is_some_and(|i| i > 0) {
            return Err(format!("the second cluster's leader {} replicated up to {progress:?} to node 3", leader.id));
        }
        Ok::<_, String>(leader)
    };
    let second_leader = match check.await {
        Ok(l) => l,
        Err(e) => {
            second.iter().for_each(print_log_tail);
            panic!("{e}");
        }
    };

    // The first cluster: same members, same id, node 3 still follows its own leader,
    // and every node holds the first's data and none of the second's.
    let leader = first.leader().await;
    let after = first.members().await;
    // The configuration, not the replication progress (match indexes move on).
    let conf = |l: &raftkv_rpc::MemberList| {
        l.members.iter().map(|m| (m.id, m.addr.clone(), m.role, m.auto_promote)).collect::<Vec<_>>()
    };
    assert_eq!((after.cluster_id, conf(&after)), (before.cluster_id, conf(&before)), "{after:?}");
    eventually(LEADER_TIMEOUT, "node 3 to follow the first cluster's leader", || async {
        let leader = first.leader().await;
        let node3 = first.status(3).await;
        if (node3.leader, node3.term, node3.cluster_id) == (Some(leader.id), leader.term, before.cluster_id) {
            Ok(())
        } else {
            Err(format!("node 3: {node3:?}; leader: {leader:?}"))
        }
    })
    .await;
    first.all_caught_up().await;
    let want: BTreeMap<String, String> = (0..20).map(|i| (format!("first/{i:02}"), format!("v{i}"))).collect();
    for id in first.ids() {
        assert_eq!(first.stale_scan(id, "first/").await, want, "node {id}");
        assert!(first.stale_scan(id, "second/").await.is_empty(), "node {id} holds the second cluster's data");
    }
    eprintln!(
        "the second cluster (leader {}, term {}) was refused by node 3 of the first (leader {}, term {})",
        second_leader.id, second_leader.term, leader.id, leader.term
    );
    for node in &mut second {
        node.kill().await.expect("kill");
    }
}
