//! Command-line flags (each also read from `RAFTKV_<FLAG>`) and their resolution into a
//! [`NodeConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use raftkv_raft::NodeId;
use raftkv_replica::check_addr;
use raftkv_rpc::{TlsConfig, TlsFiles};
use raftkv_storage::{FsyncPolicy, StorageOptions};

/// A raftkv node: one replica of a key/value store replicated with Raft. Clients
/// (`raftkv`) and the other nodes reach it on `--listen`; `--admin-listen` serves
/// /livez, /readyz and /metrics.
///
/// Two ways to name the cluster: static (`--id`, `--listen`, `--peers` to found a
/// cluster, or `--join` to join one) or Kubernetes (`--pod-name`, `--service`,
/// `--replicas`, derived from a StatefulSet's stable names: the first `--replicas` pods
/// found the cluster, later ones join it).
///
/// These are the flags of `raftkv-server` and of `raftkv server`.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "raftkv-server",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RAFTKV_GIT_COMMIT"), ")"),
    about = "A raftkv node: one replica of a key/value store replicated with Raft"
)]
pub struct ServerArgs {
    /// This node's id (non-zero). Static mode.
    #[arg(long, env = "RAFTKV_ID", conflicts_with = "pod_name")]
    pub id: Option<u64>,

    /// Address to listen on, e.g. 127.0.0.1:6001. Static mode.
    #[arg(long, env = "RAFTKV_LISTEN", value_name = "HOST:PORT", conflicts_with = "pod_name")]
    pub listen: Option<String>,

    /// Every initial member as ID=HOST:PORT, comma separated, to found a new cluster. May
    /// include this node (its entry is then its advertised address); if it does not, this
    /// node is added with --advertise. Ignored once the data dir belongs to a cluster.
    #[arg(
        long,
        env = "RAFTKV_PEERS",
        value_name = "ID=HOST:PORT,...",
        value_delimiter = ',',
        value_parser = parse_peer,
        conflicts_with = "pod_name"
    )]
    pub peers: Vec<Peer>,

    /// Join an existing cluster through these members (any of them; the leader is
    /// found) instead of founding one with --peers: this node asks to be added as a
    /// learner with --id and --advertise, and is promoted to voter once caught up.
    /// Ignored once the data dir belongs to a cluster.
    #[arg(
        long,
        env = "RAFTKV_JOIN",
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        value_parser = parse_addr_arg,
        conflicts_with_all = ["peers", "pod_name"],
        requires = "id"
    )]
    pub join: Vec<String>,

    /// The address other members and clients reach this node at. Default: --listen
    /// (Kubernetes mode: the pod's name in the headless service).
    #[arg(long, env = "RAFTKV_ADVERTISE", value_name = "HOST:PORT", value_parser = parse_addr_arg)]
    pub advertise: Option<String>,

    /// Mixed into the id of a new cluster, so that clusters founded from the same member
    /// list are still told apart. Give each cluster its own.
    #[arg(long, env = "RAFTKV_CLUSTER_TOKEN", default_value = "raftkv")]
    pub cluster_token: String,

    /// Directory of this node's write-ahead log and snapshots.
    #[arg(long, env = "RAFTKV_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Kubernetes mode: this pod's name, `<statefulset>-<ordinal>`; the id is ordinal + 1.
    #[arg(long, env = "RAFTKV_POD_NAME", requires_all = ["service", "replicas"])]
    pub pod_name: Option<String>,

    /// Kubernetes mode: the headless service of the StatefulSet.
    #[arg(long, env = "RAFTKV_SERVICE", requires = "pod_name")]
    pub service: Option<String>,

    /// Kubernetes mode: the number of pods that found the cluster (ordinals
    /// 0..replicas-1). A pod with a higher ordinal joins the cluster through them.
    #[arg(long, env = "RAFTKV_REPLICAS", requires = "pod_name")]
    pub replicas: Option<u32>,

    /// Kubernetes mode: the port every pod listens on.
    #[arg(long, env = "RAFTKV_PORT", default_value_t = 6000)]
    pub port: u16,

    /// Kubernetes mode: the namespace. When given, peer names are qualified as
    /// `<pod>.<service>.<namespace>.svc`; otherwise `<pod>.<service>` (same namespace).
    #[arg(long, env = "RAFTKV_NAMESPACE")]
    pub namespace: Option<String>,

    /// Length of one Raft tick in milliseconds.
    #[arg(long, env = "RAFTKV_TICK_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub tick_ms: u64,

    /// Ticks without a leader before a follower campaigns.
    #[arg(long, env = "RAFTKV_ELECTION_TICKS", default_value_t = 10)]
    pub election_ticks: u32,

    /// Ticks between leader heartbeats.
    #[arg(long, env = "RAFTKV_HEARTBEAT_TICKS", default_value_t = 1)]
    pub heartbeat_ticks: u32,

    /// Snapshot the state machine after this many entries applied since the last one
    /// (0 disables snapshots).
    #[arg(long, env = "RAFTKV_SNAPSHOT_ENTRIES", default_value_t = 10_000)]
    pub snapshot_entries: u64,

    /// Whether to fsync before acknowledging. `never` may lose acknowledged writes on
    /// power failure: benchmarks only.
    #[arg(long, env = "RAFTKV_FSYNC", value_enum, default_value_t = FsyncMode::Always)]
    pub fsync: FsyncMode,

    /// Log output format. The filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "RAFTKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve HTTP `/livez`, `/readyz` and `/metrics` (Prometheus text) on this address,
    /// e.g. 0.0.0.0:9090. Off when not given.
    #[arg(long, env = "RAFTKV_ADMIN_LISTEN", value_name = "HOST:PORT", value_parser = parse_admin_listen)]
    pub admin_listen: Option<String>,

    /// Mutual TLS for peer and client traffic: this node's certificate (PEM; its CN
    /// must start with `raftkv-node-` and its SANs name the hosts peers dial).
    /// Give --tls-cert, --tls-key and --tls-ca together, or none (plaintext).
    #[arg(long, env = "RAFTKV_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "RAFTKV_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA (PEM): peers and clients must present a certificate it signed.
    #[arg(long, env = "RAFTKV_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Threads of the async runtime that serves the network and runs the Raft loop
    /// (default: the CPUs this process may use). Fewer suit a machine shared with other
    /// busy processes, such as several nodes on one host: each runtime thread that
    /// wakes to share a burst of work costs a context switch there. The log writer has
    /// a thread of its own besides.
    #[arg(long, env = "RAFTKV_WORKER_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Accept `raftkv fault` requests (partitions, slow fsyncs, pauses that heal by
    /// themselves): for development clusters and demos only. Off: every fault request
    /// is refused.
    #[arg(long, env = "RAFTKV_ENABLE_FAULTS")]
    pub enable_faults: bool,

    /// Parse and resolve the flags, print what they resolve to and exit (the offline
    /// checks run the manifests' args through it); binds, loads and writes nothing.
    #[arg(long, hide = true)]
    pub check_args: bool,
}

