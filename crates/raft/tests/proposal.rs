//! What a leader accepts from its runtime, through `RawNode`: the exact boundaries of the
//! uncommitted-bytes backpressure (conf changes included), when a promoted learner
//! counts as maybe recovering, the promotion lag, and leadership transfer requests that
//! change nothing.

mod common;

use bytes::Bytes;
use raftkv_raft::{
    ConfChange, ConfChangeKind as K, ConfState, Config, Entry, EntryKind, Message, MessageBody, ProposeError, RawNode,
    Recovered,
};

/// Takes the next Ready, carries it out, and returns what it sends, as (to, body).
fn sent(node: &mut RawNode) -> Vec<(u64, MessageBody)> {
    let ready = node.ready();
    node.advance();
    ready.messages.into_iter().chain(ready.persisted_messages).map(|m| (m.to, m.body)).collect()
}

/// Node 1 of `conf`, elected (with node 2's (pre-)votes if it needs any), its Readies
/// carried out.
fn elected(cfg: Config, conf: ConfState) -> RawNode {
    let mut node = RawNode::new(cfg, conf, Recovered::default()).unwrap();
    common::win_election(&mut node);
    node
}

/// Node 1, the only voter (besides `learners`), leading with its no-op committed: nothing
/// is uncommitted.
fn sole_voter(cfg: Config, learners: &[u64]) -> RawNode {
    let conf = ConfState { learners: learners.iter().copied().collect(), ..ConfState::with_voters([1]) };
    let node = elected(cfg, conf);
    assert_eq!(node.status().commit_index, node.status().last_index);
    node
}

fn answer(node: &mut RawNode, from: u64, recovery: Option<u64>, body: MessageBody) {
    let term = node.status().term;
    node.step(Message { from, to: 1, term, body, recovery, trace: None }).unwrap();
}

fn ack(node: &mut RawNode, from: u64, index: u64) {
    let body = MessageBody::AppendEntriesResponse { success: true, index, reject_hint: 0, hint_term: 0 };
    answer(node, from, None, body);
}

/// What an entry counts for besides its data.
fn overhead() -> usize {
    Entry { index: 1, term: 1, kind: EntryKind::Command, data: Bytes::new() }.size()
}

/// A command whose entry counts for exactly `size` bytes.
fn command_of_size(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size - overhead()])
}

fn with_limit(limit: usize) -> Config {
    let mut cfg = Config::new(1);
    cfg.max_uncommitted_bytes = limit;
    cfg
}

fn backpressure(bytes: usize, limit: usize) -> Result<(u64, u64), ProposeError> {
    Err(ProposeError::Backpressure { bytes, limit })
}

// ---- uncommitted-bytes backpressure ----

#[test]
fn the_first_proposal_is_accepted_when_nothing_is_uncommitted_even_above_the_limit() {
    let mut node = sole_voter(with_limit(100), &[]);
    assert!(node.propose(command_of_size(250)).is_ok(), "a lone proposal larger than the limit could never go");
    assert_eq!(node.propose(command_of_size(overhead())), backpressure(250, 100));
}

#[test]
fn a_proposal_landing_exactly_at_the_limit_is_accepted_and_one_byte_over_is_refused() {
    let mut node = sole_voter(with_limit(200), &[]);
    assert!(node.propose(command_of_size(150)).is_ok());
    assert_eq!(node.propose(command_of_size(51)), backpressure(150, 200), "one byte over");
    assert!(node.propose(command_of_size(50)).is_ok(), "exactly at the limit");
    assert_eq!(node.propose(command_of_size(overhead())), backpressure(200, 200));
}

#[test]
fn a_conf_changes_entry_counts_toward_the_uncommitted_bytes() {
    let cc = ConfChange::new(K::AddLearner, 2, Bytes::from_static(b"10.0.0.2:7000"));
    let cc_size = Entry { index: 1, term: 1, kind: EntryKind::ConfChange, data: cc.encode() }.size();
    assert!(cc_size < 150, "the change is smaller than the command before it");
    let limit = 150 + cc_size;
    let mut node = sole_voter(with_limit(limit), &[]);
    assert!(node.propose(command_of_size(150)).is_ok());
    assert!(node.propose_conf_change(cc).is_ok());
    assert_eq!(node.propose(command_of_size(overhead())), backpressure(150 + cc_size, limit));
}

