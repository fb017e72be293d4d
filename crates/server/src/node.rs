//! The Raft loop: one task owns the [`RawNode`], the [`KvStateMachine`] and the storage
//! writer, and carries out each [`Ready`](raftkv_raft::Ready) in the order the core
//! documents.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use raftkv_kv::{Applied, CommandError, KvStateMachine};
use raftkv_raft::{
    EntryKind, Event, HardState, Index, Message, NodeId, ProposeError, RawNode, Role, Snapshot, SnapshotMeta, Term,
};
use raftkv_rpc::{ClientError, GetReply, NodeStatus, ReadConsistency, ScanReply, WriteReply};
use raftkv_storage::{GroupCommitWriter, StorageError, WriteRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::peer::PeerSender;

/// Inputs handled per loop iteration from each channel before the Ready is processed.
const MAX_DRAIN: usize = 1024;
/// Writes waiting to commit; more are refused with `Overloaded`.
const MAX_PENDING_WRITES: usize = 100_000;
/// Every this many ticks, forget requests whose client stopped waiting.
const SWEEP_TICKS: u64 = 10;

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A client request, from the RPC service to the Raft loop.
pub(crate) enum Request {
    /// An encoded, validated [`raftkv_kv::Command`].
    Write {
        data: Bytes,
        reply: Reply<WriteReply>,
    },
    Read {
        op: ReadOp,
        consistency: ReadConsistency,
        reply: Reply<ReadOutput>,
    },
    Status(oneshot::Sender<NodeStatus>),
    Transfer {
        target: Option<NodeId>,
        reply: Reply<NodeId>,
    },
}

pub(crate) enum ReadOp {
    Get(Bytes),
    Scan { prefix: Bytes, limit: usize },
}

pub(crate) enum ReadOutput {
    Get(GetReply),
    Scan(ScanReply),
}

struct PendingWrite {
    /// The term `propose` returned: the write is ours only if the entry applied at its
    /// index has this term.
    term: Term,
    reply: Reply<WriteReply>,
}

struct PendingRead {
    op: ReadOp,
    reply: Reply<ReadOutput>,
}

/// Settings of the loop that are not the core's.
pub(crate) struct LoopConfig {
    pub tick: Duration,
    pub election_timeout: Duration,
    pub snapshot_entries: u64,
}

/// The state the Raft loop owns.
pub(crate) struct Node {
    id: NodeId,
    cfg: LoopConfig,
    raw: RawNode,
    kv: KvStateMachine,
    writer: Option<GroupCommitWriter>,
    peers: HashMap<NodeId, PeerSender>,
    peer_addrs: Arc<Vec<(NodeId, String)>>,
    writes: BTreeMap<Index, PendingWrite>,
    /// Linearizable reads waiting for their ReadIndex, by context.
    reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for the state machine to reach their index.
    parked: BTreeMap<Index, Vec<PendingRead>>,
    next_read_ctx: u64,
    /// A commit-only hard state not yet written: it needs no fsync of its own and rides
    /// along with the next write (or is flushed on the next tick).
    deferred_hs: Option<HardState>,
    flush_due: bool,
    snapshot_index: Index,
    role: Role,
    leader: Option<NodeId>,
    ticks: u64,
    /// Set once shutdown began: when to give up on handing off leadership.
    draining: Option<Instant>,
}

impl Node {
    pub fn new(
        raw: RawNode,
        kv: KvStateMachine,
        writer: GroupCommitWriter,
        peers: HashMap<NodeId, PeerSender>,
        peer_addrs: Arc<Vec<(NodeId, String)>>,
        cfg: LoopConfig,
    ) -> Node {
        let status = raw.status();
        let snapshot_index = raw.snapshot().map_or(0, |s| s.meta.index);
        Node {
            id: status.id,
            cfg,
            raw,
            kv,
            writer: Some(writer),
            peers,
            peer_addrs,
            writes: BTreeMap::new(),
            reads: HashMap::new(),
            parked: BTreeMap::new(),
            next_read_ctx: 1,
            deferred_hs: None,
            flush_due: false,
            snapshot_index,
            role: status.role,
            leader: status.leader,
            ticks: 0,
            draining: None,
        }
    }

    /// Runs until `shutdown` resolves (then hands off leadership, bounded) or storage
    /// fails. Returns the storage or state machine failure that stopped it, if any.
    pub async fn run(
        mut self,
        mut raft_rx: mpsc::Receiver<Vec<Message>>,
        mut client_rx: mpsc::Receiver<Request>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        // Why Delay: after a stall (a slow fsync), a burst of ticks would be handled
        // before the peer messages queued meanwhile and could start a needless election.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown, if self.draining.is_none() => self.start_drain(),
                _ = ticker.tick() => self.on_tick(),
                Some(batch) = raft_rx.recv() => self.step_batch(batch),
                Some(request) = client_rx.recv() => self.handle_request(request),
            }
            for _ in 0..MAX_DRAIN {
                let Ok(batch) = raft_rx.try_recv() else { break };
                self.step_batch(batch);
            }
            for _ in 0..MAX_DRAIN {
                let Ok(request) = client_rx.try_recv() else { break };
                self.handle_request(request);
            }
            if let Err(e) = self.process_readies().await {
                break Err(e);
            }
            if std::mem::take(&mut self.flush_due)
                && let Some(hs) = self.deferred_hs.take()
                && let Err(e) = self.write(WriteRequest { entries: Vec::new(), hard_state: Some(hs) }).await
            {
                break Err(e);
            }
            if let Some(deadline) = self.draining {
                if self.role != Role::Leader {
                    tracing::info!(id = self.id, "shutting down: not the leader");
                    break Ok(());
                }
                if self.best_transferee().is_none() {
                    tracing::info!(id = self.id, "shutting down: no other voter to hand leadership to");
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    tracing::warn!(id = self.id, "shutting down: leadership transfer did not finish in time");
                    break Ok(());
                }
            }
        };
        self.finish(result).await
    }

    // ---- inputs ----

    fn on_tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        self.flush_due = self.deferred_hs.is_some();
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            self.writes.retain(|_, w| !w.reply.is_closed());
            self.reads.retain(|_, r| !r.reply.is_closed());
            self.parked.retain(|_, reads| {
                reads.retain(|r| !r.reply.is_closed());
                !reads.is_empty()
            });
        }
    }

    fn step_batch(&mut self, batch: Vec<Message>) {
        for m in batch {
            // Why check here: the core trusts that senders are members.
            if m.to != self.id || !self.peers.contains_key(&m.from) {
                tracing::debug!(
                    from = m.from,
                    to = m.to,
                    kind = m.body.name(),
                    "dropping a message not meant for this node"
                );
                continue;
            }
            let (from, kind) = (m.from, m.body.name());
            if let Err(e) = self.raw.step(m) {
                tracing::debug!(from, kind, error = %e, "refused a raft message");
            }
        }
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::Write { data, reply } => {
                let result = self.propose(data);
                match result {
                    Ok((index, term)) => {
                        self.writes.insert(index, PendingWrite { term, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Read { op, consistency: ReadConsistency::Stale, reply } => {
                let _ = reply.send(self.serve_read(&op));
            }
            Request::Read { op, consistency: ReadConsistency::Linearizable, reply } => {
                if self.draining.is_some() {
                    let _ = reply.send(Err(shutting_down()));
                    return;
                }
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.raw.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, PendingRead { op, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Transfer { target, reply } => {
                let _ = reply.send(self.transfer(target));
            }
        }
    }

    fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ClientError> {
        if self.draining.is_some() {
            return Err(shutting_down());
        }
        if self.writes.len() >= MAX_PENDING_WRITES {
            return Err(ClientError::Overloaded(format!("{MAX_PENDING_WRITES} writes are already waiting to commit")));
        }
        self.raw.propose(data).map_err(|e| self.propose_error(e))
    }

    fn propose_error(&self, e: ProposeError) -> ClientError {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader_hint(leader),
            ProposeError::TransferInProgress => ClientError::Unavailable("leadership transfer in progress".into()),
            ProposeError::Backpressure { .. } | ProposeError::TooManyReads { .. } => {
                ClientError::Overloaded(e.to_string())
            }
            ProposeError::NotAVoter(_) => ClientError::Invalid(e.to_string()),
        }
    }

    fn not_leader_hint(&self, leader: Option<NodeId>) -> ClientError {
        let leader = leader.filter(|l| *l != self.id);
        let leader_addr =
            leader.and_then(|l| self.peer_addrs.iter().find(|(id, _)| *id == l).map(|(_, addr)| addr.clone()));
        ClientError::NotLeader { leader, leader_addr }
    }

    fn serve_read(&self, op: &ReadOp) -> Result<ReadOutput, ClientError> {
        let index = self.kv.applied_index();
        match op {
            ReadOp::Get(key) => {
                Ok(ReadOutput::Get(GetReply { value: self.kv.get(key), index, node: self.id, leader: self.leader }))
            }
            ReadOp::Scan { prefix, limit } => {
                let page = self.kv.scan(prefix, *limit).map_err(|e| ClientError::Invalid(e.to_string()))?;
                Ok(ReadOutput::Scan(ScanReply { items: page.items, more: page.more, index, node: self.id }))
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let st = self.raw.status();
        NodeStatus {
            id: self.id,
            role: st.role.as_str().to_string(),
            term: st.term,
            leader: st.leader,
            commit_index: st.commit_index,
            applied_index: self.kv.applied_index(),
            last_index: st.last_index,
            snapshot_index: self.snapshot_index,
            peers: self.peer_addrs.as_ref().clone(),
        }
    }

    fn transfer(&mut self, target: Option<NodeId>) -> Result<NodeId, ClientError> {
        if self.role != Role::Leader {
            return Err(self.not_leader_hint(self.leader));
        }
        let target = match target {
            Some(t) => t,
            None => self
                .best_transferee()
                .ok_or_else(|| ClientError::Unavailable("no other voter to hand leadership to".into()))?,
        };
        self.raw.transfer_leader(target).map_err(|e| self.propose_error(e))?;
        tracing::info!(id = self.id, target, "transferring leadership");
        Ok(target)
    }

    /// The other voter with the highest match index (leader only).
    fn best_transferee(&self) -> Option<NodeId> {
        let st = self.raw.status();
        st.progress
            .iter()
            .filter(|(id, _, _)| *id != self.id && st.conf.voters.contains(id))
            .max_by_key(|(id, matched, _)| (*matched, std::cmp::Reverse(*id)))
            .map(|(id, _, _)| *id)
    }

    fn start_drain(&mut self) {
        let deadline = Instant::now() + self.cfg.election_timeout * 2;
        self.draining = Some(deadline);
        tracing::info!(id = self.id, role = self.role.as_str(), "shutting down");
        self.hand_off_leadership();
    }

    fn hand_off_leadership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(target) = self.best_transferee() {
            match self.raw.transfer_leader(target) {
                Ok(()) => tracing::info!(
                    id = self.id,
                    target,
                    "shutting down: handing leadership to the most caught-up follower"
                ),
                Err(e) => tracing::warn!(id = self.id, target, error = %e, "shutting down: cannot hand off leadership"),
            }
        }
    }

    // ---- Ready ----

    async fn process_readies(&mut self) -> anyhow::Result<()> {
        let mut any = false;
        while self.raw.has_ready() {
            any = true;
            let mut rd = self.raw.ready();
            self.send(std::mem::take(&mut rd.messages));
            if let Some(snap) = &rd.snapshot {
                self.save_snapshot(snap.clone()).await.with_context(|| {
                    format!("saving the snapshot at index {} received from the leader", snap.meta.index)
                })?;
            }
            self.persist(std::mem::take(&mut rd.entries), rd.hard_state, rd.must_sync()).await?;
            self.send(std::mem::take(&mut rd.persisted_messages));
            if let Some(snap) = rd.snapshot {
                self.install_snapshot(snap)?;
            }
            for entry in rd.committed_entries {
                if entry.index <= self.kv.applied_index() {
                    continue;
                }
                let applied = match entry.kind {
                    EntryKind::Noop => {
                        let _ = self.kv.apply_noop(entry.index, entry.term);
                        None
                    }
                    EntryKind::Command => Some(self.kv.apply(entry.index, entry.term, &entry.data)),
                };
                self.complete_writes(entry.index, entry.term, applied);
            }
            for rs in rd.read_states {
                if let Some(read) = self.reads.remove(&rs.ctx) {
                    self.parked.entry(rs.index).or_default().push(read);
                }
            }
            for ctx in rd.dropped_reads {
                if let Some(read) = self.reads.remove(&ctx) {
                    let _ = read.reply.send(Err(self.not_leader_hint(self.leader)));
                }
            }
            self.serve_parked();
            self.log_events(rd.events);
            self.raw.advance();
            let st = self.raw.status();
            self.role = st.role;
            self.leader = st.leader;
        }
        if any {
            self.maybe_snapshot().await?;
        }
        Ok(())
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            match self.peers.get(&m.to) {
                Some(peer) => peer.send(m),
                None => tracing::debug!(to = m.to, "no link to a message's recipient"),
            }
        }
    }

    /// Writes entries and hard state durably. A commit-only hard state change is
    /// deferred to the next write (Raft can re-learn the commit index), so it costs no
    /// fsync of its own.
    async fn persist(
        &mut self,
        entries: Vec<raftkv_raft::Entry>,
        hs: Option<HardState>,
        must_sync: bool,
    ) -> anyhow::Result<()> {
        if entries.is_empty() && !must_sync {
            if hs.is_some() {
                self.deferred_hs = hs;
            }
            return Ok(());
        }
        let hard_state = hs.or(self.deferred_hs.take());
        self.deferred_hs = None;
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        self.write(WriteRequest { entries, hard_state }).await
    }

    fn writer(&self) -> anyhow::Result<&GroupCommitWriter> {
        self.writer.as_ref().ok_or_else(|| anyhow!("the storage writer is closed"))
    }

    async fn write(&self, request: WriteRequest) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.writer()?.submit(
            request,
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()));
            }),
        );
        let result = rx.await.map_err(|_| anyhow!("the storage writer stopped"))?;
        result.context("writing the Raft log")
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let Some(writer) = &self.writer else { return Err(StorageError::Closed) };
        writer.save_snapshot(
            snapshot,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> anyhow::Result<()> {
        let kv = KvStateMachine::restore(&snap.data)
            .with_context(|| format!("the snapshot at index {} from the leader cannot be restored", snap.meta.index))?;
        if kv.applied_index() != snap.meta.index {
            bail!(
                "the snapshot at index {} from the leader holds a state machine at index {}",
                snap.meta.index,
                kv.applied_index()
            );
        }
        self.kv = kv;
        self.snapshot_index = snap.meta.index;
        // Writes at or below the snapshot: whether they were the entries committed there
        // cannot be told any more.
        while let Some(w) = self.writes.first_entry() {
            if *w.key() > snap.meta.index {
                break;
            }
            let _ = w.remove().reply.send(Err(ClientError::Timeout));
        }
        tracing::info!(
            id = self.id,
            index = snap.meta.index,
            term = snap.meta.term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Answers the write waiting at `index` (and any skipped below it).
    fn complete_writes(&mut self, index: Index, term: Term, mut applied: Option<Applied>) {
        while let Some(w) = self.writes.first_entry() {
            let at = *w.key();
            if at > index {
                break;
            }
            let w = w.remove();
            let result = if at < index {
                Err(ClientError::Timeout)
            } else if w.term != term {
                Err(ClientError::Unavailable(
                    "leadership changed before the write committed; it was not applied".into(),
                ))
            } else {
                match applied.take() {
                    Some(a) => match a.result {
                        Ok(result) => Ok(WriteReply {
                            index: a.index,
                            term: a.term,
                            leader: self.id,
                            result,
                            duplicate: a.duplicate,
                        }),
                        Err(e @ CommandError::IndexNotAfterApplied { .. }) => Err(ClientError::Internal(e.to_string())),
                        Err(e) => Err(ClientError::Invalid(e.to_string())),
                    },
                    None => Err(ClientError::Internal(format!("entry {index} carried no command"))),
                }
            };
            let _ = w.reply.send(result);
        }
    }

    fn serve_parked(&mut self) {
        let applied = self.kv.applied_index();
        while let Some(entry) = self.parked.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for read in entry.remove() {
                let _ = read.reply.send(self.serve_read(&read.op));
            }
        }
    }

    fn log_events(&mut self, events: Vec<Event>) {
        let id = self.id;
        for event in events {
            match event {
                Event::ElectionStarted { term, pre_vote, transfer } => {
                    tracing::info!(id, term, pre_vote, transfer, "election started");
                }
                Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
                    tracing::info!(
                        id,
                        term,
                        pre_vote,
                        outcome = outcome.as_str(),
                        granted,
                        needed,
                        "election finished"
                    );
                }
                Event::BecameLeader { term } => tracing::info!(id, term, "became leader"),
                Event::SteppedDown { term, reason } => {
                    tracing::info!(id, term, reason = reason.as_str(), "stepped down as leader");
                }
                Event::TermChanged { from, to } => tracing::debug!(id, from, to, "term changed"),
                Event::LeaderKnown { term, leader } => tracing::info!(id, term, leader, "following leader"),
                Event::Committed { first, last, term, entries, bytes, acked_by } => {
                    tracing::debug!(id, first, last, term, entries, bytes, ?acked_by, "committed");
                }
                Event::SnapshotInstalled { index, term } => {
                    tracing::info!(id, index, term, "accepted a snapshot from the leader");
                }
                Event::TransferAborted { target } => {
                    tracing::warn!(id, target, "leadership transfer did not finish within an election timeout");
                    if self.draining.is_some() {
                        self.hand_off_leadership();
                    }
                }
            }
        }
    }

    /// Snapshots the state machine once enough entries were applied since the last one.
    async fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let every = self.cfg.snapshot_entries;
        let applied = self.kv.applied_index();
        if every == 0 || applied < self.snapshot_index.saturating_add(every) {
            return Ok(());
        }
        let st = self.raw.status();
        if applied > st.applied_index {
            return Ok(());
        }
        let snapshot = Snapshot {
            meta: SnapshotMeta { index: applied, term: self.kv.applied_term(), conf: st.conf },
            data: self.kv.snapshot(),
        };
        let bytes = snapshot.data.len();
        match self.save_snapshot(snapshot.clone()).await {
            Ok(()) => {}
            Err(e @ StorageError::Invalid { .. }) => {
                tracing::warn!(id = self.id, index = applied, error = %e, "snapshot not saved");
                self.snapshot_index = applied;
                return Ok(());
            }
            Err(e) => return Err(e).context(format!("saving a snapshot at index {applied}")),
        }
        self.raw.compact(snapshot);
        self.snapshot_index = applied;
        tracing::info!(id = self.id, index = applied, bytes, "saved a snapshot and compacted the log");
        Ok(())
    }

    // ---- shutdown ----

    async fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        for (_, w) in std::mem::take(&mut self.writes) {
            let _ = w.reply.send(Err(ClientError::Timeout));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            let _ = r.reply.send(Err(shutting_down()));
        }
        for (_, reads) in std::mem::take(&mut self.parked) {
            for r in reads {
                let _ = r.reply.send(Err(shutting_down()));
            }
        }
        if result.is_ok()
            && let Some(hs) = self.deferred_hs.take()
            && let Err(e) = self.write(WriteRequest { entries: Vec::new(), hard_state: Some(hs) }).await
        {
            tracing::warn!(id = self.id, error = %e, "could not write the last commit index");
        }
        let dropped: u64 =
            self.peers.values().map(|p| p.stats().dropped.load(std::sync::atomic::Ordering::Relaxed)).sum();
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
}

fn shutting_down() -> ClientError {
    ClientError::Unavailable("the node is shutting down".into())
}
