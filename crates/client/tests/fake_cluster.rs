//! The client against in-process fake servers: leader finding, redirects, same-seq
//! retries of a write whose first attempt timed out, scans paged past a page's size,
//! and digests compared at one applied index.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use raftkv_client::{Client, ClientError, ClientOptions, ScanPages};
use raftkv_kv::{Command, KvStateMachine, WriteOp, WriteResult};
use raftkv_raft::{Message, NodeId};
use raftkv_rpc::tarpc::context::Context;
use raftkv_rpc::tarpc::server::{BaseChannel, Channel};
use raftkv_rpc::{
    ForwardReply, ForwardRequest, Forwarded, GetReply, HashKvReply, MemberChange, MemberChangeReply, MemberList,
    MemberStatus, NodeStatus, PeerError, RaftKv, ReadConsistency, RequestError as RpcError, ScanReply, ScanStart,
    ServerInfo, TraceLink, WriteReply,
};

#[derive(Default)]
struct Shared {
    /// Commands received by the leader, in order.
    writes: Vec<Command>,
    /// How many more writes the leader answers with `Timeout` (after recording them).
    fail_writes: usize,
    /// What scans read (none, unless a test puts pairs in).
    kv: Option<KvStateMachine>,
    /// Every scan page asked for: where it started.
    scans: Vec<ScanStart>,
}

/// The most pairs a fake scan page holds, whatever the limit: a server may stop a page
/// early (at its byte bound), so small pages exercise the paging.
const FAKE_PAGE: usize = 7;

/// One fake node's applied state, for `status` and `hash_kv`.
#[derive(Default)]
struct NodeState {
    applied: u64,
    digest: u64,
    /// How many more `hash_kv` requests find the node already past the index asked.
    pass: u32,
    /// The indexes `hash_kv` was asked for.
    asked: Vec<u64>,
}

#[derive(Clone)]
struct Fake {
    id: NodeId,
    leader_addr: Option<String>,
    /// Serves writes as a follower that forwarded them to a leader at this address
    /// (which may not be reachable from the client) would: the reply says so.
    forwards_to: Option<String>,
    shared: Arc<Mutex<Shared>>,
    node: Arc<Mutex<NodeState>>,
}

impl Fake {
    fn new(id: NodeId, leader_addr: Option<String>, shared: &Arc<Mutex<Shared>>) -> Fake {
        Fake { id, leader_addr, forwards_to: None, shared: shared.clone(), node: Arc::default() }
    }

    fn scan_from(&self, prefix: Bytes, start: ScanStart, limit: u32) -> Result<ScanReply, RpcError> {
        let mut s = self.shared.lock().unwrap();
        s.scans.push(start.clone());
        let kv = s.kv.as_ref().ok_or_else(|| RpcError::Invalid("no scans here".into()))?;
        let mut page =
            kv.scan_range(&prefix, start.bound(), limit as usize).map_err(|e| RpcError::Invalid(e.to_string()))?;
        if page.items.len() > FAKE_PAGE {
            page.items.truncate(FAKE_PAGE);
            page.more = true;
        }
        Ok(ScanReply { items: page.items, more: page.more, index: 1, node: self.id, forwarded: None })
    }
}

impl RaftKv for Fake {
    async fn raft(self, _: Context, _: u64, _: Vec<Message>, _: Vec<TraceLink>) -> Result<Vec<Message>, PeerError> {
        Ok(Vec::new())
    }

    async fn write(self, _: Context, command: Command) -> Result<WriteReply, RpcError> {
        if let Some(addr) = self.leader_addr {
            return Err(RpcError::NotLeader { leader: Some(1), leader_addr: Some(addr) });
        }
        let mut s = self.shared.lock().unwrap();
        let duplicate = s.writes.iter().any(|c| c.client_id == command.client_id && c.seq == command.seq);
        s.writes.push(command);
        if s.fail_writes > 0 {
            s.fail_writes -= 1;
            return Err(RpcError::Timeout);
        }
        let index = s.writes.len() as u64;
        let result = WriteResult::Put { existed: false };
        let forwarded = self.forwards_to.map(|leader_addr| Forwarded { via: self.id, leader: 1, leader_addr });
        Ok(WriteReply { index, term: 1, leader: self.id, result, duplicate, forwarded })
    }

    async fn get(self, _: Context, key: Bytes, _: ReadConsistency) -> Result<GetReply, RpcError> {
        if self.leader_addr.is_some() {
            return Err(RpcError::NotLeader { leader: None, leader_addr: None });
        }
        Ok(GetReply { value: Some(key), index: 1, node: self.id, leader: Some(self.id), forwarded: None })
    }

