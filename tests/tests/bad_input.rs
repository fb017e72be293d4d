//! Bad input on the server port of real server processes: garbage bytes, half frames,
//! an over-limit length prefix, a far-future request deadline, 600 slowloris
//! connections held open at once, then 600 that each sent one request and went silent. Through all of it the 3-node cluster keeps
//! committing (a fresh client's put + linearizable get succeeds within its deadline)
//! and no node exits. Then oversized keys, values, scan limits and scan prefixes, through a raw tarpc
//! client and through the `raftkv` CLI: refused with an error naming the limit, and
//! nothing they would have written is readable.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::{Client, ClientOptions};
use raftkv_kv::{Command, MAX_KEY_LEN, MAX_SCAN_LIMIT, MAX_VALUE_LEN, WriteOp};
use raftkv_rpc::{RaftKvRequest, ReadConsistency, RequestError};
use raftkv_tests::{TestCluster, raftkv};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OP: Duration = Duration::from_secs(5);
/// How long the server may take to close a connection it must close at once.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// Slowloris connections opened to each node (more than the server's 512).
const SLOWLORIS: usize = 600;
/// The server's first-request timeout (crates/server/src/conn.rs) plus a margin.
const FIRST_REQUEST_CLOSE: Duration = Duration::from_secs(20 + 10);

/// A put and a linearizable get through a fresh client (fresh connections), within
/// its deadline.
async fn commits(cluster: &TestCluster, key: &str) {
    let client = Client::new(cluster.endpoints(), ClientOptions::with_timeout(OP)).expect("client");
    client.put(key.to_string(), "v".to_string()).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
    let got = client.get(key.to_string(), false).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
    assert_eq!(got.as_deref(), Some(&b"v"[..]), "{key}");
}

fn assert_all_running(cluster: &mut TestCluster) {
    for id in cluster.ids() {
        assert!(cluster.node_mut(id).is_some_and(|n| n.is_running()), "node {id} exited");
    }
}

/// Pseudo-random bytes, the same for the same seed.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// Connects and writes `bytes` (the server may already have closed: write errors are
/// fine).
async fn send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.write_all(bytes).await;
    s
}

