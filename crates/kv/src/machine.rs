//! The state machine: data, client sessions, snapshots and digests.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::ops::{Bound, Range};

use bytes::Bytes;
use postcard::ser_flavors::Size;
use serde::{Deserialize, Serialize};

use crate::data::{Data, Layout};
use crate::digest::Fnv1a;
use crate::{Command, CommandError, KvError, MAX_SCAN_BYTES, WriteOp, WriteResult, validate_scan};

/// Default bound on the session table (see [`KvStateMachine::with_max_sessions`]).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// First byte of every snapshot; bump it when the encoding changes.
const SNAPSHOT_VERSION: u8 = 1;

/// What applying one committed entry produced, for the runtime to hand back to
/// the waiting client (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Log position of the command. For a duplicate, this is the position where
    /// the command was first applied, not the retry's.
    pub index: u64,
    pub term: u64,
    /// The command's client and sequence number; both 0 when the entry did not
    /// decode (or its index was not after the applied index).
    pub client_id: u64,
    pub seq: u64,
    pub result: Result<WriteResult, CommandError>,
    /// True when this entry was a retry of the client's last applied command:
    /// `result`, `index` and `term` are the original ones and nothing changed.
    pub duplicate: bool,
}

/// One page of a scan, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    pub items: Vec<(Bytes, Bytes)>,
    /// More keys with the prefix follow the last item.
    pub more: bool,
}

/// A client's last applied command and its result (Raft thesis §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    seq: u64,
    index: u64,
    term: u64,
    result: WriteResult,
}

/// Snapshot/digest encoding, borrowing the live state. Field order is the format.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    applied_index: u64,
    applied_term: u64,
    max_sessions: u64,
    data: &'a Data,
    sessions: &'a BTreeMap<u64, Session>,
}

/// Where the pairs lie in a snapshot [`KvStateMachine::write_snapshot`] wrote, and of
/// which state: what [`KvStateMachine::adopt_snapshot`] needs to re-point the pairs
/// into the stored bytes without reading them. About 4 bytes per pair.
#[derive(Debug)]
pub struct SnapshotLayout {
    applied_index: u64,
    /// Bytes written.
    len: usize,
    /// Where the pairs' encoding lies in them.
    pairs_at: Range<usize>,
    pairs: Layout,
}

/// A decoded snapshot, before its consistency checks.
struct SnapshotOwned {
    applied_index: u64,
    applied_term: u64,
    max_sessions: u64,
    data: Data,
    sessions: BTreeMap<u64, Session>,
}

/// Bytes [`KvStateMachine::restore`] reads: a [`Bytes`] is shared, others are copied.
pub trait SnapshotBytes {
    fn to_shared(&self) -> Bytes;
}

impl SnapshotBytes for Bytes {
    fn to_shared(&self) -> Bytes {
        self.clone()
    }
}

