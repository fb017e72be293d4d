//! Durable storage of raftkv: the CRC-checked write-ahead log, the hard state and the
//! snapshots of one node.
//!
//! Its job: own the node's files and their fsyncs. [`DiskStorage`] appends log entries
//! and hard states to a segmented WAL (`<dir>/wal/`), saves snapshots
//! (`<dir>/snap/`), compacts the WAL behind them, and on open recovers exactly what
//! was acknowledged. [`GroupCommitWriter`] batches concurrent writes into one fsync.
//! A large snapshot can be streamed into its file by its producer ([`SnapshotFile`]) and
//! then committed (fsync, rename, WAL marker) on the writer thread; the saved file is
//! mapped read-only and its data handed back as `Bytes`, so no second copy of the state
//! is ever in memory.
//! Every file operation goes through the [`FileSystem`] seam so tests can inject
//! faults: with the `fault-injection` feature (dev-dependencies only), `fault::FaultyFs`
//! fails fsyncs, tears writes, runs out of space and slows fsyncs on demand, and counts
//! file and directory fsyncs (the crate's tests all run on it).
//!
//! On disk faults: any failed write or fsync (`EIO`, a short write, `ENOSPC` — errors
//! name the file and the OS reason, e.g. "No space left on device") fails that write and
//! poisons the storage: every later write fails with [`StorageError::Failed`] until it
//! is reopened, which cuts the torn tail. A snapshot file that fails its checksum or
//! format at open is refused and moved aside to `snap/corrupt-<name>`; recovery then
//! uses an older snapshot plus the WAL only as far as they are provably contiguous
//! (else no log at all), keeps the term and vote, and lowers the commit index to what
//! is present, so the leader sends what is missing.
//!
//! What it must never do:
//! - acknowledge a write before it is durable per the [`FsyncPolicy`], or report
//!   success after an fsync failed (the file state is then unknown);
//! - silently skip corruption: only a torn final write at the end of the last WAL
//!   segment is cut away (with a warning), and only a corrupt snapshot file is set aside
//!   (loudly, keeping the file); any other damage is [`StorageError::Corrupt`], naming
//!   the file and byte offset;
//! - invent state: after a refused snapshot, no entry is recovered that the remaining
//!   files do not place contiguously, and no vote is forgotten;
//! - delete a corrupt file (it is evidence);
//! - write to, truncate or replace in place a snapshot file once it is renamed into
//!   place: it may be mapped (only renaming it aside or deleting it is safe);
//! - panic on bad disk content.
//!
//! A known limit of the record format (no header checksum): a bit flip that enlarges
//! the length field of a record in the last segment beyond the end of the file reads
//! as a torn tail.

mod codec;
mod disk;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod fs;
mod group;
mod log;
mod meta;
mod snap;
mod storage;
mod wal;

pub use codec::DEFAULT_MAX_RECORD_SIZE;
pub use error::StorageError;
pub use fs::{FileHandle, FileSystem, RealFs};
pub use group::{
    BatchReport, CommitCallback, GroupCommitOptions, GroupCommitWriter, SnapshotCallback, WriteCallback, WriteRequest,
};
pub use meta::{NodeMeta, Tombstone};
pub use snap::{SnapshotFile, WrittenSnapshot};
pub use storage::{DiskStorage, FsyncPolicy, StorageOptions, StorageStats, WriteStats};
pub use wal::{DecodedSegment, decode_segment};
