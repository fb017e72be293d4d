//! The replicated log as the core sees it: a snapshot boundary, the entries after it,
//! and three cursors — what is durable, what is committed, what is applied — and the
//! cluster configurations the log holds.
//!
//! Configurations follow the Raft dissertation's single-server rule (§4.1): a node uses
//! the latest configuration in its log, committed or not. So the log tracks a base
//! configuration (as of its offset) and the configuration after each ConfChange entry
//! it holds; truncating the log takes back the configurations of the entries removed.

use crate::types::{ConfChange, ConfState, Entry, EntryKind, Index, SnapshotMeta, Term};

/// The in-memory log. Entries at or below `offset` are compacted into a snapshot.
#[derive(Debug)]
pub struct RaftLog {
    /// Index of the last compacted entry (0 for none).
    offset: Index,
    /// Term of the entry at `offset`.
    offset_term: Term,
    /// Entries `offset+1 ..= last_index()`.
    entries: Vec<Entry>,
    /// Highest index known to be durable and equal to the in-memory log.
    persisted: Index,
    /// First index not yet handed to the runtime for persisting.
    unstable_from: Index,
    pub committed: Index,
    pub applied: Index,
    /// The configuration as of `offset`.
    base_conf: ConfState,
    /// (index, configuration after it) for each valid ConfChange entry in `entries`,
    /// in index order.
    confs: Vec<(Index, ConfState)>,
}

