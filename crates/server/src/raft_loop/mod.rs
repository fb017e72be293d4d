//! The Raft loop: one task owns the [`Replica`] (the Raft core, the state machine and
//! the membership, with their policies) and carries out its I/O: the storage writer,
//! the peer links, the clients waiting for answers, traces and logs.
//!
//! - [`intake`]: client requests and peer batches in;
//! - [`ready`]: each Ready's I/O steps, in the replica's order;
//! - [`replies`]: answers to clients once their entries are applied or reads served;
//! - [`snapshot`]: snapshot files;
//! - [`links`]: the peer links, following the configuration;
//! - [`events`]: the core's events as spans and log lines;
//! - [`shutdown`]: the end of the loop.

mod events;
mod intake;
mod links;
mod ready;
mod replies;
mod shutdown;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raftkv_raft::{HardState, Index, NodeId};
use raftkv_replica::{Replica, Stop};
use raftkv_storage::GroupCommitWriter;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::admin::AdminState;
use crate::metrics::gauge_value;
use crate::peer::LinkContext;
use crate::service::Shared;
use crate::trace::ElectionTrace;

pub(crate) use intake::{RaftBatch, ReadOp, ReadOutput, Request};

/// Inputs handled per loop iteration from each channel before the Ready is processed.
const MAX_DRAIN: usize = 1024;
/// Writes waiting to commit; more are refused with `Overloaded`.
const MAX_PENDING_WRITES: usize = 100_000;
/// Every this many ticks, forget requests whose client stopped waiting.
const SWEEP_TICKS: u64 = 10;

/// Settings of the loop that are not the replica's.
pub(crate) struct LoopConfig {
    pub tick: Duration,
    pub election_timeout: Duration,
}

/// The state the Raft loop owns besides the replica.
pub(crate) struct RaftLoop {
    id: NodeId,
    cfg: LoopConfig,
    replica: Replica,
    writer: Option<GroupCommitWriter>,
    peers: HashMap<NodeId, links::Peer>,
    shared: Arc<Shared>,
    link: LinkContext,
    /// Clients waiting for their entries, reads and membership changes.
    pending: replies::Pending,
    /// A commit-only hard state not yet written: it needs no fsync of its own and rides
    /// along with the next write (or is flushed on the next tick).
    deferred_hs: Option<HardState>,
    /// The hard state last written (what the disk holds).
    durable_hs: HardState,
    flush_due: bool,
    ticks: u64,
    /// The election this node runs, from its pre-vote to its end.
    election: Option<ElectionTrace>,
    /// The span of the election this node won, open until its first commit (of `Term`).
    won_election: Option<(tracing::Span, raftkv_raft::Term)>,
    /// This node's last step-down, linked by the next election it starts.
    last_step_down: Option<raftkv_telemetry::opentelemetry::trace::SpanContext>,
    /// Spans of received batches, ended once what they brought is persisted.
    inbound_spans: Vec<tracing::Span>,
    /// Received batches whose senders wait for this node's responses; answered once
    /// the next Ready is persisted (at most one per batch stepped since).
    batch_replies: Vec<intake::BatchReply>,
    /// What the admin port reports (probes and metrics).
    admin: Arc<AdminState>,
    /// The leader last published (to count changes).
    known_leader: Option<NodeId>,
}

impl RaftLoop {
    /// Starts the peer links of the current configuration; `link` is theirs.
    pub fn new(
        replica: Replica,
        writer: GroupCommitWriter,
        shared: Arc<Shared>,
        link: LinkContext,
        cfg: LoopConfig,
    ) -> RaftLoop {
        let durable_hs = replica.raw().handed_out_hard_state();
        let mut raft_loop = RaftLoop {
            id: replica.id(),
            cfg,
            replica,
            writer: Some(writer),
            peers: HashMap::new(),
            shared,
            link,
            pending: replies::Pending::default(),
            deferred_hs: None,
            durable_hs,
            flush_due: false,
            ticks: 0,
            election: None,
            won_election: None,
            last_step_down: None,
            inbound_spans: Vec::new(),
            batch_replies: Vec::new(),
            admin: AdminState::new(),
            known_leader: None,
        };
        raft_loop.sync_links();
        raft_loop
    }

    /// Reports readiness and metrics to `admin` from now on.
    pub fn with_admin(mut self, admin: Arc<AdminState>) -> RaftLoop {
        self.admin = admin;
        self.publish_status();
        self
    }

