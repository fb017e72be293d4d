//! Any bytes as a frame of the server port (decoded exactly as the server does, deadline
//! clamping included) and as a bare `Vec<Message>` batch; decoded Raft messages are
//! stepped into a follower and a leader. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = raftkv_rpc::decode_client_message(data)
        && let Some(messages) = raftkv_fuzz::raft_messages(message)
    {
        raftkv_fuzz::step_all(&mut raftkv_fuzz::follower(), messages.clone());
        raftkv_fuzz::step_all(&mut raftkv_fuzz::leader(), messages);
    }
    if let Some(messages) = raftkv_fuzz::decode_batch(data) {
        raftkv_fuzz::step_all(&mut raftkv_fuzz::follower(), messages.clone());
        raftkv_fuzz::step_all(&mut raftkv_fuzz::leader(), messages);
    }
});
