//! A private network of Linux network namespaces for partition tests (needs root, or
//! CAP_NET_ADMIN and CAP_SYS_ADMIN, and `ip` and `iptables`).
//!
//! Per [`Net`]: one "switch" namespace holding a bridge, one namespace per node joined
//! to that bridge by a veth pair, and one veth pair from the test's own (root)
//! namespace to the bridge, so that the test's clients reach every node. The bridge
//! lives in its own namespace, not in the root one, because there a host firewall may
//! filter bridged traffic (with `br_netfilter` loaded, Docker's `FORWARD DROP` policy
//! drops it); a fresh namespace has no rules. Addresses are in a private /24 chosen per
//! run (`10.100.0.0`-`10.199.255.0`, one in use on the host is skipped); the test
//! reaches node `i` at `10.X.Y.(10 + i)` from `10.X.Y.1`.
//!
//! A partition is `iptables` DROP rules inside the nodes' namespaces, on INPUT and
//! OUTPUT, by peer address, on both sides; healing flushes them. The clients (in the
//! root namespace) are never cut off, as in Jepsen.
//!
//! Names: everything starts with `rkvj<pid>-<k>` (the test process's pid and a
//! per-process counter), so parallel runs do not clash; the one interface in the root
//! namespace is named exactly that (at most 15 characters). Dropping the [`Net`]
//! deletes it all, also on panic; [`Net::create`] first removes what crashed runs of
//! this harness left (names with the prefix whose pid is no longer running, and the
//! processes inside those namespaces).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use raftkv_client::NodeId;
use raftkv_client::local::NodePlacement;

/// Every name this harness creates starts with this.
pub const NAME_PREFIX: &str = "rkvj";
/// The port every node listens on (each namespace has its own ports).
pub const NODE_PORT: u16 = 7000;
/// Set to `1` to make a test fail, not skip, when namespaces cannot be created (as
/// under `CI=true`).
pub const REQUIRE_ENV: &str = "RAFTKV_REQUIRE_NETNS";
/// At most this many nodes (one digit in the names).
pub const MAX_NODES: usize = 9;

/// Inside the switch namespace: the bridge, and its port towards the root namespace.
const BRIDGE: &str = "br0";
const UPLINK: &str = "uplink";
/// A node's interface inside its own namespace.
const NODE_IF: &str = "eth0";

/// Distinguishes several networks of one process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The namespaces, links and addresses of one test run; deleted on drop.
pub struct Net {
    /// `rkvj<pid>-<k>`: the prefix of every name, and the root namespace's interface.
    name: String,
    /// The first three octets of the /24.
    subnet: [u8; 3],
    nodes: usize,
}

