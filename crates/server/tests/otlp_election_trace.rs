//! End to end: an election is one trace across the voters. Three `raftkv-server`
//! processes (faults enabled) export over OTLP/gRPC to a real receiver in this test;
//! faults are injected through the `fault` RPC, as `raftkv fault` does.
//!
//! - Partitioning the leader makes the others elect a new one: the winner's
//!   `raft.election` trace holds the other voter's `raft.vote_request` span (its
//!   decision and reason), a `raft.vote_received` event per answer, and a link to the
//!   winner's first commit; the deposed leader's `raft.step_down` links the fault.

mod common;

use std::time::Duration;

use common::otlp::{Received, attr, hex};
use common::traced::{
    TracedCluster, client_of, flush, leader_among, partition, span_kinds, start_traced_cluster_with, stepped_down, stop,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use raftkv_client::local::poll_until;
use raftkv_client::{FaultRequest, NodeId};

const CLIENT_SERVICE: &str = "raftkv-test-election-client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leaders_successor_shows_its_election_as_one_trace_across_voters() {
    let traced =
        start_traced_cluster_with(CLIENT_SERVICE, env!("CARGO_BIN_EXE_raftkv-server"), &["--enable-faults"], &[]).await;
    let TracedCluster { store, telemetry, cluster, dir: _dir } = traced;
    let old = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let client = client_of(&cluster);
    partition(&client, old.id, 60).await;
    let others: Vec<NodeId> = cluster.nodes().iter().map(|n| n.id()).filter(|id| *id != old.id).collect();
    let (new, term) = leader_among(&client, &cluster, &others, old.term).await;
    client.put("after-the-partition", "1").await.expect("the new leader commits");
    // Cut off, the old leader steps down by itself (check-quorum) before any healing
    // could show it the new term.
    stepped_down(&client, &cluster, old.id).await;
    // Healed now, so that the fault's span (open while it lasts) is exported.
    let healed = client.fault(old.id, FaultRequest::Heal).await.expect("the partition heals");
    assert_eq!(healed.healed, 1, "{healed:?}");

    let telemetry = flush(telemetry).await;
    let result = poll_until(Duration::from_secs(30), "the new leader's election trace", || {
        let spans = store.spans();
        async move { check_election(&spans, new, term, old.id) }
    })
    .await;
    let spans = store.spans();
    stop(cluster, telemetry).await;
    if let Err(e) = result {
        panic!("{e}\nreceived {} spans; kinds: {:#?}", spans.len(), span_kinds(&spans));
    }
}

/// `new`'s won election of `term`: one trace with every voter's decision, an answer
/// event per voter, a link to the first commit; `old`'s step-down linked to its fault.
fn check_election(spans: &[Received], new: NodeId, term: u64, old: NodeId) -> Result<(), String> {
    let election = spans
        .iter()
        .find(|s| {
            s.span.name == "raft.election"
                && s.int("node") == Some(new as i64)
                && s.int("term") == Some(term as i64)
                && s.str("outcome") == Some("won")
        })
        .ok_or_else(|| format!("no won raft.election of node {new} in term {term}"))?;
    let trace = &election.span.trace_id;
    let in_trace: Vec<&Received> = spans.iter().filter(|s| &s.span.trace_id == trace).collect();
    let mut instances: Vec<&Option<String>> = in_trace.iter().map(|s| &s.instance).collect();
    instances.sort();
    instances.dedup();
    if instances.len() < 2 {
        return Err(format!("the election trace {} holds spans of {instances:?} only", hex(trace)));
    }
    let votes: Vec<&&Received> =
        in_trace.iter().filter(|s| s.span.name == "raft.vote_request" && s.int("term") == Some(term as i64)).collect();
    let voters: Vec<i64> = votes.iter().filter(|v| !v.bool("pre_vote")).filter_map(|v| v.int("node")).collect();
    if voters.is_empty() || voters.contains(&(old as i64)) {
        return Err(format!(
            "the vote requests' voters in the trace: {voters:?} (the partitioned {old} cannot answer)"
        ));
    }
    for v in &votes {
        let (decision, reason) = (v.str("decision"), v.str("reason"));
        if decision.is_none() || reason.is_none() || v.int("candidate") != Some(new as i64) {
            return Err(format!("a vote_request without its decision, reason or candidate: {:?}", v.span.attributes));
        }
    }
    for voter in &voters {
        let answered = election.span.events.iter().any(|e| {
            e.name == "raft.vote_received"
                && matches!(attr(&e.attributes, "from"), Some(any_value::Value::IntValue(i)) if i == voter)
        });
        if !answered {
            return Err(format!("the election span records no answer from voter {voter}"));
        }
    }
    check_first_commit(spans, election, new, term)?;
    check_step_down(spans, old)
}

/// The election links a `raft.commit` of the winner in its term (its no-op).
fn check_first_commit(spans: &[Received], election: &Received, new: NodeId, term: u64) -> Result<(), String> {
    let commit = election.span.links.iter().find_map(|l| {
        spans.iter().find(|s| {
            s.span.span_id == l.span_id
                && s.span.name == "raft.commit"
                && s.int("node") == Some(new as i64)
                && s.int("term") == Some(term as i64)
        })
    });
    match commit {
        Some(c) if election.int("first_commit_index") == c.int("last_index") => Ok(()),
        Some(c) => Err(format!(
            "first_commit_index {:?} is not the commit's {:?}",
            election.int("first_commit_index"),
            c.int("last_index")
        )),
        None => {
            Err(format!("the election links no raft.commit of node {new} in term {term}: {:?}", election.span.links))
        }
    }
}

/// The partitioned leader stepped down (lost quorum), linked to its fault's span.
fn check_step_down(spans: &[Received], old: NodeId) -> Result<(), String> {
    let fault = spans
        .iter()
        .find(|s| {
            s.span.name == "fault.inject" && s.int("node") == Some(old as i64) && s.str("kind") == Some("partition")
        })
        .ok_or_else(|| format!("no fault.inject span of node {old}"))?;
    let step_downs: Vec<&Received> =
        spans.iter().filter(|s| s.span.name == "raft.step_down" && s.int("node") == Some(old as i64)).collect();
    let linked = step_downs.iter().any(|s| {
        s.str("reason") == Some("lost_quorum") && s.span.links.iter().any(|l| l.span_id == fault.span.span_id)
    });
    if !linked {
        let seen: Vec<_> = step_downs.iter().map(|s| (s.str("reason"), s.span.links.len())).collect();
        return Err(format!(
            "no lost_quorum step-down of node {old} linked to its partition; (reason, links): {seen:?}"
        ));
    }
    Ok(())
}

trait BoolAttr {
    fn bool(&self, key: &str) -> bool;
}

impl BoolAttr for Received {
    fn bool(&self, key: &str) -> bool {
        matches!(self.attr(key), Some(any_value::Value::BoolValue(true)))
    }
}
