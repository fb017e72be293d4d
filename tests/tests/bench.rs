//! `raftkv bench` against a local 3-node cluster: it reports a non-zero throughput and
//! no errors, in JSON. Nothing is timed here: the performance targets are checked by
//! the benchmark (bench/compare-etcd.sh), not by tests.

use std::time::Duration;

use raftkv_tests::{TestCluster, endpoints_arg, raftkv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_and_no_errors() {
    let cluster = TestCluster::start(&[]);
    cluster.leader().await;
    let eps = endpoints_arg(&[], &cluster);

    for (workload, reads) in [("writes", "0"), ("mixed", "0.5")] {
        let args = [
            "--endpoints",
            eps.as_str(),
            "--json",
            "bench",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--clients",
            "8",
            "--connections",
            "2",
            "--keys",
            "200",
            "--reads",
            reads,
        ];
        let out = raftkv(&args, &[], Duration::from_secs(60)).await.expect_code(0);
        let report: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{workload}: not JSON ({e}): {}", out.show()));
        let throughput = report["total"]["throughput"].as_f64().unwrap_or(0.0);
        assert!(throughput > 0.0, "{workload}: no throughput: {}", out.show());
        assert_eq!(report["errors"].as_u64(), Some(0), "{workload}: errors: {}", out.show());
        assert!(report["writes"]["ops"].as_u64().unwrap_or(0) > 0, "{workload}: no writes: {}", out.show());
        if workload == "mixed" {
            assert!(report["reads"]["ops"].as_u64().unwrap_or(0) > 0, "{workload}: no reads: {}", out.show());
            assert!(report["reads"]["latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{}", out.show());
        }
    }
}
