//! The raftkv node runtime.
//!
//! Its job: be the only place where the pieces meet. One tokio task (the Raft loop)
//! owns the Raft core ([`raftkv_raft::RawNode`]), the state machine
//! ([`raftkv_kv::KvStateMachine`]) and the handle of the storage writer
//! ([`raftkv_storage::GroupCommitWriter`]); the network and the disk work around it
//! through bounded channels:
//!
//! - the tarpc service ([`raftkv_rpc::RaftKv`]) turns client requests and peer message
//!   batches into inputs of the loop and waits for answers within each request's
//!   deadline;
//! - one task per peer batches outbound messages onto one reused connection;
//! - the group-commit writer thread fsyncs; while it does, new inputs queue up and share
//!   the next fsync.
//!
//! What it must never do:
//! - acknowledge a write before it is committed, i.e. durable (fsynced) on a majority —
//!   this node's own entries and vote are durable before it sends the messages that
//!   depend on them;
//! - block the Raft loop on the network: every send to a peer is a non-blocking enqueue
//!   that drops the message (Raft retransmits) when the peer is slow;
//! - panic on network or disk input: bad messages are refused, and a storage failure or
//!   an unusable snapshot stops the node with an error instead.
//!
//! Membership: a data dir belongs to one cluster and one node id for good, written in
//! its meta file when the node founds a cluster (`--peers`; the cluster id is a stable
//! hash of `--cluster-token` and the founding members) or joins one (`--join`: the
//! leader adds it as a learner and promotes it once caught up). Every peer batch
//! carries the cluster id, and a node refuses batches of another cluster. Members'
//! addresses travel in their ConfChange entries, so peer links follow the replicated
//! configuration, not the flags. A removed node writes a tombstone and stops, and never
//! starts on that data dir again; ids are never reused.

pub mod admin;
mod args;
mod batch;
mod check_args;
mod conn;
mod dir_lock;
mod faults;
mod forward;
mod identity;
mod log_limit;
mod metrics;
mod new_cluster;
mod peer;
mod process_metrics;
mod raft_loop;
mod service;
mod start;
mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use raftkv_rpc::RaftKv;
use raftkv_rpc::tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use admin::AdminState;
pub use args::{ClusterConfig, FsyncMode, LogFormat, NodeConfig, Peer, ServerArgs, parse_peer, tls_files};
pub use check_args::check_args;

/// Raft message batches from peers waiting for the loop; when full, peers get `Busy`.
pub(crate) const RAFT_QUEUE: usize = 1024;
/// Client requests waiting for the loop; when full, clients get `Overloaded`.
pub(crate) const CLIENT_QUEUE: usize = 4096;
/// Requests one connection may have in flight.
const MAX_REQUESTS_PER_CONNECTION: usize = 1024;

/// The runtime `args` ask for: tokio's multi-threaded runtime with `--worker-threads`
/// threads (tokio's default, one per CPU available, without it).
pub fn runtime(args: &ServerArgs) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.worker_threads {
        builder.worker_threads(n.into());
    }
    builder.build()
}

/// Runs a node until SIGTERM or Ctrl-C, as `raftkv-server` does: sets up logging and
/// OpenTelemetry export ([`init_telemetry`]), resolves the flags, binds `--listen` and
/// calls [`serve`]; flushes the spans still queued before it returns. With
/// `--check-args` it prints what the flags resolve to ([`check_args`]) and returns.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    if args.check_args {
        let resolved = check_args(&args).map_err(|e| anyhow::anyhow!("invalid arguments: {e}"))?;
        print!("{resolved}");
        return Ok(());
    }
    let telemetry = init_telemetry(&args);
    let result = run_node(args).await;
    // Blocking (the last export); the exporter's connection lives on this runtime.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

/// Installs logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, trace export with
/// `service.name` `raftkv-server` (unless `OTEL_SERVICE_NAME` says otherwise) and
/// `service.instance.id` the pod name (`--pod-name`, else `$POD_NAME`) or
/// `node-<id>`. Call from inside the tokio runtime; keep the result until exit.
pub fn init_telemetry(args: &ServerArgs) -> raftkv_telemetry::Telemetry {
    let log = match args.log_format {
        LogFormat::Text => raftkv_telemetry::LogOutput::Text,
        LogFormat::Json => raftkv_telemetry::LogOutput::Json,
    };
    let instance = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok().filter(|p| !p.trim().is_empty()))
        .or_else(|| args.id.map(|id| format!("node-{id}")));
    let mut opts = raftkv_telemetry::Options::new("raftkv-server", log);
    opts.instance_id = instance;
    raftkv_telemetry::init(opts)
}

async fn run_node(args: ServerArgs) -> anyhow::Result<()> {
    let cfg = args.resolve().map_err(|e| anyhow::anyhow!("invalid arguments: {e}"))?;
    let listener =
        TcpListener::bind(&cfg.listen).await.with_context(|| format!("cannot listen on --listen {}", cfg.listen))?;
    let admin = AdminState::new();
    // Bound before storage opens, so /livez answers while a long log is recovered.
    let admin_task = match &args.admin_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
            tracing::info!(admin_listen = %addr, "serving /livez, /readyz and /metrics");
            Some(tokio::spawn(admin::serve_http(l, admin.clone())))
        }
        None => None,
    };
    let result = serve_with_admin(cfg, listener, admin, shutdown_signal()).await;
    if let Some(task) = admin_task {
        task.abort();
    }
    result
}

