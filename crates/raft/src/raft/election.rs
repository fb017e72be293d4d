//! Elections: role transitions, campaigns, counting votes and giving them.

use super::*;

impl Raft {
    // ---- role transitions ----

    pub(super) fn finish_election(&mut self, outcome: ElectionOutcome) {
        if let Some(e) = self.election.take() {
            let (granted, _, needed) = self.tracker.vote_counts();
            self.events.push(Event::ElectionFinished { term: e.term, pre_vote: e.pre_vote, outcome, granted, needed });
        }
    }

    pub(super) fn set_term(&mut self, term: Term) {
        if term != self.term {
            assert!(term > self.term, "term must never decrease ({} -> {term})", self.term);
            self.events.push(Event::TermChanged { from: self.term, to: term });
            self.term = term;
            self.vote = None;
            self.leader_verified = 0;
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if self.role == Role::Leader {
            let reason = if term > self.term { StepDownReason::HigherTerm } else { StepDownReason::LostQuorum };
            self.events.push(Event::SteppedDown { term: self.term, reason, cause: self.cause });
            self.dropped_reads.extend(self.read_only.drain());
        }
        let outcome =
            if leader.is_some() || term > self.term { ElectionOutcome::Superseded } else { ElectionOutcome::Lost };
        self.finish_election(outcome);
        self.set_term(term);
        self.role = Role::Follower;
        self.set_leader(leader);
        self.lead_transferee = None;
        // Proposals waiting to be broadcast are a leader's business; a follower sends
        // no AppendEntries (its progress view is stale, its log may be truncated).
        self.needs_broadcast = false;
        self.reset_timers();
    }

    /// A leader whose removal committed steps down.
    pub(super) fn step_down_removed(&mut self) {
        debug_assert_eq!(self.role, Role::Leader);
        self.events.push(Event::SteppedDown { term: self.term, reason: StepDownReason::Removed, cause: None });
        self.dropped_reads.extend(self.read_only.drain());
        self.role = Role::Follower;
        self.become_follower(self.term, None);
    }

    pub(super) fn set_leader(&mut self, leader: Option<NodeId>) {
        if let Some(id) = leader
            && leader != self.leader
            && id != self.id
        {
            self.events.push(Event::LeaderKnown { term: self.term, leader: id });
        }
        self.leader = leader;
    }

    pub(super) fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader never pre-campaigns");
        self.role = Role::PreCandidate;
        self.leader = None;
        self.tracker.reset_votes();
        self.reset_timers();
        self.election = Some(Election { term: self.term + 1, pre_vote: true });
    }

    pub(super) fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader never campaigns");
        self.set_term(self.term + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.tracker.reset_votes();
        self.reset_timers();
        self.election = Some(Election { term: self.term, pre_vote: false });
    }

