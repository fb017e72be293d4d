//! Every data command and output format of `raftkv` against a real 3-node cluster
//! (server processes of this build on 127.0.0.1): binary values through JSON, one
//! casing for enums, `endpoint health` with a node down, `endpoint hashkv` on a
//! healthy cluster, and `scan --all` over 25,000 keys.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, NodeProcess, ServerCommand};
use serde_json::Value;

/// Bound on a cluster's first election.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// A 3-node cluster of `raftkv server` processes in a temporary directory.
struct Cluster {
    nodes: LocalCluster,
    endpoints: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let command =
            ServerCommand { program: env!("CARGO_BIN_EXE_raftkv").into(), args: vec!["server".into()], env: vec![] };
        let opts = LocalClusterOptions {
            nodes: 3,
            base_port: None,
            dir: dir.path().to_path_buf(),
            command,
            extra_args: vec![],
        };
        let nodes = LocalCluster::start(opts).expect("start 3 servers");
        nodes.wait_for_leader(LEADER_WAIT).await.expect("a leader");
        let endpoints = nodes.endpoints().join(",");
        Cluster { nodes, endpoints, _dir: dir }
    }

    /// `raftkv --endpoints <all> ARGS`.
    fn cli(&self, args: &[&str]) -> Run {
        Run::of(Command::new(env!("CARGO_BIN_EXE_raftkv")).arg("--endpoints").arg(&self.endpoints).args(args))
    }
}

/// A finished `raftkv` run.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    what: String,
}

impl Run {
    fn of(cmd: &mut Command) -> Run {
        let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
        let Output { status, stdout, stderr } =
            cmd.env_remove("RAFTKV_ENDPOINTS").env_remove("RAFTKV_TLS_CERT").output().expect("run raftkv");
        Run { code: status.code(), stdout, stderr: String::from_utf8_lossy(&stderr).into_owned(), what }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn show(&self) -> String {
        format!("{} exited {:?}\nstdout:\n{}\nstderr:\n{}", self.what, self.code, self.text(), self.stderr)
    }

    #[track_caller]
    fn code(self, want: i32) -> Run {
        assert_eq!(self.code, Some(want), "{}", self.show());
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.show()))
    }
}