// ---- promotions ----

fn promote(node: u64) -> ConfChange {
    ConfChange::new(K::PromoteVoter, node, Bytes::new())
}

#[test]
fn promoting_a_learner_into_three_voters_counts_it_as_maybe_recovering() {
    // Voters {1, 2}, learner 3 (log: bootstrap 1..=3, no-op 4), everything acknowledged.
    let conf = ConfState { learners: [3].into(), ..ConfState::with_voters([1, 2]) };
    let mut node = elected(Config::new(1), conf);
    ack(&mut node, 2, 4);
    ack(&mut node, 3, 4);
    assert_eq!(node.status().commit_index, 4);
    // Node 2 lost its state. With 3 possibly losing its disk while the change
    // replicates, only node 1 of three voters would surely count: no quorum.
    answer(&mut node, 2, Some(9), MessageBody::HeartbeatResponse { read_round: 0, missing_from: None });
    assert_eq!(node.propose_conf_change(promote(3)), Err(ProposeError::WouldStall { voters: 3, recovering: 2 }));
}

#[test]
fn promoting_a_learner_into_two_voters_does_not_count_it_as_maybe_recovering() {
    // Two voters tolerate no failure anyway: growing from one to two is not refused.
    let mut node = sole_voter(Config::new(1), &[2]);
    let last = node.status().last_index;
    ack(&mut node, 2, last);
    assert_eq!(node.propose_conf_change(promote(2)), Ok((last + 1, node.status().term)));
}

#[test]
fn a_learner_is_promoted_only_within_max_promotion_lag_entries_and_once_it_acknowledged_one() {
    let mut cfg = Config::new(1);
    cfg.max_promotion_lag = 3;
    // Log: bootstrap 1..=2 (voter 1, learner 2), no-op 3.
    let mut node = sole_voter(cfg, &[2]);
    assert_eq!(node.status().last_index, 3);
    let not_caught_up = |lag| Err(ProposeError::NotCaughtUp { node: 2, lag, limit: 3 });
    // Within the lag, but it acknowledged nothing.
    assert_eq!(node.propose_conf_change(promote(2)), not_caught_up(3));
    ack(&mut node, 2, 1);
    node.propose(Bytes::from_static(b"a")).unwrap();
    node.propose(Bytes::from_static(b"b")).unwrap();
    assert_eq!(node.propose_conf_change(promote(2)), not_caught_up(4), "one entry over the lag");
    ack(&mut node, 2, 2);
    assert!(node.propose_conf_change(promote(2)).is_ok(), "exactly max_promotion_lag behind");
}

// ---- leadership transfer ----

#[test]
fn a_transfer_to_the_leader_itself_or_again_to_the_same_target_sends_nothing() {
    let mut node = elected(Config::new(1), ConfState::with_voters([1, 2, 3]));
    // Node 2 acknowledges all of the leader's log, and the commit goes out.
    let caught_up = |node: &mut RawNode| {
        sent(node);
        let last = node.status().last_index;
        ack(node, 2, last);
        while node.has_ready() {
            sent(node);
        }
    };
    caught_up(&mut node);
    assert_eq!(node.transfer_leader(1), Ok(()));
    assert_eq!(sent(&mut node), Vec::new(), "to itself: nothing to do");
    assert!(node.propose(Bytes::new()).is_ok(), "no transfer under way");
    caught_up(&mut node);
    assert_eq!(node.transfer_leader(2), Ok(()));
    assert_eq!(sent(&mut node), vec![(2, MessageBody::TimeoutNow)], "node 2 is caught up");
    assert_eq!(node.transfer_leader(2), Ok(()));
    assert_eq!(sent(&mut node), Vec::new(), "asked again: nothing new");
}
