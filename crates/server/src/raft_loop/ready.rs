//! Each Ready's I/O, in the order the replica hands it out (see
//! [`raftkv_replica::ReadyRun`]): messages through the peer links, the snapshot and
//! the log through the storage writer, votes and acknowledgements — to a peer whose
//! batch waits for its RPC's answer — inside that answer.

use anyhow::{Context as _, anyhow};
use raftkv_raft::{HardState, Message, MessageBody};
use raftkv_replica::{Io, Persist, ReadyRun};
use raftkv_storage::{BatchReport, GroupCommitWriter, StorageError, WriteRequest};
use raftkv_telemetry::opentelemetry::trace::SpanContext;
use tokio::sync::oneshot;

use super::RaftLoop;
use super::replies::Hooks;
use crate::trace;

impl RaftLoop {
    pub(super) async fn process_readies(&mut self) -> anyhow::Result<()> {
        let mut any = false;
        while let Some(mut run) = self.replica.take_ready()? {
            any = true;
            // Before anything is persisted or applied: an election's vote fsync is part
            // of its span, and a commit's writes are still waiting here.
            self.trace_events(run.events());
            if run.links_changed() {
                self.sync_links();
            }
            self.carry_out(&mut run).await?;
            // What the received batches brought is persisted (and applied): their
            // spans end.
            self.inbound_spans.clear();
            let finished = self.replica.finish_ready(run);
            if finished.links_changed {
                self.sync_links();
            }
            if let Some(handed) = finished.handed_off_again {
                super::log_hand_off(self.id, handed);
            }
            self.log_events(finished.events);
            self.publish_status();
        }
        // Batches that brought nothing to do are answered too: their senders wait.
        self.answer_batches(Vec::new());
        if any {
            self.maybe_snapshot().await?;
        }
        Ok(())
    }

    /// Does the I/O steps of `run` as the replica hands them out.
    async fn carry_out(&mut self, run: &mut ReadyRun) -> anyhow::Result<()> {
        // Whether messages left before the log write: the write then overlaps them.
        let mut sent = false;
        loop {
            let mut hooks = Hooks::new(self.id, &mut self.pending, &self.admin);
            let io = self.replica.next_io(run, &mut hooks)?;
            self.answer_settled();
            match io {
                Io::Send(messages) => {
                    sent |= !messages.is_empty();
                    self.send(messages);
                }
                Io::SaveSnapshot(snapshot) => {
                    let index = snapshot.meta.index;
                    self.save_snapshot(snapshot)
                        .await
                        .with_context(|| format!("saving the snapshot at index {index} received from the leader"))?;
                }
                Io::Persist(Persist { entries, hard_state, must_sync }) => {
                    let on = if sent { WriteOn::WriterThread } else { WriteOn::LoopThread };
                    self.persist(entries, hard_state, must_sync, on).await?;
                }
                Io::SendPersisted(messages) => self.answer_batches(messages),
                Io::Done => return Ok(()),
            }
        }
    }

    /// Answers what applying settled but needs the replica to answer: committed
    /// membership changes (with the member list), dropped reads (with a hint), and
    /// reads the state machine has now reached.
    fn answer_settled(&mut self) {
        for c in std::mem::take(&mut self.pending.changes_done) {
            let _ = c.reply.send(Ok(raftkv_rpc::MemberChangeReply { id: c.id, members: self.member_list() }));
        }
        for r in std::mem::take(&mut self.pending.reads_dropped) {
            let _ = r.reply.send(Err(self.not_leader_hint(self.replica.status().leader)));
        }
        self.pending.serve_parked(&self.replica, &self.admin.metrics);
    }