impl SnapshotBytes for [u8] {
    fn to_shared(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl SnapshotBytes for Vec<u8> {
    fn to_shared(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl<const N: usize> SnapshotBytes for [u8; N] {
    fn to_shared(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

/// The replicated key/value state machine.
///
/// # Exactly-once writes
///
/// Following the Raft thesis §6.3, each client has at most one outstanding
/// request and numbers its requests with increasing `seq`. The machine keeps,
/// per `client_id`, the last applied `seq` with its result, index and term:
///
/// - `seq == last`: a retry. The cached [`Applied`] (original index/term) is
///   returned with `duplicate: true`; nothing is applied again.
/// - `seq < last`: [`CommandError::StaleSequence`]; nothing changes.
/// - `seq > last` (or no session): the command is applied and recorded.
///
/// Rejected commands (undecodable, over a limit, stale) are not recorded.
///
/// The table holds at most `max_sessions` clients. When a new client would
/// exceed it, the client whose last command has the lowest log index is
/// evicted — deterministic, as it depends only on the log. A retry from an
/// evicted client is indistinguishable from a new request and is applied
/// again, so the bound must comfortably exceed the number of active clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    applied_index: u64,
    applied_term: u64,
    max_sessions: usize,
    data: Data,
    sessions: BTreeMap<u64, Session>,
    /// Session index → client id, oldest first, for eviction. Derived from
    /// `sessions` (indexes are unique), so it is never serialized.
    lru: BTreeMap<u64, u64>,
}

impl Default for KvStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl KvStateMachine {
    /// An empty machine at index 0 with [`DEFAULT_MAX_SESSIONS`].
    pub fn new() -> Self {
        KvStateMachine {
            applied_index: 0,
            applied_term: 0,
            max_sessions: DEFAULT_MAX_SESSIONS,
            data: Data::default(),
            sessions: BTreeMap::new(),
            lru: BTreeMap::new(),
        }
    }

    /// Sets the session bound (at least 1). Every replica must use the same
    /// value; it is carried in snapshots, so a restored machine keeps it.
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self.evict_excess_sessions();
        self
    }

    /// Applies the committed entry at `index`. Indexes must increase; gaps are
    /// allowed (entries without a command are not passed here). An index at or
    /// below the applied index is a runtime bug: it asserts in debug builds and
    /// yields [`CommandError::IndexNotAfterApplied`] without any change otherwise.
    pub fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Applied {
        debug_assert!(
            index > self.applied_index,
            "entry index {index} is not after the applied index {}",
            self.applied_index
        );
        if let Err(e) = self.advance(index, term) {
            return reply(index, term, 0, 0, Err(e));
        }
        let cmd = match Command::decode(data) {
            Ok(cmd) => cmd,
            Err(e) => return reply(index, term, 0, 0, Err(CommandError::Rejected(e))),
        };
        if let Some(done) = self.check_session(&cmd, index, term) {
            return done;
        }
        let (client_id, seq) = (cmd.client_id, cmd.seq);
        if let Err(e) = cmd.validate() {
            return reply(index, term, client_id, seq, Err(CommandError::Rejected(e)));
        }
        let result = self.execute(cmd.op);
        let session = Session { seq, index, term, result: result.clone() };
        self.record_session(client_id, session);
        reply(index, term, client_id, seq, Ok(result))
    }

    /// Advances the applied index over an entry that carries no command
    /// (e.g. a leader's no-op). Same index rule as [`apply`](Self::apply).
    pub fn apply_noop(&mut self, index: u64, term: u64) -> Result<(), CommandError> {
        debug_assert!(
            index > self.applied_index,
            "entry index {index} is not after the applied index {}",
            self.applied_index
        );
        self.advance(index, term)
    }

    /// The value of `key`, if any. It may share the buffer of the latest snapshot
    /// (see [`snapshot`](Self::snapshot)): copy it before keeping it for long.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.data.get(key)
    }

    /// Up to `limit` (1..=[`MAX_SCAN_LIMIT`](crate::MAX_SCAN_LIMIT)) pairs whose key starts with
    /// `prefix`, in key order; fewer once their keys and values reach
    /// [`MAX_SCAN_BYTES`](crate::MAX_SCAN_BYTES) (then `more` is set).
    pub fn scan(&self, prefix: &[u8], limit: usize) -> Result<ScanPage, KvError> {
        self.scan_after(prefix, None, limit)
    }

    /// Like [`scan`](Self::scan) but starting after key `after` (the last key
    /// of the previous page), to continue when `more` was set.
    pub fn scan_after(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<ScanPage, KvError> {
        self.scan_range(prefix, after.map_or(Bound::Unbounded, Bound::Excluded), limit)
    }

    /// Like [`scan`](Self::scan) but from `start` on: `Included(key)` starts at `key`
    /// (or the first key after it), `Excluded(key)` after it (the last key of the
    /// previous page), `Unbounded` at the prefix. A start before the prefix starts at
    /// the prefix; one after every key with the prefix gives an empty page. A start key
    /// longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) is an error.
    pub fn scan_range(&self, prefix: &[u8], start: Bound<&[u8]>, limit: usize) -> Result<ScanPage, KvError> {
        validate_scan(prefix, limit)?;
        let start = match start {
            Bound::Included(key) | Bound::Excluded(key) if key.len() > crate::MAX_KEY_LEN => {
                return Err(KvError::KeyTooLong { len: key.len() });
            }
            Bound::Included(key) | Bound::Excluded(key) if key < prefix => Bound::Included(prefix),
            Bound::Unbounded => Bound::Included(prefix),
            bound => bound,
        };
        let mut matching = self.data.range_from(start).take_while(|(k, _)| k.starts_with(prefix)).peekable();
        let mut items = Vec::new();
        let mut bytes = 0;
        while items.len() < limit && (items.is_empty() || bytes < MAX_SCAN_BYTES) {
            let Some((k, v)) = matching.next() else { break };
            bytes += k.len() + v.len();
            items.push((k, v));
        }
        let more = matching.peek().is_some();
        Ok(ScanPage { items, more })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Index of the last entry applied (0 initially).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Term of the last entry applied (0 initially).
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Number of client sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The session bound.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The last applied `seq` of `client_id`, if it has a session.
    pub fn last_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.seq)
    }

    /// A deterministic encoding of the whole state: a version byte, then
    /// postcard of applied index/term, the session bound, all pairs in key
    /// order (as a map of byte strings) and the sessions in client id order.
    ///
    /// The machine then keeps its pairs as slices of the returned buffer, releasing
    /// the memory they had: the runtime keeps the latest snapshot in memory anyway,
    /// and the state does not need a second copy of the same bytes. (Copying the
    /// result into another buffer defeats that: see [`snapshot_after`](Self::snapshot_after)
    /// and [`write_snapshot`](Self::write_snapshot).)
    pub fn snapshot(&mut self) -> Bytes {
        self.snapshot_after(Vec::new())
    }

    /// [`snapshot`](Self::snapshot) appended to `prefix` (e.g. a header of the
    /// runtime's own), in one buffer which is returned whole: the snapshot proper
    /// starts at `prefix.len()`. For a runtime that wraps the snapshot, so that the
    /// pairs share the buffer it keeps.
    pub fn snapshot_after(&mut self, prefix: Vec<u8>) -> Bytes {
        // Allocated once at its final size: no doubling, no copies while it grows.
        let mut out = prefix;
        let start = out.len();
        out.reserve_exact(self.snapshot_len());
        let layout = self.write_snapshot(&mut out).expect("writing to a Vec cannot fail");
        let snapshot = Bytes::from(out);
        self.adopt_snapshot(&snapshot.slice(start..), layout).expect("the layout of the bytes just written");
        snapshot
    }

    /// Bytes [`write_snapshot`](Self::write_snapshot) writes, known before writing
    /// (e.g. for a file header that holds the length).
    pub fn snapshot_len(&self) -> usize {
        let sessions = postcard::serialize_with_flavor(&self.sessions, Size::default());
        1 + postcard::serialize_with_flavor(&self.snapshot_header(), Size::default()).expect("sizing cannot fail")
            + self.data.encoded_len()
            + sessions.expect("sizing cannot fail")
    }

    /// Streams the [`snapshot`](Self::snapshot) encoding to `out` without building it
    /// in memory, and without changing the machine. To make the pairs share the
    /// written bytes once they are stored (for instance as a mapped file), hand them
    /// and the returned layout to [`adopt_snapshot`](Self::adopt_snapshot).
    pub fn write_snapshot(&self, out: &mut impl Write) -> io::Result<SnapshotLayout> {
        let mut head = vec![SNAPSHOT_VERSION];
        head = postcard::to_extend(&self.snapshot_header(), head).expect("postcard encoding of integers cannot fail");
        out.write_all(&head)?;
        let pairs = self.data.write_to(out)?;
        let sessions = postcard::to_allocvec(&self.sessions).expect("postcard encoding of sessions cannot fail");
        out.write_all(&sessions)?;
        let pairs_len = pairs.len();
        let len = head.len() + pairs_len + sessions.len();
        let pairs_at = head.len()..head.len() + pairs_len;
        Ok(SnapshotLayout { applied_index: self.applied_index, len, pairs_at, pairs })
    }

    /// Makes `snapshot`, the bytes [`write_snapshot`](Self::write_snapshot) wrote with
    /// `layout` as they were stored, the base of the pairs: they become slices of it
    /// and the memory they had is released. `snapshot` is not read (its pages, if it is
    /// a mapped file, stay untouched until a lookup needs them).
    ///
    /// Refused, with nothing changed, if the layout is not that of this machine's
    /// current state and of bytes of `snapshot`'s length.
    pub fn adopt_snapshot(&mut self, snapshot: &Bytes, layout: SnapshotLayout) -> Result<(), KvError> {
        if layout.applied_index != self.applied_index || layout.len != snapshot.len() {
            return Err(bad_snapshot(format!(
                "cannot adopt {} bytes written at index {} as the snapshot of {} bytes at index {}",
                layout.len,
                layout.applied_index,
                snapshot.len(),
                self.applied_index
            )));
        }
        self.data.rebase(&snapshot.slice(layout.pairs_at), layout.pairs)
    }

    /// Rebuilds a machine from [`snapshot`](Self::snapshot) output. Malformed or
    /// inconsistent data is an error, never a panic. From a [`Bytes`], the machine's
    /// pairs are slices of it (no copy; it stays in memory while they do); from
    /// other bytes, of one copy.
    pub fn restore<D: SnapshotBytes + ?Sized>(data: &D) -> Result<KvStateMachine, KvError> {
        let data = data.to_shared();
        let Some(&version) = data.first() else {
            return Err(bad_snapshot("empty"));
        };
        if version != SNAPSHOT_VERSION {
            return Err(bad_snapshot(format!("version {version}; expected {SNAPSHOT_VERSION}")));
        }
        let snap = decode_snapshot(&data)?;
        Self::from_snapshot(snap)
    }

    /// Sets `key` to `value` without a log entry or a new applied index: a diverged
    /// replica, for tests that show the digest comparison catching one. Exists only
    /// with the `tamper-for-tests` feature, which release builds never turn on.
    #[cfg(feature = "tamper-for-tests")]
    pub fn tamper_for_tests(&mut self, key: &[u8], value: &[u8]) {
        self.data.insert(key, value);
    }

    /// FNV-1a of the snapshot encoding (without the version byte): equal
    /// digests mean equal state, including sessions, with overwhelming
    /// probability. Streams, so it allocates nothing.
    pub fn digest(&self) -> u64 {
        postcard::to_extend(&self.snapshot_ref(), Fnv1a::new())
            .expect("postcard encoding of in-memory state cannot fail")
            .finish()
    }

    fn advance(&mut self, index: u64, term: u64) -> Result<(), CommandError> {
        if index <= self.applied_index {
            return Err(CommandError::IndexNotAfterApplied { index, applied: self.applied_index });
        }
        self.applied_index = index;
        self.applied_term = term;
        Ok(())
    }

    /// The reply for a retried or stale command, or `None` if it is new.
    fn check_session(&self, cmd: &Command, index: u64, term: u64) -> Option<Applied> {
        let s = self.sessions.get(&cmd.client_id)?;
        if cmd.seq > s.seq {
            return None;
        }
        if cmd.seq == s.seq {
            let mut cached = reply(s.index, s.term, cmd.client_id, s.seq, Ok(s.result.clone()));
            cached.duplicate = true;
            return Some(cached);
        }
        let stale = CommandError::StaleSequence { client_id: cmd.client_id, seq: cmd.seq, last: s.seq };
        Some(reply(index, term, cmd.client_id, cmd.seq, Err(stale)))
    }

    fn execute(&mut self, op: WriteOp) -> WriteResult {
        match op {
            WriteOp::Put { key, value } => WriteResult::Put { existed: self.data.insert(&key, &value) },
            WriteOp::Delete { key } => WriteResult::Delete { existed: self.data.remove(&key) },
            WriteOp::Cas { key, expected, new } => {
                if !self.data.value_is(&key, expected.as_deref()) {
                    // A copy: the result is kept in the session table, where a slice
                    // would keep a whole snapshot alive.
                    let current = self.data.get(&key).map(|v| Bytes::copy_from_slice(&v));
                    return WriteResult::Cas { swapped: false, current };
                }
                self.data.insert(&key, &new);
                WriteResult::Cas { swapped: true, current: None }
            }
        }
    }

    fn record_session(&mut self, client_id: u64, session: Session) {
        self.lru.insert(session.index, client_id);
        if let Some(old) = self.sessions.insert(client_id, session) {
            self.lru.remove(&old.index);
        }
        self.evict_excess_sessions();
    }

    /// Drops the sessions with the oldest last index until within the bound.
    fn evict_excess_sessions(&mut self) {
        while self.sessions.len() > self.max_sessions {
            let Some((_, client_id)) = self.lru.pop_first() else {
                break;
            };
            self.sessions.remove(&client_id);
        }
    }

    /// The integers in front of the pairs (after the version byte).
    fn snapshot_header(&self) -> (u64, u64, u64) {
        (self.applied_index, self.applied_term, self.max_sessions as u64)
    }

    fn snapshot_ref(&self) -> SnapshotRef<'_> {
        SnapshotRef {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            max_sessions: self.max_sessions as u64,
            data: &self.data,
            sessions: &self.sessions,
        }
    }

    /// Checks the invariants `apply` maintains, so a restored machine is one
    /// that `apply` could have produced.
    fn from_snapshot(snap: SnapshotOwned) -> Result<Self, KvError> {
        let max_sessions = usize::try_from(snap.max_sessions).unwrap_or(usize::MAX);
        if max_sessions == 0 || snap.sessions.len() > max_sessions {
            return Err(bad_snapshot(format!("{} sessions with a bound of {max_sessions}", snap.sessions.len())));
        }
        let lru = session_lru(&snap.sessions, snap.applied_index)?;
        Ok(KvStateMachine {
            applied_index: snap.applied_index,
            applied_term: snap.applied_term,
            max_sessions,
            data: snap.data,
            sessions: snap.sessions,
            lru,
        })
    }
}

/// Decodes a snapshot (after its version byte): the fields of [`SnapshotRef`] in
/// order, pairs checked against the limits as they are decoded (see [`Data::decode`]).
fn decode_snapshot(data: &Bytes) -> Result<SnapshotOwned, KvError> {
    let body = &data[1..];
    let ((applied_index, applied_term, max_sessions), rest) =
        postcard::take_from_bytes::<(u64, u64, u64)>(body).map_err(bad_snapshot)?;
    let (pairs, end) = Data::decode(data, data.len() - rest.len())?;
    let (sessions, rest) = postcard::take_from_bytes::<BTreeMap<u64, Session>>(&data[end..])
        .map_err(|e| bad_snapshot(format!("sessions: {e}")))?;
    if !rest.is_empty() {
        return Err(bad_snapshot(format!("{} trailing bytes", rest.len())));
    }
    Ok(SnapshotOwned { applied_index, applied_term, max_sessions, data: pairs, sessions })
}

/// Rebuilds the eviction order; session indexes must be unique and applied.
fn session_lru(sessions: &BTreeMap<u64, Session>, applied_index: u64) -> Result<BTreeMap<u64, u64>, KvError> {
    let mut lru = BTreeMap::new();
    for (&client_id, s) in sessions {
        if s.index == 0 || s.index > applied_index {
            return Err(bad_snapshot(format!(
                "session of client {client_id} at index {}, applied index is {applied_index}",
                s.index
            )));
        }
        if lru.insert(s.index, client_id).is_some() {
            return Err(bad_snapshot(format!("two sessions at index {}", s.index)));
        }
    }
    Ok(lru)
}

fn reply(index: u64, term: u64, client_id: u64, seq: u64, result: Result<WriteResult, CommandError>) -> Applied {
    Applied { index, term, client_id, seq, result, duplicate: false }
}

fn bad_snapshot(reason: impl ToString) -> KvError {
    KvError::Snapshot { reason: reason.to_string() }
}
