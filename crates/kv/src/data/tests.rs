//! Tests of the base-and-overlay pair store.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

use super::*;

fn data(pairs: &[(&str, &str)]) -> Data {
    let mut d = Data::default();
    for (k, v) in pairs {
        d.insert(k.as_bytes(), v.as_bytes());
    }
    d
}

fn encoded(d: &Data) -> Bytes {
    let mut out = Vec::new();
    d.write_to(&mut out).unwrap();
    assert_eq!(out.len(), d.encoded_len());
    out.into()
}

/// Writes `d` behind a header and rebases it on the pairs' part of the result, as
/// the runtime does with a snapshot file; returns the whole buffer.
fn write_and_rebase(d: &mut Data) -> Bytes {
    let mut buf = b"header".to_vec();
    let layout = d.write_to(&mut buf).unwrap();
    buf.extend_from_slice(b"trailer");
    let buf = Bytes::from(buf);
    d.rebase(&buf.slice(6..buf.len() - 7), layout).unwrap();
    buf
}

#[test]
fn insert_get_remove() {
    let mut d = data(&[("b", "2"), ("a", "1")]);
    assert_eq!(d.get(b"a"), Some(Bytes::from("1")));
    assert_eq!(d.get(b"c"), None);
    assert!(d.value_is(b"a", Some(b"1")) && d.value_is(b"c", None) && !d.value_is(b"a", None));
    assert!(d.insert(b"a", b"one"), "a existed");
    assert_eq!(d.get(b"a"), Some(Bytes::from("one")));
    assert!(d.insert(b"a", b""), "an empty value is a value");
    assert_eq!(d.get(b"a"), Some(Bytes::new()));
    assert!(d.remove(b"a"));
    assert!(!d.remove(b"a"));
    assert_eq!(d.len(), 1);
    let from: Vec<_> = d.range_from(Bound::Excluded(b"a")).collect();
    assert_eq!(from, vec![(Bytes::from("b"), Bytes::from("2"))]);
}

#[test]
fn equality_looks_at_values_too() {
    assert_eq!(data(&[("a", "1")]), data(&[("a", "1")]));
    assert_ne!(data(&[("a", "1")]), data(&[("a", "2")]));
    assert_ne!(data(&[("a", "1")]), data(&[("a", "1"), ("b", "")]));
}

#[test]
fn encoding_is_that_of_a_btreemap_of_bytes() {
    let pairs = [("k1", "v1"), ("k0", ""), ("long key", "a value")];
    let map: BTreeMap<Bytes, Bytes> = pairs.iter().map(|(k, v)| (Bytes::from(*k), Bytes::from(*v))).collect();
    let want = postcard::to_allocvec(&map).unwrap();
    assert_eq!(postcard::to_allocvec(&data(&pairs)).unwrap(), want);
    assert_eq!(encoded(&data(&pairs)), want);
    let buf = Bytes::from(want.clone());
    assert_eq!(Data::decode(&buf, 0).unwrap(), (data(&pairs), want.len()));
}

#[test]
fn rebase_shares_the_buffer_and_keeps_the_content() {
    let mut d = data(&[("b", "2"), ("a", "1"), ("c", "3")]);
    let before = d.clone();
    let buf = write_and_rebase(&mut d);
    assert_eq!(d, before);
    let value = d.get(b"b").unwrap();
    assert!(buf.as_ptr_range().contains(&value.as_ptr()), "the value is a slice of the snapshot");
    d.insert(b"b", b"two");
    assert_eq!(d.get(b"b"), Some(Bytes::from("two")));
    assert_eq!(d.len(), 3);
}

