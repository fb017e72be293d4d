//! A leader's handling of its followers' answers, through `RawNode`: where a rejection's
//! hint moves the next probe, when an acknowledgement ends a snapshot being sent, the
//! inflight window a heartbeat answer frees, a follower that lost its log, and the
//! recovery marker that a snapshot covers.

mod common;

use bytes::Bytes;
use raftkv_raft::{
    ConfState, Config, Entry, EntryKind, Event, HardState, Message, MessageBody, RawNode, Recovered, Snapshot,
    SnapshotMeta,
};

/// Takes the next Ready, carries it out, and returns it.
fn carry_out(node: &mut RawNode) -> raftkv_raft::Ready {
    let ready = node.ready();
    node.advance();
    ready
}

/// The bodies of everything the next Ready sends to `peer`.
fn sent_to(node: &mut RawNode, peer: u64) -> Vec<MessageBody> {
    let ready = carry_out(node);
    ready.messages.into_iter().chain(ready.persisted_messages).filter(|m| m.to == peer).map(|m| m.body).collect()
}

/// `from` tells node 1 `body`, in node 1's term; `recovery` is the sender's recovery nonce.
fn answer_as(node: &mut RawNode, from: u64, recovery: Option<u64>, body: MessageBody) {
    let term = node.status().term;
    node.step(Message { from, to: 1, term, body, recovery, trace: None }).unwrap();
}

fn answer(node: &mut RawNode, from: u64, body: MessageBody) {
    answer_as(node, from, None, body);
}

fn ack(node: &mut RawNode, from: u64, index: u64) {
    answer(node, from, MessageBody::AppendEntriesResponse { success: true, index, reject_hint: 0, hint_term: 0 });
}

fn heartbeat_answer(missing_from: Option<u64>) -> MessageBody {
    MessageBody::HeartbeatResponse { read_round: 0, missing_from }
}

/// Node 1 of {1, 2, 3} resumed from `recovered`, elected with node 2's (pre-)votes, its
/// Readies carried out (its own log counts). Nobody has acknowledged anything yet, and
/// the probes it sent are unanswered.
fn elected(cfg: Config, recovered: Recovered) -> RawNode {
    let mut node = RawNode::new(cfg, ConfState::with_voters([1, 2, 3]), recovered).unwrap();
    common::win_election(&mut node);
    node
}

/// The leader of a brand-new cluster: its log is the bootstrap (1..=3, term 1) and its
/// no-op (4, term 2).
fn new_cluster_leader(cfg: Config) -> RawNode {
    elected(cfg, Recovered::default())
}

fn match_of(node: &RawNode, peer: u64) -> u64 {
    node.status().progress.iter().find(|p| p.id == peer).expect("a member").match_index
}

/// The prev index of each AppendEntries in `bodies`.
fn append_prevs(bodies: &[MessageBody]) -> Vec<u64> {
    bodies
        .iter()
        .filter_map(|b| match b {
            MessageBody::AppendEntries { prev_log_index, .. } => Some(*prev_log_index),
            _ => None,
        })
        .collect()
}

/// The indexes of the entries carried by the AppendEntries in `bodies`.
fn appended(bodies: &[MessageBody]) -> Vec<u64> {
    bodies
        .iter()
        .flat_map(|b| match b {
            MessageBody::AppendEntries { entries, .. } => entries.iter().map(|e| e.index).collect(),
            _ => Vec::new(),
        })
        .collect()
}

// ---- the hint of a rejection ----

/// Node 3's rejection of node 1's first probe (after 6), with this hint, and the prev
/// index of the probe node 1 sends next. Node 1 leads term 3 over a log of term 1
/// (1..=3) and term 2 (4..=6), its no-op at 7.
fn next_probe_after_rejection(reject_hint: u64, hint_term: u64) -> u64 {
    let entry = |index, term| Entry { index, term, kind: EntryKind::Command, data: Bytes::new() };
    let entries = (1..=6).map(|i| entry(i, if i <= 3 { 1 } else { 2 })).collect();
    let hard_state = HardState { term: 2, vote: None, commit: 0, recovering: false };
    let mut node = elected(Config::new(1), Recovered { hard_state, entries, ..Recovered::default() });
    assert_eq!(node.status().term, 3);
    answer(&mut node, 3, MessageBody::AppendEntriesResponse { success: false, index: 6, reject_hint, hint_term });
    let prevs = append_prevs(&sent_to(&mut node, 3));
    assert_eq!(prevs.len(), 1, "one new probe: {prevs:?}");
    prevs[0]
}

