//! Behaviour of the key/value state machine through its public API.

use bytes::Bytes;
use raftkv_kv::{
    Applied, Command, CommandError, KvError, KvStateMachine, MAX_KEY_LEN, MAX_SCAN_BYTES, MAX_SCAN_LIMIT,
    MAX_VALUE_LEN, WriteOp, WriteResult,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put { key: b(key), value: b(value) }
}

fn delete(key: &str) -> WriteOp {
    WriteOp::Delete { key: b(key) }
}

fn cas(key: &str, expected: Option<&str>, new: &str) -> WriteOp {
    WriteOp::Cas { key: b(key), expected: expected.map(b), new: b(new) }
}

fn entry(client_id: u64, seq: u64, op: WriteOp) -> Bytes {
    Command { client_id, seq, op }.encode()
}

/// Applies at the next index in term 1.
fn run(sm: &mut KvStateMachine, client_id: u64, seq: u64, op: WriteOp) -> Applied {
    let index = sm.applied_index() + 1;
    sm.apply(index, 1, &entry(client_id, seq, op))
}

fn ok(applied: Applied) -> WriteResult {
    assert!(!applied.duplicate);
    applied.result.expect("command should apply")
}

#[test]
fn put_get_delete() {
    let mut sm = KvStateMachine::new();
    assert!(sm.is_empty());
    assert_eq!(ok(run(&mut sm, 1, 1, put("k", "v1"))), WriteResult::Put { existed: false });
    assert_eq!(ok(run(&mut sm, 1, 2, put("k", "v2"))), WriteResult::Put { existed: true });
    assert_eq!(sm.get(b"k"), Some(b("v2")));
    assert_eq!(sm.len(), 1);
    assert_eq!(ok(run(&mut sm, 1, 3, delete("k"))), WriteResult::Delete { existed: true });
    assert_eq!(ok(run(&mut sm, 1, 4, delete("k"))), WriteResult::Delete { existed: false });
    assert_eq!(sm.get(b"k"), None);
    assert!(sm.is_empty());
    assert_eq!((sm.applied_index(), sm.applied_term()), (4, 1));
}

#[test]
fn applied_reports_index_term_and_client() {
    let mut sm = KvStateMachine::new();
    let a = sm.apply(3, 2, &entry(9, 4, put("k", "v")));
    assert_eq!((a.index, a.term, a.client_id, a.seq), (3, 2, 9, 4));
    assert_eq!((sm.applied_index(), sm.applied_term()), (3, 2));
}

#[test]
fn cas_matching_value_swaps() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "old"));
    let r = ok(run(&mut sm, 1, 2, cas("k", Some("old"), "new")));
    assert_eq!(r, WriteResult::Cas { swapped: true, current: None });
    assert_eq!(sm.get(b"k"), Some(b("new")));
}

#[test]
fn cas_mismatch_returns_current_value() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "actual"));
    let r = ok(run(&mut sm, 1, 2, cas("k", Some("other"), "new")));
    let current = Some(b("actual"));
    assert_eq!(r, WriteResult::Cas { swapped: false, current });
    assert_eq!(sm.get(b"k"), Some(b("actual")));
    // Expecting a value on an absent key fails and reports absence.
    let r = ok(run(&mut sm, 1, 3, cas("missing", Some("x"), "new")));
    assert_eq!(r, WriteResult::Cas { swapped: false, current: None });
    assert_eq!(sm.get(b"missing"), None);
}

#[test]
fn cas_expect_absent() {
    let mut sm = KvStateMachine::new();
    let r = ok(run(&mut sm, 1, 1, cas("k", None, "first")));
    assert_eq!(r, WriteResult::Cas { swapped: true, current: None });
    assert_eq!(sm.get(b"k"), Some(b("first")));
    let r = ok(run(&mut sm, 1, 2, cas("k", None, "second")));
    let current = Some(b("first"));
    assert_eq!(r, WriteResult::Cas { swapped: false, current });
    assert_eq!(sm.get(b"k"), Some(b("first")));
}

