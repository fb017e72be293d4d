//! In-process membership tests: nodes joining a running cluster (added by the operator
//! first, or by themselves) and getting promoted, removal and its tombstone, ids never
//! reused, and refusal of another cluster's traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raftkv_client::local::poll_until;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Message, MessageBody};
use raftkv_rpc::tarpc::context;
use raftkv_rpc::{
    MemberChange, MemberChangeReply, MemberList, MemberRole, PeerError, RaftKvClient, ReadConsistency, RequestError,
};
use raftkv_server::{ClusterConfig, NodeConfig};
use raftkv_storage::FsyncPolicy;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: the test machine is small and shared.
const DEADLINE: Duration = Duration::from_secs(60);

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let Running { stop, task } = self;
        let _ = stop.send(());
        Running { stop: oneshot::channel().0, task }.exited().await
    }

    /// Waits for the node to end by itself.
    async fn exited(self) -> anyhow::Result<()> {
        tokio::time::timeout(DEADLINE, self.task).await.expect("node stops in time").expect("no panic")
    }
}

fn config(id: u64, addr: SocketAddr, dir: &Path, peers: &BTreeMap<u64, SocketAddr>, join: &[SocketAddr]) -> NodeConfig {
    NodeConfig {
        id,
        listen: addr.to_string(),
        peers: peers.iter().map(|(id, a)| (*id, a.to_string())).collect(),
        data_dir: dir.to_path_buf(),
        tick: Duration::from_millis(20),
        election_ticks: 10,
        heartbeat_ticks: 1,
        snapshot_entries: 16,
        fsync: FsyncPolicy::Always,
        cluster: ClusterConfig {
            join: join.iter().map(SocketAddr::to_string).collect(),
            ..ClusterConfig::found(addr.to_string())
        },
        storage: None,
        tls: None,
        enable_faults: false,
    }
}

fn start(cfg: NodeConfig, listener: TcpListener) -> Running {
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(raftkv_server::serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running { stop, task }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

async fn client(addr: SocketAddr) -> RaftKvClient {
    raftkv_rpc::connect(&addr.to_string()).await.expect("connect")
}

/// A founded cluster of `n` nodes, ids 1..=n.
struct Cluster {
    addrs: BTreeMap<u64, SocketAddr>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    nodes: BTreeMap<u64, Running>,
}

impl Cluster {
    async fn found(n: u64) -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, bind().await);
        }
        let addrs: BTreeMap<u64, SocketAddr> = listeners.iter().map(|(id, (_, a))| (*id, *a)).collect();
        let mut cluster = Cluster { addrs, dirs: BTreeMap::new(), nodes: BTreeMap::new() };
        for (id, (listener, addr)) in listeners {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = config(id, addr, dir.path(), &cluster.addrs, &[]);
            cluster.nodes.insert(id, start(cfg, listener));
            cluster.dirs.insert(id, dir);
        }
        cluster
    }

    /// Starts node `id` joining through `seed`.
    async fn join(&mut self, id: u64, listener: TcpListener, addr: SocketAddr, seed: u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(id, addr, dir.path(), &BTreeMap::new(), &[self.addrs[&seed]]);
        self.nodes.insert(id, start(cfg, listener));
        self.dirs.insert(id, dir);
        self.addrs.insert(id, addr);
    }

    /// The leader's member list, once some node says it leads.
    async fn leader_members(&self) -> (u64, MemberList) {
        let addrs = self.addrs.clone();
        poll_until(DEADLINE, "a leader", || {
            let addrs = addrs.clone();
            async move {
                for (id, addr) in addrs {
                    let Ok(c) = raftkv_rpc::connect(&addr.to_string()).await else { continue };
                    if let Ok(Ok(list)) = c.members(context::current()).await
                        && list.leader == Some(id)
                    {
                        return Ok((id, list));
                    }
                }
                Err("no node says it leads".into())
            }
        })
        .await
        .expect("leader")
    }

    /// Asks the leader, retrying while it is busy with another change.
    async fn change(&self, change: MemberChange) -> Result<MemberChangeReply, RequestError> {
        let mut last = None;
        for _ in 0..100 {
            let (leader, _) = self.leader_members().await;
            let c = client(self.addrs[&leader]).await;
            match c.change_member(context::current(), change.clone()).await.expect("rpc") {
                Err(RequestError::Unavailable(e)) => last = Some(RequestError::Unavailable(e)),
                Err(RequestError::NotLeader { .. }) => {}
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last.unwrap_or(RequestError::Timeout))
    }

    async fn stop(mut self) {
        for (id, node) in std::mem::take(&mut self.nodes) {
            node.stop().await.unwrap_or_else(|e| panic!("node {id} failed: {e:#}"));
        }
    }
}

