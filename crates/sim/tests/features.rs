//! Each Raft feature, shown by behaviour on a scripted simulated cluster.

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{ConfChangeKind, Event, NodeId, ProposeError, Role, StepDownReason};
use raftkv_replica::Stop;
use raftkv_sim::{Cluster, MAX_PROMOTION_LAG, SimOptions, TICK};

/// Generous bound for an election: several randomized timeouts.
const ELECTION_BOUND: u64 = 60 * TICK;

fn cluster(nodes: usize, seed: u64) -> Cluster {
    let mut c = Cluster::new(seed, SimOptions::new(nodes));
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some()), "a leader is elected");
    c
}

fn term_of(c: &Cluster, id: NodeId) -> u64 {
    c.raw(id).expect("node is up").status().term
}

fn put(client_id: u64, seq: u64, key: &str, value: &str) -> Command {
    Command {
        client_id,
        seq,
        op: WriteOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) },
    }
}

/// Proposes at the leader and runs until every node applied it. Returns its index.
fn commit(c: &mut Cluster, command: &Command) -> u64 {
    let leader = c.leader().expect("a leader");
    let (index, _) = c.propose_at(leader, command).expect("leader accepts");
    assert!(c.run_until(ELECTION_BOUND, |c| c.all_applied(index)), "command at {index} applied everywhere");
    index
}

#[test]
fn pre_vote_keeps_a_rejoining_node_from_raising_the_term() {
    let mut c = cluster(3, 11);
    let leader = c.leader().unwrap();
    let term = term_of(&c, leader);
    let follower = c.node_ids().into_iter().find(|&id| id != leader).unwrap();
    c.isolate(follower);
    c.run_for(50 * TICK * 10); // dozens of election timeouts alone
    assert_eq!(term_of(&c, follower), term, "an isolated node only pre-votes: its term stays");
    c.heal();
    c.run_for(30 * TICK);
    assert_eq!(c.leader(), Some(leader), "the healthy leader keeps leading");
    assert_eq!(term_of(&c, leader), term, "the cluster's term did not rise");
}

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    let mut c = cluster(3, 12);
    let leader = c.leader().unwrap();
    let term = term_of(&c, leader);
    c.isolate(leader);
    let stepped_down = c.run_until(4 * 10 * TICK, |c| c.raw(leader).unwrap().status().role != Role::Leader);
    assert!(stepped_down, "the isolated leader steps down within a few election timeouts");
    let new_leader = c.run_until(ELECTION_BOUND, |c| c.leader().is_some_and(|l| l != leader));
    assert!(new_leader, "the majority elects a new leader");
    assert!(term_of(&c, c.leader().unwrap()) > term);
}

#[test]
fn a_read_index_read_after_a_write_sees_it() {
    let mut c = cluster(3, 13);
    c.clients_active = false;
    let index = commit(&mut c, &put(1, 1, "greeting", "hello"));
    let leader = c.leader().unwrap();
    let ctx = c.read_at(leader).expect("leader accepts the read");
    let released = c.run_until(ELECTION_BOUND, |c| c.released_reads().iter().any(|r| r.2 == ctx));
    assert!(released, "the read is confirmed by a quorum");
    let &(_, node, _, read_index) = c.released_reads().iter().find(|r| r.2 == ctx).unwrap();
    assert_eq!(node, leader);
    assert!(read_index >= index, "read index {read_index} covers the write at {index}");
    assert_eq!(c.kv(leader).get(b"greeting"), Some(Bytes::from("hello")));
    assert!(c.checker_violations().is_empty());
}

#[test]
fn leadership_transfer_elects_the_target() {
    let mut c = cluster(5, 14);
    let leader = c.leader().unwrap();
    let target = c.node_ids().into_iter().find(|&id| id != leader).unwrap();
    c.raw_mut(leader).unwrap().transfer_leader(target).expect("leader accepts");
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader() == Some(target)), "the target leads");
    let transfer =
        c.events.iter().any(|(_, id, e)| *id == target && matches!(e, Event::ElectionStarted { transfer: true, .. }));
    assert!(transfer, "the target campaigned because of the transfer");
}

