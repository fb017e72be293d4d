//! `raftkv up`: a local cluster of server processes until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, NodePlacement, ServerCommand};

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
    /// Node i serves /livez, /readyz and /metrics on 127.0.0.1:(admin-base-port + i - 1).
    /// 0 turns the admin ports off.
    #[arg(long, default_value_t = 9001, value_name = "PORT")]
    pub admin_base_port: u16,
    /// How long to wait for a leader to be elected.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub wait: Duration,
}

/// The ports `base..base+nodes` on 127.0.0.1, each checked free; `flag` names them.
fn free_ports_from(base: u16, nodes: u16, flag: &str) -> Result<Vec<u16>, CliError> {
    let mut ports = Vec::with_capacity(usize::from(nodes));
    for i in 0..nodes {
        let port =
            base.checked_add(i).ok_or_else(|| CliError::failed(format!("error: {flag} {base} + {i} is not a port")))?;
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(CliError::failed(format!(
                "error: port {port} on 127.0.0.1 is not free ({e}); is a cluster already running? Use {flag}."
            )));
        }
        ports.push(port);
    }
    Ok(ports)
}

/// Starts the nodes: RPC on the base port's range, admin on the admin range (if any).
fn start_nodes(args: &UpArgs, admin_ports: &[u16]) -> Result<LocalCluster, CliError> {
    let command = ServerCommand::locate().map_err(|e| CliError::failed(format!("error: {e}")))?;
    let placement: Vec<NodePlacement> = admin_ports
        .iter()
        .map(|p| NodePlacement {
            extra_args: vec!["--admin-listen".into(), format!("127.0.0.1:{p}")],
            ..NodePlacement::default()
        })
        .collect();
    let opts = LocalClusterOptions {
        nodes: usize::from(args.nodes),
        base_port: Some(args.base_port),
        dir: args.data_dir.clone(),
        command,
        extra_args: Vec::new(),
    };
    LocalCluster::start_placed(opts, &placement)
        .map_err(|e| CliError::failed(format!("error: cannot start the cluster: {e}")))
}

fn print_nodes(cluster: &LocalCluster, args: &UpArgs, admin_ports: &[u16]) {
    println!("started {} nodes; data and logs in {}", args.nodes, args.data_dir.display());
    for (i, node) in cluster.nodes().iter().enumerate() {
        let metrics = admin_ports.get(i).map_or(String::new(), |p| format!("  metrics http://127.0.0.1:{p}/metrics"));
        println!(
            "  node {}  {}  pid {}  log {}{metrics}",
            node.id(),
            node.addr(),
            node.pid().map_or("-".into(), |p| p.to_string()),
            node.log_path().display()
        );
    }
}

pub async fn command(_global: &Global, args: UpArgs) -> CliResult {
    let n = usize::from(args.nodes);
    free_ports_from(args.base_port, args.nodes, "--base-port")?;
    let admin_ports = match args.admin_base_port {
        0 => Vec::new(),
        base => free_ports_from(base, args.nodes, "--admin-base-port")?,
    };
    if let (Some(first), Some(last)) = (admin_ports.first(), admin_ports.last())
        && *last >= args.base_port
        && u32::from(*first) < u32::from(args.base_port) + u32::from(args.nodes)
    {
        return Err(CliError::failed(format!(
            "error: --admin-base-port {first} overlaps the RPC ports from --base-port {}",
            args.base_port
        )));
    }
    let mut cluster = start_nodes(&args, &admin_ports)?;
    print_nodes(&cluster, &args, &admin_ports);
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
