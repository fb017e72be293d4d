//! The Jepsen-style fault test with network partitions: 5 real server processes, each
//! in its own network namespace (`raftkv_tests::netns`), while concurrent clients run get /
//! put / cas and a unique-key writer puts, and a nemesis cycles through
//!
//! - the leader isolated from every other node,
//! - a random minority (1 or 2 nodes) cut off from the majority,
//! - a bridge: two halves sharing one node (`A B [C] D E`),
//!
//! each held for 3 s (several election timeouts) then healed, and the process faults
//! of `jepsen.rs` (kill -9 of the leader or a random node, SIGSTOP, a follower wiped).
//! The history must be linearizable and every acknowledged unique-key put present at
//! the end (`raftkv_tests::jepsen`).
//!
//! Needs root (network namespaces, iptables). Without it the test prints SKIPPED and
//! passes, except under `CI=true` or `RAFTKV_REQUIRE_NETNS=1`, where it fails.
//!
//! The workload runs for `RAFTKV_JEPSEN_SECS` seconds (default 60; the whole test about
//! 70-80 s). Long runs: `scripts/jepsen --long 10m`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use raftkv_tests::TestCluster;
use raftkv_tests::jepsen::{ALL_FAULTS, Setup, run, secs_and_seed};
use raftkv_tests::netns::{self, Net};

const DEFAULT_SECS: u64 = 60;
const NODES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_partitions_crashes_pauses_and_wipes() {
    let Some(net) = netns::create_or_skip(NODES, "jepsen_partition") else { return };
    let (secs, seed) = secs_and_seed(DEFAULT_SECS);
    // Declared after `net`, so dropped first: the servers die before their namespaces go.
    let mut cluster = TestCluster::start_placed(NODES, &["--snapshot-entries", "1000"], &net.placement());
    let setup = Setup {
        title: format!(
            "{NODES} nodes in network namespaces ({}); partitions, kill -9, SIGSTOP, wiped restarts",
            net.subnet()
        ),
        net: Some(&net),
        faults: &ALL_FAULTS,
        secs,
        seed,
    };
    let report = run(&mut cluster, setup).await;
    report.print();
    // Every kind of ALL_FAULTS injected, among the rest.
    report.assert_sound();
    // The partitions were real: an isolated leader was replaced.
    let isolations: Vec<bool> = report.faults.iter().filter_map(|f| f.new_leader).collect();
    assert!(isolations.is_empty() || isolations.contains(&true), "no isolated leader was ever replaced");
    report.assert_checker_catches_planted_bugs();
    report.assert_lost_write_check_catches_planted_bugs();
}

/// Whether a connection from node `from`'s namespace to `to` is accepted within 1 s.
fn connects(net: &Net, from: Option<u32>, to: SocketAddr) -> bool {
    let attempt = move || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok();
    match from {
        Some(id) => net.in_node(id as _, attempt).expect("run in the namespace"),
        None => attempt(),
    }
}

/// The harness itself: nodes reach each other and the test reaches them; a cut blocks
/// exactly the pairs across it, both ways, and heal undoes it; dropping the network
/// removes its namespaces and interface; stale names of a gone process are removed.
#[test]
fn netns_harness_cuts_heals_and_cleans_up() {
    let Some(net) = netns::create_or_skip(3, "netns_harness") else { return };
    // A listener in each node's namespace (the kernel completes handshakes without
    // accept()).
    let listeners: Vec<TcpListener> = net
        .ids()
        .into_iter()
        .map(|id| {
            let addr = SocketAddr::from((net.node_ip(id), netns::NODE_PORT));
            net.in_node(id, move || TcpListener::bind(addr)).expect("in the namespace").expect("bind")
        })
        .collect();
    let addr = |i: usize| listeners[i - 1].local_addr().expect("addr");
    assert!(connects(&net, None, addr(2)), "the test reaches node 2");
    assert!(connects(&net, Some(1), addr(2)), "node 1 reaches node 2");
    assert!(!connects(&net, Some(1), SocketAddr::from((Ipv4Addr::LOCALHOST, 1))), "a closed port is refused");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(net.cut(&[1], &[2])).expect("cut");
    assert!(net.rules(1).expect("rules").contains(&format!("-A INPUT -s {}/32 -j DROP", net.node_ip(2))));
    assert!(!connects(&net, Some(1), addr(2)), "node 1 must not reach node 2 across the cut");
    assert!(!connects(&net, Some(2), addr(1)), "node 2 must not reach node 1 across the cut");
    assert!(connects(&net, Some(1), addr(3)), "node 1 still reaches node 3");
    assert!(connects(&net, Some(3), addr(2)), "node 3 still reaches node 2");
    assert!(connects(&net, None, addr(1)) && connects(&net, None, addr(2)), "the test reaches both sides");
    assert!(rt.block_on(net.cut(&[1], &[1, 3])).is_err(), "a node on both sides is refused");

    rt.block_on(net.heal()).expect("heal");
    assert!(connects(&net, Some(1), addr(2)) && connects(&net, Some(2), addr(1)), "healed");

    let names = net.names();
    drop(listeners);
    drop(net);
    let (namespaces, links) = (ip_out(&["netns", "list"]), ip_out(&["-o", "link", "show"]));
    for name in &names {
        assert!(!namespaces.contains(name.as_str()) && !links.contains(name.as_str()), "{name} left behind");
    }

    // A namespace and an interface named for a process that has exited are stale.
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let gone = child.id();
    child.wait().expect("wait");
    let stale = format!("{}{gone}-0", netns::NAME_PREFIX);
    ip_out(&["netns", "add", &format!("{stale}-n1")]);
    ip_out(&["link", "add", &stale, "type", "veth", "peer", "name", "eth0", "netns", &format!("{stale}-n1")]);
    let removed = netns::remove_stale();
    assert!(removed.contains(&format!("namespace {stale}-n1")), "{removed:?}");
    assert!(removed.contains(&format!("interface {stale}")), "{removed:?}");
    assert!(!ip_out(&["netns", "list"]).contains(&stale));
}

fn ip_out(args: &[&str]) -> String {
    let out = std::process::Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
