//! A dead address first in the endpoint list does not keep the client (library or CLI)
//! from succeeding within its deadline: neither a closed port nor one that accepts
//! connections and never answers.
//!
//! The client starts at a random endpoint, so "first in the list" does not mean "tried
//! first": several fresh clients are used, and for the address that never answers
//! (whose cost is visible: one attempt deadline) the test checks it was hit.

use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientOptions};
use raftkv_tests::{TestCluster, dead_endpoint, endpoints_arg, raftkv};

const TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many fresh clients per kind of dead endpoint.
const CLIENTS: usize = 12;

/// put + linearizable get through a fresh client of `endpoints`; returns how long
/// the put took.
async fn put_get(endpoints: Vec<String>, key: &str, value: &str) -> Duration {
    let what = format!("{endpoints:?}");
    let client = Client::new(endpoints, ClientOptions::with_timeout(TIMEOUT)).expect("client");
    let started = Instant::now();
    client.put(key.to_string(), value.to_string()).await.unwrap_or_else(|e| panic!("put via {what}: {e}"));
    let put_took = started.elapsed();
    let got = client.get(key.to_string(), false).await.unwrap_or_else(|e| panic!("get via {what}: {e}"));
    assert_eq!(got.as_deref(), Some(value.as_bytes()), "{key} via {what}");
    // Each operation succeeded, so within TIMEOUT.
    put_took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_first_endpoint_is_skipped() {
    let cluster = TestCluster::start(&[]);
    cluster.leader().await;
    let live = cluster.endpoints();

    // A closed port: refused at once.
    let closed = dead_endpoint();
    for round in 0..CLIENTS {
        let endpoints: Vec<String> = std::iter::once(closed.clone()).chain(live.iter().cloned()).collect();
        put_get(endpoints, &format!("dead/closed/{round}"), "v").await;
    }

    // Accepts TCP connections (the kernel completes the handshake) but never answers:
    // an attempt there costs the client's attempt deadline (1 s by default).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_addr = hung.local_addr().expect("addr").to_string();
    let attempt = ClientOptions::with_timeout(TIMEOUT).rpc_timeout;
    let mut slow = 0;
    for round in 0..CLIENTS {
        // The hung address and one live node: a fresh client starts at either.
        let endpoints = vec![hung_addr.clone(), live[round % live.len()].clone()];
        if put_get(endpoints, &format!("dead/hung/{round}"), "v").await >= attempt {
            slow += 1;
            if slow == 2 {
                break;
            }
        }
    }
    assert!(slow > 0, "no client tried the hung endpoint first in {CLIENTS} tries");

    // The CLI, with each dead address first.
    for (name, bad) in [("closed", closed), ("hung", hung_addr)] {
        let endpoints = endpoints_arg(std::slice::from_ref(&bad), &cluster);
        let key = format!("dead/{name}/cli");
        for _ in 0..2 {
            let args = ["--endpoints", &endpoints, "--timeout", "5s", "put", &key, "cli-value"];
            raftkv(&args, &[], Duration::from_secs(20)).await.expect_code(0);
        }
        let out = raftkv(&["--endpoints", &endpoints, "--timeout", "5s", "get", &key], &[], Duration::from_secs(20))
            .await
            .expect_code(0);
        assert_eq!(out.stdout, "cli-value\n", "{}", out.show());
    }
    drop(hung);
}
