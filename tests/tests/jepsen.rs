//! A Jepsen-style fault test: concurrent clients run get / put / cas on a few keys of a
//! 3-node cluster of real server processes on 127.0.0.1 while a nemesis kills
//! (`kill -9`) and restarts the leader or a random node, pauses one (SIGSTOP for longer
//! than an election timeout, then SIGCONT), and restarts a follower with an empty data
//! directory. The history must be linearizable and every acknowledged unique-key put
//! present at the end (the run and its checks: `raftkv_tests::jepsen`).
//!
//! The workload runs for `RAFTKV_JEPSEN_SECS` seconds (default 40; the whole test takes
//! about 45-60 s). Set it higher for a long run, or use `scripts/jepsen --long 10m
//! --no-partitions`:
//!
//! ```sh
//! RAFTKV_JEPSEN_SECS=600 cargo test -p raftkv-tests --features fault-tier --test jepsen -- --nocapture
//! ```
//!
//! Network partitions are in `jepsen_partition.rs` (5 nodes in network namespaces).

use raftkv_tests::TestCluster;
use raftkv_tests::jepsen::{PROCESS_FAULTS, Setup, run, secs_and_seed};

const DEFAULT_SECS: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_crashes_pauses_and_wipes() {
    let (secs, seed) = secs_and_seed(DEFAULT_SECS);
    // Frequent snapshots: a node restarted empty is caught up by a snapshot.
    let mut cluster = TestCluster::start(&["--snapshot-entries", "1000"]);
    let setup = Setup {
        title: "3 nodes on 127.0.0.1; kill -9, SIGSTOP, wiped restarts (no partitions)".into(),
        net: None,
        faults: &PROCESS_FAULTS,
        secs,
        seed,
    };
    let report = run(&mut cluster, setup).await;
    report.print();
    report.assert_sound();
    report.assert_checker_catches_planted_bugs();
    report.assert_lost_write_check_catches_planted_bugs();
}
