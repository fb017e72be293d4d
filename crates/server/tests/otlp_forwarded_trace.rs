//! End to end: a put sent to a follower, which forwards it to the leader, is one trace.
//! Three `raftkv-server` processes and an in-process client (whose only endpoint is a
//! follower) export over OTLP/gRPC to a real receiver in this test, which must hold the
//! client's `kv.put`, the follower's server-side `kv.put` and the leader's
//! `kv.forwarded`, all in one trace, with the follower's span an ancestor of the
//! leader's.

mod common;

use std::time::Duration;

use common::otlp::{Received, hex};
use common::traced::{TracedCluster, flush, span_kinds, start_traced_cluster, stop};
use raftkv_client::local::poll_until;
use raftkv_client::{Client, ClientOptions, WriteOutcome};

const CLIENT_SERVICE: &str = "raftkv-test-forward-client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_a_follower_is_one_trace_with_the_followers_span_above_the_leaders() {
    let traced = start_traced_cluster(CLIENT_SERVICE, env!("CARGO_BIN_EXE_raftkv-server")).await;
    let TracedCluster { store, telemetry, cluster, dir: _dir } = traced;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let follower = cluster.nodes().iter().find(|n| n.id() != leader.id).expect("a follower");
    let (follower_id, follower_addr) = (follower.id(), follower.addr().to_string());

    // Only the follower, and no hop to the leader's address: the follower must forward.
    let opts = ClientOptions { stay_on_endpoints: true, ..ClientOptions::with_timeout(Duration::from_secs(15)) };
    let client = Client::new(vec![follower_addr], opts).expect("a client of the follower");
    let put = client.put("forwarded", "1").await.expect("a put through the follower");
    assert_eq!(put.leader, leader.id, "the leader committed it");

    let telemetry = flush(telemetry).await;
    let result = poll_until(Duration::from_secs(30), "the spans of the forwarded put", || {
        let spans = store.spans();
        let put = put.clone();
        async move { check(&spans, &put, follower_id) }
    })
    .await;
    let spans = store.spans();
    stop(cluster, telemetry).await;
    if let Err(e) = result {
        panic!("{e}\nreceived {} spans; kinds: {:#?}", spans.len(), span_kinds(&spans));
    }
}

/// The client's put, the follower's `kv.put` and the leader's `kv.forwarded` in one
/// trace, the follower's an ancestor of the leader's; or what is missing.
fn check(spans: &[Received], put: &WriteOutcome, follower: u64) -> Result<(), String> {
    let index = put.index as i64;
    let client_span = spans
        .iter()
        .find(|s| s.service == CLIENT_SERVICE && s.span.name == "kv.put" && s.int("index") == Some(index))
        .ok_or_else(|| format!("no client kv.put span with index {index}"))?;
    let trace = &client_span.span.trace_id;
    let server_span = |name: &str, node: u64| {
        spans.iter().find(|s| {
            s.service == "raftkv-server"
                && s.span.name == name
                && &s.span.trace_id == trace
                && s.int("node") == Some(node as i64)
        })
    };
    let on_follower = server_span("kv.put", follower)
        .ok_or_else(|| format!("trace {} has no kv.put of the follower {follower}", hex(trace)))?;
    let on_leader = server_span("kv.forwarded", put.leader)
        .ok_or_else(|| format!("trace {} has no kv.forwarded of the leader {}", hex(trace), put.leader))?;
    // Walk up from the leader's span; the chain is bounded by the spans received.
    let mut parent = on_leader.span.parent_span_id.clone();
    for _ in 0..spans.len() {
        if parent == on_follower.span.span_id {
            return Ok(());
        }
        match spans.iter().find(|s| s.span.span_id == parent && &s.span.trace_id == trace) {
            Some(p) => parent = p.span.parent_span_id.clone(),
            None => break,
        }
    }
    Err(format!("in trace {}, the follower's kv.put is not an ancestor of the leader's", hex(trace)))
}
