//! The one tarpc service a raftkv node serves, on one TCP port, to its peers and its
//! clients, and the wire types both sides share.
//!
//! Plaintext TCP by default; with a [`TlsConfig`], mutual TLS ([`tls`]), where only
//! node certificates may send Raft messages ([`PeerError::NotANode`]).
//!
//! Its job: define the protocol once. It must never hold logic: no retries, no leader
//! finding (that is the client's), no Raft (that is the server's).

use bytes::Bytes;
use raftkv_kv::{Command, WriteResult};
use raftkv_raft::{Message, NodeId};
use serde::{Deserialize, Serialize};

pub use tarpc;

mod codec;
mod cork;
mod fault;
pub mod tls;
mod transport;

pub use codec::{MAX_REQUEST_DEADLINE, ServerCodec, ServerMessage, decode_client_message, encode_request};
pub use cork::Corked;

pub use fault::{ActiveFault, Fault, FaultReply, FaultRequest, MAX_FAULT_MS, MAX_FSYNC_DELAY_MS};
pub use tls::{PeerIdentity, TlsConfig, TlsError, TlsFiles};
pub use transport::{
    Accepted, HANDSHAKE_TIMEOUT, Listener, ServerTransport, client_on, connect, connect_with, listen_with,
};

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
    /// Set when a follower forwarded the write to the leader that committed it.
    pub forwarded: Option<Forwarded>,
}

/// How a request reached the leader that served it: through `via`, a follower that
/// passed it on over its own connection to the leader at `leader_addr`. A client that
/// can reach `leader_addr` may go there directly next time; one that cannot keeps
/// sending to `via`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub via: NodeId,
    pub leader: NodeId,
    pub leader_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    pub value: Option<Bytes>,
    /// The applied index the read was served at.
    pub index: u64,
    pub node: NodeId,
    pub leader: Option<NodeId>,
    /// Set when a follower forwarded the read to the leader (`node`) that served it.
    pub forwarded: Option<Forwarded>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReply {
    pub items: Vec<(Bytes, Bytes)>,
    pub more: bool,
    pub index: u64,
    pub node: NodeId,
    /// Set when a follower forwarded the scan to the leader (`node`) that served it.
    pub forwarded: Option<Forwarded>,
}

/// Where a page of [`RaftKv::scan_page`] starts, among the keys with its prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanStart {
    /// At the first key with the prefix (what [`RaftKv::scan`] does).
    First,
    /// At this key, or the first key after it (`raftkv scan --from KEY`).
    AtOrAfter(Bytes),
    /// After this key: the last key of the previous page, to continue when `more` was
    /// set.
    After(Bytes),
}

impl ScanStart {
    /// The start as a bound, for `raftkv_kv::KvStateMachine::scan_range`.
    pub fn bound(&self) -> std::ops::Bound<&[u8]> {
        match self {
            ScanStart::First => std::ops::Bound::Unbounded,
            ScanStart::AtOrAfter(key) => std::ops::Bound::Included(key),
            ScanStart::After(key) => std::ops::Bound::Excluded(key),
        }
    }
}

/// A client request a follower passes on to its leader ([`RaftKv::forward`]). Reads
/// are linearizable (a follower serves stale reads itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    Get { key: Bytes },
    ScanPage { prefix: Bytes, start: ScanStart, limit: u32 },
    Members,
    ChangeMember(MemberChange),
    TransferLeader(Option<NodeId>),
}

/// The leader's answer to a [`ForwardRequest`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardReply {
    Write(WriteReply),
    Get(GetReply),
    ScanPage(ScanReply),
    Members(MemberList),
    ChangeMember(MemberChangeReply),
    TransferLeader(NodeId),
}

/// The most operations one [`RaftKv::batch`] carries; a larger batch is refused.
pub const MAX_BATCH_OPS: usize = 256;

/// One operation of a [`RaftKv::batch`]: served exactly as the RPC of the same name
/// would serve it alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    Write(Command),
    Get { key: Bytes, consistency: ReadConsistency },
}

