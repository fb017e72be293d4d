//! Disk faults on in-process nodes (real sockets on 127.0.0.1, real disk underneath):
//! each node's storage runs on its own [`FaultyFs`], injected through
//! `NodeConfig::storage`.
//!
//! - a failed fsync, or a short write, on the leader: it acknowledges none of the writes
//!   caught by the fault and stops (its storage refuses all writes, so the node ends
//!   with the error: that is how it steps down); the other two elect a leader and keep
//!   serving; every acknowledged write stays readable; the old leader, restarted on the
//!   real file system, recovers and catches up;
//! - a full disk on a follower: it stops with an error naming the file and "No space
//!   left on device"; the others keep committing; restarted, it recovers and catches up;
//! - a corrupted snapshot on a stopped follower: at restart it refuses the file (moved
//!   aside, not deleted), installs a snapshot from the leader, and ends with the same
//!   data as the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftkv_client::local::poll_until;
use raftkv_kv::{Command, WriteOp};
use raftkv_rpc::tarpc::context;
use raftkv_rpc::{RaftKvClient, ReadConsistency, RequestError, WriteReply};
use raftkv_server::{AdminState, ClusterConfig, NodeConfig};
use raftkv_storage::fault::FaultyFs;
use raftkv_storage::{FsyncPolicy, StorageOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: the machine may be loaded.
const DEADLINE: Duration = Duration::from_secs(30);

type Data = BTreeMap<Bytes, Bytes>;

struct Node {
    fs: FaultyFs,
    admin: Arc<AdminState>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

struct Cluster {
    addrs: BTreeMap<u64, SocketAddr>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    nodes: BTreeMap<u64, Node>,
    segment_size: u64,
    snapshot_entries: u64,
    /// Writes acknowledged to a client: key -> value.
    acked: Data,
    next_seq: u64,
}

impl Cluster {
    async fn start(segment_size: u64, snapshot_entries: u64) -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addrs = listeners.iter().map(|(id, l)| (*id, l.local_addr().expect("local addr"))).collect();
        let dirs = (1..=3u64).map(|id| (id, tempfile::tempdir().expect("tempdir"))).collect();
        let mut cluster = Cluster {
            addrs,
            dirs,
            nodes: BTreeMap::new(),
            segment_size,
            snapshot_entries,
            acked: Data::new(),
            next_seq: 1,
        };
        for (id, listener) in listeners {
            cluster.start_node(id, listener);
        }
        cluster
    }

    fn dir(&self, id: u64) -> &Path {
        self.dirs[&id].path()
    }

    /// Starts node `id` on a fresh [`FaultyFs`] with no fault switched on.
    fn start_node(&mut self, id: u64, listener: TcpListener) {
        let fs = FaultyFs::new();
        let storage =
            StorageOptions { segment_size: self.segment_size, fs: Arc::new(fs.clone()), ..StorageOptions::default() };
        let cfg = NodeConfig {
            id,
            listen: self.addrs[&id].to_string(),
            peers: self.addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            data_dir: self.dir(id).to_path_buf(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: self.snapshot_entries,
            fsync: FsyncPolicy::Always,
            cluster: ClusterConfig::found(self.addrs[&id].to_string()),
            storage: Some(storage),
            tls: None,
            enable_faults: false,
        };
        let admin = AdminState::new();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(raftkv_server::serve_with_admin(cfg, listener, admin.clone(), async move {
            let _ = rx.await;
        }));
        self.nodes.insert(id, Node { fs, admin, stop, task });
    }

    async fn restart_node(&mut self, id: u64) {
        assert!(!self.nodes.contains_key(&id), "node {id} is running");
        let listener = TcpListener::bind(self.addrs[&id]).await.expect("rebind");
        self.start_node(id, listener);
    }

    fn fs(&self, id: u64) -> &FaultyFs {
        &self.nodes[&id].fs
    }

    async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("running");
        let _ = node.stop.send(());
        let result = tokio::time::timeout(DEADLINE, node.task).await.expect("node stops in time").expect("no panic");
        result.unwrap_or_else(|e| panic!("node {id} failed: {e:#}"));
    }

    /// Waits for node `id` to stop on its own with an error; returns the error chain.
    async fn wait_failed(&mut self, id: u64) -> String {
        let node = self.nodes.remove(&id).expect("running");
        let result = tokio::time::timeout(DEADLINE, node.task).await.expect("node stops in time").expect("no panic");
        format!("{:#}", result.expect_err("the node stopped on an error"))
    }

    async fn client(&self, id: u64) -> RaftKvClient {
        raftkv_rpc::connect(&self.addrs[&id].to_string()).await.expect("connect")
    }

    /// Waits until every running node agrees on one leader; returns it and its term.
    async fn wait_for_leader(&self) -> (u64, u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        poll_until(DEADLINE, "one leader known to every running node", || async {
            let mut seen = Vec::new();
            let mut leading = None;
            for &id in &ids {
                let c = raftkv_rpc::connect(&self.addrs[&id].to_string()).await.map_err(|e| e.to_string())?;
                let st = c.status(context::current()).await.map_err(|e| e.to_string())?;
                if st.role == "leader" {
                    leading = Some((id, st.term));
                }
                seen.push(st.leader);
            }
            match leading {
                Some((l, term)) if seen.iter().all(|s| *s == Some(l)) => Ok((l, term)),
                _ => Err(format!("leaders seen: {seen:?}")),
            }
        })
        .await
        .expect("a leader")
    }

    /// Writes `key` = `value` until acknowledged, following the leader; retries carry
    /// the same (client, seq), so the write applies once.
    async fn write_acked(&mut self, key: &str, value: &str) {
        let cmd = put(1, self.next_seq, key, value);
        self.next_seq += 1;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let addrs = &self.addrs;
        poll_until(DEADLINE, &format!("an acknowledged write of {key}"), || {
            let (cmd, ids) = (cmd.clone(), ids.clone());
            async move {
                let mut last = String::new();
                for id in ids {
                    match try_write(&addrs[&id].to_string(), cmd.clone()).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("node {id}: {e}"),
                    }
                }
                Err(last)
            }
        })
        .await
        .expect("write acknowledged");
        self.acked.insert(Bytes::from(key.to_string()), Bytes::from(value.to_string()));
    }

    /// Every key and value on node `id`.
    async fn data(&self, id: u64, consistency: ReadConsistency) -> Result<Data, String> {
        let c = raftkv_rpc::connect(&self.addrs[&id].to_string()).await.map_err(|e| e.to_string())?;
        let page = c
            .scan(context::current(), Bytes::new(), 10_000, consistency)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        assert!(!page.more, "more than 10000 keys");
        Ok(page.items.into_iter().collect())
    }

    /// Checks the leader holds every acknowledged write, and nothing but those and
    /// `unknown` (writes whose outcome the client never learned, with their values).
    async fn check_leader_data(&self, leader: u64, unknown: &Data) -> Data {
        let data = self.data(leader, ReadConsistency::Linearizable).await.expect("leader data");
        for (k, v) in &self.acked {
            assert_eq!(data.get(k), Some(v), "acknowledged write of {k:?} lost");
        }
        for (k, v) in &data {
            let expected = self.acked.get(k).or_else(|| unknown.get(k));
            assert_eq!(expected, Some(v), "{k:?} = {v:?} was never written");
        }
        data
    }

    /// Waits until node `id` serves exactly `data` (stale reads: its own state).
    async fn wait_same_data(&self, id: u64, data: &Data) {
        poll_until(DEADLINE, &format!("node {id} to catch up"), || async {
            let mine = self.data(id, ReadConsistency::Stale).await?;
            if &mine == data { Ok(()) } else { Err(format!("{} of {} keys", mine.len(), data.len())) }
        })
        .await
        .expect("caught up");
    }

    async fn stop(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

fn put(client_id: u64, seq: u64, key: &str, value: &str) -> Command {
    Command {
        client_id,
        seq,
        op: WriteOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) },
    }
}

