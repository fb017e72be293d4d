//! A cluster of real `raftkv-server` processes in a temporary directory (3 nodes on
//! 127.0.0.1, which nodes may join and leave; or any number of them, each in its own
//! network namespace: [`crate::netns`]), and the waits the tests share.
//!
//! Every wait here is a deadline-bounded poll of a condition
//! ([`raftkv_client::local::poll_until`]); nothing sleeps in place of a condition.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use raftkv_client::local::{
    Bootstrap, LocalCluster, LocalClusterOptions, NodeConfig, NodePlacement, NodeProcess, ServerCommand, poll_until,
};
use raftkv_client::{Client, ClientOptions, MemberList, NodeId, NodeStatus};

use crate::bins::binaries;

/// A generous bound on electing a leader on a loaded 2-core machine.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// A generous bound on a restarted node catching up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// A generous bound on a node exiting by itself (e.g. once removed from the cluster).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Overall deadline of one client operation (retries included).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest scan a server answers.
pub const SCAN_ALL: u32 = 10_000;

/// The server flags of every test node: 50 ms ticks (elections in ~0.5-1 s).
const TEST_FLAGS: [&str; 2] = ["--tick-ms", "50"];

/// A 3-node cluster of real `raftkv-server` processes on free 127.0.0.1 ports, with
/// data and logs in a temporary directory. The processes are killed when it drops; if
/// the test is failing, the tail of every node's log is printed and the directory kept.
pub struct TestCluster {
    cluster: LocalCluster,
    /// Nodes taken out of the cluster (removed members), kept for their logs.
    retired: Vec<NodeProcess>,
    dir: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts 3 nodes with 50 ms ticks (elections in ~0.5-1 s) plus `extra` flags.
    pub fn start(extra: &[&str]) -> TestCluster {
        Self::start_placed(3, extra, &[])
    }

    /// Starts `nodes` nodes like [`TestCluster::start`], node `i + 1` placed as
    /// `placement[i]` says (e.g. in a network namespace of [`crate::netns::Net`]).
    pub fn start_placed(nodes: usize, extra: &[&str], placement: &[NodePlacement]) -> TestCluster {
        let bins = binaries();
        let dir = tempfile::Builder::new().prefix("raftkv-test-").tempdir().expect("temp dir");
        let extra_args: Vec<String> = TEST_FLAGS.iter().chain(extra).map(|s| s.to_string()).collect();
        let options = LocalClusterOptions {
            nodes,
            base_port: None,
            dir: dir.path().to_path_buf(),
            command: ServerCommand::binary(&bins.server),
            extra_args,
        };
        let cluster = LocalCluster::start_placed(options, placement).expect("start the nodes");
        TestCluster { cluster, retired: Vec::new(), dir: Some(dir) }
    }

