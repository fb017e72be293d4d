//! The end of the Raft loop: every waiting client answered, the last commit index
//! written, the peer links closed (after delivering a removed leader's hand-off) and
//! the storage writer stopped.

use raftkv_raft::NodeId;
use raftkv_replica::{DrainEnd, Stop};
use raftkv_rpc::RequestError;
use raftkv_storage::WriteRequest;

use super::RaftLoop;
use super::intake::shutting_down;
use super::ready::WriteOn;

/// Logs why the loop stops.
pub(super) fn log_stop(id: NodeId, stop: Stop) {
    match stop {
        Stop::Shutdown(DrainEnd::NotLeader) => tracing::info!(id, "shutting down: not the leader"),
        Stop::Shutdown(DrainEnd::NoTransferee) => {
            tracing::info!(id, "shutting down: no other voter to hand leadership to")
        }
        Stop::Shutdown(DrainEnd::TimedOut) => {
            tracing::warn!(id, "shutting down: leadership transfer did not finish in time")
        }
        Stop::Removed { index, by: None } => {
            tracing::warn!(id, index, "this node's removal committed: stopping")
        }
        Stop::Removed { by: Some(by), .. } => tracing::warn!(id, by, "removed from the cluster: stopping"),
    }
}

impl RaftLoop {
    pub(super) async fn finish(mut self, result: anyhow::Result<Stop>) -> anyhow::Result<Stop> {
        self.answer_everyone();
        if result.is_ok()
            && let Some(hs) = self.deferred_hs.take()
            && let Err(e) =
                self.write(WriteRequest { entries: Vec::new(), hard_state: Some(hs) }, WriteOn::WriterThread).await
        {
            tracing::warn!(id = self.id, error = %e, "could not write the last commit index");
        }
        let dropped = self.stop_links(matches!(result, Ok(Stop::Removed { .. }))).await;
        tracing::info!(id = self.id, dropped_peer_messages = dropped, "shutting down: stopping the storage writer");
        if let Some(writer) = self.writer.take() {
            match tokio::task::spawn_blocking(move || writer.shutdown()).await {
                Ok(Ok(_storage)) => {}
                Ok(Err(e)) => tracing::error!(id = self.id, error = %e, "the storage writer failed to stop cleanly"),
                Err(e) => tracing::error!(id = self.id, error = %e, "the storage writer failed to stop cleanly"),
            }
        }
        result
    }

    /// Every client still waiting gets an answer: a write or change may or may not have
    /// been applied (timeout), a read was not served.
    fn answer_everyone(&mut self) {
        let pending = &mut self.pending;
        for (_, mut w) in std::mem::take(&mut pending.writes) {
            if let Some(t) = &mut w.trace {
                t.end_propose(false);
            }
            let _ = w.reply.send(Err(RequestError::Timeout));
        }
        for (_, c) in std::mem::take(&mut pending.member_changes) {
            let _ = c.reply.send(Err(RequestError::Timeout));
        }
        for (_, r) in std::mem::take(&mut pending.reads) {
            let _ = r.reply.send(Err(shutting_down()));
        }
        for r in std::mem::take(&mut pending.parked).into_values().flatten() {
            let _ = r.reply.send(Err(shutting_down()));
        }
    }
}
