//! What a leader knows about one follower's log, and the window of AppendEntries in
//! flight to it.

use std::collections::VecDeque;

use crate::types::Index;

/// How the leader is currently replicating to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's log position is unknown: one AppendEntries per heartbeat until
    /// one succeeds.
    Probe,
    /// The follower is in step: AppendEntries are pipelined, up to the window.
    Replicate,
    /// The follower needs the snapshot at `index`; chunks are sent one at a time.
    Snapshot { index: Index },
}

/// A bounded window of in-flight AppendEntries, each remembered by its last index.
#[derive(Clone, Debug)]
pub struct Inflights {
    last_indexes: VecDeque<Index>,
    capacity: usize,
}

impl Inflights {
    pub fn new(capacity: usize) -> Inflights {
        assert!(capacity > 0);
        Inflights { last_indexes: VecDeque::with_capacity(capacity), capacity }
    }

    pub fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    pub fn add(&mut self, last_index: Index) {
        assert!(!self.is_full(), "inflight window overflow");
        debug_assert!(self.last_indexes.back().is_none_or(|&b| b <= last_index));
        self.last_indexes.push_back(last_index);
    }

    /// Frees every message acknowledged by a match at `index`.
    pub fn free_to(&mut self, index: Index) {
        while self.last_indexes.front().is_some_and(|&i| i <= index) {
            self.last_indexes.pop_front();
        }
    }

    /// Frees the oldest slot: a heartbeat answered means the link works, so a window
    /// full of lost messages must not stall replication forever.
    pub fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }

    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// The leader's view of one peer.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be durable on the peer.
    pub match_index: Index,
    /// Highest index the peer acknowledged while not recovering from lost state: what
    /// quorums count. A recovering peer's acknowledgements move replication on
    /// (`match_index`) but never a commit: it may not know what it once promised.
    pub quorum_match: Index,
    /// The peer said, in its latest message, that it is recovering.
    pub recovering: bool,
    /// The recovery nonce this leader appended a [`crate::RecoveryMarker`] for, and
    /// the marker's index.
    pub recovery_marker: Option<(u64, Index)>,
    /// The last recovery nonce this leader heard from the peer: a new one is a new
    /// incarnation, whose log has nothing to do with what the peer matched before.
    pub recovery_nonce: Option<u64>,
    /// Snapshot refusals for size in a row, and heartbeat ticks to wait before the
    /// next attempt (backoff).
    pub snapshot_refusals: u32,
    pub snapshot_retry_ticks: u32,
    /// Next index to send.
    pub next_index: Index,
    pub state: ProgressState,
    /// In Probe: an AppendEntries was sent since the last heartbeat response.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In Snapshot: bytes of the snapshot acknowledged, and ticks since the last chunk.
    pub snapshot_offset: u64,
    pub snapshot_idle_ticks: u32,
    /// The highest ReadIndex confirmation round this peer has answered.
    pub read_round_acked: u64,
}

impl Progress {
    pub fn new(next_index: Index, window: usize) -> Progress {
        Progress {
            match_index: 0,
            quorum_match: 0,
            recovering: false,
            recovery_marker: None,
            recovery_nonce: None,
            snapshot_refusals: 0,
            snapshot_retry_ticks: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(window),
            recent_active: false,
            snapshot_offset: 0,
            snapshot_idle_ticks: 0,
            read_round_acked: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot_offset = 0;
        self.snapshot_idle_ticks = 0;
    }

    pub fn become_probe(&mut self) {
        let next = match self.state {
            // After a snapshot the follower has at least the snapshot's index.
            ProgressState::Snapshot { index } => self.match_index.max(index) + 1,
            _ => self.match_index + 1,
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = next;
    }

    /// The peer lost entries it had acknowledged: nothing it matched can be trusted.
    pub fn reset_after_lost_log(&mut self, next_index: Index) {
        assert!(next_index >= 1);
        self.reset_state(ProgressState::Probe);
        self.match_index = 0;
        self.quorum_match = 0;
        self.next_index = next_index;
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.reset_state(ProgressState::Snapshot { index });
    }

    /// A successful AppendEntriesResponse up to `index`; `counted` unless the peer is
    /// recovering. Returns whether it was news for replication.
    pub fn maybe_update(&mut self, index: Index, counted: bool) -> bool {
        if counted {
            self.quorum_match = self.quorum_match.max(index);
        }
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// A rejection of the AppendEntries whose prev index was `rejected`, with the
    /// follower's hint. Returns false for a stale rejection.
    pub fn maybe_decrease_to(&mut self, rejected: Index, match_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index.checked_sub(1) != Some(rejected) {
            return false;
        }
        self.next_index = rejected.min(match_hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// Whether the leader should hold back further AppendEntries to this peer.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an AppendEntries just sent whose last entry is `last_index`.
    pub fn sent_append(&mut self, last_index: Option<Index>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next_index = last + 1;
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("no appends while sending a snapshot"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inflight_window_fills_and_frees_by_acknowledged_index() {
        let mut w = Inflights::new(2);
        assert!(!w.is_full());
        w.add(3);
        assert!(!w.is_full(), "one of two slots used");
        w.add(5);
        assert!(w.is_full(), "two of two slots used");
        w.free_to(4);
        assert!(!w.is_full(), "a match at 4 acknowledges the message ending at 3");
        w.add(7);
        w.free_to(6);
        assert!(!w.is_full(), "a match at 6 acknowledges the message ending at 5, not 7");
        w.add(8);
        w.free_first();
        assert!(!w.is_full(), "a heartbeat response frees the oldest slot");
        w.add(9);
        w.reset();
        w.add(10);
        assert!(!w.is_full(), "reset empties the window");
    }

    #[test]
    fn a_replicating_peer_pauses_when_its_window_is_full() {
        let mut p = Progress::new(1, 2);
        p.become_replicate();
        p.sent_append(Some(4));
        assert!(!p.is_paused());
        assert_eq!(p.next_index, 5, "pipelined: the next append starts after the last sent");
        p.sent_append(Some(6));
        assert!(p.is_paused(), "two appends in flight fill a window of two");
        assert!(p.maybe_update(4, true));
        p.inflights.free_to(4);
        assert!(!p.is_paused());
    }

    #[test]
    fn leaving_a_snapshot_probes_after_the_snapshot_index() {
        let mut p = Progress::new(1, 4);
        p.maybe_update(3, true);
        p.become_snapshot(10);
        p.become_probe();
        assert_eq!((p.state, p.next_index), (ProgressState::Probe, 11));
        // Without a snapshot the probe starts after the match.
        p.become_probe();
        assert_eq!(p.next_index, 4);
    }

    #[test]
    fn rejections_move_next_index_back() {
        // Replicating: a rejection above the match falls back to just after it.
        let mut p = Progress::new(1, 4);
        p.maybe_update(5, true);
        p.become_replicate();
        p.sent_append(Some(9));
        assert!(!p.maybe_decrease_to(5, 0), "a rejection at or below the match is stale");
        assert!(p.maybe_decrease_to(7, 0));
        assert_eq!(p.next_index, 6);
        // Probing: the follower's hint (its last index) moves next to just after it.
        let mut p = Progress::new(10, 4);
        assert!(!p.maybe_decrease_to(5, 2), "not the probe in flight (prev index 9)");
        assert!(p.maybe_decrease_to(9, 4));
        assert_eq!(p.next_index, 5);
        // Never below the match.
        let mut p = Progress::new(10, 4);
        p.maybe_update(6, true);
        p.next_index = 10;
        assert!(p.maybe_decrease_to(9, 2));
        assert_eq!(p.next_index, 7);
    }
}