    /// Sends `messages` (persisted ones), each response to a node that waits for an
    /// answer to its batch inside that answer, and answers every waiting batch. The
    /// others go through the peer links.
    pub(super) fn answer_batches(&mut self, messages: Vec<Message>) {
        if self.batch_replies.is_empty() {
            self.send(messages);
            return;
        }
        let mut answers: Vec<_> = self.batch_replies.drain(..).map(|b| (b, Vec::new())).collect();
        let mut others = Vec::new();
        for m in messages {
            match answers.iter_mut().find(|(b, _)| b.from == m.to) {
                _ if self.shared.faults.partitioned(m.to) => {}
                Some((_, carried)) if m.body.is_response() => carried.push(m),
                _ => others.push(m),
            }
        }
        self.send(others);
        for (batch, carried) in answers {
            // A sender that stopped waiting (its RPC timed out) still gets them.
            if let Err(carried) = batch.reply.send(carried) {
                self.send(carried);
            }
        }
    }

    pub(super) fn send(&self, messages: Vec<Message>) {
        let election = self.election.as_ref().and_then(|e| trace::sampled(&raftkv_telemetry::context_of(&e.span)));
        for mut m in messages {
            if self.shared.faults.partitioned(m.to) {
                continue;
            }
            self.count_replication(&m);
            // The trace an election's requests and a transfer's TimeoutNow carry, so
            // that the voters' spans join it.
            match m.body {
                MessageBody::RequestVote { .. } => m.trace = election.as_ref().map(trace::tag_of),
                MessageBody::TimeoutNow => m.trace = trace::transfer_leader(self.id, m.to, m.term),
                _ => {}
            }
            let traces = self.traces_carried(&m);
            match self.peers.get(&m.to) {
                Some(peer) => peer.sender.send(m, traces),
                None => tracing::debug!(to = m.to, "no link to a message's recipient"),
            }
        }
    }

    /// Counts what a leader sends: entry bytes, and snapshots started.
    fn count_replication(&self, m: &Message) {
        let metrics = &self.admin.metrics;
        match &m.body {
            MessageBody::AppendEntries { entries, .. } if !entries.is_empty() => {
                metrics.bytes_replicated.inc_by(entries.iter().map(|e| e.data.len() as u64).sum());
            }
            MessageBody::InstallSnapshot { offset: 0, .. } => {
                metrics.snapshots_sent.inc();
            }
            _ => {}
        }
    }

