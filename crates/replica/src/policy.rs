//! The policies a runtime used to decide in its I/O code: promoting caught-up learners,
//! probing peers when forgotten, snapshots, shutdown hand-off, removal. Time is ticks.

use bytes::Bytes;
use raftkv_raft::{ConfChange, ConfChangeKind, Index, Message, MessageBody, NodeId, Role, SnapshotMeta};

use crate::membership;
use crate::replica::{Replica, SnapshotPlan};

/// Why a drained node stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// It does not lead (any more): nothing to hand off.
    NotLeader,
    /// No other voter can take over.
    NoTransferee,
    /// The hand-off did not finish within two election timeouts.
    TimedOut,
}

/// Why a replica's runtime must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Asked to shut down, and done handing off.
    Shutdown(DrainEnd),
    /// This node was removed from the cluster: by the committed change at `index`
    /// (applied here), or as peer `by` said.
    Removed { index: Index, by: Option<NodeId> },
}

/// What a tick did besides ticking the core.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Probes to send: a non-voter that heard from no leader for three election
    /// timeouts asks its peers whether it was removed.
    pub probes: Vec<Message>,
    /// Learners the leader proposed to promote: (id, index).
    pub promoted: Vec<(NodeId, Index)>,
    /// Learners it could not promote yet, and why.
    pub not_promoted: Vec<(NodeId, String)>,
}

impl Replica {
    /// Advances time by one tick: the core's, then once per election timeout the
    /// membership policies.
    pub fn tick(&mut self) -> TickReport {
        self.raw.tick();
        self.ticks += 1;
        let mut report = TickReport::default();
        if self.ticks.is_multiple_of(u64::from(self.cfg.election_ticks.max(1))) {
            self.auto_promote(&mut report);
            report.probes = self.probes_if_forgotten();
        }
        report
    }

    /// The leader promotes caught-up learners that asked for it; refusals (another
    /// change pending, the learner fell behind or is recovering) are retried later.
    fn auto_promote(&mut self, report: &mut TickReport) {
        if self.raw.status().role != Role::Leader || self.draining.is_some() || self.removed.is_some() {
            return;
        }
        let st = self.raw.status();
        let ready: Vec<NodeId> = st
            .conf
            .learners
            .iter()
            .copied()
            .filter(|id| self.membership.context(*id).is_some_and(|c| c.auto_promote))
            .filter(|id| {
                let matched = st.progress.iter().find(|p| p.id == *id).map_or(0, |p| p.match_index);
                matched > 0 && st.last_index.saturating_sub(matched) <= self.cfg.max_promotion_lag
            })
            .collect();
        for node in ready {
            match self.raw.propose_conf_change(ConfChange::new(ConfChangeKind::PromoteVoter, node, Bytes::new())) {
                Ok((index, _)) => report.promoted.push((node, index)),
                Err(e) => report.not_promoted.push((node, e.to_string())),
            }
        }
    }

    /// A removed learner gets no more traffic (the leader drops non-members) and never
    /// campaigns, so it would never learn of its removal. After three election timeouts
    /// without a leader, a non-voter sends each peer a probe: a message of term 0, which
    /// a member's core ignores and a peer that removed it answers with `Removed`.
    fn probes_if_forgotten(&self) -> Vec<Message> {
        let quiet = self.ticks.saturating_sub(self.leader_contact);
        if self.raw.status().role == Role::Leader
            || self.raw.conf().voters.contains(&self.id)
            || quiet < 3 * u64::from(self.cfg.election_ticks)
        {
            return Vec::new();
        }
        let (peers, _) = self.link_targets();
        let body = MessageBody::HeartbeatResponse { read_round: 0, missing_from: None };
        peers.keys().filter(|p| **p != self.id).map(|p| Message::new(self.id, *p, 0, body.clone())).collect()
    }

    /// The other voter with the highest match index that is not recovering (leader
    /// only): the one to hand leadership to.
    pub fn best_transferee(&self) -> Option<NodeId> {
        let st = self.raw.status();
        st.progress
            .iter()
            .filter(|p| p.id != self.id && st.conf.voters.contains(&p.id) && !p.recovering)
            .max_by_key(|p| (p.match_index, std::cmp::Reverse(p.id)))
            .map(|p| p.id)
    }

    /// Shutdown begins: new requests are refused, and a leader hands leadership to the
    /// most caught-up follower. Returns the target (`Ok(None)`: nothing to hand off).
    pub fn start_drain(&mut self) -> Result<Option<NodeId>, String> {
        self.draining = Some(self.ticks + 2 * u64::from(self.cfg.election_ticks));
        self.hand_off()
    }

