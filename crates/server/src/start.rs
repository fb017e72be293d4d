//! Starting a node, in four steps: [`open`] the data dir (lock, tombstone, storage),
//! [`recover`] the replica from it once the node's identity is established, [`spawn`]
//! the storage writer, the RPC service and the Raft loop, and [`run`] until shutdown or
//! removal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use raftkv_raft::{ConfState, Config, RawNode, Recovered};
use raftkv_replica::{MemberContext, Replica, ReplicaConfig, Stop};
use raftkv_storage::{
    DiskStorage, FileSystem, FsyncPolicy, GroupCommitOptions, GroupCommitWriter, StorageOptions, Tombstone,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::args::NodeConfig;
use crate::dir_lock::{self, DataDirLock};
use crate::forward::Forwarder;
use crate::identity::{self, Identity, Start};
use crate::raft_loop::{LoopConfig, RaftBatch, RaftLoop, Request};
use crate::{CLIENT_QUEUE, RAFT_QUEUE, accept_loop, new_cluster, peer, service};

/// An opened data dir: locked, not removed, its storage recovered.
pub(crate) struct Opened {
    /// Held until the node stops.
    _lock: DataDirLock,
    fs: Arc<dyn FileSystem>,
    storage: DiskStorage,
    recovered: Recovered,
}

/// Logs the start and checks the settings that make no sense together.
pub(crate) fn announce(cfg: &NodeConfig, local: SocketAddr) -> anyhow::Result<()> {
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
    Ok(())
}

/// Locks the data dir before anything in it is read, refuses a removed node's, and
/// recovers its storage.
pub(crate) async fn open(cfg: &NodeConfig) -> anyhow::Result<Opened> {
    let lock = dir_lock::lock(&cfg.data_dir)?;
    tracing::debug!(lock = %lock.path().display(), "locked the data dir");
    // The file system of every data-dir file: the real one unless a test injects faults.
    let opts = StorageOptions { fsync: cfg.fsync, ..cfg.storage.clone().unwrap_or_default() };
    let fs: Arc<dyn FileSystem> = opts.fs.clone();
    identity::check_tombstone(fs.as_ref(), &cfg.data_dir)?;
    let dir = cfg.data_dir.clone();
    let (storage, mut recovered) = tokio::task::spawn_blocking(move || DiskStorage::open(&dir, opts))
        .await
        .context("the storage open task failed")?
        .with_context(|| format!("cannot open storage in --data-dir {}", cfg.data_dir.display()))?;
    // Before the identity decides from `lost_state` whether to bootstrap or join.
    if recovered.discard_torn_first_write() {
        tracing::warn!(
            data_dir = %cfg.data_dir.display(),
            "the log holds entries but no hard state (a torn first write): starting as a node with no state"
        );
    }
    Ok(Opened { _lock: lock, fs, storage, recovered })
}

impl Opened {
    /// Whether storage holds a log (entries or a snapshot).
    pub fn has_log(&self) -> bool {
        !self.recovered.lost_state
    }

    pub fn fs(&self) -> &dyn FileSystem {
        self.fs.as_ref()
    }

    /// The file system, kept past the storage's hand-over (for the tombstone).
    pub fn fs_handle(&self) -> Arc<dyn FileSystem> {
        self.fs.clone()
    }
}

/// The replica a node resumes, bootstraps or joins with, from what `opened` holds.
pub(crate) fn recover(cfg: &NodeConfig, opened: &mut Opened, identity: &mut Identity) -> anyhow::Result<Replica> {
    let id = identity.id;
    let recovered = std::mem::take(&mut opened.recovered);
    #[allow(unused_mut)] // changed only by the tests' tampering
    let (mut kv, membership) =
        Replica::restore_state(recovered.snapshot.as_ref(), &recovered.entries, cfg.peers.clone())
            .context("the state on disk cannot be restored")?;
    #[cfg(feature = "tamper-for-tests")]
    tamper_for_tests(&mut kv);
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
    let policy = ReplicaConfig {
        election_ticks: cfg.election_ticks,
        snapshot_entries: cfg.snapshot_entries,
        max_promotion_lag: raft_cfg.max_promotion_lag,
    };
    let has_log = !recovered.lost_state;
    let mut learned = Vec::new();
    let raw = match std::mem::replace(&mut identity.start, Start::Resume) {
        Start::Bootstrap(changes) => RawNode::bootstrap_with(raft_cfg, changes, recovered)?,
        // The flags' members matter only as the base of a log older than logged
        // configurations; a node without a log must not bootstrap.
        Start::Resume if has_log => {
            RawNode::new(raft_cfg, ConfState::with_voters(cfg.peers.keys().copied()), recovered)?
        }
        Start::Resume => RawNode::new(raft_cfg, ConfState::default(), recovered)?,
        Start::Joined(reply) => {
            learned = reply.members.members;
            RawNode::new(raft_cfg, ConfState::default(), recovered)?
        }
    };
    let mut replica = Replica::new(raw, kv, membership, policy);
    replica.learn_members(
        learned.into_iter().map(|m| (m.id, MemberContext { addr: m.addr, auto_promote: m.auto_promote })),
    );
    Ok(replica)
}

/// A running node: its tasks and how to stop them.
pub(crate) struct Spawned {
    /// The data dir stays locked until the node has stopped.
    _lock: DataDirLock,
    loop_task: JoinHandle<anyhow::Result<Stop>>,
    stop_loop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    stop_serving: oneshot::Sender<Duration>,
    confirming: Option<JoinHandle<()>>,
}

/// Starts the storage writer, the Raft loop (on a worker thread), the RPC service and,
/// for a founder that starts recovering, the question whether its cluster is new.
pub(crate) fn spawn(
    cfg: &NodeConfig,
    listener: TcpListener,
    opened: Opened,
    replica: Replica,
    identity: &Identity,
    admin: Arc<AdminState>,
) -> anyhow::Result<Spawned> {
    let id = identity.id;
    let Opened { _lock: lock, storage, .. } = opened;
    let writer =
        GroupCommitWriter::spawn(storage, GroupCommitOptions::default()).context("cannot start the storage writer")?;
    let faults = Arc::new(crate::faults::Faults::new(id, cfg.enable_faults));
    let shared = Arc::new(service::Shared::new(identity.cluster_id, admin.metrics.clone(), faults));
    let (removed_tx, removed_rx) = mpsc::channel(16);
    let (raft_tx, raft_rx) = mpsc::channel::<RaftBatch>(RAFT_QUEUE);
    let link = peer::LinkContext {
        node: id,
        cluster_id: identity.cluster_id,
        removed_tx,
        tls: cfg.tls.clone(),
        raft_tx: raft_tx.clone(),
    };
    let (client_tx, client_rx) = mpsc::channel::<Request>(CLIENT_QUEUE);
    let founders = (cfg.cluster.join.is_empty() && cfg.peers.contains_key(&id)).then(|| cfg.peers.clone());
    let confirming = match founders {
        Some(founders) if replica.status().recovering => {
            let task = new_cluster::confirm(id, identity.cluster_id, founders, cfg.tls.clone(), client_tx.clone());
            Some(tokio::spawn(task))
        }
        _ => None,
    };
    let loop_cfg = LoopConfig { tick: cfg.tick, election_timeout: cfg.election_timeout() };
    let raft_loop = RaftLoop::new(replica, writer, shared.clone(), link, loop_cfg).with_admin(admin.clone());
    let forwarder = Arc::new(Forwarder::new(identity.cluster_id, cfg.tls.clone()));
    let peer = raftkv_rpc::PeerIdentity::Plaintext;
    let service = service::Service { id, shared, raft_tx, client_tx, forwarder, peer };
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
    let loop_task = tokio::spawn(raft_loop.run(raft_rx, client_rx, removed_rx, loop_shutdown));
    Ok(Spawned { _lock: lock, loop_task, stop_loop, server, stop_serving, confirming })
}

/// Runs until `shutdown` resolves or the loop stops by itself (removal, failure), then
/// closes connections and, for a removed node, writes its tombstone.
pub(crate) async fn run(
    cfg: &NodeConfig,
    fs: &dyn FileSystem,
    identity: &Identity,
    mut node: Spawned,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let id = identity.id;
    let result = tokio::select! {
        result = &mut node.loop_task => result,
        () = shutdown => {
            let _ = node.stop_loop.send(());
            node.loop_task.await
        }
    };
    if let Some(task) = node.confirming {
        task.abort();
    }
    let result = result.context("the node loop panicked")?;
    tracing::info!(id, "shutting down: closing connections");
    // Why a grace period for a removed node: a leader that removed itself has just
    // answered the change; the answer must reach the client before the connection goes.
    let grace = if matches!(result, Ok(Stop::Removed { .. })) { cfg.election_timeout() * 2 } else { Duration::ZERO };
    let _ = node.stop_serving.send(grace);
    let _ = node.server.await;
    match result {
        Ok(Stop::Shutdown(_)) => {
            tracing::info!(id, "shut down");
            Ok(())
        }
        Ok(Stop::Removed { index, by }) => removed(cfg, fs, identity, index, by),
        Err(e) => {
            tracing::error!(id, error = format!("{e:#}"), "node stopped on an error");
            Err(e)
        }
    }
}

/// Writes the tombstone of a removed node.
fn removed(
    cfg: &NodeConfig,
    fs: &dyn FileSystem,
    identity: &Identity,
    index: u64,
    by: Option<u64>,
) -> anyhow::Result<()> {
    let id = identity.id;
    let tombstone = Tombstone { cluster_id: identity.cluster_id, node_id: id, index };
    identity::write_tombstone(fs, &cfg.data_dir, tombstone)?;
    let how = match by {
        Some(peer) => format!("as node {peer} said"),
        None => format!("by the configuration change at index {index}"),
    };
    tracing::info!(
        id,
        cluster_id = format!("{:016x}", identity.cluster_id),
        "node {id} was removed from the cluster {how}: stopped for good. Delete the data dir {} to join again as a \
         new member",
        cfg.data_dir.display()
    );
    Ok(())
}

/// A seed for election jitter that differs between nodes and restarts.
fn random_seed(id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::time::{SystemTime, UNIX_EPOCH};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// `RAFTKV_TEST_TAMPER=KEY=VALUE`: this replica's state machine says VALUE for KEY
/// without any log entry, so the tests can show `raftkv endpoint hashkv` catching a
/// diverged replica. Built only with the `tamper-for-tests` feature, which only the
/// CLI's tests turn on.
#[cfg(feature = "tamper-for-tests")]
fn tamper_for_tests(kv: &mut raftkv_kv::KvStateMachine) {
    let Ok(spec) = std::env::var("RAFTKV_TEST_TAMPER") else { return };
    let Some((key, value)) = spec.split_once('=') else {
        tracing::error!(spec, "RAFTKV_TEST_TAMPER is not KEY=VALUE; ignored");
        return;
    };
    tracing::warn!(key, value, "tampering with the state machine (RAFTKV_TEST_TAMPER, a test build)");
    kv.tamper_for_tests(key.as_bytes(), value.as_bytes());
}
