//! The invariant checker catches each kind of violation when fed a broken trace, and
//! stays quiet on a healthy one.

use std::collections::BTreeMap;

use raftkv_raft::ConfState;
use raftkv_sim::{Checker, Observation as O, Violation as V};

fn voters(ids: &[u64]) -> ConfState {
    ConfState::with_voters(ids.iter().copied())
}

fn checker_after(trace: Vec<O>) -> Checker {
    let mut checker = Checker::new();
    for o in trace {
        checker.observe(o);
    }
    checker
}

#[test]
fn a_healthy_trace_has_no_violations() {
    let c = checker_after(vec![
        O::BecameLeader { node: 1, term: 1, first_index: 1, log: vec![] },
        O::Appended { node: 1, index: 1, term: 1, prev_term: 0, data_hash: 7 },
        O::Appended { node: 2, index: 1, term: 1, prev_term: 0, data_hash: 7 },
        O::Applied { node: 1, index: 1, term: 1, data_hash: 7 },
        O::Applied { node: 2, index: 1, term: 1, data_hash: 7 },
        O::BecameLeader { node: 2, term: 2, first_index: 1, log: vec![(1, 1, 7)] },
        O::ReadReleased { node: 2, read_index: 1, acked_before: 1 },
    ]);
    assert_eq!(c.violations(), &[]);
}

#[test]
fn two_leaders_in_one_term_are_reported() {
    let c = checker_after(vec![
        O::BecameLeader { node: 1, term: 4, first_index: 1, log: vec![] },
        O::BecameLeader { node: 2, term: 4, first_index: 1, log: vec![] },
    ]);
    assert_eq!(c.violations(), &[V::TwoLeaders { term: 4, first: 1, second: 2 }]);
}

#[test]
fn a_leader_without_a_committed_entry_is_reported() {
    let c = checker_after(vec![
        O::Applied { node: 1, index: 1, term: 1, data_hash: 7 },
        O::Applied { node: 1, index: 2, term: 1, data_hash: 8 },
        // Node 3 wins term 2 with a log that lost committed entry 2.
        O::BecameLeader { node: 3, term: 2, first_index: 1, log: vec![(1, 1, 7)] },
    ]);
    assert_eq!(c.violations(), &[V::LeaderMissingCommitted { leader: 3, term: 2, index: 2 }]);
}

#[test]
fn diverging_applied_entries_are_reported() {
    let c = checker_after(vec![
        O::Applied { node: 1, index: 1, term: 1, data_hash: 7 },
        O::Applied { node: 2, index: 1, term: 2, data_hash: 9 },
    ]);
    assert_eq!(c.violations(), &[V::AppliedDiverged { node: 2, index: 1, expected_term: 1, got_term: 2 }]);
}

#[test]
fn out_of_order_application_is_reported() {
    let c = checker_after(vec![
        O::Applied { node: 1, index: 2, term: 1, data_hash: 7 },
        O::Applied { node: 1, index: 2, term: 1, data_hash: 7 },
    ]);
    assert_eq!(c.violations(), &[V::AppliedOutOfOrder { node: 1, index: 2, previous: 2 }]);
}

#[test]
fn log_mismatch_is_reported() {
    // Same index and term, different data: the log matching property is broken.
    let c = checker_after(vec![
        O::Appended { node: 1, index: 2, term: 1, prev_term: 1, data_hash: 7 },
        O::Appended { node: 2, index: 2, term: 1, prev_term: 1, data_hash: 8 },
    ]);
    assert!(matches!(c.violations(), [V::LogMismatch { node: 2, index: 2, term: 1, .. }]), "{:?}", c.violations());
    // Same index and term, different predecessor: also broken.
    let c = checker_after(vec![
        O::Appended { node: 1, index: 3, term: 2, prev_term: 1, data_hash: 7 },
        O::Appended { node: 2, index: 3, term: 2, prev_term: 2, data_hash: 7 },
    ]);
    assert!(matches!(c.violations(), [V::LogMismatch { node: 2, index: 3, .. }]), "{:?}", c.violations());
}

#[test]
fn a_stale_read_is_reported() {
    let c = checker_after(vec![O::ReadReleased { node: 1, read_index: 3, acked_before: 5 }]);
    assert_eq!(c.violations(), &[V::StaleRead { node: 1, read_index: 3, acked_before: 5 }]);
}

