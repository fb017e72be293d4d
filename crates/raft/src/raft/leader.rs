//! A leader's side: answers from followers, commits, replication, snapshot shipping,
//! ReadIndex rounds and the hand-off of a leader that removed itself.

use super::*;

impl Raft {
    // ---- leader side ----

    pub(super) fn step_leader(&mut self, m: Message) -> Result<(), StepError> {
        let Some(progress) = self.tracker.get_mut(m.from) else { return Ok(()) };
        // A recovering node's word counts toward no quorum, check-quorum included.
        let counted =
            m.recovery.is_none() || self.cfg.planted_bug == Some(crate::config::PlantedBug::CountRecoveringAcks);
        progress.recovering = !counted;
        if counted {
            progress.recent_active = true;
        }
        if let Some(nonce) = m.recovery {
            self.mark_recovery(m.from, nonce);
        }
        match m.body {
            // Within one term a leader's log only grows, so an acknowledgement beyond its
            // last index is forged or corrupt; counting it could commit what no majority holds.
            MessageBody::AppendEntriesResponse { success: true, index, .. } if index > self.log.last_index() => {
                return Err(StepError::Malformed {
                    kind: "AppendEntriesResponse",
                    reason: format!(
                        "acknowledges index {index} beyond the leader's last index {}",
                        self.log.last_index()
                    ),
                });
            }
            MessageBody::AppendEntriesResponse { success: true, index, .. } => {
                self.handle_append_success(m.from, index, counted)
            }
            MessageBody::AppendEntriesResponse { success: false, index, reject_hint, hint_term } => {
                let next_probe =
                    if hint_term > 0 { self.log.find_conflict_by_term(reject_hint, hint_term) } else { reject_hint };
                let pr = self.tracker.get_mut(m.from).expect("checked");
                if pr.maybe_decrease_to(index, next_probe) {
                    if pr.state == ProgressState::Replicate {
                        pr.become_probe();
                    }
                    self.send_append(m.from, true);
                }
            }
            MessageBody::HeartbeatResponse { read_round, missing_from } => {
                if let Some(next) = missing_from {
                    self.peer_lost_log(m.from, next);
                }
                self.handle_heartbeat_response(m.from, read_round, counted)
            }
            MessageBody::InstallSnapshotResponse { meta_index, next_offset, done, rejected, too_large } => {
                let answer = SnapshotAnswer { meta_index, next_offset, done, rejected, too_large, counted };
                self.handle_snapshot_response(m.from, answer)
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn handle_append_success(&mut self, from: NodeId, index: Index, counted: bool) {
        let pr = self.tracker.get_mut(from).expect("known peer");
        if !pr.maybe_update(index, counted) {
            if counted && self.maybe_commit() {
                self.broadcast_append();
            }
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot { index: snap } if pr.match_index >= snap => pr.become_probe(),
            ProgressState::Replicate => pr.inflights.free_to(index),
            ProgressState::Snapshot { .. } => {}
        }
        if self.maybe_commit() {
            self.broadcast_append();
        }
        while self.send_append(from, false) {}
        if self.lead_transferee == Some(from)
            && self.tracker.get(from).is_some_and(|p| p.match_index == self.log.last_index())
        {
            self.send(from, MessageBody::TimeoutNow);
            if self.removal_committed() {
                self.step_down_removed();
                return;
            }
        }
        self.maybe_hand_off_removed();
    }

    /// This leader is not a voter of its configuration, and that configuration has
    /// committed.
    pub(super) fn removal_committed(&self) -> bool {
        self.role == Role::Leader && !self.tracker.is_voter(self.id) && self.log.conf_index() <= self.log.committed
    }

    /// A leader that removed itself keeps leading (without counting itself) until the
    /// removal commits; then it hands leadership to the most caught-up voter and steps
    /// down. If that voter lags, it first catches up, as in a leadership transfer.
    pub(super) fn maybe_hand_off_removed(&mut self) {
        if !self.removal_committed() || self.lead_transferee.is_some() {
            return;
        }
        let best = self
            .tracker
            .conf()
            .voters
            .iter()
            .filter(|&&id| self.tracker.get(id).is_some_and(|p| !p.recovering))
            .map(|&id| (self.tracker.get(id).map_or(0, |p| p.match_index), std::cmp::Reverse(id)))
            .max();
        let Some((matched, std::cmp::Reverse(target))) = best else {
            self.step_down_removed();
            return;
        };
        if matched == self.log.last_index() {
            self.send(target, MessageBody::TimeoutNow);
            self.step_down_removed();
        } else {
            self.lead_transferee = Some(target);
            self.election_elapsed = 0;
            self.send_append(target, true);
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64, counted: bool) {
        let pr = self.tracker.get_mut(from).expect("known peer");
        if counted {
            pr.read_round_acked = pr.read_round_acked.max(read_round);
        }
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
            pr.inflights.free_first();
        }
        if pr.match_index < self.log.last_index() {
            self.send_append(from, true);
        }
        self.release_confirmed_reads();
    }

    /// A follower no longer has entries it acknowledged (its disk was wiped or lost).
    /// Forget what it matched and probe from where its log now ends; the normal
    /// backtracking, or a snapshot, brings it back.
    pub(super) fn peer_lost_log(&mut self, peer: NodeId, next: Index) {
        let Some(pr) = self.tracker.get_mut(peer) else { return };
        if next > pr.match_index {
            return;
        }
        self.events.push(Event::PeerLostLog { peer, match_index: pr.match_index, last_index: next - 1 });
        pr.reset_after_lost_log(next);
    }

    pub(super) fn release_confirmed_reads(&mut self) {
        let confirmed = self.tracker.quorum_value(|p| p.read_round_acked);
        let released = self.read_only.release(confirmed);
        self.read_states.extend(released);
    }

    pub(super) fn handle_snapshot_response(&mut self, from: NodeId, a: SnapshotAnswer) {
        let pr = self.tracker.get_mut(from).expect("known peer");
        if pr.state != (ProgressState::Snapshot { index: a.meta_index }) {
            return;
        }
        if a.done && !a.rejected {
            pr.maybe_update(a.meta_index, a.counted);
            pr.snapshot_refusals = 0;
            pr.become_probe();
            // The snapshot covers the marker of a recovering peer: the peer cannot see
            // it in its log, so it gets a new one (see `mark_recovery`).
            if pr.recovery_marker.is_some_and(|(_, index)| index <= a.meta_index) {
                pr.recovery_marker = None;
            }
            if a.counted && self.maybe_commit() {
                self.broadcast_append();
            }
            self.send_append(from, true);
            return;
        }
        if let Some(limit) = a.too_large {
            // Resending at once would ping-pong for ever: wait, longer each time.
            pr.snapshot_refusals = pr.snapshot_refusals.saturating_add(1);
            let backoff = (self.cfg.election_tick << pr.snapshot_refusals.min(6)).min(MAX_SNAPSHOT_BACKOFF_TICKS);
            pr.snapshot_retry_ticks = backoff;
            pr.snapshot_offset = 0;
            let bytes = self.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
            let refusals = pr.snapshot_refusals;
            self.events.push(Event::SnapshotRefused {
                peer: from,
                index: a.meta_index,
                bytes,
                limit,
                refusals,
                retry_in_ticks: backoff,
            });
            return;
        }
        pr.snapshot_offset = a.next_offset;
        self.send_snapshot_chunk(from);
    }

    /// A recovering peer said `nonce`: append a marker for it, once per nonce, so that
    /// its recovery can end (see `check_recovered`). Needs no client write: an idle
    /// cluster finishes recoveries too.
    pub(super) fn mark_recovery(&mut self, peer: NodeId, nonce: u64) {
        let index = self.log.last_index() + 1;
        let Some(pr) = self.tracker.get_mut(peer) else { return };
        if pr.recovery_nonce != Some(nonce) {
            // A new incarnation: what the peer matched before it lost its state is gone,
            // and a heartbeat's commit index must not vouch for a log it never checked.
            pr.recovery_nonce = Some(nonce);
            let match_index = pr.match_index;
            pr.reset_after_lost_log(index);
            if match_index > 0 {
                self.events.push(Event::PeerLostLog { peer, match_index, last_index: 0 });
            }
        }
        if pr.recovery_marker.is_some_and(|(n, _)| n == nonce) {
            return;
        }
        pr.recovery_marker = Some((nonce, index));
        let data = RecoveryMarker { node: peer, nonce }.encode();
        let entry = Entry { index, term: self.term, kind: EntryKind::Noop, data };
        self.uncommitted_bytes += entry.size();
        self.log.append(entry);
        self.needs_broadcast = true;
        self.events.push(Event::RecoveryMarked { peer, index });
    }

    /// Commits the highest index a quorum has durably stored, if it is of this term
    /// (§5.4.2: never commit an earlier term's entry by counting replicas).
    pub(super) fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.tracker.committed_index();
        #[cfg(feature = "planted-bug")]
        let quorum_index = match self.cfg.planted_bug {
            Some(crate::config::PlantedBug::CommitWithoutQuorum) => self.log.last_index(),
            _ => quorum_index,
        };
        let old = self.log.committed;
        if quorum_index <= old || self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        self.log.commit_to(quorum_index);
        let committed = self.log.entries_from(old + 1, usize::MAX).unwrap_or_default();
        let committed: Vec<&Entry> = committed.iter().filter(|e| e.index <= quorum_index).collect();
        let bytes: u64 = committed.iter().map(|e| e.data.len() as u64).sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(committed.iter().map(|e| e.size()).sum());
        let acked_by = self.tracker.iter().filter(|(_, p)| p.quorum_match >= quorum_index).map(|(id, _)| *id).collect();
        self.events.push(Event::Committed {
            first: old + 1,
            last: quorum_index,
            term: self.term,
            entries: committed.len() as u64,
            bytes,
            acked_by,
        });
        self.read_only.commit_known(quorum_index);
        true
    }

    /// Sends new entries (or a probe) to every peer.
    pub(crate) fn broadcast_append(&mut self) {
        for peer in self.peers() {
            self.send_append(peer, true);
        }
    }

    /// Sends the next AppendEntries to `to` if its progress allows. With `allow_empty`,
    /// an AppendEntries with no entries is sent too (to probe or carry the commit index).
    pub(super) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let Some(pr) = self.tracker.get(to) else { return false };
        if pr.is_paused() {
            return false;
        }
        let prev = pr.next_index - 1;
        let (Some(prev_term), Some(entries)) =
            (self.log.term(prev), self.log.entries_from(pr.next_index, self.cfg.max_append_bytes))
        else {
            return self.start_snapshot(to);
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        let body = MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: self.log.committed,
        };
        self.send(to, body);
        self.tracker.get_mut(to).expect("checked").sent_append(last);
        true
    }

    pub(super) fn start_snapshot(&mut self, to: NodeId) -> bool {
        let Some(index) = self.snapshot.as_ref().map(|s| s.meta.index) else {
            debug_assert!(false, "log compacted without a snapshot");
            return false;
        };
        self.tracker.get_mut(to).expect("known peer").become_snapshot(index);
        self.send_snapshot_chunk(to);
        true
    }

    pub(super) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let snapshot = self.snapshot.as_ref().expect("sending a snapshot we have");
        let pr = self.tracker.get_mut(to).expect("known peer");
        if pr.state != (ProgressState::Snapshot { index: snapshot.meta.index }) {
            // A newer snapshot replaced the one being sent: start it from the beginning.
            pr.become_snapshot(snapshot.meta.index);
        }
        let total = snapshot.data.len() as u64;
        let offset = pr.snapshot_offset.min(total);
        let end = (offset + self.cfg.snapshot_chunk_bytes as u64).min(total);
        pr.snapshot_idle_ticks = 0;
        let body = MessageBody::InstallSnapshot {
            meta: snapshot.meta.clone(),
            offset,
            total_len: total,
            data: snapshot.data.slice(offset as usize..end as usize),
            done: end == total,
        };
        self.send(to, body);
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let round = self.read_only.round();
        for peer in self.peers() {
            let matched = self.tracker.get(peer).map_or(0, |p| p.match_index);
            // Never tell a follower to commit past what it is known to hold.
            let leader_commit = matched.min(self.log.committed);
            self.send(peer, MessageBody::Heartbeat { leader_commit, read_round: round });
        }
    }

    /// Starts a confirmation round for reads that arrived since the last one.
    pub(crate) fn flush_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(round) = self.read_only.start_round() {
            if let Some(me) = self.tracker.get_mut(self.id) {
                me.read_round_acked = round;
            }
            self.broadcast_heartbeat();
            self.release_confirmed_reads();
        }
    }
}