/// `--fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsyncMode {
    Always,
    Never,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// One `ID=HOST:PORT` entry of `--peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

/// Parses one `ID=HOST:PORT` entry. The address is not resolved (peers may not exist yet).
pub fn parse_peer(s: &str) -> Result<Peer, String> {
    let s = s.trim();
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("'{s}' is not ID=HOST:PORT (e.g. 1=10.0.0.1:6000)"))?;
    let id: NodeId = id.trim().parse().map_err(|_| format!("'{s}': the id '{}' is not a number", id.trim()))?;
    if id == 0 {
        return Err(format!("'{s}': node ids must be non-zero"));
    }
    let addr = addr.trim();
    check_addr(addr).map_err(|e| format!("'{s}': {e}"))?;
    Ok(Peer { id, addr: addr.to_string() })
}

/// `--admin-listen`: `HOST:PORT`, checked like `--listen`.
fn parse_admin_listen(s: &str) -> Result<String, String> {
    parse_addr_arg(s)
}

/// One `HOST:PORT` flag value (`--join` entries, `--advertise`), trimmed.
fn parse_addr_arg(s: &str) -> Result<String, String> {
    check_addr(s.trim())?;
    Ok(s.trim().to_string())
}

/// Everything a node needs to start, derived from [`ServerArgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The address to bind.
    pub listen: String,
    /// Every member (this node included) and the address peers reach it at.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub snapshot_entries: u64,
    pub fsync: FsyncPolicy,
    /// How this node founds or joins its cluster.
    pub cluster: ClusterConfig,
    /// Storage settings that have no flag, for tests and embedding (e.g. a
    /// fault-injecting file system, small WAL segments); `None`: the defaults. Its
    /// `fsync` is ignored in favour of the field above.
    pub storage: Option<StorageOptions>,
    /// Mutual TLS for every connection in and out; `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// `--enable-faults`: serve `raftkv fault` (development clusters only).
    pub enable_faults: bool,
}

