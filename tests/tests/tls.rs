//! Mutual TLS on real processes: a 3-node cluster started with the certificates of
//! `raftkv certs`. A client with a client certificate from the cluster CA reads and
//! writes; a plaintext client, a TLS client without a certificate and one with a
//! certificate of another CA can do neither (an error, not a hang). Raft traffic: a
//! node certificate of another CA cannot send `raft()` at all, and a valid CLIENT
//! certificate sending a forged RequestVote at a high term and an AppendEntries gets
//! `PeerError::NotANode`; the cluster's term does not move.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raftkv_client::local::{Bootstrap, NodeProcess, free_ports};
use raftkv_client::{Client, ClientOptions, NodeStatus};
use raftkv_raft::{Message, MessageBody};
use raftkv_rpc::tarpc::context;
use raftkv_rpc::{PeerError, RaftKvClient, TlsConfig, TlsFiles};
use raftkv_tests::{CliOutput, binaries, eventually, print_log_tail, raftkv, spawn_node};

const NODES: u64 = 3;
/// Every refused operation must fail within this (no hang).
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

struct Nodes {
    nodes: Vec<NodeProcess>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                print_log_tail(n);
            }
        }
    }
}

fn files(dir: &Path, cert: &str, ca_dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{cert}.pem")),
        key: dir.join(format!("{cert}-key.pem")),
        ca: ca_dir.join("ca.pem"),
    }
}

fn tls_args(f: &TlsFiles) -> Vec<String> {
    let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_string();
    vec!["--tls-cert".into(), s(&f.cert), "--tls-key".into(), s(&f.key), "--tls-ca".into(), s(&f.ca)]
}

async fn certs(out: &Path, args: &[&str]) {
    let mut all = vec!["certs", "--out", out.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    raftkv(&all, &[], Duration::from_secs(30)).await.expect_code(0);
}

async fn cli(endpoints: &str, tls: Option<&TlsFiles>, args: &[&str]) -> CliOutput {
    let tls = tls.map(tls_args).unwrap_or_default();
    let mut all: Vec<&str> = vec!["--endpoints", endpoints, "--timeout", "2s"];
    all.extend(tls.iter().map(String::as_str));
    all.extend_from_slice(args);
    raftkv(&all, &[], REFUSED_WITHIN + Duration::from_secs(5)).await
}

/// A TLS connection that trusts the cluster CA but presents no certificate.
async fn connect_without_certificate(addr: &str, ca: &Path) -> Result<RaftKvClient, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    Ok(raftkv_rpc::client_on(tls))
}

fn ctx() -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = std::time::Instant::now() + Duration::from_secs(3);
    ctx
}

/// A get and a put over `conn` both fail (any error: refused handshake, closed
/// connection), within [`REFUSED_WITHIN`].
async fn assert_refused(what: &str, conn: Result<RaftKvClient, String>) {
    let conn = match conn {
        Err(e) => {
            eprintln!("{what}: connection refused: {e}");
            return;
        }
        Ok(c) => c,
    };
    let get =
        tokio::time::timeout(REFUSED_WITHIN, conn.get(ctx(), "tls/secret".into(), raftkv_rpc::ReadConsistency::Stale))
            .await
            .unwrap_or_else(|_| panic!("{what}: get hung"));
    assert!(!matches!(get, Ok(Ok(_))), "{what}: a get succeeded: {get:?}");
    let command = raftkv_kv::Command {
        client_id: 99,
        seq: 1,
        op: raftkv_kv::WriteOp::Put { key: "tls/intruder".into(), value: "x".into() },
    };
    let put = tokio::time::timeout(REFUSED_WITHIN, conn.write(ctx(), command))
        .await
        .unwrap_or_else(|_| panic!("{what}: put hung"));
    assert!(!matches!(put, Ok(Ok(_))), "{what}: a put succeeded: {put:?}");
}

fn vote(term: u64, to: u64) -> Message {
    Message {
        from: 7,
        to,
        term,
        body: MessageBody::RequestVote { pre_vote: false, last_log_index: 1_000_000, last_log_term: term, force: true },
        recovery: None,
        trace: None,
    }
}

fn append(term: u64, to: u64) -> Message {
    Message {
        from: 7,
        to,
        term,
        body: MessageBody::AppendEntries { prev_log_index: 0, prev_log_term: 0, entries: Vec::new(), leader_commit: 0 },
        recovery: None,
        trace: None,
    }
}

