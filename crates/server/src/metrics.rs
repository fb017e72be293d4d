//! The node's metrics, as `/metrics` exposes them (Prometheus text format 0.0.4,
//! through `prometheus-client`): gauges of the Raft state, counters of what happened,
//! histograms of where time goes, the build, and the process.
//!
//! Every metric is named `raftkv_*` (or `process_*`) and, once the node knows its id,
//! carries the label `server_id`. `observability/README.md` lists them and the Grafana
//! dashboard in `observability/` uses them; keep the three in step.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use raftkv_raft::Role;

use crate::process_metrics::ProcessCollector;

/// The version this binary was built from, and its git commit ("unknown" outside a git
/// checkout, e.g. in a Nix build that sets none).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = match option_env!("RAFTKV_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Roles, as the `role` label says them.
const ROLES: [Role; 4] = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];

/// The RPC methods timed by `raftkv_rpc_request_seconds`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RpcMethod {
    raft,
    write,
    get,
    scan_page,
    status,
    transfer_leader,
    members,
    change_member,
    hash_kv,
    server_info,
    forward,
    cluster_status,
    fault,
    batch,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: RpcMethod,
}

/// Which thread made a log write (see the Raft loop's `WriteOn`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WalThreadLabel {
    pub thread: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// Seconds, from 50 µs to about 27 s: fsyncs, commits and RPCs all fall inside.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 20)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Every instrument of a node. Cheap to update from any thread (atomics).
#[derive(Debug)]
pub struct NodeMetrics {
    pub term: Gauge,
    pub leader_id: Gauge,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    role: Family<RoleLabel, Gauge>,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub last_index: Gauge,
    pub snapshot_index: Gauge,
    pub pending_writes: Gauge,
    pub recovering: Gauge,
    pub ready: Gauge,
    pub proposals: Counter,
    pub proposals_committed: Counter,
    pub proposals_failed: Counter,
    pub reads: Counter,
    pub elections_started: Counter,
    pub became_leader: Counter,
    pub leader_changes: Counter,
    pub snapshots_saved: Counter,
    pub snapshots_installed: Counter,
    pub snapshots_sent: Counter,
    pub snapshots_refused: Counter,
    pub bytes_replicated: Counter,
    pub forwarded: Counter,
    pub wal_writes: Family<WalThreadLabel, Counter>,
    pub commit_seconds: Histogram,
    pub fsync_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub read_index_seconds: Histogram,
    pub rpc_seconds: Family<MethodLabel, Histogram>,
    /// The registry, made once the node knows its id (the `server_id` label).
    registry: OnceLock<Registry>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            term: Gauge::default(),
            leader_id: Gauge::default(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            role: Family::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            pending_writes: Gauge::default(),
            recovering: Gauge::default(),
            ready: Gauge::default(),
            proposals: Counter::default(),
            proposals_committed: Counter::default(),
            proposals_failed: Counter::default(),
            reads: Counter::default(),
            elections_started: Counter::default(),
            became_leader: Counter::default(),
            leader_changes: Counter::default(),
            snapshots_saved: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshots_sent: Counter::default(),
            snapshots_refused: Counter::default(),
            bytes_replicated: Counter::default(),
            forwarded: Counter::default(),
            wal_writes: Family::default(),
            commit_seconds: latency_histogram(),
            fsync_seconds: latency_histogram(),
            apply_seconds: latency_histogram(),
            read_index_seconds: latency_histogram(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            registry: OnceLock::new(),
        }
    }
}

