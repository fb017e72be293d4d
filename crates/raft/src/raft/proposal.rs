//! What the runtime asks of a leader: proposals, configuration changes, reads,
//! leadership transfer; and its own log's persistence and compaction.

use super::*;

impl Raft {
    // ---- client-facing operations ----

    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.check_leader()?;
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let index = self.log.last_index() + 1;
        let entry = Entry { index, term: self.term, kind: EntryKind::Command, data };
        let limit = self.cfg.max_uncommitted_bytes;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + entry.size() > limit {
            return Err(ProposeError::Backpressure { bytes: self.uncommitted_bytes, limit });
        }
        self.uncommitted_bytes += entry.size();
        self.log.append(entry);
        self.needs_broadcast = true;
        Ok((index, self.term))
    }

    /// Appends a configuration change to the leader's log; it takes effect at once.
    /// Refused unless this leader has committed an entry of its term and no other
    /// change is uncommitted, if the change does not fit the configuration, or (for a
    /// promotion) if the learner lags by more than `max_promotion_lag` entries or has
    /// not acknowledged any entry yet.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(Index, Term), ProposeError> {
        self.check_leader()?;
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            return Err(ProposeError::NoCommitInTerm);
        }
        if self.pending_conf_index > self.log.committed {
            return Err(ProposeError::ConfChangePending { index: self.pending_conf_index });
        }
        let next = self.log.conf().apply_change(&cc)?;
        // A node added as a voter at once starts with an empty disk: it recovers. A
        // learner being promoted may lose its disk while the change replicates (this
        // leader would hear of it only later): a configuration that tolerates a
        // failure (three voters or more) must live with that too. (Growing from one
        // voter to two cannot: two voters tolerate no failure anyway.)
        let maybe_recovering = match cc.change {
            ConfChangeKind::AddVoter => Some(cc.node),
            ConfChangeKind::PromoteVoter if next.voters.len() >= 3 => Some(cc.node),
            _ => None,
        };
        let new_voter = maybe_recovering;
        let recovering = next
            .voters
            .iter()
            .filter(|&&id| {
                id != self.id && (Some(id) == new_voter || self.tracker.get(id).is_some_and(|p| p.recovering))
            })
            .count();
        if next.voters.len() - recovering < crate::tracker::majority(next.voters.len()) {
            return Err(ProposeError::WouldStall { voters: next.voters.len(), recovering });
        }
        if cc.change == ConfChangeKind::PromoteVoter {
            // A recovering voter counts toward the majority but not toward a quorum: one
            // too many and no quorum could commit the markers that end recoveries.
            if self.tracker.get(cc.node).is_some_and(|p| p.recovering) {
                return Err(ProposeError::Recovering(cc.node));
            }
            let matched = self.tracker.get(cc.node).map_or(0, |p| p.match_index);
            let lag = self.log.last_index().saturating_sub(matched);
            let limit = self.cfg.max_promotion_lag;
            if lag > limit || matched == 0 {
                return Err(ProposeError::NotCaughtUp { node: cc.node, lag, limit });
            }
        }
        let index = self.log.last_index() + 1;
        let entry = Entry { index, term: self.term, kind: EntryKind::ConfChange, data: cc.encode() };
        self.uncommitted_bytes += entry.size();
        self.log.append(entry);
        self.pending_conf_index = index;
        self.sync_conf();
        self.needs_broadcast = true;
        Ok((index, self.term))
    }

    pub(super) fn check_leader(&self) -> Result<(), ProposeError> {
        if self.role == Role::Leader { Ok(()) } else { Err(ProposeError::NotLeader { leader: self.leader }) }
    }

    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.check_leader()?;
        let commit_in_term = self.log.term(self.log.committed) == Some(self.term);
        let commit = commit_in_term.then_some(self.log.committed);
        self.read_only
            .request(ctx, commit)
            .map_err(|_| ProposeError::TooManyReads { limit: self.cfg.max_pending_reads })
    }

    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.check_leader()?;
        if !self.tracker.is_voter(target) {
            return Err(ProposeError::NotAVoter(target));
        }
        if target == self.id || self.lead_transferee == Some(target) {
            return Ok(());
        }
        if self.tracker.get(target).is_some_and(|p| p.recovering) {
            return Err(ProposeError::Recovering(target));
        }
        self.lead_transferee = Some(target);
        self.election_elapsed = 0;
        let caught_up = self.tracker.get(target).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        Ok(())
    }

    /// The leader's own log became durable up to `persisted`.
    pub(crate) fn self_persisted(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let persisted = self.log.persisted();
        if let Some(me) = self.tracker.get_mut(self.id)
            && me.maybe_update(persisted, true)
            && self.maybe_commit()
        {
            self.needs_broadcast = true;
        }
    }

    /// The runtime took a snapshot of the state machine at `snapshot.meta.index`.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        assert!(index <= self.log.applied, "snapshot at {index} beyond applied {}", self.log.applied);
        if self.snapshot.as_ref().is_some_and(|s| s.meta.index >= index) {
            return;
        }
        self.snapshot = Some(snapshot);
        self.log.compact(index.saturating_sub(self.cfg.compaction_slack));
    }

    /// Reads registered but not yet part of a confirmation round.
    pub(crate) fn has_unconfirmed_reads(&self) -> bool {
        self.role == Role::Leader && self.read_only.has_unassigned()
    }
}
