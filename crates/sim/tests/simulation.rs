//! The randomized simulation: many seeds of 3- and 5-node clusters under faults.
//!
//! `RAFT_SIM_SEEDS=100000` runs more seeds; `RAFT_SIM_SEED=<n>` (with
//! `RAFT_SIM_NODES`) replays one seed exactly, via the `replay` test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raftkv_sim::{run_seed, run_seed_traced};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")))
}

/// Runs `count` seeds starting at `first` on all cores; panics with every failure's
/// replay line.
fn run_many(first: u64, count: u64, nodes: usize) {
    let next = Arc::new(AtomicU64::new(first));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures) = (next.clone(), failures.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    // A panic in the core is a failure of its seed, reported with the rest.
                    match std::panic::catch_unwind(|| run_seed(seed, nodes)) {
                        Ok(Ok(_)) => {}
                        Ok(Err(failure)) => failures.lock().unwrap().push(failure.to_string()),
                        Err(_) => failures.lock().unwrap().push(format!(
                            "simulation panicked: seed={seed} nodes={nodes}\nreplay: RAFT_SIM_SEED={seed} RAFT_SIM_NODES={nodes} cargo test -p raftkv-sim --test simulation replay -- --nocapture"
                        )),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("simulation thread");
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} of {count} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn three_node_clusters_stay_safe_and_live() {
    let seeds = env_u64("RAFT_SIM_SEEDS").unwrap_or(1_000);
    run_many(0, seeds, 3);
}

#[test]
fn five_node_clusters_stay_safe_and_live() {
    let seeds = env_u64("RAFT_SIM_SEEDS").unwrap_or(1_000);
    run_many(1_000_000, seeds, 5);
}

#[test]
fn replay() {
    let Some(seed) = env_u64("RAFT_SIM_SEED") else { return };
    let nodes = env_u64("RAFT_SIM_NODES").unwrap_or(3) as usize;
    match run_seed(seed, nodes) {
        Ok(report) => println!("seed {seed} passed: {report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn a_run_is_a_pure_function_of_its_seed() {
    let a = run_seed(7, 3).expect("seed 7 passes");
    let b = run_seed(7, 3).expect("seed 7 passes");
    assert_eq!((a.faults, a.acked_commands, a.time), (b.faults, b.acked_commands, b.time));
    assert!(a.acked_commands > 10, "the workload committed commands: {a:?}");
    assert!(a.faults > 10, "the nemesis injected faults: {a:?}");
}

#[test]
fn the_nemesis_changes_membership() {
    let reports: Vec<_> = (0..40).map(|seed| run_seed(seed, 3).expect("seed passes")).collect();
    let changes: usize = reports.iter().map(|r| r.conf_changes).sum();
    let leader_removals: usize = reports.iter().map(|r| r.leader_removals).sum();
    assert!(changes > 40, "membership changes were made: {changes}");
    assert!(leader_removals > 0, "leaders were removed: {leader_removals}");
}

/// The network is not polite: some messages are held past the longest election
/// timeout, and some of those reach a node that has moved to a newer term meanwhile.
#[test]
fn late_messages_arrive_after_a_new_term_began() {
    let reports: Vec<_> = (0..40).map(|seed| run_seed(seed, 3).expect("seed passes")).collect();
    let late: u64 = reports.iter().map(|r| r.late_messages).sum();
    let stale: u64 = reports.iter().map(|r| r.stale_late_messages).sum();
    let seeds = reports.iter().filter(|r| r.stale_late_messages > 0).count();
    eprintln!("40 seeds: {late} late messages delivered, {stale} of an older term, in {seeds} seeds");
    assert!(stale > 0 && seeds > 5, "late messages of an older term: {stale} in {seeds} of 40 seeds");
}

/// Crashes tear writes: part of the entries of a write not yet durable survive.
#[test]
fn crashes_tear_writes() {
    let reports: Vec<_> = (0..40).map(|seed| run_seed(seed, 3).expect("seed passes")).collect();
    let torn: u64 = reports.iter().map(|r| r.torn_writes).sum();
    let seeds = reports.iter().filter(|r| r.torn_writes > 0).count();
    eprintln!("40 seeds: {torn} torn writes, in {seeds} seeds");
    assert!(torn > 10 && seeds > 5, "{torn} torn writes in {seeds} of 40 seeds");
}

/// Fsyncs fail: each failure stops its node at once (its write torn or lost), and the
/// runs stay safe and live around it.
#[test]
fn fsyncs_fail_and_stop_their_node() {
    let reports: Vec<_> = (0..40).map(|seed| run_seed(seed, 3).expect("seed passes")).collect();
    let failed: u64 = reports.iter().map(|r| r.failed_fsyncs).sum();
    let seeds = reports.iter().filter(|r| r.failed_fsyncs > 0).count();
    eprintln!("40 seeds: {failed} failed fsyncs, in {seeds} seeds");
    assert!(failed > 10 && seeds > 5, "{failed} failed fsyncs in {seeds} of 40 seeds");
}

/// Reads are checked by the value they return (crates/sim/src/reads.rs), and the runs
/// make many of them.
#[test]
fn reads_are_checked_by_value() {
    let reports: Vec<_> = (0..20).map(|seed| run_seed(seed, 3).expect("seed passes")).collect();
    let reads: u64 = reports.iter().map(|r| r.value_reads).sum();
    let seeds = reports.iter().filter(|r| r.value_reads > 0).count();
    eprintln!("20 seeds: {reads} reads checked by value, in {seeds} seeds");
    assert!(seeds == 20 && reads > 1_000, "{reads} reads checked by value in {seeds} of 20 seeds");
}

#[test]
#[ignore]
fn membership_stats() {
    for nodes in [3, 5] {
        let first = if nodes == 3 { 0 } else { 1_000_000 };
        let reports: Vec<_> = (first..first + 200).map(|seed| run_seed(seed, nodes).expect("seed passes")).collect();
        let changes: usize = reports.iter().map(|r| r.conf_changes).sum();
        let removals: usize = reports.iter().map(|r| r.leader_removals).sum();
        let acked: u64 = reports.iter().map(|r| r.acked_commands).sum();
        println!("nodes={nodes}: 200 seeds, {changes} conf changes, {removals} leader self-removals, {acked} acked");
    }
}

/// Trace tags ride in every message of a traced run and come back in the events, yet
/// the core decides exactly as without them: every event, at the same time, on the
/// same node, on the same seeds.
#[test]
fn trace_tags_never_change_a_decision() {
    for (seed, nodes) in (0..20).map(|s| (s, 3)).chain((100..110).map(|s| (s, 5))) {
        let plain = run_seed(seed, nodes).expect("the seed passes");
        let traced = run_seed_traced(seed, nodes).expect("the seed passes with trace tags");
        assert_eq!(plain.traced_events, 0, "seed {seed}: no tags without tracing");
        assert!(traced.traced_events > 0, "seed {seed}: the tags came back in events: {traced:?}");
        assert_eq!(
            (plain.decisions, plain.acked_commands, plain.time),
            (traced.decisions, traced.acked_commands, traced.time),
            "seed {seed} nodes {nodes}: the trace tags changed what the nodes decided"
        );
    }
}

/// The fingerprint that test compares sees a changed decision, and only the tags are
/// left out of it.
#[test]
fn the_decision_fingerprint_sees_a_changed_vote_but_not_a_tag() {
    use raftkv_raft::{CandidateRequest, Event, LogPosition, TraceTag, VoteReason};
    use raftkv_sim::decisions_fingerprint;
    let vote = |granted: bool, trace: Option<TraceTag>| {
        let last = LogPosition { term: 2, index: 7 };
        let candidate = CandidateRequest { id: 1, term: 3, pre_vote: false, last };
        let reason = if granted { VoteReason::Granted } else { VoteReason::StaleLog };
        vec![(5, 2, Event::VoteDecided { candidate, granted, reason, own_last: last, trace })]
    };
    let tag = Some(TraceTag { trace_id: 9, span_id: 9 });
    assert_eq!(decisions_fingerprint(&vote(true, None), false), decisions_fingerprint(&vote(true, tag), false));
    assert_ne!(decisions_fingerprint(&vote(true, None), true), decisions_fingerprint(&vote(true, tag), true));
    assert_ne!(decisions_fingerprint(&vote(true, tag), false), decisions_fingerprint(&vote(false, tag), false));
}