    async fn scan(self, _: Context, prefix: Bytes, limit: u32, _: ReadConsistency) -> Result<ScanReply, RpcError> {
        self.scan_from(prefix, ScanStart::First, limit)
    }

    async fn scan_page(
        self,
        _: Context,
        prefix: Bytes,
        start: ScanStart,
        limit: u32,
        _: ReadConsistency,
    ) -> Result<ScanReply, RpcError> {
        self.scan_from(prefix, start, limit)
    }

    async fn hash_kv(self, _: Context, index: u64) -> Result<HashKvReply, RpcError> {
        let mut n = self.node.lock().unwrap();
        n.asked.push(index);
        if n.pass > 0 {
            n.pass -= 1;
            n.applied = index + 1;
            return Ok(HashKvReply { node: self.id, applied_index: n.applied, digest: None });
        }
        n.applied = index;
        Ok(HashKvReply { node: self.id, applied_index: index, digest: Some(n.digest) })
    }

    async fn server_info(self, _: Context) -> ServerInfo {
        ServerInfo { id: self.id, version: "fake".into(), commit: "fake".into() }
    }

    async fn forward(self, _: Context, _: u64, _: ForwardRequest) -> Result<ForwardReply, RpcError> {
        Err(RpcError::Invalid("the fake does not forward".into()))
    }

    async fn cluster_status(self, _: Context) -> Vec<MemberStatus> {
        Vec::new()
    }

    async fn fault(
        self,
        _: Context,
        _: NodeId,
        _: raftkv_client::FaultRequest,
        _: bool,
    ) -> Result<raftkv_client::FaultReply, raftkv_rpc::RequestError> {
        Err(raftkv_rpc::RequestError::Invalid("the fake cluster injects no faults".into()))
    }

    async fn batch(
        self,
        _: Context,
        _: Vec<raftkv_rpc::BatchOp>,
    ) -> Result<Vec<Result<raftkv_rpc::BatchOpReply, raftkv_rpc::RequestError>>, raftkv_rpc::RequestError> {
        Err(raftkv_rpc::RequestError::Invalid("the fake cluster serves no batches".into()))
    }

    async fn status(self, _: Context) -> NodeStatus {
        let applied = self.node.lock().unwrap().applied;
        NodeStatus {
            id: self.id,
            role: if self.leader_addr.is_none() { "leader" } else { "follower" }.into(),
            term: 1,
            leader: Some(1),
            commit_index: applied,
            applied_index: applied,
            last_index: applied,
            cluster_id: 7,
            ..NodeStatus::default()
        }
    }

    async fn transfer_leader(self, _: Context, _: Option<NodeId>) -> Result<NodeId, RpcError> {
        Ok(self.id)
    }

    async fn members(self, _: Context) -> Result<MemberList, RpcError> {
        Err(RpcError::Invalid("no members here".into()))
    }

    async fn change_member(self, _: Context, _: MemberChange) -> Result<MemberChangeReply, RpcError> {
        Err(RpcError::Invalid("no membership changes here".into()))
    }
}