#[test]
fn a_follower_with_an_empty_disk_catches_up_through_a_snapshot() {
    let mut c = cluster(3, 15);
    let snapshot_every = c.opts.snapshot_every;
    assert!(c.run_until(400 * TICK, |c| c.acked_commands() > 3 * snapshot_every), "the workload commits");
    let leader = c.leader().unwrap();
    let follower = c.node_ids().into_iter().find(|&id| id != leader).unwrap();
    c.restart_empty(follower);
    assert_eq!(c.kv(follower).applied_index(), 0);
    let installed = c.run_until(ELECTION_BOUND, |c| {
        c.events.iter().any(|(_, id, e)| *id == follower && matches!(e, Event::SnapshotInstalled { .. }))
    });
    assert!(installed, "the follower installs a snapshot");
    c.clients_active = false;
    let caught_up = c.run_until(ELECTION_BOUND, |c| {
        let d = c.digests();
        let l = c.leader().map(|l| d[&l]);
        l.is_some() && d.values().all(|v| Some(*v) == l)
    });
    assert!(caught_up, "the follower's state machine equals the leader's: {:?}", c.digests());
}

#[test]
fn a_retried_command_applies_once_even_across_a_leader_change() {
    let mut c = cluster(3, 16);
    c.clients_active = false;
    let first = put(1, 1, "k", "from-client-1");
    commit(&mut c, &first);
    commit(&mut c, &put(2, 1, "k", "from-client-2"));
    // Client 1 did not see its answer and retries the same command at a new leader.
    let old = c.leader().unwrap();
    let target = c.node_ids().into_iter().find(|&id| id != old).unwrap();
    c.raw_mut(old).unwrap().transfer_leader(target).unwrap();
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader() == Some(target)));
    commit(&mut c, &first);
    for id in c.node_ids() {
        assert_eq!(c.kv(id).get(b"k"), Some(Bytes::from("from-client-2")), "node {id}: the retry did not apply again");
    }
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

// ---- membership changes ----

fn leader_conf_committed(c: &Cluster) -> bool {
    c.leader().is_some_and(|l| {
        let raw = c.raw(l).unwrap();
        raw.conf_index() <= raw.status().commit_index
    })
}

/// Proposes `change` of `node` at the current leader, retrying until it is accepted,
/// then runs until the leader has committed it.
fn change_conf(c: &mut Cluster, change: ConfChangeKind, node: NodeId) -> u64 {
    let mut accepted = None;
    let ok = c.run_until(ELECTION_BOUND * 4, |c| c.leader().is_some() && leader_conf_committed(c));
    assert!(ok, "the configuration settles");
    for _ in 0..50 {
        let leader = c.leader().expect("a leader");
        match c.propose_conf_change_at(leader, change, node) {
            Ok((index, _)) => {
                accepted = Some(index);
                break;
            }
            Err(e) => {
                // A new node recovers (its marker commits) before it may be promoted.
                assert!(
                    matches!(
                        e,
                        ProposeError::NoCommitInTerm
                            | ProposeError::ConfChangePending { .. }
                            | ProposeError::Recovering(_)
                    ),
                    "unexpected refusal: {e}"
                );
                c.run_for(5 * TICK);
            }
        }
    }
    let index = accepted.expect("the change is accepted");
    let committed = c.run_until(ELECTION_BOUND * 4, |c| {
        c.leader().is_some_and(|l| c.raw(l).unwrap().status().commit_index >= index)
    });
    assert!(committed, "the {change:?} of {node} at {index} commits");
    index
}

