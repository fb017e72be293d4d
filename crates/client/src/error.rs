//! The client's errors: what a caller can act on, not how the failure happened.

/// Why an operation did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The deadline passed after a write (or membership change) may have been sent.
    /// It may or may not have been applied (and may still be applied later). Retry a
    /// write with [`Client::retry_unknown`](crate::Client::retry_unknown) to learn its
    /// fate without applying it twice; read the member list to learn a change's.
    #[error("outcome unknown: {0}; it may or may not have been applied")]
    Unknown(String),
    /// The deadline passed for a read (or status-like request) without any leader
    /// answering. Nothing was changed.
    #[error("no leader answered before the deadline: {0}")]
    NoLeader(String),
    /// The request is invalid (e.g. a key or value over a limit) and was not applied.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A server failed a read with an internal error.
    #[error("server error: {0}")]
    Server(String),
    /// One endpoint could not be reached or did not answer (for per-endpoint
    /// requests such as status).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The client was built wrongly (e.g. without endpoints).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The deadline passed (outcome unknown for a write, no leader for a read).
    pub fn is_deadline(&self) -> bool {
        matches!(self, ClientError::Unknown(_) | ClientError::NoLeader(_))
    }
}
