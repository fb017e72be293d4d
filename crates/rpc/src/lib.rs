//! The one tarpc service a raftkv node serves, on one TCP port, to its peers and its
//! clients, and the wire types both sides share.
//!
//! Its job: define the protocol once. It must never hold logic: no retries, no leader
//! finding (that is the client's), no Raft (that is the server's).

use std::io;

use bytes::Bytes;
use raftkv_kv::{Command, WriteResult};
use raftkv_raft::{Message, NodeId};
use serde::{Deserialize, Serialize};
use tarpc::serde_transport::tcp;
use tarpc::tokio_serde::formats::Bincode;

pub use tarpc;

/// The largest frame either side accepts: a snapshot chunk or an AppendEntries batch
/// plus framing. A larger frame closes the connection instead of exhausting memory.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// ReadIndex on the leader: sees every write acknowledged before it began.
    Linearizable,
    /// The local state of whichever node answers; may be stale.
    Stale,
}

/// A committed write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    pub index: u64,
    pub term: u64,
    pub leader: NodeId,
    pub result: WriteResult,
    /// The command had already been applied; this is the cached original outcome.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    pub value: Option<Bytes>,
    /// The applied index the read was served at.
    pub index: u64,
    pub node: NodeId,
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReply {
    pub items: Vec<(Bytes, Bytes)>,
    pub more: bool,
    pub index: u64,
    pub node: NodeId,
}

/// One node's view of the cluster, for `raftkv status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// Peer id → address, as this node knows them.
    pub peers: Vec<(NodeId, String)>,
}

/// Why a client request did not succeed. `NotLeader` and `Unavailable` are safe to
/// retry elsewhere; after `Timeout` a write may or may not have been applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    #[error("not the leader (leader: {leader:?} at {leader_addr:?})")]
    NotLeader { leader: Option<NodeId>, leader_addr: Option<String> },
    #[error("timed out; the outcome is unknown")]
    Timeout,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("server error: {0}")]
    Internal(String),
}

/// Why peer traffic was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    #[error("message for cluster {got}, this node is in cluster {expected}")]
    WrongCluster { expected: u64, got: u64 },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("inbound queue full")]
    Busy,
}

/// A span another trace is linked to: the W3C ids of a sampled OpenTelemetry span.
///
/// tarpc's request context carries one trace context (the parent of the server's
/// span). When one `raft` batch carries the entries of several traced client
/// requests, the first is that parent and the others travel here, so the receiver
/// can link its spans to every request's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceLink {
    pub trace_id: u128,
    pub span_id: u64,
}

#[tarpc::service]
pub trait RaftKv {
    /// A batch of Raft messages from one peer. Accepted into a bounded queue; the Raft
    /// loop processes them later. `links`: the other traced requests whose entries the
    /// batch carries (see [`TraceLink`]); usually empty.
    async fn raft(cluster_id: u64, messages: Vec<Message>, links: Vec<TraceLink>) -> Result<(), PeerError>;
    /// A put, delete or cas; answered once committed and applied.
    async fn write(command: Command) -> Result<WriteReply, ClientError>;
    async fn get(key: Bytes, consistency: ReadConsistency) -> Result<GetReply, ClientError>;
    async fn scan(prefix: Bytes, limit: u32, consistency: ReadConsistency) -> Result<ScanReply, ClientError>;
    async fn status() -> NodeStatus;
    /// Asks the leader to hand leadership to `target` (or to the most caught-up peer).
    async fn transfer_leader(target: Option<NodeId>) -> Result<NodeId, ClientError>;
}

/// Opens a client connection to a node.
pub async fn connect(addr: &str) -> io::Result<RaftKvClient> {
    let mut connecting = tcp::connect(addr, Bincode::default);
    connecting.config_mut().max_frame_length(MAX_FRAME_BYTES);
    let transport = connecting.await?;
    Ok(RaftKvClient::new(tarpc::client::Config::default(), transport).spawn())
}

type ServerCodec = Bincode<tarpc::ClientMessage<RaftKvRequest>, tarpc::Response<RaftKvResponse>>;

/// Accepted connections, each a tarpc transport for [`RaftKv`].
pub type Incoming = tcp::Incoming<
    tarpc::ClientMessage<RaftKvRequest>,
    tarpc::Response<RaftKvResponse>,
    ServerCodec,
    fn() -> ServerCodec,
>;

/// Serves [`RaftKv`] transports on an already bound listener (bind first, so the caller
/// knows the address, including an ephemeral port).
pub async fn listen(listener: tokio::net::TcpListener) -> io::Result<Incoming> {
    let codec: fn() -> ServerCodec = Bincode::default;
    let mut incoming = tcp::listen_on(listener, codec).await?;
    incoming.config_mut().max_frame_length(MAX_FRAME_BYTES);
    Ok(incoming)
}