/// Whether the server closed `s` (EOF or reset) within `within`; reads discard data.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Asserts that each node (`conns[i]` went to `addrs[i]`) closed at least the
/// connections over its limit of 512.
async fn assert_evicted_per_node(addrs: &[String], conns: &mut [Vec<TcpStream>], what: &str) {
    for (addr, conns) in addrs.iter().zip(conns) {
        let mut evicted = 0;
        for s in conns.iter_mut() {
            if closed_by_server(s, Duration::from_millis(1)).await {
                evicted += 1;
            }
        }
        let must = conns.len().saturating_sub(512);
        assert!(
            evicted >= must,
            "{addr}: only {evicted} of {} {what} connections closed; at least {must} must be",
            conns.len()
        );
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(payload.len()).expect("small").to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// File descriptors this process holds at its peak: the slowloris and idle connections
/// of every node at once, plus a margin for the cluster's clients, pipes and files.
const FDS_NEEDED: u64 = 3 * 2 * SLOWLORIS as u64 + 256;

/// Raises the soft limit on open files to the hard one (the servers inherit it): a
/// 1024 soft limit, common under a nix-daemon or systemd, is too few for FDS_NEEDED.
fn raise_open_file_limit() {
    use nix::libc::{RLIMIT_NOFILE, getrlimit, rlimit, setrlimit};
    let mut lim = rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    assert_eq!(unsafe { getrlimit(RLIMIT_NOFILE, &mut lim) }, 0, "getrlimit(RLIMIT_NOFILE)");
    assert!(
        lim.rlim_max >= FDS_NEEDED,
        "this test holds up to {FDS_NEEDED} open files; the hard limit (ulimit -Hn) is {}",
        lim.rlim_max
    );
    if lim.rlim_cur < FDS_NEEDED {
        let raised = rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        assert_eq!(unsafe { setrlimit(RLIMIT_NOFILE, &raised) }, 0, "setrlimit(RLIMIT_NOFILE, {})", lim.rlim_max);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_crashes_or_stalls_the_cluster() {
    raise_open_file_limit();
    let mut cluster = TestCluster::start(&[]);
    cluster.leader().await;
    let addrs: Vec<String> = cluster.ids().into_iter().map(|id| cluster.addr(id)).collect();
    commits(&cluster, "ok/start").await;

    // Hung half frames: a length prefix promising 1000 bytes, 10 sent, then silence.
    let half_started = Instant::now();
    let mut hung = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut bytes = 1000u32.to_be_bytes().to_vec();
        bytes.extend(garbage(i as u64, 10));
        hung.push(send(addr, &bytes).await);
    }
    for (i, addr) in addrs.iter().enumerate() {
        // Garbage payloads in well-formed frames, and raw garbage.
        for seed in 0..8u64 {
            let mut s = send(addr, &frame(&garbage(seed * 31 + i as u64, 64 + seed as usize * 100))).await;
            assert!(closed_by_server(&mut s, CLOSE_WITHIN).await, "{addr} kept a connection that sent a garbage frame");
            drop(send(addr, &garbage(seed + 1000, 4096)).await);
        }
        // A half frame, then the client hangs up.
        let mut bytes = 1000u32.to_be_bytes().to_vec();
        bytes.extend(garbage(7, 10));
        drop(send(addr, &bytes).await);
        // A length prefix over the frame limit.
        let over = u32::try_from(raftkv_rpc::MAX_FRAME_BYTES + 1).expect("fits");
        let mut s = send(addr, &over.to_be_bytes()).await;
        assert!(closed_by_server(&mut s, CLOSE_WITHIN).await, "{addr} kept a connection with an over-limit frame");
        // A deadline centuries ahead (tarpc's own client cannot send it): answered.
        let far = raftkv_rpc::encode_request(Duration::MAX, 1, RaftKvRequest::Status {}).expect("encode");
        let mut s = send(addr, &frame(&far)).await;
        let mut len = [0u8; 4];
        tokio::time::timeout(OP, s.read_exact(&mut len))
            .await
            .unwrap_or_else(|_| panic!("{addr}: no answer to a far-deadline request"))
            .unwrap_or_else(|e| panic!("{addr}: no answer to a far-deadline request: {e}"));
        commits(&cluster, &format!("ok/garbage/{i}")).await;
    }
    assert_all_running(&mut cluster);

    // Slowloris: SLOWLORIS connections to every node, each sending 2 bytes of a prefix.
    let slow_started = Instant::now();
    let mut slow: Vec<Vec<TcpStream>> = Vec::new();
    for addr in &addrs {
        let mut conns = Vec::new();
        for _ in 0..SLOWLORIS {
            conns.push(send(addr, &[0, 0]).await);
        }
        slow.push(conns);
    }
    commits(&cluster, "ok/slowloris").await;
    assert_all_running(&mut cluster);
    // Each node kept at most 512 connections: the oldest without a request were evicted.
    assert_evicted_per_node(&addrs, &mut slow, "slowloris").await;

    // Connections that each sent one complete request (answered), then went silent:
    // when the table is full the idlest are closed, so new clients still get in.
    let status = frame(&raftkv_rpc::encode_request(OP, 1, RaftKvRequest::Status {}).expect("encode"));
    let mut idle: Vec<Vec<TcpStream>> = Vec::new();
    for addr in &addrs {
        let mut conns = Vec::new();
        for _ in 0..SLOWLORIS {
            let mut s = send(addr, &status).await;
            let mut len = [0u8; 4];
            tokio::time::timeout(OP, s.read_exact(&mut len))
                .await
                .unwrap_or_else(|_| panic!("{addr}: no answer to a status request"))
                .unwrap_or_else(|e| panic!("{addr}: no answer to a status request: {e}"));
            conns.push(s);
        }
        idle.push(conns);
    }
    commits(&cluster, "ok/idle").await;
    assert_all_running(&mut cluster);
    assert_evicted_per_node(&addrs, &mut idle, "idle after one request").await;
    drop(idle);
    let mut slow: Vec<TcpStream> = slow.into_iter().flatten().collect();

    // Oversized requests.
    oversized_raw(&cluster).await;
    oversized_cli(&cluster).await;
    commits(&cluster, "ok/oversized").await;

    // Every connection that sent no complete request is closed by the first-request
    // timeout.
    for s in hung.iter_mut().chain(slow.iter_mut()) {
        let left = FIRST_REQUEST_CLOSE.saturating_sub(half_started.min(slow_started).elapsed()).max(CLOSE_WITHIN);
        assert!(closed_by_server(s, left).await, "a connection without a request is still open after the timeout");
    }
    commits(&cluster, "ok/end").await;
    assert_all_running(&mut cluster);
}

/// Oversized key, value, scan limit and scan prefix through a raw tarpc client: `Invalid`, naming
/// the limit; nothing written.
async fn oversized_raw(cluster: &TestCluster) {
    let leader = cluster.leader().await;
    let rpc = raftkv_rpc::connect(&cluster.addr(leader.id)).await.expect("connect");
    let ctx = || {
        let mut c = raftkv_rpc::tarpc::context::current();
        c.deadline = Instant::now() + OP;
        c
    };
    let put = |key: Bytes, value: Bytes| Command { client_id: 77, seq: 1, op: WriteOp::Put { key, value } };
    let big_key = Bytes::from(vec![b'k'; MAX_KEY_LEN + 1]);
    let big_value = Bytes::from(vec![b'v'; MAX_VALUE_LEN + 1]);
    let cases = [
        (rpc.write(ctx(), put(big_key.clone(), Bytes::from_static(b"v"))).await.map(|r| r.map(|_| ())), MAX_KEY_LEN),
        (
            rpc.write(ctx(), put(Bytes::from_static(b"bad/value"), big_value)).await.map(|r| r.map(|_| ())),
            MAX_VALUE_LEN,
        ),
        (rpc.get(ctx(), big_key.clone(), ReadConsistency::Linearizable).await.map(|r| r.map(|_| ())), MAX_KEY_LEN),
        (
            rpc.scan(ctx(), Bytes::new(), MAX_SCAN_LIMIT as u32 + 1, ReadConsistency::Linearizable)
                .await
                .map(|r| r.map(|_| ())),
            MAX_SCAN_LIMIT,
        ),
        (rpc.scan(ctx(), big_key.clone(), 10, ReadConsistency::Linearizable).await.map(|r| r.map(|_| ())), MAX_KEY_LEN),
    ];
    for (i, (reply, limit)) in cases.into_iter().enumerate() {
        match reply.unwrap_or_else(|e| panic!("case {i}: rpc failed: {e}")) {
            Err(RequestError::Invalid(m)) => assert!(m.contains(&limit.to_string()), "case {i}: {m}"),
            other => panic!("case {i}: expected Invalid naming {limit}, got {other:?}"),
        }
    }
    let got = cluster.client().get("bad/value".to_string(), false).await.expect("get bad/value");
    assert_eq!(got, None, "a refused write is readable");
}

/// The same through the `raftkv` CLI: exit 1, stderr names the limit.
async fn oversized_cli(cluster: &TestCluster) {
    let eps = cluster.endpoints().join(",");
    let big_key = "k".repeat(MAX_KEY_LEN + 1);
    let file = cluster.path().join("big-value");
    std::fs::write(&file, vec![b'v'; MAX_VALUE_LEN + 1]).expect("write the value file");
    let file = file.to_str().expect("utf-8 path").to_string();
    let cases: [(Vec<&str>, usize); 4] = [
        (vec!["put", &big_key, "v"], MAX_KEY_LEN),
        (vec!["put", "bad/cli-value", "--value-file", &file], MAX_VALUE_LEN),
        (vec!["get", &big_key], MAX_KEY_LEN),
        (vec!["scan", &big_key], MAX_KEY_LEN),
    ];
    for (args, max) in cases {
        let mut all = vec!["--endpoints", &eps, "--timeout", "5s"];
        all.extend(args);
        let out = raftkv(&all, &[], Duration::from_secs(20)).await.expect_code(1);
        assert!(out.stderr.contains(&max.to_string()), "stderr does not name {max}: {}", out.show());
    }
    let out = raftkv(&["--endpoints", &eps, "get", "bad/cli-value"], &[], Duration::from_secs(20)).await;
    out.expect_code(1);
    // Past one page's limit the CLI pages (as `etcdctl get --prefix --limit` has no
    // cap); the page limit itself is checked by the RPC cases above.
    let limit = (MAX_SCAN_LIMIT + 1).to_string();
    let out = raftkv(&["--endpoints", &eps, "scan", "bad/", "--limit", &limit], &[], Duration::from_secs(20))
        .await
        .expect_code(0);
    assert_eq!(out.stdout, "", "refused writes are readable: {}", out.show());
}
