//! The simulated disk: exactly what a node fsynced.

use raftkv_raft::{Entry, HardState, Snapshot};

/// What a simulated disk holds: exactly what was fsynced.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimDisk {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl SimDisk {
    pub fn write_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        self.entries.retain(|e| e.index < first.index);
        self.entries.extend_from_slice(entries);
    }

    /// A snapshot from the leader replaces the log unless the log already has the
    /// entry the snapshot ends at.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = &snapshot.meta;
        let matches = self.entries.iter().any(|e| e.index == meta.index && e.term == meta.term);
        if matches {
            self.entries.retain(|e| e.index > meta.index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(snapshot);
    }

    /// Whether a node restarting on this disk comes back with lost state, as
    /// raftkv-server decides it: no snapshot and no entries, or entries without any
    /// hard state (`Recovered::discard_torn_first_write`).
    pub fn holds_no_state(&self) -> bool {
        self.snapshot.is_none() && (self.entries.is_empty() || self.hard_state == HardState::default())
    }
}
