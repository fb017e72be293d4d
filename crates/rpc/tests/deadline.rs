//! A request whose deadline lies centuries ahead, sent over a real socket, must not
//! panic the server: it is clamped to `MAX_REQUEST_DEADLINE` and served, and the
//! server keeps serving other connections.

use std::time::Duration;

use futures::StreamExt;
use raftkv_raft::NodeId;
use raftkv_rpc::tarpc::context::{self, Context};
use raftkv_rpc::tarpc::server::{BaseChannel, Channel};
use raftkv_rpc::{
    ForwardReply, ForwardRequest, GetReply, HashKvReply, MemberChange, MemberChangeReply, MemberList, MemberStatus,
    NodeStatus, PeerError, RaftKv, RaftKvRequest, ReadConsistency, RequestError, ScanReply, ScanStart, ServerInfo,
    TraceLink, WriteReply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers status with id 7; everything else is unavailable.
#[derive(Clone)]
struct Stub;

fn no<T>() -> Result<T, RequestError> {
    Err(RequestError::Unavailable("stub".into()))
}

impl RaftKv for Stub {
    async fn raft(
        self,
        _: Context,
        _: u64,
        _: Vec<raftkv_raft::Message>,
        _: Vec<TraceLink>,
    ) -> Result<Vec<raftkv_raft::Message>, PeerError> {
        Err(PeerError::Busy)
    }
    async fn write(self, _: Context, _: raftkv_kv::Command) -> Result<WriteReply, RequestError> {
        no()
    }
    async fn get(self, _: Context, _: bytes::Bytes, _: ReadConsistency) -> Result<GetReply, RequestError> {
        no()
    }
    async fn scan(self, _: Context, _: bytes::Bytes, _: u32, _: ReadConsistency) -> Result<ScanReply, RequestError> {
        no()
    }
    async fn status(self, _: Context) -> NodeStatus {
        NodeStatus {
            id: 7,
            role: "Leader".into(),
            term: 1,
            leader: Some(7),
            commit_index: 0,
            applied_index: 0,
            last_index: 0,
            snapshot_index: 0,
            peers: vec![],
            cluster_id: 1,
            recovering: false,
        }
    }
    async fn transfer_leader(self, _: Context, _: Option<NodeId>) -> Result<NodeId, RequestError> {
        no()
    }
    async fn members(self, _: Context) -> Result<MemberList, RequestError> {
        no()
    }
    async fn change_member(self, _: Context, _: MemberChange) -> Result<MemberChangeReply, RequestError> {
        no()
    }
    async fn scan_page(
        self,
        _: Context,
        _: bytes::Bytes,
        _: ScanStart,
        _: u32,
        _: ReadConsistency,
    ) -> Result<ScanReply, RequestError> {
        no()
    }
    async fn hash_kv(self, _: Context, _: u64) -> Result<HashKvReply, RequestError> {
        no()
    }
    async fn server_info(self, _: Context) -> ServerInfo {
        ServerInfo { id: 7, version: "stub".into(), commit: "stub".into() }
    }
    async fn forward(self, _: Context, _: u64, _: ForwardRequest) -> Result<ForwardReply, RequestError> {
        no()
    }
    async fn cluster_status(self, _: Context) -> Vec<MemberStatus> {
        Vec::new()
    }

    async fn fault(
        self,
        _: Context,
        _: raftkv_raft::NodeId,
        _: raftkv_rpc::FaultRequest,
        _: bool,
    ) -> Result<raftkv_rpc::FaultReply, RequestError> {
        Err(RequestError::Invalid("the stub injects no faults".into()))
    }

    async fn batch(
        self,
        _: Context,
        _: Vec<raftkv_rpc::BatchOp>,
    ) -> Result<Vec<Result<raftkv_rpc::BatchOpReply, RequestError>>, RequestError> {
        Err(RequestError::Invalid("the stub serves no batches".into()))
    }
}

async fn serve_stub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let listener = raftkv_rpc::listen_with(listener, None);
    // The server's own path: accept, establish (plaintext here), serve.
    tokio::spawn(async move {
        while let Ok(accepted) = listener.accept().await {
            tokio::spawn(async move {
                let Ok((transport, _)) = accepted.establish().await else { return };
                BaseChannel::with_defaults(transport)
                    .execute(Stub.serve())
                    .for_each(|r| async {
                        tokio::spawn(r);
                    })
                    .await;
            });
        }
    });
    addr
}

/// Sends `payload` as one length-prefixed frame and reads one frame back.
async fn round_trip(addr: &str, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let len = u32::try_from(payload.len()).expect("small frame");
    s.write_all(&len.to_be_bytes()).await.expect("write length");
    s.write_all(payload).await.expect("write payload");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.expect("the server answers the request");
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).await.expect("read the answer");
    reply
}

#[tokio::test]
async fn far_deadlines_are_clamped_and_served() {
    let addr = serve_stub().await;
    for deadline in [Duration::MAX, Duration::from_secs(u64::MAX / 2), Duration::from_secs(100 * 365 * 86_400)] {
        let frame = raftkv_rpc::encode_request(deadline, 1, RaftKvRequest::Status {}).expect("encode");
        let reply = tokio::time::timeout(Duration::from_secs(10), round_trip(&addr, &frame))
            .await
            .unwrap_or_else(|_| panic!("no answer to a request with deadline {deadline:?}"));
        assert!(!reply.is_empty(), "empty answer for deadline {deadline:?}");
    }
    let decoded = raftkv_rpc::decode_client_message(
        &raftkv_rpc::encode_request(Duration::MAX, 9, RaftKvRequest::Status {}).expect("encode"),
    )
    .expect("decode");
    match decoded {
        raftkv_rpc::tarpc::ClientMessage::Request(r) => {
            assert_eq!(r.id, 9);
            let left = r.context.deadline.saturating_duration_since(std::time::Instant::now());
            assert!(left <= raftkv_rpc::MAX_REQUEST_DEADLINE, "deadline not clamped: {left:?} ahead");
            assert!(left > raftkv_rpc::MAX_REQUEST_DEADLINE - Duration::from_secs(60), "{left:?}");
        }
        other => panic!("decoded {other:?}"),
    }
    // The server still serves an ordinary client.
    let client = raftkv_rpc::connect(&addr).await.expect("connect");
    let mut ctx = context::current();
    ctx.deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = client.status(ctx).await.expect("status after the far deadlines");
    assert_eq!(status.id, 7);
}

#[tokio::test]
async fn garbage_frames_are_errors_not_panics() {
    for frame in [&[][..], &[0xff; 64][..], &[0, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..]] {
        assert!(raftkv_rpc::decode_client_message(frame).is_err(), "{frame:?} decoded");
    }
}