#[test]
fn a_rejection_hint_with_a_term_probes_after_the_leaders_last_entry_of_that_term() {
    // Node 3 holds term 1 up to 6; the leader's last entry of term 1 or lower is 3.
    assert_eq!(next_probe_after_rejection(6, 1), 3);
    assert_eq!(next_probe_after_rejection(4, 1), 3);
    // Term 2 at 5 matches the leader's own: probe right after it.
    assert_eq!(next_probe_after_rejection(5, 2), 5);
}

#[test]
fn a_rejection_hint_without_a_term_probes_right_after_the_hinted_index() {
    // A hint without a term is a plain index (where the follower's log ends), not a
    // term to search the leader's log for: nothing of the leader's is at term 0.
    assert_eq!(next_probe_after_rejection(4, 0), 4);
    assert_eq!(next_probe_after_rejection(0, 0), 0);
}

// ---- acknowledgements while a snapshot is being sent ----

/// A new cluster's leader that committed, applied and compacted its log up to 6, holds
/// 7 beyond it, and is sending node 3 (which answered its first probe with an empty
/// log) the snapshot at 6.
fn leader_sending_snapshot_to_3() -> RawNode {
    let mut cfg = Config::new(1);
    cfg.compaction_slack = 0;
    let mut node = new_cluster_leader(cfg);
    node.propose(Bytes::from_static(b"a")).unwrap();
    node.propose(Bytes::from_static(b"b")).unwrap();
    carry_out(&mut node);
    ack(&mut node, 2, 6);
    carry_out(&mut node);
    assert_eq!(node.status().applied_index, 6);
    let meta = SnapshotMeta { index: 6, term: 2, conf: node.conf_at(6).unwrap() };
    node.compact(Snapshot { meta, data: Bytes::from_static(b"state at 6") });
    node.propose(Bytes::from_static(b"c")).unwrap();
    carry_out(&mut node);
    answer(&mut node, 3, MessageBody::AppendEntriesResponse { success: false, index: 3, reject_hint: 0, hint_term: 0 });
    let sent = sent_to(&mut node, 3);
    assert!(matches!(&sent[..], [MessageBody::InstallSnapshot { meta, .. }] if meta.index == 6), "{sent:?}");
    node
}

#[test]
fn an_acknowledgement_below_the_snapshot_being_sent_keeps_the_leader_sending_it() {
    let mut node = leader_sending_snapshot_to_3();
    // A late answer to an older append: 3 still lacks 6, which only the snapshot has.
    ack(&mut node, 3, 5);
    assert_eq!(match_of(&node, 3), 5);
    assert_eq!(sent_to(&mut node, 3), Vec::new(), "no append while the snapshot is under way");
}

#[test]
fn an_acknowledgement_reaching_the_snapshot_index_ends_the_snapshot_and_replication_resumes() {
    let mut node = leader_sending_snapshot_to_3();
    ack(&mut node, 3, 6);
    let sent = sent_to(&mut node, 3);
    assert_eq!((append_prevs(&sent), appended(&sent)), (vec![6], vec![7]), "{sent:?}");
}

// ---- the inflight window and heartbeat answers ----

/// A new cluster's leader with an inflight window of `window`, replicating to node 2,
/// which acknowledged 4.
fn leader_replicating_to_2(window: usize) -> RawNode {
    let mut cfg = Config::new(1);
    cfg.max_inflight_appends = window;
    let mut node = new_cluster_leader(cfg);
    ack(&mut node, 2, 4);
    carry_out(&mut node);
    node
}

/// Proposes `data` and returns the indexes of the entries the next Ready sends node 2.
fn propose_and_send_to_2(node: &mut RawNode, data: &'static [u8]) -> Vec<u64> {
    node.propose(Bytes::from_static(data)).unwrap();
    appended(&sent_to(node, 2))
}

#[test]
fn a_heartbeat_answered_while_the_window_is_full_frees_a_slot_and_replication_resumes() {
    let mut node = leader_replicating_to_2(1);
    assert_eq!(propose_and_send_to_2(&mut node, b"a"), vec![5]);
    assert_eq!(propose_and_send_to_2(&mut node, b"b"), Vec::<u64>::new(), "the window of 1 is full");
    // The append of 5 may be lost: a working link must not leave the window stuck.
    answer(&mut node, 2, heartbeat_answer(None));
    assert_eq!(appended(&sent_to(&mut node, 2)), vec![6]);
}

