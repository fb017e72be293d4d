//! The random simulation is wired: a bug planted in every node's core is caught by the
//! invariant checker, through the real observation path (the nodes' Ready outputs and
//! applied entries, turned into observations by the driver), within a bounded number of
//! random seeds; and the seed that caught it passes without the bug, so the bug, not
//! the seed, is what was caught. The checker's own tests (tests/checker.rs) feed it
//! traces directly and cannot show this.
//!
//! The bugs exist only with raftkv-raft's test-only `planted-bug` feature:
//!
//! ```sh
//! cargo test -p raftkv-sim --features planted-bug --test planted_bug
//! ```
//!
//! (`cargo xtask planted-bug`; scripts/test-all runs it after the fast tier.)

use raftkv_raft::PlantedBug;
use raftkv_sim::{Failure, Violation, run_seed, run_seed_with};

/// Seeds tried per bug and cluster size before the simulation counts as blind to it.
/// Measured: each bug is caught within the first few seeds; the bound leaves room for
/// changes to the simulation's random choices without letting a blind one pass.
const MAX_SEEDS: u64 = 50;

/// The first seed from `first` whose run fails with `bug` planted, and its failure.
fn first_caught(bug: PlantedBug, nodes: usize, first: u64) -> (u64, Failure) {
    for seed in first..first + MAX_SEEDS {
        if let Err(failure) = run_seed_with(seed, nodes, Some(bug)) {
            return (seed, failure);
        }
    }
    panic!("{bug:?} went unnoticed by {MAX_SEEDS} seeds of {nodes}-node clusters from seed {first}")
}

/// Asserts the random simulation catches `bug` through the checker, and that the
/// catching seed passes without it. Returns the seed and the checker's violations.
fn caught_by_the_checker(bug: PlantedBug, nodes: usize, first: u64) -> Vec<Violation> {
    let (seed, failure) = first_caught(bug, nodes, first);
    eprintln!("{bug:?}, {nodes} nodes: caught by seed {seed} (the {}th tried): {}", seed - first + 1, failure.reason);
    assert!(
        !failure.checker_violations.is_empty(),
        "{bug:?}: seed {seed} failed, but not by the checker (harness or liveness):\n{failure}"
    );
    if let Err(f) = run_seed(seed, nodes) {
        panic!("seed {seed} fails without {bug:?} too, so it proves nothing about the bug:\n{f}");
    }
    failure.checker_violations
}

#[test]
fn votes_for_a_stale_log_are_caught() {
    for (nodes, first) in [(3, 0), (5, 1_000_000)] {
        let violations = caught_by_the_checker(PlantedBug::VoteForStaleLog, nodes, first);
        // A leader elected without a committed entry, or what follows from one.
        let safety = violations.iter().any(|v| {
            matches!(
                v,
                Violation::LeaderMissingCommitted { .. }
                    | Violation::AppliedDiverged { .. }
                    | Violation::CommittedLost { .. }
                    | Violation::LogMismatch { .. }
            )
        });
        assert!(safety, "{violations:?}");
    }
}

#[test]
fn commits_without_a_quorum_are_caught() {
    for (nodes, first) in [(3, 0), (5, 1_000_000)] {
        let violations = caught_by_the_checker(PlantedBug::CommitWithoutQuorum, nodes, first);
        let safety = violations.iter().any(|v| {
            matches!(
                v,
                Violation::LeaderMissingCommitted { .. }
                    | Violation::AppliedDiverged { .. }
                    | Violation::CommittedLost { .. }
            )
        });
        assert!(safety, "{violations:?}");
    }
}
