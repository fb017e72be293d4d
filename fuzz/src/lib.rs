//! What the fuzz targets share: decoding as the server does, and a Raft node to step
//! decoded messages into.

use bincode::Options as _;
use raftkv_raft::{ConfState, Config, Message, MessageBody, RawNode, Recovered, Role};
use raftkv_rpc::RaftKvRequest;
use raftkv_rpc::tarpc::ClientMessage;

/// At most this many decoded messages are stepped per input (keeps runs fast).
const MAX_STEPS: usize = 64;

/// A follower (node 1 of 1, 2, 3) that has heard from no one.
pub fn follower() -> RawNode {
    RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::default()).expect("a valid config")
}

/// Node 1 of 1, 2, 3 as leader: it campaigns and node 2 grants its (pre-)votes.
pub fn leader() -> RawNode {
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
                    recovery: None,
                    trace: None,
                }),
                _ => None,
            })
            .collect();
        node.advance();
        for m in grants {
            let _ = node.step(m);
        }
    }
    node
}

/// Steps `messages` into `node`, driving ready/advance; never panics on any message.
pub fn step_all(node: &mut RawNode, messages: Vec<Message>) {
    for m in messages.into_iter().take(MAX_STEPS) {
        let _ = node.step(m);
        if node.has_ready() {
            let _ = node.ready();
            node.advance();
        }
    }
}

/// The Raft messages of a decoded `raft` request, if it is one.
pub fn raft_messages(message: ClientMessage<RaftKvRequest>) -> Option<Vec<Message>> {
    match message {
        ClientMessage::Request(r) => match r.message {
            RaftKvRequest::Raft { messages, .. } => Some(messages),
            _ => None,
        },
        _ => None,
    }
}

/// A `Vec<Message>` batch, decoded with the options tarpc's bincode codec uses.
pub fn decode_batch(data: &[u8]) -> Option<Vec<Message>> {
    bincode::DefaultOptions::new().deserialize(data).ok()
}

/// A batch encoded as [`decode_batch`] reads it.
pub fn encode_batch(messages: &[Message]) -> Vec<u8> {
    bincode::DefaultOptions::new().serialize(messages).expect("messages encode")
}
