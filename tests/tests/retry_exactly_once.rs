//! A write re-sent with its original client id and seq after leadership changed (by
//! transfer, then by kill -9) is answered as a duplicate and not applied again.

use std::time::Duration;

use bytes::Bytes;
use raftkv_client::{NodeId, WriteOp};
use raftkv_kv::Command;
use raftkv_rpc::WriteReply;
use raftkv_rpc::tarpc::context;
use raftkv_tests::{LEADER_TIMEOUT, TestCluster, eventually};

const KEY: &str = "exactly-once/k";

/// Sends `cmd` as is to the current leader (found by status), retrying while
/// leadership is still settling; returns the leader's reply.
async fn resend(cluster: &TestCluster, cmd: &Command) -> WriteReply {
    eventually(LEADER_TIMEOUT, "the leader to answer the re-sent write", || async {
        let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
        let conn = raftkv_rpc::connect(&cluster.addr(leader.id)).await.map_err(|e| format!("connect: {e}"))?;
        let mut ctx = context::current();
        ctx.deadline = std::time::Instant::now() + Duration::from_secs(3);
        match conn.write(ctx, cmd.clone()).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(format!("node {}: {e}", leader.id)),
            Err(e) => Err(format!("node {}: rpc: {e}", leader.id)),
        }
    })
    .await
}

/// `KEY` reads `want` linearizably, and as a stale read on every node in `ids` once it
/// has applied the leader's commit index.
async fn assert_everywhere(cluster: &TestCluster, ids: &[NodeId], want: &str) {
    let got = cluster.client().get(KEY, false).await.expect("linearizable get");
    assert_eq!(got.as_deref(), Some(want.as_bytes()), "linearizable read of {KEY}");
    let commit = cluster.leader().await.commit_index;
    for &id in ids {
        cluster.caught_up(id, commit).await;
        let got = cluster.node_client(id).get(KEY, true).await.expect("stale get");
        assert_eq!(got.as_deref(), Some(want.as_bytes()), "stale read of {KEY} on node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_resent_after_leader_changes_is_applied_once() {
    let mut cluster = TestCluster::start(&[]);
    let first = cluster.leader().await;
    let (a, b) = (cluster.client(), cluster.client());
    let out_a = a.put(KEY, "v1").await.expect("A puts v1");
    assert!(!out_a.duplicate);
    let out_b = b.put(KEY, "v2").await.expect("B puts v2");
    assert!(out_b.index > out_a.index);
    // A's write was acknowledged, so the client has nothing to retry: re-send it raw.
    assert_eq!(a.retry_unknown().await, Ok(None));
    let cmd = Command {
        client_id: a.client_id(),
        seq: out_a.seq,
        op: WriteOp::Put { key: Bytes::from(KEY), value: Bytes::from("v1") },
    };

    // 1. Leadership transfer.
    let target = cluster.ids().into_iter().find(|id| *id != first.id).expect("another node");
    let second = cluster.move_leader(target).await;
    assert!(second.term > first.term, "{first:?} -> {second:?}");
    let reply = resend(&cluster, &cmd).await;
    assert!(reply.duplicate, "re-sent write was applied again: {reply:?}");
    assert_eq!((reply.index, reply.term), (out_a.index, out_a.term), "not the original outcome");
    assert_everywhere(&cluster, &cluster.ids(), "v2").await;

    // 2. kill -9 the new leader.
    cluster.node_mut(second.id).expect("node").kill().await.expect("kill -9");
    let third = cluster.leader().await;
    assert_ne!(third.id, second.id);
    let reply = resend(&cluster, &cmd).await;
    assert!(reply.duplicate, "re-sent write was applied again after kill -9: {reply:?}");
    assert_eq!((reply.index, reply.term), (out_a.index, out_a.term), "not the original outcome");
    let alive: Vec<NodeId> = cluster.ids().into_iter().filter(|id| *id != second.id).collect();
    assert_everywhere(&cluster, &alive, "v2").await;

    // The killed node comes back with the same view.
    cluster.node_mut(second.id).expect("node").restart().await.expect("restart");
    assert_everywhere(&cluster, &cluster.ids(), "v2").await;
}