    /// The `raft.propose` spans of the traced writes whose entries `m` carries.
    fn traces_carried(&self, m: &Message) -> Vec<SpanContext> {
        let MessageBody::AppendEntries { entries, .. } = &m.body else { return Vec::new() };
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Vec::new() };
        if self.pending.writes.is_empty() {
            return Vec::new();
        }
        self.pending
            .writes
            .range(first.index..=last.index)
            .filter_map(|(_, w)| w.trace.as_ref().map(|t| t.propose_sc.clone()))
            .collect()
    }

    /// The spans a write of `entries` (and a hard state, if `hard_state`) is done
    /// for: the traced client writes among the entries, the received batches that
    /// brought them, the election whose vote it records.
    fn fsync_traces(&self, entries: &[raftkv_raft::Entry], hard_state: bool) -> Vec<SpanContext> {
        let mut traced = Vec::new();
        if let (Some(first), Some(last)) = (entries.first(), entries.last())
            && !self.pending.writes.is_empty()
        {
            let writes = self.pending.writes.range(first.index..=last.index);
            traced.extend(writes.filter_map(|(_, w)| w.trace.as_ref().map(|t| t.request.clone())));
        }
        traced.extend(self.inbound_spans.iter().filter_map(|s| trace::sampled(&raftkv_telemetry::context_of(s))));
        if hard_state && let Some(e) = &self.election {
            traced.extend(trace::sampled(&raftkv_telemetry::context_of(&e.span)));
        }
        traced
    }

    /// Writes entries and hard state durably. A commit-only hard state change is
    /// deferred to the next write (Raft can re-learn the commit index), so it costs no
    /// fsync of its own.
    async fn persist(
        &mut self,
        entries: Vec<raftkv_raft::Entry>,
        hs: Option<HardState>,
        must_sync: bool,
        on: WriteOn,
    ) -> anyhow::Result<()> {
        if entries.is_empty() && !must_sync {
            if let Some(hs) = hs {
                // Only a commit index may wait for the next write: a new term, vote or
                // recovery state is durable before anything that depends on it leaves.
                let durable = self.durable_hs;
                assert_eq!(
                    (hs.term, hs.vote, hs.recovering),
                    (durable.term, durable.vote, durable.recovering),
                    "a hard state other than a commit index was deferred"
                );
                self.deferred_hs = Some(hs);
            }
            return Ok(());
        }
        let hard_state = hs.or(self.deferred_hs.take());
        self.deferred_hs = None;
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let traced = self.fsync_traces(&entries, hs.is_some());
        let n = entries.len() as u64;
        let has_hs = hard_state.is_some();
        let report = self.write(WriteRequest { entries, hard_state }, on).await?;
        self.admin.metrics.fsync_seconds.observe(report.fsync_duration.as_secs_f64());
        if let Some(hs) = hard_state {
            self.durable_hs = hs;
        }
        let info = trace::FsyncInfo {
            node: self.id,
            entries: n,
            hard_state: has_hs,
            batch_requests: report.requests_in_batch as u64,
            batch_entries: report.entries as u64,
            batch_bytes: report.bytes,
            fsync: report.fsync_duration,
        };
        trace::fsync(info, &traced);
        Ok(())
    }

    pub(super) fn writer(&self) -> anyhow::Result<&GroupCommitWriter> {
        self.writer.as_ref().ok_or_else(|| anyhow!("the storage writer is closed"))
    }

    pub(super) async fn write(&self, request: WriteRequest, on: WriteOn) -> anyhow::Result<BatchReport> {
        // An injected slow fsync: the write waits before it reaches the disk.
        if let Some(delay) = self.shared.faults.fsync_delay() {
            tokio::time::sleep(delay).await;
        }
        let thread = if on == WriteOn::LoopThread { "loop" } else { "writer" };
        self.admin.metrics.wal_writes.get_or_create(&crate::metrics::WalThreadLabel { thread }).inc();
        let result = match on {
            WriteOn::LoopThread => self.writer()?.write_here(request),
            WriteOn::WriterThread => {
                let (done, rx) = storage_callback();
                self.writer()?.submit(request, done);
                rx.await.map_err(|_| anyhow!("the storage writer stopped"))?
            }
        };
        result.context("writing the Raft log")
    }

    async fn save_snapshot(&self, snapshot: raftkv_raft::Snapshot) -> Result<(), StorageError> {
        let Some(writer) = &self.writer else { return Err(StorageError::Closed) };
        let (done, rx) = storage_callback();
        writer.save_snapshot(snapshot, done);
        rx.await.unwrap_or(Err(StorageError::Closed))
    }
}

/// Where a log write is made. The loop waits for every write before it goes on, so the
/// writer thread only helps when something else proceeds meanwhile: the messages a
/// leader sent before its write, which the peer links (on the runtime's threads) put
/// on the wire while the writer fsyncs. A write with nothing sent before it (a
/// follower's append and its acknowledgement, which must wait for it; a vote) is made
/// on the loop's own thread: measured on 2 cores, the hand-off to the writer thread and
/// the wake-up back cost more than they overlap. The cost: this runtime thread is busy
/// for one fsync; the runtime's other threads take its waiting tasks meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteOn {
    LoopThread,
    WriterThread,
}

/// A storage writer callback (run on the writer thread) that hands its result to the
/// returned receiver, for the Raft loop to await.
pub(super) fn storage_callback<T: Send + 'static>() -> (Box<dyn FnOnce(T) + Send>, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    let done = Box::new(move |result| {
        // The loop may have stopped waiting (shutdown): nobody to tell.
        let _ = tx.send(result);
    });
    (done, rx)
}