fn role_of(list: &MemberList, id: u64) -> Option<MemberRole> {
    list.members.iter().find(|m| m.id == id).map(|m| m.role)
}

async fn put(c: &RaftKvClient, seq: u64, key: &str) {
    let op = WriteOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from_static(b"v") };
    c.write(context::current(), Command { client_id: 99, seq, op }).await.expect("rpc").expect("write");
}

async fn wait_for_role(cluster: &Cluster, id: u64, role: MemberRole) -> MemberList {
    poll_until(DEADLINE, &format!("node {id} to be a {role:?}"), || async {
        let (_, list) = cluster.leader_members().await;
        if role_of(&list, id) == Some(role) && list.committed { Ok(list) } else { Err(format!("{list:?}")) }
    })
    .await
    .expect("role")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_are_added_as_learners_and_promoted() {
    let mut cluster = Cluster::found(3).await;
    let (leader, list) = cluster.leader_members().await;
    assert_eq!(list.members.iter().filter(|m| m.role == MemberRole::Voter).count(), 3);
    assert_ne!(list.cluster_id, 0);
    assert_eq!(list.members.iter().find(|m| m.id == 2).map(|m| m.addr.clone()), Some(cluster.addrs[&2].to_string()));
    let lc = client(cluster.addrs[&leader]).await;
    for seq in 1..=40 {
        put(&lc, seq, &format!("k{seq}")).await;
    }

    // The operator adds a learner without auto-promotion; the node then starts with
    // --join (through a follower: it follows the leader hint) and stays a learner.
    let (l4, a4) = bind().await;
    let add = MemberChange::Add { id: Some(4), addr: a4.to_string(), auto_promote: false, allocate_if_taken: false };
    let reply = cluster.change(add).await.expect("add learner");
    assert_eq!(reply.id, 4);
    assert_eq!(role_of(&reply.members, 4), Some(MemberRole::Learner));
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("follower");
    cluster.join(4, l4, a4, follower).await;
    let c4 = client(a4).await;
    poll_until(DEADLINE, "the learner to catch up", || async {
        let r = c4.get(context::current(), Bytes::from_static(b"k40"), ReadConsistency::Stale).await;
        match r {
            Ok(Ok(g)) if g.value.is_some() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("caught up");
    let st = c4.status(context::current()).await.expect("status");
    assert_eq!(st.cluster_id, list.cluster_id);
    assert_eq!(role_of(&cluster.leader_members().await.1, 4), Some(MemberRole::Learner));

    // Its id cannot be taken again, nor its address by another id.
    let again =
        MemberChange::Add { id: Some(4), addr: "10.9.9.9:1".into(), auto_promote: true, allocate_if_taken: false };
    let err = cluster.change(again).await.unwrap_err();
    assert!(matches!(&err, RequestError::Invalid(m) if m.contains("node 4") && m.contains("never reused")), "{err:?}");

    // The operator promotes it.
    let reply = cluster.change(MemberChange::Promote { id: 4 }).await.expect("promote");
    assert_eq!(role_of(&reply.members, 4), Some(MemberRole::Voter));

    // A node that joins by itself is promoted once caught up.
    let (l5, a5) = bind().await;
    cluster.join(5, l5, a5, leader).await;
    let list = wait_for_role(&cluster, 5, MemberRole::Voter).await;
    assert_eq!(list.members.iter().filter(|m| m.role == MemberRole::Voter).count(), 5);
    let five = list.members.iter().find(|m| m.id == 5).expect("member 5");
    assert!(five.auto_promote);
    assert_eq!(five.addr, a5.to_string());

    // The new voters take part: writes still commit with two founders stopped.
    let (leader, _) = cluster.leader_members().await;
    let stopped: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in &stopped {
        cluster.nodes.remove(id).expect("running").stop().await.expect("clean stop");
        cluster.addrs.remove(id);
    }
    let lc = client(cluster.addrs[&leader]).await;
    tokio::time::timeout(DEADLINE, put(&lc, 41, "after")).await.expect("a write commits with 3 of 5 voters");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_nodes_stop_leave_a_tombstone_and_their_id_is_never_reused() {
    let mut cluster = Cluster::found(3).await;
    let (leader, _) = cluster.leader_members().await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("follower");

    // Removing a follower: it learns from its peers, writes a tombstone and stops (Ok).
    let reply = cluster.change(MemberChange::Remove { id: follower }).await.expect("remove");
    assert_eq!(reply.id, follower);
    assert_eq!(role_of(&reply.members, follower), None);
    assert_eq!(reply.members.removed, [follower]);
    let node = cluster.nodes.remove(&follower).expect("running");
    node.exited().await.expect("a removed node stops cleanly");
    let dir = cluster.dirs.remove(&follower).expect("dir");
    assert!(dir.path().join("removed").exists(), "tombstone written");
    cluster.addrs.remove(&follower);

    // It refuses to start again on that data dir.
    let (l, a) = bind().await;
    let peers = BTreeMap::from([(follower, a)]);
    let err = start(config(follower, a, dir.path(), &peers, &[]), l).exited().await.unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()) && err.contains(&format!("node {follower}")), "{err}");
    assert!(err.contains("Delete the data dir"), "{err}");

    // Its id is never reused.
    let add =
        MemberChange::Add { id: Some(follower), addr: a.to_string(), auto_promote: true, allocate_if_taken: false };
    let err = cluster.change(add.clone()).await.unwrap_err();
    assert!(matches!(&err, RequestError::Invalid(m) if m.contains("was removed")), "{err:?}");
    let allocate =
        MemberChange::Add { id: Some(follower), addr: a.to_string(), auto_promote: false, allocate_if_taken: true };
    assert_eq!(cluster.change(allocate).await.expect("allocated").id, 4);
    assert_eq!(cluster.change(MemberChange::Remove { id: 4 }).await.expect("remove the learner").id, 4);

    // Removing the leader: the answer arrives, leadership moves, the old leader stops.
    let reply = cluster.change(MemberChange::Remove { id: leader }).await.expect("remove leader");
    assert_eq!(reply.id, leader);
    assert_eq!(role_of(&reply.members, leader), None);
    cluster.nodes.remove(&leader).expect("running").exited().await.expect("the removed leader stops cleanly");
    assert!(cluster.dirs[&leader].path().join("removed").exists());
    cluster.addrs.remove(&leader);
    let (new_leader, list) = cluster.leader_members().await;
    assert_ne!(new_leader, leader);
    assert_eq!(list.members.len(), 1);
    let mut removed = list.removed.clone();
    removed.sort_unstable();
    let mut want = vec![follower, leader, 4];
    want.sort_unstable();
    assert_eq!(removed, want);
    put(&client(cluster.addrs[&new_leader]).await, 1, "still-serving").await;
    cluster.stop().await;
}

/// A `raft` RPC's answer carries the receiver's responses to the sender's messages:
/// no second RPC the other way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_answer_carries_the_receivers_responses() {
    let cluster = Cluster::found(3).await;
    let (leader, list) = cluster.leader_members().await;
    let mut others = cluster.addrs.keys().copied().filter(|&id| id != leader);
    let (to, from) = (others.next().expect("a follower"), others.next().expect("another follower"));
    let c = client(cluster.addrs[&to]).await;
    let term = c.status(context::current()).await.expect("status").term;
    // A pre-vote of a stale term: refused with the receiver's term, and changes nothing.
    let pre_vote = Message {
        from,
        to,
        term: 0,
        body: MessageBody::RequestVote { pre_vote: true, last_log_index: 0, last_log_term: 0, force: false },
        recovery: None,
        trace: None,
    };
    let answer = c.raft(context::current(), list.cluster_id, vec![pre_vote], Vec::new()).await.expect("rpc");
    let responses = answer.expect("accepted");
    assert_eq!(responses.len(), 1, "{responses:?}");
    let r = &responses[0];
    assert_eq!((r.from, r.to), (to, from));
    assert!(r.term >= term.max(1), "a refusal carries the receiver's term: {r:?}");
    assert_eq!(r.body, MessageBody::RequestVoteResponse { pre_vote: true, granted: false });
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_of_another_cluster_or_a_removed_node_is_refused() {
    let cluster = Cluster::found(1).await;
    let (_, list) = cluster.leader_members().await;
    let c = client(cluster.addrs[&1]).await;
    let st = c.status(context::current()).await.expect("status");
    assert_eq!(st.cluster_id, list.cluster_id);
    let msg = |from: u64| Message {
        from,
        to: 1,
        term: 0,
        body: MessageBody::HeartbeatResponse { read_round: 0, missing_from: None },
        recovery: None,
        trace: None,
    };
    let cid = list.cluster_id;
    for wrong in [0, cid.wrapping_add(1)] {
        let r = c.raft(context::current(), wrong, vec![msg(2)], Vec::new()).await.expect("rpc");
        assert_eq!(r, Err(PeerError::WrongCluster { expected: cid, got: wrong }));
    }
    assert_eq!(c.raft(context::current(), cid, vec![msg(2)], Vec::new()).await.expect("rpc"), Ok(Vec::new()));

    // A cluster founded by the same members with another token has another id.
    let dir = tempfile::tempdir().expect("tempdir");
    let (l, a) = bind().await;
    let mut cfg = config(1, a, dir.path(), &BTreeMap::from([(1, a)]), &[]);
    cfg.cluster.token = "other".into();
    let other = start(cfg, l);
    let oc = client(a).await;
    let other_id = poll_until(DEADLINE, "the other cluster", || async {
        match oc.members(context::current()).await {
            Ok(Ok(l)) => Ok(l.cluster_id),
            e => Err(format!("{e:?}")),
        }
    })
    .await
    .expect("members");
    assert_ne!(other_id, cid);
    other.stop().await.expect("clean stop");

    // Removed ids are told so.
    let grown = cluster;
    let (l2, a2) = bind().await;
    let add = MemberChange::Add { id: Some(2), addr: a2.to_string(), auto_promote: false, allocate_if_taken: false };
    grown.change(add).await.expect("add");
    grown.change(MemberChange::Remove { id: 2 }).await.expect("remove");
    drop(l2);
    let r = c.raft(context::current(), cid, vec![msg(2)], Vec::new()).await.expect("rpc");
    assert_eq!(r, Err(PeerError::Removed { id: 2 }));
    grown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_that_restarts_before_its_first_entry_asks_again() {
    let mut cluster = Cluster::found(3).await;
    let (leader, list) = cluster.leader_members().await;
    let lc = client(cluster.addrs[&leader]).await;
    put(&lc, 1, "before").await;

    // Node 4 was added and wrote its meta file, then crashed before any entry reached
    // it: its data dir holds the meta file and nothing else.
    let (l4, a4) = bind().await;
    let add = MemberChange::Add { id: Some(4), addr: a4.to_string(), auto_promote: true, allocate_if_taken: false };
    assert_eq!(cluster.change(add).await.expect("add learner").id, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = raftkv_storage::NodeMeta { cluster_id: list.cluster_id, node_id: 4 };
    meta.save(&raftkv_storage::RealFs, dir.path()).expect("meta");

    // Restarted with the same flags, it joins again under its id and catches up.
    let cfg = config(4, a4, dir.path(), &BTreeMap::new(), &[cluster.addrs[&leader]]);
    cluster.nodes.insert(4, start(cfg, l4));
    cluster.dirs.insert(4, dir);
    cluster.addrs.insert(4, a4);
    let c4 = client(a4).await;
    poll_until(DEADLINE, "node 4 to catch up", || async {
        match c4.get(context::current(), Bytes::from_static(b"before"), ReadConsistency::Stale).await {
            Ok(Ok(g)) if g.value.is_some() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("caught up");
    wait_for_role(&cluster, 4, MemberRole::Voter).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_the_new_leaders_addition_catches_up_from_it() {
    let mut cluster = Cluster::found(3).await;
    let founders = cluster.addrs.clone();
    let (leader, _) = cluster.leader_members().await;
    let down = *cluster.addrs.keys().find(|id| **id != leader).expect("a follower");
    let lc = client(cluster.addrs[&leader]).await;
    put(&lc, 1, "before").await;
    cluster.nodes.remove(&down).expect("running").stop().await.expect("clean stop");

    // While it is down, node 4 joins, is promoted, and takes over the leadership.
    let (l4, a4) = bind().await;
    cluster.join(4, l4, a4, leader).await;
    wait_for_role(&cluster, 4, MemberRole::Voter).await;
    poll_until(DEADLINE, "node 4 to lead", || async {
        let (now, _) = cluster.leader_members().await;
        if now == 4 {
            return Ok(());
        }
        let c = client(cluster.addrs[&now]).await;
        let _ = c.transfer_leader(context::current(), Some(4)).await;
        Err(format!("node {now} leads"))
    })
    .await
    .expect("leadership moves to node 4");
    let c4 = client(a4).await;
    for seq in 2..=30 {
        put(&c4, seq, &format!("under-4-{seq}")).await;
    }

    // The follower comes back knowing nothing of node 4: it must take its leader's
    // messages and catch up (it used to drop them for ever).
    let listener = TcpListener::bind(cluster.addrs[&down]).await.expect("rebind the follower's port");
    let cfg = config(down, cluster.addrs[&down], cluster.dirs[&down].path(), &founders, &[]);
    cluster.nodes.insert(down, start(cfg, listener));
    let target = c4.status(context::current()).await.expect("status").commit_index;
    let back = client(cluster.addrs[&down]).await;
    poll_until(DEADLINE, "the follower to catch up from node 4", || async {
        let st = back.status(context::current()).await.map_err(|e| e.to_string())?;
        if st.applied_index >= target && st.leader == Some(4) { Ok(()) } else { Err(format!("{st:?}")) }
    })
    .await
    .expect("caught up");
    let got = back.get(context::current(), Bytes::from_static(b"under-4-30"), ReadConsistency::Stale).await;
    assert!(matches!(got, Ok(Ok(ref g)) if g.value.is_some()), "{got:?}");
    cluster.stop().await;
}