fn keys(page: &raftkv_kv::ScanPage) -> Vec<&[u8]> {
    page.items.iter().map(|(k, _)| k.as_ref()).collect()
}

#[test]
fn scan_prefix_limit_and_more() {
    let mut sm = KvStateMachine::new();
    for (i, k) in ["b", "abd", "a", "abc", "ab", "ac"].into_iter().enumerate() {
        run(&mut sm, 1, i as u64 + 1, put(k, &format!("v-{k}")));
    }
    let page = sm.scan(b"ab", 2).unwrap();
    assert_eq!(keys(&page), [&b"ab"[..], b"abc"]);
    assert_eq!(page.items[1].1, b("v-abc"));
    assert!(page.more);
    let page = sm.scan(b"ab", 3).unwrap();
    assert_eq!(keys(&page), [&b"ab"[..], b"abc", b"abd"]);
    assert!(!page.more);
    let all = sm.scan(b"", MAX_SCAN_LIMIT).unwrap();
    assert_eq!(keys(&all), [&b"a"[..], b"ab", b"abc", b"abd", b"ac", b"b"]);
    assert!(!all.more);
    let none = sm.scan(b"zz", 5).unwrap();
    assert!(none.items.is_empty() && !none.more);
}

#[test]
fn scan_after_continues_a_page() {
    let mut sm = KvStateMachine::new();
    for (i, k) in ["a1", "a2", "a3", "b1"].into_iter().enumerate() {
        run(&mut sm, 1, i as u64 + 1, put(k, "v"));
    }
    let first = sm.scan(b"a", 2).unwrap();
    let last = first.items.last().unwrap().0.clone();
    let next = sm.scan_after(b"a", Some(&last), 2).unwrap();
    assert_eq!(keys(&next), [&b"a3"[..]]);
    assert!(!next.more);
    // A cursor before the prefix starts at the prefix.
    let from_start = sm.scan_after(b"a", Some(b"0"), 10).unwrap();
    assert_eq!(from_start.items.len(), 3);
}

#[test]
fn scan_range_starts_at_or_after_a_key() {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let mut sm = KvStateMachine::new();
    for (i, k) in ["a1", "a2", "a3", "b1"].into_iter().enumerate() {
        run(&mut sm, 1, i as u64 + 1, put(k, "v"));
    }
    let scan = |start, limit| sm.scan_range(b"a", start, limit).unwrap();
    assert_eq!(keys(&scan(Included(&b"a2"[..]), 10)), [&b"a2"[..], b"a3"]);
    assert_eq!(keys(&scan(Excluded(&b"a2"[..]), 10)), [&b"a3"[..]]);
    // A start between keys, before the prefix, and after every key with it.
    assert_eq!(keys(&scan(Included(&b"a15"[..]), 10)), [&b"a2"[..], b"a3"]);
    assert_eq!(keys(&scan(Excluded(&b"0"[..]), 1)), [&b"a1"[..]]);
    assert!(scan(Included(&b"a4"[..]), 10).items.is_empty());
    let page = scan(Unbounded, 2);
    assert_eq!((keys(&page), page.more), (vec![&b"a1"[..], b"a2"], true));
    let long = vec![b'a'; MAX_KEY_LEN + 1];
    for start in [Included(&long[..]), Excluded(&long[..])] {
        let err = sm.scan_range(b"a", start, 1).unwrap_err();
        assert_eq!(err, KvError::KeyTooLong { len: MAX_KEY_LEN + 1 });
    }
}

