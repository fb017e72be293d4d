//! SIGTERM to the leader: it hands leadership to a follower and exits 0; the cluster
//! keeps serving; the node restarts and catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raftkv_client::local::is_leader;
use raftkv_client::{Client, ClientOptions};
use raftkv_tests::{TestCluster, eventually};

/// The server waits at most two election timeouts (2 x 10 ticks x 50 ms) for the
/// handoff, then flushes and exits; this bound is generous for a loaded machine.
const EXIT_BOUND: Duration = Duration::from_secs(10);
const HANDING_OFF: &str = "shutting down: handing leadership to";
const TRANSFER_TIMED_OUT: &str = "leadership transfer did not finish in time";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_hands_off_and_exits_0() {
    let mut cluster = TestCluster::start(&[]);
    let old = cluster.leader().await;
    let client = cluster.client();
    client.put("handoff/before", "1").await.expect("put before");

    // Watch the other nodes while the leader shuts down.
    let others: Vec<String> = cluster.ids().into_iter().filter(|id| *id != old.id).map(|id| cluster.addr(id)).collect();
    let watcher = Client::new(others, ClientOptions::with_timeout(Duration::from_secs(1))).expect("client");
    let exited = Arc::new(AtomicBool::new(false));
    let log_path = cluster.node(old.id).expect("node").log_path().to_path_buf();
    let node = cluster.node_mut(old.id).expect("node");
    let started = Instant::now();
    let stop = async {
        let status = node.terminate(EXIT_BOUND).await.expect("terminate");
        exited.store(true, Ordering::SeqCst);
        (status, started.elapsed())
    };
    let watch = eventually(Duration::from_secs(15), "another node to lead", || async {
        let exited_before = exited.load(Ordering::SeqCst);
        for (_, s) in watcher.status_all().await {
            if let Ok(s) = s
                && is_leader(&s)
                && s.id != old.id
                && s.term >= old.term
            {
                return Ok((s, exited_before, started.elapsed()));
            }
        }
        Err("no other node leads yet".to_string())
    });
    let ((status, exit_after), (new, exited_before, new_after)) = tokio::join!(stop, watch);
    let status = status.unwrap_or_else(|| panic!("node {} did not exit within {EXIT_BOUND:?} of SIGTERM", old.id));
    assert_eq!(status.code(), Some(0), "node {} exited with {status}", old.id);
    assert!(new.term > old.term, "{old:?} -> {new:?}");
    eprintln!(
        "old leader {} exited 0 after {exit_after:?}; node {} leads in term {} (seen after {new_after:?}, {} the old \
         leader exited)",
        old.id,
        new.id,
        new.term,
        if exited_before { "after" } else { "before" }
    );
    // The old leader handed off (rather than the others electing a leader after it left).
    let log = std::fs::read_to_string(&log_path).expect("node log");
    assert!(log.contains(HANDING_OFF) && !log.contains(TRANSFER_TIMED_OUT), "no handoff in node {}'s log", old.id);

    // The remaining majority serves writes and reads.
    let leader = cluster.leader().await;
    assert_ne!(leader.id, old.id);
    client.put("handoff/after", "2").await.expect("put after the handoff");
    assert_eq!(client.get("handoff/before", false).await.expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get("handoff/after", false).await.expect("get").as_deref(), Some(&b"2"[..]));

    // The stopped node restarts and catches up.
    cluster.node_mut(old.id).expect("node").restart().await.expect("restart");
    let commit = cluster.leader().await.commit_index;
    cluster.caught_up(old.id, commit).await;
    let got = cluster.node_client(old.id).get("handoff/after", true).await.expect("stale get");
    assert_eq!(got.as_deref(), Some(&b"2"[..]));
}
