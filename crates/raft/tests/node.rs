//! What a `RawNode` resumes with and tells its runtime, outside the golden scripts: the
//! hard state and snapshot it recovered, the configuration of a log written before
//! configurations were logged, its answers to messages of an older term, and elections.

use bytes::Bytes;
use raftkv_raft::{
    ConfState, Config, ElectionOutcome, Entry, EntryKind, Event, HardState, Message, MessageBody, RawNode, Recovered,
    Role, Snapshot, SnapshotMeta,
};

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState { term, vote: Some(2), commit, recovering: false }
}

/// Node 1 of {1, 2, 3}, restarted from a snapshot at 5 (term 2) in term 3.
fn restarted_from_snapshot() -> RawNode {
    let meta = SnapshotMeta { index: 5, term: 2, conf: ConfState::with_voters([1, 2, 3]) };
    let snapshot = Snapshot { meta, data: Bytes::from_static(b"state") };
    let recovered =
        Recovered { hard_state: hard_state(3, 5), snapshot: Some(snapshot), entries: Vec::new(), lost_state: false };
    RawNode::new(Config::new(1), ConfState::default(), recovered).unwrap()
}

/// Everything the node sends in its next Ready.
fn sent(node: &mut RawNode) -> Vec<Message> {
    let ready = node.ready();
    node.advance();
    ready.messages.into_iter().chain(ready.persisted_messages).collect()
}

#[test]
fn the_hard_state_handed_out_is_the_recovered_one_until_a_ready_moves_it() {
    let mut node = restarted_from_snapshot();
    assert_eq!(node.handed_out_hard_state(), hard_state(3, 5));
    let heartbeat = MessageBody::Heartbeat { leader_commit: 5, read_round: 0 };
    node.step(Message::new(2, 1, 4, heartbeat)).unwrap();
    assert_eq!(node.handed_out_hard_state(), hard_state(3, 5), "nothing handed out yet");
    let ready = node.ready();
    let moved = HardState { term: 4, vote: None, commit: 5, recovering: false };
    assert_eq!(ready.hard_state, Some(moved));
    assert_eq!(node.handed_out_hard_state(), moved);
}

#[test]
fn a_node_holds_the_snapshot_it_recovered() {
    let node = restarted_from_snapshot();
    let snapshot = node.snapshot().expect("the recovered snapshot");
    assert_eq!((snapshot.meta.index, snapshot.meta.term, &snapshot.data[..]), (5, 2, &b"state"[..]));
}

#[test]
fn a_log_written_before_configurations_were_logged_takes_the_startup_configuration() {
    let entry = |index| Entry { index, term: 1, kind: EntryKind::Command, data: Bytes::new() };
    let recovered =
        Recovered { hard_state: hard_state(1, 2), entries: vec![entry(1), entry(2)], ..Recovered::default() };
    let node = RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), recovered).unwrap();
    assert_eq!(node.conf(), &ConfState::with_voters([1, 2, 3]));
    assert_eq!(node.status().last_index, 2, "no bootstrap entries appended");
}

#[test]
fn a_message_of_an_older_term_from_a_leader_is_answered_with_the_newer_term() {
    let meta = SnapshotMeta { index: 9, term: 1, conf: ConfState::with_voters([1, 2, 3]) };
    let bodies = [
        MessageBody::Heartbeat { leader_commit: 0, read_round: 0 },
        MessageBody::AppendEntries { prev_log_index: 5, prev_log_term: 2, entries: Vec::new(), leader_commit: 5 },
        MessageBody::InstallSnapshot { meta, offset: 0, total_len: 1, data: Bytes::from_static(b"s"), done: true },
    ];
    for body in bodies {
        let mut node = restarted_from_snapshot();
        let kind = body.name();
        node.step(Message::new(2, 1, 2, body)).unwrap();
        let answers: Vec<_> = sent(&mut node).into_iter().map(|m| (m.to, m.term, m.body)).collect();
        let told = MessageBody::HeartbeatResponse { read_round: 0, missing_from: None };
        assert_eq!(answers, vec![(2, 3, told)], "a stale {kind}");
    }
}

#[test]
fn a_pre_vote_of_an_older_term_is_refused_out_loud() {
    let mut node = restarted_from_snapshot();
    let request = MessageBody::RequestVote { pre_vote: true, last_log_index: 5, last_log_term: 2, force: false };
    node.step(Message::new(2, 1, 2, request)).unwrap();
    let answers: Vec<_> = sent(&mut node).into_iter().map(|m| (m.to, m.term, m.body)).collect();
    assert_eq!(answers, vec![(2, 3, MessageBody::RequestVoteResponse { pre_vote: true, granted: false })]);
}

