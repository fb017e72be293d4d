//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in storage. Cloneable so that one failed group-commit
/// batch can report the same error to every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed. After an `Io` error while writing, the storage refuses
    /// all later writes ([`StorageError::Failed`]): the file state is unknown.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Content on disk that is neither valid nor a torn final write. Never skipped.
    #[error("corrupt storage file {} at byte offset {offset}: {reason}", file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    /// A record larger than the configured maximum record size.
    #[error("record of {len} bytes exceeds the maximum record size of {limit} bytes")]
    RecordTooLarge { len: u64, limit: u64 },
    /// The storage (or its group-commit writer) hit an I/O error earlier and refuses to
    /// write or acknowledge anything more; reopen it to recover what is durable.
    #[error("storage refuses writes after an earlier I/O error: {reason}")]
    Failed { reason: String },
    /// The caller asked for something the log rules forbid (a gap, a vote for node 0,
    /// a snapshot older than the current one, bad options). Nothing was written.
    #[error("invalid storage request: {reason}")]
    Invalid { reason: String },
    /// The group-commit writer has shut down; the request was not written.
    #[error("the group-commit writer has shut down")]
    Closed,
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source: Arc::new(source) }
    }

    pub(crate) fn corrupt(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt { file: file.into(), offset, reason: reason.into() }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        StorageError::Invalid { reason: reason.into() }
    }

    /// Whether this error leaves the files in an unknown state, so that the storage
    /// must refuse every later write.
    pub(crate) fn poisons(&self) -> bool {
        matches!(self, StorageError::Io { .. } | StorageError::Failed { .. })
    }
}