/// The membership part of a [`NodeConfig`]. All of it matters only until the data dir
/// belongs to a cluster (it then holds the cluster id and node id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `--cluster-token`: mixed into the id of a cluster this node founds.
    pub token: String,
    /// The address other members reach this node at.
    pub advertise: String,
    /// Members to join through; empty to found a cluster with `peers` instead.
    pub join: Vec<String>,
    /// Kubernetes mode: `id` is a request: if it is taken, the leader allocates another,
    /// and the id stored in the data dir wins over `id` on restart.
    pub allocate_id: bool,
}

impl ClusterConfig {
    /// Founds a cluster with the given peers (no joining), token `raftkv`.
    pub fn found(advertise: impl Into<String>) -> ClusterConfig {
        ClusterConfig { token: "raftkv".into(), advertise: advertise.into(), join: Vec::new(), allocate_id: false }
    }
}

impl NodeConfig {
    /// How long an election timeout is at least.
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks
    }
}

impl ServerArgs {
    /// Validates the flags and derives the node's identity, address and peers.
    /// Errors name the offending flag.
    pub fn resolve(&self) -> Result<NodeConfig, String> {
        let (id, listen, peers, cluster) = match &self.pod_name {
            Some(pod) => self.resolve_kubernetes(pod)?,
            None => self.resolve_static()?,
        };
        if self.heartbeat_ticks == 0 {
            return Err("--heartbeat-ticks must be at least 1".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(format!(
                "--election-ticks ({}) must be greater than --heartbeat-ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        Ok(NodeConfig {
            id,
            listen,
            peers,
            data_dir: self.data_dir.clone(),
            tick: Duration::from_millis(self.tick_ms),
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            snapshot_entries: self.snapshot_entries,
            fsync: match self.fsync {
                FsyncMode::Always => FsyncPolicy::Always,
                FsyncMode::Never => FsyncPolicy::Never,
            },
            cluster,
            storage: None,
            tls: self.tls()?,
            enable_faults: self.enable_faults,
        })
    }

    /// `--tls-cert`, `--tls-key`, `--tls-ca`: all three (loaded now, so a bad file
    /// fails the start with its name) or none.
    fn tls(&self) -> Result<Option<TlsConfig>, String> {
        let files = tls_files(self.tls_cert.as_ref(), self.tls_key.as_ref(), self.tls_ca.as_ref())?;
        files.map(|f| TlsConfig::load(&f).map_err(|e| format!("TLS: {e}"))).transpose()
    }

    fn resolve_static(&self) -> Result<Resolved, String> {
        let id = self.id.ok_or("--id is required (or use Kubernetes mode with --pod-name)")?;
        if id == 0 {
            return Err("--id must be non-zero".into());
        }
        let listen = self.listen.clone().ok_or("--listen is required (or use Kubernetes mode with --pod-name)")?;
        check_addr(&listen).map_err(|e| format!("--listen: {e}"))?;
        let advertise = self.advertise.clone().unwrap_or_else(|| listen.clone());
        let cluster = ClusterConfig {
            token: self.token()?,
            advertise: advertise.clone(),
            join: self.join.clone(),
            allocate_id: false,
        };
        if !self.join.is_empty() {
            if is_wildcard(&advertise) {
                return Err(format!(
                    "--advertise is required with --join when --listen ({listen}) is a wildcard address: \
                     the other members must be able to reach this node"
                ));
            }
            return Ok((id, listen, BTreeMap::new(), cluster));
        }
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            if peers.insert(p.id, p.addr.clone()).is_some() {
                return Err(format!("--peers lists node {} more than once", p.id));
            }
        }
        peers.entry(id).or_insert(advertise);
        Ok((id, listen, peers, cluster))
    }

    fn token(&self) -> Result<String, String> {
        let token = self.cluster_token.trim();
        if token.is_empty() {
            return Err("--cluster-token must not be empty".into());
        }
        Ok(token.to_string())
    }

    fn resolve_kubernetes(&self, pod: &str) -> Result<Resolved, String> {
        let service = self.service.as_deref().ok_or("--service is required with --pod-name")?;
        let replicas = self.replicas.ok_or("--replicas is required with --pod-name")?;
        if replicas == 0 {
            return Err("--replicas must be at least 1".into());
        }
        if service.is_empty() {
            return Err("--service must not be empty".into());
        }
        let (set, ordinal) = pod
            .rsplit_once('-')
            .and_then(|(set, n)| Some((set, n.parse::<u64>().ok()?)))
            .filter(|(set, _)| !set.is_empty())
            .ok_or_else(|| format!("--pod-name '{pod}' must look like <statefulset>-<ordinal>, e.g. raft-0"))?;
        let domain = match &self.namespace {
            Some(ns) => format!("{service}.{ns}.svc"),
            None => service.to_string(),
        };
        let port = self.port;
        let pod_addr = |i: u64| format!("{set}-{i}.{domain}:{port}");
        let founders: BTreeMap<NodeId, String> = (0..u64::from(replicas)).map(|i| (i + 1, pod_addr(i))).collect();
        let founder = ordinal < u64::from(replicas);
        let cluster = ClusterConfig {
            token: self.token()?,
            advertise: self.advertise.clone().unwrap_or_else(|| pod_addr(ordinal)),
            join: if founder { Vec::new() } else { founders.values().cloned().collect() },
            allocate_id: true,
        };
        let peers = if founder { founders } else { BTreeMap::new() };
        Ok((ordinal + 1, format!("0.0.0.0:{port}"), peers, cluster))
    }
}

/// Checks that the three TLS flags come together (all or none).
pub fn tls_files(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    ca: Option<&PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => {
            Ok(Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() }))
        }
        _ => {
            let missing: Vec<&str> = [(cert, "--tls-cert"), (key, "--tls-key"), (ca, "--tls-ca")]
                .iter()
                .filter(|(v, _)| v.is_none())
                .map(|(_, name)| *name)
                .collect();
            Err(format!(
                "TLS needs --tls-cert, --tls-key and --tls-ca together; missing {} (give all three, or none for \
                 plaintext)",
                missing.join(", ")
            ))
        }
    }
}