    /// A leader hands off (again: after a transfer that did not finish).
    pub(crate) fn hand_off(&mut self) -> Result<Option<NodeId>, String> {
        if self.raw.status().role != Role::Leader {
            return Ok(None);
        }
        let Some(target) = self.best_transferee() else { return Ok(None) };
        self.raw.transfer_leader(target).map_err(|e| e.to_string())?;
        Ok(Some(target))
    }

    /// A peer says this node was removed from the cluster.
    pub fn removed_by_peer(&mut self, by: NodeId) {
        if self.removed.is_none() {
            // A leader that removed itself may hear it before it handed off.
            let grace = if self.raw.status().role == Role::Leader { self.two_timeouts() } else { 0 };
            self.removed = Some((Stop::Removed { index: 0, by: Some(by) }, self.ticks + grace));
        }
    }

    /// The committed removal of this node at `index` was applied.
    pub(crate) fn removal_applied(&mut self, index: Index) {
        if self.removed.is_none() {
            self.removed = Some((Stop::Removed { index, by: None }, self.ticks + self.two_timeouts()));
        }
    }

    fn two_timeouts(&self) -> u64 {
        2 * u64::from(self.cfg.election_ticks)
    }

    /// Whether the runtime must stop now, and why: a removed node once it does not lead
    /// (a leader that removed itself first hands off, the core does), or by its
    /// deadline; a draining one once it does not lead, has nobody to hand off to, or
    /// ran out of time.
    pub fn stop_decision(&self) -> Option<Stop> {
        let leading = self.raw.status().role == Role::Leader;
        if let Some((why, deadline)) = self.removed
            && (!leading || self.ticks >= deadline)
        {
            return Some(why);
        }
        let deadline = self.draining?;
        if !leading {
            Some(Stop::Shutdown(DrainEnd::NotLeader))
        } else if self.best_transferee().is_none() {
            Some(Stop::Shutdown(DrainEnd::NoTransferee))
        } else if self.ticks >= deadline {
            Some(Stop::Shutdown(DrainEnd::TimedOut))
        } else {
            None
        }
    }

    /// Whether this node knows it was removed (it will stop).
    pub fn is_removed(&self) -> bool {
        self.removed.is_some()
    }

    /// A snapshot is due once `snapshot_entries` entries were applied since the last
    /// one, and the state machine is not ahead of the core's applied index. Its
    /// configuration is the one as of its index (a newer one may be in the log).
    pub fn snapshot_due(&self) -> Option<SnapshotPlan> {
        let every = self.cfg.snapshot_entries;
        let applied = self.kv.applied_index();
        if every == 0 || applied < self.snapshot_index.saturating_add(every) || self.in_ready {
            return None;
        }
        if applied > self.raw.status().applied_index {
            return None;
        }
        let conf = self.raw.conf_at(applied)?;
        let meta = SnapshotMeta { index: applied, term: self.kv.applied_term(), conf };
        let prefix = membership::snapshot_prefix(&self.membership.section(&meta.conf));
        Some(SnapshotPlan { meta, prefix })
    }

    /// A snapshot the runtime took (from [`Replica::snapshot_due`]) is durable: the log
    /// before it may be dropped. `adopted`: whether the state machine now points into
    /// the saved file (or keeps its own copy).
    pub fn snapshot_saved(&mut self, snapshot: raftkv_raft::Snapshot) {
        let index = snapshot.meta.index;
        assert!(index >= self.snapshot_index, "snapshots go forward ({} -> {index})", self.snapshot_index);
        self.raw.compact(snapshot);
        self.snapshot_index = index;
    }

    /// A snapshot due could not be saved (refused as invalid by storage): skip it.
    pub fn snapshot_skipped(&mut self, index: Index) {
        self.snapshot_index = self.snapshot_index.max(index);
    }

    /// The state machine, to stream a snapshot from or adopt a saved one into.
    pub fn kv_mut(&mut self) -> &mut raftkv_kv::KvStateMachine {
        &mut self.kv
    }

    /// A whole snapshot in memory, as [`Replica::snapshot_due`] plans it (the
    /// simulation's disks keep bytes, not files).
    pub fn build_snapshot(&mut self, plan: &SnapshotPlan) -> raftkv_raft::Snapshot {
        let data = self.kv.snapshot_after(plan.prefix.clone());
        raftkv_raft::Snapshot { meta: plan.meta.clone(), data }
    }
}
