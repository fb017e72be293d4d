//! The `raftkv` command line's exact contract against a real cluster: output forms,
//! exit codes (0 success, 1 failure, 2 usage, 3 outcome unknown), `RAFTKV_ENDPOINTS`,
//! and the `member` commands (their effect on a growing cluster is in membership.rs).

use std::time::Duration;

use raftkv_tests::{CliOutput, TestCluster, dead_endpoint, endpoints_arg, raftkv};

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
    // Every node names the same, non-zero cluster id; the table shows it in hex.
    let cluster_id = rows[0]["cluster_id"].as_u64().unwrap_or_else(|| panic!("no cluster_id: {}", out.show()));
    assert_ne!(cluster_id, 0, "{}", out.show());
    assert!(rows.iter().all(|r| r["cluster_id"].as_u64() == Some(cluster_id)), "{}", out.show());
    let hex = format!("{cluster_id:016x}");
    let out = cli(eps, &["status"]).await.expect_code(0);
    assert!(out.stdout.lines().next().is_some_and(|h| h.contains("CLUSTER")), "{}", out.show());
    assert_eq!(out.stdout.matches(&hex).count(), 3, "{}", out.show());

    member_commands(eps, &hex).await;

    // RAFTKV_ENDPOINTS instead of --endpoints
    let out = raftkv(&["get", "cli/k"], &[("RAFTKV_ENDPOINTS", eps)], LIMIT).await.expect_code(0);
    assert_eq!(out.stdout, "v2\n", "{}", out.show());

    // An oversized key is refused, naming the limit.
    let big = "k".repeat(5000);
    let out = cli(eps, &["put", &big, "v"]).await.expect_code(1);
    assert!(out.stderr.contains("4096"), "{}", out.show());
}

/// Parses `member list --json`: (id, role, auto_promote) per member, and the removed ids.
async fn members_json(eps: &str) -> (serde_json::Value, Vec<(u64, String, bool)>, Vec<u64>) {
    let out = cli(eps, &["member", "list", "--json"]).await.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.show()));
    let members = v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {}", out.show()))
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap_or_else(|| panic!("no role: {m}")).to_string();
            (m["id"].as_u64().expect("id"), role, m["auto_promote"].as_bool().expect("auto_promote"))
        })
        .collect();
    let removed = v["removed"].as_array().expect("removed").iter().map(|r| r.as_u64().expect("an id")).collect();
    (v, members, removed)
}

