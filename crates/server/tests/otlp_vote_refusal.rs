//! End to end: a voter that refuses a stale candidate says why, naming both last log
//! positions, in the candidate's election trace. Three `raftkv-server` processes
//! (faults enabled) export over OTLP/gRPC to a real receiver in this test; faults are
//! injected through the `fault` RPC, as `raftkv fault` does.

mod common;

use std::time::Duration;

use common::otlp::Received;
use common::traced::{
    TracedCluster, client_of, flush, leader_among, partition, span_kinds, start_traced_cluster_with, stepped_down, stop,
};
use raftkv_client::local::poll_until;
use raftkv_client::{FaultRequest, NodeId};

const CLIENT_SERVICE: &str = "raftkv-test-vote-refusal-client";

/// Node 3 times out fast (6 ticks), nodes 1 and 2 slowly (40 ticks), so that node 3,
/// cut off while the others commit, campaigns with a stale log before anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_refusing_a_stale_candidate_names_both_log_positions() {
    let slow: &[&str] = &["--election-ticks", "40"];
    let fast: &[&str] = &["--election-ticks", "6"];
    let traced = start_traced_cluster_with(
        CLIENT_SERVICE,
        env!("CARGO_BIN_EXE_raftkv-server"),
        &["--enable-faults"],
        &[slow, slow, fast],
    )
    .await;
    let TracedCluster { store, telemetry, cluster, dir: _dir } = traced;
    let first = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let client = client_of(&cluster);
    // The stale node must be a follower: hand leadership to node 1 if node 3 leads.
    let leader =
        if first.id == 3 { client.transfer_leader(Some(1)).await.expect("node 3 hands off to 1") } else { first.id };
    let other = if leader == 1 { 2 } else { 1 };
    partition(&client, 3, 60).await;
    for i in 0..3 {
        client.put(format!("while-3-is-away-{i}"), "x").await.expect("the leader commits without node 3");
    }
    // The leader loses its quorum and steps down: it is then out of any lease.
    partition(&client, other, 60).await;
    stepped_down(&client, &cluster, leader).await;
    let healed = client.fault(3, FaultRequest::Heal).await.expect("node 3 heals");
    assert_eq!(healed.healed, 1, "{healed:?}");
    let (winner, _) = leader_among(&client, &cluster, &[leader, 3], 0).await;
    assert_eq!(winner, leader, "the up-to-date node wins, never the stale one");

    let telemetry = flush(telemetry).await;
    let result = poll_until(Duration::from_secs(30), "a stale-log refusal", || {
        let spans = store.spans();
        async move { check_stale_refusal(&spans, leader) }
    })
    .await;
    let spans = store.spans();
    stop(cluster, telemetry).await;
    if let Err(e) = result {
        panic!("{e}\nreceived {} spans; kinds: {:#?}", spans.len(), span_kinds(&spans));
    }
}

/// `voter` refused candidate 3 for its stale log, in node 3's election trace, naming
/// both last log positions (the voter's ahead).
fn check_stale_refusal(spans: &[Received], voter: NodeId) -> Result<(), String> {
    let refusal = spans
        .iter()
        .find(|s| {
            s.span.name == "raft.vote_request"
                && s.int("node") == Some(voter as i64)
                && s.int("candidate") == Some(3)
                && s.str("reason") == Some("stale_log")
        })
        .ok_or_else(|| format!("no stale_log refusal of candidate 3 by node {voter}"))?;
    let position = |who: &str| (refusal.int(&format!("{who}_last_term")), refusal.int(&format!("{who}_last_index")));
    let (Some(ct), Some(ci)) = position("candidate") else { return Err("no candidate log position".into()) };
    let (Some(ot), Some(oi)) = position("own") else { return Err("no voter log position".into()) };
    if !(ot > ct || (ot == ct && oi > ci)) || refusal.str("decision") != Some("rejected") {
        return Err(format!(
            "refused {ci}/{ct} against own {oi}/{ot}: not a stale log ({:?})",
            refusal.str("decision")
        ));
    }
    let candidates_election = spans.iter().any(|s| {
        s.span.name == "raft.election" && s.int("node") == Some(3) && s.span.trace_id == refusal.span.trace_id
    });
    if !candidates_election {
        return Err("the refusal is not in a raft.election trace of node 3".into());
    }
    Ok(())
}
