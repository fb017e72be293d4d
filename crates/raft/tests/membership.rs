//! Membership changes in the core: the ConfChange format, configurations tracked by
//! the log, bootstrap and recovery, and the leader's rules for accepting a change.

use bytes::Bytes;
use raftkv_raft::{
    ConfChange, ConfChangeError, ConfChangeKind as K, ConfState, Config, Entry, EntryKind, Event, HardState, Message,
    MessageBody, ProposeError, RawNode, Recovered, Role,
};

fn cc(change: K, node: u64) -> ConfChange {
    ConfChange::new(change, node, Bytes::from_static(b"10.0.0.1:7000"))
}

#[test]
fn conf_changes_round_trip_and_bad_bytes_are_errors() {
    for change in [K::AddLearner, K::PromoteVoter, K::AddVoter, K::Remove] {
        let c = cc(change, 7);
        assert_eq!(ConfChange::decode(&c.encode()), Ok(c));
    }
    let good = cc(K::AddLearner, 7).encode();
    assert!(matches!(ConfChange::decode(&[]), Err(ConfChangeError::Malformed(_))));
    assert!(matches!(ConfChange::decode(&[9, 0, 1]), Err(ConfChangeError::Malformed(_))));
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(matches!(ConfChange::decode(&trailing), Err(ConfChangeError::Malformed(_))));
    for cut in 0..good.len() {
        assert!(ConfChange::decode(&good[..cut]).is_err(), "prefix of {cut} bytes");
    }
    for byte in 0..=255u8 {
        let _ = ConfChange::decode(&[1, byte, byte, byte]); // never panics
    }
    assert_eq!(EntryKind::from_byte(EntryKind::ConfChange.to_byte()), Some(EntryKind::ConfChange));
}

#[test]
fn invalid_changes_are_refused_by_the_configuration() {
    let mut conf = ConfState::with_voters([1, 2]);
    conf.learners.insert(3);
    assert_eq!(conf.apply_change(&cc(K::AddLearner, 2)), Err(ConfChangeError::AlreadyMember(2)));
    assert_eq!(conf.apply_change(&cc(K::AddVoter, 3)), Err(ConfChangeError::AlreadyMember(3)));
    assert_eq!(conf.apply_change(&cc(K::PromoteVoter, 1)), Err(ConfChangeError::NotALearner(1)));
    assert_eq!(conf.apply_change(&cc(K::Remove, 9)), Err(ConfChangeError::NotAMember(9)));
    assert_eq!(conf.apply_change(&cc(K::AddLearner, 0)), Err(ConfChangeError::InvalidNode));
    let promoted = conf.apply_change(&cc(K::PromoteVoter, 3)).unwrap();
    assert_eq!(promoted, ConfState::with_voters([1, 2, 3]));
    let one = ConfState::with_voters([1]);
    assert_eq!(one.apply_change(&cc(K::Remove, 1)), Err(ConfChangeError::NoVoters));
}

fn entry(index: u64, term: u64, kind: EntryKind, data: Bytes) -> Entry {
    Entry { index, term, kind, data }
}

fn conf_entry(index: u64, term: u64, c: ConfChange) -> Entry {
    entry(index, term, EntryKind::ConfChange, c.encode())
}

#[test]
fn a_brand_new_cluster_bootstraps_its_configuration_into_the_log() {
    let mut node = RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3]), Recovered::default()).unwrap();
    assert_eq!(node.conf(), &ConfState::with_voters([1, 2, 3]));
    assert_eq!(node.conf_index(), 3);
    assert_eq!(node.conf_at(1), Some(ConfState::with_voters([1])));
    let rd = node.ready();
    assert_eq!(rd.entries.len(), 3);
    assert!(rd.entries.iter().all(|e| e.kind == EntryKind::ConfChange && e.term == 1));
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: None, commit: 3, recovering: false }));
    assert!(rd.must_sync());
    assert!(rd.events.iter().any(|e| matches!(e, Event::ConfChanged { index: 3, .. })));
    node.advance();
    // A restart recovers the configuration from the log, not from the flags.
    let recovered = bootstrap_log_recovered(rd.entries);
    let restarted = RawNode::new(Config::new(1), ConfState::with_voters([1, 2, 3, 4, 5]), recovered).unwrap();
    assert_eq!(restarted.conf(), &ConfState::with_voters([1, 2, 3]));
}