#[test]
fn a_learner_is_added_and_promoted_under_load() {
    let mut c = cluster(3, 21);
    assert!(c.run_until(200 * TICK, |c| c.acked_commands() > 20), "the workload commits");
    let leader = c.leader().unwrap();
    c.add_learner(4).expect("the leader adds a learner");
    assert!(c.raw(4).unwrap().status().conf.voters.is_empty(), "a new node starts with no configuration");
    // The learner catches up (its log and a snapshot) while the clients keep writing.
    let caught_up = c.run_until(ELECTION_BOUND * 4, |c| {
        let commit = c.raw(leader).unwrap().status().commit_index;
        c.kv(4).applied_index() + MAX_PROMOTION_LAG / 2 >= commit && c.raw(4).unwrap().conf().learners.contains(&4)
    });
    assert!(caught_up, "the learner catches up:\n{}", c.describe());
    let acked = c.acked_commands();
    change_conf(&mut c, ConfChangeKind::PromoteVoter, 4);
    let conf = c.leader_conf().unwrap();
    assert_eq!(conf.voters.iter().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(conf.learners.is_empty());
    assert!(c.run_until(200 * TICK, |c| c.acked_commands() > acked + 20), "the workload keeps committing");
    c.clients_active = false;
    let converged = c.run_until(ELECTION_BOUND * 4, |c| {
        let d = c.digests();
        c.leader().is_some_and(|l| d.values().all(|v| *v == d[&l]))
    });
    assert!(converged, "every member converges: {:?}", c.digests());
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn a_leader_that_removes_itself_hands_off_and_steps_down() {
    let mut c = cluster(3, 22);
    assert!(c.run_until(200 * TICK, |c| c.acked_commands() > 10), "the workload commits");
    let old = c.leader().unwrap();
    let term = term_of(&c, old);
    let index = change_conf(&mut c, ConfChangeKind::Remove, old);
    let stepped_down = c.run_until(ELECTION_BOUND, |c| {
        c.events
            .iter()
            .any(|(_, id, e)| *id == old && matches!(e, Event::SteppedDown { reason: StepDownReason::Removed, .. }))
    });
    assert!(stepped_down, "the removed leader steps down once its removal commits");
    let stepped_at = c.events.iter().find(|(_, id, e)| *id == old && matches!(e, Event::SteppedDown { .. })).unwrap().0;
    let commit_seen = c.raw(old).unwrap().status().commit_index;
    assert!(commit_seen >= index, "it stepped down only after the removal at {index} committed");
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some_and(|l| l != old)), "another voter leads");
    let new = c.leader().unwrap();
    assert!(term_of(&c, new) > term);
    let handed_off = c
        .events
        .iter()
        .any(|(t, id, e)| *t >= stepped_at && *id == new && matches!(e, Event::ElectionStarted { transfer: true, .. }));
    assert!(handed_off, "the new leader campaigned because of the hand-off");
    let acked = c.acked_commands();
    assert!(c.run_until(200 * TICK, |c| c.acked_commands() > acked + 10), "the cluster keeps committing");
    c.run_for(100 * TICK);
    // It stopped for good once it had handed off, as a server does (its tombstone).
    assert!(!c.is_up(old), "the removed node stopped");
    assert!(c.stops.iter().any(|(id, stop)| *id == old && matches!(stop, Stop::Removed { by: None, .. })));
    c.restart(old);
    assert!(!c.is_up(old), "a removed node never starts again");
    let campaigned =
        c.events.iter().any(|(t, id, e)| *t > stepped_at && *id == old && matches!(e, Event::ElectionStarted { .. }));
    assert!(!campaigned, "a node that knows of its removal never campaigns");
    assert_eq!(c.leader_conf().unwrap().voters.len(), 2);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

/// The removed node does not hear of its removal (it is cut off while the change
/// commits): it campaigns, a member answers that it was removed, and it stops for good.
#[test]
fn a_removed_node_that_missed_its_removal_stops_without_disrupting_the_cluster() {
    let mut c = cluster(3, 23);
    let leader = c.leader().unwrap();
    let removed = c.node_ids().into_iter().find(|&id| id != leader).unwrap();
    // The removed node does not hear of its removal: it still believes it is a voter.
    c.isolate(removed);
    change_conf(&mut c, ConfChangeKind::Remove, removed);
    assert!(c.raw(removed).unwrap().conf().voters.contains(&removed));
    let term = term_of(&c, leader);
    c.heal();
    c.run_for(50 * 10 * TICK); // dozens of its election timeouts
    let started =
        c.events.iter().filter(|(_, id, e)| *id == removed && matches!(e, Event::ElectionStarted { .. })).count();
    assert!(started > 0, "the removed node tried to campaign");
    assert!(!c.is_up(removed), "it was told it was removed, and stopped");
    assert!(c.stops.iter().any(|(id, stop)| *id == removed && matches!(stop, Stop::Removed { by: Some(_), .. })));
    assert_eq!(c.leader(), Some(leader), "the leader was not deposed");
    assert_eq!(term_of(&c, leader), term, "the cluster's term did not rise");
    let acked = c.acked_commands();
    assert!(c.run_until(200 * TICK, |c| c.acked_commands() > acked + 10), "the cluster keeps committing");
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn learners_never_vote_or_count_toward_a_quorum() {
    let mut c = cluster(3, 24);
    for id in [4, 5] {
        change_conf(&mut c, ConfChangeKind::AddLearner, id);
        c.start_new_node(id);
    }
    let leader = c.leader().unwrap();
    let caught_up = c.run_until(ELECTION_BOUND * 4, |c| {
        let commit = c.raw(leader).unwrap().status().commit_index;
        [4, 5].iter().all(|&l| c.raw(l).unwrap().status().commit_index == commit)
    });
    assert!(caught_up, "the learners catch up");
    // The leader and both learners on one side, the two other voters on the other: the
    // leader has 3 of 5 members but only 1 of 3 voters.
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    c.partition(&[vec![leader, 4, 5], others.clone()]);
    let commit = c.raw(leader).unwrap().status().commit_index;
    c.run_for(30 * 10 * TICK);
    let side = [leader, 4, 5];
    for id in side {
        let s = c.raw(id).unwrap().status();
        assert!(
            s.commit_index <= commit + 1,
            "node {id} saw no commit without a voter quorum: {} > {commit}",
            s.commit_index
        );
        assert_ne!(s.role, Role::Leader, "node {id} does not lead without a quorum of voters");
    }
    let learner_campaigned =
        c.events.iter().any(|(_, id, e)| [4, 5].contains(id) && matches!(e, Event::ElectionStarted { .. }));
    assert!(!learner_campaigned, "learners never campaign");
    let learner_leads =
        c.events.iter().any(|(_, id, e)| [4, 5].contains(id) && matches!(e, Event::BecameLeader { .. }));
    assert!(!learner_leads);
    c.heal();
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some()), "the cluster recovers");
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn a_lagging_learner_is_not_promoted() {
    let mut c = cluster(3, 25);
    c.clients_active = false;
    change_conf(&mut c, ConfChangeKind::AddLearner, 4);
    c.start_new_node(4);
    assert!(c.run_until(ELECTION_BOUND, |c| c.kv(4).applied_index() > 0), "the learner starts catching up");
    // A new node starts recovering (its disk is empty); a recovering learner is refused
    // for that, whatever its lag. Here the refusal must be for the lag.
    let recovered = |c: &Cluster| {
        let leader = c.leader().unwrap();
        let seen = c.raw(leader).unwrap().status().progress.iter().any(|p| p.id == 4 && !p.recovering);
        !c.raw(4).unwrap().status().recovering && seen
    };
    assert!(c.run_until(ELECTION_BOUND, recovered), "the learner's recovery ends, as the leader knows");
    c.isolate(4);
    let leader = c.leader().unwrap();
    for seq in 1..=2 * MAX_PROMOTION_LAG {
        let (index, _) = c.propose_at(leader, &put(1, seq, "k", "v")).expect("leader accepts");
        let committed = c.run_until(ELECTION_BOUND, |c| c.raw(leader).unwrap().status().commit_index >= index);
        assert!(committed, "the voters commit without the learner");
    }
    let refused = c.propose_conf_change_at(leader, ConfChangeKind::PromoteVoter, 4);
    assert!(
        matches!(refused, Err(ProposeError::NotCaughtUp { node: 4, lag, limit: MAX_PROMOTION_LAG }) if lag > MAX_PROMOTION_LAG),
        "{refused:?}"
    );
    c.heal();
    let caught_up = c.run_until(ELECTION_BOUND * 4, |c| {
        let commit = c.raw(leader).unwrap().status().commit_index;
        c.raw(4).unwrap().status().commit_index == commit
    });
    assert!(caught_up, "the learner catches up once healed");
    change_conf(&mut c, ConfChangeKind::PromoteVoter, 4);
    assert!(c.leader_conf().unwrap().voters.contains(&4));
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn only_one_configuration_change_is_uncommitted_at_a_time() {
    let mut c = cluster(3, 26);
    c.clients_active = false;
    let settled = c.run_until(ELECTION_BOUND, |c| {
        c.leader().is_some_and(|l| {
            let s = c.raw(l).unwrap().status();
            s.commit_index == s.last_index
        })
    });
    assert!(settled, "the leader commits its no-op");
    let leader = c.leader().unwrap();
    let others: Vec<NodeId> = c.node_ids().into_iter().filter(|&id| id != leader).collect();
    c.partition(&[vec![leader], others]);
    let (index, _) = c.propose_conf_change_at(leader, ConfChangeKind::AddLearner, 4).expect("first change accepted");
    let second = c.propose_conf_change_at(leader, ConfChangeKind::AddLearner, 5);
    assert_eq!(second, Err(ProposeError::ConfChangePending { index }));
    let invalid = c.propose_conf_change_at(leader, ConfChangeKind::PromoteVoter, 6);
    assert!(matches!(invalid, Err(ProposeError::ConfChangePending { .. })), "{invalid:?}");
}

#[test]
fn a_wiped_follower_catches_up_under_the_same_idle_leader() {
    let mut c = cluster(3, 17);
    let snapshot_every = c.opts.snapshot_every;
    assert!(c.run_until(400 * TICK, |c| c.acked_commands() > 3 * snapshot_every), "the workload commits");
    c.clients_active = false;
    let leader = c.leader().unwrap();
    let term = term_of(&c, leader);
    let follower = c.node_ids().into_iter().find(|&id| id != leader).unwrap();
    let commit = c.raw(leader).unwrap().status().commit_index;
    assert!(c.run_until(ELECTION_BOUND, |c| c.kv(follower).applied_index() >= commit), "the follower first catches up");
    c.restart_empty(follower);
    // No new writes and no leader change: heartbeats alone must reveal the lost log.
    let caught_up = c.run_until(ELECTION_BOUND, |c| c.kv(follower).applied_index() >= commit);
    assert!(caught_up, "the wiped follower catches up: {}", c.describe());
    assert_eq!(c.leader(), Some(leader), "the same leader throughout");
    assert_eq!(term_of(&c, leader), term);
    let lost = c
        .events
        .iter()
        .any(|(_, id, e)| *id == leader && matches!(e, Event::PeerLostLog { peer, .. } if *peer == follower));
    assert!(lost, "the leader reported the follower's lost log");
}

/// The single-server change bug (Ongaro, raft-dev 2015), scripted. S1 leads four voters
/// and, cut off, appends AddVoter(5) that nobody else sees. S2..S4 elect X, and X is cut
/// off from Z before its no-op reaches Z. If X could now remove S1 with only Y, that
/// removal would commit in {2,3,4}, and S1 could later win a majority of its own
/// {1,2,3,4,5} from Z and the new S5, overwriting it. The rule that a leader first
/// commits an entry of its term refuses X's change, so nothing committed is lost.
#[test]
fn a_config_change_waits_for_the_leaders_first_commit() {
    let mut c = cluster(4, 19);
    c.clients_active = false;
    let first = c.leader().unwrap();
    if first != 1 {
        c.raw_mut(first).unwrap().transfer_leader(1).unwrap();
        assert!(c.run_until(ELECTION_BOUND, |c| c.leader() == Some(1)), "node 1 leads");
    }
    commit(&mut c, &put(1, 1, "k", "v1"));

    c.partition(&[vec![1], vec![2, 3, 4]]);
    c.propose_conf_change_at(1, ConfChangeKind::AddVoter, 5).expect("node 1 appends AddVoter(5)");
    c.run_for(5 * TICK);
    let s1_term = term_of(&c, 1);
    let elected = c.run_until(ELECTION_BOUND, |c| {
        [2, 3, 4].into_iter().any(|id| c.raw(id).unwrap().status().role == Role::Leader && term_of(c, id) > s1_term)
    });
    assert!(elected, "the majority elects a new leader: {}", c.describe());
    let x = [2, 3, 4].into_iter().find(|&id| c.raw(id).unwrap().status().role == Role::Leader).unwrap();
    let others: Vec<NodeId> = [2, 3, 4].into_iter().filter(|&id| id != x).collect();
    let (y, z) = (others[0], others[1]);
    // Cut Z off at once: X's no-op, already in flight, is dropped on delivery.
    c.partition(&[vec![x, y], vec![z], vec![1]]);

    let mut refusals = 0;
    let mut accepted = false;
    for _ in 0..20 * TICK {
        match c.propose_conf_change_at(x, ConfChangeKind::Remove, 1) {
            Ok(_) => {
                accepted = true;
                break;
            }
            Err(ProposeError::NoCommitInTerm) => refusals += 1,
            // Check-quorum: with only Y, X steps down after an election timeout.
            Err(ProposeError::NotLeader { .. }) => break,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
        c.step();
    }
    c.run_for(20 * TICK);

    c.start_new_node(5);
    c.partition(&[vec![1, z, 5], vec![x, y]]);
    c.run_until(ELECTION_BOUND, |c| c.raw(1).unwrap().status().role == Role::Leader);
    c.run_for(20 * TICK);
    assert!(c.violations().is_empty(), "safety violated: {:?}\n{}", c.violations(), c.describe());
    assert!(!accepted && refusals > 0, "X refused the change until its no-op committed (refusals: {refusals})");
}

#[test]
fn background_writes_keep_the_cluster_safe_through_crashes() {
    let mut opts = SimOptions::new(3);
    opts.async_persist = true;
    opts.max_fsync = 5;
    let mut c = Cluster::new(7, opts);
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some()), "a leader is elected");
    for round in 0..6 {
        c.run_for(40 * TICK);
        // Crash the leader while its writes are in flight, then bring it back.
        let leader = c.leader().expect("a leader");
        c.crash(leader);
        c.run_for(20 * TICK);
        c.restart(leader);
        assert!(c.run_until(ELECTION_BOUND, |c| c.leader().is_some()), "round {round}: a leader again");
    }
    c.run_for(40 * TICK);
    c.check_nothing_lost();
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    assert!(c.background_writes > 100, "the async path ran: {} background writes", c.background_writes);
    assert!(c.acked_commands() > 20, "clients made progress: {}", c.acked_commands());
}

/// A follower that was down while node 4 joined, was promoted and came to lead comes
/// back knowing nothing of node 4: it takes that leader's messages (the replica refuses
/// only removed senders) and catches up.
#[test]
fn a_follower_that_missed_the_new_leaders_addition_catches_up_from_it() {
    let mut c = cluster(3, 31);
    c.clients_active = false;
    commit(&mut c, &put(1, 1, "before", "everywhere"));
    let leader = c.leader().unwrap();
    let down = c.node_ids().into_iter().find(|&id| id != leader).unwrap();
    c.crash(down);
    change_conf(&mut c, ConfChangeKind::AddLearner, 4);
    c.start_new_node(4);
    let recovered = c.run_until(ELECTION_BOUND * 4, |c| !c.raw(4).unwrap().status().recovering);
    assert!(recovered, "the new learner catches up:\n{}", c.describe());
    change_conf(&mut c, ConfChangeKind::PromoteVoter, 4);
    let now = c.leader().unwrap();
    c.raw_mut(now).unwrap().transfer_leader(4).expect("the leader hands over");
    assert!(c.run_until(ELECTION_BOUND, |c| c.leader() == Some(4)), "node 4 leads:\n{}", c.describe());
    let (index, _) = c.propose_at(4, &put(1, 2, "under-4", "v")).expect("node 4 accepts");
    assert!(c.run_until(ELECTION_BOUND, |c| c.raw(4).unwrap().status().commit_index >= index));
    assert!(c.raw(4).unwrap().conf().voters.contains(&down), "the follower is still a member");
    c.restart(down);
    assert!(!c.raw(down).unwrap().conf().contains(4), "it comes back without node 4 in its configuration");
    let caught_up = c.run_until(ELECTION_BOUND * 2, |c| {
        c.kv(down).applied_index() >= index && c.raw(down).unwrap().status().leader == Some(4)
    });
    assert!(caught_up, "the follower catches up from node 4:\n{}", c.describe());
    assert_eq!(c.kv(down).get(b"under-4"), Some(Bytes::from("v")));
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}