/// A start before the prefix (even one with a key between it and the prefix) starts
/// at the prefix; a start at the prefix itself is taken as given.
#[test]
fn a_start_before_or_at_the_prefix_is_clamped_only_when_before_it() {
    use std::ops::Bound::{Excluded, Included};
    let mut sm = KvStateMachine::new();
    for (i, k) in ["0x", "a", "a1", "a2", "b"].into_iter().enumerate() {
        run(&mut sm, 1, i as u64 + 1, put(k, "v"));
    }
    let scan =
        |start| -> Vec<Bytes> { sm.scan_range(b"a", start, 10).unwrap().items.into_iter().map(|(k, _)| k).collect() };
    let from_a = [b("a"), b("a1"), b("a2")];
    assert_eq!(scan(Included(&b"0"[..])), from_a);
    assert_eq!(scan(Excluded(&b"0"[..])), from_a);
    assert_eq!(scan(Included(&b"a"[..])), from_a);
    assert_eq!(scan(Excluded(&b"a"[..])), from_a[1..]);
}

#[test]
fn a_start_key_of_exactly_the_key_limit_is_accepted() {
    use std::ops::Bound::{Excluded, Included};
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("a1", "v"));
    let longest = vec![b'a'; MAX_KEY_LEN];
    for start in [Included(&longest[..]), Excluded(&longest[..])] {
        let page = sm.scan_range(b"a", start, 1).unwrap();
        assert!(page.items.is_empty() && !page.more);
    }
    assert_eq!(keys(&sm.scan_range(b"a", Included(&longest[..1]), 1).unwrap()), [&b"a1"[..]]);
}

/// Pairs of exactly 1 MiB each: the fourth brings the page to exactly the bound, and
/// the page stops there.
#[test]
fn a_scan_page_stops_when_its_bytes_are_exactly_the_bound() {
    let mut sm = KvStateMachine::new();
    let pair_bytes = MAX_SCAN_BYTES / 4;
    for i in 0..6u64 {
        let key = format!("big/{i}");
        ok(run(&mut sm, 1, i + 1, put(&key, &"v".repeat(pair_bytes - key.len()))));
    }
    let page = sm.scan(b"big/", 10).unwrap();
    let bytes: usize = page.items.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!((page.items.len(), bytes, page.more), (4, MAX_SCAN_BYTES, true));
}

#[test]
fn scan_limit_out_of_range_is_an_error_naming_the_limit() {
    let sm = KvStateMachine::new();
    for limit in [0, MAX_SCAN_LIMIT + 1] {
        let err = sm.scan(b"", limit).unwrap_err();
        assert_eq!(err, KvError::ScanLimit { limit });
        assert!(err.to_string().contains("10000"), "{err}");
    }
    assert!(sm.scan(b"", 1).is_ok());
}

#[test]
fn a_scan_page_stops_once_its_bytes_reach_the_bound() {
    let mut sm = KvStateMachine::new();
    let big = "v".repeat(MAX_VALUE_LEN);
    for i in 0..6u64 {
        ok(run(&mut sm, 1, i + 1, put(&format!("big/{i}"), &big)));
    }
    ok(run(&mut sm, 1, 7, put("small/a", "1")));
    // Four 1 MiB values (plus keys) reach 4 MiB: the page stops there, below its limit.
    let page = sm.scan(b"big/", 10).unwrap();
    assert_eq!(page.items.len(), MAX_SCAN_BYTES / MAX_VALUE_LEN);
    assert!(page.more);
    let bytes: usize = page.items.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(bytes < MAX_SCAN_BYTES + MAX_VALUE_LEN + MAX_KEY_LEN, "{bytes}");
    let rest = sm.scan_after(b"big/", Some(&page.items[3].0), 10).unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(!rest.more);
    // Small pairs are bounded by the limit alone.
    let small = sm.scan(b"small/", 10).unwrap();
    assert_eq!((small.items.len(), small.more), (1, false));
}

#[test]
fn scan_prefix_longer_than_a_key_is_an_error_naming_the_limit() {
    let sm = KvStateMachine::new();
    let long = vec![b'p'; MAX_KEY_LEN + 1];
    let err = sm.scan(&long, 1).unwrap_err();
    assert_eq!(err, KvError::PrefixTooLong { len: MAX_KEY_LEN + 1 });
    assert!(err.to_string().contains("4096"), "{err}");
    assert!(sm.scan(&long[..MAX_KEY_LEN], 1).is_ok());
}