#[test]
fn decoding_refuses_bad_pairs() {
    let encode = |pairs: &[(&[u8], &[u8])]| {
        let pairs: Vec<_> = pairs.iter().map(|(k, v)| (ByteStr(k), ByteStr(v))).collect();
        Bytes::from(postcard::to_allocvec(&SeqAsMap(pairs)).unwrap())
    };
    let err = |bytes: Bytes| Data::decode(&bytes, 0).unwrap_err().to_string();
    assert!(Data::decode(&encode(&[(b"a", b"1"), (b"b", b"2")]), 0).is_ok());
    assert!(err(encode(&[(b"b", b"1"), (b"a", b"2")])).contains("pair #1: key b\"a\" is not after"));
    assert!(err(encode(&[(b"a", b"1"), (b"a", b"2")])).contains("strictly ascend"));
    assert!(err(encode(&[(b"", b"1")])).contains("pair #0: key is empty"));
    let long = vec![b'k'; 70_000];
    assert!(err(encode(&[(&long, b"1")])).contains("key is 70000 bytes"));
    let big = vec![0; crate::MAX_VALUE_LEN + 1];
    assert!(err(encode(&[(b"a", &big)])).contains("value is"));
    let truncated = encode(&[(b"a", b"1"), (b"b", b"2")]);
    assert!(err(truncated.slice(..truncated.len() - 1)).contains("pair #1"));
    // Key length 1 as the two-byte varint 0x81 0x00: decodes, but not canonical.
    let overlong = Bytes::from_static(&[1, 0x81, 0x00, b'a', 1, b'1']);
    assert!(err(overlong).contains("not canonically encoded"));
    assert!(Data::decode(&Bytes::from_static(&[0]), 2).is_err());
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Keys from a small space, so that puts and deletes keep hitting the same keys.
const KEYS: u64 = 120;

/// Short keys, and long ones sharing their first 8 bytes (the index's prefix).
fn key(i: u64) -> Vec<u8> {
    match i % 3 {
        0 => format!("k{i:03}").into_bytes(),
        1 => format!("k{:03}/long/{i:03}", i - 1).into_bytes(),
        _ => format!("shared-prefix/{i:03}").into_bytes(),
    }
}

/// Where `key` lives: in the base only, the overlay only, both, or as a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Absent,
    BaseOnly,
    OverlayOnly,
    Overwritten,
    Tombstone,
}

fn place(d: &Data, key: &[u8]) -> Place {
    match (d.base_get(key).is_some(), d.overlay.get(key)) {
        (_, Some(Change::Delete(_))) => Place::Tombstone,
        (true, Some(Change::Put(_))) => Place::Overwritten,
        (false, Some(Change::Put(_))) => Place::OverlayOnly,
        (true, None) => Place::BaseOnly,
        (false, None) => Place::Absent,
    }
}

fn model_range(model: &Model, start: Bound<&[u8]>, n: usize) -> Vec<(Bytes, Bytes)> {
    let pairs = model.range::<[u8], _>((start, Bound::Unbounded)).take(n);
    pairs.map(|(k, v)| (Bytes::from(k.clone()), Bytes::from(v.clone()))).collect()
}

/// Compares everything with the model; tallies where the range starts fell.
fn check_all(d: &Data, model: &Model, starts: &mut BTreeMap<Place, usize>) {
    assert_eq!(d.len(), model.len());
    for i in 0..KEYS {
        let k = key(i);
        assert_eq!(d.get(&k).as_deref(), model.get(&k).map(Vec::as_slice), "get {k:?}");
        assert!(d.value_is(&k, model.get(&k).map(Vec::as_slice)));
        *starts.entry(place(d, &k)).or_default() += 1;
        // On the key, and between keys: just before it, and just after it.
        for at in [k.clone(), k[..k.len() - 1].to_vec(), [&k[..], b"\0"].concat()] {
            for start in [Bound::Included(&at[..]), Bound::Excluded(&at[..])] {
                let got: Vec<_> = d.range_from(start).take(6).collect();
                assert_eq!(got, model_range(model, start, 6), "range from {start:?}");
            }
        }
    }
    let all: Vec<_> = d.range_from(Bound::Unbounded).collect();
    assert_eq!(all, model_range(model, Bound::Unbounded, usize::MAX));
    let map: BTreeMap<Bytes, Bytes> = model.iter().map(|(k, v)| (Bytes::from(k.clone()), v.clone().into())).collect();
    let want = postcard::to_allocvec(&map).unwrap();
    assert_eq!(encoded(d), want, "write_to");
    assert_eq!(postcard::to_allocvec(d).unwrap(), want, "serde");
    let want = Bytes::from(want);
    assert_eq!(&Data::decode(&want, 0).unwrap().0, d, "equality across base/overlay splits");
}

