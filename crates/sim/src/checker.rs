//! Safety invariants of Raft, checked over a trace of observations.
//!
//! The checker sees only [`Observation`]s, never the nodes themselves, so a test can
//! feed it a deliberately broken trace and see each violation reported.
//!
//! Log matching is checked inductively: every entry is observed with the term of its
//! predecessor. If every `(index, term)` always carries the same data and the same
//! predecessor term, then two logs that share an `(index, term)` share every entry
//! before it (Raft §5.3) — without comparing whole logs after every step.
//!
//! Membership changes add three rules, over the configurations nodes report when they
//! apply a ConfChange entry (committed configurations) and when they become leader:
//! - `ConfDiverged`: every node computes the same configuration at a committed index.
//! - `ConfJumped`: consecutive committed configurations differ by at most one voter
//!   (the single-server rule, seen in the committed log).
//! - `NonVoterLed`: a new leader is a voter of its latest configuration, or of the one
//!   its log has committed — a node whose removal is in its log but not yet committed
//!   there may lead to commit it (dissertation §4.2.2); learners, new nodes and nodes
//!   that know of their committed removal never lead.
//! - `StaleLeaderConf`: a new leader's configuration is at least as new as the latest
//!   committed one (leader completeness, for configurations). With the rule above, a
//!   node removed by a committed entry leads again only if its own log has that entry
//!   but not its commit — and then it only finishes the hand-off.
//!
//! Observations of committed configurations arrive in index order: the first node to
//! apply an index has applied (or restored a snapshot made by a node that applied)
//! every earlier one.

use std::collections::BTreeMap;

use raftkv_raft::{ConfState, Index, NodeId, Term};

/// A node's log for end-of-run checks: its first index and `(index, term)` pairs.
pub type LogView = (Index, Vec<(Index, Term)>);

/// One thing that happened in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// `node` became leader of `term`; `log` is its whole in-memory log as
    /// `(index, term, data_hash)`, and `first_index` the first index it holds.
    BecameLeader { node: NodeId, term: Term, first_index: Index, log: Vec<(Index, Term, u64)> },
    /// `node` holds (in memory, about to persist) the entry `(index, term)` whose
    /// predecessor has `prev_term`.
    Appended { node: NodeId, index: Index, term: Term, prev_term: Term, data_hash: u64 },
    /// `node` applied the committed entry `(index, term)`.
    Applied { node: NodeId, index: Index, term: Term, data_hash: u64 },
    /// `node`, leading `term`, committed every entry up to `last` (observed when it
    /// decides, not when its Ready is durable: the decision is made either way).
    Committed { node: NodeId, term: Term, last: Index },
    /// A ReadIndex read was released at `read_index`; writes acknowledged before the
    /// read was issued reached `acked_before`.
    ReadReleased { node: NodeId, read_index: Index, acked_before: Index },
    /// `node` applied the committed ConfChange entry at `index`; `conf` is the
    /// configuration its log has as of that index (unchanged if the entry was invalid).
    ConfApplied { node: NodeId, index: Index, conf: ConfState },
    /// The configuration of `node` when it became leader of `term`: `conf`, made by the
    /// entry at `conf_index`, and `committed_conf`, as of its commit index.
    LeaderConf { node: NodeId, term: Term, conf_index: Index, conf: ConfState, committed_conf: ConfState },
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    TwoLeaders { term: Term, first: NodeId, second: NodeId },
    LogMismatch { node: NodeId, index: Index, term: Term, detail: String },
    LeaderMissingCommitted { leader: NodeId, term: Term, index: Index },
    AppliedDiverged { node: NodeId, index: Index, expected_term: Term, got_term: Term },
    AppliedOutOfOrder { node: NodeId, index: Index, previous: Index },
    StaleRead { node: NodeId, read_index: Index, acked_before: Index },
    CommittedLost { index: Index, detail: String },
    ConfDiverged { node: NodeId, index: Index, expected: ConfState, got: ConfState },
    ConfJumped { index: Index, from: ConfState, to: ConfState },
    NonVoterLed { node: NodeId, term: Term },
    StaleLeaderConf { node: NodeId, term: Term, conf_index: Index, committed_conf_index: Index },
}

