//! Local server processes: start a cluster on 127.0.0.1 (or with nodes placed at other
//! addresses behind a command prefix such as `ip netns exec NS`), kill -9 / SIGTERM / restart
//! one node, and wait (deadline-bounded polls, never fixed sleeps) for conditions such
//! as "a leader is elected" or "node 2 has caught up".
//!
//! Used by the CLI's `up` and `demo`, and by the integration tests. Each node is a
//! separate OS process in its own process group (so a terminal's Ctrl-C reaches only
//! the parent, which then stops the nodes in order), with stdout and stderr appended to
//! `<dir>/node-<id>.log` and its data in `<dir>/node-<id>`. Children are killed if
//! their [`NodeProcess`] is dropped while they still run.
//!
//! A node starts either as a member of the initial configuration (`--peers`) or as a
//! new node asking the others to add it ([`LocalCluster::join`], `--join`). The
//! server's command line is built in one place, [`server_args`].

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftkv_raft::NodeId;
use raftkv_rpc::NodeStatus;
use tokio::process::{Child, Command};

use crate::{Client, ClientOptions};

/// Environment variable naming the server executable to run (overrides the search).
pub const SERVER_BIN_ENV: &str = "RAFTKV_SERVER_BIN";

/// How often [`poll_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The program (and leading arguments) that starts one server.
///
/// Servers inherit this process's environment (so `OTEL_*` and `RUST_LOG` pass
/// through), with `OTEL_SERVICE_NAME=raftkv-server` (each node reports
/// `service.instance.id` `node-<id>` itself) and without `POD_NAME` (which would give
/// every node the same instance id); `env` is applied last.
#[derive(Clone, Debug)]
pub struct ServerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment variables of every server.
    pub env: Vec<(OsString, OsString)>,
}

impl ServerCommand {
    /// Runs the executable at `program` with the server arguments.
    pub fn binary(program: impl Into<PathBuf>) -> Self {
        ServerCommand { program: program.into(), args: Vec::new(), env: Vec::new() }
    }

    /// Sets an environment variable of every server started with this command.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// This command run through `prefix` (a program and its leading arguments, e.g.
    /// `ip netns exec NS`, which then executes the server itself, keeping its pid):
    /// `prefix... program args...`. An empty prefix leaves it as it is.
    pub fn with_prefix(&self, prefix: &[OsString]) -> Self {
        let Some((first, rest)) = prefix.split_first() else { return self.clone() };
        let mut args: Vec<OsString> = rest.to_vec();
        args.push(self.program.clone().into_os_string());
        args.extend(self.args.iter().cloned());
        ServerCommand { program: PathBuf::from(first), args, env: self.env.clone() }
    }

    /// Finds a server to run: `$RAFTKV_SERVER_BIN` if set, else `<current executable>
    /// server`, which the `raftkv` CLI supports. Why not a `raftkv-server` found beside
    /// it: `cargo run --bin raftkv` rebuilds only `raftkv`, so a sibling binary may be
    /// an older build; the CLI's own executable is always the same version.
    pub fn locate() -> io::Result<Self> {
        if let Some(p) = std::env::var_os(SERVER_BIN_ENV).filter(|p| !p.is_empty()) {
            return Ok(ServerCommand::binary(p));
        }
        let exe = std::env::current_exe()?;
        Ok(ServerCommand { program: exe, args: vec!["server".into()], env: Vec::new() })
    }
}

/// How a node finds its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// A member of the initial configuration (`--peers`): every member, itself
    /// included, as `(id, host:port)`.
    Peers(Vec<(NodeId, String)>),
    /// A new node (`--join`): it asks these members (`host:port`) to add it as a
    /// learner that the leader promotes once it has caught up.
    Join(Vec<String>),
}

/// How to run one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// `host:port` it listens on (clients and peers).
    pub addr: String,
    pub bootstrap: Bootstrap,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Appended to the server arguments.
    pub extra_args: Vec<String>,
}

/// The server command line for a node: the one place that knows its flag names.
pub fn server_args(cfg: &NodeConfig) -> Vec<OsString> {
    let (flag, value) = match &cfg.bootstrap {
        Bootstrap::Peers(members) => {
            let peers: Vec<String> = members.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
            ("--peers", peers.join(","))
        }
        Bootstrap::Join(seeds) => ("--join", seeds.join(",")),
    };
    let mut args: Vec<OsString> = vec![
        "--id".into(),
        cfg.id.to_string().into(),
        "--listen".into(),
        cfg.addr.clone().into(),
        flag.into(),
        value.into(),
        "--data-dir".into(),
        cfg.data_dir.clone().into_os_string(),
    ];
    args.extend(cfg.extra_args.iter().map(OsString::from));
    args
}