#[test]
fn limits_are_checked_with_messages_naming_the_limit() {
    let long_key = Bytes::from(vec![b'k'; 5000]);
    let op = WriteOp::Delete { key: long_key };
    let err = Command { client_id: 1, seq: 1, op }.validate().unwrap_err();
    assert_eq!(err.to_string(), "key is 5000 bytes; the limit is 4096");

    let err = delete("").validate().unwrap_err();
    assert_eq!(err, KvError::EmptyKey);
    assert!(err.to_string().contains("4096"), "{err}");

    let big = Bytes::from(vec![0; MAX_VALUE_LEN + 1]);
    let op = WriteOp::Put { key: b("k"), value: big.clone() };
    assert_eq!(op.validate().unwrap_err().to_string(), "value is 1048577 bytes; the limit is 1048576");
    let op = WriteOp::Cas { key: b("k"), expected: Some(big), new: b("n") };
    assert_eq!(op.validate().unwrap_err(), KvError::ExpectedTooLong { len: MAX_VALUE_LEN + 1 });

    let key = Bytes::from(vec![b'k'; MAX_KEY_LEN]);
    let value = Bytes::from(vec![0; MAX_VALUE_LEN]);
    assert_eq!(WriteOp::Put { key, value: value.clone() }.validate(), Ok(()));
    // An expected value at the limit could be stored, so it could match: accepted.
    assert_eq!(WriteOp::Cas { key: b("k"), expected: Some(value), new: b("n") }.validate(), Ok(()));
}

#[test]
fn command_over_a_limit_is_rejected_without_changing_state() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "v"));
    let mut expected = sm.clone();
    let value = Bytes::from(vec![0; MAX_VALUE_LEN + 1]);
    let a = run(&mut sm, 2, 1, WriteOp::Put { key: b("k"), value });
    let err = KvError::ValueTooLong { len: MAX_VALUE_LEN + 1 };
    assert_eq!(a.result, Err(CommandError::Rejected(err)));
    assert_eq!((a.client_id, a.seq), (2, 1));
    // Same as if the entry carried no command: only the applied index moved.
    expected.apply_noop(2, 1).unwrap();
    assert_eq!(sm, expected);
    assert_eq!(sm.last_seq(2), None);
}

#[test]
fn undecodable_entry_is_an_error_and_changes_nothing() {
    for garbage in [&[][..], &[0xff; 3], b"definitely not postcard"] {
        let mut sm = KvStateMachine::new();
        run(&mut sm, 1, 1, put("k", "v"));
        let mut expected = sm.clone();
        let a = sm.apply(2, 1, garbage);
        assert!(matches!(a.result, Err(CommandError::Rejected(KvError::Decode { .. }))), "{a:?}");
        assert_eq!((a.client_id, a.seq, a.duplicate), (0, 0, false));
        expected.apply_noop(2, 1).unwrap();
        assert_eq!(sm, expected);
        assert_eq!(sm.digest(), expected.digest());
    }
}

#[test]
fn trailing_bytes_do_not_decode() {
    let mut data = entry(1, 1, put("k", "v")).to_vec();
    assert!(Command::decode(&data).is_ok());
    data.push(0);
    assert!(matches!(Command::decode(&data), Err(KvError::Decode { .. })));
}

#[test]
fn command_round_trips() {
    let cmd = Command { client_id: u64::MAX, seq: 7, op: cas("key", None, "value") };
    assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
}