#[derive(Debug, Default)]
pub struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) → (data hash, predecessor term), as first seen.
    entries: BTreeMap<(Index, Term), (u64, Term)>,
    /// index → (term, data hash) of the entry committed there.
    committed: BTreeMap<Index, (Term, u64)>,
    /// `(last, term)`: a leader of `term` committed up to `last`, the lowest term for
    /// each `last` (an index is committed in the lowest term of a `last` at or above it).
    commit_terms: BTreeMap<Index, Term>,
    last_applied: BTreeMap<NodeId, Index>,
    /// index → configuration as of the committed ConfChange entry there.
    confs: BTreeMap<Index, ConfState>,
    /// The indexes of the committed entries that changed the configuration.
    conf_changed_at: std::collections::BTreeSet<Index>,
    violations: Vec<Violation>,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    pub fn observe(&mut self, observation: Observation) {
        match observation {
            Observation::BecameLeader { node, term, first_index, log } => self.leader(node, term, first_index, &log),
            Observation::Appended { node, index, term, prev_term, data_hash } => {
                self.appended(node, index, term, prev_term, data_hash)
            }
            Observation::Applied { node, index, term, data_hash } => self.applied(node, index, term, data_hash),
            Observation::Committed { term, last, .. } => {
                let lowest = self.commit_terms.entry(last).or_insert(term);
                *lowest = (*lowest).min(term);
            }
            Observation::ReadReleased { node, read_index, acked_before } => {
                if read_index < acked_before {
                    self.violations.push(Violation::StaleRead { node, read_index, acked_before });
                }
            }
            Observation::ConfApplied { node, index, conf } => self.conf_applied(node, index, conf),
            Observation::LeaderConf { node, term, conf_index, conf, committed_conf } => {
                if !conf.voters.contains(&node) && !committed_conf.voters.contains(&node) {
                    self.violations.push(Violation::NonVoterLed { node, term });
                }
                // Changes committed in later terms may be missing from a leader elected
                // late (see `leader`); those of earlier terms may not.
                let required = self.conf_changed_at.iter().rev().copied().find(|&index| {
                    let entry_term = self.committed.get(&index).map_or(0, |c| c.0);
                    self.commit_term(index, entry_term) < term
                });
                if let Some(committed_conf_index) = required.filter(|&required| conf_index < required) {
                    self.violations.push(Violation::StaleLeaderConf { node, term, conf_index, committed_conf_index });
                }
            }
        }
    }

    fn conf_applied(&mut self, node: NodeId, index: Index, conf: ConfState) {
        if let Some(expected) = self.confs.get(&index) {
            if *expected != conf {
                let expected = expected.clone();
                self.violations.push(Violation::ConfDiverged { node, index, expected, got: conf });
            }
            return;
        }
        let before = self.confs.range(..index).next_back().map(|(_, c)| c.clone()).unwrap_or_default();
        if before.voters.symmetric_difference(&conf.voters).count() > 1 {
            self.violations.push(Violation::ConfJumped { index, from: before.clone(), to: conf.clone() });
        }
        if before != conf {
            self.conf_changed_at.insert(index);
        }
        self.confs.insert(index, conf);
    }

    /// A node restarted from its disk: what it applied before is forgotten, and it will
    /// re-apply from its snapshot on.
    pub fn node_restarted(&mut self, node: NodeId) {
        self.last_applied.remove(&node);
    }

    fn leader(&mut self, node: NodeId, term: Term, first_index: Index, log: &[(Index, Term, u64)]) {
        if let Some(&first) = self.leaders.get(&term)
            && first != node
        {
            self.violations.push(Violation::TwoLeaders { term, first, second: node });
        }
        self.leaders.entry(term).or_insert(node);
        // Leader completeness (§5.4): every entry committed in an earlier term is in the
        // new leader's log (entries before `first_index` are covered by its snapshot). A
        // leader elected with votes of its term that reaches it late (it was paused) may
        // lack entries committed in later terms: it can commit nothing with them.
        let by_index: BTreeMap<Index, Term> = log.iter().map(|&(i, t, _)| (i, t)).collect();
        // Descending, with the lowest commit term at or above each index as it goes: an
        // index is committed in the lowest term of a leader that committed up to it or
        // beyond (its own term if none was seen, the strictest).
        let mut commits = self.commit_terms.range(first_index..).rev().peekable();
        let mut lowest = Term::MAX;
        let mut missing = None;
        for (&index, &(entry_term, _)) in self.committed.range(first_index..).rev() {
            while let Some((_, &t)) = commits.next_if(|(last, _)| **last >= index) {
                lowest = lowest.min(t);
            }
            let commit_term = if lowest == Term::MAX { entry_term } else { lowest.max(entry_term) };
            if commit_term < term && by_index.get(&index) != Some(&entry_term) {
                missing = Some(index);
            }
        }
        if let Some(index) = missing {
            self.violations.push(Violation::LeaderMissingCommitted { leader: node, term, index });
        }
    }

    /// The term in which the entry at `index` (of `entry_term`) was committed: the lowest
    /// term of a leader that committed up to it or beyond; the entry's own term (the
    /// strictest) if no leader's commit was observed.
    fn commit_term(&self, index: Index, entry_term: Term) -> Term {
        self.commit_terms.range(index..).map(|(_, t)| *t).min().map_or(entry_term, |t| t.max(entry_term))
    }

    fn appended(&mut self, node: NodeId, index: Index, term: Term, prev_term: Term, data_hash: u64) {
        let known = *self.entries.entry((index, term)).or_insert((data_hash, prev_term));
        if known != (data_hash, prev_term) {
            let detail = format!(
                "first seen as (hash {:x}, prev term {}), now (hash {data_hash:x}, prev term {prev_term})",
                known.0, known.1
            );
            self.violations.push(Violation::LogMismatch { node, index, term, detail });
        }
    }

    fn applied(&mut self, node: NodeId, index: Index, term: Term, data_hash: u64) {
        if let Some(&previous) = self.last_applied.get(&node)
            && index <= previous
        {
            self.violations.push(Violation::AppliedOutOfOrder { node, index, previous });
        }
        self.last_applied.insert(node, index);
        match self.committed.get(&index) {
            Some(&(expected_term, expected_hash)) => {
                if (expected_term, expected_hash) != (term, data_hash) {
                    self.violations.push(Violation::AppliedDiverged { node, index, expected_term, got_term: term });
                }
            }
            None => {
                self.committed.insert(index, (term, data_hash));
            }
        }
    }

    /// At the end of a run: every live node's log must still hold, or have snapshotted,
    /// every committed entry. `logs` maps node → (first index, `(index, term)` pairs).
    pub fn check_nothing_lost(&mut self, logs: &BTreeMap<NodeId, LogView>) {
        for (&node, (first_index, log)) in logs {
            let by_index: BTreeMap<Index, Term> = log.iter().copied().collect();
            for (&index, &(term, _)) in self.committed.range(first_index..) {
                if by_index.get(&index) != Some(&term) {
                    let detail = format!("node {node} lacks committed entry {index} (term {term})");
                    self.violations.push(Violation::CommittedLost { index, detail });
                    return;
                }
            }
        }
    }

    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}
