//! Error types. Both are serde types so the runtime can send them to clients.

use serde::{Deserialize, Serialize};

use crate::{MAX_KEY_LEN, MAX_SCAN_LIMIT, MAX_VALUE_LEN};

/// An invalid request, command or snapshot. Messages name the limit broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    #[error("key is empty; keys must be 1 to {max} bytes", max = MAX_KEY_LEN)]
    EmptyKey,
    #[error("key is {len} bytes; the limit is {max}", max = MAX_KEY_LEN)]
    KeyTooLong { len: usize },
    #[error("value is {len} bytes; the limit is {max}", max = MAX_VALUE_LEN)]
    ValueTooLong { len: usize },
    #[error("expected value is {len} bytes; the limit is {max}", max = MAX_VALUE_LEN)]
    ExpectedTooLong { len: usize },
    #[error("scan limit is {limit}; it must be from 1 to {max}", max = MAX_SCAN_LIMIT)]
    ScanLimit { limit: usize },
    #[error("scan prefix is {len} bytes; the limit is {max} (the longest key)", max = MAX_KEY_LEN)]
    PrefixTooLong { len: usize },
    #[error("entry data is not a valid command: {reason}")]
    Decode { reason: String },
    #[error("invalid snapshot: {reason}")]
    Snapshot { reason: String },
}

/// Why a committed entry did not change the data. Identical on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// The entry did not decode, or the command broke a limit.
    #[error("command rejected: {0}")]
    Rejected(KvError),
    /// The client already had a later command applied (the reply to this one was
    /// already delivered or superseded, so it must not run again).
    #[error("client {client_id} sent seq {seq}, but seq {last} was already applied")]
    StaleSequence { client_id: u64, seq: u64, last: u64 },
    /// The runtime handed over an entry at or below the applied index (a runtime
    /// bug; the entry is ignored).
    #[error("entry index {index} is not after the applied index {applied}")]
    IndexNotAfterApplied { index: u64, applied: u64 },
}
