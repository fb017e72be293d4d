//! Each Raft feature, shown by behaviour on a scripted simulated cluster.

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Event, NodeId, Role};
use raftkv_sim::{Cluster, SimOptions, TICK};

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