/// Random puts and deletes with rebases (and restores) in between, checked against
/// a `BTreeMap` after every step (one key, a range) and in full every few steps.
#[test]
fn matches_a_btreemap_model_through_rebases() {
    // A fixed seed: the same sequence on every run and platform.
    let mut rng = SmallRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    let (mut d, mut model) = (Data::default(), Model::new());
    let (mut removed, mut reinserted, mut starts) = (BTreeMap::new(), 0, BTreeMap::new());
    for step in 0..4000 {
        let k = key(rng.random_range(0..KEYS));
        let before = place(&d, &k);
        if rng.random_range(0..10) < 6 {
            let value = vec![b'a' + rng.random_range(0..26u8); rng.random_range(0..12)];
            reinserted += usize::from(before == Place::Tombstone);
            assert_eq!(d.insert(&k, &value), model.insert(k.clone(), value).is_some(), "insert {k:?}");
        } else {
            *removed.entry(before).or_insert(0) += 1;
            assert_eq!(d.remove(&k), model.remove(&k).is_some(), "remove {k:?}");
        }
        assert_eq!((d.len(), d.get(&k).as_deref()), (model.len(), model.get(&k).map(Vec::as_slice)));
        let start = key(rng.random_range(0..KEYS));
        assert_eq!(d.range_from(Bound::Excluded(&start)).take(3).collect::<Vec<_>>(), {
            model_range(&model, Bound::Excluded(&start), 3)
        });
        if step % 20 == 0 {
            check_all(&d, &model, &mut starts);
        }
        if rng.random_range(0..150) == 0 {
            if rng.random_bool(0.5) {
                let buf = write_and_rebase(&mut d);
                assert_rebased_onto(&d, &buf);
            } else {
                let mut buf = b"header".to_vec();
                d.write_to(&mut buf).unwrap();
                d = Data::decode(&Bytes::from(buf), 6).unwrap().0;
            }
            assert!(d.overlay.is_empty() && d.base.len() == model.len());
            check_all(&d, &model, &mut starts);
        }
    }
    // The cases that matter were all exercised.
    for place in [Place::BaseOnly, Place::OverlayOnly, Place::Overwritten, Place::Tombstone] {
        assert!(starts.get(&place).is_some_and(|&n| n > 0), "no range start on {place:?}");
    }
    for place in [Place::BaseOnly, Place::OverlayOnly, Place::Overwritten, Place::Tombstone, Place::Absent] {
        assert!(removed.get(&place).is_some_and(|&n| n > 0), "no delete of a {place:?} key");
    }
    assert!(reinserted > 0, "no re-insert after a delete");
}

/// Every base pair is a slice of `buf` and they tile its pairs' part in order, and
/// the index is the one `reindex` would compute from them: the layout put each pair
/// where the encoding has it.
fn assert_rebased_onto(d: &Data, buf: &Bytes) {
    let range = buf.as_ptr_range();
    let mut next = None;
    for pair in &d.base {
        let at = pair.0.as_ptr();
        assert!(range.contains(&at) && pair.0.as_ptr_range().end <= range.end, "a pair outside the buffer");
        assert!(next.is_none_or(|n| n == at), "pairs are adjacent, in order");
        next = Some(at.wrapping_add(pair.0.len()));
    }
    let mut reindexed = d.clone();
    reindexed.reindex();
    assert_eq!(reindexed.index, d.index, "the index taken while writing is that of the base");
}

#[test]
fn rebase_refuses_a_layout_of_other_data() {
    let mut d = data(&[("a", "1"), ("b", "2")]);
    let mut buf = Vec::new();
    let layout = d.write_to(&mut buf).unwrap();
    let before = d.clone();
    let err = d.rebase(&Bytes::from(buf[..buf.len() - 1].to_vec()), layout).unwrap_err();
    assert!(err.to_string().contains("is not that of this data"), "{err}");
    assert_eq!((d.overlay.len(), &d), (2, &before), "nothing changed");
    let layout = d.write_to(&mut Vec::new()).unwrap();
    d.insert(b"c", b"3");
    assert!(d.rebase(&Bytes::from(buf), layout).is_err(), "a layout from before a change");
    assert_eq!(d.get(b"c"), Some(Bytes::from("3")));
}