/// A free TCP port on 127.0.0.1 (bound, then released: another process could take it
/// in between, which is unlikely on a test machine).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` distinct free ports (all held until every one is found).
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`, or fails once
/// `timeout` has passed with the last reason `check` gave.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(reason) => reason,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what} (last: {last})"));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// One server process.
pub struct NodeProcess {
    config: NodeConfig,
    command: ServerCommand,
    child: Option<Child>,
    /// How the last run ended, once it was reaped (`None` while running).
    exited: Option<ExitStatus>,
}

impl NodeProcess {
    /// Starts the node (creating its data directory's parent and appending its output
    /// to its log file).
    pub fn spawn(command: &ServerCommand, config: NodeConfig) -> io::Result<Self> {
        let mut node = NodeProcess { config, command: command.clone(), child: None, exited: None };
        node.start()?;
        Ok(node)
    }

    fn start(&mut self) -> io::Result<()> {
        if let Some(parent) = self.config.data_dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if let Some(parent) = self.config.log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.config.log_path)?;
        let mut cmd = Command::new(&self.command.program);
        cmd.args(&self.command.args)
            .args(server_args(&self.config))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // The output goes to a file: no terminal colour codes (unless asked for).
        if std::env::var_os("NO_COLOR").is_none() {
            cmd.env("NO_COLOR", "1");
        }
        // Traces: every node is a raftkv-server, told apart by its instance id.
        cmd.env("OTEL_SERVICE_NAME", "raftkv-server").env_remove("POD_NAME");
        // Local clusters (`up`, `demo`, tests) are plaintext on loopback and their
        // clients speak plaintext: a TLS setting meant for another cluster must not leak
        // into their servers.
        for var in ["RAFTKV_TLS_CERT", "RAFTKV_TLS_KEY", "RAFTKV_TLS_CA"] {
            cmd.env_remove(var);
        }
        cmd.envs(self.command.env.iter().map(|(k, v)| (k, v)));
        #[cfg(unix)]
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", self.command.program.display())))?;
        tracing::debug!(id = self.config.id, pid = child.id(), addr = %self.config.addr, "node started");
        self.child = Some(child);
        self.exited = None;
        Ok(())
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.config.log_path
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Changes the configuration its next [`restart`](Self::restart) uses.
    pub fn config_mut(&mut self) -> &mut NodeConfig {
        &mut self.config
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(status) => {
                self.exited = status.ok().flatten();
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (it is sent no
    /// signal); returns its exit status, or `None` if it still runs (or never ran).
    pub async fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else { return Ok(self.exited) };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => {
                self.exited = Some(status?);
                self.child = None;
                Ok(self.exited)
            }
            Err(_) => Ok(None),
        }
    }

    /// `kill -9`, then reap. A no-op if it is not running.
    pub async fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            match child.start_kill() {
                Ok(()) => {}
                // Already exited.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
                Err(e) => return Err(e),
            }
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace` for it to exit, then SIGKILL. Returns its exit
    /// status (`None` if it had to be killed or was not running).
    pub async fn terminate(&mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else { return Ok(None) };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
                return status.map(Some);
            }
            tracing::warn!(id = self.config.id, pid, "node did not exit within {grace:?} of SIGTERM; killing it");
            let _ = child.start_kill();
        }
        child.wait().await?;
        Ok(None)
    }

    /// Starts it again with the same configuration (and data directory). Kills the
    /// running process first, if any.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await?;
        self.start()
    }
}

/// Settings for [`LocalCluster::start`].
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    pub nodes: usize,
    /// Ports `base_port..base_port+nodes`; `None` picks free ports.
    pub base_port: Option<u16>,
    /// Parent of each node's data directory and log.
    pub dir: PathBuf,
    pub command: ServerCommand,
    pub extra_args: Vec<String>,
}