/// Node `id` of a brand-new cluster of voters {1, 2, 3} and learner 4 (term 1, log 1..=4).
fn fresh(id: u64) -> RawNode {
    let conf = ConfState { learners: [4].into(), ..ConfState::with_voters([1, 2, 3]) };
    let mut node = RawNode::new(Config::new(id), conf, Recovered::default()).unwrap();
    while node.has_ready() {
        node.ready();
        node.advance();
    }
    node
}

#[test]
fn a_learner_does_not_campaign() {
    let mut node = fresh(4);
    node.campaign();
    assert_eq!(node.status().role, Role::Follower);
    assert!(!node.has_ready(), "nothing to send");
}

#[test]
fn a_repeated_vote_request_from_the_candidate_voted_for_is_granted_again() {
    let mut node = fresh(1);
    let request = MessageBody::RequestVote { pre_vote: false, last_log_index: 4, last_log_term: 1, force: false };
    let granted = MessageBody::RequestVoteResponse { pre_vote: false, granted: true };
    for attempt in ["first", "repeated"] {
        node.step(Message::new(2, 1, 2, request.clone())).unwrap();
        let answers: Vec<_> = sent(&mut node).into_iter().map(|m| (m.to, m.term, m.body)).collect();
        assert_eq!(answers, vec![(2, 2, granted.clone())], "{attempt} request");
    }
}

#[test]
fn a_pre_vote_refused_by_a_majority_is_lost_not_superseded() {
    let mut node = fresh(1);
    node.campaign();
    assert_eq!(node.status().role, Role::PreCandidate);
    let refused = MessageBody::RequestVoteResponse { pre_vote: true, granted: false };
    for from in [2, 3] {
        node.step(Message::new(from, 1, 1, refused.clone())).unwrap();
    }
    assert_eq!(node.status().role, Role::Follower);
    let outcomes: Vec<_> = node
        .ready()
        .events
        .into_iter()
        .filter_map(|e| match e {
            Event::ElectionFinished { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, vec![ElectionOutcome::Lost]);
}

/// Node 1 of a brand-new {1, 2, 3} whose storage held nothing: recovering, in term 1.
fn founder_without_state() -> RawNode {
    RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::empty()).unwrap()
}

#[test]
fn a_new_cluster_is_not_confirmed_once_the_node_is_past_term_1_or_has_voted() {
    let mut past_term_1 = founder_without_state();
    let refused = MessageBody::RequestVoteResponse { pre_vote: false, granted: false };
    past_term_1.step(Message::new(2, 1, 2, refused)).unwrap();
    assert_eq!((past_term_1.status().term, past_term_1.status().vote), (2, None));
    assert!(!past_term_1.confirm_new_cluster(), "past term 1");
    assert!(past_term_1.status().recovering);
    let mut voted = founder_without_state();
    voted.step(Message::new(2, 1, 1, MessageBody::Heartbeat { leader_commit: 0, read_round: 0 })).unwrap();
    assert_eq!((voted.status().term, voted.status().vote), (1, Some(2)), "a recovering node's vote is its leader");
    assert!(!voted.confirm_new_cluster(), "voted");
    let mut untouched = founder_without_state();
    assert!(untouched.confirm_new_cluster());
    assert!(!untouched.status().recovering);
}

#[test]
fn a_chunk_of_another_snapshot_does_not_continue_the_one_being_received() {
    let mut node = restarted_from_snapshot();
    let chunk = |index, offset, done| {
        let meta = SnapshotMeta { index, term: 3, conf: ConfState::with_voters([1, 2, 3]) };
        let data = Bytes::from_static(b"abc");
        Message::new(2, 1, 3, MessageBody::InstallSnapshot { meta, offset, total_len: 6, data, done })
    };
    node.step(chunk(10, 0, false)).unwrap();
    sent(&mut node);
    // The second half of a snapshot at 12, of the same length, while 10's is under way.
    node.step(chunk(12, 3, true)).unwrap();
    let answers: Vec<_> = sent(&mut node).into_iter().map(|m| m.body).collect();
    let restart_from_0 = MessageBody::InstallSnapshotResponse {
        meta_index: 12,
        next_offset: 0,
        done: false,
        rejected: true,
        too_large: None,
    };
    assert_eq!(answers, vec![restart_from_0]);
    assert_eq!(node.status().commit_index, 5, "nothing installed");
}
