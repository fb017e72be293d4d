//! One endpoint is enough: a client that can reach only one follower (the other
//! nodes are in network namespaces the test's own namespace has no route to, as a
//! developer's machine has none to `raft-N.raft-service` behind a port-forward) runs
//! every command through it: put, get, cas, delete, scan, status, member list and
//! validate; and a write retried through it across a leader change applies once.
//!
//! Needs root (network namespaces, iptables). Without it the test prints SKIPPED and
//! passes, except under `CI=true` or `RAFTKV_REQUIRE_NETNS=1`, where it fails.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use raftkv_client::local::poll_until;
use raftkv_client::{Client, ClientOptions, NodeId};
use raftkv_kv::{Command, WriteOp};
use raftkv_rpc::tarpc::context;
use raftkv_tests::TestCluster;
use raftkv_tests::cli::{CliOutput, raftkv};
use raftkv_tests::netns;
use raftkv_tests::test_cluster::{LEADER_TIMEOUT, OP_TIMEOUT};
use serde_json::Value;

const CLI_LIMIT: Duration = Duration::from_secs(60);

async fn cli(endpoint: &str, args: &[&str]) -> CliOutput {
    let all: Vec<&str> = ["--endpoints", endpoint].iter().copied().chain(args.iter().copied()).collect();
    raftkv(&all, &[], CLI_LIMIT).await
}

fn json(out: &CliOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.show()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_through_one_follower_and_exactly_once_across_a_leader_change() {
    let Some(net) = netns::create_or_skip(3, "one_endpoint") else { return };
    // Declared after `net`, so dropped first: the servers die before their namespaces go.
    let cluster = TestCluster::start_placed(3, &[], &net.placement());
    let leader = cluster.leader().await.id;
    let follower = *cluster.ids().iter().find(|id| **id != leader).expect("a follower");
    let hidden: Vec<NodeId> = cluster.ids().into_iter().filter(|id| *id != follower).collect();
    net.hide_from_host(&hidden).await.expect("hide the other nodes");
    for id in &hidden {
        let addr: SocketAddr = cluster.addr(*id).parse().expect("an ip:port");
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "node {id} is still reachable");
    }
    let ep = cluster.addr(follower);

    // The data commands.
    cli(&ep, &["put", "one/a", "1"]).await.expect_code(0);
    assert_eq!(cli(&ep, &["get", "one/a"]).await.expect_code(0).stdout, "1\n");
    cli(&ep, &["cas", "one/a", "1", "2"]).await.expect_code(0);
    cli(&ep, &["put", "one/b", "3"]).await.expect_code(0);
    assert_eq!(cli(&ep, &["scan", "one/"]).await.expect_code(0).stdout, "one/a\t2\none/b\t3\n");
    cli(&ep, &["delete", "one/b"]).await.expect_code(0);
    assert_eq!(cli(&ep, &["scan", "one/"]).await.expect_code(0).stdout, "one/a\t2\n");

    // The whole cluster's status and members through the one endpoint.
    let out = cli(&ep, &["status", "-o", "json"]).await.expect_code(0);
    let rows = json(&out);
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), 3, "{}", out.show());
    assert!(rows.iter().all(|r| r["reachable"] == true && r["leader"] == leader), "{}", out.show());
    let via: Vec<&Value> = rows.iter().map(|r| &r["via"]).collect();
    assert_eq!(via.iter().filter(|v| **v == follower).count(), 2, "the other two through the follower: {via:?}");
    let out = cli(&ep, &["member", "list", "-o", "json"]).await.expect_code(0);
    let members = json(&out);
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3), "{}", out.show());
    assert_eq!(members["leader"], leader, "the leader's list: {}", out.show());

    let out = cli(&ep, &["validate", "--duration", "1s", "--clients", "3", "--quiet"]).await;
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert_eq!(out.stdout.lines().last(), Some("SUCCESS"), "{}", out.show());

    retried_write_applies_once_across_a_leader_change(&ep, follower, leader, &hidden).await;
}

/// A write sent through the follower, then leadership moved (asked through the
/// follower too), then the same write (same client id and sequence number) again
/// through the follower: the second answer is the first one's, not a new entry.
async fn retried_write_applies_once_across_a_leader_change(
    ep: &str,
    follower: NodeId,
    leader: NodeId,
    hidden: &[NodeId],
) {
    let conn = raftkv_rpc::connect(ep).await.expect("connect to the follower");
    let cmd = Command {
        client_id: 0x5eed,
        seq: 1,
        op: WriteOp::Put { key: Bytes::from_static(b"one/once"), value: Bytes::from_static(b"x") },
    };
    let first = conn.write(context::current(), cmd.clone()).await.expect("rpc").expect("write");
    let via = first.forwarded.as_ref().expect("forwarded by the follower");
    assert_eq!((via.via, via.leader, first.duplicate), (follower, leader, false));

    let target = *hidden.iter().find(|id| **id != leader).expect("the other hidden node");
    let client = Client::new(vec![ep.to_string()], ClientOptions::with_timeout(OP_TIMEOUT)).expect("client");
    poll_until(LEADER_TIMEOUT, &format!("node {target} to lead"), || async {
        let st = client.status(ep).await.map_err(|e| e.to_string())?;
        if st.leader == Some(target) {
            return Ok(());
        }
        let asked = client.transfer_leader(Some(target)).await;
        Err(format!("node {:?} leads (transfer: {asked:?})", st.leader))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let again = conn.write(context::current(), cmd).await.expect("rpc").expect("the retried write");
    assert!(again.duplicate, "the retry was applied again: {again:?}");
    assert_eq!((again.index, again.term), (first.index, first.term), "the first attempt's outcome");
    assert_eq!(again.forwarded.map(|f| f.leader), Some(target), "answered by the new leader");
}
