//! The key/value pairs of the state machine, kept in their snapshot encoding.
//!
//! A [`Pair`] is the postcard encoding of one `(key, value)` pair — exactly the bytes
//! that pair takes in a snapshot — held as [`Bytes`], and the pairs live in a
//! `BTreeSet` ordered by key. Most pairs are slices of the latest snapshot (the
//! buffer [`KvStateMachine::snapshot`](crate::KvStateMachine::snapshot) returned or
//! [`restore`](crate::KvStateMachine::restore) was given); only pairs written since
//! have a buffer of their own.
//!
//! Why: the Raft runtime keeps the latest snapshot in memory anyway (to send to
//! lagging followers). A `BTreeMap<Bytes, Bytes>` beside it held every key and value a
//! second time, in two allocations per pair plus 64 bytes of tree node; here the tree
//! holds a 32-byte slice per pair and the bytes are those of the snapshot. With 16-byte
//! keys and 100-byte values: about 150 bytes per pair for state and snapshot together,
//! instead of about 390.
//!
//! The encoding (serde, and [`Data::encode_into`]) is that of a `BTreeMap<Bytes,
//! Bytes>`: a map of byte strings in key order, so snapshots and digests are those of
//! that representation.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;

use bytes::Bytes;
use postcard::ser_flavors::Size;
use serde::{Serialize, Serializer};

use crate::{KvError, validate_key, validate_value};

/// One pair: postcard of `(key, value)` (varint key length, key, varint value length,
/// value), well formed and canonical (checked where it is made).
///
/// Ordered, compared and borrowed (as `[u8]`) by its key alone, so that a
/// `BTreeSet<Pair>` is a map looked up by key.
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

impl Borrow<[u8]> for Pair {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Pair {}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// The pairs, in key order.
#[derive(Clone, Default)]
pub(crate) struct Data {
    pairs: BTreeSet<Pair>,
}

impl Data {
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of `key`, sharing the pair's buffer (which may be a whole snapshot:
    /// copy it before keeping it long).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.pairs.get(key).map(|p| p.shared().1)
    }

    /// Whether `key`'s value (or absence) is `expected`.
    pub fn value_is(&self, key: &[u8], expected: Option<&[u8]>) -> bool {
        self.pairs.get(key).map(|p| p.parts().1) == expected
    }

    /// Sets `key` (which passed [`validate_key`]) to `value`; true if it had a value.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> bool {
        self.pairs.replace(Pair::new(key, value)).is_some()
    }

    /// Removes `key`; true if it had a value.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.pairs.remove(key)
    }

    /// The pairs from `start` on, in key order, as slices of their buffers.
    pub fn range_from<'a>(&'a self, start: Bound<&[u8]>) -> impl Iterator<Item = (Bytes, Bytes)> + 'a {
        self.pairs.range::<[u8], _>((start, Bound::Unbounded)).map(Pair::shared)
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(Pair::parts)
    }

    /// Bytes [`encode_into`](Self::encode_into) appends.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.len()) + self.pairs.iter().map(|p| p.0.len()).sum::<usize>()
    }

    /// Appends the encoding of the pairs (that of a map of byte strings) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut buf = std::mem::take(out);
        buf = postcard::to_extend(&(self.len() as u64), buf).expect("encoding a count cannot fail");
        for pair in &self.pairs {
            buf.extend_from_slice(&pair.0);
        }
        *out = buf;
    }

    /// Makes every pair a slice of `buf`, whose bytes from `start` on are this data's
    /// [`encode_into`](Self::encode_into) output: the buffers the pairs had are
    /// released, and the tree is rebuilt with full nodes.
    pub fn rebase(&mut self, buf: &Bytes, start: usize) {
        // The pairs follow the count in tree order, each as the bytes it holds now.
        let mut at = start + varint_len(self.len());
        let mut pairs = Vec::with_capacity(self.len());
        for pair in &self.pairs {
            let range = at..at + pair.0.len();
            debug_assert_eq!(buf[range.clone()], pair.0[..], "encode_into wrote the pairs in order");
            pairs.push(Pair(buf.slice(range.clone())));
            at = range.end;
        }
        // Release the old tree before building the new one.
        self.pairs = BTreeSet::new();
        self.pairs = pairs.into_iter().collect();
    }

    /// Decodes the pairs at `buf[start..]` (the postcard encoding of a `Data` or a
    /// `BTreeMap<Bytes, Bytes>`) as slices of `buf`; returns them and where they end.
    /// Each pair must pass the key and value limits and be canonically encoded, and
    /// keys must strictly ascend (as in every such encoding), so the tree is built
    /// bottom-up with full nodes.
    pub fn decode(buf: &Bytes, start: usize) -> Result<(Data, usize), KvError> {
        let input = buf.get(start..).ok_or_else(|| bad("the pairs start past the end".into()))?;
        let (count, mut rest) = postcard::take_from_bytes::<u64>(input).map_err(|e| bad(format!("pair count: {e}")))?;
        let mut pairs: Vec<Pair> = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(MAX_PREALLOCATED));
        for i in 0..count {
            let ((key, value), next) =
                postcard::take_from_bytes::<(&[u8], &[u8])>(rest).map_err(|e| bad(format!("pair #{i}: {e}")))?;
            validate_key(key).and_then(|()| validate_value(value)).map_err(|e| bad(format!("pair #{i}: {e}")))?;
            let len = rest.len() - next.len();
            let canonical = postcard::serialize_with_flavor(&(ByteStr(key), ByteStr(value)), Size::default());
            if canonical.ok() != Some(len) {
                return Err(bad(format!("pair #{i} is not canonically encoded")));
            }
            if pairs.last().is_some_and(|last| last.key() >= key) {
                return Err(bad(format!(
                    "pair #{i}: key {:?} is not after the previous one; keys must strictly ascend",
                    Escaped(key)
                )));
            }
            let at = buf.len() - rest.len();
            pairs.push(Pair(buf.slice(at..at + len)));
            rest = next;
        }
        // Already sorted: collecting builds the tree bottom-up, nodes full.
        Ok((Data { pairs: pairs.into_iter().collect() }, buf.len() - rest.len()))
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

/// Equal when every key and value is (`Pair`'s own equality looks at keys only; the
/// encoding is canonical, so equal bytes mean equal pairs).
impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.pairs.iter().zip(&other.pairs).all(|(a, b)| a.0 == b.0)
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(k, v)| (Escaped(k), Escaped(v)))).finish()
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
        serializer.collect_map(self.iter().map(|(k, v)| (ByteStr(k), ByteStr(v))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        d.encode_into(&mut out);
        assert_eq!(out.len(), d.encoded_len());
        out.into()
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
        let mut buf = b"header".to_vec();
        let start = buf.len();
        d.encode_into(&mut buf);
        buf.extend_from_slice(b"trailer");
        let buf = Bytes::from(buf);
        d.rebase(&buf, start);
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

    /// Encodes pairs as a map in the given order, duplicates included.
    struct SeqAsMap<'a>(Vec<(ByteStr<'a>, ByteStr<'a>)>);

    impl Serialize for SeqAsMap<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
}