#[test]
fn bootstrap_with_puts_each_members_context_into_the_log() {
    let changes = vec![
        ConfChange::new(K::AddVoter, 1, Bytes::from_static(b"a:1")),
        ConfChange::new(K::AddVoter, 2, Bytes::from_static(b"b:2")),
        ConfChange::new(K::AddLearner, 3, Bytes::from_static(b"c:3")),
    ];
    let mut node = RawNode::bootstrap_with(Config::new(1), changes.clone(), Recovered::default()).unwrap();
    let mut expected = ConfState::with_voters([1, 2]);
    expected.learners.insert(3);
    assert_eq!(node.conf(), &expected);
    let rd = node.ready();
    let logged: Vec<ConfChange> = rd.entries.iter().map(|e| ConfChange::decode(&e.data).unwrap()).collect();
    assert_eq!(logged, changes);
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: None, commit: 3, recovering: false }));
    node.advance();
    // Recovery ignores the bootstrap changes: the log already holds them.
    let recovered = bootstrap_log_recovered(rd.entries);
    let other = vec![ConfChange::new(K::AddVoter, 9, Bytes::new())];
    let restarted = RawNode::bootstrap_with(Config::new(1), other, recovered).unwrap();
    assert_eq!(restarted.conf(), &expected);
    assert_eq!(restarted.conf_index(), 3);

    // Changes that do not build a configuration with voters are refused.
    let bad = |changes: Vec<ConfChange>| RawNode::bootstrap_with(Config::new(1), changes, Recovered::default());
    let e = bad(vec![cc(K::AddVoter, 1), cc(K::AddVoter, 1)]).unwrap_err();
    assert!(e.to_string().contains("node 1 is already a member"), "{e}");
    let e = bad(vec![cc(K::AddLearner, 1)]).unwrap_err();
    assert!(e.to_string().contains("no voters"), "{e}");
    assert!(bad(Vec::new()).is_err());
}

#[test]
fn a_joining_node_has_no_configuration_and_never_campaigns() {
    let mut node = RawNode::new(Config::new(4), ConfState::default(), Recovered::default()).unwrap();
    for _ in 0..100 {
        node.tick();
    }
    assert_eq!(node.status().role, Role::Follower);
    assert!(!node.has_ready() || node.ready().persisted_messages.is_empty());
    // It learns the configuration from the leader's log.
    let entries: Vec<Entry> = [cc(K::AddVoter, 1), cc(K::AddVoter, 2), cc(K::AddLearner, 4)]
        .into_iter()
        .enumerate()
        .map(|(i, c)| conf_entry(i as u64 + 1, 1, c))
        .collect();
    let msg = Message {
        from: 1,
        to: 4,
        term: 2,
        body: MessageBody::AppendEntries { prev_log_index: 0, prev_log_term: 0, entries, leader_commit: 3 },
        recovery: None,
        trace: None,
    };
    let mut node = RawNode::new(Config::new(4), ConfState::default(), Recovered::default()).unwrap();
    node.step(msg).unwrap();
    let mut expected = ConfState::with_voters([1, 2]);
    expected.learners.insert(4);
    assert_eq!(node.conf(), &expected);
    for _ in 0..100 {
        node.tick();
    }
    assert_eq!(node.status().role, Role::Follower, "a learner never campaigns");
}

#[test]
fn truncation_takes_back_an_uncommitted_configuration() {
    let entries = vec![conf_entry(1, 1, cc(K::AddVoter, 1)), conf_entry(2, 1, cc(K::AddVoter, 2))];
    let recovered = Recovered {
        hard_state: HardState { term: 1, vote: None, commit: 2, recovering: false },
        snapshot: None,
        entries,
        lost_state: false,
    };
    let mut node = RawNode::new(Config::new(2), ConfState::default(), recovered).unwrap();
    let append = |term, entries| Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::AppendEntries { prev_log_index: 2, prev_log_term: 1, entries, leader_commit: 2 },
        recovery: None,
        trace: None,
    };
    node.step(append(2, vec![conf_entry(3, 2, cc(K::AddLearner, 3))])).unwrap();
    assert!(node.conf().learners.contains(&3));
    // A new leader overwrites the uncommitted entry 3.
    node.step(append(3, vec![entry(3, 3, EntryKind::Noop, Bytes::new())])).unwrap();
    assert_eq!(node.conf(), &ConfState::with_voters([1, 2]));
    assert_eq!(node.conf_index(), 2);
    let rd = node.ready();
    let changes: Vec<_> = rd.events.iter().filter(|e| matches!(e, Event::ConfChanged { .. })).collect();
    assert_eq!(changes.len(), 2, "{:?}", rd.events);
    // An undecodable change is a no-op.
    node.advance();
    let garbage = entry(4, 3, EntryKind::ConfChange, Bytes::from_static(b"\x01\xff"));
    let msg = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 3,
            entries: vec![garbage],
            leader_commit: 2,
        },
        recovery: None,
        trace: None,
    };
    node.step(msg).unwrap();
    assert_eq!(node.conf_index(), 2);
}