async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let listener = raftkv_rpc::listen_with(listener, None);
    tokio::spawn(async move {
        while let Ok(accepted) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move {
                let Ok((transport, _)) = accepted.establish().await else { return };
                BaseChannel::with_defaults(transport)
                    .execute(fake.serve())
                    .for_each(|f| async {
                        tokio::spawn(f);
                    })
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn follows_redirects_and_retries_with_the_same_seq() {
    let shared = Arc::new(Mutex::new(Shared { fail_writes: 1, ..Shared::default() }));
    let leader = serve(Fake::new(1, None, &shared)).await;
    let follower = serve(Fake::new(2, Some(leader.clone()), &shared)).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();

    // Only the follower and a dead address are given; the leader is learned from a hint.
    let client = Client::new(vec![dead.clone(), follower.clone()], ClientOptions::default()).unwrap();
    let out = client.put("k", "v1").await.unwrap();
    assert_eq!(out.leader, 1);
    assert_eq!(out.endpoint, leader);
    assert_eq!(client.leader_endpoint().as_deref(), Some(leader.as_str()));
    assert!(!client.endpoints().contains(&leader), "a learned address is not an endpoint");

    let out2 = client.put("k", "v2").await.unwrap();
    assert!(!out2.duplicate);
    let writes = shared.lock().unwrap().writes.clone();
    // The first write was sent twice (timed out once) with the same seq; the next has seq + 1.
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert_eq!(writes[0], writes[1]);
    assert_eq!(writes[2].seq, writes[0].seq + 1);
    assert!(writes.iter().all(|c| c.client_id == client.client_id()));
    assert!(matches!(&writes[2].op, WriteOp::Put { value, .. } if value == "v2"));

    assert_eq!(client.get("abc", false).await.unwrap(), Some(Bytes::from("abc")));
    assert!(matches!(client.scan("p", 10, false).await, Err(ClientError::Rejected(_))));

    // The given endpoints, not the learned leader.
    let statuses = client.status_all().await;
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().find(|(e, _)| *e == dead).unwrap().1.is_err());
    assert!(statuses.iter().find(|(e, _)| *e == follower).unwrap().1.is_ok());
}

#[tokio::test]
async fn a_write_that_never_commits_is_unknown_and_retried_with_the_same_seq() {
    let shared = Arc::new(Mutex::new(Shared { fail_writes: usize::MAX, ..Shared::default() }));
    let leader = serve(Fake::new(1, None, &shared)).await;
    let opts = ClientOptions::with_timeout(Duration::from_millis(300));
    let client = Client::new(vec![leader], opts).unwrap();
    let e = client.put("k", "v").await.unwrap_err();
    assert!(matches!(e, ClientError::Unknown(_)), "{e}");
    shared.lock().unwrap().fail_writes = 0;
    let out = client.retry_unknown().await.unwrap().unwrap();
    assert!(out.duplicate, "the retry reached a server that had already seen the seq");
    let writes = shared.lock().unwrap().writes.clone();
    assert!(writes.len() >= 2);
    assert!(writes.iter().all(|c| c.seq == writes[0].seq));
    assert_eq!(client.retry_unknown().await, Ok(None));
}

fn scan_cluster(keys: &[String]) -> Arc<Mutex<Shared>> {
    let mut kv = KvStateMachine::new();
    for (i, k) in keys.iter().enumerate() {
        let op = WriteOp::Put { key: Bytes::from(k.clone()), value: Bytes::from(format!("v{i}")) };
        let applied = kv.apply(i as u64 + 1, 1, &Command { client_id: 1, seq: i as u64 + 1, op }.encode());
        assert!(applied.result.is_ok());
    }
    Arc::new(Mutex::new(Shared { kv: Some(kv), ..Shared::default() }))
}

/// Reads every page; returns the keys and the scan (to ask where it stopped).
async fn read_all(client: &Client, mut pages: ScanPages) -> (Vec<String>, ScanPages) {
    let mut keys = Vec::new();
    while let Some(page) = pages.next(client).await.unwrap() {
        keys.extend(page.items.iter().map(|(k, _)| String::from_utf8(k.to_vec()).unwrap()));
    }
    (keys, pages)
}

#[tokio::test]
async fn scan_pages_go_past_a_page_in_order_and_stop_at_the_limit() {
    let want: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
    let shared = scan_cluster(&[want.clone(), vec!["o".into(), "q".into()]].concat());
    let client = Client::new(vec![serve(Fake::new(1, None, &shared)).await], ClientOptions::default()).unwrap();

    // Every key with the prefix, in order, over pages of 7: 4 pages.
    let (keys, pages) = read_all(&client, ScanPages::new("p/", ScanStart::First, None, false)).await;
    assert_eq!(keys, want);
    assert_eq!((pages.pages(), pages.stopped_by_limit()), (4, false));
    // The first page through `scan`, the next ones after the last key of the one before.
    let scans = std::mem::take(&mut shared.lock().unwrap().scans);
    assert_eq!(scans.len(), 4);
    assert_eq!(scans[0], ScanStart::First);
    assert_eq!(scans[1], ScanStart::After(Bytes::from("p/06")));
    assert_eq!(scans[3], ScanStart::After(Bytes::from("p/20")));

    // A limit across pages: the first key left out is where to continue.
    let (keys, pages) = read_all(&client, ScanPages::new("p/", ScanStart::First, Some(10), false)).await;
    assert_eq!(keys, want[..10]);
    assert!(pages.stopped_by_limit());
    assert_eq!(pages.next_key(), Some(&Bytes::from("p/10")));
    // From that key (inclusive), with a limit that takes every key left: nothing is cut.
    let from = ScanPages::new("p/", ScanStart::AtOrAfter(Bytes::from("p/10")), Some(15), false);
    let (keys, pages) = read_all(&client, from).await;
    assert_eq!(keys, want[10..]);
    assert!(!pages.stopped_by_limit() && pages.next_key().is_none());
    // A prefix nothing has: one empty page.
    let (keys, pages) = read_all(&client, ScanPages::new("x/", ScanStart::First, None, false)).await;
    assert_eq!((keys.len(), pages.pages()), (0, 1));
}

/// Fake nodes 1..=n with these digests; node 1 leads, node i has applied 40 + i - 1.
async fn hash_cluster(digests: &[u64]) -> (Client, Vec<Fake>, Vec<String>) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (mut fakes, mut endpoints) = (Vec::new(), Vec::new());
    for (i, d) in digests.iter().enumerate() {
        let fake = Fake::new(i as u64 + 1, endpoints.first().cloned(), &shared);
        *fake.node.lock().unwrap() = NodeState { applied: 40 + i as u64, digest: *d, ..NodeState::default() };
        endpoints.push(serve(fake.clone()).await);
        fakes.push(fake);
    }
    let client = Client::new(endpoints.clone(), ClientOptions::with_timeout(Duration::from_secs(2))).unwrap();
    (client, fakes, endpoints)
}

#[tokio::test]
async fn digests_are_compared_at_the_leaders_last_index() {
    let (client, fakes, _) = hash_cluster(&[0xabc, 0xabc, 0xabc]).await;
    let round = client.hash_kv_all().await;
    // Node 1 leads with last index 40: every node is asked for 40.
    assert_eq!((round.index, round.rounds), (40, 1));
    assert_eq!(round.agreed(), Ok(0xabc));
    assert!(fakes.iter().all(|f| f.node.lock().unwrap().asked == [40]));

    // A node already past the index: another round, at the leader's new last index.
    fakes[2].node.lock().unwrap().pass = 1;
    fakes[0].node.lock().unwrap().applied = 45;
    let round = client.hash_kv_all().await;
    assert_eq!((round.index, round.rounds), (45, 2));
    assert_eq!(round.agreed(), Ok(0xabc));
    assert_eq!(fakes[2].node.lock().unwrap().asked, [40, 45, 45]);

    // One that is always past it: the verdict says so after the last round.
    fakes[1].node.lock().unwrap().pass = u32::MAX;
    let round = client.hash_kv_all().await;
    assert_eq!(round.rounds, raftkv_client::HASH_KV_ROUNDS);
    assert!(round.agreed().is_err_and(|e| e.contains("had already applied index")), "{:?}", round.agreed());
}

#[tokio::test]
async fn differing_digests_and_unreachable_nodes_are_named() {
    let (client, _, endpoints) = hash_cluster(&[0xabc, 0xabc, 0xdef]).await;
    let err = client.hash_kv_all().await.agreed().unwrap_err();
    assert!(err.contains("differ") && err.contains(&endpoints[2]) && err.contains("0000000000000def"), "{err}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let client = Client::new(vec![endpoints[0].clone(), dead.clone()], ClientOptions::default()).unwrap();
    let err = client.hash_kv_all().await.agreed().unwrap_err();
    assert!(err.contains(&dead) && err.contains("unreachable"), "{err}");
}

/// A follower that forwards: the client goes to the leader's address its replies
/// name when it can connect to it, and stays on the follower when it cannot.
#[tokio::test]
async fn goes_to_a_forwarding_followers_leader_only_when_it_can_reach_it() {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let leader = serve(Fake::new(1, None, &shared)).await;
    let reachable = Fake { forwards_to: Some(leader.clone()), ..Fake::new(2, None, &shared) };
    let follower = serve(reachable).await;
    let client = Client::new(vec![follower.clone()], ClientOptions::default()).unwrap();
    assert_eq!(client.put("k", "v1").await.unwrap().endpoint, follower);
    assert_eq!(client.put("k", "v2").await.unwrap().endpoint, leader, "straight to the leader once known");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let unreachable = Fake { forwards_to: Some(dead.clone()), ..Fake::new(3, None, &shared) };
    let follower = serve(unreachable).await;
    let client = Client::new(vec![follower.clone()], ClientOptions::default()).unwrap();
    for i in 0..3 {
        let out = client.put("k", format!("w{i}")).await.unwrap();
        assert_eq!(out.endpoint, follower, "write {i}");
        // After the first write the client tried the leader's address once, failed to
        // connect, and does not try it again.
        if i > 0 {
            assert_eq!(client.leader_endpoint().as_deref(), Some(follower.as_str()), "write {i}: on the follower");
        }
    }
}
