//! The log rules shared by writing and replay, so both always agree:
//!
//! - an entry at index `i` with `base < i <= last + 1` truncates the log from `i` and
//!   is appended (Raft overwrites a conflicting suffix this way);
//! - an entry with `i > last + 1` leaves a gap: refused;
//! - an entry with `i <= base` (the snapshot index) is not kept, and (being an
//!   overwrite below the snapshot) truncates everything above the base;
//! - a snapshot at (`s`, `t`) drops entries `<= s`, and keeps those above only if the
//!   log held `s` with term `t` (Raft §7); otherwise the whole log is discarded.

use std::collections::VecDeque;

/// Where a log with this base ending at `last` ends after writing an entry at
/// `index`; `Err` names the gap.
pub(crate) fn last_after(base: u64, last: u64, index: u64) -> Result<u64, String> {
    if index <= base {
        Ok(base)
    } else if index <= last + 1 {
        Ok(index)
    } else {
        Err(format!("entry {index} leaves a gap after the last index {last}"))
    }
}

/// The entries after a base (the snapshot position), contiguous from `base_index + 1`.
#[derive(Debug)]
pub(crate) struct Log<T> {
    base_index: u64,
    base_term: u64,
    items: VecDeque<T>,
}

impl<T> Log<T> {
    pub fn new(base_index: u64, base_term: u64) -> Self {
        Log { base_index, base_term, items: VecDeque::new() }
    }

    pub fn base_index(&self) -> u64 {
        self.base_index
    }

    pub fn base_term(&self) -> u64 {
        self.base_term
    }

    pub fn last_index(&self) -> u64 {
        self.base_index + self.items.len() as u64
    }

    /// Applies an entry the caller validated with [`last_after`].
    pub fn apply(&mut self, index: u64, item: T) {
        if index <= self.base_index {
            self.items.clear();
            return;
        }
        assert!(index <= self.last_index() + 1, "unvalidated gap at {index}");
        self.items.truncate((index - self.base_index - 1) as usize);
        self.items.push_back(item);
    }

    /// Moves the base to a snapshot at (`index`, `term`) with the given decision.
    pub fn apply_snapshot(&mut self, index: u64, term: u64, keep_suffix: bool) {
        assert!(index >= self.base_index, "snapshot {index} below base {}", self.base_index);
        if keep_suffix && index <= self.last_index() {
            self.items.drain(..(index - self.base_index) as usize);
        } else {
            self.items.clear();
        }
        self.base_index = index;
        self.base_term = term;
    }

    /// Drops every entry above the base.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    pub fn into_items(self) -> Vec<T> {
        self.items.into()
    }
}

/// The run-time log keeps each entry's term. (Replay keeps whole entries, `Log<Entry>`,
/// and never asks for a term: its snapshot decision uses the term the WAL wrote at the
/// base.)
impl Log<u64> {
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        let offset = index.checked_sub(self.base_index + 1)?;
        self.items.get(offset as usize).copied()
    }

    /// Whether a snapshot at (`index`, `term`) keeps the entries above it.
    pub fn keeps_suffix(&self, index: u64, term: u64) -> bool {
        self.term_at(index) == Some(term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(base: u64, terms: &[u64]) -> Log<u64> {
        let mut log = Log::new(base, 1);
        for (i, t) in terms.iter().enumerate() {
            log.apply(base + 1 + i as u64, *t);
        }
        log
    }

    #[test]
    fn overwrite_truncates_and_gap_is_refused() {
        let mut log = log_with(0, &[1, 1, 1]);
        assert_eq!(last_after(0, 3, 2), Ok(2));
        log.apply(2, 2);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term_at(2), Some(2));
        assert!(last_after(0, 2, 4).unwrap_err().contains("gap"));
    }

    #[test]
    fn snapshot_keeps_suffix_only_when_terms_match() {
        let mut log = log_with(0, &[1, 1, 2, 2]);
        assert!(log.keeps_suffix(3, 2));
        log.apply_snapshot(3, 2, true);
        assert_eq!((log.base_index(), log.last_index()), (3, 4));
        assert_eq!(log.term_at(4), Some(2));

        let mut log = log_with(0, &[1, 1, 2, 2]);
        assert!(!log.keeps_suffix(3, 5));
        log.apply_snapshot(3, 5, false);
        assert_eq!((log.base_index(), log.last_index()), (3, 3));

        let mut log = log_with(0, &[1]);
        assert!(!log.keeps_suffix(9, 1));
        log.apply_snapshot(9, 1, false);
        assert_eq!(log.last_index(), 9);
    }

    #[test]
    fn write_below_base_clears_the_suffix() {
        let mut log = log_with(5, &[1, 1]);
        assert_eq!(last_after(5, 7, 3), Ok(5));
        log.apply(3, 1);
        assert_eq!(log.last_index(), 5);
    }
}
