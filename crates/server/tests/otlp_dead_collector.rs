//! A collector that is not there must not slow writes or stop a node: three
//! `raftkv-server` processes without an endpoint, then three pointed at a closed port,
//! each taking the same sequential writes; the median write latency may not grow
//! beyond 3× + 20 ms, and every node must still run. Also: without an endpoint the
//! nodes print nothing about exporting; with a dead one, each reports it once.

use std::time::{Duration, Instant};

use raftkv_client::ClientOptions;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, ServerCommand};

const WRITES: usize = 40;

/// Median latency of `WRITES` sequential puts, after the nodes stayed up.
async fn run(dir: &std::path::Path, command: ServerCommand) -> (Duration, Vec<String>) {
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
    // Long enough for several export attempts (every 500 ms) to fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in 1..=3 {
        assert!(cluster.node_mut(id).expect("node").is_running(), "node {id} stopped");
    }
    client.put("after", "x").await.expect("a write after the export failures");
    cluster.stop_all(Duration::from_secs(10)).await.expect("stop");
    let logs =
        (1..=3).map(|id| std::fs::read_to_string(dir.join(format!("node-{id}.log"))).unwrap_or_default()).collect();
    latencies.sort();
    (latencies[WRITES / 2], logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_does_not_slow_writes() {
    let bin = env!("CARGO_BIN_EXE_raftkv-server");
    let plain = tempfile::tempdir().expect("tempdir");
    let command = ServerCommand::binary(bin)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        .env("RUST_LOG", "info");
    let (p50_plain, logs) = run(plain.path(), command).await;
    for log in &logs {
        assert!(!log.contains("export"), "a node without an endpoint mentioned exporting:\n{log}");
    }

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dead = tempfile::tempdir().expect("tempdir");
    let command = ServerCommand::binary(bin)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{closed}"))
        .env("RUST_LOG", "info");
    let (p50_dead, logs) = run(dead.path(), command).await;
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