async fn statuses(client: &Client) -> Result<Vec<NodeStatus>, String> {
    client.status_all().await.into_iter().map(|(ep, s)| s.map_err(|e| format!("{ep}: {e}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_the_clusters_certificates() {
    binaries();
    let dir = tempfile::Builder::new().prefix("raftkv-tls-").tempdir().expect("temp dir");
    let (pki, other) = (dir.path().join("pki"), dir.path().join("other"));
    certs(&pki, &["--node", "1,2,3,4", "--client", "test"]).await;
    certs(&other, &["--node", "1", "--client", "test"]).await;
    // Refuses to overwrite without --force.
    let again = raftkv(&["certs", "--out", pki.to_str().unwrap(), "--node", "1"], &[], Duration::from_secs(30)).await;
    assert_eq!(again.code, Some(1), "{}", again.show());
    assert!(again.stderr.contains("--force"), "{}", again.show());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(pki.join("node-1-key.pem")).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are private");
    }

    let ports = free_ports(NODES as usize).expect("free ports");
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members: Vec<(u64, String)> = (1..=NODES).zip(addrs.iter().cloned()).collect();
    let mut nodes = Nodes { nodes: Vec::new() };
    for (id, addr) in &members {
        let args = tls_args(&files(&pki, &format!("node-{id}"), &pki));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.nodes.push(spawn_node(dir.path(), *id, addr, Bootstrap::Peers(members.clone()), &args));
    }
    let endpoints = addrs.join(",");

    // A valid client certificate: reads and writes (library and CLI).
    let client_files = files(&pki, "client", &pki);
    let tls = TlsConfig::load(&client_files).expect("load the client certificate");
    let opts = ClientOptions { tls: Some(tls.clone()), ..ClientOptions::with_timeout(Duration::from_secs(5)) };
    let client = Client::new(addrs.clone(), opts).expect("client");
    let leader = eventually(Duration::from_secs(20), "a TLS cluster elects a leader", || async {
        let all = statuses(&client).await?;
        all.iter().find(|s| s.role == "leader").cloned().ok_or_else(|| format!("no leader yet: {all:?}"))
    })
    .await;
    client.put("tls/secret", "s3cret").await.expect("put with a client certificate");
    assert_eq!(client.get("tls/secret", false).await.expect("get").as_deref(), Some(&b"s3cret"[..]));
    cli(&endpoints, Some(&client_files), &["put", "tls/cli", "v"]).await.expect_code(0);
    let out = cli(&endpoints, Some(&client_files), &["get", "tls/cli"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "v", "{}", out.show());

    // Plaintext: refused, with a hint at TLS.
    let out = cli(&endpoints, None, &["get", "tls/secret"]).await;
    assert_ne!(out.code, Some(0), "{}", out.show());
    assert!(!out.stdout.contains("s3cret"), "{}", out.show());
    assert!(out.stderr.contains("TLS"), "the error should point at TLS: {}", out.show());
    let out = cli(&endpoints, None, &["put", "tls/intruder", "plain"]).await;
    assert_ne!(out.code, Some(0), "{}", out.show());
    assert_refused("plaintext", raftkv_rpc::connect(&addrs[0]).await.map_err(|e| e.to_string())).await;

    // TLS without a client certificate.
    for addr in &addrs {
        assert_refused("no certificate", connect_without_certificate(addr, &pki.join("ca.pem")).await).await;
    }

    // A client certificate of another CA (trusting our CA, so only the server refuses).
    let foreign_client = files(&other, "client", &pki);
    let out = cli(&endpoints, Some(&foreign_client), &["get", "tls/secret"]).await;
    assert_ne!(out.code, Some(0), "{}", out.show());
    assert!(!out.stdout.contains("s3cret"), "{}", out.show());
    let foreign = TlsConfig::load(&foreign_client).expect("load the foreign certificate");
    assert_refused(
        "another CA's client",
        raftkv_rpc::connect_with(&addrs[0], Some(&foreign)).await.map_err(|e| e.to_string()),
    )
    .await;
    // Entirely another CA: our servers' certificates are refused by the client.
    let alien = TlsConfig::load(&files(&other, "client", &other)).expect("load");
    let Err(e) = raftkv_rpc::connect_with(&addrs[0], Some(&alien)).await else {
        panic!("a client trusting only another CA accepted our server's certificate");
    };
    assert!(e.to_string().contains("TLS handshake with"), "{e}");

    // Raft traffic. A node certificate of another CA (trusting our CA): refused.
    let term_before = leader.term;
    let cluster_id = leader.cluster_id;
    let foreign_node = TlsConfig::load(&files(&other, "node-1", &pki)).expect("load");
    for (i, addr) in addrs.iter().enumerate() {
        let to = i as u64 + 1;
        if let Ok(conn) = raftkv_rpc::connect_with(addr, Some(&foreign_node)).await {
            let r = tokio::time::timeout(
                REFUSED_WITHIN,
                conn.raft(
                    ctx(),
                    cluster_id,
                    vec![vote(term_before + 1000, to), append(term_before + 1000, to)],
                    vec![],
                ),
            )
            .await
            .expect("raft() with a foreign node certificate hung");
            assert!(!matches!(r, Ok(Ok(_))), "a foreign node certificate sent raft messages: {r:?}");
        }
    }
    // A valid client certificate: connects, but raft() is refused as NotANode.
    for (i, addr) in addrs.iter().enumerate() {
        let to = i as u64 + 1;
        let conn = raftkv_rpc::connect_with(addr, Some(&tls)).await.expect("client certificate connects");
        for batch in [vec![vote(term_before + 1000, to)], vec![append(term_before + 1000, to)]] {
            let r = conn.raft(ctx(), cluster_id, batch, vec![]).await.expect("an answer");
            match r {
                Err(PeerError::NotANode { common_name }) => assert_eq!(common_name, "raftkv-client-test"),
                other => panic!("raft() with a client certificate to {addr}: {other:?}"),
            }
        }
    }
    // The term did not move and the leader stayed (a vote or append at term+1000
    // accepted by any node would have raised every node's term).
    let after = statuses(&client).await.expect("status of every node");
    for s in &after {
        assert_eq!(s.term, term_before, "node {} moved to term {} (was {term_before}): {after:?}", s.id, s.term);
        assert_eq!(s.leader, Some(leader.id), "{after:?}");
    }
    // Nothing the refused clients wrote landed.
    assert_eq!(client.get("tls/intruder", false).await.expect("get"), None);
    assert_eq!(client.get("tls/secret", false).await.expect("get").as_deref(), Some(&b"s3cret"[..]));

    // A node joins over TLS (its join request and the peer links both use it) and
    // becomes a voter that holds the data.
    let addr4 = format!("127.0.0.1:{}", free_ports(1).expect("free port")[0]);
    let args = tls_args(&files(&pki, "node-4", &pki));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.nodes.push(spawn_node(dir.path(), 4, &addr4, Bootstrap::Join(addrs.clone()), &args));
    eventually(Duration::from_secs(20), "node 4 joins over TLS and becomes a voter", || async {
        let list = client.members().await.map_err(|e| e.to_string())?;
        let voters = list.members.iter().filter(|m| m.role == raftkv_rpc::MemberRole::Voter).count();
        if voters == 4 && list.committed { Ok(()) } else { Err(format!("{list:?}")) }
    })
    .await;
    let opts = ClientOptions { tls: Some(tls.clone()), ..ClientOptions::with_timeout(Duration::from_secs(5)) };
    let node4 = Client::new(vec![addr4.clone()], opts).expect("client");
    eventually(Duration::from_secs(20), "node 4 holds the data", || async {
        let got = node4.get("tls/secret", true).await.map_err(|e| e.to_string())?;
        if got.as_deref() == Some(&b"s3cret"[..]) { Ok(()) } else { Err(format!("node 4 has {got:?}")) }
    })
    .await;
    drop(nodes);
}

/// Plaintext on a non-loopback address is logged as a warning; on loopback (the local
/// demo) it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_non_loopback_address_is_warned_about() {
    binaries();
    let dir = tempfile::Builder::new().prefix("raftkv-plain-").tempdir().expect("temp dir");
    let ports = free_ports(2).expect("free ports");
    let wide = format!("0.0.0.0:{}", ports[0]);
    let local = format!("127.0.0.1:{}", ports[1]);
    let nodes = Nodes {
        nodes: vec![
            spawn_node(&dir.path().join("wide"), 1, &wide, Bootstrap::Peers(vec![(1, wide.clone())]), &[]),
            spawn_node(&dir.path().join("local"), 1, &local, Bootstrap::Peers(vec![(1, local.clone())]), &[]),
        ],
    };
    let log = |i: usize| std::fs::read_to_string(nodes.nodes[i].log_path()).unwrap_or_default();
    for i in 0..2 {
        eventually(Duration::from_secs(20), "the node logs that it started", || async {
            if log(i).contains("starting raftkv node") { Ok(()) } else { Err(log(i)) }
        })
        .await;
    }
    eventually(Duration::from_secs(20), "the warning about plaintext on 0.0.0.0", || async {
        let l = log(0);
        if l.contains("WARN") && l.contains("PLAINTEXT") { Ok(()) } else { Err(l) }
    })
    .await;
    // The loopback node has logged past that point (it elected itself) without it.
    let client = Client::new(vec![local.clone()], ClientOptions::default()).expect("client");
    eventually(Duration::from_secs(20), "the loopback node serves", || async {
        client.put("k", "v").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    assert!(!log(1).contains("PLAINTEXT"), "{}", log(1));
}