/// `member list|add|promote|remove` on the live 3-node cluster, with learners at an
/// address nothing listens on (they never catch up, so they stay learners).
async fn member_commands(eps: &str, cluster_hex: &str) {
    let out = cli(eps, &["member", "list"]).await.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("cluster {cluster_hex}  leader ")), "{}", out.show());
    assert!(lines[0].contains("(committed)"), "{}", out.show());
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["ID", "ADDRESS", "ROLE", "MATCH"], "{}", out.show());
    assert_eq!(lines.len(), 5, "{}", out.show());
    for (line, id) in lines[2..].iter().zip(1..) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cells[0], cells[2]), (id.to_string().as_str(), "voter"), "{}", out.show());
        assert!(cells[3].parse::<u64>().is_ok_and(|m| m > 0), "MATCH of node {id}: {}", out.show());
    }
    let (v, members, removed) = members_json(eps).await;
    assert_eq!(v["cluster_id"].as_u64().map(|c| format!("{c:016x}")).as_deref(), Some(cluster_hex), "{v}");
    assert_eq!(v["committed"], true, "{v}");
    assert_eq!(v["leader"], v["node"], "answered by the leader: {v}");
    let voters = |ids: &[u64]| ids.iter().map(|id| (*id, "voter".to_string(), false)).collect::<Vec<_>>();
    assert_eq!(members, voters(&[1, 2, 3]), "{v}");
    assert!(removed.is_empty(), "{v}");

    // add --learner: stays a learner; promote refuses a learner that has not caught up.
    let nowhere = dead_endpoint();
    let out = cli(eps, &["member", "add", "9", &nowhere, "--learner"]).await.expect_code(0);
    let want = format!("added node 9 at {nowhere} as a learner; promote it with `raftkv member promote 9`");
    assert!(out.stdout.starts_with(&want), "{}", out.show());
    let (_, members, _) = members_json(eps).await;
    assert!(members.contains(&(9, "learner".into(), false)), "{members:?}");
    let out = cli(eps, &["member", "promote", "9"]).await.expect_code(1);
    assert!(out.stderr.contains("rejected"), "{}", out.show());

    // add (automatic promotion), then remove both learners.
    let out = cli(eps, &["member", "add", "10", &dead_endpoint()]).await.expect_code(0);
    assert!(out.stdout.contains("the leader promotes it to voter once it has caught up"), "{}", out.show());
    let (_, members, _) = members_json(eps).await;
    assert!(members.contains(&(10, "learner".into(), true)), "{members:?}");
    for id in ["9", "10"] {
        let out = cli(eps, &["member", "remove", id]).await.expect_code(0);
        assert!(out.stdout.starts_with(&format!("removed node {id} (conf index ")), "{}", out.show());
    }
    let (v, members, removed) = members_json(eps).await;
    assert_eq!((members, removed), (voters(&[1, 2, 3]), vec![9, 10]), "{v}");

    // Refusals are failures (exit 1) that say why: ids are never reused.
    let out = cli(eps, &["member", "add", "9", &dead_endpoint()]).await.expect_code(1);
    assert!(out.stderr.contains("never reused"), "{}", out.show());
    let out = cli(eps, &["member", "add", "2", &dead_endpoint()]).await.expect_code(1);
    assert!(out.stderr.contains("already a member"), "{}", out.show());
    let out = cli(eps, &["member", "remove", "9"]).await.expect_code(1);
    assert!(out.stderr.contains("already removed"), "{}", out.show());
    // --json prints the committed configuration of a change.
    let out = cli(eps, &["member", "add", "11", &dead_endpoint(), "--learner", "--json"]).await.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.show()));
    assert_eq!(v["id"], 11, "{v}");
    assert!(v["members"]["members"].as_array().is_some_and(|m| m.iter().any(|m| m["id"] == 11)), "{v}");
    cli(eps, &["member", "remove", "11"]).await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_unreachable_cluster_exits_3() {
    let eps = format!("{},{}", dead_endpoint(), dead_endpoint());
    let out = cli(&eps, &["--timeout", "1s", "put", "k", "v"]).await.expect_code(3);
    assert!(out.stderr.contains("may or may not have been applied"), "{}", out.show());
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.show());
    let out = cli(&eps, &["--timeout", "1s", "get", "k"]).await.expect_code(3);
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.show());
    // A membership change's outcome is unknown too; a member list changed nothing.
    let out = cli(&eps, &["--timeout", "1s", "member", "remove", "2"]).await.expect_code(3);
    assert!(out.stderr.contains("may or may not have been applied"), "{}", out.show());
    cli(&eps, &["--timeout", "1s", "member", "list"]).await.expect_code(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_usage_errors_exit_2() {
    let eps = dead_endpoint();
    for args in [&["put", "only-key"][..], &["no-such-command"], &["cas", "k"], &["--timeout", "soon", "get", "k"]] {
        let out = cli(&eps, args).await.expect_code(2);
        assert!(!out.stderr.is_empty(), "{args:?}: {}", out.show());
    }
    // The member forms: the error names the bad argument.
    for (args, names) in [
        (&["member"][..], "Usage"),
        (&["member", "frobnicate"], "frobnicate"),
        (&["member", "list", "extra"], "extra"),
        (&["member", "add", "4"], "<HOST:PORT>"),
        (&["member", "add", "0", "10.0.0.4:6000"], "<ID>': node ids are non-zero"),
        (&["member", "add", "four", "10.0.0.4:6000"], "'four' for '<ID>'"),
        (&["member", "add", "-1", "10.0.0.4:6000"], "-1"),
        (&["member", "add", "4", "10.0.0.4"], "'10.0.0.4' for '<HOST:PORT>'"),
        (&["member", "add", "4", ":6000"], "<HOST:PORT>"),
        (&["member", "add", "4", "10.0.0.4:99999"], "<HOST:PORT>"),
        (&["member", "add", "4", "10.0.0.4:6000", "--voter"], "--voter"),
        (&["member", "promote"], "<ID>"),
        (&["member", "promote", "x"], "'x' for '<ID>'"),
        (&["member", "remove", "0"], "<ID>"),
    ] {
        let out = cli(&eps, args).await.expect_code(2);
        assert!(out.stderr.contains(names), "{args:?}: expected {names:?} in: {}", out.show());
    }
}
