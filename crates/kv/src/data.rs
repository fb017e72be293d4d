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
mod tests;