#[test]
fn retried_command_applies_once_and_returns_the_original_result() {
    let mut sm = KvStateMachine::new();
    let first_entry = entry(7, 1, put("k", "from-7"));
    let first = sm.apply(1, 1, &first_entry);
    assert_eq!(first.result, Ok(WriteResult::Put { existed: false }));
    sm.apply(2, 1, &entry(8, 1, put("k", "from-8")));
    // The retry lands later, in a new term, after another client's write.
    let retry = sm.apply(5, 2, &first_entry);
    assert!(retry.duplicate);
    assert_eq!((retry.index, retry.term, retry.client_id, retry.seq), (1, 1, 7, 1));
    assert_eq!(retry.result, first.result);
    assert_eq!(sm.get(b"k"), Some(b("from-8")), "retry must not apply again");
    assert_eq!((sm.applied_index(), sm.applied_term()), (5, 2));
}

#[test]
fn stale_sequence_is_rejected() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 3, 1, put("k", "1"));
    run(&mut sm, 3, 2, put("k", "2"));
    let a = run(&mut sm, 3, 1, put("k", "old"));
    let err = CommandError::StaleSequence { client_id: 3, seq: 1, last: 2 };
    assert_eq!(a.result, Err(err.clone()));
    assert_eq!(err.to_string(), "client 3 sent seq 1, but seq 2 was already applied");
    assert_eq!(sm.get(b"k"), Some(b("2")));
    assert_eq!(sm.last_seq(3), Some(2));
}

#[test]
fn sequence_numbers_may_skip() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 3, 1, put("k", "1"));
    assert_eq!(ok(run(&mut sm, 3, 10, put("k", "10"))), WriteResult::Put { existed: true });
    assert_eq!(sm.last_seq(3), Some(10));
}

fn eviction_run() -> KvStateMachine {
    let mut sm = KvStateMachine::new().with_max_sessions(3);
    for client in 1..=5 {
        run(&mut sm, client, 1, put("k", "v"));
    }
    sm
}

#[test]
fn session_eviction_is_bounded_and_deterministic() {
    let mut sm = eviction_run();
    assert_eq!(sm.session_count(), 3);
    let present: Vec<_> = (1..=5).map(|c| sm.last_seq(c).is_some()).collect();
    assert_eq!(present, [false, false, true, true, true], "oldest sessions go first");
    // Client 3 writes again, so client 4 is now the least recently used.
    run(&mut sm, 3, 2, put("k", "v"));
    run(&mut sm, 6, 1, put("k", "v"));
    let present: Vec<_> = (1..=6).map(|c| sm.last_seq(c).is_some()).collect();
    assert_eq!(present, [false, false, true, false, true, true]);
    assert_eq!(sm.session_count(), 3);
    // Another replica doing the same ends in the same state.
    let mut other = eviction_run();
    run(&mut other, 3, 2, put("k", "v"));
    run(&mut other, 6, 1, put("k", "v"));
    assert_eq!(other, sm);
    assert_eq!(other.digest(), sm.digest());
}

#[test]
fn retry_from_an_evicted_client_is_applied_again() {
    // The documented cost of a bounded table: size it above the active clients.
    let mut sm = eviction_run();
    let a = run(&mut sm, 1, 1, put("k", "again"));
    assert!(!a.duplicate);
    assert!(a.result.is_ok());
}

#[test]
fn max_sessions_is_at_least_one() {
    let mut sm = KvStateMachine::new().with_max_sessions(0);
    assert_eq!(sm.max_sessions(), 1);
    run(&mut sm, 1, 1, put("k", "v"));
    run(&mut sm, 2, 1, put("k", "v"));
    assert_eq!((sm.session_count(), sm.last_seq(2)), (1, Some(1)));
}

#[test]
fn len_and_is_empty_count_the_keys() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("a", "1"));
    assert!(!sm.is_empty());
    run(&mut sm, 1, 2, put("b", "2"));
    run(&mut sm, 1, 3, put("c", "3"));
    run(&mut sm, 1, 4, delete("a"));
    assert_eq!(sm.len(), 2);
    let restored = KvStateMachine::restore(&sm.snapshot()).unwrap();
    assert_eq!((restored.len(), restored.is_empty()), (2, false));
}

