//! In-process smoke test: three nodes on 127.0.0.1 in one runtime elect a leader, take
//! writes, serve linearizable and stale reads, snapshot, hand off leadership, shut down
//! and recover from disk; batches of operations, on the leader and through a
//! follower, and clients that batch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_client::{BatchStats, BatchingConnection};
use raftkv_kv::{Command, WriteOp, WriteResult};
use raftkv_rpc::tarpc::context;
use raftkv_rpc::{
    BatchOp, BatchOpReply, Forwarded, MAX_BATCH_OPS, RaftKvClient, ReadConsistency, RequestError, WriteReply,
};
use raftkv_server::{ClusterConfig, NodeConfig};
use raftkv_storage::FsyncPolicy;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(15);

struct Cluster {
    addrs: BTreeMap<u64, SocketAddr>,
    dirs: Vec<tempfile::TempDir>,
    nodes: BTreeMap<u64, (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

impl Cluster {
    async fn start(dirs: Vec<tempfile::TempDir>, addrs: Option<BTreeMap<u64, SocketAddr>>) -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=dirs.len() as u64 {
            let bind = addrs.as_ref().map_or("127.0.0.1:0".to_string(), |a| a[&id].to_string());
            listeners.insert(id, TcpListener::bind(bind).await.expect("bind"));
        }
        let addrs: BTreeMap<u64, SocketAddr> =
            listeners.iter().map(|(id, l)| (*id, l.local_addr().expect("local addr"))).collect();
        let mut cluster = Cluster { addrs, dirs, nodes: BTreeMap::new() };
        for (id, listener) in listeners {
            cluster.start_node(id, listener);
        }
        cluster
    }

    fn start_node(&mut self, id: u64, listener: TcpListener) {
        let cfg = NodeConfig {
            id,
            listen: self.addrs[&id].to_string(),
            peers: self.addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            data_dir: self.dirs[id as usize - 1].path().to_path_buf(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 8,
            fsync: FsyncPolicy::Always,
            cluster: ClusterConfig::found(self.addrs[&id].to_string()),
            storage: None,
            tls: None,
            enable_faults: false,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(raftkv_server::serve(cfg, listener, async move {
            let _ = rx.await;
        }));
        self.nodes.insert(id, (tx, task));
    }

    async fn stop_node(&mut self, id: u64) {
        let (tx, task) = self.nodes.remove(&id).expect("running");
        let _ = tx.send(());
        let result = tokio::time::timeout(DEADLINE, task).await.expect("node stops in time").expect("no panic");
        result.unwrap_or_else(|e| panic!("node {id} failed: {e:#}"));
    }

    async fn restart_node(&mut self, id: u64) {
        let listener = TcpListener::bind(self.addrs[&id]).await.expect("rebind");
        self.start_node(id, listener);
    }

    async fn client(&self, id: u64) -> RaftKvClient {
        raftkv_rpc::connect(&self.addrs[&id].to_string()).await.expect("connect")
    }

    /// Polls every node's status until all agree on one leader; returns it.
    async fn wait_for_leader(&self, not: Option<u64>) -> u64 {
        let start = Instant::now();
        let mut clients = BTreeMap::new();
        for id in self.addrs.keys() {
            clients.insert(*id, self.client(*id).await);
        }
        loop {
            assert!(start.elapsed() < DEADLINE, "no leader within {DEADLINE:?}");
            let mut leaders = Vec::new();
            let mut leading = None;
            for (id, c) in &clients {
                let st = c.status(context::current()).await.expect("status");
                leaders.push(st.leader);
                if st.role == "leader" {
                    leading = Some(*id);
                }
            }
            if let Some(l) = leading
                && Some(l) != not
                && leaders.iter().all(|x| *x == Some(l))
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> (Vec<tempfile::TempDir>, BTreeMap<u64, SocketAddr>) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
        (self.dirs, self.addrs)
    }
}

fn put(client_id: u64, seq: u64, key: &str, value: &str) -> Command {
    Command {
        client_id,
        seq,
        op: WriteOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) },
    }
}

async fn get(client: &RaftKvClient, key: &str, consistency: ReadConsistency) -> Option<Bytes> {
    client.get(context::current(), Bytes::from(key.to_string()), consistency).await.expect("rpc").expect("get").value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_write_read_snapshot_transfer_restart() {
    let dirs = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let cluster = Cluster::start(dirs, None).await;
    let leader = cluster.wait_for_leader(None).await;
    let lc = cluster.client(leader).await;

    // A write and a linearizable read on the leader.
    let reply = lc.write(context::current(), put(7, 1, "hello", "world")).await.expect("rpc").expect("write");
    assert_eq!(reply.leader, leader);
    assert_eq!(reply.result, WriteResult::Put { existed: false });
    assert!(!reply.duplicate);
    assert_eq!(get(&lc, "hello", ReadConsistency::Linearizable).await.as_deref(), Some(&b"world"[..]));

    // A retry of the same (client, seq) is answered from the session, not re-applied.
    let retry = lc.write(context::current(), put(7, 1, "hello", "world")).await.expect("rpc").expect("write");
    assert!(retry.duplicate);
    assert_eq!(retry.index, reply.index);

    // A follower serves writes and linearizable reads by forwarding them to the
    // leader, and says so (a client that can reach the leader may go there next).
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("a follower");
    let fc = cluster.client(follower).await;
    let leader_addr = cluster.addrs[&leader].to_string();
    let via = Some(Forwarded { via: follower, leader, leader_addr: leader_addr.clone() });
    let r = fc.write(context::current(), put(7, 2, "k", "v")).await.expect("rpc").expect("forwarded write");
    assert_eq!((r.leader, &r.forwarded, r.duplicate), (leader, &via, false));
    let again = fc.write(context::current(), put(7, 2, "k", "v")).await.expect("rpc").expect("forwarded retry");
    assert!(again.duplicate && again.index == r.index, "a retry through the follower applies once: {again:?}");
    let got = fc
        .get(context::current(), Bytes::from_static(b"hello"), ReadConsistency::Linearizable)
        .await
        .expect("rpc")
        .expect("forwarded read");
    assert_eq!((got.value.as_deref(), got.node, &got.forwarded), (Some(&b"world"[..]), leader, &via));
    // A stale read is the follower's own.
    let stale = fc.get(context::current(), Bytes::from_static(b"hello"), ReadConsistency::Stale).await.expect("rpc");
    assert_eq!(stale.expect("stale read").forwarded, None);
    // Invalid input is refused with the limit named.
    let err = lc.write(context::current(), put(7, 3, "", "v")).await.expect("rpc").unwrap_err();
    assert!(matches!(&err, RequestError::Invalid(m) if m.contains("key is empty")), "{err:?}");

    // Enough writes to take snapshots (every 8 entries).
    for seq in 3..=25u64 {
        let r = lc.write(context::current(), put(7, seq, &format!("key-{seq:02}"), "v")).await.expect("rpc");
        r.expect("write");
    }
    let page = lc
        .scan(context::current(), Bytes::from_static(b"key-"), 100, ReadConsistency::Linearizable)
        .await
        .expect("rpc")
        .expect("scan");
    assert_eq!(page.items.len(), 23);
    let st = lc.status(context::current()).await.expect("status");
    assert!(st.snapshot_index >= 8, "{st:?}");
    assert_eq!(st.peers.len(), 3);

    // Followers catch up (stale reads are served locally).
    let start = Instant::now();
    while get(&fc, "key-25", ReadConsistency::Stale).await.is_none() {
        assert!(start.elapsed() < DEADLINE, "follower did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Leadership transfer to the most caught-up follower.
    let target = lc.transfer_leader(context::current(), None).await.expect("rpc").expect("transfer");
    assert_ne!(target, leader);
    let new_leader = cluster.wait_for_leader(Some(leader)).await;
    assert_eq!(new_leader, target);
    let nc = cluster.client(new_leader).await;
    assert_eq!(get(&nc, "hello", ReadConsistency::Linearizable).await.as_deref(), Some(&b"world"[..]));
    let r = nc.write(context::current(), put(7, 26, "after", "transfer")).await.expect("rpc").expect("write");
    assert_eq!(r.leader, new_leader);

    // Restart everything on the same directories and ports: state is recovered.
    let (dirs, addrs) = cluster.stop().await;
    let cluster = Cluster::start(dirs, Some(addrs)).await;
    let leader = cluster.wait_for_leader(None).await;
    let lc = cluster.client(leader).await;
    assert_eq!(get(&lc, "hello", ReadConsistency::Linearizable).await.as_deref(), Some(&b"world"[..]));
    assert_eq!(get(&lc, "after", ReadConsistency::Linearizable).await.as_deref(), Some(&b"transfer"[..]));
    assert_eq!(get(&lc, "key-13", ReadConsistency::Linearizable).await.as_deref(), Some(&b"v"[..]));
    // The session survived too: seq 26 is a duplicate now.
    let dup = lc.write(context::current(), put(7, 26, "after", "transfer")).await.expect("rpc").expect("write");
    assert!(dup.duplicate);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster_serves_and_shuts_down() {
    let cluster = Cluster::start(vec![tempfile::tempdir().expect("tempdir")], None).await;
    let leader = cluster.wait_for_leader(None).await;
    assert_eq!(leader, 1);
    let c = cluster.client(1).await;
    c.write(context::current(), put(1, 1, "a", "b")).await.expect("rpc").expect("write");
    assert_eq!(get(&c, "a", ReadConsistency::Linearizable).await.as_deref(), Some(&b"b"[..]));
    assert_eq!(get(&c, "a", ReadConsistency::Stale).await.as_deref(), Some(&b"b"[..]));
    let err = c.transfer_leader(context::current(), None).await.expect("rpc").unwrap_err();
    assert!(matches!(err, RequestError::Unavailable(_)), "{err:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_was_down_catches_up() {
    let dirs = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut cluster = Cluster::start(dirs, None).await;
    let leader = cluster.wait_for_leader(None).await;
    let down = *cluster.addrs.keys().find(|id| **id != leader).expect("a follower");
    cluster.stop_node(down).await;
    let lc = cluster.client(leader).await;
    // Many pipelined writes while the follower is down, so the leader's appends to it are
    // dropped by its peer link.
    let writes = (1..=300u64).map(|seq| {
        let lc = lc.clone();
        async move { lc.write(context::current(), put(seq, 1, &format!("k{seq}"), "v")).await.expect("rpc") }
    });
    for r in futures::future::join_all(writes).await {
        r.expect("write");
    }
    // And one at a time, so that more appends than the leader's pipeline window are lost.
    for seq in 1..=150u64 {
        lc.write(context::current(), put(1000, seq, "seq", "v")).await.expect("rpc").expect("write");
    }
    let commit = lc.status(context::current()).await.expect("status").commit_index;
    cluster.restart_node(down).await;
    let dc = cluster.client(down).await;
    let start = Instant::now();
    loop {
        let st = dc.status(context::current()).await.expect("status");
        if st.applied_index >= commit {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the restarted follower is stuck at {st:?}; leader commit {commit}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&dc, "k300", ReadConsistency::Stale).await.as_deref(), Some(&b"v"[..]));
    cluster.stop().await;
}

fn get_op(key: &str, consistency: ReadConsistency) -> BatchOp {
    BatchOp::Get { key: Bytes::from(key.to_string()), consistency }
}

async fn batch(client: &RaftKvClient, ops: Vec<BatchOp>) -> Vec<Result<BatchOpReply, RequestError>> {
    client.batch(context::current(), ops).await.expect("rpc").expect("batch accepted")
}

fn value_of(answer: &Result<BatchOpReply, RequestError>) -> Option<Bytes> {
    match answer {
        Ok(BatchOpReply::Get(reply)) => reply.value.clone(),
        other => panic!("expected a get's answer, got {other:?}"),
    }
}

fn write_of(answer: &Result<BatchOpReply, RequestError>) -> &WriteReply {
    match answer {
        Ok(BatchOpReply::Write(reply)) => reply,
        other => panic!("expected a write's answer, got {other:?}"),
    }
}

/// Each operation of a batch is served on its own: its own log entry and answer, in
/// the order sent, an invalid one refused without failing its neighbours; on a
/// follower, what needs the leader is forwarded; an oversized batch is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_serves_each_operation_on_its_own() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let cluster = Cluster::start(dirs, None).await;
    let leader = cluster.wait_for_leader(None).await;
    let c = cluster.client(leader).await;
    let empty_key = Command { client_id: 9, seq: 1, op: WriteOp::Put { key: Bytes::new(), value: Bytes::new() } };
    let answers = batch(
        &c,
        vec![
            BatchOp::Write(put(7, 1, "a", "1")),
            BatchOp::Write(empty_key),
            BatchOp::Write(put(8, 1, "b", "2")),
            get_op("", ReadConsistency::Linearizable),
        ],
    )
    .await;
    assert_eq!(answers.len(), 4);
    let (a, b) = (write_of(&answers[0]), write_of(&answers[2]));
    assert!(a.index != b.index && !a.duplicate && !b.duplicate, "two entries: {a:?} {b:?}");
    assert!(matches!(answers[1], Err(RequestError::Invalid(_))), "{:?}", answers[1]);
    assert!(matches!(answers[3], Err(RequestError::Invalid(_))), "{:?}", answers[3]);

    // Reads after the writes were answered see them, each its own key; a retried
    // write is recognised as a duplicate.
    let answers = batch(
        &c,
        vec![
            get_op("b", ReadConsistency::Linearizable),
            BatchOp::Write(put(7, 1, "a", "1")),
            get_op("a", ReadConsistency::Linearizable),
            get_op("none", ReadConsistency::Linearizable),
            get_op("a", ReadConsistency::Stale),
        ],
    )
    .await;
    assert_eq!(value_of(&answers[0]).as_deref(), Some(&b"2"[..]));
    assert!(write_of(&answers[1]).duplicate, "{:?}", answers[1]);
    assert_eq!(value_of(&answers[2]).as_deref(), Some(&b"1"[..]));
    assert_eq!(value_of(&answers[3]), None);
    assert_eq!(value_of(&answers[4]).as_deref(), Some(&b"1"[..]));

    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("a follower");
    let f = cluster.client(follower).await;
    let answers =
        batch(&f, vec![BatchOp::Write(put(7, 2, "c", "3")), get_op("b", ReadConsistency::Linearizable)]).await;
    assert_eq!(write_of(&answers[0]).forwarded.as_ref().map(|f| f.via), Some(follower));
    assert_eq!(value_of(&answers[1]).as_deref(), Some(&b"2"[..]));

    let too_many = vec![get_op("a", ReadConsistency::Stale); MAX_BATCH_OPS + 1];
    match c.batch(context::current(), too_many).await.expect("rpc") {
        Err(RequestError::Invalid(m)) => assert!(m.contains(&MAX_BATCH_OPS.to_string()), "{m}"),
        other => panic!("an oversized batch was not refused: {other:?}"),
    }
    cluster.stop().await;
}

/// Callers that share a connection share batches, and each gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_callers_share_frames_and_each_gets_its_own_answer() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let cluster = Cluster::start(dirs, None).await;
    let leader = cluster.wait_for_leader(None).await;
    let conn = BatchingConnection::new(cluster.client(leader).await, 1);
    let alone = conn.call(get_op("x", ReadConsistency::Linearizable), DEADLINE).await.expect("a lone get");
    assert!(matches!(alone, BatchOpReply::Get(_)));
    assert_eq!(conn.stats(), BatchStats { batches: 1, ops: 1 }, "a lone call leaves at once, alone");

    const CALLERS: u64 = 64;
    let each = |op: fn(u64) -> BatchOp| {
        let tasks: Vec<_> = (0..CALLERS)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.call(op(i), DEADLINE).await })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    for answer in each(|i| BatchOp::Write(put(100 + i, 1, &format!("k{i}"), &format!("v{i}")))).await {
        assert!(matches!(answer.expect("task"), Ok(BatchOpReply::Write(_))));
    }
    let reads = each(|i| get_op(&format!("k{i}"), ReadConsistency::Linearizable)).await;
    for (i, answer) in reads.into_iter().enumerate() {
        let value = value_of(&answer.expect("task").map_err(|e| RequestError::Internal(e.to_string())));
        assert_eq!(value, Some(Bytes::from(format!("v{i}"))), "caller {i} got another's answer");
    }
    let stats = conn.stats();
    assert_eq!(stats.ops, 1 + 2 * CALLERS);
    assert!(stats.batches < stats.ops, "no two operations shared a batch: {stats:?}");
    cluster.stop().await;
}