impl Net {
    /// Creates a network of `nodes` namespaces (after removing stale ones), or says
    /// why it cannot.
    pub fn create(nodes: usize) -> Result<Net, String> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(format!("{nodes} nodes: a network has 1 to {MAX_NODES}"));
        }
        for removed in remove_stale() {
            eprintln!("netns: removed {removed}, left by an earlier run that is gone");
        }
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        if k > 9 {
            return Err(format!("more than 10 networks in one process ({})", std::process::id()));
        }
        let pid = std::process::id();
        let subnet = free_subnet(pid as usize * 10 + k)?;
        // From here on, dropping `net` removes whatever was created.
        let net = Net { name: format!("{NAME_PREFIX}{pid}-{k}"), subnet, nodes };
        net.build()?;
        Ok(net)
    }

    /// The switch namespace, its bridge and uplink, then one namespace per node.
    fn build(&self) -> Result<(), String> {
        let sw = self.switch_ns();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        ip(&["link", "add", &self.name, "type", "veth", "peer", "name", UPLINK, "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", UPLINK, "master", BRIDGE, "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.host_ip()), "dev", &self.name])?;
        ip(&["link", "set", &self.name, "up"])?;
        for id in self.ids() {
            let ns = self.node_ns(id);
            let port = format!("n{id}");
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", NODE_IF, "netns", &ns])?;
            ip(&["-n", &sw, "link", "set", &port, "master", BRIDGE, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(id)), "dev", NODE_IF])?;
            ip(&["-n", &ns, "link", "set", NODE_IF, "up"])?;
        }
        Ok(())
    }

    /// Node ids, `1..=nodes`.
    pub fn ids(&self) -> Vec<NodeId> {
        (1..=self.nodes as NodeId).collect()
    }

    /// `10.X.Y.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The root namespace's address on the network.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    pub fn node_ip(&self, id: NodeId) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + id as u8)
    }

    pub fn node_ns(&self, id: NodeId) -> String {
        format!("{}-n{id}", self.name)
    }

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }

    /// Where each node runs: in its namespace, listening on its address.
    pub fn placement(&self) -> Vec<NodePlacement> {
        self.ids()
            .into_iter()
            .map(|id| NodePlacement {
                addr: Some(format!("{}:{NODE_PORT}", self.node_ip(id))),
                prefix: ["ip", "netns", "exec", &self.node_ns(id)].iter().map(Into::into).collect(),
                ..NodePlacement::default()
            })
            .collect()
    }

    /// Drops every packet between a node of `a` and a node of `b`, both ways (rules
    /// are added to those already there). The test's own traffic still passes.
    pub async fn cut(&self, a: &[NodeId], b: &[NodeId]) -> Result<(), String> {
        if let Some(id) = a.iter().find(|id| b.contains(id)) {
            return Err(format!("node {id} is on both sides of the cut {a:?} / {b:?}"));
        }
        let mut peers: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        for (side, other) in [(a, b), (b, a)] {
            for id in side {
                peers.entry(*id).or_default().extend(other);
            }
        }
        for (id, others) in peers {
            let mut rules = String::from("*filter\n");
            for peer in others {
                let ip = self.node_ip(peer);
                rules.push_str(&format!("-A INPUT -s {ip}/32 -j DROP\n-A OUTPUT -d {ip}/32 -j DROP\n"));
            }
            rules.push_str("COMMIT\n");
            self.iptables_restore(id, &["--noflush"], rules).await?;
        }
        Ok(())
    }

    /// Drops every packet between the test's own (root) namespace and the nodes
    /// `ids`, both ways: the test's clients can no longer reach them (they still reach
    /// each other and the other nodes). What a client outside a cluster sees of the
    /// members it has no route to.
    pub async fn hide_from_host(&self, ids: &[NodeId]) -> Result<(), String> {
        let host = self.host_ip();
        for id in ids {
            let rules = format!("*filter\n-A INPUT -s {host}/32 -j DROP\n-A OUTPUT -d {host}/32 -j DROP\nCOMMIT\n");
            self.iptables_restore(*id, &["--noflush"], rules).await?;
        }
        Ok(())
    }

    /// Removes every rule: all nodes reach each other again.
    pub async fn heal(&self) -> Result<(), String> {
        for id in self.ids() {
            self.iptables_restore(id, &[], "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n".into())
                .await?;
        }
        Ok(())
    }

    /// The filter rules in node `id`'s namespace (`iptables -S`).
    pub fn rules(&self, id: NodeId) -> Result<String, String> {
        run(Command::new("ip").args(["netns", "exec", &self.node_ns(id), "iptables", "-S"]))
    }

    /// `iptables-restore ARGS < input` inside node `id`'s namespace (async: the
    /// nemesis runs beside the clients on the same runtime).
    async fn iptables_restore(&self, id: NodeId, args: &[&str], input: String) -> Result<(), String> {
        let ns = self.node_ns(id);
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns, "iptables-restore"]).args(args);
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
        let mut stdin = child.stdin.take().ok_or_else(|| format!("{what}: no stdin"))?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes())
            .await
            .map_err(|e| format!("{what}: writing the rules: {e}"))?;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({}): {}\n{input}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Runs `f` on a thread inside node `id`'s network namespace (its sockets stay in
    /// that namespace wherever they are used later).
    pub fn in_node<T: Send + 'static>(&self, id: NodeId, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        let path = Path::new("/run/netns").join(self.node_ns(id));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {}: {e}", path.display()))?;
            Ok(f())
        })
        .join()
        .map_err(|_| "the thread inside the namespace panicked".to_string())?
    }

    /// The names this network holds, as [`remove_stale`] would find them.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.switch_ns()];
        names.extend(self.ids().into_iter().map(|id| self.node_ns(id)));
        names.push(self.name.clone());
        names
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the switch namespace destroys the bridge and every veth pair (their
        // other ends included); processes still inside a node's namespace keep it
        // alive, unnamed and without links, until they exit.
        let mut left = Vec::new();
        for ns in std::iter::once(self.switch_ns()).chain(self.ids().into_iter().map(|id| self.node_ns(id))) {
            if let Err(e) = delete_ns(&ns) {
                left.push(e);
            }
        }
        // Normally gone with its peer; deleting it may race with that.
        if let Err(e) = ip(&["link", "del", &self.name])
            && link_exists(&self.name)
        {
            left.push(e);
        }
        if !left.is_empty() {
            eprintln!("netns: could not remove everything of {}: {left:?}", self.name);
        }
    }
}