/// A single-node cluster whose node leads and has committed its no-op.
fn single_leader() -> RawNode {
    let mut node = RawNode::new(Config::new(1), ConfState::with_voters([1]), Recovered::default()).unwrap();
    node.campaign();
    for _ in 0..3 {
        if node.has_ready() {
            node.ready();
            node.advance();
        }
    }
    assert_eq!(node.status().role, Role::Leader);
    node
}

#[test]
fn the_leader_enforces_the_single_change_rules() {
    let mut node = RawNode::new(Config::new(1), ConfState::with_voters([1]), Recovered::default()).unwrap();
    node.campaign();
    assert_eq!(node.status().role, Role::Leader);
    // Its no-op is not durable (so not committed) yet.
    assert_eq!(node.propose_conf_change(cc(K::AddLearner, 2)), Err(ProposeError::NoCommitInTerm));
    let mut node = single_leader();
    let (index, _) = node.propose_conf_change(cc(K::AddLearner, 2)).unwrap();
    assert!(node.conf().learners.contains(&2), "the change takes effect on append");
    assert_eq!(node.propose_conf_change(cc(K::AddLearner, 3)), Err(ProposeError::ConfChangePending { index }));
    node.ready();
    node.advance();
    assert!(node.status().commit_index >= index);
    assert_eq!(
        node.propose_conf_change(cc(K::AddLearner, 2)),
        Err(ProposeError::InvalidConfChange(ConfChangeError::AlreadyMember(2)))
    );
    assert_eq!(
        node.propose_conf_change(cc(K::Remove, 1)),
        Err(ProposeError::InvalidConfChange(ConfChangeError::NoVoters))
    );
    // The learner never acknowledged anything: it is not caught up.
    assert!(matches!(node.propose_conf_change(cc(K::PromoteVoter, 2)), Err(ProposeError::NotCaughtUp { node: 2, .. })));
}

/// What a restart recovers after a bootstrap that committed its three configuration
/// entries and nothing else.
fn bootstrap_log_recovered(entries: Vec<Entry>) -> Recovered {
    Recovered {
        hard_state: HardState { term: 1, vote: None, commit: 3, recovering: false },
        snapshot: None,
        entries,
        lost_state: false,
    }
}

/// A founder's first write torn (some bootstrap entries on disk, the hard state after
/// them lost) is lost state: the node bootstraps again and recovers, instead of taking
/// the entries it kept (here `AddVoter 1` alone) for a one-voter cluster and electing
/// itself without its peers. Found by the simulation with failed fsyncs (seed 562).
#[test]
fn a_torn_first_write_is_lost_state_and_never_a_smaller_cluster() {
    let changes: Vec<ConfChange> = (1..=3).map(|id| cc(K::AddVoter, id)).collect();
    let mut first = RawNode::bootstrap_with(Config::new(1), changes.clone(), Recovered::default()).unwrap();
    let written = first.ready().entries;
    for kept in 1..=written.len() {
        let torn = Recovered { entries: written[..kept].to_vec(), ..Recovered::default() };
        let mut node = RawNode::bootstrap_with(Config::new(1), changes.clone(), torn).unwrap();
        assert_eq!(node.conf(), &ConfState::with_voters([1, 2, 3]), "kept {kept}: the whole configuration");
        assert!(node.status().recovering, "kept {kept}: it lost its state and recovers");
        for _ in 0..100 {
            node.tick();
        }
        assert_ne!(node.status().role, Role::Leader, "kept {kept}: it never leads alone");
    }
    // A write that was not torn (its hard state is there) is state, kept as it is.
    let whole = bootstrap_log_recovered(written);
    let node = RawNode::bootstrap_with(Config::new(1), changes, whole).unwrap();
    assert!(!node.status().recovering);
}
