//! Helpers shared by the integration tests that need a leader.

use raftkv_raft::{Message, MessageBody, RawNode, Role, Term};

/// Campaigns `node` (node 1) and grants it node 2's (pre-)votes until it leads, then
/// carries out its Readies, so that its own log counts toward the commit quorum.
pub fn win_election(node: &mut RawNode) {
    node.campaign();
    for _ in 0..10 {
        if node.status().role == Role::Leader {
            break;
        }
        let ready = node.ready();
        node.advance();
        let requests: Vec<(bool, Term)> = ready
            .messages
            .iter()
            .chain(&ready.persisted_messages)
            .filter_map(|m| match m.body {
                MessageBody::RequestVote { pre_vote, .. } if m.to == 2 => Some((pre_vote, m.term)),
                _ => None,
            })
            .collect();
        for (pre_vote, term) in requests {
            let body = MessageBody::RequestVoteResponse { pre_vote, granted: true };
            node.step(Message::new(2, 1, term, body)).unwrap();
        }
    }
    assert_eq!(node.status().role, Role::Leader);
    while node.has_ready() {
        node.ready();
        node.advance();
    }
}
