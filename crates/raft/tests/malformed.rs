//! Messages that no correct peer sends are refused with `StepError::Malformed`, before
//! they can trip an assertion, overflow, or count toward a quorum. Found by fuzzing the
//! wire (fuzz/, wire_decode).

mod common;

use bytes::Bytes;
use raftkv_raft::{
    ConfState, Config, Entry, EntryKind, Message, MessageBody, RawNode, Recovered, Role, SnapshotMeta, StepError,
};

/// Drives node 1 of {1, 2, 3} to leadership with node 2's (pre-)votes.
fn leader_of_three() -> RawNode {
    let mut node = RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::default()).unwrap();
    common::win_election(&mut node);
    node
}

#[test]
fn an_acknowledgement_beyond_the_leaders_log_is_refused_and_commits_nothing() {
    let mut node = leader_of_three();
    let term = node.status().term;
    let last = node.status().last_index;
    let commit_before = node.status().commit_index;
    let forged = MessageBody::AppendEntriesResponse { success: true, index: last + 100, reject_hint: 0, hint_term: 0 };
    let err = node.step(Message { from: 2, to: 1, term, body: forged, recovery: None, trace: None }).unwrap_err();
    assert!(
        matches!(&err, StepError::Malformed { kind: "AppendEntriesResponse", reason } if reason.contains("beyond")),
        "{err:?}"
    );
    assert_eq!(node.status().commit_index, commit_before, "a forged ack must not commit anything");
    // A true acknowledgement of the last index is still accepted.
    let honest = MessageBody::AppendEntriesResponse { success: true, index: last, reject_hint: 0, hint_term: 0 };
    node.step(Message { from: 2, to: 1, term, body: honest, recovery: None, trace: None }).unwrap();
    assert_eq!(node.status().commit_index, last);
}

#[test]
fn a_snapshot_whose_configuration_lists_a_node_twice_is_refused() {
    let mut node = RawNode::new(Config::new(2), ConfState::with_voters([1, 2, 3]), Recovered::default()).unwrap();
    let mut conf = ConfState::with_voters([1, 2, 3]);
    conf.learners.insert(3);
    let data = Bytes::from_static(b"state");
    let body = MessageBody::InstallSnapshot {
        meta: SnapshotMeta { index: 10, term: 1, conf },
        offset: 0,
        total_len: data.len() as u64,
        data,
        done: true,
    };
    let before = node.status();
    let err = node.step(Message { from: 1, to: 2, term: 1, body, recovery: None, trace: None }).unwrap_err();
    assert!(
        matches!(&err, StepError::Malformed { kind: "InstallSnapshot", reason } if reason.contains("both voter and learner")),
        "{err:?}"
    );
    let after = node.status();
    assert_eq!((after.commit_index, after.last_index), (before.commit_index, before.last_index));
    assert!(node.snapshot().is_none(), "nothing of the refused snapshot is installed");
}

#[test]
fn heartbeat_response_missing_from_zero_is_malformed() {
    let mut node = leader_of_three();
    let term = node.status().term;
    let m = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::HeartbeatResponse { read_round: 0, missing_from: Some(0) },
        recovery: None,
        trace: None,
    };
    assert!(matches!(node.step(m), Err(StepError::Malformed { .. })));
    assert_eq!(node.status().role, Role::Leader);
}

#[test]
fn append_entries_with_indexes_past_u64_max_is_malformed() {
    let mut node = RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::default()).unwrap();
    let entry = |index| Entry { index, term: 1, kind: EntryKind::Noop, data: Default::default() };
    let body = MessageBody::AppendEntries {
        prev_log_index: u64::MAX,
        prev_log_term: 1,
        entries: vec![entry(0)],
        leader_commit: 0,
    };
    let m = Message { from: 2, to: 1, term: 1, body, recovery: None, trace: None };
    assert!(matches!(node.step(m), Err(StepError::Malformed { .. })));
}

/// Node 1 of {1, 2, 3}, fresh, stepping `body` from `from` in term 2.
fn step_from(from: u64, body: MessageBody) -> Result<(), StepError> {
    let mut node = RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::default()).unwrap();
    node.step(Message { from, to: 1, term: 2, body, recovery: None, trace: None })
}

#[test]
fn a_message_from_node_0_or_from_the_node_itself_is_refused() {
    let heartbeat = || MessageBody::Heartbeat { leader_commit: 0, read_round: 0 };
    assert!(matches!(step_from(0, heartbeat()), Err(StepError::BadSender { from: 0 })));
    assert!(matches!(step_from(1, heartbeat()), Err(StepError::BadSender { from: 1 })));
    assert_eq!(step_from(2, heartbeat()), Ok(()));
}

#[test]
fn append_entries_whose_terms_exceed_the_messages_or_decrease_is_malformed() {
    let entry = |index, term| Entry { index, term, kind: EntryKind::Noop, data: Default::default() };
    let append =
        |entries| MessageBody::AppendEntries { prev_log_index: 0, prev_log_term: 0, entries, leader_commit: 0 };
    let out_of_order = |r: Result<(), StepError>| matches!(r, Err(StepError::Malformed { kind: "AppendEntries", reason }) if reason.contains("out of order"));
    assert!(out_of_order(step_from(2, append(vec![entry(1, 3)]))), "a term above the message's");
    assert!(out_of_order(step_from(2, append(vec![entry(1, 2), entry(2, 1)]))), "decreasing terms");
    assert_eq!(step_from(2, append(vec![entry(1, 1), entry(2, 2)])), Ok(()));
}

#[test]
fn a_snapshot_chunk_past_its_total_length_is_malformed() {
    let chunk = |offset, total_len| MessageBody::InstallSnapshot {
        meta: SnapshotMeta { index: 10, term: 1, conf: ConfState::with_voters([1, 2, 3]) },
        offset,
        total_len,
        data: Bytes::from_static(b"state"),
        done: true,
    };
    let malformed = |r| matches!(r, Err(StepError::Malformed { kind: "InstallSnapshot", .. }));
    assert!(malformed(step_from(2, chunk(0, 4))), "5 bytes of a 4-byte snapshot");
    assert!(malformed(step_from(2, chunk(u64::MAX, u64::MAX))), "an end past u64::MAX");
    assert_eq!(step_from(2, chunk(0, 5)), Ok(()));
}

/// Found by the wire fuzzer: restoring a snapshot at u64::MAX overflowed the index of
/// the entry after it.
#[test]
fn a_snapshot_at_the_last_possible_index_is_malformed() {
    let snapshot = |index| MessageBody::InstallSnapshot {
        meta: SnapshotMeta { index, term: 1, conf: ConfState::with_voters([1, 2, 3]) },
        offset: 0,
        total_len: 5,
        data: Bytes::from_static(b"state"),
        done: true,
    };
    let refused = step_from(2, snapshot(u64::MAX));
    assert!(
        matches!(&refused, Err(StepError::Malformed { kind: "InstallSnapshot", reason }) if reason.contains("18446744073709551615")),
        "{refused:?}"
    );
    assert_eq!(step_from(2, snapshot(u64::MAX - 1)), Ok(()));
}
