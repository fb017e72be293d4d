//! The raftkv client library: it turns "put this key" into a committed write on the
//! current Raft leader, wherever that leader is and however often it changes.
//!
//! Its job:
//!
//! - find the leader from any endpoint (following `NotLeader` hints, trying the next
//!   endpoint with jittered exponential backoff otherwise), caching connections and
//!   the last known leader;
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
//! [`local`] starts and stops local server processes, for the CLI's `up` and `demo`
//! and for integration tests.

mod backoff;
mod client;
pub mod duration;
mod error;
mod hashkv;
pub mod local;
mod paging;
pub mod table;

pub use client::{Client, ClientOptions, WriteOutcome};
pub use error::ClientError;
pub use hashkv::{HASH_KV_ROUNDS, HashKvRound};
pub use paging::ScanPages;
pub use raftkv_kv::{WriteOp, WriteResult};
pub use raftkv_raft::NodeId;
pub use raftkv_rpc::{
    GetReply, HashKvReply, MemberChange, MemberChangeReply, MemberInfo, MemberList, MemberRole, NodeStatus,
    ReadConsistency, ScanReply, ScanStart, ServerInfo,
};
