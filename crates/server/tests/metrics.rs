//! `/metrics` under load: three in-process nodes with admin ports, scraped before and
//! after writes and reads, each scrape parsed with a Prometheus text parser
//! (`prometheus-parse`). Checks that the histograms the issue names move, that the
//! counters count, that the gauges agree with the cluster, and that the labels are
//! what dashboards select on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use raftkv_kv::{Command, WriteOp};
use raftkv_rpc::tarpc::context;
use raftkv_rpc::{RaftKvClient, ReadConsistency};
use raftkv_server::{AdminState, ClusterConfig, NodeConfig};
use raftkv_storage::FsyncPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(30);
const WRITES: u64 = 40;
const READS: u64 = 20;

struct Node {
    rpc: SocketAddr,
    admin: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: tokio::task::JoinHandle<()>,
}

async fn start_cluster(dirs: &[tempfile::TempDir]) -> BTreeMap<u64, Node> {
    let mut listeners = BTreeMap::new();
    for id in 1..=dirs.len() as u64 {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: BTreeMap<u64, SocketAddr> = listeners.iter().map(|(id, l)| (*id, l.local_addr().unwrap())).collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let cfg = NodeConfig {
            id,
            listen: addrs[&id].to_string(),
            peers: addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            data_dir: dirs[id as usize - 1].path().to_path_buf(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 16,
            fsync: FsyncPolicy::Always,
            cluster: ClusterConfig::found(addrs[&id].to_string()),
            storage: None,
            tls: None,
            enable_faults: false,
        };
        let admin_state = AdminState::new();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().unwrap();
        let http = tokio::spawn(raftkv_server::admin::serve_http(admin_listener, admin_state.clone()));
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(raftkv_server::serve_with_admin(cfg, listener, admin_state, async move {
            let _ = rx.await;
        }));
        nodes.insert(id, Node { rpc: addrs[&id], admin, stop, task, http });
    }
    nodes
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the admin port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut buf)).await.expect("the admin port answers").unwrap();
    let code = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {buf}"));
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// One parsed scrape of a node.
struct Metrics {
    families: Exposition,
    text: String,
}

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

impl Metrics {
    async fn scrape(admin: SocketAddr) -> Metrics {
        let (code, text) = http_get(admin, "/metrics").await;
        assert_eq!(code, 200, "{text}");
        let families = parse_prometheus(&text).unwrap_or_else(|e| panic!("not Prometheus text: {e:?}\n{text}"));
        Metrics { families, text }
    }

    fn find(&self, family: &str, labels: &[(&str, &str)]) -> Option<&PrometheusValue> {
        let family = self.families.families.get(family)?;
        let matches = |s: &&openmetrics_parser::Sample<PrometheusValue>| {
            let set = s.get_labelset().expect("samples of a parsed family have label names");
            labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v))
        };
        family.iter_samples().find(matches).map(|s| &s.value)
    }

    /// A counter's, gauge's or untyped sample's value.
    #[track_caller]
    fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(family, labels) {
            Some(PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n)) => n.as_f64(),
            Some(PrometheusValue::Counter(c)) => c.value.as_f64(),
            other => panic!("{family}{labels:?}: {other:?} in\n{}", self.text),
        }
    }

    /// A histogram's observation count, checked against its buckets.
    #[track_caller]
    fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(family, labels) {
            Some(PrometheusValue::Histogram(h)) => {
                let buckets: Vec<(f64, f64)> = h.buckets.iter().map(|b| (b.upper_bound, b.count.as_f64())).collect();
                assert!(buckets.len() >= 5, "{family} has {} buckets", buckets.len());
                assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{family}: {buckets:?}");
                let inf = buckets.last().filter(|b| b.0.is_infinite()).expect("a +Inf bucket").1;
                let count = h.count.unwrap_or_else(|| panic!("{family} has a _count")) as f64;
                assert_eq!(inf, count, "{family}: the +Inf bucket is the count");
                assert!(h.sum.as_ref().is_some_and(|s| s.as_f64() >= 0.0), "{family} has a _sum");
                count
            }
            other => panic!("{family}{labels:?} is not a histogram: {other:?} in\n{}", self.text),
        }
    }

    /// [`Metrics::histogram_count`], or 0 for a labelled series not yet observed (a
    /// family's series appear on first use).
    #[track_caller]
    fn histogram_count_or_zero(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        if self.find(family, labels).is_some() { self.histogram_count(family, labels) } else { 0.0 }
    }

    /// Every `raftkv_*` sample's `server_id` label.
    fn server_ids(&self) -> Vec<Option<String>> {
        let raftkv = self.families.families.iter().filter(|(name, _)| name.starts_with("raftkv_"));
        raftkv
            .flat_map(|(_, f)| f.iter_samples())
            .map(|s| s.get_labelset().ok().and_then(|l| l.get_label_value("server_id").map(String::from)))
            .collect()
    }
}