#[test]
fn max_sessions_is_the_bound_set_and_survives_a_snapshot() {
    assert_eq!(KvStateMachine::new().max_sessions(), raftkv_kv::DEFAULT_MAX_SESSIONS);
    let mut sm = KvStateMachine::new().with_max_sessions(7);
    assert_eq!(sm.max_sessions(), 7);
    assert_eq!(KvStateMachine::restore(&sm.snapshot()).unwrap().max_sessions(), 7);
}

#[test]
#[cfg_attr(debug_assertions, should_panic(expected = "not after the applied index"))]
fn index_not_after_applied_is_refused() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "v"));
    let before = sm.clone();
    let a = sm.apply(1, 1, &entry(1, 2, put("k", "other")));
    let err = CommandError::IndexNotAfterApplied { index: 1, applied: 1 };
    assert_eq!(a.result, Err(err.clone()));
    assert_eq!(sm.apply_noop(1, 1), Err(err));
    assert_eq!(sm, before);
}

#[test]
fn noop_advances_the_applied_index() {
    let mut sm = KvStateMachine::new();
    sm.apply_noop(1, 1).unwrap();
    sm.apply_noop(4, 2).unwrap();
    assert_eq!((sm.applied_index(), sm.applied_term()), (4, 2));
    assert!(sm.is_empty());
}

fn workload() -> Vec<(u64, u64, Bytes)> {
    let mut entries = Vec::new();
    for i in 0..40u64 {
        let client = i % 4 + 1;
        let key = format!("key-{}", i % 7);
        let op = match i % 3 {
            0 => put(&key, &format!("value-{i}")),
            1 => cas(&key, None, "fresh"),
            _ => delete(&key),
        };
        entries.push((i * 2 + 1, 1 + i / 10, entry(client, i / 4 + 1, op)));
    }
    entries.push((100, 5, entries[39].2.clone())); // a retry
    entries.push((101, 5, Bytes::from_static(b"\xff\xff")));
    entries
}

#[test]
fn snapshot_restore_then_continue_equals_direct_application() {
    let entries = workload();
    let mut direct = KvStateMachine::new().with_max_sessions(3);
    for (index, term, data) in &entries {
        direct.apply(*index, *term, data);
    }
    for split in [0, 1, 17, entries.len()] {
        let mut first = KvStateMachine::new().with_max_sessions(3);
        for (index, term, data) in &entries[..split] {
            first.apply(*index, *term, data);
        }
        let mut restored = KvStateMachine::restore(&first.snapshot()).unwrap();
        assert_eq!(restored, first);
        for (index, term, data) in &entries[split..] {
            let want = first.apply(*index, *term, data);
            assert_eq!(restored.apply(*index, *term, data), want);
        }
        assert_eq!(restored.digest(), direct.digest());
        assert_eq!(restored.snapshot(), direct.snapshot());
        assert_eq!(restored, direct);
    }
}

#[test]
fn digest_reflects_data_and_sessions() {
    let mut a = KvStateMachine::new();
    let mut b2 = KvStateMachine::new();
    assert_eq!(a.digest(), b2.digest());
    run(&mut a, 1, 1, put("k", "v"));
    run(&mut b2, 1, 1, put("k", "w"));
    assert_ne!(a.digest(), b2.digest());
    let mut c = KvStateMachine::new();
    run(&mut c, 2, 1, put("k", "v")); // same data, different session
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn bad_snapshots_are_errors() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "v"));
    run(&mut sm, 2, 1, cas("k", Some("x"), "y"));
    let good = sm.snapshot();
    let is_snapshot_err = |data: &[u8]| matches!(KvStateMachine::restore(data), Err(KvError::Snapshot { .. }));
    assert!(is_snapshot_err(&[]));
    for len in 1..good.len() {
        assert!(is_snapshot_err(&good[..len]), "truncated to {len}");
    }
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(is_snapshot_err(&trailing));
    let mut version = good.to_vec();
    version[0] = 99;
    assert!(is_snapshot_err(&version));
    assert!(is_snapshot_err(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    assert!(KvStateMachine::restore(&good).is_ok());
}

#[test]
fn inconsistent_snapshot_is_an_error() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "v"));
    let good = sm.snapshot().to_vec();
    // Layout: version, applied_index=1, applied_term=1, max_sessions (varint) ...
    // Setting applied_index to 0 puts the session after the applied index.
    let mut bad = good.clone();
    assert_eq!(bad[1], 1);
    bad[1] = 0;
    let err = KvStateMachine::restore(&bad).unwrap_err();
    assert!(err.to_string().contains("applied index"), "{err}");
}

