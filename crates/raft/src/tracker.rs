//! The configuration, every peer's [`Progress`], the votes of an election, and the
//! quorum arithmetic over them.

use std::collections::BTreeMap;

use crate::progress::Progress;
use crate::types::{ConfState, Index, NodeId};

/// The outcome of counting votes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Pending,
    Won,
    Lost,
}

#[derive(Debug)]
pub struct ProgressTracker {
    conf: ConfState,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    window: usize,
}

/// The smallest majority of `n` voters.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl ProgressTracker {
    pub fn new(conf: ConfState, window: usize) -> ProgressTracker {
        let mut tracker =
            ProgressTracker { conf: ConfState::default(), progress: BTreeMap::new(), votes: BTreeMap::new(), window };
        tracker.set_conf(conf, 1);
        tracker
    }

    pub fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// Installs a configuration; new members start probing at `next_index`.
    pub fn set_conf(&mut self, conf: ConfState, next_index: Index) {
        assert!(conf.voters.is_disjoint(&conf.learners), "a node is either voter or learner");
        self.progress.retain(|id, _| conf.voters.contains(id) || conf.learners.contains(id));
        for id in conf.members() {
            self.progress.entry(id).or_insert_with(|| Progress::new(next_index, self.window));
        }
        self.conf = conf;
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.conf.voters.contains(&id)
    }

    pub fn get(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        self.progress.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Progress)> {
        self.progress.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&NodeId, &mut Progress)> {
        self.progress.iter_mut()
    }

    /// Resets every peer for a new leader whose log ends at `last_index`.
    pub fn reset_for_leader(&mut self, last_index: Index) {
        for progress in self.progress.values_mut() {
            *progress = Progress::new(last_index + 1, self.window);
        }
    }

    /// The highest index durable on a majority of voters, counting only what they
    /// acknowledged while not recovering.
    pub fn committed_index(&self) -> Index {
        self.quorum_value(|p| p.quorum_match)
    }

    /// The `majority`-th highest of `value` over voters: the largest value a quorum has
    /// reached. Used for the commit index and for ReadIndex rounds.
    pub fn quorum_value(&self, value: impl Fn(&Progress) -> u64) -> u64 {
        let mut values: Vec<u64> = self.conf.voters.iter().map(|id| value(&self.progress[id])).collect();
        if values.is_empty() {
            return 0;
        }
        values.sort_unstable_by(|a, b| b.cmp(a));
        values[majority(values.len()) - 1]
    }

    /// Whether a quorum of voters (counting `self_id`) was heard from recently.
    pub fn quorum_active(&self, self_id: NodeId) -> bool {
        let active = self.conf.voters.iter().filter(|&&id| id == self_id || self.progress[&id].recent_active).count();
        active >= majority(self.conf.voters.len())
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        if self.is_voter(id) {
            self.votes.entry(id).or_insert(granted);
        }
    }

    /// (granted, rejected, needed)
    pub fn vote_counts(&self) -> (usize, usize, usize) {
        let granted = self.votes.values().filter(|&&g| g).count();
        (granted, self.votes.len() - granted, majority(self.conf.voters.len()))
    }

    pub fn tally_votes(&self) -> VoteResult {
        let (granted, rejected, needed) = self.vote_counts();
        if granted >= needed {
            VoteResult::Won
        } else if self.conf.voters.len() - rejected < needed {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_quorum_match() {
        let mut t = ProgressTracker::new(ConfState::with_voters([1, 2, 3]), 4);
        t.get_mut(1).unwrap().maybe_update(9, true);
        t.get_mut(2).unwrap().maybe_update(5, true);
        t.get_mut(3).unwrap().maybe_update(2, true);
        assert_eq!(t.committed_index(), 5);
        // A recovering peer's acknowledgement moves its match, not the commit.
        t.get_mut(3).unwrap().maybe_update(9, false);
        assert_eq!((t.get(3).unwrap().match_index, t.committed_index()), (9, 5));
    }

    #[test]
    fn votes_are_tallied_against_a_majority() {
        let mut t = ProgressTracker::new(ConfState::with_voters([1, 2, 3, 4, 5]), 4);
        t.record_vote(1, true);
        t.record_vote(2, false);
        assert_eq!(t.tally_votes(), VoteResult::Pending);
        t.record_vote(3, false);
        t.record_vote(4, false);
        assert_eq!(t.tally_votes(), VoteResult::Lost);
        t.reset_votes();
        for id in [1, 2, 3] {
            t.record_vote(id, true);
        }
        assert_eq!(t.tally_votes(), VoteResult::Won);
        // A repeated vote from the same node does not count twice.
        t.reset_votes();
        t.record_vote(1, true);
        t.record_vote(1, true);
        t.record_vote(9, true);
        assert_eq!(t.vote_counts(), (1, 0, 3));
    }
}
