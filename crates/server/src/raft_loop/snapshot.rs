//! Snapshot files: when the replica says one is due, the state machine is streamed into
//! a new file, which the storage writer makes durable; then the state machine's pairs
//! move into the saved (mapped) file and the log before it is dropped.

use std::io::Write as _;

use anyhow::Context as _;
use raftkv_kv::SnapshotLayout;
use raftkv_raft::Snapshot;
use raftkv_replica::SnapshotPlan;
use raftkv_storage::{StorageError, WrittenSnapshot};
use tracing::Instrument as _;

use super::RaftLoop;
use super::ready::storage_callback;

impl RaftLoop {
    /// Takes a snapshot if one is due.
    pub(super) async fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let Some(plan) = self.replica.snapshot_due() else { return Ok(()) };
        let index = plan.meta.index;
        let bytes = plan.prefix.len() + self.replica.kv().snapshot_len();
        let span = tracing::info_span!(
            parent: None,
            "raft.snapshot.create",
            node = self.id,
            index,
            term = plan.meta.term,
            bytes = bytes as u64,
        );
        let (written, layout) = span
            .in_scope(|| self.write_snapshot_file(&plan, bytes))
            .with_context(|| format!("writing the snapshot file at index {index}"))?;
        let snapshot = match self.commit_snapshot(written).instrument(span).await {
            Ok(snapshot) => snapshot,
            Err(e @ StorageError::Invalid { .. }) => {
                tracing::warn!(id = self.id, index, error = %e, "snapshot not saved");
                self.replica.snapshot_skipped(index);
                return Ok(());
            }
            Err(e) => return Err(e).context(format!("saving a snapshot at index {index}")),
        };
        // Only now, with the file saved: the pairs move into it (mapped), never into
        // bytes that are not the saved snapshot's.
        let pairs = snapshot.data.slice(plan.prefix.len()..);
        if let Err(e) = self.replica.kv_mut().adopt_snapshot(&pairs, layout) {
            tracing::error!(id = self.id, index, error = %e, "the state machine keeps its own copy of the pairs");
        }
        self.replica.snapshot_saved(snapshot);
        self.admin.metrics.snapshots_saved.inc();
        tracing::info!(id = self.id, index, bytes, "saved a snapshot and compacted the log");
        Ok(())
    }

    /// Streams the plan's prefix and the state machine's snapshot (`len` bytes in all)
    /// into a new snapshot file, through a small buffer: the encoding is never whole in
    /// memory. Returns the file, to commit, and where the pairs lie in it.
    fn write_snapshot_file(
        &self,
        plan: &SnapshotPlan,
        len: usize,
    ) -> anyhow::Result<(WrittenSnapshot, SnapshotLayout)> {
        let mut file = self.writer()?.snapshot_file(plan.meta.clone(), len as u64)?;
        let layout = file.write_all(&plan.prefix).and_then(|()| self.replica.kv().write_snapshot(&mut file));
        // `finish` reports a failed write again, as the storage error it was.
        let written = file.finish()?;
        Ok((written, layout?))
    }

    /// Hands a written snapshot file to the storage writer to make durable (after the
    /// writes queued before it) and waits for the saved snapshot.
    async fn commit_snapshot(&self, written: WrittenSnapshot) -> Result<Snapshot, StorageError> {
        let Some(writer) = &self.writer else { return Err(StorageError::Closed) };
        let (done, rx) = storage_callback();
        writer.commit_snapshot(written, done);
        rx.await.unwrap_or(Err(StorageError::Closed))
    }
}
