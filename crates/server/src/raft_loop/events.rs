//! The core's events as spans (`raft.election` with its events, `raft.commit`, and
//! the others as events on the election span when one is open, else on a
//! `raft.state_change` span) and as log lines and counters.

use raftkv_raft::{ElectionOutcome, Event, Index, NodeId, StepDownReason, Term, TraceTag};
use raftkv_telemetry::OpenTelemetrySpanExt as _;
use raftkv_telemetry::opentelemetry::KeyValue;
use raftkv_telemetry::opentelemetry::trace::SpanContext;
use tokio::time::Instant;

use super::RaftLoop;
use crate::trace::{self, ElectionTrace};

impl RaftLoop {
    /// Turns the events of a Ready into spans, before anything of it is persisted.
    pub(super) fn trace_events(&mut self, events: &[Event]) {
        // An election that ended in this Ready still takes the events that follow
        // (BecameLeader comes after ElectionFinished).
        let mut ended: Option<tracing::Span> = None;
        let mut state: Option<tracing::Span> = None;
        for event in events {
            match event {
                Event::ElectionStarted { term, pre_vote, transfer, cause } => {
                    ended = None;
                    self.election_started(*term, *pre_vote, *transfer, *cause);
                }
                Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
                    if let Some(e) = self.election_finished(*term, *pre_vote, *outcome, *granted, *needed) {
                        ended = Some(e);
                    }
                }
                Event::VoteDecided { candidate, granted, reason, own_last, trace: tag } => {
                    trace::vote_request(self.id, candidate, *granted, *reason, *own_last, *tag);
                }
                Event::VoteReceived { from, term, pre_vote, granted } => {
                    if let Some(e) = &self.election {
                        let attributes = vec![
                            trace::kv("from", *from),
                            trace::kv("term", *term),
                            KeyValue::new("pre_vote", *pre_vote),
                            KeyValue::new("granted", *granted),
                        ];
                        trace::event(&e.span, "raft.vote_received", attributes);
                    }
                }
                Event::SteppedDown { term, reason, cause } => self.stepped_down(*term, *reason, *cause),
                Event::Committed { first, last, term, entries, bytes, acked_by } => {
                    self.trace_commit(*first, *last, *term, *entries, *bytes, acked_by);
                }
                other => {
                    let Some((name, attributes)) = event_span_fields(self.id, other) else { continue };
                    let span = match (&self.election, &ended) {
                        (Some(e), _) => &e.span,
                        (None, Some(span)) => span,
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

    /// Opens the election span (at its pre-vote), linked to what caused it: a
    /// leadership transfer's TimeoutNow, or this node's own step-down.
    fn election_started(&mut self, term: Term, pre_vote: bool, transfer: bool, cause: Option<TraceTag>) {
        let id = self.id;
        self.won_election = None;
        if self.election.is_none() {
            let e = ElectionTrace::start(id, term, pre_vote, transfer);
            if let Some(tag) = cause {
                e.span.add_link_with_attributes(trace::from_tag(tag), vec![KeyValue::new("cause", "timeout_now")]);
            }
            if let Some(sc) = self.last_step_down.take() {
                e.span.add_link_with_attributes(sc, vec![KeyValue::new("cause", "step_down")]);
            }
            for sc in self.shared.faults.active_spans() {
                e.span.add_link_with_attributes(sc, vec![KeyValue::new("cause", "fault")]);
            }
            self.election = Some(e);
        }
        let election = self.election.as_ref().expect("just set");
        election.span.record("term", term);
        let name = if pre_vote { "raft.pre_vote.started" } else { "raft.vote.started" };
        trace::event(&election.span, name, vec![trace::kv("term", term), KeyValue::new("transfer", transfer)]);
    }

    /// Records the end of a (pre-)vote; returns the election span if it ended. A won
    /// election's span stays open until the new leader's first commit, which it links.
    fn election_finished(
        &mut self,
        term: Term,
        pre_vote: bool,
        outcome: ElectionOutcome,
        granted: usize,
        needed: usize,
    ) -> Option<tracing::Span> {
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
        let span = self.election.take()?.span;
        if outcome == ElectionOutcome::Won {
            self.won_election = Some((span.clone(), term));
        }
        Some(span)
    }

    /// A `raft.step_down` span, linked to the election that caused it (a higher-term
    /// vote request) and to the faults active here; this node's next election links it.
    fn stepped_down(&mut self, term: Term, reason: StepDownReason, cause: Option<TraceTag>) {
        self.won_election = None;
        let mut links: Vec<(SpanContext, &'static str)> = Vec::new();
        if let Some(tag) = cause {
            links.push((trace::from_tag(tag), "election"));
        }
        links.extend(self.shared.faults.active_spans().into_iter().map(|sc| (sc, "fault")));
        self.last_step_down = Some(trace::step_down(self.id, term, reason.as_str(), links));
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
        let election = match &self.won_election {
            Some((span, won)) if *won == term => Some(span.clone()),
            _ => None,
        };
        let election_sc = election.as_ref().and_then(|span| trace::sampled(&raftkv_telemetry::context_of(span)));
        let commit_sc = trace::commit(trace::CommitInfo {
            node: self.id,
            first,
            last,
            term,
            entries,
            bytes,
            acked_by,
            proposed_at: proposed_at.map(Instant::into_std),
            requests,
            election: election_sc,
        });
        // The election ends with its winner's first commit, which it links.
        if let Some(span) = election {
            span.record("first_commit_index", last);
            span.add_link_with_attributes(commit_sc, vec![KeyValue::new("first_commit", true)]);
            self.won_election = None;
        }
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
        Event::ElectionStarted { .. }
        | Event::ElectionFinished { .. }
        | Event::Committed { .. }
        | Event::VoteDecided { .. }
        | Event::VoteReceived { .. }
        | Event::SteppedDown { .. } => return None,
    })
}

/// One log line per event (debug for the frequent ones).
fn log_event(id: NodeId, event: &Event) {
    match *event {
        Event::ElectionStarted { term, pre_vote, transfer, .. } => {
            tracing::info!(id, term, pre_vote, transfer, "election started")
        }
        Event::VoteDecided { candidate: c, granted, reason, own_last, .. } => tracing::debug!(
            id,
            candidate = c.id,
            term = c.term,
            pre_vote = c.pre_vote,
            granted,
            reason = reason.as_str(),
            candidate_last = %format_args!("{}/{}", c.last.index, c.last.term),
            own_last = %format_args!("{}/{}", own_last.index, own_last.term),
            "decided on a vote request"
        ),
        Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => {
            tracing::info!(id, term, pre_vote, outcome = outcome.as_str(), granted, needed, "election finished")
        }
        Event::BecameLeader { term } => tracing::info!(id, term, "became leader"),
        Event::SteppedDown { term, reason, .. } => {
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
