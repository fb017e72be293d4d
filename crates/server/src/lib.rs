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
mod cluster;
mod conn;
mod dir_lock;
mod log_limit;
mod membership;
mod new_cluster;
mod node;
mod peer;
mod service;
mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt;
use raftkv_kv::KvStateMachine;
use raftkv_raft::{ConfState, Config, RawNode};
use raftkv_rpc::RaftKv;
use raftkv_rpc::tarpc::server::{BaseChannel, Channel};
use raftkv_storage::{
    DiskStorage, FileSystem, FsyncPolicy, GroupCommitOptions, GroupCommitWriter, StorageOptions, Tombstone,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use admin::AdminState;
pub use args::{ClusterConfig, FsyncMode, LogFormat, NodeConfig, Peer, ServerArgs, parse_peer, tls_files};

use crate::cluster::Start;
use crate::membership::{MemberContext, Membership};
use crate::node::Stopped;

/// Raft message batches from peers waiting for the loop; when full, peers get `Busy`.
const RAFT_QUEUE: usize = 1024;
/// Client requests waiting for the loop; when full, clients get `Overloaded`.
const CLIENT_QUEUE: usize = 4096;
/// Requests one connection may have in flight.
const MAX_REQUESTS_PER_CONNECTION: usize = 1024;

/// Runs a node until SIGTERM or Ctrl-C, as `raftkv-server` does: sets up logging and
/// OpenTelemetry export ([`init_telemetry`]), resolves the flags, binds `--listen` and
/// calls [`serve`]; flushes the spans still queued before it returns.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
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
    tracing::info!(
        id = cfg.id,
        listen = %local,
        advertise = %cfg.cluster.advertise,
        peers = ?cfg.peers,
        join = ?cfg.cluster.join,
        data_dir = %cfg.data_dir.display(),
        tick_ms = cfg.tick.as_millis() as u64,
        election_ticks = cfg.election_ticks,
        heartbeat_ticks = cfg.heartbeat_ticks,
        snapshot_entries = cfg.snapshot_entries,
        "starting raftkv node"
    );
    match &cfg.tls {
        Some(tls) => {
            tracing::info!(files = ?tls.files(), "mutual TLS on: peers and clients need a certificate from the CA")
        }
        None if !local.ip().is_loopback() => tracing::warn!(
            listen = %local,
            "serving PLAINTEXT on a non-loopback address: anyone who can reach it can read, write, vote and append. \
             Use --tls-cert, --tls-key and --tls-ca (see `raftkv certs`) outside a trusted network"
        ),
        None => {}
    }
    if cfg.fsync == FsyncPolicy::Never {
        tracing::warn!(
            "!!! --fsync never: writes are acknowledged WITHOUT being flushed to disk; a power failure or \
             kernel crash can lose acknowledged data. Use this for benchmarks only !!!"
        );
    }
    if cfg.cluster.join.is_empty() && !cfg.peers.contains_key(&cfg.id) {
        anyhow::bail!("node {} is not among the peers {:?}", cfg.id, cfg.peers);
    }
    // Before anything in the dir is read; held until this function returns.
    let dir_lock = dir_lock::lock(&cfg.data_dir)?;
    tracing::debug!(lock = %dir_lock.path().display(), "locked the data dir");
    // The file system of every data-dir file: the real one unless a test injects faults.
    let opts = StorageOptions { fsync: cfg.fsync, ..cfg.storage.clone().unwrap_or_default() };
    let fs: Arc<dyn FileSystem> = opts.fs.clone();
    cluster::check_tombstone(fs.as_ref(), &cfg.data_dir)?;

    let dir = cfg.data_dir.clone();
    let (storage, recovered) = tokio::task::spawn_blocking(move || DiskStorage::open(&dir, opts))
        .await
        .context("the storage open task failed")?
        .with_context(|| format!("cannot open storage in --data-dir {}", cfg.data_dir.display()))?;
    let has_log = recovered.snapshot.is_some() || !recovered.entries.is_empty();
    let mut shutdown = std::pin::pin!(shutdown);
    let identity = tokio::select! {
        identity = cluster::establish(&cfg, fs.as_ref(), has_log) => identity?,
        () = &mut shutdown => {
            tracing::info!(id = cfg.id, "shutting down before this node belonged to a cluster");
            return Ok(());
        }
    };
    let id = identity.id;
    let mut membership = Membership::new(cfg.peers.clone());
    let kv = match &recovered.snapshot {
        Some(snap) => {
            let (section, data) = membership::unwrap_snapshot(&snap.data).map_err(|e| {
                anyhow::anyhow!("the snapshot at index {} on disk cannot be restored: {e}", snap.meta.index)
            })?;
            membership.restore(section.unwrap_or_default());
            KvStateMachine::restore(&data)
                .with_context(|| format!("the snapshot at index {} on disk cannot be restored", snap.meta.index))?
        }
        None => KvStateMachine::new(),
    };
    for e in &recovered.entries {
        membership.observe(e);
    }
    tracing::info!(
        id,
        cluster_id = format!("{:016x}", identity.cluster_id),
        term = recovered.hard_state.term,
        commit = recovered.hard_state.commit,
        snapshot_index = recovered.snapshot.as_ref().map_or(0, |s| s.meta.index),
        entries = recovered.entries.len(),
        "recovered storage"
    );
    let raft_cfg = Config {
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        seed: random_seed(id),
        ..Config::new(id)
    };
    let max_promotion_lag = raft_cfg.max_promotion_lag;
    // No log: a first start, or a wiped disk that lost votes and acknowledgements. Both
    // recover (see raftkv_raft::Recovered::lost_state); founders may learn the cluster
    // is brand new (new_cluster).
    let recovered = raftkv_raft::Recovered {
        hard_state: recovered.hard_state,
        snapshot: recovered.snapshot,
        entries: recovered.entries,
        lost_state: !has_log,
    };
    let founders = (cfg.cluster.join.is_empty() && cfg.peers.contains_key(&id)).then(|| cfg.peers.clone());
    let raw = match identity.start {
        Start::Bootstrap(changes) => RawNode::bootstrap_with(raft_cfg, changes, recovered)?,
        // The flags' members matter only as the base of a log older than logged
        // configurations; a node without a log must not bootstrap.
        Start::Resume if has_log => {
            RawNode::new(raft_cfg, ConfState::with_voters(cfg.peers.keys().copied()), recovered)?
        }
        Start::Resume => RawNode::new(raft_cfg, ConfState::default(), recovered)?,
        Start::Joined(reply) => {
            for m in reply.members.members {
                membership.learn(m.id, MemberContext { addr: m.addr, auto_promote: m.auto_promote });
            }
            RawNode::new(raft_cfg, ConfState::default(), recovered)?
        }
    };
    let writer =
        GroupCommitWriter::spawn(storage, GroupCommitOptions::default()).context("cannot start the storage writer")?;

    let shared = Arc::new(service::Shared::new(identity.cluster_id));
    let (removed_tx, removed_rx) = mpsc::channel(16);
    let (raft_tx, raft_rx) = tokio::sync::mpsc::channel(RAFT_QUEUE);
    let link = peer::LinkContext {
        node: id,
        cluster_id: identity.cluster_id,
        removed_tx,
        tls: cfg.tls.clone(),
        raft_tx: raft_tx.clone(),
    };
    let (client_tx, client_rx) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
    let loop_cfg = node::LoopConfig {
        tick: cfg.tick,
        election_ticks: cfg.election_ticks,
        election_timeout: cfg.election_timeout(),
        snapshot_entries: cfg.snapshot_entries,
        max_promotion_lag,
    };
    let raw_recovering = raw.status().recovering;
    let node = node::Node::new(raw, kv, writer, membership, shared.clone(), link, loop_cfg);
    let service = service::Service {
        id,
        shared,
        raft_tx,
        client_tx: client_tx.clone(),
        peer: raftkv_rpc::PeerIdentity::Plaintext,
    };
    let confirming = match founders {
        Some(founders) if raw_recovering => {
            let task = new_cluster::confirm(id, identity.cluster_id, founders, cfg.tls.clone(), client_tx.clone());
            Some(tokio::spawn(task))
        }
        _ => None,
    };
    let incoming = raftkv_rpc::listen_with(listener, cfg.tls.as_ref());
    let (stop_serving, serving_stopped) = oneshot::channel();
    let server = tokio::spawn(accept_loop(incoming, service, serving_stopped));
    admin.set_id(id);
    admin.set_ready();

    // On a worker thread, not this (block_on) one: the loop wakes a request task per
    // committed write, and a wake from outside the runtime's workers goes through the
    // shared queue and a futex wake-up each time (~5% of a node's CPU under load).
    let (stop_loop, loop_stopping) = oneshot::channel::<()>();
    let loop_shutdown = async move {
        let _ = loop_stopping.await;
    };
    let mut run = tokio::spawn(node.with_admin(admin).run(raft_rx, client_rx, removed_rx, loop_shutdown));
    let result = tokio::select! {
        result = &mut run => result,
        () = &mut shutdown => {
            let _ = stop_loop.send(());
            run.await
        }
    };
    if let Some(task) = confirming {
        task.abort();
    }
    let result = result.context("the node loop panicked")?;

    tracing::info!(id, "shutting down: closing connections");
    // Why a grace period for a removed node: a leader that removed itself has just
    // answered the change; the answer must reach the client before the connection goes.
    let grace = if matches!(result, Ok(Stopped::Removed { .. })) { cfg.election_timeout() * 2 } else { Duration::ZERO };
    let _ = stop_serving.send(grace);
    let _ = server.await;
    match result {
        Ok(Stopped::Shutdown) => {
            tracing::info!(id, "shut down");
            Ok(())
        }
        Ok(Stopped::Removed { index, by }) => {
            let tombstone = Tombstone { cluster_id: identity.cluster_id, node_id: id, index };
            cluster::write_tombstone(fs.as_ref(), &cfg.data_dir, tombstone)?;
            let how = match by {
                Some(peer) => format!("as node {peer} said"),
                None => format!("by the configuration change at index {index}"),
            };
            tracing::info!(
                id,
                cluster_id = format!("{:016x}", identity.cluster_id),
                "node {id} was removed from the cluster {how}: stopped for good. Delete the data dir {} to join \
                 again as a new member",
                cfg.data_dir.display()
            );
            Ok(())
        }
        Err(e) => {
            tracing::error!(id, error = format!("{e:#}"), "node stopped on an error");
            Err(e)
        }
    }
}

/// Accepts connections and serves each on its own task (within the bounds of
/// [`conn`]) until `stop` says how long open connections may still finish (their
/// clients hang up) before they are cut.
///
/// The TLS handshake (if any) runs on the connection's own task, never here, so a slow
/// handshake does not hold up accepting others; it counts toward the connection's
/// first-request timeout.
async fn accept_loop(incoming: raftkv_rpc::Listener, service: service::Service, stop: oneshot::Receiver<Duration>) {
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
        .for_each(|request| async {
            tokio::spawn(request);
        })
        .await;
}

/// A seed for election jitter that differs between nodes and restarts.
fn random_seed(id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}
