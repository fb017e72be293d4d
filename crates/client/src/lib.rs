//! The raftkv client library: it turns "put this key" into a committed write on the
//! current Raft leader, wherever that leader is and however often it changes.
//!
//! Its job:
//!
//! - reach the leader through any endpoint: a follower forwards what it cannot serve,
//!   and its reply names the leader's address, which the client then uses directly
//!   when it can connect to it (else it stays on the endpoint that answers); the
//!   next endpoint is tried with jittered exponential backoff when one fails;
//!   connections and the route to the leader are cached;
//! - retry every operation until its overall deadline ([`ClientOptions::timeout`]),
//!   each attempt bounded by [`ClientOptions::rpc_timeout`];
//! - make writes exactly-once: every [`Client`] has a random non-zero `client_id`,
//!   each new write takes the next `seq`, and every retry of that write reuses the
//!   same `seq`, so the servers' dedup table applies it at most once. A client has at
//!   most one write in flight (the server keeps one outstanding `seq` per client id).
//!
//! What it must never do:
//!
//! - report success for a write it did not see committed: a [`WriteOutcome`] is
//!   only built from a leader's reply sent after the entry was committed and applied;
//! - report failure for a write whose outcome is unknown: once a write may have
//!   reached a server, any failure to learn its fate is [`ClientError::Unknown`]
//!   ("it may or may not have been applied"), never a plain error. Only errors the
//!   server returns before proposing anything (an invalid request) are definite
//!   failures ([`ClientError::Rejected`]). The same holds for membership changes
//!   ([`Client::change_member`]), which the servers do not deduplicate: when a retry
//!   of a change that may have been applied is refused, the leader's member list
//!   decides (done, refused, or unknown), never the refusal alone.
//!
//! [`BatchingConnection`] is a lower-level transport for programs that run many
//! operations at once over few connections (the benchmark): it coalesces them into
//! `batch` RPCs and leaves retries and leader finding to its caller.
//!
//! [`local`] starts and stops local server processes, for the CLI's `up` and `demo`
//! and for integration tests.

mod backoff;
mod batching;
mod client;
pub mod duration;
mod error;
mod hashkv;
pub mod local;
mod member_ops;
mod node_queries;
mod paging;
mod routing;
mod spans;
pub mod table;

pub use batching::{BatchCallError, BatchStats, BatchingConnection};
pub use client::{Client, ClientOptions, WriteOutcome};
pub use error::ClientError;
pub use hashkv::{HASH_KV_ROUNDS, HashKvRound};
pub use paging::ScanPages;
pub use raftkv_kv::{WriteOp, WriteResult};
pub use raftkv_raft::NodeId;
pub use raftkv_rpc::{
    ActiveFault, Fault, FaultReply, FaultRequest, Forwarded, GetReply, HashKvReply, MemberChange, MemberChangeReply,
    MemberInfo, MemberList, MemberRole, MemberStatus, NodeStatus, ReadConsistency, ScanReply, ScanStart, ServerInfo,
};
