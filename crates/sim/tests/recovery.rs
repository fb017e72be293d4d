//! Nodes that lose their state (a wiped disk) and snapshots a follower cannot take,
//! shown on scripted simulated clusters with fixed seeds. Each protection is also shown
//! missing (a test-only switch), with the checker catching what that breaks.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Event, Index, NodeId, PlantedBug};
use raftkv_sim::{Cluster, SimOptions, TICK, Violation};

/// Generous bound for an election: several randomized timeouts.
const ELECTION_BOUND: u64 = 60 * TICK;

fn put(seq: u64, key: &str, value: &str) -> Command {
    let op = WriteOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) };
    Command { client_id: 1, seq, op }
}

fn quiet_cluster(opts: SimOptions, seed: u64) -> Cluster {
    let mut c = Cluster::new(seed, opts);
    c.clients_active = false;
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some()), "a leader is elected");
    c
}

/// Proposes at the leader; runs until the leader committed it and each of `appliers`
/// applied it. Returns its index.
fn commit_on(c: &mut Cluster, command: &Command, appliers: &[NodeId]) -> Index {
    let leader = c.leader().expect("a leader");
    let (index, _) = c.propose_at(leader, command).expect("the leader accepts");
    let done = c.run_until(ELECTION_BOUND, |c| appliers.iter().all(|id| c.kv(*id).applied_index() >= index));
    assert!(done, "the command at {index} is applied on {appliers:?}:\n{}", c.describe());
    index
}

fn others(c: &Cluster, but: NodeId) -> (NodeId, NodeId) {
    let rest: Vec<NodeId> = c.node_ids().into_iter().filter(|&id| id != but).collect();
    (rest[0], rest[1])
}

/// The review's scenario: the stale node S is cut off; a write commits on the leader L
/// and on W; L crashes; W is wiped and restarted; the network heals. Returns the
/// cluster, (L, W, S) and the write's index.
fn wiped_member_scenario(seed: u64, protected: bool) -> (Cluster, (NodeId, NodeId, NodeId), Index) {
    let mut c = quiet_cluster(SimOptions::new(3), seed);
    commit_on(&mut c, &put(1, "before", "everywhere"), &[1, 2, 3]);
    let l = c.leader().unwrap();
    let (w, s) = others(&c, l);
    c.isolate(s);
    let index = commit_on(&mut c, &put(2, "k", "committed on L and W"), &[l, w]);
    c.crash(l);
    if protected {
        c.restart_empty(w);
    } else {
        c.restart_empty_unprotected(w);
    }
    c.heal();
    (c, (l, w, s), index)
}

