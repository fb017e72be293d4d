//! The key/value pairs of the state machine, kept in their snapshot encoding.
//!
//! A [`Pair`] is the postcard encoding of one `(key, value)` pair — exactly the bytes
//! that pair takes in a snapshot — held as [`Bytes`]. The pairs as of the latest
//! snapshot (the buffer [`KvStateMachine::snapshot`](crate::KvStateMachine::snapshot)
//! returned, [`restore`](crate::KvStateMachine::restore) was given, or the stored copy
//! [`adopt_snapshot`](crate::KvStateMachine::adopt_snapshot) was given, e.g. the
//! runtime's snapshot file, mapped) are slices of it, in a vector sorted by key (the
//! *base*); the changes since (puts with a buffer
//! of their own, and deletes of base keys) are in a small `BTreeSet` ordered by key
//! (the *overlay*), which wins over the base. Each snapshot writes the merged pairs
//! and makes them the new base.
//!
//! Why: the Raft runtime keeps the latest snapshot in memory anyway (to send to
//! lagging followers). A `BTreeMap<Bytes, Bytes>` beside it held every key and value a
//! second time, in two allocations per pair plus 64 bytes of tree node; here the base
//! holds a 32-byte slice per pair and no tree node, and the bytes are those of the
//! snapshot (plus half a byte: the 8-byte key prefix of every 16th pair, a small index
//! that keeps lookups from reading keys all over the snapshot). With 16-byte keys and
//! 100-byte values: about 150 bytes per pair for state and snapshot together, instead
//! of about 390. Rebasing after a snapshot reuses the base vector in place, so building
//! a snapshot needs no second vector or tree of all pairs.
//!
//! The encoding (serde, and [`Data::write_to`]) is that of a `BTreeMap<Bytes,
//! Bytes>`: a map of byte strings in key order, so snapshots and digests are those of
//! that representation.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, btree_set};
use std::fmt;
use std::io::{self, Write};
use std::iter::Peekable;
use std::ops::Bound;
use std::slice;

use bytes::Bytes;
use postcard::ser_flavors::Size;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::{KvError, validate_key, validate_value};

/// One pair: postcard of `(key, value)` (varint key length, key, varint value length,
/// value), well formed and canonical (checked where it is made).
#[derive(Clone)]
struct Pair(Bytes);

impl Pair {
    /// A pair with a buffer of its own. `key` must have passed [`validate_key`].
    fn new(key: &[u8], value: &[u8]) -> Pair {
        let parts = (ByteStr(key), ByteStr(value));
        let size = postcard::serialize_with_flavor(&parts, Size::default()).expect("sizing cannot fail");
        let out = postcard::to_extend(&parts, Vec::with_capacity(size)).expect("encoding bytes cannot fail");
        Pair(Bytes::from(out))
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        let ((key, value), _) =
            postcard::take_from_bytes::<(&[u8], &[u8])>(&self.0).expect("a pair is well formed where it is made");
        (key, value)
    }

    fn key(&self) -> &[u8] {
        let (key, _) = postcard::take_from_bytes::<&[u8]>(&self.0).expect("a pair is well formed where it is made");
        key
    }

    /// The key and value as slices of the pair's buffer (no copy).
    fn shared(&self) -> (Bytes, Bytes) {
        let (key, value) = self.parts();
        (self.0.slice_ref(key), self.0.slice_ref(value))
    }
}

/// A change since the base. Ordered, compared and borrowed (as `[u8]`) by its key
/// alone, so that a `BTreeSet<Change>` is a map looked up by key.
#[derive(Clone)]
enum Change {
    /// The key's value is the pair's, whether or not the key is in the base.
    Put(Pair),
    /// The key, which is in the base, has no value.
    Delete(Box<[u8]>),
}

impl Change {
    fn key(&self) -> &[u8] {
        match self {
            Change::Put(pair) => pair.key(),
            Change::Delete(key) => key,
        }
    }

    fn pair(&self) -> Option<&Pair> {
        match self {
            Change::Put(pair) => Some(pair),
            Change::Delete(_) => None,
        }
    }
}