/// The answer to one [`BatchOp`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOpReply {
    Write(WriteReply),
    Get(GetReply),
}

impl BatchOp {
    /// The RPC it stands for, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            BatchOp::Write(_) => "write",
            BatchOp::Get { .. } => "get",
        }
    }
}

impl ForwardRequest {
    /// The RPC it stands for, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ForwardRequest::Write(_) => "write",
            ForwardRequest::Get { .. } => "get",
            ForwardRequest::ScanPage { .. } => "scan",
            ForwardRequest::Members => "members",
            ForwardRequest::ChangeMember(_) => "change_member",
            ForwardRequest::TransferLeader(_) => "transfer_leader",
        }
    }
}

/// One member as the node answering [`RaftKv::cluster_status`] reached it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    /// Its status and build, or why it could not be asked.
    pub status: Result<(NodeStatus, ServerInfo), String>,
}

/// A node's state machine digest at one applied index ([`RaftKv::hash_kv`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKvReply {
    /// The node that answered.
    pub node: NodeId,
    /// Its applied index when it computed the digest (the index asked for), or when it
    /// found it had already applied past that index.
    pub applied_index: u64,
    /// `raftkv_kv::KvStateMachine::digest` once the node had applied exactly the index
    /// asked for; `None` when it had already applied past it (ask again at a later
    /// index).
    pub digest: Option<u64>,
}

/// What a server was built from (`raftkv endpoint status` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: NodeId,
    /// The package version, e.g. `0.1.0`.
    pub version: String,
    /// The git commit it was built from (`unknown` when built outside a checkout).
    pub commit: String,
}

/// One node's view of the cluster, for `raftkv status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The id of the cluster this node belongs to (0 while a joining node has none yet).
    pub cluster_id: u64,
    /// The node is recovering from lost state (an empty data dir): it neither votes nor
    /// counts toward a quorum until a leader has brought it up to date.
    pub recovering: bool,
}

/// A member's part in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// Votes and counts toward quorums.
    Voter,
    /// Receives the log and snapshots; does not vote or count toward quorums.
    Learner,
}

/// One member of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    /// The address peers and clients reach it at.
    pub addr: String,
    pub role: MemberRole,
    /// A learner the leader promotes by itself once it has caught up.
    pub auto_promote: bool,
    /// The leader's view of its replication (None when not asked of the leader).
    pub match_index: Option<u64>,
}

/// The configuration as one node sees it: its latest, committed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    pub cluster_id: u64,
    /// The node that answered.
    pub node: NodeId,
    pub leader: Option<NodeId>,
    /// The log index of the configuration's ConfChange entry.
    pub conf_index: u64,
    /// Whether that entry is committed.
    pub committed: bool,
    pub members: Vec<MemberInfo>,
    /// Ids removed from this cluster. Ids are never reused.
    pub removed: Vec<NodeId>,
}

/// A membership change asked of the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Adds a learner at `addr`. With `auto_promote`, the leader promotes it to voter
    /// once it has caught up.
    ///
    /// `id`: the id to add. If `None`, or if `allocate_if_taken` and the id is taken or
    /// was removed, the leader allocates an unused one. Adding an address that is
    /// already a learner's returns that member unchanged (so a joining node may retry).
    Add { id: Option<NodeId>, addr: String, auto_promote: bool, allocate_if_taken: bool },
    /// Makes a caught-up learner a voter.
    Promote { id: NodeId },
    /// Removes a voter or learner. Removing the leader hands leadership off first.
    Remove { id: NodeId },
}

/// The outcome of a committed [`MemberChange`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChangeReply {
    /// The member the change was about (for `Add`: the id it was given).
    pub id: NodeId,
    /// The configuration once the change committed.
    pub members: MemberList,
}