/// Installs the global tracing subscriber, writing to stderr (filter from `RUST_LOG`,
/// default `info`).
/// Does nothing if one is already installed (e.g. by an embedding program or a test).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("shutting down: received SIGTERM"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("shutting down: received Ctrl-C"),
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch for SIGTERM; only Ctrl-C stops the node"),
        }
    }
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::info!("shutting down: received Ctrl-C");
    } else {
        std::future::pending::<()>().await;
    }
}

/// Runs node `cfg.id` on an already bound `listener` until `shutdown` resolves, then
/// hands off leadership if it leads (waiting at most two election timeouts), stops
/// serving and flushes storage. Also returns (`Ok`) once the node was removed from its
/// cluster: it then leaves a tombstone in the data dir, which refuses later starts.
/// Returns an error if storage fails or cannot be opened, the data dir belongs to
/// another node or was removed, or joining fails.
pub async fn serve(
    cfg: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with_admin(cfg, listener, AdminState::new(), shutdown).await
}

/// [`serve`], reporting readiness and metrics to `admin` (what the admin port shows):
/// ready once storage is recovered, the node belongs to a cluster (a joining node has
/// been added) and the RPC port serves, whether or not a leader is known.
pub async fn serve_with_admin(
    cfg: NodeConfig,
    listener: TcpListener,
    admin: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("reading the listen address")?;
    start::announce(&cfg, local)?;
    let mut opened = start::open(&cfg).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut identity = tokio::select! {
        identity = identity::establish(&cfg, opened.fs(), opened.has_log()) => identity?,
        () = &mut shutdown => {
            tracing::info!(id = cfg.id, "shutting down before this node belonged to a cluster");
            return Ok(());
        }
    };
    let replica = start::recover(&cfg, &mut opened, &mut identity)?;
    let fs = opened.fs_handle();
    let node = start::spawn(&cfg, listener, opened, replica, &identity, admin)?;
    start::run(&cfg, fs.as_ref(), &identity, node, shutdown).await
}

/// Accepts connections and serves each on its own task (within the bounds of
/// [`conn`]) until `stop` says how long open connections may still finish (their
/// clients hang up) before they are cut.
///
/// The TLS handshake (if any) runs on the connection's own task, never here, so a slow
/// handshake does not hold up accepting others; it counts toward the connection's
/// first-request timeout.
pub(crate) async fn accept_loop(
    incoming: raftkv_rpc::Listener,
    service: service::Service,
    stop: oneshot::Receiver<Duration>,
) {
    let mut connections = conn::Connections::default();
    let mut stop = std::pin::pin!(stop);
    let grace = loop {
        tokio::select! {
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            next = incoming.accept() => match next {
                Ok(accepted) => admit(&mut connections, accepted, &service),
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = connections.reap(), if !connections.is_empty() => {}
        }
    };
    drop(incoming);
    connections.close(grace).await;
}

/// Serves `accepted`, making room for it first (see [`conn::Connections::make_room`]).
fn admit(connections: &mut conn::Connections, accepted: raftkv_rpc::Accepted, service: &service::Service) {
    connections.make_room();
    let service = service.clone();
    connections.spawn(move |activity| serve_connection(accepted, service, activity));
}

/// Establishes one accepted connection (the TLS handshake, if on) and serves it with a
/// [`service::Service`] that knows who the peer is. Notes each complete request in
/// `activity`.
async fn serve_connection(accepted: raftkv_rpc::Accepted, mut service: service::Service, activity: conn::Activity) {
    let (transport, peer) = match accepted.establish().await {
        Ok(established) => established,
        Err(e) => {
            if let Some(suppressed) = service.shared.refused_log.admit() {
                tracing::warn!(error = %e, suppressed, "refused a connection");
            }
            return;
        }
    };
    service.peer = peer;
    let transport = transport.inspect(move |m| {
        if m.is_ok() {
            activity.request();
        }
    });
    BaseChannel::with_defaults(transport)
        .max_concurrent_requests(MAX_REQUESTS_PER_CONNECTION)
        .execute(service.serve())
        // The connection's requests run inside its own task, not one task each: the
        // answers of one commit wake it once and leave in one write, with no spawn
        // and no wake-up across threads per request. tarpc bounds them (at most
        // MAX_REQUESTS_PER_CONNECTION in flight); no bound here, so that the stream,
        // which also writes the answers, is always polled.
        .for_each_concurrent(None, |request| request)
        .await;
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args_with(extra: &[&str]) -> Result<ServerArgs, clap::Error> {
        let base = ["raftkv-server", "--id", "1", "--listen", "127.0.0.1:1", "--data-dir", "d"];
        ServerArgs::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn worker_threads_sizes_the_runtime_and_zero_is_refused() {
        for n in [1, 3] {
            let args = args_with(&["--worker-threads", &n.to_string()]).unwrap();
            assert_eq!(runtime(&args).unwrap().metrics().num_workers(), n);
        }
        let e = args_with(&["--worker-threads", "0"]).unwrap_err().to_string();
        assert!(e.contains("--worker-threads") && e.contains("1..=1024"), "{e}");
    }
}
