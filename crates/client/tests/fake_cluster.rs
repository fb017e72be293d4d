//! The client against in-process fake servers: leader finding, redirects, and
//! same-seq retries of a write whose first attempt timed out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use raftkv_client::{Client, ClientError, ClientOptions};
use raftkv_kv::{Command, WriteOp, WriteResult};
use raftkv_raft::{Message, NodeId};
use raftkv_rpc::tarpc::context::Context;
use raftkv_rpc::tarpc::server::{BaseChannel, Channel};
use raftkv_rpc::{
    ClientError as RpcError, GetReply, MemberChange, MemberChangeReply, MemberList, NodeStatus, PeerError, RaftKv,
    ReadConsistency, ScanReply, TraceLink, WriteReply,
};

#[derive(Default)]
struct Shared {
    /// Commands received by the leader, in order.
    writes: Vec<Command>,
    /// How many more writes the leader answers with `Timeout` (after recording them).
    fail_writes: usize,
}

#[derive(Clone)]
struct Fake {
    id: NodeId,
    leader_addr: Option<String>,
    shared: Arc<Mutex<Shared>>,
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
        Ok(WriteReply { index, term: 1, leader: self.id, result: WriteResult::Put { existed: false }, duplicate })
    }

    async fn get(self, _: Context, key: Bytes, _: ReadConsistency) -> Result<GetReply, RpcError> {
        if self.leader_addr.is_some() {
            return Err(RpcError::NotLeader { leader: None, leader_addr: None });
        }
        Ok(GetReply { value: Some(key), index: 1, node: self.id, leader: Some(self.id) })
    }

    async fn scan(self, _: Context, _: Bytes, _: u32, _: ReadConsistency) -> Result<ScanReply, RpcError> {
        Err(RpcError::Invalid("no scans here".into()))
    }

    async fn status(self, _: Context) -> NodeStatus {
        NodeStatus {
            id: self.id,
            role: if self.leader_addr.is_none() { "leader" } else { "follower" }.into(),
            term: 1,
            leader: Some(1),
            commit_index: 0,
            applied_index: 0,
            last_index: 0,
            snapshot_index: 0,
            peers: vec![],
            cluster_id: 7,
            recovering: false,
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
    let leader = serve(Fake { id: 1, leader_addr: None, shared: shared.clone() }).await;
    let follower = serve(Fake { id: 2, leader_addr: Some(leader.clone()), shared: shared.clone() }).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();

    // Only the follower and a dead address are given; the leader is learned from a hint.
    let client = Client::new(vec![dead.clone(), follower.clone()], ClientOptions::default()).unwrap();
    let out = client.put("k", "v1").await.unwrap();
    assert_eq!(out.leader, 1);
    assert_eq!(out.endpoint, leader);
    assert_eq!(client.leader_endpoint().as_deref(), Some(leader.as_str()));
    assert!(client.endpoints().contains(&leader));

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

    let statuses = client.status_all().await;
    assert_eq!(statuses.len(), 3);
    assert!(statuses.iter().find(|(e, _)| *e == dead).unwrap().1.is_err());
    assert!(statuses.iter().find(|(e, _)| *e == leader).unwrap().1.is_ok());
}

#[tokio::test]
async fn a_write_that_never_commits_is_unknown_and_retried_with_the_same_seq() {
    let shared = Arc::new(Mutex::new(Shared { fail_writes: usize::MAX, ..Shared::default() }));
    let leader = serve(Fake { id: 1, leader_addr: None, shared: shared.clone() }).await;
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
