//! Shared helpers of the process-level tests: the `raftkv-server` and `raftkv`
//! executables (built once per test binary when missing or stale), a 3-node cluster of
//! real server processes in a temporary directory (which nodes may join and leave; or
//! any number of them, each in its own network namespace: [`netns`]), a bounded write
//! load, and running the CLI with a deadline.
//!
//! Every wait here is a deadline-bounded poll of a condition
//! ([`raftkv_client::local::poll_until`]); nothing sleeps in place of a condition.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod netns;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use raftkv_client::local::{
    Bootstrap, LocalCluster, LocalClusterOptions, NodeConfig, NodePlacement, NodeProcess, SERVER_BIN_ENV,
    ServerCommand, poll_until,
};
use raftkv_client::{Client, ClientError, ClientOptions, MemberList, NodeId, NodeStatus};
use raftkv_linearizability::{Call, History, Ret};
use tokio::task::JoinSet;

// ---- executables ----------------------------------------------------------------------

/// The executables under test, in the test executable's `target/<profile>` directory.
pub struct Binaries {
    pub server: PathBuf,
    pub cli: PathBuf,
}

/// Set to skip the build (use whatever executables exist).
pub const NO_BUILD_ENV: &str = "RAFTKV_TESTS_NO_BUILD";

/// The executables, built first (once per test binary) if either is missing or older
/// than a source file of the crates they are built from. Concurrent builds from
/// several test binaries are serialized by cargo's own lock on the target directory.
pub fn binaries() -> &'static Binaries {
    // A failure is kept too: the other tests of this binary fail at once, not build again.
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BINARIES.get_or_init(locate_or_build) {
        Ok(b) => b,
        Err(e) => panic!("cannot provide the raftkv executables: {e}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

fn locate_or_build() -> Result<Binaries, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?
        .to_path_buf();
    let bin = |name: &str| profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let bins = Binaries { server: bin("raftkv-server"), cli: bin("raftkv") };
    let exists = bins.server.is_file() && bins.cli.is_file();
    if std::env::var_os(NO_BUILD_ENV).is_some_and(|v| !v.is_empty()) {
        return if exists {
            Ok(bins)
        } else {
            Err(format!("{NO_BUILD_ENV} is set but {} or {} is missing", bins.server.display(), bins.cli.display()))
        };
    }
    let newest = newest_source(&workspace_root());
    let fresh = |p: &Path| modified(p).is_some_and(|m| newest.is_none_or(|n| m >= n));
    if fresh(&bins.server) && fresh(&bins.cli) {
        return Ok(bins);
    }
    cargo_build(&profile_dir)?;
    if bins.server.is_file() && bins.cli.is_file() {
        Ok(bins)
    } else {
        Err(format!("cargo built, yet {} or {} is missing", bins.server.display(), bins.cli.display()))
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The crate under `crates/` that neither executable is built from.
const NOT_IN_THE_EXECUTABLES: &str = "sim";

/// The newest modification time of the sources the two executables are built from
/// (every crate under `crates/` but the simulator, and the workspace manifest and lock).
fn newest_source(root: &Path) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml")
                && let Some(m) = modified(&path)
            {
                *newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
    }
    let mut newest = [root.join("Cargo.toml"), root.join("Cargo.lock")].iter().filter_map(|p| modified(p)).max();
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else { return newest };
    for dir in crates.flatten().map(|e| e.path()) {
        // The simulator is not part of either executable.
        if dir.file_name().is_some_and(|n| n == NOT_IN_THE_EXECUTABLES) {
            continue;
        }
        walk(&dir.join("src"), &mut newest);
        for file in ["Cargo.toml", "build.rs"] {
            if let Some(m) = modified(&dir.join(file)) {
                newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
    }
    newest
}

/// `cargo build -p raftkv-server -p raftkv` into the profile directory the test
/// executable lives in (`$CARGO` if set, as under `cargo test`).
fn cargo_build(profile_dir: &Path) -> Result<(), String> {
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).ok_or("no profile directory name")?;
    let mut target_dir = profile_dir.parent().ok_or("no target directory")?.to_path_buf();
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root()).args(["build", "-p", "raftkv-server", "-p", "raftkv"]);
    // `<target>/<triple>/<profile>` when built with --target.
    if !target_dir.join("CACHEDIR.TAG").exists()
        && let Some(parent) = target_dir.parent().filter(|p| p.join("CACHEDIR.TAG").exists())
        && let Some(triple) = target_dir.file_name()
    {
        cmd.arg("--target").arg(triple);
        target_dir = parent.to_path_buf();
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    cmd.arg("--target-dir").arg(&target_dir);
    eprintln!("building the executables under test: {cmd:?}");
    let started = Instant::now();
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    eprintln!("built in {:?}", started.elapsed());
    Ok(())
}

// ---- cluster --------------------------------------------------------------------------

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
    /// `placement[i]` says (e.g. in a network namespace of [`netns::Net`]).
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

// ---- history --------------------------------------------------------------------------

/// A history shared by concurrent clients, with times in nanoseconds since it began.
pub struct Recorder {
    base: Instant,
    history: Mutex<History>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder { base: Instant::now(), history: Mutex::new(History::new()) }
    }
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn invoke(&self, process: u64, key: &str, call: Call) -> usize {
        let at = self.now();
        self.lock().invoke(process, key, call, at)
    }
    pub fn complete(&self, id: usize, ret: Ret) {
        let at = self.now();
        self.lock().complete(id, ret, at);
    }
    pub fn fail(&self, id: usize) {
        let at = self.now();
        self.lock().fail(id, at);
    }
    /// Seconds since the history began.
    pub fn secs(&self) -> f64 {
        self.base.elapsed().as_secs_f64()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

// ---- write load -----------------------------------------------------------------------

/// What a [`Load`] did: every key is written once, by one put.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Acknowledged puts: key → value.
    pub acked: BTreeMap<String, String>,
    /// Puts whose outcome is unknown (they may or may not have been applied).
    pub unknown: BTreeMap<String, String>,
    /// Definite failures (there should be none).
    pub errors: Vec<String>,
}

impl LoadResult {
    /// Acknowledged puts that `stored` lacks or holds with another value.
    pub fn lost<'a>(&'a self, stored: &BTreeMap<String, String>) -> Vec<&'a String> {
        self.acked.iter().filter(|(k, v)| stored.get(*k) != Some(*v)).map(|(k, _)| k).collect()
    }

    /// Pairs of `stored` that no put, acknowledged or unknown, wrote.
    pub fn invented<'a>(&self, stored: &'a BTreeMap<String, String>) -> Vec<(&'a String, &'a String)> {
        stored.iter().filter(|(k, v)| self.acked.get(*k).or(self.unknown.get(*k)) != Some(*v)).collect()
    }

    /// Panics if `stored` holds a value that no put, acknowledged or unknown, wrote to
    /// its key.
    pub fn assert_nothing_invented(&self, stored: &BTreeMap<String, String>) {
        let invented = self.invented(stored);
        assert!(invented.is_empty(), "values never written to their keys: {invented:?}");
    }
}

