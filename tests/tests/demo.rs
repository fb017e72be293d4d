//! `raftkv demo` end to end: the real CLI starts real server processes, kills the
//! leader, restarts, stops a node, restores it and verifies the data. The one test of
//! the demo; in the fault tier (it kills and restarts nodes for several seconds).

use std::time::Duration;

use raftkv_tests::{number_after, raftkv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_passes_and_reports_the_failover_time() {
    let dir = tempfile::Builder::new().prefix("raftkv-demo-test-").tempdir().expect("temp dir");
    let data_dir = dir.path().join("demo");
    let data_dir = data_dir.to_str().expect("utf-8 temp path");
    let out = raftkv(
        &["demo", "--data-dir", data_dir, "--validate-duration", "500ms", "--max-time", "90s"],
        &[],
        Duration::from_secs(120),
    )
    .await
    .expect_code(0);
    assert!(out.stdout.contains("DEMO PASSED"), "{}", out.show());
    let marker = "leader killed -> first write committed on new leader in";
    let line =
        out.stdout.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no {marker:?}: {}", out.show()));
    let ms = number_after(line, marker).unwrap_or_else(|| panic!("no number in {line:?}"));
    assert!(line.trim_end().contains(&format!("{ms} ms")), "{line}");
    eprintln!("demo: failover {ms} ms; demo took {:?}", out.elapsed);
}