/// A restored machine is one `apply` could have made: the session bound is at least 1
/// and holds every session.
#[test]
fn a_snapshot_whose_session_bound_is_zero_or_below_its_sessions_is_refused() {
    let empty = KvStateMachine::new().with_max_sessions(3).snapshot().to_vec();
    let mut sm = KvStateMachine::new().with_max_sessions(3);
    run(&mut sm, 1, 1, put("k", "v"));
    run(&mut sm, 2, 1, put("k", "w"));
    let two_sessions = sm.snapshot().to_vec();
    // Layout: version, applied_index, applied_term, max_sessions (one-byte varints here).
    let with_bound = |snapshot: &[u8], bound: u8| {
        let mut bytes = snapshot.to_vec();
        assert_eq!(bytes[3], 3, "the bound's byte");
        bytes[3] = bound;
        KvStateMachine::restore(&bytes[..])
    };
    for (snapshot, bound, sessions) in [(&empty, 0, 0), (&two_sessions, 0, 2), (&two_sessions, 1, 2)] {
        let err = with_bound(snapshot, bound).unwrap_err();
        let want = format!("{sessions} sessions with a bound of {bound}");
        assert!(err.to_string().contains(&want), "{err}");
    }
    assert_eq!(with_bound(&two_sessions, 2).unwrap().session_count(), 2);
}

/// A byte array (`[u8; N]`, e.g. a constant) restores like a slice.
#[test]
fn a_snapshot_restores_from_a_byte_array() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("a", "one"));
    let array: [u8; 20] = sm.snapshot()[..].try_into().expect("20 bytes");
    assert_eq!(KvStateMachine::restore(&array).unwrap(), sm);
}

/// Tampering (a test-only feature, which this crate's own tests turn on) changes the
/// data behind the log's back: the value and the digest change, the applied index
/// does not.
#[test]
fn tampering_changes_the_value_and_the_digest_but_not_the_applied_index() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("k", "v"));
    let (digest, index) = (sm.digest(), sm.applied_index());
    sm.tamper_for_tests(b"k", b"tampered");
    sm.tamper_for_tests(b"extra", b"never written");
    assert_eq!((sm.get(b"k"), sm.get(b"extra")), (Some(b("tampered")), Some(b("never written"))));
    assert_eq!((sm.applied_index(), sm.len()), (index, 2));
    assert_ne!(sm.digest(), digest);
}

/// Snapshot bytes written by the build before pairs were stored compactly (the format
/// did not change): they must restore, and the same state must encode to them again.
#[test]
fn snapshot_format_is_stable() {
    const GOLDEN: &[u8] = &[
        1, 4, 1, 160, 141, 6, 2, 1, 97, 3, 111, 110, 101, 1, 98, 3, 116, 119, 111, 2, 7, 2, 2, 1, 0, 0, 9, 2, 4, 1, 1,
        0,
    ];
    let mut sm = KvStateMachine::new();
    run(&mut sm, 7, 1, put("b", "two"));
    run(&mut sm, 7, 2, put("a", "one"));
    run(&mut sm, 9, 1, cas("b", Some("x"), "y"));
    run(&mut sm, 9, 2, delete("c"));
    assert_eq!(&sm.snapshot()[..], GOLDEN);
    assert_eq!(sm.digest(), 0x7d0f_645b_286f_0025);
    let restored = KvStateMachine::restore(GOLDEN).unwrap();
    assert_eq!(restored, sm);
    assert_eq!((restored.get(b"a"), restored.get(b"b")), (Some(b("one")), Some(b("two"))));
}

