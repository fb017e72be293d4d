//! `raftkv validate`: passes on a healthy cluster and records its data; a second run
//! verifies it; and it fails when the expected data is wrong (the checker can fail).

use std::time::Duration;

use raftkv_tests::{CliOutput, TestCluster, endpoints_arg, raftkv};

async fn validate(endpoints: &str, args: &[&str]) -> CliOutput {
    let mut all = vec!["--endpoints", endpoints, "validate", "--duration", "1s", "--clients", "3"];
    all.extend_from_slice(args);
    raftkv(&all, &[], Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_succeeds_verifies_and_can_fail() {
    let cluster = TestCluster::start(&[]);
    cluster.leader().await;
    let eps = endpoints_arg(&[], &cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data.tsv");
    let data = data.to_str().expect("utf-8 path");

    let out = validate(&eps, &["--write-data", data]).await.expect_code(0);
    assert!(out.stdout.lines().any(|l| l == "SUCCESS"), "{}", out.show());
    assert!(out.stdout.lines().any(|l| l.contains("leader=")), "{}", out.show());
    let written = std::fs::read_to_string(data).expect("data file");
    let lines: Vec<&str> = written.lines().collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.contains('\t')), "{written}");

    let out = validate(&eps, &["--expect-data", data]).await.expect_code(0);
    assert!(out.stdout.lines().any(|l| l == "SUCCESS"), "{}", out.show());

    // Tamper with one value: the check must fail, naming the key.
    let (key, _) = lines[0].split_once('\t').expect("key<TAB>value");
    let mut tampered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    tampered[0] = format!("{key}\tnot-the-value");
    std::fs::write(data, tampered.join("\n") + "\n").expect("tamper");
    let out = validate(&eps, &["--expect-data", data]).await.expect_code(1);
    let failure = out.stdout.lines().find(|l| l.starts_with("FAILURE")).unwrap_or_else(|| panic!("{}", out.show()));
    assert!(failure.contains(key) && failure.contains("not-the-value"), "{failure}");
    assert!(!out.stdout.lines().any(|l| l == "SUCCESS"), "{}", out.show());
}