impl RaftLog {
    /// A log recovered from storage: everything given is durable already. `base_conf`
    /// is the configuration as of the snapshot (or of the empty log).
    pub fn recovered(snapshot: &SnapshotMeta, base_conf: ConfState, entries: Vec<Entry>, committed: Index) -> RaftLog {
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, snapshot.index + 1 + i as u64, "recovered log has a gap");
        }
        let last = snapshot.index + entries.len() as u64;
        let mut log = RaftLog {
            offset: snapshot.index,
            offset_term: snapshot.term,
            entries: Vec::new(),
            persisted: last,
            unstable_from: last + 1,
            committed: committed.clamp(snapshot.index, last),
            applied: snapshot.index,
            base_conf,
            confs: Vec::new(),
        };
        log.track_confs(&entries);
        log.entries = entries;
        log
    }

    // ---- configurations ----

    /// Records the configurations of ConfChange entries about to follow the log's end.
    fn track_confs(&mut self, entries: &[Entry]) {
        for entry in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            let next = ConfChange::decode(&entry.data).and_then(|cc| self.conf().apply_change(&cc));
            // An undecodable or invalid change is a no-op, on every node alike: validity
            // depends only on the log before it.
            if let Ok(conf) = next {
                self.confs.push((entry.index, conf));
            }
        }
    }

    /// The latest configuration in the log, committed or not.
    pub fn conf(&self) -> &ConfState {
        self.confs.last().map_or(&self.base_conf, |(_, c)| c)
    }

    /// The index of the entry that made the latest configuration (the log's offset if
    /// that entry is compacted, or there is none).
    pub fn conf_index(&self) -> Index {
        self.confs.last().map_or(self.offset, |(i, _)| *i)
    }

    /// The configuration as of `index` (after applying the entry there), or `None` if
    /// `index` is compacted away or beyond the log's end.
    pub fn conf_at(&self, index: Index) -> Option<&ConfState> {
        if index < self.offset || index > self.last_index() {
            return None;
        }
        Some(self.confs.iter().rev().find(|(i, _)| *i <= index).map_or(&self.base_conf, |(_, c)| c))
    }

    pub fn first_index(&self) -> Index {
        self.offset + 1
    }

    pub fn last_index(&self) -> Index {
        self.offset + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    pub fn persisted(&self) -> Index {
        self.persisted
    }

    /// The term of the entry at `index`, or `None` if it is compacted or beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.get(index).map(|e| e.term)
    }

    fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        self.entries.get((index - self.offset - 1) as usize)
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft §5.4.1: is a candidate's log at least as up to date as ours?
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries from `lo` on, at most `max_bytes` (but at least one). `None` if `lo` is
    /// compacted.
    pub fn entries_from(&self, lo: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        if lo <= self.offset {
            return None;
        }
        let start = ((lo - self.offset - 1) as usize).min(self.entries.len());
        let mut bytes = 0;
        let taken = self.entries[start..]
            .iter()
            .take_while(|e| {
                bytes += e.size();
                bytes <= max_bytes || bytes == e.size()
            })
            .cloned()
            .collect();
        Some(taken)
    }

    /// Appends entries a leader creates. They must directly follow the last index.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "leader append must be contiguous");
        assert!(entry.term >= self.last_term(), "terms never decrease along the log");
        self.track_confs(std::slice::from_ref(&entry));
        self.entries.push(entry);
    }

    /// The AppendEntries consistency check and append (§5.3). Returns the index of the
    /// last new entry on success, `None` if `prev` does not match.
    pub fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
    ) -> Result<Option<Index>, LogError> {
        if !self.match_term(prev_index, prev_term) {
            return Ok(None);
        }
        let last_new = prev_index + entries.len() as u64;
        if let Some(conflict) = self.find_conflict(entries) {
            if conflict <= self.committed {
                return Err(LogError::ConflictWithCommitted { index: conflict, committed: self.committed });
            }
            let skip = (conflict - prev_index - 1) as usize;
            self.truncate_and_append(&entries[skip..]);
        }
        Ok(Some(last_new))
    }

    /// The first index where `entries` disagree with the log, or extend past its end.
    fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries.iter().find(|e| e.index > self.offset && !self.match_term(e.index, e.term)).map(|e| e.index)
    }

    fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(first.index > self.offset && first.index <= self.last_index() + 1);
        self.entries.truncate((first.index - self.offset - 1) as usize);
        self.confs.retain(|(i, _)| *i < first.index);
        self.track_confs(entries);
        self.entries.extend_from_slice(entries);
        self.persisted = self.persisted.min(first.index - 1);
        self.unstable_from = self.unstable_from.min(first.index);
    }

    /// The largest index ≤ `index` whose term is ≤ `term` (fast backtracking: skip a
    /// whole term of conflicting entries per round trip).
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let mut i = index.min(self.last_index());
        while i > self.offset {
            match self.term(i) {
                Some(t) if t > term => i -= 1,
                _ => break,
            }
        }
        i
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(index <= self.last_index(), "commit {index} beyond last index {}", self.last_index());
        self.committed = index;
        true
    }

    /// Entries to hand to the runtime for persisting.
    pub fn unstable_entries(&self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        self.entries_from(from, usize::MAX).unwrap_or_default()
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Marks entries as handed out for persisting.
    pub fn mark_handed_out(&mut self) {
        self.unstable_from = self.last_index() + 1;
    }

    /// The runtime persisted the entries handed out, the last one at `index`. Entries
    /// truncated or replaced by a snapshot meanwhile do not count as persisted.
    pub fn persisted_to(&mut self, index: Index) {
        let still_valid = index.min(self.unstable_from - 1).min(self.last_index());
        self.persisted = self.persisted.max(still_valid);
    }

    /// Committed entries that are durable here and not yet applied, up to `max_bytes`.
    pub fn next_committed(&self, max_bytes: usize) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        if hi <= self.applied {
            return Vec::new();
        }
        let mut out = self.entries_from(self.applied + 1, max_bytes).unwrap_or_default();
        out.retain(|e| e.index <= hi);
        out
    }

    pub fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applied
    }

    pub fn applied_to(&mut self, index: Index) {
        assert!(index <= self.committed, "applied {index} beyond commit {}", self.committed);
        self.applied = self.applied.max(index);
    }

    /// Replaces the log with a snapshot's position (a follower installing a snapshot).
    pub fn restore(&mut self, meta: &SnapshotMeta) {
        assert!(meta.index > self.committed, "restore must move commit forward");
        self.offset = meta.index;
        self.offset_term = meta.term;
        self.entries.clear();
        self.committed = meta.index;
        self.persisted = meta.index;
        self.unstable_from = meta.index + 1;
        self.base_conf = meta.conf.clone();
        self.confs.clear();
    }

    /// Drops entries up to `index` (already in a snapshot).
    pub fn compact(&mut self, index: Index) {
        if index <= self.offset {
            return;
        }
        assert!(index <= self.applied, "compacting {index} beyond applied {}", self.applied);
        let term = self.term(index).expect("index is in the log");
        self.base_conf = self.conf_at(index).expect("index is in the log").clone();
        self.confs.retain(|(i, _)| *i > index);
        self.entries.drain(..(index - self.offset) as usize);
        self.offset = index;
        self.offset_term = term;
    }

    /// The entries currently in memory, for inspection by tests and the simulator.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// A message that would break the log's safety; the message is dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("entry {index} conflicts with committed entries up to {committed}")]
    ConflictWithCommitted { index: Index, committed: Index },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ConfChangeKind, ConfState};
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: EntryKind::Command, data: Bytes::new() }
    }

    fn snapshot_meta(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta { index, term, conf: ConfState::with_voters([1, 2, 3]) }
    }

    /// A snapshot at 5 (term 3) of {1, 2, 3}, then 6 (term 3), 7 (term 4: node 4 joins
    /// as a learner) and 8 (term 4).
    fn log_after_snapshot() -> RaftLog {
        let add_learner = ConfChange::new(ConfChangeKind::AddLearner, 4, Bytes::new()).encode();
        let conf_change = Entry { index: 7, term: 4, kind: EntryKind::ConfChange, data: add_learner };
        let meta = snapshot_meta(5, 3);
        RaftLog::recovered(&meta, meta.conf.clone(), vec![entry(6, 3), conf_change, entry(8, 4)], 5)
    }

    #[test]
    fn conf_at_answers_from_the_snapshot_index_to_the_last_index() {
        let log = log_after_snapshot();
        let base = ConfState::with_voters([1, 2, 3]);
        let with_learner = ConfState { learners: [4].into(), ..base.clone() };
        assert_eq!(log.conf_at(4), None, "compacted away");
        assert_eq!(log.conf_at(5), Some(&base), "the snapshot's own index");
        assert_eq!(log.conf_at(6), Some(&base));
        assert_eq!(log.conf_at(7), Some(&with_learner));
        assert_eq!(log.conf_at(8), Some(&with_learner));
        assert_eq!(log.conf_at(9), None, "beyond the last index");
    }

    #[test]
    fn backtracking_by_term_never_goes_below_the_snapshot_index() {
        let log = log_after_snapshot();
        assert_eq!(log.find_conflict_by_term(8, 3), 6);
        // Every entry the log holds, the snapshot's included, has a higher term: the
        // answer is the snapshot's index, not an index whose term the log cannot know.
        assert_eq!(log.find_conflict_by_term(8, 2), 5);
    }

    #[test]
    fn a_batch_counts_each_entrys_overhead_so_empty_entries_fill_it_too() {
        let empty: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        let log = RaftLog::recovered(&SnapshotMeta::default(), ConfState::default(), empty, 0);
        assert_eq!(entry(1, 1).size(), 24);
        assert_eq!(log.entries_from(1, 48).map(|b| b.len()), Some(2));
        assert_eq!(log.entries_from(1, 47).map(|b| b.len()), Some(1));
    }

    #[test]
    fn appended_entries_are_unstable_until_handed_out() {
        let mut log = log_after_snapshot();
        assert!(!log.has_unstable(), "recovered entries are durable already");
        log.append(entry(9, 4));
        assert!(log.has_unstable());
        assert_eq!(log.unstable_entries(), vec![entry(9, 4)]);
        log.mark_handed_out();
        assert!(!log.has_unstable());
    }

    #[test]
    fn a_restored_log_has_nothing_unstable() {
        let mut log = log_after_snapshot();
        log.restore(&snapshot_meta(10, 5));
        assert_eq!((log.first_index(), log.last_index(), log.persisted()), (11, 10, 10));
        assert!(!log.has_unstable());
        assert!(log.unstable_entries().is_empty());
    }

    #[test]
    fn a_write_handed_out_before_a_snapshot_does_not_count_as_persisted() {
        let mut log = RaftLog::recovered(&SnapshotMeta::default(), ConfState::default(), Vec::new(), 0);
        let old_write: Vec<Entry> = (1..=7).map(|i| entry(i, 2)).collect();
        assert_eq!(log.maybe_append(0, 0, &old_write), Ok(Some(7)));
        log.mark_handed_out();
        // A snapshot at 5 replaces the log, and the leader sends 6..=8 again (the same
        // entries) before the write of 1..=7 completes.
        log.restore(&snapshot_meta(5, 2));
        assert_eq!(log.maybe_append(5, 2, &[entry(6, 2), entry(7, 2), entry(8, 2)]), Ok(Some(8)));
        log.persisted_to(7);
        assert_eq!(log.persisted(), 5, "6 and 7 were written before the snapshot, not after it");
        log.mark_handed_out();
        log.persisted_to(8);
        assert_eq!(log.persisted(), 8);
    }
}