#[test]
fn a_wiped_member_never_helps_a_stale_node_win() {
    let (mut c, (l, w, s), index) = wiped_member_scenario(101, true);
    assert!(c.raw(w).unwrap().status().recovering, "the wiped node recovers");
    // Dozens of election timeouts: S keeps campaigning, W keeps refusing.
    let elected = c.run_until(40 * ELECTION_BOUND, |c| c.leader().is_some());
    assert!(!elected, "nobody may lead without L, the only voter that knows the write:\n{}", c.describe());
    let tried = c.events.iter().filter(|(_, id, e)| *id == s && matches!(e, Event::ElectionStarted { .. })).count();
    assert!(tried > 5, "S campaigned ({tried} times) and lost");
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    // The old leader returns: the cluster is available again, the write is kept, and
    // W's recovery ends through its marker.
    c.restart(l);
    let back = c.run_until(4 * ELECTION_BOUND, |c| {
        c.leader().is_some() && !c.raw(w).unwrap().status().recovering && c.all_applied(index)
    });
    assert!(back, "the cluster recovers once L is back:\n{}", c.describe());
    let marked = c.events.iter().any(|(_, _, e)| matches!(e, Event::RecoveryMarked { peer, .. } if *peer == w));
    assert!(marked, "the leader appended W's recovery marker");
    for id in [l, w, s] {
        assert_eq!(c.kv(id).get(b"k"), Some(Bytes::from("committed on L and W")), "node {id} has the write");
    }
    c.check_nothing_lost();
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn without_recovery_the_wiped_member_elects_the_stale_node_and_the_checker_says_so() {
    let (mut c, _, _) = wiped_member_scenario(101, false);
    c.run_until(40 * ELECTION_BOUND, |c| !c.violations().is_empty());
    let caught = c.checker_violations().iter().any(|v| matches!(v, Violation::LeaderMissingCommitted { .. }));
    assert!(caught, "the stale node won and lacks the committed write: {:?}", c.violations());
}

/// A leader paused (SIGSTOP) at term T wakes up still leading T, while X leads T+1 and
/// committed `e` with W's help; X is down and W was wiped. The stale leader must not end
/// W's recovery with W's own acknowledgements: W would then vote and help it overwrite
/// `e`. Returns the cluster, (stale leader, X, W) and `e`'s index.
fn stale_leader_scenario(opts: SimOptions, seed: u64) -> (Cluster, (NodeId, NodeId, NodeId), Index) {
    let mut c = quiet_cluster(opts, seed);
    commit_on(&mut c, &put(1, "before", "everywhere"), &[1, 2, 3]);
    let stale = c.leader().unwrap();
    c.pause(stale);
    c.isolate(stale);
    let moved = c.run_until(4 * ELECTION_BOUND, |c| c.leader().is_some_and(|l| l != stale && !c.is_paused(l)));
    assert!(moved, "the others elect a new leader:\n{}", c.describe());
    let x = c.leader().unwrap();
    let (a, b) = others(&c, stale);
    let w = if a == x { b } else { a };
    let e = commit_on(&mut c, &put(2, "e", "committed by X and W"), &[x, w]);
    c.crash(x);
    c.restart_empty(w);
    c.partition(&[vec![stale, w], vec![x]]);
    c.resume(stale);
    (c, (stale, x, w), e)
}

#[test]
fn a_stale_leader_cannot_end_a_recovery_with_the_recovering_nodes_own_acks() {
    let (mut c, (stale, x, w), e) = stale_leader_scenario(SimOptions::new(3), 202);
    c.run_for(20 * ELECTION_BOUND);
    assert!(c.raw(w).unwrap().status().recovering, "W's marker cannot commit without X:\n{}", c.describe());
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    c.restart(x);
    c.heal();
    let back = c.run_until(4 * ELECTION_BOUND, |c| {
        c.leader().is_some() && !c.raw(w).unwrap().status().recovering && c.all_applied(e)
    });
    assert!(back, "X returns, leads, and W recovers:\n{}", c.describe());
    for id in [stale, x, w] {
        assert_eq!(c.kv(id).get(b"e"), Some(Bytes::from("committed by X and W")), "node {id} has e");
    }
    c.check_nothing_lost();
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn counting_a_recovering_nodes_acks_is_caught_by_the_checker() {
    let mut opts = SimOptions::new(3);
    opts.planted_bug = Some(PlantedBug::CountRecoveringAcks);
    let (mut c, _, _) = stale_leader_scenario(opts, 202);
    c.run_until(20 * ELECTION_BOUND, |c| !c.violations().is_empty());
    let caught = c.checker_violations().iter().any(|v| matches!(v, Violation::AppliedDiverged { .. }));
    assert!(caught, "the stale leader overwrote e with W's help: {:?}", c.violations());
}

#[test]
fn a_new_cluster_ends_its_founders_recoveries_and_a_late_founder_recovers_from_the_leader() {
    let mut c = quiet_cluster(SimOptions::new(3), 303);
    // Every founder started with an empty disk, recovering, until all were seen at term 1.
    for id in c.node_ids() {
        let started = c.events.iter().any(|(_, n, e)| *n == id && matches!(e, Event::RecoveryStarted { .. }));
        let confirmed =
            c.events.iter().any(|(_, n, e)| *n == id && matches!(e, Event::RecoveryFinished { index: 0, .. }));
        assert!(started && confirmed, "node {id} recovered as a founder of a brand-new cluster");
    }
    commit_on(&mut c, &put(1, "k", "v"), &[1, 2, 3]);
    // A founder wiped now finds the others past term 1: only its marker ends its recovery.
    let leader = c.leader().unwrap();
    let (w, _) = others(&c, leader);
    c.restart_empty(w);
    let recovered = c.run_until(4 * ELECTION_BOUND, |c| !c.raw(w).unwrap().status().recovering);
    assert!(recovered, "the wiped founder recovers from the leader:\n{}", c.describe());
    let by_marker = c.events.iter().rev().find_map(|(_, n, e)| match e {
        Event::RecoveryFinished { index, .. } if *n == w => Some(*index),
        _ => None,
    });
    assert!(by_marker.is_some_and(|index| index > 0), "ended by its marker: {by_marker:?}");
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn a_snapshot_too_large_for_a_follower_is_retried_with_backoff_not_at_once() {
    let mut c = Cluster::new(404, SimOptions::new(3));
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some()), "a leader is elected");
    let (follower, _) = others(&c, c.leader().unwrap());
    // The follower's limit is far below any snapshot; it takes effect when it restarts.
    c.opts.max_snapshot_bytes = BTreeMap::from([(follower, 16)]);
    c.crash(follower);
    let every = c.opts.snapshot_every;
    assert!(c.run_until(4_000 * TICK, |c| c.acked_commands() > 4 * every), "the log moves on and is compacted");
    c.clients_active = false;
    c.restart(follower);
    let restarted_at = c.now;
    let sent_before = c.sent_by_kind.get(&(follower, "InstallSnapshot")).copied().unwrap_or(0);
    let window_ticks = 1_000;
    c.run_for(window_ticks * TICK);
    let sent = c.sent_by_kind.get(&(follower, "InstallSnapshot")).copied().unwrap_or(0) - sent_before;
    let refusals: Vec<(u64, u64, u32)> = c
        .events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::SnapshotRefused { peer, bytes, limit, refusals, .. } if *peer == follower => {
                Some((*bytes, *limit, *refusals))
            }
            _ => None,
        })
        .collect();
    // A resend at once would be one per round trip: hundreds in this window.
    assert!((2..=12).contains(&sent), "{sent} snapshot chunks sent in {window_ticks} ticks");
    assert!(refusals.len() >= 2, "each refusal is reported: {refusals:?}");
    let (bytes, limit, _) = refusals[0];
    assert!(bytes > 16 && limit == 16, "the report names the size and the limit: {refusals:?}");
    assert!(refusals.windows(2).all(|w| w[1].2 == w[0].2 + 1), "refusals are counted in a row: {refusals:?}");
    let installed = c
        .events
        .iter()
        .any(|(t, n, e)| *t >= restarted_at && *n == follower && matches!(e, Event::SnapshotInstalled { .. }));
    assert!(!installed, "the follower never installed it");
    // The operator raises the limit and restarts the follower: the next offer succeeds.
    c.opts.max_snapshot_bytes.clear();
    c.crash(follower);
    c.restart(follower);
    let leader = c.leader().unwrap();
    let caught_up =
        c.run_until(1_000 * TICK, |c| c.kv(follower).applied_index() >= c.raw(leader).unwrap().status().commit_index);
    assert!(caught_up, "the follower catches up once its limit allows:\n{}", c.describe());
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}
