//! The core's events as spans (`raft.election` with its events, `raft.commit`, and
//! the others as events on the election span when one is open, else on a
//! `raft.state_change` span) and as log lines and counters.

use raftkv_raft::{ElectionOutcome, Event, Index, NodeId, Term};
use raftkv_telemetry::opentelemetry::KeyValue;
use tokio::time::Instant;

use super::RaftLoop;
use crate::trace::{self, ElectionTrace};

impl RaftLoop {
    /// Turns the events of a Ready into spans, before anything of it is persisted.
    pub(super) fn trace_events(&mut self, events: &[Event]) {
        // An election that ended in this Ready still takes the events that follow
        // (BecameLeader comes after ElectionFinished).
        let mut ended: Option<ElectionTrace> = None;
        let mut state: Option<tracing::Span> = None;
        for event in events {
            match event {
                Event::ElectionStarted { term, pre_vote, transfer } => {
                    ended = None;
                    self.election_started(*term, *pre_vote, *transfer);
                }
                Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
                    if let Some(e) = self.election_finished(*term, *pre_vote, *outcome, *granted, *needed) {
                        ended = Some(e);
                    }
                }
                Event::Committed { first, last, term, entries, bytes, acked_by } => {
                    self.trace_commit(*first, *last, *term, *entries, *bytes, acked_by);
                }
                other => {
                    let Some((name, attributes)) = event_span_fields(self.id, other) else { continue };
                    let span = match (&self.election, &ended) {
                        (Some(e), _) | (None, Some(e)) => &e.span,
                        (None, None) => state.get_or_insert_with(|| {
                            let term = self.replica.status().term;
                            tracing::info_span!(parent: None, "raft.state_change", node = self.id, term)
                        }),
                    };
                    trace::event(span, name, attributes);
                }
            }
        }
    }

    fn election_started(&mut self, term: Term, pre_vote: bool, transfer: bool) {
        let id = self.id;
        let election = self.election.get_or_insert_with(|| ElectionTrace::start(id, term, pre_vote, transfer));
        election.span.record("term", term);
        let name = if pre_vote { "raft.pre_vote.started" } else { "raft.vote.started" };
        trace::event(&election.span, name, vec![trace::kv("term", term), KeyValue::new("transfer", transfer)]);
    }

    /// Records the end of a (pre-)vote; returns the election span if it ended.
    fn election_finished(
        &mut self,
        term: Term,
        pre_vote: bool,
        outcome: ElectionOutcome,
        granted: usize,
        needed: usize,
    ) -> Option<ElectionTrace> {
        let election = self.election.as_ref()?;
        let name = if pre_vote { "raft.pre_vote.finished" } else { "raft.vote.finished" };
        let attributes = vec![
            trace::kv("term", term),
            KeyValue::new("outcome", outcome.as_str()),
            trace::kv("granted", granted as u64),
            trace::kv("needed", needed as u64),
        ];
        trace::event(&election.span, name, attributes);
        if pre_vote && outcome == ElectionOutcome::Won {
            election.span.record("pre_vote_granted", granted as u64);
            return None;
        }
        election.finish(term, outcome.as_str(), granted, needed);
        self.election.take()
    }

    /// One `raft.commit` span per committed batch (leader only), and the end of the
    /// committed writes' `raft.propose` spans.
    fn trace_commit(&mut self, first: Index, last: Index, term: Term, entries: u64, bytes: u64, acked_by: &[NodeId]) {
        let mut proposed_at: Option<Instant> = None;
        let mut requests = Vec::new();
        for (index, w) in self.pending.writes.range_mut(first..=last) {
            proposed_at = Some(proposed_at.map_or(w.proposed_at, |p| p.min(w.proposed_at)));
            if let Some(t) = &mut w.trace {
                requests.push((*index, t.request.clone()));
                if w.term == term {
                    t.end_propose(true);
                }
            }
        }
        trace::commit(trace::CommitInfo {
            node: self.id,
            first,
            last,
            term,
            entries,
            bytes,
            acked_by,
            proposed_at: proposed_at.map(Instant::into_std),
            requests,
        });
    }

    /// Logs a finished Ready's events and counts them.
    pub(super) fn log_events(&mut self, events: Vec<Event>) {
        for event in events {
            let counter = match event {
                Event::ElectionStarted { .. } => Some(&self.admin.metrics.elections_started),
                Event::BecameLeader { .. } => Some(&self.admin.metrics.became_leader),
                Event::SnapshotRefused { .. } => Some(&self.admin.metrics.snapshots_refused),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.inc();
            }
            log_event(self.id, &event);
        }
    }
}

