//! The deterministic replicated key/value state machine of raftkv.
//!
//! The Raft runtime hands every committed log entry to [`KvStateMachine::apply`]
//! as `(index, term, data)`, in log order, on every replica. Because each replica
//! starts from the same state and applies the same entries, they all end in the
//! same state — as long as this crate stays deterministic. It therefore must
//! never:
//!
//! - depend on wall-clock time, randomness, thread scheduling or the iteration
//!   order of hash maps (all state lives in B-trees and is encoded in key
//!   order);
//! - depend on anything but the committed entries (and the snapshot they
//!   started from), e.g. local configuration that differs between replicas;
//! - panic on a bad entry: undecodable data or a command that breaks a limit
//!   yields the same [`CommandError`] on every replica and leaves the data
//!   unchanged.
//!
//! Writes are exactly-once per `(client_id, seq)`: see [`KvStateMachine`] for
//! the session semantics. Reads ([`KvStateMachine::get`],
//! [`KvStateMachine::scan`]) are served from local state and are not logged;
//! linearizable reads are the runtime's job (e.g. ReadIndex).
//!
//! The crate does not depend on the Raft crate; entries that carry no command
//! (such as a leader's no-op) are reported with [`KvStateMachine::apply_noop`].

mod command;
mod data;
mod digest;
mod error;
mod machine;

pub use command::{Command, WriteOp, WriteResult, validate_key, validate_scan, validate_value};
pub use error::{CommandError, KvError};
pub use machine::{Applied, DEFAULT_MAX_SESSIONS, KvStateMachine, ScanPage, SnapshotBytes, SnapshotLayout};

/// Longest key accepted, in bytes. Keys must also be non-empty.
pub const MAX_KEY_LEN: usize = 4096;

/// Longest value accepted, in bytes (1 MiB). Bounds the size of a log entry.
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// Largest page a single scan may return, so one read cannot copy the whole store.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// Key and value bytes after which a scan page stops (with `more` set) even below
/// its limit (4 MiB), so that a page always fits one RPC frame: 10,000 values of
/// 1 MiB would not. A page holds at least one pair, so it can exceed this by one pair.
pub const MAX_SCAN_BYTES: usize = 4 << 20;