/// Concurrent writers, each with its own client, putting distinct keys
/// `<prefix>/w<writer>/<n>` until stopped, `per_writer` puts each, or `max_time`.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: JoinSet<LoadResult>,
}

impl Load {
    pub fn start(
        endpoints: Vec<String>,
        prefix: &str,
        writers: usize,
        per_writer: usize,
        opts: ClientOptions,
        max_time: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + max_time;
        let mut tasks = JoinSet::new();
        for w in 0..writers {
            let client = Client::new(endpoints.clone(), opts.clone()).expect("client");
            let (stop, acked, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
            tasks.spawn(async move {
                let mut result = LoadResult::default();
                for n in 0..per_writer {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= until {
                        break;
                    }
                    let key = format!("{prefix}/w{w}/{n:07}");
                    let value = format!("v{n}-w{w}-c{:08x}", client.client_id() as u32);
                    match client.put(key.clone(), value.clone()).await {
                        Ok(_) => {
                            result.acked.insert(key, value);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(ClientError::Unknown(_)) => {
                            result.unknown.insert(key, value);
                        }
                        Err(e) => result.errors.push(format!("put {key}: {e}")),
                    }
                }
                result
            });
        }
        Load { stop, acked, tasks }
    }

    /// Puts acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` puts were acknowledged.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        eventually(timeout, &format!("{n} acknowledged puts"), || async {
            let acked = self.acked();
            if acked >= n { Ok(()) } else { Err(format!("{acked} acknowledged")) }
        })
        .await
    }

    /// Tells the writers to stop after their current put, and collects their results.
    pub async fn stop(self, timeout: Duration) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        self.join(timeout).await
    }

    /// Waits for the writers to finish (all puts made, or their `max_time` passed).
    pub async fn join(mut self, timeout: Duration) -> LoadResult {
        let mut all = LoadResult::default();
        let joined = tokio::time::timeout(timeout, async {
            while let Some(r) = self.tasks.join_next().await {
                let r = r.expect("a writer task panicked");
                all.acked.extend(r.acked);
                all.unknown.extend(r.unknown);
                all.errors.extend(r.errors);
            }
        })
        .await;
        assert!(joined.is_ok(), "the writers did not finish within {timeout:?}");
        all
    }
}

// ---- CLI ------------------------------------------------------------------------------

/// One run of the `raftkv` executable.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutput {
    /// Everything about the run, for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "exit code {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "{}", self.show());
        self
    }
}

/// Runs `raftkv ARGS` with `env` (`RAFTKV_ENDPOINTS` unset unless given there), killed
/// if it has not exited within `limit`.
pub async fn raftkv(args: &[&str], env: &[(&str, &str)], limit: Duration) -> CliOutput {
    let bins = binaries();
    let mut cmd = tokio::process::Command::new(&bins.cli);
    cmd.args(args)
        .env_remove("RAFTKV_ENDPOINTS")
        .env(SERVER_BIN_ENV, &bins.server)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("raftkv {args:?} did not exit within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bins.cli.display()));
    CliOutput {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
        elapsed: started.elapsed(),
    }
}

/// `--endpoints` for a cluster's nodes (plus any `extra` first).
pub fn endpoints_arg(extra: &[String], cluster: &LocalCluster) -> String {
    extra.iter().cloned().chain(cluster.endpoints()).collect::<Vec<_>>().join(",")
}

/// The number right after the first `marker` in `text`.
pub fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An address nothing listens on (a free port, bound then released).
pub fn dead_endpoint() -> String {
    format!("127.0.0.1:{}", raftkv_client::local::free_port().expect("free port"))
}
