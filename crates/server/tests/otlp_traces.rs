//! End to end: three `raftkv-server` processes and an in-process client export their
//! spans over OTLP/gRPC to a real receiver in this test. After the leader is killed
//! (kill -9) and writes go to its successor, the receiver must hold:
//!
//! - a `raft.election` won in a higher term than the first leader's;
//! - a put whose trace id appears in spans of the client and of at least two
//!   distinct nodes (`service.instance.id`: the leader and a follower);
//! - `raft.commit` spans whose index range contains the put's index.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::otlp::{Received, hex};
use common::traced::{TracedCluster, flush, span_kinds, start_traced_cluster, stop};
use raftkv_client::local::poll_until;
use raftkv_client::{ClientOptions, WriteOutcome};

const CLIENT_SERVICE: &str = "raftkv-test-client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_one_trace_across_client_leader_and_follower() {
    let traced = start_traced_cluster(CLIENT_SERVICE, env!("CARGO_BIN_EXE_raftkv-server")).await;
    let TracedCluster { store, telemetry, mut cluster, dir: _dir } = traced;

    let first = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a first leader");
    let client = cluster.client(ClientOptions::with_timeout(Duration::from_secs(15)));
    client.put("warm-up", "1").await.expect("a write before the failure");

    cluster.node_mut(first.id).expect("the leader's process").kill().await.expect("kill -9 the leader");
    let second = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a new leader");
    assert_ne!(second.id, first.id);
    assert!(second.term > first.term);

    let mut puts: Vec<WriteOutcome> = Vec::new();
    for i in 0..5 {
        puts.push(client.put(format!("key-{i}"), format!("value-{i}")).await.expect("a write after the failure"));
    }
    let put = puts.last().expect("five puts").clone();
    assert_eq!(put.leader, second.id);

    // Export this process's spans now (blocking: off the runtime's threads).
    let telemetry = flush(telemetry).await;

    let result = poll_until(Duration::from_secs(30), "the spans of the failover and the put", || {
        let spans = store.spans();
        let put = put.clone();
        let first_term = first.term;
        async move { check(&spans, first_term, &put) }
    })
    .await;

    let spans = store.spans();
    stop(cluster, telemetry).await;
    if result.is_ok() {
        // The put's trace, for the test log.
        let index = put.index as i64;
        if let Some(c) = spans
            .iter()
            .find(|s| s.service == CLIENT_SERVICE && s.span.name == "kv.put" && s.int("index") == Some(index))
        {
            let mut trace: Vec<&Received> = spans.iter().filter(|s| s.span.trace_id == c.span.trace_id).collect();
            trace.sort_by_key(|s| s.span.start_time_unix_nano);
            eprintln!("trace {} of the put at index {index}:", hex(&c.span.trace_id));
            for s in trace {
                let ms = (s.span.end_time_unix_nano.saturating_sub(s.span.start_time_unix_nano)) as f64 / 1e6;
                eprintln!(
                    "  {:<20} {:<10} {:<22} {ms:>8.3} ms  links={}",
                    s.service,
                    s.instance.as_deref().unwrap_or("-"),
                    s.span.name,
                    s.span.links.len()
                );
            }
        }
    }
    if let Err(e) = result {
        panic!("{e}\nreceived {} spans; kinds: {:#?}", spans.len(), span_kinds(&spans));
    }
}

/// All three requirements, or what is still missing.
fn check(spans: &[Received], first_term: u64, put: &WriteOutcome) -> Result<(), String> {
    let won = spans.iter().find(|s| {
        s.span.name == "raft.election"
            && s.str("outcome") == Some("won")
            && s.int("term").is_some_and(|t| t > first_term as i64)
    });
    if won.is_none() {
        return Err(format!("no raft.election won after term {first_term}"));
    }

    let index = put.index as i64;
    let client_span = spans
        .iter()
        .find(|s| s.service == CLIENT_SERVICE && s.span.name == "kv.put" && s.int("index") == Some(index))
        .ok_or_else(|| format!("no client kv.put span with index {index}"))?;
    let trace_id = client_span.span.trace_id.clone();
    let nodes: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.span.trace_id == trace_id && s.service == "raftkv-server")
        .filter_map(|s| s.instance.as_deref())
        .collect();
    if nodes.len() < 2 {
        return Err(format!("trace {} has server spans from {nodes:?} only", hex(&trace_id)));
    }
    let in_trace: BTreeSet<&str> =
        spans.iter().filter(|s| s.span.trace_id == trace_id).map(|s| s.span.name.as_str()).collect();
    for name in ["kv.put", "raft.propose", "raft.replicate", "raft.append_entries", "raft.commit", "kv.apply"] {
        if !in_trace.contains(name) {
            return Err(format!("trace {} has no {name} span (it has {in_trace:?})", hex(&trace_id)));
        }
    }

    let commits: Vec<&Received> = spans
        .iter()
        .filter(|s| {
            s.span.name == "raft.commit"
                && s.int("first_index").is_some_and(|f| f <= index)
                && s.int("last_index").is_some_and(|l| l >= index)
        })
        .collect();
    if commits.is_empty() {
        return Err(format!("no raft.commit span covers index {index}"));
    }
    let joined =
        commits.iter().any(|c| c.span.trace_id == trace_id || c.span.links.iter().any(|l| l.trace_id == trace_id));
    if !joined {
        return Err(format!("no raft.commit covering index {index} is in or linked to the put's trace"));
    }
    if commits.iter().any(|c| c.int("term") != Some(put.term as i64)) {
        return Err("a raft.commit covering the put has another term".into());
    }
    Ok(())
}