#[test]
fn a_lost_committed_entry_is_reported_at_the_end() {
    let mut c = checker_after(vec![
        O::Applied { node: 1, index: 1, term: 1, data_hash: 7 },
        O::Applied { node: 1, index: 2, term: 1, data_hash: 8 },
    ]);
    let mut logs = BTreeMap::new();
    logs.insert(1, (1, vec![(1, 1), (2, 1)]));
    logs.insert(2, (1, vec![(1, 1)]));
    c.check_nothing_lost(&logs);
    assert!(matches!(c.violations(), [V::CommittedLost { index: 2, .. }]), "{:?}", c.violations());
}

#[test]
fn healthy_configuration_changes_have_no_violations() {
    let c = checker_after(vec![
        O::ConfApplied { node: 1, index: 1, conf: voters(&[1]) },
        O::ConfApplied { node: 1, index: 2, conf: voters(&[1, 2]) },
        O::ConfApplied { node: 2, index: 2, conf: voters(&[1, 2]) },
        O::ConfApplied { node: 1, index: 5, conf: voters(&[2]) },
        // Node 1 removed itself; its removal is not committed in its own log yet, so it
        // may lead to commit it.
        O::LeaderConf { node: 1, term: 3, conf_index: 5, conf: voters(&[2]), committed_conf: voters(&[1, 2]) },
        O::LeaderConf { node: 2, term: 4, conf_index: 5, conf: voters(&[2]), committed_conf: voters(&[2]) },
    ]);
    assert_eq!(c.violations(), &[]);
}

#[test]
fn diverging_configurations_are_reported() {
    let c = checker_after(vec![
        O::ConfApplied { node: 1, index: 1, conf: voters(&[1]) },
        O::ConfApplied { node: 2, index: 1, conf: voters(&[2]) },
    ]);
    assert_eq!(c.violations(), &[V::ConfDiverged { node: 2, index: 1, expected: voters(&[1]), got: voters(&[2]) }]);
}

#[test]
fn a_configuration_change_of_two_voters_at_once_is_reported() {
    let c = checker_after(vec![
        O::ConfApplied { node: 1, index: 3, conf: voters(&[1, 2, 3]) },
        O::ConfApplied { node: 1, index: 4, conf: voters(&[1, 4, 5]) },
    ]);
    assert!(
        matches!(c.violations(), [V::ConfJumped { index: 3, .. }, V::ConfJumped { index: 4, .. }]),
        "{:?}",
        c.violations()
    );
}

#[test]
fn a_leader_that_is_not_a_voter_is_reported() {
    let mut learner = voters(&[1, 2, 3]);
    learner.learners.insert(4);
    let c = checker_after(vec![O::LeaderConf {
        node: 4,
        term: 2,
        conf_index: 4,
        conf: learner.clone(),
        committed_conf: learner,
    }]);
    assert_eq!(c.violations(), &[V::NonVoterLed { node: 4, term: 2 }]);
}

#[test]
fn a_removed_node_leading_with_a_stale_configuration_is_reported() {
    // Node 3's removal committed at index 7; node 3 then wins with its old configuration.
    let c = checker_after(vec![
        O::ConfApplied { node: 1, index: 1, conf: voters(&[1]) },
        O::ConfApplied { node: 1, index: 2, conf: voters(&[1, 2]) },
        O::ConfApplied { node: 1, index: 3, conf: voters(&[1, 2, 3]) },
        O::ConfApplied { node: 1, index: 7, conf: voters(&[1, 2]) },
        O::LeaderConf { node: 3, term: 5, conf_index: 3, conf: voters(&[1, 2, 3]), committed_conf: voters(&[1, 2, 3]) },
    ]);
    assert_eq!(c.violations(), &[V::StaleLeaderConf { node: 3, term: 5, conf_index: 3, committed_conf_index: 7 }]);
}

#[test]
fn a_leader_elected_late_may_lack_only_what_later_terms_committed() {
    let trace = |leader_term| {
        vec![
            O::Applied { node: 1, index: 1, term: 1, data_hash: 7 },
            O::Committed { node: 1, term: 1, last: 1 },
            // The leader of term 3 commits entry 2; a node paused since it won its
            // votes of term 2 then wakes up as leader of term 2 without it.
            O::Committed { node: 2, term: 3, last: 2 },
            O::Applied { node: 2, index: 2, term: 3, data_hash: 8 },
            O::BecameLeader { node: 3, term: leader_term, first_index: 1, log: vec![(1, 1, 7)] },
        ]
    };
    assert_eq!(checker_after(trace(2)).violations(), &[]);
    // A leader of a later term than the commit must have it.
    assert_eq!(checker_after(trace(4)).violations(), &[V::LeaderMissingCommitted { leader: 3, term: 4, index: 2 }]);
}