/// The span event name and attributes of the events that are not an election's.
fn event_span_fields(id: NodeId, event: &Event) -> Option<(&'static str, Vec<KeyValue>)> {
    let node = trace::kv("node", id);
    Some(match *event {
        Event::BecameLeader { term } => ("raft.leader_elected", vec![node, trace::kv("term", term)]),
        Event::SteppedDown { term, reason } => {
            ("raft.step_down", vec![node, trace::kv("term", term), KeyValue::new("reason", reason.as_str())])
        }
        Event::TermChanged { from, to } => {
            ("raft.term_change", vec![node, trace::kv("from", from), trace::kv("to", to)])
        }
        Event::LeaderKnown { term, leader } => {
            ("raft.leader_known", vec![node, trace::kv("term", term), trace::kv("leader", leader)])
        }
        Event::TransferAborted { target } => ("raft.transfer_aborted", vec![node, trace::kv("target", target)]),
        Event::ConfChanged { index, .. } => ("raft.conf_changed", vec![node, trace::kv("index", index)]),
        Event::PeerLostLog { peer, match_index, last_index } => (
            "raft.peer_lost_log",
            vec![
                node,
                trace::kv("peer", peer),
                trace::kv("match_index", match_index),
                trace::kv("last_index", last_index),
            ],
        ),
        Event::SnapshotInstalled { index, term } => {
            ("raft.snapshot_installed", vec![node, trace::kv("index", index), trace::kv("term", term)])
        }
        Event::RecoveryStarted { lost_state, .. } => {
            ("raft.recovery_started", vec![node, KeyValue::new("lost_state", lost_state)])
        }
        Event::RecoveryFinished { term, index } => {
            ("raft.recovery_finished", vec![node, trace::kv("term", term), trace::kv("marker_index", index)])
        }
        Event::RecoveryMarked { peer, index } => {
            ("raft.recovery_marked", vec![node, trace::kv("peer", peer), trace::kv("index", index)])
        }
        Event::SnapshotRefused { peer, index, bytes, limit, .. } => (
            "raft.snapshot_refused",
            vec![
                node,
                trace::kv("peer", peer),
                trace::kv("index", index),
                trace::kv("bytes", bytes),
                trace::kv("limit", limit),
            ],
        ),
        Event::ElectionStarted { .. } | Event::ElectionFinished { .. } | Event::Committed { .. } => return None,
    })
}

/// One log line per event (debug for the frequent ones).
fn log_event(id: NodeId, event: &Event) {
    match *event {
        Event::ElectionStarted { term, pre_vote, transfer } => {
            tracing::info!(id, term, pre_vote, transfer, "election started")
        }
        Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
            tracing::info!(id, term, pre_vote, outcome = outcome.as_str(), granted, needed, "election finished")
        }
        Event::BecameLeader { term } => tracing::info!(id, term, "became leader"),
        Event::SteppedDown { term, reason } => {
            tracing::info!(id, term, reason = reason.as_str(), "stepped down as leader")
        }
        Event::TermChanged { from, to } => tracing::debug!(id, from, to, "term changed"),
        Event::LeaderKnown { term, leader } => tracing::info!(id, term, leader, "following leader"),
        Event::Committed { first, last, term, entries, bytes, ref acked_by } => {
            tracing::debug!(id, first, last, term, entries, bytes, ?acked_by, "committed")
        }
        Event::SnapshotInstalled { index, term } => {
            tracing::info!(id, index, term, "accepted a snapshot from the leader")
        }
        Event::ConfChanged { index, ref conf } => {
            tracing::info!(id, index, voters = ?conf.voters, learners = ?conf.learners, "configuration changed")
        }
        Event::PeerLostLog { peer, match_index, last_index } => tracing::warn!(
            id,
            peer,
            match_index,
            last_index,
            "a follower lost log entries it had acknowledged (wiped disk?); resending from its log's end"
        ),
        Event::TransferAborted { target } => {
            tracing::warn!(id, target, "leadership transfer did not finish within an election timeout")
        }
        _ => log_recovery_event(id, event),
    }
}

/// The log lines of recoveries and refused snapshots.
fn log_recovery_event(id: NodeId, event: &Event) {
    match *event {
        Event::RecoveryStarted { nonce, lost_state } => {
            let why = if lost_state { "the data dir held no Raft state" } else { "a recovery was under way" };
            tracing::warn!(
                id,
                nonce,
                "recovering from lost state ({why}): this node will not vote, campaign or count toward a \
                 quorum until a leader's recovery marker for it commits"
            );
        }
        Event::RecoveryFinished { term, index: 0 } => {
            tracing::info!(id, term, "recovery ended: every founding member is new, the cluster is new")
        }
        Event::RecoveryFinished { term, index } => {
            tracing::info!(id, term, marker_index = index, "recovery ended: caught up from the leader")
        }
        Event::RecoveryMarked { peer, index } => {
            tracing::info!(id, peer, index, "a follower is recovering from lost state: appended its marker")
        }
        // One error per follower and snapshot; the retries say so quietly.
        Event::SnapshotRefused { peer, index, bytes, limit, refusals: 1, .. } => tracing::error!(
            id,
            peer,
            snapshot_index = index,
            bytes,
            limit,
            "follower {peer} refused the snapshot at index {index}: {bytes} bytes is over its snapshot size \
             limit of {limit} bytes; it cannot catch up until its limit is raised. Retrying with backoff"
        ),
        Event::SnapshotRefused { peer, bytes, limit, refusals, retry_in_ticks, .. } => {
            tracing::debug!(id, peer, bytes, limit, refusals, retry_in_ticks, "snapshot refused again")
        }
        _ => {}
    }
}