/// Why a client request did not succeed. `NotLeader` and `Unavailable` are safe to
/// retry elsewhere; after `Timeout` a write may or may not have been applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
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
    /// The sender was removed from the cluster: it must stop and never rejoin with
    /// its data.
    #[error("node {id} was removed from this cluster")]
    Removed { id: NodeId },
    /// TLS is on and the sender's certificate is not a node's (e.g. a client's): it
    /// may not vote or append.
    #[error("the sender's certificate ({common_name:?}) is not a node certificate: Raft messages refused")]
    NotANode { common_name: String },
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
    /// A batch of Raft messages from one peer, accepted into a bounded queue. The
    /// answer comes once the receiver's Raft loop has stepped the batch and persisted
    /// what it brought, and carries the receiver's replies to the sender (acknowledgements,
    /// votes): one round trip per batch instead of a second RPC the other way. `links`:
    /// the other traced requests whose entries the batch carries (see [`TraceLink`]);
    /// usually empty.
    async fn raft(cluster_id: u64, messages: Vec<Message>, links: Vec<TraceLink>) -> Result<Vec<Message>, PeerError>;
    /// A put, delete or cas; answered once committed and applied.
    async fn write(command: Command) -> Result<WriteReply, RequestError>;
    async fn get(key: Bytes, consistency: ReadConsistency) -> Result<GetReply, RequestError>;
    async fn scan(prefix: Bytes, limit: u32, consistency: ReadConsistency) -> Result<ScanReply, RequestError>;
    async fn status() -> NodeStatus;
    /// Asks the leader to hand leadership to `target` (or to the most caught-up peer).
    async fn transfer_leader(target: Option<NodeId>) -> Result<NodeId, RequestError>;
    /// This node's view of the configuration (ask the leader for the authoritative one).
    async fn members() -> Result<MemberList, RequestError>;
    /// Asks the leader to change the configuration; answered once the change commits.
    async fn change_member(change: MemberChange) -> Result<MemberChangeReply, RequestError>;
    /// Like `scan`, from `start` on (see [`ScanStart`]): one page of a scan that pages
    /// past [`raftkv_kv::MAX_SCAN_LIMIT`] keys. Each page is one read (linearizable
    /// unless `Stale`); `more` says whether keys with the prefix follow its last one.
    async fn scan_page(
        prefix: Bytes,
        start: ScanStart,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanReply, RequestError>;
    /// This node's state machine digest once it has applied exactly `index`: a node
    /// below it waits (within the request's deadline; `Timeout` if it does not get
    /// there) and computes the digest after applying entry `index` and before any later
    /// one; a node already past it answers at once with `digest: None`. Equal digests
    /// at one index mean equal replicas (`raftkv endpoint hashkv`).
    async fn hash_kv(index: u64) -> Result<HashKvReply, RequestError>;
    /// The server's version and git commit.
    async fn server_info() -> ServerInfo;
    /// Serves `request` if this node leads, else answers `NotLeader` (never passing it
    /// on again, so a forwarded request takes at most one hop). Followers send it to
    /// their leader on a client's behalf; `cluster_id` guards against a leader of
    /// another cluster.
    async fn forward(cluster_id: u64, request: ForwardRequest) -> Result<ForwardReply, RequestError>;
    /// Every member's status and build as this node reaches them (itself included):
    /// the whole cluster through one endpoint (`raftkv status`).
    async fn cluster_status() -> Vec<MemberStatus>;
    /// Injects, lists or heals faults of node `node` (see [`FaultRequest`]): served by
    /// that node, passed on to it by any other (`relayed` set: one hop, never passed
    /// on again). Refused unless `node` runs with `--enable-faults`.
    async fn fault(node: NodeId, request: FaultRequest, relayed: bool) -> Result<FaultReply, RequestError>;
    /// Several clients' operations in one frame: each is served as its own RPC would
    /// be (its own log entry and its own answer; forwarded if this node does not
    /// lead), within the batch's deadline, and the answers come back together, in
    /// the order of `ops`, once every one is known. Clients that share a connection coalesce into it what
    /// they have in flight at the same moment, which saves each operation the
    /// per-frame costs of both ends. More than [`MAX_BATCH_OPS`] operations: the
    /// whole batch is refused as `Invalid`.
    async fn batch(ops: Vec<BatchOp>) -> Result<Vec<Result<BatchOpReply, RequestError>>, RequestError>;
}