/// The whitespace-separated cells of each line after the header.
fn rows(table: &str) -> Vec<Vec<String>> {
    table.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect()
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write a value file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_command_in_every_format() {
    let c = Cluster::start().await;

    // put: simple, table, json.
    let out = c.cli(&["put", "fmt/a", "one"]).code(0);
    assert!(out.text().starts_with("index=") && out.text().contains(" leader="), "{}", out.show());
    let out = c.cli(&["put", "fmt/a", "two", "-o", "table"]).code(0);
    assert_eq!(rows(&out.text())[0][4..], ["put", "(replaced)"], "{}", out.show());
    let v = c.cli(&["put", "fmt/b", "three", "--json"]).code(0).json();
    assert_eq!((v["result"]["op"].as_str(), v["result"]["existed"].as_bool()), (Some("put"), Some(false)), "{v}");
    assert!(v["index"].as_u64().is_some_and(|i| i > 0), "{v}");

    // get: simple, table, json (base64 with its encoding named), hex.
    assert_eq!(c.cli(&["get", "fmt/a"]).code(0).text(), "two\n");
    assert_eq!(rows(&c.cli(&["get", "fmt/a", "-o", "table"]).code(0).text())[0][..2], ["fmt/a", "two"]);
    let v = c.cli(&["get", "fmt/a", "-o", "json"]).code(0).json();
    assert_eq!(
        (v["encoding"].as_str(), v["value"].as_str(), v["found"].as_bool()),
        (Some("base64"), Some("dHdv"), Some(true))
    );
    assert_eq!(c.cli(&["--hex", "get", "666d742f61"]).code(0).text(), "74776f\n", "the key and the value in hex");
    let v = c.cli(&["get", "fmt/none", "-o", "json"]).code(1).json();
    assert_eq!((v["found"].as_bool(), &v["value"]), (Some(false), &Value::Null), "{v}");

    // cas and delete, with what was found on a failed swap.
    let out = c.cli(&["cas", "fmt/a", "wrong", "x", "-o", "json"]).code(1);
    let v = out.json();
    assert_eq!((v["result"]["swapped"].as_bool(), v["result"]["current"].as_str()), (Some(false), Some("dHdv")), "{v}");
    assert_eq!(out.stderr, "two\n", "{}", out.show());
    c.cli(&["cas", "fmt/a", "two", "2", "-o", "table"]).code(0);
    assert_eq!(c.cli(&["delete", "fmt/b", "-o", "json"]).code(0).json()["result"]["existed"], true);

    // scan: simple, table, json.
    c.cli(&["put", "fmt/c", "tab\there"]).code(0);
    assert_eq!(c.cli(&["scan", "fmt/"]).code(0).text(), "fmt/a\t2\nfmt/c\ttab\there\n");
    let out = c.cli(&["scan", "fmt/", "-o", "table"]).code(0);
    assert_eq!(out.text(), "KEY    VALUE\nfmt/a  2\nfmt/c  tab\\there\n", "one line a pair: {}", out.show());
    let v = c.cli(&["scan", "fmt/", "-o", "json"]).code(0).json();
    let keys: Vec<&str> = v["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(
        (keys, v["count"].as_u64(), v["more"].as_bool()),
        (vec!["Zm10L2E=", "Zm10L2M="], Some(2), Some(false)),
        "{v}"
    );

    // status and member list: the same lower-case roles, in every format.
    let status = c.cli(&["status", "-o", "json"]).code(0).json();
    let roles: Vec<&str> = status.as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{status}");
    assert!(roles.iter().all(|r| ["leader", "follower"].contains(r)), "{status}");
    assert!(status[0]["version"].as_str().is_some_and(|v| v == env!("CARGO_PKG_VERSION")), "{status}");
    let members = c.cli(&["member", "list", "-o", "json"]).code(0).json();
    assert!(members["members"].as_array().unwrap().iter().all(|m| m["role"] == "voter"), "{members}");
    let table = c.cli(&["member", "list", "-o", "simple"]).code(0).text();
    assert_eq!(table.lines().filter(|l| l.contains(", voter, ")).count(), 3, "{table}");
    let table = c.cli(&["endpoint", "status"]).code(0).text();
    assert!(table.starts_with("ENDPOINT ") && table.contains(" VERSION ") && table.lines().count() == 4, "{table}");
    assert_eq!(c.cli(&["status", "-o", "simple"]).code(0).text().lines().filter(|l| l.ends_with(", yes")).count(), 3);

    // transfer-leader names the new leader.
    let target = status.as_array().unwrap().iter().find(|r| r["role"] == "follower").unwrap()["id"].as_u64().unwrap();
    let v = c.cli(&["transfer-leader", &target.to_string(), "-o", "json"]).code(0).json();
    assert_eq!(v["leader"].as_u64(), Some(target), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_round_trip_through_json() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Every byte value, invalid UTF-8 included.
    let value: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    write_file(&dir.path().join("v"), &value);
    c.cli(&["put", "bin/k", "--value-file", dir.path().join("v").to_str().unwrap()]).code(0);

    // Out as base64 JSON, decoded: the same bytes; as hex JSON, the same.
    let v = c.cli(&["get", "bin/k", "-o", "json"]).code(0).json();
    assert_eq!(v["encoding"], "base64");
    assert_eq!(BASE64.decode(v["value"].as_str().unwrap()).unwrap(), value);
    let v = c.cli(&["--hex", "get", "62696e2f6b", "--json"]).code(0).json();
    assert_eq!(v["encoding"], "hex");
    let hex = v["value"].as_str().unwrap().to_string();
    assert_eq!(hex.len(), value.len() * 2);
    // Back in through the command line (hex), out through scan's JSON: still the same.
    c.cli(&["--hex", "put", "62696e2f6b32", &hex]).code(0);
    let v = c.cli(&["scan", "bin/", "-o", "json"]).code(0).json();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    for item in items {
        assert_eq!(BASE64.decode(item["value"].as_str().unwrap()).unwrap(), value, "{item}");
    }
    // Simple output is the raw bytes, as they were put.
    assert_eq!(c.cli(&["get", "bin/k2"]).code(0).stdout, [&value[..], b"\n"].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_health_exits_1_with_one_node_down() {
    let mut c = Cluster::start().await;
    c.cli(&["put", "health/k", "v"]).code(0);
    let out = c.cli(&["endpoint", "health"]).code(0);
    assert_eq!(out.text().lines().filter(|l| l.contains(" is healthy: leader ")).count(), 3, "{}", out.show());

    // Stop a follower (so the other two keep a leader), then ask again.
    let status = c.cli(&["status", "-o", "json"]).code(0).json();
    let follower = status.as_array().unwrap().iter().find(|r| r["role"] == "follower").unwrap().clone();
    let (id, down) = (follower["id"].as_u64().unwrap(), follower["endpoint"].as_str().unwrap().to_string());
    c.nodes.node_mut(id).unwrap().kill().await.unwrap();

    let out = c.cli(&["endpoint", "health"]).code(1);
    let text = out.text();
    assert!(text.lines().any(|l| l.starts_with(&format!("{down} is unhealthy: "))), "{}", out.show());
    assert_eq!(text.lines().filter(|l| l.contains(" is healthy: ")).count(), 2, "{}", out.show());
    assert!(out.stderr.contains("1 of 3 endpoints unhealthy"), "{}", out.show());
    let rows = c.cli(&["endpoint", "health", "-o", "json"]).code(1).json();
    let health: Vec<(String, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["endpoint"].as_str().unwrap().to_string(), r["health"].as_bool().unwrap()))
        .collect();
    assert_eq!(health.iter().filter(|(_, h)| !h).map(|(e, _)| e.clone()).collect::<Vec<_>>(), [down], "{rows}");
    let table = c.cli(&["endpoint", "health", "-o", "table"]).code(1).text();
    assert_eq!(rows_with(&table, "false"), 1, "{table}");
}

fn rows_with(table: &str, cell: &str) -> usize {
    rows(table).iter().filter(|r| r.iter().any(|c| c == cell)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_hashkv_agrees_on_a_healthy_cluster() {
    let c = Cluster::start().await;
    for i in 0..20 {
        c.cli(&["put", &format!("hash/{i}"), &format!("v{i}")]).code(0);
    }
    let v = c.cli(&["endpoint", "hashkv", "-o", "json"]).code(0).json();
    assert_eq!(v["agreed"], true, "{v}");
    let hashes: Vec<&str> = v["endpoints"].as_array().unwrap().iter().map(|e| e["hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 3, "{v}");
    assert!(hashes.iter().all(|h| *h == hashes[0] && h.len() == 16), "{v}");
    assert!(v["index"].as_u64().is_some_and(|i| i >= 20), "every node at one index past the writes: {v}");
    let table = c.cli(&["endpoint", "hashkv"]).code(0).text();
    assert_eq!(rows(&table).iter().filter(|r| r[3] == hashes[0]).count(), 3, "{table}");
}

/// The operator's check after a fault: the leader killed (SIGKILL) while writes go
/// on and brought back, then every replica's digest agrees. A replica whose state
/// was changed behind Raft's back (the test-only `RAFTKV_TEST_TAMPER`, built into
/// this test's servers by the `tamper-for-tests` feature) makes hashkv exit 1 and
/// name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_hashkv_agrees_after_a_crash_and_catches_a_tampered_replica() {
    let mut c = Cluster::start().await;
    let leader = c.nodes.wait_for_leader(LEADER_WAIT).await.expect("a leader").id;
    for i in 0..10 {
        c.cli(&["put", &format!("fault/{i}"), "before"]).code(0);
    }
    c.nodes.node_mut(leader).expect("the leader").kill().await.expect("SIGKILL the leader");
    for i in 0..10 {
        c.cli(&["put", &format!("fault/{i}"), "during"]).code(0);
    }
    c.nodes.node_mut(leader).expect("the old leader").restart().await.expect("restart it");
    c.cli(&["put", "fault/after", "x"]).code(0);
    let v = c.cli(&["endpoint", "hashkv", "-o", "json"]).code(0).json();
    assert_eq!(v["agreed"], true, "after the crash: {v}");

    // Node 3 restarts with a key no write made (a key never written, so replaying
    // the log after its snapshot cannot undo the change).
    let node = c.nodes.node_mut(3).expect("node 3");
    node.terminate(Duration::from_secs(10)).await.expect("stop node 3");
    let tampered = ServerCommand {
        program: env!("CARGO_BIN_EXE_raftkv").into(),
        args: vec!["server".into()],
        env: vec![("RAFTKV_TEST_TAMPER".into(), "tamper/extra=never-written".into())],
    };
    let _tampered = NodeProcess::spawn(&tampered, node.config().clone()).expect("start the tampered node 3");
    let deadline = Instant::now() + LEADER_WAIT;
    let v = loop {
        // Until node 3 serves again (an unreachable node also fails the check).
        let out = c.cli(&["endpoint", "hashkv", "-o", "json"]);
        let v = out.json();
        let answered = v["endpoints"].as_array().is_some_and(|e| e.iter().all(|e| e["hash"].is_string()));
        if answered {
            assert_eq!(out.code, Some(1), "{}", out.show());
            break v;
        }
        assert!(Instant::now() < deadline, "node 3 never answered: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(v["agreed"], false, "{v}");
    let hashes: Vec<&str> = v["endpoints"].as_array().unwrap().iter().map(|e| e["hash"].as_str().unwrap()).collect();
    assert!(hashes[0] == hashes[1] && hashes[2] != hashes[0], "node 3 alone differs: {v}");
    let table = c.cli(&["endpoint", "hashkv"]).code(1).text();
    assert!(table.contains(hashes[2]) && table.contains(hashes[0]), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_all_pages_over_25000_keys() {
    const KEYS: usize = 25_000;
    let c = Cluster::start().await;
    // Load them with the bench's fill: each key written exactly once, k000...0 up.
    let fill = Instant::now();
    let fill_args = ["bench", "--fill", "--keys", "25000", "--key-size", "8", "--value-size", "10", "--clients", "32"];
    let report = c.cli(&[&fill_args[..], &["-o", "json"]].concat()).code(0).json();
    assert_eq!((report["writes"]["ops"].as_u64(), report["errors"].as_u64()), (Some(KEYS as u64), Some(0)), "{report}");
    eprintln!("filled {KEYS} keys in {:?}", fill.elapsed());

    // Every key, in order, over three pages (10,000 a page).
    let want: Vec<String> = (0..KEYS).map(|i| format!("k{i:07}")).collect();
    let out = c.cli(&["scan", "k", "--all"]).code(0);
    let keys: Vec<String> = out.text().lines().map(|l| l.split('\t').next().unwrap().to_string()).collect();
    assert!(keys == want, "{} keys, first {:?}, last {:?}", keys.len(), keys.first(), keys.last());
    let v = c.cli(&["scan", "--all", "-o", "json"]).code(0).json();
    assert_eq!((v["count"].as_u64(), v["more"].as_bool()), (Some(KEYS as u64), Some(false)));
    assert_eq!(v["pages"].as_array().map(Vec::len), Some(3), "{}", v["pages"]);

    // A limit past one page stops with the next key; --from goes on from it.
    let out = c.cli(&["scan", "k", "--limit", "12000"]).code(0);
    assert_eq!(out.text().lines().count(), 12_000);
    assert!(out.stderr.contains("continue with --from 'k0012000'"), "{}", out.stderr);
    let out = c.cli(&["scan", "k", "--from", "k0012000", "--all"]).code(0);
    assert_eq!(out.text().lines().count(), KEYS - 12_000);
    assert!(out.text().starts_with("k0012000\t"), "{}", &out.text()[..40]);
}
