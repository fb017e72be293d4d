//! A traced test setup: a real OTLP receiver, this process exporting to it as a
//! client service, and three `raftkv-server` processes exporting to it.

#![allow(dead_code)]

use raftkv_client::local::{LocalCluster, LocalClusterOptions, ServerCommand};
use raftkv_telemetry::{LogOutput, Options, Telemetry, TelemetryConfig};

use super::otlp::{Store, start_receiver};

/// What a traced test holds; the data dir lives as long as it does.
pub struct TracedCluster {
    pub store: Store,
    pub telemetry: Telemetry,
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
}

/// Starts the receiver, installs this process's telemetry as `client_service`, and
/// starts three servers (50 ms ticks) that export to the receiver.
pub async fn start_traced_cluster(client_service: &str, server_bin: &str) -> TracedCluster {
    let (addr, store) = start_receiver().await;
    let endpoint = format!("http://{addr}");
    let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()), ("OTEL_SERVICE_NAME", client_service.to_string())];
    let cfg = TelemetryConfig::from_lookup(client_service, |k| {
        vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.clone())
    });
    let telemetry =
        raftkv_telemetry::init_with(Options::new(client_service, LogOutput::TextIfRustLog).instance_id("test"), cfg);
    assert!(telemetry.is_exporting(), "the test's own telemetry must be installed");

    let dir = tempfile::tempdir().expect("tempdir");
    let command =
        ServerCommand::binary(server_bin).env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint).env("RUST_LOG", "info");
    let cluster = LocalCluster::start(LocalClusterOptions {
        nodes: 3,
        base_port: None,
        dir: dir.path().to_path_buf(),
        command,
        extra_args: vec!["--tick-ms".into(), "50".into()],
    })
    .expect("start the cluster");
    TracedCluster { store, telemetry, cluster, dir }
}

/// Exports this process's spans now (blocking, so off the runtime's threads).
pub async fn flush(telemetry: Telemetry) -> Telemetry {
    tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    })
    .await
    .expect("flush")
}

/// Stops the servers, then this process's telemetry.
pub async fn stop(mut cluster: LocalCluster, telemetry: Telemetry) {
    let _ = cluster.stop_all(std::time::Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.expect("telemetry shutdown");
}

/// Every kind of span received (service/instance/name), for a failure message.
pub fn span_kinds(spans: &[super::otlp::Received]) -> Vec<String> {
    let mut names: Vec<String> =
        spans.iter().map(|s| format!("{}/{:?}/{}", s.service, s.instance, s.span.name)).collect();
    names.sort();
    names.dedup();
    names
}