    /// Copies the replica's gauges to the admin port's metrics; counts a change of the
    /// known leader.
    fn publish_status(&mut self) {
        let st = self.replica.status();
        let m = &self.admin.metrics;
        m.term.set(gauge_value(st.term));
        m.set_role(st.role);
        m.leader_id.set(gauge_value(st.leader.unwrap_or(0)));
        m.has_leader.set(i64::from(st.leader.is_some()));
        m.commit_index.set(gauge_value(st.commit_index));
        m.applied_index.set(gauge_value(self.replica.applied_index()));
        m.last_index.set(gauge_value(st.last_index));
        m.snapshot_index.set(gauge_value(self.replica.snapshot_index()));
        m.pending_writes.set(gauge_value(self.pending.writes.len() as u64));
        m.recovering.set(i64::from(st.recovering));
        if st.leader.is_some() && st.leader != self.known_leader {
            m.leader_changes.inc();
        }
        self.known_leader = st.leader;
        self.shared.set_leader(st.leader);
    }

    /// Runs until `shutdown` resolves (then hands off leadership, bounded), this node is
    /// removed from the cluster (`removed_rx` receives peers that said so), or storage
    /// fails. Returns the storage or state machine failure that stopped it, if any.
    pub async fn run(
        mut self,
        mut raft_rx: mpsc::Receiver<RaftBatch>,
        mut client_rx: mpsc::Receiver<Request>,
        mut removed_rx: mpsc::Receiver<NodeId>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Stop> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        // Why Delay: after a stall (a slow fsync), a burst of ticks would be handled
        // before the peer messages queued meanwhile and could start a needless election.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            if let Some(until) = self.shared.faults.paused_until() {
                self.stay_paused(until, &mut shutdown).await;
                continue;
            }
            tokio::select! {
                () = &mut shutdown, if !self.replica.is_draining() => self.start_drain(),
                _ = ticker.tick() => self.on_tick(),
                Some(batch) = raft_rx.recv() => self.step_batch(batch),
                Some(request) = client_rx.recv() => self.handle_request(request),
                Some(by) = removed_rx.recv() => self.removed_by_peer(by),
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
            if let Err(e) = self.flush_deferred_hard_state().await {
                break Err(e);
            }
            if let Some(stop) = self.replica.stop_decision() {
                shutdown::log_stop(self.id, stop);
                break Ok(stop);
            }
        };
        self.finish(result).await
    }

    /// An injected pause: no ticks, no steps, until `until`, an early heal, or a
    /// shutdown (which heals every fault: none outlives the process).
    async fn stay_paused(
        &mut self,
        until: tokio::time::Instant,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) {
        let faults = self.shared.faults.clone();
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = faults.changed.notified() => {}
            () = shutdown.as_mut(), if !self.replica.is_draining() => {
                faults.heal_all();
                self.start_drain();
            }
        }
    }

    fn on_tick(&mut self) {
        let report = self.replica.tick();
        self.ticks += 1;
        self.admin.ticked();
        self.flush_due = self.deferred_hs.is_some();
        for (node, index) in &report.promoted {
            tracing::info!(id = self.id, node, index, "promoting a caught-up learner to voter");
        }
        for (node, why) in &report.not_promoted {
            tracing::debug!(id = self.id, node, error = %why, "cannot promote a learner yet");
        }
        if !report.probes.is_empty() {
            tracing::debug!(id = self.id, "no leader heard from for a while; probing peers");
            self.send(report.probes);
        }
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            self.pending.sweep();
        }
    }

    fn start_drain(&mut self) {
        self.admin.set_draining();
        tracing::info!(id = self.id, role = self.replica.status().role.as_str(), "shutting down");
        log_hand_off(self.id, self.replica.start_drain());
    }

    fn removed_by_peer(&mut self, by: NodeId) {
        if !self.replica.is_removed() {
            tracing::warn!(id = self.id, by, "a peer says this node was removed from the cluster: stopping");
            self.replica.removed_by_peer(by);
        }
    }

    /// Writes a commit-only hard state that waited a tick for a write to ride along.
    async fn flush_deferred_hard_state(&mut self) -> anyhow::Result<()> {
        if std::mem::take(&mut self.flush_due)
            && let Some(hs) = self.deferred_hs.take()
        {
            let request = raftkv_storage::WriteRequest { entries: Vec::new(), hard_state: Some(hs) };
            self.write(request, ready::WriteOn::WriterThread).await?;
            self.durable_hs = hs;
        }
        Ok(())
    }
}

/// Logs what a shutdown hand-off did.
fn log_hand_off(id: NodeId, handed: Result<Option<NodeId>, String>) {
    match handed {
        Ok(Some(target)) => {
            tracing::info!(id, target, "shutting down: handing leadership to the most caught-up follower")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(id, error = %e, "shutting down: cannot hand off leadership"),
    }
}

/// The writes of `map` at or below `index`, in order (a helper of the reply maps).
fn take_through<T>(map: &mut BTreeMap<Index, T>, index: Index) -> Vec<(Index, T)> {
    let mut out = Vec::new();
    while let Some(e) = map.first_entry() {
        if *e.key() > index {
            break;
        }
        let at = *e.key();
        out.push((at, e.remove()));
    }
    out
}