    /// The temporary directory of the nodes' data and logs.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("kept until drop").path()
    }

    /// Starts node `id` with `--join` (every current node a seed); returns its address.
    pub fn join(&mut self, id: NodeId) -> String {
        let node = self.cluster.join(id).unwrap_or_else(|e| panic!("start node {id} with --join: {e}"));
        node.addr().to_string()
    }

    /// Takes node `id` out of the cluster (a removed member): it no longer counts in
    /// [`leader`](Self::leader), [`all_caught_up`](Self::all_caught_up) or the
    /// endpoints; [`retired`](Self::retired) gives it back.
    pub fn retire(&mut self, id: NodeId) -> &mut NodeProcess {
        let node = self.cluster.take_node(id).unwrap_or_else(|| panic!("no node {id}"));
        self.retired.push(node);
        self.retired.last_mut().expect("just pushed")
    }

    /// A node taken out by [`retire`](Self::retire).
    pub fn retired(&mut self, id: NodeId) -> &mut NodeProcess {
        self.retired.iter_mut().find(|n| n.id() == id).unwrap_or_else(|| panic!("no retired node {id}"))
    }

    /// The configuration as the leader sees it.
    pub async fn members(&self) -> MemberList {
        self.client().members().await.unwrap_or_else(|e| panic!("member list: {e}"))
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.cluster.nodes().iter().map(|n| n.id()).collect()
    }

    pub fn addr(&self, id: NodeId) -> String {
        self.node(id).unwrap_or_else(|| panic!("no node {id}")).addr().to_string()
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        self.cluster.client(ClientOptions::with_timeout(OP_TIMEOUT))
    }

    /// A client of node `id` only (its stale reads are served by that node).
    pub fn node_client(&self, id: NodeId) -> Client {
        Client::new(vec![self.addr(id)], ClientOptions::with_timeout(OP_TIMEOUT)).expect("client")
    }

    /// Waits for a leader that a majority follows.
    pub async fn leader(&self) -> NodeStatus {
        self.cluster.wait_for_leader(LEADER_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Node `id`'s status (panics if it does not answer).
    pub async fn status(&self, id: NodeId) -> NodeStatus {
        self.node_client(id).status(&self.addr(id)).await.unwrap_or_else(|e| panic!("status of node {id}: {e}"))
    }

    /// Waits until node `id` has applied `index`.
    pub async fn caught_up(&self, id: NodeId, index: u64) -> NodeStatus {
        self.cluster.wait_applied(id, index, CATCH_UP_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until every running node has applied the leader's commit index.
    pub async fn all_caught_up(&mut self) -> u64 {
        let target = self.leader().await.commit_index;
        let ids: Vec<NodeId> =
            self.ids().into_iter().filter(|id| self.cluster.node_mut(*id).is_some_and(|n| n.is_running())).collect();
        for id in ids {
            self.caught_up(id, target).await;
        }
        target
    }

    /// Makes node `to` the leader (asking the current leader to hand over, again while
    /// it has not happened) and returns its status once a majority follows it.
    pub async fn move_leader(&self, to: NodeId) -> NodeStatus {
        let client = self.client();
        eventually(LEADER_TIMEOUT, &format!("node {to} to become leader"), || async {
            let leader = raftkv_client::local::wait_for_leader(&client, 3, Duration::from_secs(5)).await?;
            if leader.id == to {
                return Ok(leader);
            }
            // Idempotent while the transfer to `to` is under way.
            let asked = client.transfer_leader(Some(to)).await;
            Err(format!("node {} leads in term {} (transfer request: {asked:?})", leader.id, leader.term))
        })
        .await
    }

    /// Sends `signal` to node `id`'s process (e.g. SIGSTOP / SIGCONT to pause and resume
    /// it). Returns false if it is not running.
    pub fn signal(&self, id: NodeId, signal: nix::sys::signal::Signal) -> bool {
        match self.node(id).and_then(|n| n.pid()) {
            Some(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).is_ok(),
            None => false,
        }
    }

    /// `kill -9`s every node at once (all signals first, so none sees the others go),
    /// then reaps them.
    pub async fn kill_all_at_once(&mut self) {
        let ids = self.ids();
        for id in &ids {
            assert!(self.signal(*id, nix::sys::signal::Signal::SIGKILL), "node {id} is running");
        }
        for id in &ids {
            self.cluster.node_mut(*id).expect("node").kill().await.expect("reap");
        }
    }

    /// Starts every node again on its data directory.
    pub async fn restart_all(&mut self) {
        for id in self.ids() {
            self.cluster.node_mut(id).expect("node").restart().await.expect("restart");
        }
    }

    /// `kill -9`s node `id`, empties its data directory and starts it again (it
    /// rejoins with no log, term or vote; the leader catches it up, by a snapshot if
    /// its log no longer starts at 1).
    pub async fn restart_empty(&mut self, id: NodeId) {
        let node = self.cluster.node_mut(id).unwrap_or_else(|| panic!("no node {id}"));
        node.kill().await.expect("kill -9");
        match std::fs::remove_dir_all(node.data_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("wipe {}: {e}", node.data_dir().display()),
        }
        node.restart().await.expect("restart");
    }

    /// Every pair under `prefix` as node `id` has it (a stale read served by that node).
    pub async fn stale_scan(&self, id: NodeId, prefix: &str) -> BTreeMap<String, String> {
        scan_map(&self.node_client(id), prefix, true).await
    }
}

/// Every pair under `prefix` (at most [`SCAN_ALL`]), as strings.
pub async fn scan_map(client: &Client, prefix: &str, stale: bool) -> BTreeMap<String, String> {
    let reply = client
        .scan(prefix.to_string(), SCAN_ALL, stale)
        .await
        .unwrap_or_else(|e| panic!("scan {prefix:?} (stale: {stale}): {e}"));
    assert!(!reply.more, "more than {SCAN_ALL} pairs under {prefix:?}");
    reply.items.iter().map(|(k, v)| (text(k), text(v))).collect()
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in self.cluster.nodes().iter().chain(&self.retired) {
            print_log_tail(node);
        }
        if let Some(dir) = self.dir.take() {
            eprintln!("---- data and logs kept in {} ----", dir.keep().display());
        }
    }
}

/// Prints the last 40 lines of a node's log to stderr.
pub fn print_log_tail(node: &NodeProcess) {
    let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    eprintln!("---- node {} ({}), last {} log lines ----", node.id(), node.addr(), tail.len());
    for line in tail {
        eprintln!("{line}");
    }
}

/// Starts one test node (the test flags plus `extra`) with data and log under `dir`.
pub fn spawn_node(dir: &Path, id: NodeId, addr: &str, bootstrap: Bootstrap, extra: &[&str]) -> NodeProcess {
    let config = NodeConfig {
        id,
        addr: addr.to_string(),
        bootstrap,
        data_dir: dir.join(format!("node-{id}")),
        log_path: dir.join(format!("node-{id}.log")),
        extra_args: TEST_FLAGS.iter().chain(extra).map(|s| s.to_string()).collect(),
    };
    NodeProcess::spawn(&ServerCommand::binary(&binaries().server), config)
        .unwrap_or_else(|e| panic!("start node {id} at {addr}: {e}"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `check` until it returns `Ok` or `timeout` passes (then panics).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll_until(timeout, what, check).await.unwrap_or_else(|e| panic!("{e}"))
}