#[test]
fn rebase_shrinks_a_base_far_larger_than_needed() {
    let mut d = data(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
    let rebase = |d: &mut Data| {
        write_and_rebase(d);
    };
    rebase(&mut d);
    assert!(d.base.capacity() >= 5);
    for k in ["a", "b", "c", "d"] {
        d.remove(k.as_bytes());
    }
    rebase(&mut d);
    assert_eq!((d.base.len(), d.base.capacity()), (1, 1), "5 slots for 1 pair are given back");
    d.insert(b"f", b"6");
    rebase(&mut d);
    assert_eq!(d.base.len(), 2);
    assert!(d.base.capacity() >= 2);
}

/// Grows and shrinks the base through rebases: a base that must grow is allocated at
/// its exact size, one of up to twice the pairs is kept, a larger one is given back.
#[test]
fn rebase_allocates_a_growing_base_exactly_and_keeps_one_up_to_twice_the_pairs() {
    let mut d = data(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let rebase = |d: &mut Data| {
        write_and_rebase(d);
        (d.base.len(), d.base.capacity())
    };
    assert_eq!(rebase(&mut d), (3, 3), "grown to the exact size, not by doubling");
    d.remove(b"a");
    d.remove(b"b");
    assert_eq!(rebase(&mut d), (1, 1), "3 slots for 1 pair (over twice) are given back");
    for k in ["d", "e", "f"] {
        d.insert(k.as_bytes(), b"x");
    }
    assert_eq!(rebase(&mut d), (4, 4));
    d.remove(b"d");
    d.remove(b"e");
    assert_eq!(rebase(&mut d), (2, 4), "twice the pairs is kept");
}

/// The index sorts out which stride `key` is in: the pairs it sampled (here every
/// 16th key, `k000`, `k016`, `k032`) are never read again.
#[test]
fn a_lookup_reads_only_keys_the_index_cannot_settle() {
    let pairs: Vec<_> = (0..40).map(|i| (format!("k{i:03}"), String::new())).collect();
    let pairs: Vec<_> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut d = data(&pairs);
    write_and_rebase(&mut d);
    let read = std::cell::RefCell::new(Vec::new());
    let at = d.base_partition(b"k017", |k| {
        read.borrow_mut().push(k.to_vec());
        k < &b"k017"[..]
    });
    assert_eq!(at, 17);
    let read = read.into_inner();
    assert!(!read.is_empty() && read.iter().all(|k| k[..] > b"k016"[..] && k[..] < b"k032"[..]), "{read:?}");
}

#[test]
fn the_prefix_is_the_first_eight_bytes_zero_padded() {
    assert_eq!(prefix(b"ab"), 0x6162_0000_0000_0000);
    assert_eq!(prefix(b"abcdefghij"), u64::from_be_bytes(*b"abcdefgh"));
    assert!(prefix(b"a") < prefix(b"a\0\x01") && prefix(b"b") > prefix(b"azzzzzzzzz"));
}

/// A `BTreeSet<Change>` is a map by key only if a put and a delete of one key are the
/// same element, and order follows the keys.
#[test]
fn changes_compare_by_key_alone() {
    let put = Change::Put(Pair::new(b"k", b"1"));
    let delete = Change::Delete(b"k"[..].into());
    let later = Change::Put(Pair::new(b"l", b"1"));
    assert!(put == delete);
    assert!(put != later);
    assert_eq!(put.partial_cmp(&later), Some(Ordering::Less));
    assert_eq!(later.partial_cmp(&delete), Some(Ordering::Greater));
    assert_eq!(put.partial_cmp(&delete), Some(Ordering::Equal));
}

/// The pair count is a varint: from 128 pairs on it takes two bytes.
#[test]
fn encoded_len_counts_a_two_byte_pair_count() {
    let keys: Vec<_> = (0..200).map(|i| format!("k{i:03}")).collect();
    let pairs: Vec<_> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    let d = data(&pairs);
    // 200 = 0b1_1001000: the low seven bits with the continuation bit, then 1.
    assert_eq!(encoded(&d)[..2], [0xc8, 0x01]);
    assert_eq!(d.encoded_len(), 2 + 200 * 7);
}

/// Decoding sizes the base from the count (up to a bound): no doubling as it fills.
#[test]
fn decoding_allocates_the_base_at_its_size() {
    let d = data(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
    let (decoded, _) = Data::decode(&encoded(&d), 0).unwrap();
    assert_eq!((decoded.base.len(), decoded.base.capacity()), (5, 5));
}

#[test]
fn debug_output_shows_the_pairs_in_key_order_escaped() {
    let mut d = data(&[("b", "2"), ("a", "\x01")]);
    write_and_rebase(&mut d);
    d.insert(b"a\xff", b"\"");
    d.remove(b"b");
    assert_eq!(format!("{d:?}"), r#"{b"a": b"\x01", b"a\xff": b"\""}"#);
    assert_eq!(format!("{:?}", Data::default()), "{}");
}

/// Each invariant `debug_check` guards, broken on purpose, makes it panic.
#[cfg(debug_assertions)]
#[test]
fn the_debug_check_catches_each_broken_invariant() {
    let ab = data(&[("a", "1"), ("b", "2")]);
    let mut based = ab.clone();
    write_and_rebase(&mut based);
    let mut unsorted = based.clone();
    unsorted.base.swap(0, 1);
    let mut unindexed = based.clone();
    unindexed.index.clear();
    let mut stray_delete = based.clone();
    stray_delete.overlay.insert(Change::Delete(b"z"[..].into()));
    let mut miscounted = ab;
    miscounted.len = 3;
    let broken = [
        (unsorted, "base keys strictly ascend"),
        (unindexed, "the index is that of the base"),
        (stray_delete, "a delete is of a base key"),
        (miscounted, "len counts the pairs"),
    ];
    for (d, want) in broken {
        let panic = std::panic::catch_unwind(|| d.debug_check()).expect_err(want);
        let message =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        assert!(message.as_deref().is_some_and(|m| m.contains(want)), "{message:?}, wanted {want}");
    }
    based.debug_check();
}

/// Encodes pairs as a map in the given order, duplicates included.
struct SeqAsMap<'a>(Vec<(ByteStr<'a>, ByteStr<'a>)>);

impl Serialize for SeqAsMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}