#[test]
fn a_heartbeat_answered_while_the_window_has_room_frees_no_slot_of_it() {
    let mut node = leader_replicating_to_2(2);
    assert_eq!(propose_and_send_to_2(&mut node, b"a"), vec![5]);
    answer(&mut node, 2, heartbeat_answer(None));
    carry_out(&mut node);
    assert_eq!(propose_and_send_to_2(&mut node, b"b"), vec![6]);
    // 5 and 6 are in flight: the window of 2 is full.
    assert_eq!(propose_and_send_to_2(&mut node, b"c"), Vec::<u64>::new());
}

// ---- a follower that lost its log ----

/// Node 2 matched 6; it answers a heartbeat saying its log now ends before
/// `missing_from`. Returns the PeerLostLog events and node 2's match afterwards.
fn heartbeat_answer_missing_from(missing_from: u64) -> (Vec<Event>, u64) {
    let mut node = new_cluster_leader(Config::new(1));
    node.propose(Bytes::from_static(b"a")).unwrap();
    node.propose(Bytes::from_static(b"b")).unwrap();
    carry_out(&mut node);
    ack(&mut node, 2, 6);
    carry_out(&mut node);
    assert_eq!(match_of(&node, 2), 6);
    answer(&mut node, 2, heartbeat_answer(Some(missing_from)));
    let lost = carry_out(&mut node).events.into_iter().filter(|e| matches!(e, Event::PeerLostLog { .. })).collect();
    (lost, match_of(&node, 2))
}

#[test]
fn a_follower_missing_entries_it_acknowledged_is_reset_and_one_missing_none_is_not() {
    let lost = |last_index| vec![Event::PeerLostLog { peer: 2, match_index: 6, last_index }];
    // Its log ends at 6: all it acknowledged is there.
    assert_eq!(heartbeat_answer_missing_from(7), (Vec::new(), 6));
    // Its log ends at 5: 6 is gone.
    assert_eq!(heartbeat_answer_missing_from(6), (lost(5), 0));
    assert_eq!(heartbeat_answer_missing_from(3), (lost(2), 0));
}

// ---- a recovering follower's marker covered by a snapshot ----

#[test]
fn a_snapshot_covering_a_recovering_followers_marker_gets_it_a_new_marker() {
    const NONCE: u64 = 77;
    let mut cfg = Config::new(1);
    cfg.compaction_slack = 0;
    let mut node = new_cluster_leader(cfg);
    // Node 3 says it is recovering: its marker goes at 5.
    answer_as(&mut node, 3, Some(NONCE), heartbeat_answer(None));
    let marked = |ready: raftkv_raft::Ready| {
        ready.events.into_iter().filter(|e| matches!(e, Event::RecoveryMarked { .. })).collect::<Vec<_>>()
    };
    assert_eq!(marked(carry_out(&mut node)), vec![Event::RecoveryMarked { peer: 3, index: 5 }]);
    ack(&mut node, 2, 5);
    carry_out(&mut node);
    assert_eq!(node.status().applied_index, 5);
    let meta = SnapshotMeta { index: 5, term: 2, conf: node.conf_at(5).unwrap() };
    node.compact(Snapshot { meta, data: Bytes::from_static(b"state at 5") });
    // Node 3 has nothing after 3: it gets the snapshot, which holds the marker.
    let reject = MessageBody::AppendEntriesResponse { success: false, index: 4, reject_hint: 0, hint_term: 0 };
    answer_as(&mut node, 3, Some(NONCE), reject);
    let sent = sent_to(&mut node, 3);
    let total = match &sent[..] {
        [MessageBody::InstallSnapshot { meta, total_len, .. }] if meta.index == 5 => *total_len,
        _ => panic!("expected the snapshot at 5: {sent:?}"),
    };
    let installed = MessageBody::InstallSnapshotResponse {
        meta_index: 5,
        next_offset: total,
        done: true,
        rejected: false,
        too_large: None,
    };
    answer_as(&mut node, 3, Some(NONCE), installed);
    carry_out(&mut node);
    // Node 3 cannot see a marker inside a snapshot: its next word gets it a new one.
    answer_as(&mut node, 3, Some(NONCE), heartbeat_answer(None));
    assert_eq!(marked(carry_out(&mut node)), vec![Event::RecoveryMarked { peer: 3, index: 6 }]);
}