/// What the two modes resolve: id, listen address, founding members, membership.
type Resolved = (NodeId, String, BTreeMap<NodeId, String>, ClusterConfig);

/// Whether `addr`'s host is an unspecified address (0.0.0.0 or ::), which peers cannot
/// connect to.
fn is_wildcard(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        // clap also reads RAFTKV_* variables; these tests assume none is set.
        ServerArgs::try_parse_from(std::iter::once("raftkv-server").chain(args.iter().copied()))
    }

    fn resolve(args: &[&str]) -> Result<NodeConfig, String> {
        parse(args).map_err(|e| e.to_string())?.resolve()
    }

    #[test]
    fn static_mode_with_self_in_peers() {
        let cfg = resolve(&[
            "--id",
            "2",
            "--listen",
            "0.0.0.0:6002",
            "--peers",
            "1=10.0.0.1:6001,2=10.0.0.2:6002, 3=node-3.example:6003",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.listen, "0.0.0.0:6002");
        let peers: Vec<_> = cfg.peers.iter().map(|(i, a)| (*i, a.as_str())).collect();
        assert_eq!(peers, [(1, "10.0.0.1:6001"), (2, "10.0.0.2:6002"), (3, "node-3.example:6003")]);
        assert_eq!(cfg.tick, Duration::from_millis(100));
        assert_eq!((cfg.election_ticks, cfg.heartbeat_ticks, cfg.snapshot_entries), (10, 1, 10_000));
        assert_eq!(cfg.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn static_mode_adds_self_from_listen() {
        let cfg =
            resolve(&["--id", "3", "--listen", "127.0.0.1:7003", "--peers", "1=a:1,2=b:2", "--data-dir", "d"]).unwrap();
        assert_eq!(cfg.peers.get(&3).map(String::as_str), Some("127.0.0.1:7003"));
        assert_eq!(cfg.peers.len(), 3);
        let single = resolve(&["--id", "1", "--listen", "127.0.0.1:1", "--data-dir", "d"]).unwrap();
        assert_eq!(single.peers.into_iter().collect::<Vec<_>>(), [(1, "127.0.0.1:1".to_string())]);
    }

    #[test]
    fn repeated_peers_flags_accumulate() {
        let cfg = resolve(&["--id", "1", "--listen", "h:1", "--peers", "1=h:1", "--peers", "2=h:2", "--data-dir", "d"])
            .unwrap();
        assert_eq!(cfg.peers.len(), 2);
    }

    #[test]
    fn peer_entry_errors_are_clear() {
        assert!(parse_peer("1=10.0.0.1:6000").is_ok());
        assert!(parse_peer("x=h:1").unwrap_err().contains("the id 'x' is not a number"));
        assert!(parse_peer("0=h:1").unwrap_err().contains("non-zero"));
        assert!(parse_peer("1-h:1").unwrap_err().contains("is not ID=HOST:PORT"));
        assert!(parse_peer("1=h").unwrap_err().contains("has no :PORT"));
        assert!(parse_peer("1=h:99999").unwrap_err().contains("invalid port '99999'"));
        assert!(parse_peer("1=:5").unwrap_err().contains("has no host"));
        let err = parse(&["--id", "1", "--listen", "h:1", "--peers", "1=h:1,2=oops", "--data-dir", "d"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--peers"), "{msg}");
        assert!(msg.contains("'2=oops'"), "{msg}");
    }

    #[test]
    fn static_mode_errors_name_the_flag() {
        let e = resolve(&["--listen", "h:1", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--id is required"), "{e}");
        let e = resolve(&["--id", "1", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--listen is required"), "{e}");
        let e = resolve(&["--id", "0", "--listen", "h:1", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--id must be non-zero"), "{e}");
        let e = resolve(&["--id", "1", "--listen", "nohost", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--listen"), "{e}");
        let e = resolve(&["--id", "1", "--listen", "h:1", "--peers", "2=a:1,2=b:2", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--peers lists node 2 more than once"), "{e}");
        let e = resolve(&["--id", "1", "--listen", "h:1", "--election-ticks", "1", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--election-ticks"), "{e}");
        let e = resolve(&["--id", "1", "--listen", "h:1"]).unwrap_err();
        assert!(e.contains("--data-dir"), "{e}");
        let e = resolve(&["--id", "1", "--listen", "h:1", "--data-dir", "d", "--fsync", "sometimes"]).unwrap_err();
        assert!(e.contains("--fsync"), "{e}");
    }

    #[test]
    fn kubernetes_mode_derives_id_peers_and_listen() {
        let cfg =
            resolve(&["--pod-name", "raft-1", "--service", "raft-service", "--replicas", "3", "--data-dir", "/d"])
                .unwrap();
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.listen, "0.0.0.0:6000");
        let peers: Vec<_> = cfg.peers.iter().map(|(i, a)| (*i, a.as_str())).collect();
        assert_eq!(
            peers,
            [(1, "raft-0.raft-service:6000"), (2, "raft-1.raft-service:6000"), (3, "raft-2.raft-service:6000")]
        );
    }

    #[test]
    fn kubernetes_mode_port_namespace_and_dashed_names() {
        let cfg = resolve(&[
            "--pod-name",
            "my-kv-store-0",
            "--service",
            "kv",
            "--replicas",
            "1",
            "--port",
            "7000",
            "--namespace",
            "prod",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        assert_eq!(cfg.id, 1);
        assert_eq!(cfg.listen, "0.0.0.0:7000");
        assert_eq!(cfg.peers.get(&1).map(String::as_str), Some("my-kv-store-0.kv.prod.svc:7000"));
    }

    #[test]
    fn kubernetes_mode_errors() {
        let e = resolve(&["--pod-name", "raft", "--service", "s", "--replicas", "3", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--pod-name 'raft' must look like"), "{e}");
        let e = resolve(&["--pod-name", "raft-0", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--service") && e.contains("--replicas"), "{e}");
        let e = resolve(&["--pod-name", "raft-0", "--service", "s", "--replicas", "3", "--id", "1", "--data-dir", "d"])
            .unwrap_err();
        assert!(e.contains("--id") && e.contains("--pod-name"), "{e}");
    }

    #[test]
    fn membership_flags_join_advertise_and_token() {
        let cfg = resolve(&["--id", "1", "--listen", "10.0.0.1:1", "--data-dir", "d"]).unwrap();
        assert_eq!(cfg.cluster, ClusterConfig::found("10.0.0.1:1"));
        let cfg = resolve(&[
            "--id",
            "4",
            "--listen",
            "0.0.0.0:6004",
            "--advertise",
            "node-4:6004",
            "--join",
            "a:1, b:2",
            "--cluster-token",
            "prod",
            "--data-dir",
            "d",
        ])
        .unwrap();
        assert_eq!(cfg.id, 4);
        assert!(cfg.peers.is_empty(), "a joining node founds nothing");
        let want = ClusterConfig {
            token: "prod".into(),
            advertise: "node-4:6004".into(),
            join: vec!["a:1".into(), "b:2".into()],
            allocate_id: false,
        };
        assert_eq!(cfg.cluster, want);
        // --peers without this node: it is added with its advertised address.
        let cfg = resolve(&[
            "--id",
            "3",
            "--listen",
            "0.0.0.0:3",
            "--advertise",
            "c:3",
            "--peers",
            "1=a:1",
            "--data-dir",
            "d",
        ])
        .unwrap();
        assert_eq!(cfg.peers.get(&3).map(String::as_str), Some("c:3"));
        let e = resolve(&["--id", "4", "--listen", "0.0.0.0:6004", "--join", "a:1", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--advertise is required"), "{e}");
        let e = resolve(&["--listen", "h:1", "--join", "a:1", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--id"), "{e}");
        let e = resolve(&["--id", "4", "--listen", "h:1", "--join", "a:1", "--peers", "1=a:1", "--data-dir", "d"])
            .unwrap_err();
        assert!(e.contains("--join") && e.contains("--peers"), "{e}");
        let e = resolve(&["--id", "4", "--listen", "h:1", "--join", "nope", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--join") && e.contains("no :PORT"), "{e}");
        let e = resolve(&["--id", "1", "--listen", "h:1", "--cluster-token", " ", "--data-dir", "d"]).unwrap_err();
        assert!(e.contains("--cluster-token must not be empty"), "{e}");
    }

    #[test]
    fn kubernetes_pods_beyond_replicas_join_the_founders() {
        let base = ["--service", "kv", "--replicas", "3", "--data-dir", "d"];
        let founder = resolve(&[&["--pod-name", "raft-2"], &base[..]].concat()).unwrap();
        assert_eq!(founder.peers.len(), 3);
        assert!(founder.cluster.join.is_empty());
        assert_eq!(founder.cluster.advertise, "raft-2.kv:6000");
        assert!(founder.cluster.allocate_id);
        let joiner = resolve(&[&["--pod-name", "raft-4"], &base[..]].concat()).unwrap();
        assert_eq!(joiner.id, 5);
        assert!(joiner.peers.is_empty());
        assert_eq!(joiner.cluster.join, ["raft-0.kv:6000", "raft-1.kv:6000", "raft-2.kv:6000"]);
        assert_eq!(joiner.cluster.advertise, "raft-4.kv:6000");
        assert!(joiner.cluster.allocate_id);
    }

    #[test]
    fn tls_flags_come_together_and_name_the_file() {
        let base = ["--id", "1", "--listen", "127.0.0.1:1", "--data-dir", "d"];
        assert_eq!(resolve(&base).unwrap().tls, None);
        let e = resolve(&[&base[..], &["--tls-cert", "c.pem", "--tls-ca", "ca.pem"]].concat()).unwrap_err();
        assert!(e.contains("missing --tls-key"), "{e}");
        let e = resolve(&[&base[..], &["--tls-key", "k.pem"]].concat()).unwrap_err();
        assert!(e.contains("missing --tls-cert, --tls-ca"), "{e}");
        let e =
            resolve(&[&base[..], &["--tls-cert", "/nonexistent/c.pem", "--tls-key", "k", "--tls-ca", "ca"]].concat())
                .unwrap_err();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn admin_listen_is_optional_and_checked() {
        let base = ["--pod-name", "raft-0", "--service", "s", "--replicas", "1", "--data-dir", "d"];
        assert_eq!(parse(&base).unwrap().admin_listen, None);
        let with = |a: &str| parse(&[&base[..], &["--admin-listen", a]].concat());
        assert_eq!(with("0.0.0.0:9090").unwrap().admin_listen.as_deref(), Some("0.0.0.0:9090"));
        let msg = with("9090").unwrap_err().to_string();
        assert!(msg.contains("--admin-listen"), "{msg}");
    }
}