/// After a snapshot (or a restore from `Bytes`), values are slices of the snapshot's
/// buffer: the state keeps no second copy of what the runtime already holds.
#[test]
fn pairs_share_the_snapshot_buffer() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("a", "one"));
    run(&mut sm, 1, 2, put("b", "two"));
    let in_buffer = |buf: &Bytes, v: Bytes| buf.as_ptr_range().contains(&v.as_ptr());

    let prefix = b"runtime header".to_vec();
    let wrapped = sm.snapshot_after(prefix.clone());
    assert!(wrapped.starts_with(&prefix));
    assert!(in_buffer(&wrapped, sm.get(b"a").unwrap()), "snapshot_after moves the pairs into its buffer");
    let snapshot = wrapped.slice(prefix.len()..);
    assert_eq!(snapshot, sm.clone().snapshot(), "the same bytes after the prefix");

    let restored = KvStateMachine::restore(&snapshot).unwrap();
    assert_eq!(restored, sm);
    assert!(in_buffer(&snapshot, restored.get(b"b").unwrap()), "restore from Bytes does not copy");
    let copied = KvStateMachine::restore(&snapshot[..]).unwrap();
    assert!(!in_buffer(&snapshot, copied.get(b"b").unwrap()), "restore from a slice copies once");
    assert_eq!(copied, sm);
}

/// A streamed snapshot is byte for byte the one `snapshot` builds, and adopting it as
/// stored elsewhere (a file, read back) re-points the pairs there, keeping the state.
#[test]
fn streamed_snapshot_is_the_snapshot_and_can_be_adopted_where_it_was_stored() {
    let mut sm = KvStateMachine::new();
    for i in 0..100 {
        run(&mut sm, 1 + i % 3, 1 + i / 3, put(&format!("key-{:03}", (i * 37) % 100), &"v".repeat(i as usize)));
    }
    run(&mut sm, 2, 1000, delete("key-050"));
    let mut written = Vec::new();
    let layout = sm.write_snapshot(&mut written).unwrap();
    assert_eq!(written.len(), sm.snapshot_len());
    assert_eq!(Bytes::from(written.clone()), sm.clone().snapshot(), "the same bytes as snapshot()");

    let before = sm.clone();
    let stored = Bytes::from(written);
    sm.adopt_snapshot(&stored, layout).unwrap();
    assert_eq!(sm, before);
    for i in (0..100).filter(|&i| i != 50) {
        let value = sm.get(format!("key-{i:03}").as_bytes()).unwrap();
        assert!(
            stored.as_ptr_range().contains(&value.as_ptr()) || value.is_empty(),
            "key-{i:03} is in the stored bytes"
        );
    }
    assert_eq!(KvStateMachine::restore(&stored).unwrap(), sm);
}

/// A layout of another state, or bytes of another length, is refused and changes nothing.
#[test]
fn adopting_a_snapshot_of_another_state_is_refused() {
    let mut sm = KvStateMachine::new();
    run(&mut sm, 1, 1, put("a", "one"));
    let mut written = Vec::new();
    let layout = sm.write_snapshot(&mut written).unwrap();
    let short = Bytes::from(written[..written.len() - 1].to_vec());
    let err = sm.adopt_snapshot(&short, layout).unwrap_err();
    assert!(err.to_string().contains("cannot adopt"), "{err}");

    let layout = sm.write_snapshot(&mut Vec::new()).unwrap();
    run(&mut sm, 1, 2, put("b", "two"));
    let err = sm.adopt_snapshot(&Bytes::from(written), layout).unwrap_err();
    assert!(err.to_string().contains("at index 1") && err.to_string().contains("at index 2"), "{err}");
    assert_eq!((sm.get(b"a"), sm.get(b"b")), (Some(b("one")), Some(b("two"))));
}
