//! The `raftkv` command line's exact contract against a real cluster: output forms,
//! exit codes (0 success, 1 failure, 2 usage, 3 outcome unknown), `RAFTKV_ENDPOINTS`.

mod common;

use std::time::Duration;

use common::{CliOutput, TestCluster, dead_endpoint, endpoints_arg, raftkv};

/// Bound on one CLI run (its own --timeout is 5 s by default).
const LIMIT: Duration = Duration::from_secs(30);

/// Runs `raftkv --endpoints EPS ARGS`.
async fn cli(endpoints: &str, args: &[&str]) -> CliOutput {
    let mut all = vec!["--endpoints", endpoints];
    all.extend_from_slice(args);
    raftkv(&all, &[], LIMIT).await
}

/// Asserts `index=<n> term=<t> leader=<id>` and nothing else on stdout.
#[track_caller]
fn assert_write_line(out: &CliOutput) {
    let line = out.stdout.strip_suffix('\n').unwrap_or_else(|| panic!("no trailing newline: {}", out.show()));
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 3, "{}", out.show());
    for (field, name) in fields.iter().zip(["index", "term", "leader"]) {
        let value =
            field.strip_prefix(&format!("{name}=")).unwrap_or_else(|| panic!("{name}= missing: {}", out.show()));
        let n: u64 = value.parse().unwrap_or_else(|_| panic!("{name} is not a number: {}", out.show()));
        assert!(n > 0, "{name}=0: {}", out.show());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_contract_on_a_live_cluster() {
    let cluster = TestCluster::start(&[]);
    cluster.leader().await;
    let eps = endpoints_arg(&[], &cluster);
    let eps = eps.as_str();

    // put / get
    let out = cli(eps, &["put", "cli/k", "hello world"]).await.expect_code(0);
    assert_write_line(&out);
    let out = cli(eps, &["get", "cli/k"]).await.expect_code(0);
    assert_eq!(out.stdout, "hello world\n", "{}", out.show());
    let out = cli(eps, &["get", "cli/missing"]).await.expect_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.show());
    assert_eq!(out.stdout, "", "{}", out.show());

    // cas
    let out = cli(eps, &["cas", "cli/k", "hello world", "v2"]).await.expect_code(0);
    assert_write_line(&out);
    let out = cli(eps, &["cas", "cli/k", "wrong", "v3"]).await.expect_code(1);
    assert_eq!(out.stderr.trim_end(), "v2", "the current value on stderr: {}", out.show());
    cli(eps, &["cas", "cli/new", "--expect-absent", "created"]).await.expect_code(0);
    let out = cli(eps, &["cas", "cli/new", "--expect-absent", "again"]).await.expect_code(1);
    assert_eq!(out.stderr.trim_end(), "created", "{}", out.show());
    let out = cli(eps, &["cas", "cli/absent", "something", "x"]).await.expect_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.show());
    let out = cli(eps, &["get", "cli/k"]).await.expect_code(0);
    assert_eq!(out.stdout, "v2\n");

    // delete
    let out = cli(eps, &["delete", "cli/new"]).await.expect_code(0);
    assert_write_line(&out);
    cli(eps, &["get", "cli/new"]).await.expect_code(1);

    // scan PREFIX --limit N
    for i in 1..=5 {
        cli(eps, &["put", &format!("scan/{i}"), &format!("v{i}")]).await.expect_code(0);
    }
    cli(eps, &["put", "scan0", "outside the prefix"]).await.expect_code(0);
    let out = cli(eps, &["scan", "scan/", "--limit", "3"]).await.expect_code(0);
    assert_eq!(out.stdout, "scan/1\tv1\nscan/2\tv2\nscan/3\tv3\n", "{}", out.show());
    assert!(out.stderr.contains("more"), "{}", out.show());
    let out = cli(eps, &["scan", "scan/", "--limit", "10"]).await.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.show());

    // status --json
    let out = cli(eps, &["status", "--json"]).await.expect_code(0);
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.show()));
    let rows = rows.as_array().unwrap_or_else(|| panic!("not an array: {}", out.show()));
    assert_eq!(rows.len(), 3, "{}", out.show());
    for row in rows {
        assert_eq!(row["reachable"], true, "{row}");
        assert!(row["id"].as_u64().is_some() && row["term"].as_u64().is_some(), "{row}");
    }
    let leaders = rows.iter().filter(|r| r["role"].as_str().is_some_and(|r| r.eq_ignore_ascii_case("leader"))).count();
    assert!(leaders <= 1, "{}", out.show());

    // RAFTKV_ENDPOINTS instead of --endpoints
    let out = raftkv(&["get", "cli/k"], &[("RAFTKV_ENDPOINTS", eps)], LIMIT).await.expect_code(0);
    assert_eq!(out.stdout, "v2\n", "{}", out.show());

    // An oversized key is refused, naming the limit.
    let big = "k".repeat(5000);
    let out = cli(eps, &["put", &big, "v"]).await.expect_code(1);
    assert!(out.stderr.contains("4096"), "{}", out.show());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_unreachable_cluster_exits_3() {
    let eps = format!("{},{}", dead_endpoint(), dead_endpoint());
    let out = cli(&eps, &["--timeout", "1s", "put", "k", "v"]).await.expect_code(3);
    assert!(out.stderr.contains("may or may not have been applied"), "{}", out.show());
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.show());
    let out = cli(&eps, &["--timeout", "1s", "get", "k"]).await.expect_code(3);
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.show());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_usage_errors_exit_2() {
    let eps = dead_endpoint();
    for args in [&["put", "only-key"][..], &["no-such-command"], &["cas", "k"], &["--timeout", "soon", "get", "k"]] {
        let out = cli(&eps, args).await.expect_code(2);
        assert!(!out.stderr.is_empty(), "{args:?}: {}", out.show());
    }
}