/// Creates a network, or explains why not: under `CI=true` or with
/// `RAFTKV_REQUIRE_NETNS=1` that is a test failure (panics); otherwise it prints a loud
/// SKIPPED line and returns `None`.
pub fn create_or_skip(nodes: usize, test: &str) -> Option<Net> {
    match Net::create(nodes) {
        Ok(net) => Some(net),
        Err(e) => {
            let required = ["CI", REQUIRE_ENV]
                .iter()
                .any(|v| std::env::var(v).is_ok_and(|s| s.eq_ignore_ascii_case("true") || s == "1"));
            if required {
                panic!("{test}: cannot create network namespaces (CI=true or {REQUIRE_ENV}=1 require them): {e}");
            }
            eprintln!("\n******** SKIPPED {test}: cannot create network namespaces (needs root, ip and iptables): {e}");
            eprintln!("******** (this test FAILS instead under CI=true or {REQUIRE_ENV}=1)\n");
            None
        }
    }
}

/// Removes namespaces and root interfaces named by this harness for a process that no
/// longer runs (killing the processes inside such namespaces first). Returns what it
/// removed.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    // Interfaces first: deleting a namespace may take the peer of one with it.
    let links = run(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
    for link in links.lines().filter_map(link_name) {
        if is_stale(link) && ip(&["link", "del", link]).is_ok() {
            removed.push(format!("interface {link}"));
        }
    }
    let namespaces = run(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for ns in namespaces.lines().filter_map(|l| l.split_whitespace().next()) {
        if !is_stale(ns) {
            continue;
        }
        let pids = run(Command::new("ip").args(["netns", "pids", ns])).unwrap_or_default();
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if delete_ns(ns).is_ok() {
            removed.push(format!("namespace {ns}"));
        }
    }
    removed
}

/// The interface name in a line of `ip -o link show` ("7: name@peer: <...> ...").
fn link_name(line: &str) -> Option<&str> {
    let field = line.split_whitespace().nth(1)?.trim_end_matches(':');
    Some(field.split('@').next().unwrap_or(field))
}

/// Whether `name` is this harness's and its process is gone.
fn is_stale(name: &str) -> bool {
    match owner(name) {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// The pid in `rkvj<pid>-<k>[-...]`.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, k) = rest.split_once('-')?;
    let k = k.split('-').next()?;
    (k.len() == 1 && k.chars().all(|c| c.is_ascii_digit())).then_some(())?;
    pid.parse().ok()
}

fn delete_ns(ns: &str) -> Result<(), String> {
    if Path::new("/run/netns").join(ns).exists() { ip(&["netns", "del", ns]).map(drop) } else { Ok(()) }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A /24 in 10.100.0.0-10.199.255.0, starting from `seed`, that overlaps no address or
/// route of the host.
fn free_subnet(seed: usize) -> Result<[u8; 3], String> {
    const SPAN: usize = 100 * 256;
    let used = used_prefixes()?;
    for attempt in 0..SPAN {
        // A stride coprime with SPAN visits every /24 once.
        let c = (seed + attempt * 257) % SPAN;
        let subnet = [10, 100 + (c / 256) as u8, (c % 256) as u8];
        let ours = (u32::from(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 0)), 24);
        if !used.iter().any(|p| overlap(*p, ours)) {
            return Ok(subnet);
        }
    }
    Err("no free /24 in 10.100.0.0/9".into())
}

/// Every IPv4 address or prefix mentioned by the host's addresses and routes.
fn used_prefixes() -> Result<Vec<(u32, u8)>, String> {
    let addrs = run(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
    let routes = run(Command::new("ip").args(["-4", "route", "show", "table", "all"]))?;
    Ok(addrs.split_whitespace().chain(routes.split_whitespace()).filter_map(parse_prefix).collect())
}

/// `a.b.c.d/len` or `a.b.c.d` (a /32).
fn parse_prefix(token: &str) -> Option<(u32, u8)> {
    let (addr, len) = token.split_once('/').unwrap_or((token, "32"));
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len))
}

/// Whether two prefixes share an address.
fn overlap(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Runs a command to completion; its stdout, or an error naming it with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}
