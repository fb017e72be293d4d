//! `raftkv up`: a local cluster of server processes until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, ServerCommand};

use crate::{CliError, CliResult, Global};
use raftkv_client::duration::parse_duration;

/// How long nodes get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Parent of each node's data directory (`node-<id>`) and log (`node-<id>.log`).
    /// Existing data is reused, so a cluster can be stopped and started again.
    #[arg(long, default_value = "./raftkv-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Number of nodes (ids 1..=N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=99))]
    pub nodes: u16,
    /// Node i listens on 127.0.0.1:(base-port + i - 1).
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// How long to wait for a leader to be elected.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub wait: Duration,
}

pub async fn command(_global: &Global, args: UpArgs) -> CliResult {
    let n = usize::from(args.nodes);
    for i in 0..args.nodes {
        let port = args
            .base_port
            .checked_add(i)
            .ok_or_else(|| CliError::failed(format!("error: --base-port {} + {i} is not a port", args.base_port)))?;
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(CliError::failed(format!(
                "error: port {port} on 127.0.0.1 is not free ({e}); is a cluster already running? Use --base-port."
            )));
        }
    }
    let command = ServerCommand::locate().map_err(|e| CliError::failed(format!("error: {e}")))?;
    let mut cluster = LocalCluster::start(LocalClusterOptions {
        nodes: n,
        base_port: Some(args.base_port),
        dir: args.data_dir.clone(),
        command,
        extra_args: Vec::new(),
    })
    .map_err(|e| CliError::failed(format!("error: cannot start the cluster: {e}")))?;

    println!("started {n} nodes; data and logs in {}", args.data_dir.display());
    for node in cluster.nodes() {
        println!(
            "  node {}  {}  pid {}  log {}",
            node.id(),
            node.addr(),
            node.pid().map_or("-".into(), |p| p.to_string()),
            node.log_path().display()
        );
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let leader = tokio::select! {
        r = cluster.wait_for_leader(args.wait) => r,
        _ = &mut shutdown => Err("interrupted".to_string()),
    };
    let leader = match leader {
        Ok(l) => l,
        Err(e) => {
            let _ = cluster.stop_all(STOP_GRACE).await;
            return Err(CliError::failed(format!(
                "error: no leader: {e}; see the logs in {}",
                args.data_dir.display()
            )));
        }
    };
    let endpoints = cluster.endpoints().join(",");
    println!("leader: node {} (term {})", leader.id, leader.term);
    println!("endpoints: {endpoints}");
    println!("export RAFTKV_ENDPOINTS={endpoints}");
    println!("press Ctrl-C to stop");

    let mut reported = std::collections::BTreeSet::new();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = check.tick() => {
                for id in 1..=args.nodes as u64 {
                    if let Some(node) = cluster.node_mut(id)
                        && !node.is_running()
                        && reported.insert(id)
                    {
                        eprintln!("node {id} exited; see {}", node.log_path().display());
                    }
                }
            }
        }
    }
    println!("stopping {n} nodes (SIGTERM, up to {STOP_GRACE:?} each)");
    cluster.stop_all(STOP_GRACE).await.map_err(|e| CliError::failed(format!("error: stopping the nodes: {e}")))?;
    println!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
