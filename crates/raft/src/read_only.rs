//! ReadIndex (Raft thesis §6.4): a leader serves a linearizable read at its commit
//! index once a quorum has confirmed, after the read arrived, that it is still leader.
//! Reads are batched: every read that arrives before a confirmation round starts rides
//! on that one round of heartbeats.

use std::collections::VecDeque;

use crate::types::Index;

/// A read that is now safe to serve once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's identifier for the read.
    pub ctx: u64,
    pub index: Index,
}

#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    index: Index,
    round: u64,
}

#[derive(Debug)]
pub struct ReadOnly {
    /// The latest confirmation round started.
    round: u64,
    /// Reads waiting for their round to be confirmed, in round order.
    pending: VecDeque<PendingRead>,
    /// Reads registered since the last round started.
    unassigned: Vec<(u64, Index)>,
    /// Reads that arrived before this leader committed an entry of its term; their
    /// index is not known until then.
    awaiting_commit: Vec<u64>,
    capacity: usize,
}

/// The read queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadQueueFull;

impl ReadOnly {
    pub fn new(capacity: usize) -> ReadOnly {
        ReadOnly { round: 0, pending: VecDeque::new(), unassigned: Vec::new(), awaiting_commit: Vec::new(), capacity }
    }

    fn len(&self) -> usize {
        self.pending.len() + self.unassigned.len() + self.awaiting_commit.len()
    }

    /// Registers a read. `commit` is `None` while the leader has not yet committed an
    /// entry of its own term.
    pub fn request(&mut self, ctx: u64, commit: Option<Index>) -> Result<(), ReadQueueFull> {
        if self.len() >= self.capacity {
            return Err(ReadQueueFull);
        }
        match commit {
            Some(index) => self.unassigned.push((ctx, index)),
            None => self.awaiting_commit.push(ctx),
        }
        Ok(())
    }

    /// The leader has committed an entry of its term at `commit`.
    pub fn commit_known(&mut self, commit: Index) {
        for ctx in self.awaiting_commit.drain(..) {
            self.unassigned.push((ctx, commit));
        }
    }

    /// Starts a confirmation round for the reads registered since the last one.
    pub fn start_round(&mut self) -> Option<u64> {
        if self.unassigned.is_empty() {
            return None;
        }
        self.round += 1;
        let round = self.round;
        self.pending.extend(self.unassigned.drain(..).map(|(ctx, index)| PendingRead { ctx, index, round }));
        Some(round)
    }

    pub fn has_unassigned(&self) -> bool {
        !self.unassigned.is_empty()
    }

    /// The latest round started; heartbeats carry it.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// A quorum confirmed leadership in round `confirmed`: release its reads and every
    /// earlier one.
    pub fn release(&mut self, confirmed: u64) -> Vec<ReadState> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|r| r.round <= confirmed) {
            let r = self.pending.pop_front().expect("front exists");
            out.push(ReadState { ctx: r.ctx, index: r.index });
        }
        out
    }

    /// Leadership is lost: every waiting read fails. Returns their contexts.
    pub fn drain(&mut self) -> Vec<u64> {
        let mut out: Vec<u64> = self.pending.drain(..).map(|r| r.ctx).collect();
        out.extend(self.unassigned.drain(..).map(|(ctx, _)| ctx));
        out.append(&mut self.awaiting_commit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_one_round_are_released_together() {
        let mut ro = ReadOnly::new(10);
        ro.request(1, Some(5)).unwrap();
        ro.request(2, Some(6)).unwrap();
        assert_eq!(ro.start_round(), Some(1));
        ro.request(3, Some(7)).unwrap();
        assert_eq!(ro.start_round(), Some(2));
        assert_eq!(ro.release(1), vec![ReadState { ctx: 1, index: 5 }, ReadState { ctx: 2, index: 6 }]);
        assert_eq!(ro.release(2), vec![ReadState { ctx: 3, index: 7 }]);
        assert_eq!(ro.start_round(), None);
    }

    #[test]
    fn the_queue_is_bounded_and_drained_on_step_down() {
        let mut ro = ReadOnly::new(2);
        ro.request(1, None).unwrap();
        ro.request(2, Some(3)).unwrap();
        assert_eq!(ro.request(3, Some(3)), Err(ReadQueueFull));
        let mut drained = ro.drain();
        drained.sort();
        assert_eq!(drained, vec![1, 2]);
    }
}