/// Where one node of a [`LocalCluster`] runs, when not on 127.0.0.1 with the common
/// server command (e.g. inside a network namespace, for partition tests).
#[derive(Clone, Debug, Default)]
pub struct NodePlacement {
    /// `host:port` it listens on and the others reach it at; `None`: 127.0.0.1 and the
    /// cluster's port for it.
    pub addr: Option<String>,
    /// Put before the server command (see [`ServerCommand::with_prefix`]).
    pub prefix: Vec<OsString>,
    /// Appended to this node's server arguments, after the cluster's `extra_args`
    /// (e.g. its own `--admin-listen`).
    pub extra_args: Vec<String>,
}

/// A cluster of local server processes, with ids `1..=n` at the start.
pub struct LocalCluster {
    nodes: Vec<NodeProcess>,
    dir: PathBuf,
    command: ServerCommand,
    extra_args: Vec<String>,
}

impl LocalCluster {
    /// Starts every node (without waiting for anything).
    pub fn start(opts: LocalClusterOptions) -> io::Result<Self> {
        Self::start_placed(opts, &[])
    }

    /// Like [`LocalCluster::start`], with node `i + 1` placed as `placement[i]` says
    /// (nodes past its end get the defaults).
    pub fn start_placed(opts: LocalClusterOptions, placement: &[NodePlacement]) -> io::Result<Self> {
        if placement.len() > opts.nodes {
            let msg = format!("{} placements for a cluster of {} nodes", placement.len(), opts.nodes);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
        if opts.nodes == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a cluster needs at least one node"));
        }
        let ports: Vec<u16> = match opts.base_port {
            Some(base) => (0..opts.nodes)
                .map(|i| {
                    u16::try_from(i).ok().and_then(|i| base.checked_add(i)).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, format!("base port {base} + {i} overflows"))
                    })
                })
                .collect::<io::Result<_>>()?,
            None => free_ports(opts.nodes)?,
        };
        std::fs::create_dir_all(&opts.dir)?;
        let place = |i: usize| placement.get(i).cloned().unwrap_or_default();
        let members: Vec<(NodeId, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as NodeId + 1, place(i).addr.unwrap_or_else(|| format!("127.0.0.1:{p}"))))
            .collect();
        let mut cluster =
            LocalCluster { nodes: Vec::new(), dir: opts.dir, command: opts.command, extra_args: opts.extra_args };
        for (i, (id, addr)) in members.iter().enumerate() {
            // On error, the nodes already started are killed as `cluster` drops.
            let placed = place(i);
            let command = cluster.command.with_prefix(&placed.prefix);
            cluster.spawn_with(&command, *id, addr.clone(), Bootstrap::Peers(members.clone()), &placed.extra_args)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` at `addr`, its data in `<dir>/node-<id>`, and adds it to the list.
    fn spawn(&mut self, id: NodeId, addr: String, bootstrap: Bootstrap) -> io::Result<&mut NodeProcess> {
        let command = self.command.clone();
        self.spawn_with(&command, id, addr, bootstrap, &[])
    }

    /// [`spawn`](Self::spawn) with another server command (e.g. one prefixed to run in
    /// a network namespace).
    fn spawn_with(
        &mut self,
        command: &ServerCommand,
        id: NodeId,
        addr: String,
        bootstrap: Bootstrap,
        node_args: &[String],
    ) -> io::Result<&mut NodeProcess> {
        let config = NodeConfig {
            id,
            addr,
            bootstrap,
            data_dir: self.dir.join(format!("node-{id}")),
            log_path: self.dir.join(format!("node-{id}.log")),
            extra_args: self.extra_args.iter().chain(node_args).cloned().collect(),
        };
        self.nodes.push(NodeProcess::spawn(command, config)?);
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    /// Starts a new node `id` on a free port that asks the other nodes to add it
    /// (`--join`, with every other node's address as a seed).
    pub fn join(&mut self, id: NodeId) -> io::Result<&mut NodeProcess> {
        if self.node(id).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("node {id} is already in the cluster")));
        }
        let seeds = self.endpoints();
        let addr = format!("127.0.0.1:{}", free_port()?);
        self.spawn(id, addr, Bootstrap::Join(seeds))
    }

    /// Takes node `id` out of the list (e.g. once it was removed from the
    /// configuration); the caller owns its process from then on.
    pub fn take_node(&mut self, id: NodeId) -> Option<NodeProcess> {
        let i = self.nodes.iter().position(|n| n.id() == id)?;
        Some(self.nodes.remove(i))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every node's endpoint, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeProcess> {
        self.nodes.iter().find(|n| n.id() == id)
    }

    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut NodeProcess> {
        self.nodes.iter_mut().find(|n| n.id() == id)
    }

    /// A client of all nodes.
    pub fn client(&self, opts: ClientOptions) -> Client {
        Client::new(self.endpoints(), opts).expect("a local cluster has endpoints")
    }

    /// Waits until a leader is elected and known to a majority of the cluster; returns
    /// its status.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeStatus, String> {
        let client = self.client(ClientOptions::with_timeout(timeout.min(Duration::from_secs(1))));
        wait_for_leader(&client, self.nodes.len(), timeout).await
    }

    /// Waits until node `id` reports an applied index of at least `index`; returns its
    /// status.
    pub async fn wait_applied(&self, id: NodeId, index: u64, timeout: Duration) -> Result<NodeStatus, String> {
        let node = self.node(id).ok_or_else(|| format!("no node {id}"))?;
        let client = Client::new(vec![node.addr().to_string()], ClientOptions::with_timeout(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let what = format!("node {id} to apply index {index}");
        poll_until(timeout, &what, || async {
            match client.status(node.addr()).await {
                Ok(s) if s.applied_index >= index => Ok(s),
                Ok(s) => Err(format!("applied index {}", s.applied_index)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// SIGTERMs every node concurrently and waits up to `grace` for each, killing
    /// those that do not exit.
    pub async fn stop_all(&mut self, grace: Duration) -> io::Result<()> {
        let results = futures::future::join_all(self.nodes.iter_mut().map(|n| n.terminate(grace))).await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// SIGTERMs the nodes `ids` concurrently, like [`NodeProcess::terminate`]; one
    /// result per id, in order (an unknown id is an error).
    pub async fn stop_nodes(&mut self, ids: &[NodeId], grace: Duration) -> Vec<io::Result<Option<ExitStatus>>> {
        let mut selected: Vec<(usize, &mut NodeProcess)> =
            self.nodes.iter_mut().filter_map(|n| ids.iter().position(|id| *id == n.id()).map(|i| (i, n))).collect();
        selected.sort_by_key(|(i, _)| *i);
        let mut results: Vec<io::Result<Option<ExitStatus>>> =
            ids.iter().map(|id| Err(io::Error::new(io::ErrorKind::NotFound, format!("no node {id}")))).collect();
        let done =
            futures::future::join_all(selected.into_iter().map(|(i, n)| async move { (i, n.terminate(grace).await) }))
                .await;
        for (i, r) in done {
            results[i] = r;
        }
        results
    }
}

/// Waits until some node is leader and a majority of `cluster_size` nodes name it as
/// their leader in its term (so it is not a deposed leader that has not noticed yet).
pub async fn wait_for_leader(client: &Client, cluster_size: usize, timeout: Duration) -> Result<NodeStatus, String> {
    poll_until(timeout, "a leader to be elected", || async {
        let statuses: Vec<NodeStatus> = client.status_all().await.into_iter().filter_map(|(_, s)| s.ok()).collect();
        if statuses.is_empty() {
            return Err("no node reachable".into());
        }
        let leader = statuses
            .iter()
            .filter(|s| is_leader(s))
            .max_by_key(|s| s.term)
            .ok_or_else(|| format!("{} nodes reachable, none is leader", statuses.len()))?;
        let agree = statuses
            .iter()
            .filter(|s| s.term == leader.term && (s.id == leader.id || s.leader == Some(leader.id)))
            .count();
        if agree * 2 > cluster_size {
            Ok(leader.clone())
        } else {
            Err(format!("node {} is leader in term {} but only {agree} nodes agree", leader.id, leader.term))
        }
    })
    .await
}

/// Whether a status reports the role of leader.
pub fn is_leader(s: &NodeStatus) -> bool {
    s.role.eq_ignore_ascii_case("leader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_goes_before_the_program_and_its_arguments() {
        let cmd =
            ServerCommand { program: "/bin/raftkv".into(), args: vec!["server".into()], env: Vec::new() }.env("K", "V");
        let wrapped = cmd.with_prefix(&["ip".into(), "netns".into(), "exec".into(), "ns1".into()]);
        assert_eq!(wrapped.program, PathBuf::from("ip"));
        let args: Vec<&str> = wrapped.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["netns", "exec", "ns1", "/bin/raftkv", "server"]);
        assert_eq!(wrapped.env, cmd.env);
        let same = cmd.with_prefix(&[]);
        assert_eq!((same.program, same.args), (cmd.program, cmd.args));
    }
}
