//! A collector that is not there must not slow writes or stop a node: three
//! `raftkv-server` processes without an endpoint, then three pointed at a closed port,
//! each taking the same sequential writes; the median write latency may not grow
//! beyond 3× + 20 ms, and every node must still run. Also: without an endpoint the
//! nodes print nothing about exporting; with a dead one, each reports it once after
//! at least three failed exports (waited for in the log, not slept for).

use std::time::{Duration, Instant};

use raftkv_client::ClientOptions;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, ServerCommand, poll_until};

const WRITES: usize = 40;

/// Failed export attempts each node must log (at debug level) in the dead-collector
/// run before its single report is checked: a report counted after one failure would
/// prove nothing about "once".
const FAILURES: usize = 3;

/// How long the failures may take to show up: exports run every 500 ms.
const FAILURE_WAIT: Duration = Duration::from_secs(30);

fn read_logs(dir: &std::path::Path) -> Vec<String> {
    (1..=3).map(|id| std::fs::read_to_string(dir.join(format!("node-{id}.log"))).unwrap_or_default()).collect()
}

/// Whether every node has logged at least `n` failed span exports.
fn each_failed(dir: &std::path::Path, n: usize) -> Result<(), String> {
    let counts: Vec<usize> = read_logs(dir).iter().map(|log| log.matches("span export failed").count()).collect();
    if counts.iter().all(|&c| c >= n) { Ok(()) } else { Err(format!("failed exports per node: {counts:?}")) }
}

/// Median latency of `WRITES` sequential puts, after the nodes stayed up. When
/// `failures` is set, first waits (writing, so there are spans to export) until each
/// node has logged that many failed exports.
async fn run(dir: &std::path::Path, command: ServerCommand, failures: Option<usize>) -> (Duration, Vec<String>) {
    let mut cluster = LocalCluster::start(LocalClusterOptions {
        nodes: 3,
        base_port: None,
        dir: dir.to_path_buf(),
        command,
        extra_args: vec!["--tick-ms".into(), "50".into()],
    })
    .expect("start the cluster");
    cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let client = cluster.client(ClientOptions::with_timeout(Duration::from_secs(10)));
    client.put("warm-up", "x").await.expect("warm-up write");
    let mut latencies = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let start = Instant::now();
        client.put(format!("k{i}"), "v").await.expect("write");
        latencies.push(start.elapsed());
    }
    if let Some(n) = failures {
        poll_until(FAILURE_WAIT, "failed span exports on every node", || async {
            client.put("more", "x").await.map_err(|e| format!("write: {e}"))?;
            each_failed(dir, n)
        })
        .await
        .expect("every node's exports fail");
    }
    for id in 1..=3 {
        assert!(cluster.node_mut(id).expect("node").is_running(), "node {id} stopped");
    }
    client.put("after", "x").await.expect("a write after the export failures");
    cluster.stop_all(Duration::from_secs(10)).await.expect("stop");
    latencies.sort();
    (latencies[WRITES / 2], read_logs(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_does_not_slow_writes() {
    let bin = env!("CARGO_BIN_EXE_raftkv-server");
    let plain = tempfile::tempdir().expect("tempdir");
    let command = ServerCommand::binary(bin)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        .env("RUST_LOG", "info");
    let (p50_plain, logs) = run(plain.path(), command, None).await;
    for log in &logs {
        assert!(!log.contains("export"), "a node without an endpoint mentioned exporting:\n{log}");
    }

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dead = tempfile::tempdir().expect("tempdir");
    let command = ServerCommand::binary(bin)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{closed}"))
        .env("RUST_LOG", "info,raftkv_telemetry=debug");
    let (p50_dead, logs) = run(dead.path(), command, Some(FAILURES)).await;
    for log in &logs {
        let reports = log.matches("cannot export spans").count();
        assert_eq!(reports, 1, "each node reports the dead collector once:\n{log}");
    }

    eprintln!("median write latency: {p50_plain:?} without an endpoint, {p50_dead:?} with a dead one");
    assert!(
        p50_dead <= p50_plain * 3 + Duration::from_millis(20),
        "a dead collector slowed writes: median {p50_dead:?} vs {p50_plain:?}"
    );
}
