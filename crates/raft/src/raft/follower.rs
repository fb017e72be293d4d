//! A follower's side: taking the leader's appends, heartbeats and snapshot chunks,
//! its commit index, and the end of a recovery from lost state.

use super::*;

impl Raft {
    pub(super) fn step_follower(&mut self, m: Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
                self.heard_from_leader(m.from);
                self.handle_append(m.from, prev_log_index, prev_log_term, &entries, leader_commit)?;
            }
            MessageBody::Heartbeat { leader_commit, read_round } => {
                self.heard_from_leader(m.from);
                // A heartbeat's commit index rests on the leader's view of this node's
                // log, which is stale for a node that lost its state (the leader may not
                // know yet): while recovering, no further than this leader's appends
                // checked, entry by entry.
                let verified = if self.recovery.is_some() { self.leader_verified } else { self.log.last_index() };
                self.commit_to(leader_commit.min(verified));
                // The leader sends min(our match, its commit); a log ending below that
                // lost entries it once acknowledged.
                let last = self.log.last_index();
                let missing_from = (leader_commit > last).then_some(last + 1);
                self.send(m.from, MessageBody::HeartbeatResponse { read_round, missing_from });
            }
            MessageBody::InstallSnapshot { meta, offset, total_len, data, done } => {
                self.heard_from_leader(m.from);
                self.handle_snapshot_chunk(m.from, meta, offset, total_len, data, done);
            }
            MessageBody::TimeoutNow => self.campaign(true),
            _ => {}
        }
        Ok(())
    }

    pub(super) fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.set_leader(Some(leader));
        // A recovering node may have voted in this term before it lost its state; the
        // only vote that cannot hurt now is one for the term's leader.
        if self.recovery.is_some() && self.vote.is_none() {
            self.vote = Some(leader);
        }
    }

    /// A follower's commit index moves to `index` (if higher); a recovery ends when it
    /// covers this node's marker.
    pub(super) fn commit_to(&mut self, index: Index) {
        let old = self.log.committed;
        if self.log.commit_to(index) {
            self.check_recovered(old);
        }
    }

    /// Ends this node's recovery if an entry committed after `old_commit` is the marker
    /// of its nonce: a quorum that did not count this node accepted an entry its leader
    /// appended after the node lost its state, so no leader elected with the node's
    /// forgotten votes can win any more, and the node's log holds every entry committed
    /// before it (Protocol-Aware Recovery, Alagappan et al., FAST 2018).
    pub(super) fn check_recovered(&mut self, old_commit: Index) {
        let Some(nonce) = self.recovery else { return };
        let committed = self.log.committed;
        let found = self.log.entries().iter().find(|e| {
            e.index > old_commit
                && e.index <= committed
                && e.kind == EntryKind::Noop
                && RecoveryMarker::decode(&e.data) == Some(RecoveryMarker { node: self.id, nonce })
        });
        if let Some(marker) = found {
            let index = marker.index;
            self.recovery = None;
            self.events.push(Event::RecoveryFinished { term: self.term, index });
        }
    }

    /// Ends a recovery at the start of a brand-new cluster: the runtime learned that
    /// every other founding member is at term 1 or below, so nobody ever voted for or
    /// acknowledged anything this node might have forgotten. Refused (false) once this
    /// node itself is past term 1.
    pub(crate) fn confirm_new_cluster(&mut self) -> bool {
        if self.recovery.is_none() {
            return true;
        }
        if self.term > 1 || self.vote.is_some() {
            return false;
        }
        self.recovery = None;
        self.events.push(Event::RecoveryFinished { term: self.term, index: 0 });
        true
    }

    // ---- follower side of replication ----

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev: Index,
        prev_term: Term,
        entries: &[Entry],
        leader_commit: Index,
    ) -> Result<(), StepError> {
        if prev < self.log.committed {
            let index = self.log.committed;
            self.send(from, MessageBody::AppendEntriesResponse { success: true, index, reject_hint: 0, hint_term: 0 });
            return Ok(());
        }
        let appended = self.log.maybe_append(prev, prev_term, entries);
        self.sync_conf();
        match appended? {
            Some(last_new) => {
                self.leader_verified = self.leader_verified.max(last_new);
                self.commit_to(leader_commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse { success: true, index: last_new, reject_hint: 0, hint_term: 0 },
                );
            }
            None => {
                let hint = self.log.find_conflict_by_term(prev.min(self.log.last_index()), prev_term);
                let hint_term = self.log.term(hint).unwrap_or(0);
                let body =
                    MessageBody::AppendEntriesResponse { success: false, index: prev, reject_hint: hint, hint_term };
                self.send(from, body);
            }
        }
        Ok(())
    }

    pub(super) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        total_len: u64,
        data: Bytes,
        done: bool,
    ) {
        let meta_index = meta.index;
        let respond = |raft: &mut Raft, next_offset: u64, done: bool, rejected: bool| {
            let body =
                MessageBody::InstallSnapshotResponse { meta_index, next_offset, done, rejected, too_large: None };
            raft.send(from, body);
        };
        if meta.index <= self.log.committed {
            // Already have everything it covers: tell the leader to probe from here.
            self.incoming = None;
            return respond(self, total_len, true, false);
        }
        if total_len > self.cfg.max_snapshot_bytes {
            self.incoming = None;
            let too_large = Some(self.cfg.max_snapshot_bytes);
            let body = MessageBody::InstallSnapshotResponse {
                meta_index,
                next_offset: 0,
                done: false,
                rejected: true,
                too_large,
            };
            return self.send(from, body);
        }
        if offset == 0 {
            let capacity = total_len.min(64 << 20) as usize;
            self.incoming =
                Some(IncomingSnapshot { meta: meta.clone(), total_len, buf: BytesMut::with_capacity(capacity) });
        }
        let expected = match &self.incoming {
            Some(inc) if inc.meta == meta && inc.total_len == total_len => inc.buf.len() as u64,
            _ => 0,
        };
        if offset != expected {
            return respond(self, expected, false, true);
        }
        let incoming = self.incoming.as_mut().expect("started at offset 0");
        incoming.buf.extend_from_slice(&data);
        let received = incoming.buf.len() as u64;
        if !done {
            return respond(self, received, false, false);
        }
        let incoming = self.incoming.take().expect("present");
        if received != total_len {
            return respond(self, 0, false, true);
        }
        self.restore(Snapshot { meta: incoming.meta, data: incoming.buf.freeze() });
        respond(self, total_len, true, false);
    }

    /// Installs a snapshot from the leader, unless the log already covers it.
    pub(super) fn restore(&mut self, snapshot: Snapshot) {
        let meta = &snapshot.meta;
        self.leader_verified = self.leader_verified.max(meta.index);
        if self.log.match_term(meta.index, meta.term) {
            // Our log has the entry it ends at, so it has everything before: just commit.
            self.commit_to(meta.index);
            return;
        }
        self.log.restore(meta);
        self.events.push(Event::SnapshotInstalled { index: meta.index, term: meta.term });
        self.sync_conf();
        self.pending_snapshot = Some(snapshot.clone());
        self.snapshot = Some(snapshot);
    }
}
