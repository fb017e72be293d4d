//! Messages the fuzzer (fuzz/, wire_decode) found to panic the core: refused as
//! `StepError::Malformed` instead.

use raftkv_raft::{ConfState, Config, Entry, EntryKind, Message, MessageBody, RawNode, Recovered, Role, StepError};

fn follower() -> RawNode {
    RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::default()).expect("config")
}

/// Node 1 of 1, 2, 3 as leader: it campaigns and node 2 grants its (pre-)votes.
fn leader() -> RawNode {
    let mut node = follower();
    node.campaign();
    for _ in 0..4 {
        if node.status().role == Role::Leader {
            break;
        }
        let ready = node.ready();
        let grants: Vec<Message> = ready
            .messages
            .iter()
            .chain(&ready.persisted_messages)
            .filter_map(|m| match m.body {
                MessageBody::RequestVote { pre_vote, .. } if m.to == 2 => Some(Message {
                    from: 2,
                    to: 1,
                    term: m.term,
                    body: MessageBody::RequestVoteResponse { pre_vote, granted: true },
                }),
                _ => None,
            })
            .collect();
        node.advance();
        for m in grants {
            node.step(m).expect("a vote grant");
        }
    }
    assert_eq!(node.status().role, Role::Leader);
    node
}

#[test]
fn heartbeat_response_missing_from_zero_is_malformed() {
    let mut node = leader();
    let term = node.status().term;
    let m =
        Message { from: 2, to: 1, term, body: MessageBody::HeartbeatResponse { read_round: 0, missing_from: Some(0) } };
    assert!(matches!(node.step(m), Err(StepError::Malformed { .. })));
    assert_eq!(node.status().role, Role::Leader);
}

#[test]
fn append_entries_with_indexes_past_u64_max_is_malformed() {
    let mut node = follower();
    let entry = |index| Entry { index, term: 1, kind: EntryKind::Noop, data: Default::default() };
    let body = MessageBody::AppendEntries {
        prev_log_index: u64::MAX,
        prev_log_term: 1,
        entries: vec![entry(0)],
        leader_commit: 0,
    };
    let m = Message { from: 2, to: 1, term: 1, body };
    assert!(matches!(node.step(m), Err(StepError::Malformed { .. })));
}