async fn try_write(addr: &str, cmd: Command) -> Result<WriteReply, String> {
    let c = raftkv_rpc::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    match c.write(context::current(), cmd).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(e) => Err(format!("rpc: {e}")),
    }
}

fn value(i: u64) -> String {
    format!("value-{i}-{}", "x".repeat(64))
}

/// The leader's disk fails as `fault` makes it; checks what the module docs promise.
async fn leader_disk_fault(fault: impl FnOnce(&FaultyFs), expected_error: &str) {
    let mut cluster = Cluster::start(64 << 20, 10_000).await;
    let (leader, term) = cluster.wait_for_leader().await;
    for i in 0..20 {
        cluster.write_acked(&format!("before-{i:03}"), &value(i)).await;
    }

    fault(cluster.fs(leader));
    // Concurrent writes straight to the failing leader, no retries: none may succeed.
    let lc = cluster.client(leader).await;
    let mut unknown = Data::new();
    let mut attempts = Vec::new();
    for i in 0..10u64 {
        let (key, val) = (format!("during-{i:03}"), value(i));
        unknown.insert(Bytes::from(key.clone()), Bytes::from(val.clone()));
        let (lc, cmd) = (lc.clone(), put(2, i + 1, &key, &val));
        attempts.push(tokio::spawn(async move { lc.write(context::current(), cmd).await }));
    }
    for attempt in attempts {
        match attempt.await.expect("no panic") {
            Ok(Ok(reply)) => panic!("a write was acknowledged by a leader whose disk failed: {reply:?}"),
            Ok(Err(e)) => assert!(!matches!(e, RequestError::Invalid(_)), "{e:?}"),
            Err(_rpc) => {} // the node closed the connection when it stopped
        }
    }

    // The leader stops on the storage error, naming it.
    let error = cluster.wait_failed(leader).await;
    assert!(error.contains(expected_error), "{error}");
    assert!(error.contains(&cluster.dir(leader).join("wal").display().to_string()), "names the file: {error}");

    // The other two elect a leader and keep serving.
    let (new_leader, new_term) = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term, "term {new_term} after {term}");
    for i in 0..10 {
        cluster.write_acked(&format!("after-{i:03}"), &value(i)).await;
    }
    let data = cluster.check_leader_data(new_leader, &unknown).await;

    // The old leader, restarted on the healthy disk, recovers and catches up.
    cluster.restart_node(leader).await;
    cluster.wait_same_data(leader, &data).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_fsync_failure_acknowledges_nothing_and_the_others_take_over() {
    leader_disk_fault(|fs| fs.fail_all_fsyncs(), if cfg!(unix) { "fsync on" } else { "fsync" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_short_write_acknowledges_nothing_and_the_others_take_over() {
    leader_disk_fault(|fs| fs.short_all_writes(), "write on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_out_of_space_stops_clearly_then_recovers_and_catches_up() {
    let mut cluster = Cluster::start(64 << 20, 10_000).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("a follower");
    for i in 0..10 {
        cluster.write_acked(&format!("before-{i:03}"), &value(i)).await;
    }

    cluster.fs(follower).set_space_left(4096);
    // Writes go on (the leader and the other follower are a majority) until the full
    // disk stops the follower.
    let mut i = 0;
    while !cluster.nodes[&follower].task.is_finished() {
        assert!(i < 500, "the follower never ran out of space");
        cluster.write_acked(&format!("filling-{i:03}"), &value(i)).await;
        i += 1;
    }
    assert_eq!(cluster.fs(follower).counts().enospc_writes, 1);
    let error = cluster.wait_failed(follower).await;
    assert!(error.contains("No space left on device"), "{error}");
    assert!(error.contains(&cluster.dir(follower).join("wal").display().to_string()), "names the file: {error}");
    for i in 0..10 {
        cluster.write_acked(&format!("after-{i:03}"), &value(i)).await;
    }

    // Space freed (the real file system): it recovers what it had and catches up.
    cluster.restart_node(follower).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let data = cluster.check_leader_data(leader, &Data::new()).await;
    cluster.wait_same_data(follower, &data).await;
    cluster.stop().await;
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("snap dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    names.sort();
    names
}

fn installed_snapshots(admin: &AdminState) -> u64 {
    let metrics = admin.render_metrics();
    let line = metrics.lines().find(|l| l.starts_with("raftkv_snapshots_received_total{")).expect("the metric");
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_follower_snapshot_is_refused_and_fetched_again_from_the_leader() {
    // Small segments and frequent snapshots: the WAL gets compacted behind them.
    let mut cluster = Cluster::start(4096, 20).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("a follower");
    for i in 0..200 {
        cluster.write_acked(&format!("key-{i:03}"), &value(i)).await;
    }
    let data = cluster.check_leader_data(leader, &Data::new()).await;
    cluster.wait_same_data(follower, &data).await;
    cluster.stop_node(follower).await;

    // Every snapshot of the follower is damaged, and its WAL no longer starts at index
    // 1, so its own disk cannot rebuild the state: only the leader can.
    let snap_dir = cluster.dir(follower).join("snap");
    let damaged = snapshot_files(&snap_dir);
    assert!(!damaged.is_empty(), "the follower took snapshots");
    for name in &damaged {
        let path = snap_dir.join(name);
        let mut bytes = std::fs::read(&path).expect("read snapshot");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).expect("damage snapshot");
    }
    assert!(!cluster.dir(follower).join("wal").join(format!("{:016x}.wal", 1)).exists(), "WAL compacted");
    // Restart the other two: a leader keeps some entries in memory behind its snapshot
    // (compaction slack) and would resend those; restarted, its log starts at its
    // snapshot, so the follower can only be brought back by a snapshot.
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop_node(id).await;
        cluster.restart_node(id).await;
    }
    cluster.wait_for_leader().await;
    for i in 0..10 {
        cluster.write_acked(&format!("later-{i:03}"), &value(i)).await;
    }

    cluster.restart_node(follower).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let data = cluster.check_leader_data(leader, &Data::new()).await;
    cluster.wait_same_data(follower, &data).await;
    // It refused its files (kept aside as evidence) and installed the leader's snapshot.
    let names: Vec<String> = std::fs::read_dir(&snap_dir)
        .expect("snap dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for name in &damaged {
        assert!(names.contains(&format!("corrupt-{name}")), "{name} moved aside: {names:?}");
    }
    assert!(installed_snapshots(&cluster.nodes[&follower].admin) >= 1, "a snapshot came from the leader");
    cluster.stop().await;
}