impl Borrow<[u8]> for Change {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Change {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Change {}

impl PartialOrd for Change {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Change {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// The pairs, in key order: `base` with `overlay` applied over it.
#[derive(Clone, Default)]
pub(crate) struct Data {
    /// The pairs as of the latest snapshot or restore, slices of it; keys strictly
    /// ascend.
    base: Vec<Pair>,
    /// The changes since, which win over `base`. A `Delete` is only ever for a key in
    /// `base` (elsewhere there is nothing to hide).
    overlay: BTreeSet<Change>,
    /// The [`prefix`] of every [`INDEX_STRIDE`]-th base key: a lookup searches this
    /// small array (which stays in cache) first, then about a stride of adjacent base
    /// pairs, instead of reading keys all over the snapshot.
    index: Vec<u64>,
    /// Keys with a value, kept so that `len` and the encoding's count need no scan.
    len: usize,
}

/// Where the pairs lie in an encoding [`Data::write_to`] wrote: what
/// [`Data::rebase`] needs to slice them out of it without reading it.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Bytes of the pair count in front of the pairs.
    count_len: usize,
    /// Each pair's encoded length, in order.
    lens: Vec<u32>,
    /// The index of the new base (see `Data::index`), from the keys as they went out.
    index: Vec<u64>,
}

impl Layout {
    /// Bytes of the encoding it describes.
    pub fn len(&self) -> usize {
        self.count_len + self.lens.iter().map(|&n| n as usize).sum::<usize>()
    }
}

/// Base pairs per entry of `Data::index`.
const INDEX_STRIDE: usize = 16;

/// The first 8 bytes of `key`, zero-padded, as a number. Keys in order have prefixes in
/// (non-strict) order, so a smaller or greater prefix settles a comparison.
fn prefix(key: &[u8]) -> u64 {
    let mut bytes = [0; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

impl Data {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`, sharing the pair's buffer (which may be a whole snapshot:
    /// copy it before keeping it long).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.lookup(key).map(|p| p.shared().1)
    }

    /// Whether `key`'s value (or absence) is `expected`.
    pub fn value_is(&self, key: &[u8], expected: Option<&[u8]>) -> bool {
        self.lookup(key).map(|p| p.parts().1) == expected
    }

    /// Sets `key` (which passed [`validate_key`]) to `value`; true if it had a value.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> bool {
        let had = self.lookup(key).is_some();
        self.overlay.replace(Change::Put(Pair::new(key, value)));
        if !had {
            self.len += 1;
        }
        had
    }

    /// Removes `key`; true if it had a value.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let in_base = self.base_get(key).is_some();
        let had = match self.overlay.get(key) {
            Some(change) => change.pair().is_some(),
            None => in_base,
        };
        if !had {
            return false;
        }
        // A base key needs a tombstone to hide it; a key only in the overlay just goes.
        if in_base {
            self.overlay.replace(Change::Delete(key.into()));
        } else {
            self.overlay.remove(key);
        }
        self.len -= 1;
        true
    }

    /// The pairs from `start` on, in key order, as slices of their buffers.
    pub fn range_from<'a>(&'a self, start: Bound<&[u8]>) -> impl Iterator<Item = (Bytes, Bytes)> + 'a {
        let from = match start {
            Bound::Included(start) => self.base_partition(start, |key| key < start),
            Bound::Excluded(start) => self.base_partition(start, |key| key <= start),
            Bound::Unbounded => 0,
        };
        Merged::new(&self.base[from..], self.overlay.range::<[u8], _>((start, Bound::Unbounded))).map(Pair::shared)
    }

    /// All pairs, in key order.
    fn pairs(&self) -> Merged<'_> {
        Merged::new(&self.base, self.overlay.range::<[u8], _>(..))
    }

    fn lookup(&self, key: &[u8]) -> Option<&Pair> {
        match self.overlay.get(key) {
            Some(change) => change.pair(),
            None => self.base_get(key),
        }
    }

    fn base_get(&self, key: &[u8]) -> Option<&Pair> {
        let at = self.base_partition(key, |k| k < key);
        self.base.get(at).filter(|pair| pair.key() == key)
    }

    /// How many base pairs have a key `before` `key` (`before` is `< key` or `<= key`).
    fn base_partition(&self, key: &[u8], before: impl Fn(&[u8]) -> bool) -> usize {
        // Index entries with a smaller prefix are keys before `key`, those with a
        // greater one keys after it: only the pairs between need their keys read.
        let p = prefix(key);
        let below = self.index.partition_point(|&q| q < p);
        let not_above = below + self.index[below..].partition_point(|&q| q <= p);
        let lo = match below {
            0 => 0,
            n => (n - 1) * INDEX_STRIDE + 1,
        };
        let hi = (not_above * INDEX_STRIDE).min(self.base.len());
        lo + self.base[lo..hi].partition_point(|pair| before(pair.key()))
    }

    fn reindex(&mut self) {
        self.index = self.base.iter().step_by(INDEX_STRIDE).map(|pair| prefix(pair.key())).collect();
    }

    /// Bytes [`write_to`](Self::write_to) writes.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.len) + self.pairs().map(|p| p.0.len()).sum::<usize>()
    }

    /// Writes the encoding of the pairs (that of a map of byte strings) to `out`, and
    /// returns where each pair lies in it, taken from the pairs as they go out, so that
    /// [`rebase`](Self::rebase) never has to read the written bytes back.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<Layout> {
        let mut count = [0; 10];
        let count = postcard::to_slice(&(self.len as u64), &mut count).expect("a u64 varint fits 10 bytes");
        out.write_all(count)?;
        let mut layout = Layout { count_len: count.len(), lens: Vec::with_capacity(self.len), index: Vec::new() };
        for (i, pair) in self.pairs().enumerate() {
            out.write_all(&pair.0)?;
            let len = u32::try_from(pair.0.len()).expect("a pair within the key and value limits fits a u32");
            layout.lens.push(len);
            if i % INDEX_STRIDE == 0 {
                layout.index.push(prefix(pair.key()));
            }
        }
        // A wrong count would make a snapshot that does not restore.
        assert_eq!(layout.lens.len(), self.len, "len counts the pairs");
        Ok(layout)
    }

    /// Makes `buf`, the bytes [`write_to`](Self::write_to) wrote with `layout` (for
    /// instance the file they went to, mapped), the base: every pair becomes a slice of
    /// `buf`, the overlay is emptied, and the buffers the pairs had are released.
    ///
    /// Why from the layout: `buf` is not read, so a mapped file's pages are not touched
    /// (and do not count as this process's memory) until a lookup needs them. The base
    /// vector is reused in place, so there is never a second vector (or tree) of all
    /// pairs; the layout costs 4 bytes per pair while it lives.
    pub fn rebase(&mut self, buf: &Bytes, layout: Layout) -> Result<(), KvError> {
        let total = layout.len();
        if layout.lens.len() != self.len || total != buf.len() {
            return Err(bad(format!(
                "the layout ({} pairs in {total} bytes) is not that of this data ({} pairs) in {} bytes",
                layout.lens.len(),
                self.len,
                buf.len()
            )));
        }
        self.overlay.clear();
        self.base.clear();
        let capacity = self.base.capacity();
        if capacity < self.len || capacity > 2 * self.len {
            // Freed before the new one is allocated (a realloc could hold both).
            self.base = Vec::new();
            self.base.reserve_exact(self.len);
        }
        let mut at = layout.count_len;
        for len in layout.lens {
            let end = at + len as usize;
            self.base.push(Pair(buf.slice(at..end)));
            at = end;
        }
        self.index = layout.index;
        self.debug_check();
        Ok(())
    }

    /// Decodes the pairs at `buf[start..]` (the postcard encoding of a `Data` or a
    /// `BTreeMap<Bytes, Bytes>`) as slices of `buf`; returns them and where they end.
    /// Each pair must pass the key and value limits and be canonically encoded, and
    /// keys must strictly ascend (as in every such encoding): they are the base as is.
    pub fn decode(buf: &Bytes, start: usize) -> Result<(Data, usize), KvError> {
        let input = buf.get(start..).ok_or_else(|| bad("the pairs start past the end".into()))?;
        let (count, mut rest) = postcard::take_from_bytes::<u64>(input).map_err(|e| bad(format!("pair count: {e}")))?;
        let mut base: Vec<Pair> = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(MAX_PREALLOCATED));
        for i in 0..count {
            let ((key, value), next) =
                postcard::take_from_bytes::<(&[u8], &[u8])>(rest).map_err(|e| bad(format!("pair #{i}: {e}")))?;
            validate_key(key).and_then(|()| validate_value(value)).map_err(|e| bad(format!("pair #{i}: {e}")))?;
            let len = rest.len() - next.len();
            let canonical = postcard::serialize_with_flavor(&(ByteStr(key), ByteStr(value)), Size::default());
            if canonical.ok() != Some(len) {
                return Err(bad(format!("pair #{i} is not canonically encoded")));
            }
            if base.last().is_some_and(|last| last.key() >= key) {
                return Err(bad(format!(
                    "pair #{i}: key {:?} is not after the previous one; keys must strictly ascend",
                    Escaped(key)
                )));
            }
            let at = buf.len() - rest.len();
            base.push(Pair(buf.slice(at..at + len)));
            rest = next;
        }
        let mut data = Data { len: base.len(), base, overlay: BTreeSet::new(), index: Vec::new() };
        data.reindex();
        data.debug_check();
        Ok((data, buf.len() - rest.len()))
    }

    /// Debug builds: the invariants of the fields (too slow for release at 1M pairs).
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            assert!(self.base.is_sorted_by(|a, b| a.key() < b.key()), "base keys strictly ascend");
            let index: Vec<_> = self.base.iter().step_by(INDEX_STRIDE).map(|pair| prefix(pair.key())).collect();
            assert_eq!(self.index, index, "the index is that of the base");
            for change in &self.overlay {
                assert!(change.pair().is_some() || self.base_get(change.key()).is_some(), "a delete is of a base key");
            }
            assert_eq!(self.pairs().count(), self.len, "len counts the pairs");
        }
    }
}

/// The merge of base pairs and overlay changes, in key order; on equal keys the
/// change decides (a put is yielded, a delete hides the base pair).
struct Merged<'a> {
    base: Peekable<slice::Iter<'a, Pair>>,
    overlay: Peekable<btree_set::Range<'a, Change>>,
}

impl<'a> Merged<'a> {
    fn new(base: &'a [Pair], overlay: btree_set::Range<'a, Change>) -> Self {
        Merged { base: base.iter().peekable(), overlay: overlay.peekable() }
    }
}

impl<'a> Iterator for Merged<'a> {
    type Item = &'a Pair;

    fn next(&mut self) -> Option<&'a Pair> {
        loop {
            let order = match (self.base.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(pair), Some(change)) => pair.key().cmp(change.key()),
            };
            if order == Ordering::Less {
                return self.base.next();
            }
            if order == Ordering::Equal {
                self.base.next();
            }
            let change = self.overlay.next().expect("peeked");
            debug_assert!(order == Ordering::Equal || change.pair().is_some(), "a delete is of a base key");
            if let Some(pair) = change.pair() {
                return Some(pair);
            }
        }
    }
}

/// Bytes of the postcard encoding of `n` (a varint).
fn varint_len(n: usize) -> usize {
    postcard::serialize_with_flavor(&(n as u64), Size::default()).expect("sizing cannot fail")
}

/// Pairs preallocated at most before decoding (the count comes from the input).
const MAX_PREALLOCATED: usize = 1 << 16;

fn bad(reason: String) -> KvError {
    KvError::Snapshot { reason }
}

/// Equal when every key and value is (the encoding is canonical, so equal bytes mean
/// equal pairs), however the pairs are split between base and overlay.
impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.pairs().zip(other.pairs()).all(|(a, b)| a.0 == b.0)
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pairs().map(Pair::parts).map(|(k, v)| (Escaped(k), Escaped(v)))).finish()
    }
}

/// Shows bytes as `b"..."`, like `Bytes` does.
struct Escaped<'a>(&'a [u8]);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// A byte string serialized as one (not as a sequence of `u8`), like `Bytes`.
struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The length up front: postcard writes it first (`Merged` cannot tell it).
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in self.pairs().map(Pair::parts) {
            map.serialize_entry(&ByteStr(key), &ByteStr(value))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
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
        let map: BTreeMap<Bytes, Bytes> =
            model.iter().map(|(k, v)| (Bytes::from(k.clone()), v.clone().into())).collect();
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

    /// Encodes pairs as a map in the given order, duplicates included.
    struct SeqAsMap<'a>(Vec<(ByteStr<'a>, ByteStr<'a>)>);

    impl Serialize for SeqAsMap<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
}
