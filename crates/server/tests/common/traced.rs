//! A traced test setup: a real OTLP receiver, this process exporting to it as a
//! client service, and three `raftkv-server` processes exporting to it.

#![allow(dead_code)]

use std::time::Duration;

use raftkv_client::local::{LocalCluster, LocalClusterOptions, NodePlacement, ServerCommand, poll_until};
use raftkv_client::{Client, ClientOptions, Fault, FaultRequest, NodeId};
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
    start_traced_cluster_with(client_service, server_bin, &[], &[]).await
}

/// [`start_traced_cluster`] with `extra_args` for every server and `per_node[i]`'s
/// for node `i + 1`.
pub async fn start_traced_cluster_with(
    client_service: &str,
    server_bin: &str,
    extra_args: &[&str],
    per_node: &[&[&str]],
) -> TracedCluster {
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
    let mut args = vec!["--tick-ms".to_string(), "50".to_string()];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let placement: Vec<NodePlacement> = per_node
        .iter()
        .map(|a| NodePlacement { extra_args: a.iter().map(|a| a.to_string()).collect(), ..NodePlacement::default() })
        .collect();
    let options =
        LocalClusterOptions { nodes: 3, base_port: None, dir: dir.path().to_path_buf(), command, extra_args: args };
    let cluster = LocalCluster::start_placed(options, &placement).expect("start the cluster");
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

pub fn client_of(cluster: &LocalCluster) -> Client {
    Client::new(cluster.endpoints(), ClientOptions::with_timeout(Duration::from_secs(15))).expect("a client")
}

pub async fn partition(client: &Client, node: NodeId, secs: u64) {
    let request = FaultRequest::Inject { fault: Fault::Partition { peers: Vec::new() }, duration_ms: secs * 1000 };
    let reply = client.fault(node, request).await.expect("the partition is injected");
    assert_eq!((reply.node, reply.active.len()), (node, 1), "{reply:?}");
}

/// The leader among `ids`, once one of them says it leads in a term above `above`.
pub async fn leader_among(client: &Client, cluster: &LocalCluster, ids: &[NodeId], above: u64) -> (NodeId, u64) {
    poll_until(Duration::from_secs(30), "a new leader", || async {
        for node in cluster.nodes().iter().filter(|n| ids.contains(&n.id())) {
            if let Ok(s) = client.status(node.addr()).await
                && s.role == "leader"
                && s.term > above
            {
                return Ok((s.id, s.term));
            }
        }
        Err("none leads yet".to_string())
    })
    .await
    .expect("the others elect a leader")
}

/// Waits until node `id`, cut off from its peers, no longer says it leads (it stepped
/// down by itself: check-quorum).
pub async fn stepped_down(client: &Client, cluster: &LocalCluster, id: NodeId) {
    let addr = cluster.node(id).expect("the node's process").addr().to_string();
    poll_until(Duration::from_secs(30), "the cut-off leader stepping down", || async {
        match client.status(&addr).await {
            Ok(s) if s.role != "leader" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("the cut-off leader steps down: it lost its quorum");
}