async fn leader(nodes: &BTreeMap<u64, Node>) -> (u64, RaftKvClient) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "no leader within {DEADLINE:?}");
        for (id, n) in nodes {
            let Ok(c) = raftkv_rpc::connect(&n.rpc.to_string()).await else { continue };
            if let Ok(st) = c.status(context::current()).await
                && st.role == "leader"
            {
                return (*id, c);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(seq: u64) -> Command {
    Command {
        client_id: 9,
        seq,
        op: WriteOp::Put { key: Bytes::from(format!("m/{seq}")), value: Bytes::from(vec![b'x'; 100]) },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_histograms_move_under_load() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(&dirs).await;
    let (leader_id, client) = leader(&nodes).await;
    let sid = leader_id.to_string();
    let me = [("server_id", sid.as_str())];
    let before = Metrics::scrape(nodes[&leader_id].admin).await;

    // Labels: server_id on every raftkv_* sample; the build info names version and commit.
    let ids = before.server_ids();
    assert!(ids.len() > 30 && ids.iter().all(|id| id.as_deref() == Some(sid.as_str())), "{ids:?}");
    let version = [("server_id", sid.as_str()), ("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(before.value("raftkv_build_info", &version), 1.0, "build info with the version");
    let mut names = before.families.families["raftkv_build_info"].get_label_names().to_vec();
    names.sort();
    assert_eq!(names, ["commit", "server_id", "version"], "{}", before.text);
    assert!(before.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(before.value("process_open_fds", &[]) > 0.0);
    assert!(before.value("process_cpu_seconds_total", &[]) >= 0.0);
    assert_eq!(before.value("raftkv_is_leader", &me), 1.0);
    assert_eq!(before.value("raftkv_has_leader", &me), 1.0);
    assert_eq!(before.value("raftkv_role", &[("server_id", &sid), ("role", "leader")]), 1.0);
    assert_eq!(before.value("raftkv_leader_id", &me), leader_id as f64);
    assert!(before.value("raftkv_became_leader_total", &me) >= 1.0);

    for seq in 1..=WRITES {
        client.write(context::current(), put(seq)).await.expect("rpc").expect("write");
    }
    for seq in 1..=READS {
        let key = Bytes::from(format!("m/{seq}"));
        client.get(context::current(), key, ReadConsistency::Linearizable).await.expect("rpc").expect("read");
    }
    let after = Metrics::scrape(nodes[&leader_id].admin).await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.histogram_count(name, labels) - before.histogram_count_or_zero(name, labels)
    };
    assert!(moved("raftkv_proposal_commit_seconds", &me) >= WRITES as f64);
    assert!(moved("raftkv_wal_fsync_seconds", &me) >= 1.0, "group commit: at least one fsync");
    assert!(moved("raftkv_apply_seconds", &me) >= WRITES as f64);
    assert!(moved("raftkv_read_index_wait_seconds", &me) >= READS as f64);
    assert!(moved("raftkv_rpc_request_seconds", &[("server_id", &sid), ("method", "write")]) >= WRITES as f64);
    assert!(moved("raftkv_rpc_request_seconds", &[("server_id", &sid), ("method", "get")]) >= READS as f64);
    let counted = |name: &str| after.value(name, &me) - before.value(name, &me);
    assert!(counted("raftkv_proposals_total") >= WRITES as f64);
    assert!(counted("raftkv_proposals_committed_total") >= WRITES as f64);
    assert!(counted("raftkv_reads_total") >= READS as f64);
    assert!(counted("raftkv_replicated_bytes_total") >= (2 * WRITES * 100) as f64, "two followers got every value");
    assert!(after.value("raftkv_commit_index", &me) >= WRITES as f64);
    assert!(after.value("raftkv_snapshots_saved_total", &me) >= 1.0, "a snapshot every 16 entries");

    // A follower: not leading, knows the leader, applies the same entries.
    let follower = *nodes.keys().find(|id| **id != leader_id).unwrap();
    let fid = follower.to_string();
    let f = [("server_id", fid.as_str())];
    let start = Instant::now();
    let fm = loop {
        let m = Metrics::scrape(nodes[&follower].admin).await;
        if m.value("raftkv_applied_index", &f) >= after.value("raftkv_commit_index", &me) {
            break m;
        }
        assert!(start.elapsed() < DEADLINE, "follower {follower} did not apply the writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(fm.value("raftkv_is_leader", &f), 0.0);
    assert_eq!(fm.value("raftkv_role", &[("server_id", &fid), ("role", "follower")]), 1.0);
    assert_eq!(fm.value("raftkv_leader_id", &f), leader_id as f64);
    assert!(fm.histogram_count("raftkv_wal_fsync_seconds", &f) >= 1.0);
    // Where the log writes were made: the leader's appends overlap the messages it sent
    // first (the writer thread); a follower's have nothing to overlap (its loop thread).
    let writes = |m: &Metrics, id: &str, thread: &str| {
        m.value("raftkv_wal_writes_total", &[("server_id", id), ("thread", thread)])
    };
    assert!(writes(&after, &sid, "writer") >= WRITES as f64, "{}", after.text);
    assert!(writes(&fm, &fid, "loop") >= WRITES as f64, "{}", fm.text);

    // Every series the Grafana dashboard queries is one this server exports.
    let mut exported = series_names(&after.text);
    exported.extend(series_names(&fm.text));
    let dashboard = dashboard();
    let targets =
        dashboard["panels"].as_array().into_iter().flatten().filter_map(|p| p["targets"].as_array()).flatten();
    assert!(targets.count() >= 20, "the dashboard's queries are found");
    let problems = dashboard_problems(&dashboard, &exported);
    assert!(problems.is_empty(), "observability/grafana/raftkv.json:\n{}", problems.join("\n"));

    for (_, n) in nodes {
        let _ = n.stop.send(());
        tokio::time::timeout(DEADLINE, n.task).await.expect("stops").expect("no panic").expect("clean stop");
        n.http.abort();
    }
}

/// The names of the series in a Prometheus text exposition.
fn series_names(text: &str) -> BTreeSet<String> {
    let names = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    names.filter_map(|l| l.split(['{', ' ']).next()).map(String::from).collect()
}

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../observability/grafana/raftkv.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// What is wrong with a dashboard: a query that does not parse as PromQL (once
/// Grafana's variables are put in), a series `exported` lacks, a variable the
/// dashboard does not define.
fn dashboard_problems(dashboard: &serde_json::Value, exported: &BTreeSet<String>) -> Vec<String> {
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .map(|l| l.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            queries.push((format!("panel {title:?}"), target["expr"].as_str().unwrap_or_default().to_string()));
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(inner) = var["definition"].as_str().and_then(|d| d.strip_prefix("label_values(")) {
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
            queries.push((format!("variable {}", var["name"]), selector.to_string()));
        }
    }
    let mut problems = Vec::new();
    for (place, expr) in queries {
        for var in grafana_variables(&expr) {
            if !var.starts_with("__") && !variables.contains(var.as_str()) {
                problems.push(format!("{place}: ${var} is not a dashboard variable"));
            }
        }
        let substituted = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m");
        let substituted = variables.iter().fold(substituted, |e, v| e.replace(&format!("${v}"), ".*"));
        match promql_parser::parser::parse(&substituted) {
            Err(e) => problems.push(format!("{place}: {expr:?} is not PromQL: {e}")),
            Ok(ast) => {
                let mut names = Vec::new();
                selector_names(&ast, &mut names);
                if names.is_empty() {
                    problems.push(format!("{place}: {expr:?} selects no series"));
                }
                for name in names.into_iter().filter(|n| !exported.contains(n)) {
                    problems.push(format!("{place}: {expr:?} queries {name}, which /metrics does not export"));
                }
            }
        }
    }
    problems
}

/// `$name` references in a query.
fn grafana_variables(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        out.push(name);
    }
    out
}

/// The metric names of every selector in a PromQL expression.
fn selector_names(expr: &promql_parser::parser::Expr, out: &mut Vec<String>) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
        Expr::Aggregate(a) => {
            selector_names(&a.expr, out);
            a.param.iter().for_each(|p| selector_names(p, out));
        }
        Expr::Unary(u) => selector_names(&u.expr, out),
        Expr::Binary(b) => {
            selector_names(&b.lhs, out);
            selector_names(&b.rhs, out);
        }
        Expr::Paren(p) => selector_names(&p.expr, out),
        Expr::Subquery(s) => selector_names(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selector_names(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The dashboard check catches each kind of mistake it looks for.
#[test]
fn the_dashboard_check_catches_bad_queries() {
    let exported: BTreeSet<String> = ["raftkv_term", "raftkv_apply_seconds_bucket"].map(String::from).into();
    let dash = |expr: &str| {
        serde_json::json!({
            "templating": {"list": [{"name": "job"}]},
            "panels": [{"title": "p", "targets": [{"expr": expr}]}],
        })
    };
    let good = r#"histogram_quantile(0.9, sum by (le) (rate(raftkv_apply_seconds_bucket{job=~"$job"}[$__rate_interval]))) + raftkv_term"#;
    assert_eq!(dashboard_problems(&dash(good), &exported), Vec::<String>::new());
    for (bad, says) in [
        ("rate(raftkv_apply_seconds_total[1m])", "which /metrics does not export"),
        ("raftkv_term{server_id=~\"$node\"}", "$node is not a dashboard variable"),
        ("sum(raftkv_term", "is not PromQL"),
        ("1 + 1", "selects no series"),
    ] {
        let problems = dashboard_problems(&dash(bad), &exported);
        assert!(problems.iter().any(|p| p.contains(says)), "{bad}: {problems:?}");
    }
}

/// The parser this test relies on rejects what Prometheus would, so a broken
/// exposition cannot pass the test above: a sample with no value, a histogram whose
/// buckets are not cumulative or lack `+Inf`, a sample of another type's name.
#[test]
fn the_parser_rejects_malformed_expositions() {
    let bad = [
        "# TYPE raftkv_term gauge\nraftkv_term{server_id=\"1\"}\n",
        "# TYPE raftkv_x histogram\nraftkv_x_bucket{le=\"1\"} 2\nraftkv_x_bucket{le=\"+Inf\"} 1\nraftkv_x_count 1\nraftkv_x_sum 1\n",
        "# TYPE raftkv_x histogram\nraftkv_x_bucket{le=\"1\"} 1\nraftkv_x_count 1\nraftkv_x_sum 1\n",
        "# TYPE raftkv_term gauge\nraftkv_term 1\n# TYPE raftkv_term counter\nraftkv_term 2\n",
    ];
    for text in bad {
        assert!(parse_prometheus(text).is_err(), "accepted:\n{text}");
    }
    let good = "# TYPE raftkv_term gauge\nraftkv_term{server_id=\"1\"} 7\n";
    assert!(parse_prometheus(good).is_ok());
}