    pub(super) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        self.finish_election(ElectionOutcome::Won);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.lead_transferee = None;
        self.reset_timers();
        self.tracker.reset_for_leader(self.log.last_index());
        let persisted = self.log.persisted();
        if let Some(me) = self.tracker.get_mut(self.id) {
            me.maybe_update(persisted, true);
            me.become_replicate();
        }
        self.uncommitted_bytes = 0;
        // Any configuration change in the log may be uncommitted; the no-op must commit
        // before another is accepted anyway.
        self.pending_conf_index = self.log.last_index();
        // A no-op of the new term lets the leader commit earlier terms' entries (§5.4.2)
        // and learn its commit index for ReadIndex.
        let index = self.log.last_index() + 1;
        self.log.append(Entry { index, term: self.term, kind: EntryKind::Noop, data: Bytes::new() });
        self.needs_broadcast = true;
        self.events.push(Event::BecameLeader { term: self.term });
    }

    // ---- elections ----

    /// Starts an election: a pre-vote first unless `transfer` (leadership transfer skips
    /// it and overrides the voters' leader lease).
    pub(crate) fn campaign(&mut self, transfer: bool) {
        if !self.promotable() || self.role == Role::Leader {
            return;
        }
        self.finish_election(ElectionOutcome::TimedOut);
        let pre_vote = self.cfg.pre_vote && !transfer;
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        let term = if pre_vote { self.term + 1 } else { self.term };
        self.events.push(Event::ElectionStarted { term, pre_vote, transfer, cause: self.cause });
        self.tracker.record_vote(self.id, true);
        if self.check_votes(pre_vote, transfer) {
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            let body = MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, force: transfer };
            self.send_with_term(peer, term, body);
        }
    }

    /// Acts on the votes counted so far. Returns true if the election is decided.
    pub(super) fn check_votes(&mut self, pre_vote: bool, transfer: bool) -> bool {
        match self.tracker.tally_votes() {
            VoteResult::Won if pre_vote => {
                self.finish_election(ElectionOutcome::Won);
                self.campaign_after_pre_vote(transfer);
                true
            }
            VoteResult::Won => {
                self.become_leader();
                true
            }
            VoteResult::Lost => {
                self.become_follower(self.term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    pub(super) fn campaign_after_pre_vote(&mut self, transfer: bool) {
        // The pre-vote succeeded: run the real election without another pre-vote.
        let saved = self.cfg.pre_vote;
        self.cfg.pre_vote = false;
        self.campaign(transfer);
        self.cfg.pre_vote = saved;
    }

    /// Votes are given without consulting the configuration (dissertation §4.1): a
    /// candidate may be a voter in a configuration this node has not received yet, and
    /// refusing it could leave a cluster with a majority up unable to elect (a lagging
    /// voter that does not know the only up-to-date candidate). A removed node cannot
    /// disrupt anyway: it lacks its committed removal, so a majority of its old
    /// configuration has a more up-to-date log and refuses its pre-vote, and voters in
    /// a leader's lease ignore it — it never gets to raise anyone's term.
    ///
    /// A node recovering from lost state never votes: it may have voted in this term or
    /// acknowledged entries the candidate lacks, and cannot remember.
    pub(super) fn handle_vote_request(&mut self, m: &Message, pre_vote: bool, candidate_last: LogPosition) {
        let reason = self.vote_reason(m, pre_vote, candidate_last);
        let granted = reason == VoteReason::Granted;
        if granted && !pre_vote {
            self.election_elapsed = 0;
            self.vote = Some(m.from);
        }
        self.vote_decided(m, granted, reason);
        // A granted response echoes the request's term; a refusal carries ours, so a
        // stale candidate learns the current term.
        let term = if granted { m.term } else { self.term };
        self.send_with_term(m.from, term, MessageBody::RequestVoteResponse { pre_vote, granted });
    }

    /// Why this node grants or refuses `m`'s request (of this term, or a pre-vote of a
    /// higher one).
    fn vote_reason(&self, m: &Message, pre_vote: bool, candidate_last: LogPosition) -> VoteReason {
        if self.recovery.is_some() {
            return VoteReason::Recovering;
        }
        let free = self.vote == Some(m.from) || (pre_vote && m.term > self.term);
        if !free && let Some(voted_for) = self.vote {
            return VoteReason::AlreadyVoted { voted_for };
        }
        if !free && let Some(leader) = self.leader {
            return VoteReason::LeaderKnown { leader };
        }
        let up_to_date = self.log.is_up_to_date(candidate_last.index, candidate_last.term);
        #[cfg(feature = "planted-bug")]
        let up_to_date = up_to_date || self.cfg.planted_bug == Some(crate::config::PlantedBug::VoteForStaleLog);
        if up_to_date { VoteReason::Granted } else { VoteReason::StaleLog }
    }

    /// Reports a decision on `m`, a RequestVote, with both log positions.
    pub(super) fn vote_decided(&mut self, m: &Message, granted: bool, reason: VoteReason) {
        let MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } = m.body else { return };
        let candidate = CandidateRequest {
            id: m.from,
            term: m.term,
            pre_vote,
            last: LogPosition { term: last_log_term, index: last_log_index },
        };
        let own_last = LogPosition { term: self.log.last_term(), index: self.log.last_index() };
        self.events.push(Event::VoteDecided { candidate, granted, reason, own_last, trace: m.trace });
    }

    pub(super) fn step_candidate(&mut self, m: Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m)
            }
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                if pre_vote == (self.role == Role::PreCandidate) {
                    let term = self.election.as_ref().map_or(m.term, |e| e.term);
                    self.events.push(Event::VoteReceived { from: m.from, term, pre_vote, granted });
                    self.tracker.record_vote(m.from, granted);
                    self.check_votes(pre_vote, false);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