/// A gauge value from a u64 (Prometheus gauges are signed here).
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl NodeMetrics {
    /// Sets the role gauges: 1 for `role`, 0 for the others.
    pub fn set_role(&self, role: Role) {
        for r in ROLES {
            self.role.get_or_create(&RoleLabel { role: r.as_str() }).set(i64::from(r == role));
        }
        self.is_leader.set(i64::from(role == Role::Leader));
    }

    /// Registers every instrument, labelled with `server_id`; done once, when the node
    /// knows its id. Before that only the process metrics are exposed.
    pub fn register(self: &Arc<Self>, server_id: u64) {
        let mut root = Registry::default();
        // process_* keep their standard names: no prefix, no label.
        root.register_collector(Box::new(ProcessCollector));
        let label = (Cow::Borrowed("server_id"), Cow::Owned(server_id.to_string()));
        let r = root.sub_registry_with_prefix("raftkv").sub_registry_with_label(label);
        self.register_gauges(r);
        self.register_counters(r);
        self.register_histograms(r);
        let build = Info::new(vec![("version", VERSION), ("commit", GIT_COMMIT)]);
        r.register("build", "The version and git commit of this server", build);
        let _ = self.registry.set(root);
    }

    fn register_gauges(&self, r: &mut Registry) {
        r.register("term", "The current Raft term", self.term.clone());
        r.register("leader_id", "The id of the leader this node knows of (0: none)", self.leader_id.clone());
        r.register("has_leader", "1 if this node knows a leader", self.has_leader.clone());
        r.register("is_leader", "1 if this node is the leader", self.is_leader.clone());
        r.register("role", "1 for this node's current Raft role", self.role.clone());
        r.register("commit_index", "The highest log index known committed", self.commit_index.clone());
        r.register("applied_index", "The highest log index applied to the state machine", self.applied_index.clone());
        r.register("last_index", "The last index of this node's log", self.last_index.clone());
        r.register("snapshot_index", "The index of the latest snapshot", self.snapshot_index.clone());
        r.register("pending_writes", "Proposed writes waiting to commit", self.pending_writes.clone());
        r.register(
            "recovering",
            "1 while this node recovers from lost state: it neither votes nor counts toward a quorum",
            self.recovering.clone(),
        );
        r.register("ready", "1 when /readyz answers 200", self.ready.clone());
    }

    fn register_counters(&self, r: &mut Registry) {
        r.register("proposals", "Writes proposed to the Raft log by this node", self.proposals.clone());
        r.register("proposals_committed", "Writes this node proposed that committed", self.proposals_committed.clone());
        r.register(
            "proposals_failed",
            "Writes refused before reaching the log (not the leader, overloaded, draining)",
            self.proposals_failed.clone(),
        );
        r.register("reads", "Read requests handled by this node", self.reads.clone());
        r.register("elections_started", "Elections (and pre-votes) this node started", self.elections_started.clone());
        r.register("became_leader", "Times this node became the leader", self.became_leader.clone());
        r.register("leader_changes_seen", "Times the leader this node knows of changed", self.leader_changes.clone());
        r.register("snapshots_saved", "Snapshots this node took of its state machine", self.snapshots_saved.clone());
        r.register(
            "snapshots_received",
            "Snapshots received from a leader and installed",
            self.snapshots_installed.clone(),
        );
        r.register(
            "snapshots_sent",
            "Snapshots this node (leading) started sending to a follower",
            self.snapshots_sent.clone(),
        );
        r.register(
            "snapshots_refused",
            "Snapshots a follower refused as larger than its --max-snapshot-bytes (this node leading)",
            self.snapshots_refused.clone(),
        );
        r.register(
            "forwarded_requests",
            "Client requests this node (following) passed to the leader and answered",
            self.forwarded.clone(),
        );
        r.register(
            "wal_writes",
            "Log writes, by the thread that made them: `loop` (the Raft loop's own, nothing to overlap) or `writer` (the log writer's, overlapping the messages sent before it)",
            self.wal_writes.clone(),
        );
        r.register(
            "replicated_bytes",
            "Bytes of log entries this node (leading) sent to followers",
            self.bytes_replicated.clone(),
        );
    }

    fn register_histograms(&self, r: &mut Registry) {
        r.register(
            "proposal_commit_seconds",
            "From a write's proposal to its entry applied here (leader): the time to commit",
            self.commit_seconds.clone(),
        );
        r.register("wal_fsync_seconds", "The fsync of one group commit of the log", self.fsync_seconds.clone());
        r.register("apply_seconds", "Applying one committed entry to the state machine", self.apply_seconds.clone());
        r.register(
            "read_index_wait_seconds",
            "From a linearizable read's arrival to its service (ReadIndex round and apply wait)",
            self.read_index_seconds.clone(),
        );
        r.register("rpc_request_seconds", "One RPC handled by this node, by method", self.rpc_seconds.clone());
    }

    /// The Prometheus text exposition (version 0.0.4) of the current values.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let result = match self.registry.get() {
            Some(registry) => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
            None => {
                let mut early = Registry::default();
                early.register_collector(Box::new(ProcessCollector));
                prometheus_client::encoding::prometheus_text::encode(&mut out, &early)
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// Times one RPC into `raftkv_rpc_request_seconds{method}`: observed when dropped,
/// however the handler returns.
pub struct RpcTimer<'a> {
    histogram: &'a Family<MethodLabel, Histogram>,
    method: RpcMethod,
    started: std::time::Instant,
}

impl NodeMetrics {
    pub fn time_rpc(&self, method: RpcMethod) -> RpcTimer<'_> {
        RpcTimer { histogram: &self.rpc_seconds, method, started: std::time::Instant::now() }
    }
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.histogram.get_or_create(&MethodLabel { method: self.method }).observe(elapsed);
    }
}
