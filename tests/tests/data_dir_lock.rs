//! One server per data dir: a second `raftkv-server` started on a data dir in use exits
//! non-zero at once, naming the dir and the pid holding it, and the first one goes on
//! serving untouched.

use std::time::Duration;

use raftkv_client::local::{Bootstrap, NodeConfig, NodeProcess, ServerCommand, free_port};
use raftkv_tests::{TestCluster, binaries};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_data_dir_in_use_exits_naming_the_dir_and_the_holder() {
    let mut cluster = TestCluster::start(&[]);
    let leader = cluster.leader().await;
    let first = cluster.retire(leader.id);
    let (data_dir, holder) = (first.data_dir().to_path_buf(), first.pid().expect("running"));
    let peers = match &first.config().bootstrap {
        Bootstrap::Peers(p) => p.clone(),
        other => panic!("founded with --peers: {other:?}"),
    };

    // The same id and data dir on another port, as a user who starts it twice would.
    let scratch = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let config = NodeConfig {
        id: leader.id,
        addr,
        bootstrap: Bootstrap::Peers(peers),
        data_dir: data_dir.clone(),
        log_path: scratch.path().join("second.log"),
        extra_args: Vec::new(),
    };
    let mut second =
        NodeProcess::spawn(&ServerCommand::binary(&binaries().server), config).expect("start on the used data dir");
    let status = second.wait_exit(Duration::from_secs(30)).await.expect("wait").expect("the second server exits");
    assert!(!status.success(), "it exits non-zero: {status}");
    let log = std::fs::read_to_string(second.log_path()).expect("its log");
    for part in [data_dir.display().to_string(), format!("process {holder}"), "in use".to_string()] {
        assert!(log.contains(&part), "{part:?} missing in the second server's log:\n{log}");
    }

    // The first one was not disturbed: the cluster still commits, with it leading.
    let client = cluster.client();
    let written = client.put("after", "the refused start").await.expect("a write commits");
    assert_eq!(written.leader, leader.id, "the holder still leads");
}
