//! Who is in the cluster and where: the address each member joined with (carried in
//! its ConfChange entry as a [`MemberContext`]), the ids removed for good, the snapshot
//! format that keeps both across log compaction, the cluster id, and the rules for
//! adding a member.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raftkv_raft::{ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, NodeId};
use serde::{Deserialize, Serialize};

/// The first byte of an encoded [`MemberContext`].
const CONTEXT_FORMAT: u8 = 1;
/// The first byte of a snapshot this server writes. A snapshot written before it had a
/// membership section is a bare state machine snapshot, whose first byte is 1.
const SNAPSHOT_FORMAT: u8 = 0x80;
/// Longest address a member may have (a DNS name is at most 253 bytes, plus a port).
pub const MAX_ADDR_LEN: usize = 512;

/// What a ConfChange adding a member says about it: its address, and whether the leader
/// promotes it by itself once it has caught up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberContext {
    pub addr: String,
    pub auto_promote: bool,
}

impl MemberContext {
    /// A version byte, then postcard.
    pub fn encode(&self) -> Bytes {
        postcard::to_extend(self, vec![CONTEXT_FORMAT]).expect("postcard encoding of a context cannot fail").into()
    }

    /// The inverse of [`MemberContext::encode`]; bad bytes are an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<MemberContext, String> {
        let (&version, body) = data.split_first().ok_or("empty member context")?;
        if version != CONTEXT_FORMAT {
            return Err(format!("unknown member context format {version}"));
        }
        let (ctx, rest) = postcard::take_from_bytes::<MemberContext>(body).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("member context has {} trailing bytes", rest.len()));
        }
        Ok(ctx)
    }
}

/// The membership part of a snapshot: the contexts of the snapshot configuration's
/// members and every id removed up to the snapshot's index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipSection {
    pub members: Vec<(NodeId, MemberContext)>,
    pub removed: Vec<NodeId>,
}

/// Wraps a state machine snapshot: a version byte, the membership section (postcard),
/// then the state machine's bytes.
pub fn wrap_snapshot(section: &MembershipSection, kv: &[u8]) -> Bytes {
    let mut out = snapshot_prefix(section);
    out.extend_from_slice(kv);
    out.into()
}

/// What precedes the state machine's bytes in a snapshot: the version byte and the
/// membership section. The state machine appends its snapshot to it
/// (`KvStateMachine::snapshot_after`, or streams it behind it into the snapshot file:
/// `KvStateMachine::write_snapshot`), so that its pairs share the one buffer.
pub fn snapshot_prefix(section: &MembershipSection) -> Vec<u8> {
    postcard::to_extend(section, vec![SNAPSHOT_FORMAT]).expect("postcard encoding cannot fail")
}

/// Splits snapshot data into its membership section and the state machine's bytes. A
/// snapshot written before membership sections existed has none (`None`).
pub fn unwrap_snapshot(data: &Bytes) -> Result<(Option<MembershipSection>, Bytes), String> {
    match data.first() {
        Some(&SNAPSHOT_FORMAT) => {
            let (section, rest) = postcard::take_from_bytes::<MembershipSection>(&data[1..])
                .map_err(|e| format!("bad membership section: {e}"))?;
            let kv_start = data.len() - rest.len();
            Ok((Some(section), data.slice(kv_start..)))
        }
        // The state machine checks its own format.
        Some(1) => Ok((None, data.clone())),
        Some(other) => Err(format!("unknown snapshot format {other}")),
        None => Err("empty snapshot".into()),
    }
}

/// This node's knowledge of members' addresses and of removed ids, built from every
/// ConfChange entry it saw and every snapshot it loaded.
#[derive(Debug, Default)]
pub struct Membership {
    contexts: BTreeMap<NodeId, MemberContext>,
    removed: BTreeSet<NodeId>,
    /// `--peers`: the addresses of members added by a log written before contexts
    /// existed (their entries carry none).
    legacy: BTreeMap<NodeId, String>,
}

impl Membership {
    pub fn new(legacy: BTreeMap<NodeId, String>) -> Membership {
        Membership { legacy, ..Membership::default() }
    }

    /// Records the context of a member-adding ConfChange entry (appended, committed or
    /// recovered: the configuration is effective on append). Returns whether `entry`
    /// was a ConfChange.
    pub fn observe(&mut self, entry: &Entry) -> bool {
        if entry.kind != EntryKind::ConfChange {
            return false;
        }
        let Ok(cc) = ConfChange::decode(&entry.data) else { return true };
        if matches!(cc.change, ConfChangeKind::AddLearner | ConfChangeKind::AddVoter) && !cc.context.is_empty() {
            match MemberContext::decode(&cc.context) {
                Ok(ctx) => {
                    self.contexts.insert(cc.node, ctx);
                }
                Err(e) => {
                    tracing::warn!(index = entry.index, node = cc.node, error = %e, "ignoring a bad member context")
                }
            }
        }
        true
    }

    /// Records contexts learned outside the log (a join reply); the log's win later.
    pub fn learn(&mut self, id: NodeId, ctx: MemberContext) {
        self.contexts.entry(id).or_insert(ctx);
    }

    pub fn remove(&mut self, id: NodeId) {
        self.removed.insert(id);
    }

    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    pub fn context(&self, id: NodeId) -> Option<&MemberContext> {
        self.contexts.get(&id)
    }

    /// Where member `id` is reached, if known.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.contexts.get(&id).map(|c| c.addr.as_str()).or_else(|| self.legacy.get(&id).map(String::as_str))
    }

    /// Every id with a known address.
    pub fn known(&self) -> BTreeMap<NodeId, String> {
        let mut all: BTreeMap<NodeId, String> =
            self.legacy.iter().map(|(id, a)| (*id, a.clone())).filter(|(id, _)| !self.removed.contains(id)).collect();
        all.extend(self.contexts.iter().map(|(id, c)| (*id, c.addr.clone())));
        all
    }

    /// The section of a snapshot whose configuration is `conf`. Called with the
    /// snapshot index applied, so `removed` is exact.
    pub fn section(&self, conf: &ConfState) -> MembershipSection {
        let members = conf
            .members()
            .filter_map(|id| {
                let ctx = self.contexts.get(&id).cloned().or_else(|| {
                    let addr = self.legacy.get(&id)?.clone();
                    Some(MemberContext { addr, auto_promote: false })
                })?;
                Some((id, ctx))
            })
            .collect();
        MembershipSection { members, removed: self.removed.iter().copied().collect() }
    }

    /// Takes in a snapshot's section (removals are permanent, so they add up).
    pub fn restore(&mut self, section: MembershipSection) {
        self.contexts.extend(section.members);
        self.removed.extend(section.removed);
    }

    /// The highest id this node has ever seen in the cluster.
    fn max_id(&self, conf: &ConfState) -> NodeId {
        let ids = conf.members().chain(self.contexts.keys().copied()).chain(self.removed.iter().copied());
        ids.chain(self.legacy.keys().copied()).max().unwrap_or(0)
    }
}

/// What the leader does with a valid [`MemberChange::Add`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddPlan {
    /// The address is already a learner's: answer with it, change nothing.
    Existing(NodeId),
    /// Propose adding learner `id` with `ctx`.
    Propose(NodeId, MemberContext),
}

/// Why an `Add` was refused: a message for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddRefusal(pub String);

/// Checks that `addr` is `HOST:PORT` with a host and a valid port.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("the address '{addr}' has no :PORT"))?;
    if host.is_empty() {
        return Err(format!("the address '{addr}' has no host"));
    }
    port.parse::<u16>().map_err(|_| format!("the address '{addr}' has an invalid port '{port}'"))?;
    Ok(())
}

/// Checks an `Add` against the configuration `conf` (the leader's latest) and decides
/// its id. Ids are never reused: a member's or a removed id is refused, unless
/// `allocate_if_taken`, which takes one above every id ever seen.
pub fn plan_add(
    conf: &ConfState,
    members: &Membership,
    id: Option<NodeId>,
    addr: &str,
    auto_promote: bool,
    allocate_if_taken: bool,
) -> Result<AddPlan, AddRefusal> {
    let addr = addr.trim();
    if addr.len() > MAX_ADDR_LEN {
        return Err(AddRefusal(format!("the address is {} bytes; the limit is {MAX_ADDR_LEN}", addr.len())));
    }
    check_addr(addr).map_err(AddRefusal)?;
    if let Some(holder) = conf.members().find(|m| members.addr(*m) == Some(addr)) {
        if conf.learners.contains(&holder) {
            return Ok(AddPlan::Existing(holder));
        }
        return Err(AddRefusal(format!("the address {addr} already belongs to voter {holder}")));
    }
    let allocate = || members.max_id(conf) + 1;
    let id = match id {
        None => allocate(),
        Some(0) => return Err(AddRefusal("node id 0 is not valid".into())),
        Some(id) if conf.contains(id) || members.removed.contains(&id) => {
            if allocate_if_taken {
                allocate()
            } else if conf.contains(id) {
                return Err(AddRefusal(format!(
                    "node {id} is already a member; ids are never reused: pick an unused id"
                )));
            } else {
                return Err(AddRefusal(format!(
                    "node {id} was removed from this cluster; ids are never reused: pick an unused id"
                )));
            }
        }
        Some(id) => id,
    };
    Ok(AddPlan::Propose(id, MemberContext { addr: addr.to_string(), auto_promote }))
}

/// The id of a cluster founded by `members` with `token`, derived like etcd's: a stable
/// 64-bit hash (FNV-1a, which never changes between versions or platforms) of the
/// token and the sorted (id, address) list. Never 0, which means "no cluster".
pub fn cluster_id(token: &str, members: &BTreeMap<NodeId, String>) -> u64 {
    use std::hash::Hasher as _;
    let mut h = fnv::FnvHasher::default();
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    let mut field = |bytes: &[u8]| {
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(bytes);
    };
    field(b"raftkv-cluster-v1");
    field(token.as_bytes());
    for (id, addr) in members {
        field(&id.to_le_bytes());
        field(addr.as_bytes());
    }
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(addr: &str) -> MemberContext {
        MemberContext { addr: addr.into(), auto_promote: true }
    }

    fn entry(index: u64, change: ConfChangeKind, node: NodeId, context: Bytes) -> Entry {
        Entry { index, term: 1, kind: EntryKind::ConfChange, data: ConfChange::new(change, node, context).encode() }
    }

    #[test]
    fn contexts_round_trip_and_bad_bytes_are_errors() {
        let c = MemberContext { addr: "10.0.0.9:6000".into(), auto_promote: false };
        let bytes = c.encode();
        assert_eq!(MemberContext::decode(&bytes), Ok(c));
        assert!(MemberContext::decode(&[]).unwrap_err().contains("empty"));
        assert!(MemberContext::decode(&[7, 1, b'a', 0]).unwrap_err().contains("unknown member context format 7"));
        for cut in 1..bytes.len() {
            assert!(MemberContext::decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let trailing = [&bytes[..], &[0]].concat();
        assert!(MemberContext::decode(&trailing).unwrap_err().contains("trailing"));
        for b in 0..=255u8 {
            let _ = MemberContext::decode(&[1, b, b, b, b]); // never panics
        }
    }

    #[test]
    fn snapshot_wrapper_round_trips_keeps_legacy_snapshots_and_refuses_bad_ones() {
        let section = MembershipSection { members: vec![(1, ctx("a:1")), (4, ctx("d:4"))], removed: vec![2, 3] };
        let kv = Bytes::from_static(b"\x01state machine bytes");
        let data = wrap_snapshot(&section, &kv);
        assert_eq!(unwrap_snapshot(&data), Ok((Some(section), kv.clone())));
        // A bare state machine snapshot of the previous version.
        assert_eq!(unwrap_snapshot(&kv), Ok((None, kv.clone())));
        assert!(unwrap_snapshot(&Bytes::new()).unwrap_err().contains("empty"));
        assert!(unwrap_snapshot(&Bytes::from_static(b"\x07x")).unwrap_err().contains("unknown snapshot format 7"));
        // A truncated section is an error; the KV part is the state machine's to check.
        let empty_section = wrap_snapshot(&MembershipSection::default(), b"");
        for cut in 1..data.len().min(empty_section.len() + 4) {
            let _ = unwrap_snapshot(&data.slice(..cut)); // never panics
        }
        assert!(unwrap_snapshot(&Bytes::from_static(&[SNAPSHOT_FORMAT, 0xff])).unwrap_err().contains("membership"));
    }

    #[test]
    fn observe_records_contexts_and_falls_back_to_peers_for_old_entries() {
        let legacy = BTreeMap::from([(1, "old-1:1".to_string()), (2, "old-2:2".to_string())]);
        let mut m = Membership::new(legacy);
        assert!(m.observe(&entry(1, ConfChangeKind::AddVoter, 1, Bytes::new())));
        assert!(m.observe(&entry(2, ConfChangeKind::AddLearner, 5, ctx("new-5:5").encode())));
        assert!(m.observe(&entry(3, ConfChangeKind::AddLearner, 6, Bytes::from_static(b"\x09junk"))));
        let cmd = Entry { index: 4, term: 1, kind: EntryKind::Command, data: Bytes::new() };
        assert!(!m.observe(&cmd));
        assert_eq!(m.addr(1), Some("old-1:1"));
        assert_eq!(m.addr(5), Some("new-5:5"));
        assert_eq!(m.addr(6), None);
        assert!(m.context(5).unwrap().auto_promote);
        let mut conf = ConfState::with_voters([1, 2]);
        conf.learners.insert(5);
        m.remove(3);
        let section = m.section(&conf);
        assert_eq!(
            section.members.iter().map(|(id, c)| (*id, c.addr.as_str())).collect::<Vec<_>>(),
            [(1, "old-1:1"), (2, "old-2:2"), (5, "new-5:5")]
        );
        assert_eq!(section.removed, [3]);
        let mut restored = Membership::default();
        restored.restore(section);
        assert_eq!(restored.addr(2), Some("old-2:2"));
        assert!(restored.removed().contains(&3));
    }

    #[test]
    fn cluster_id_is_stable_order_independent_and_token_sensitive() {
        let members = BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".to_string()), (3, "c:3".to_string())]);
        let id = cluster_id("raftkv", &members);
        // Pinned (an independent FNV-1a computation gives the same): a change of this value
        // would give every existing cluster a new id.
        assert_eq!(id, cluster_id("raftkv", &members));
        assert_eq!(format!("{id:016x}"), format!("{:016x}", 0x828c_4e98_b736_b18au64), "stable across builds");
        let reversed: BTreeMap<_, _> = members.iter().rev().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(cluster_id("raftkv", &reversed), id);
        assert_ne!(cluster_id("other", &members), id);
        let mut moved = members.clone();
        moved.insert(3, "c:4".into());
        assert_ne!(cluster_id("raftkv", &moved), id);
        let mut fewer = members.clone();
        fewer.remove(&3);
        assert_ne!(cluster_id("raftkv", &fewer), id);
        // Field boundaries matter.
        assert_ne!(
            cluster_id("ab", &BTreeMap::from([(1, "c:1".to_string())])),
            cluster_id("a", &BTreeMap::from([(1, "bc:1".to_string())]))
        );
        assert_ne!(id, 0);
    }

    fn setup() -> (ConfState, Membership) {
        let mut m = Membership::default();
        for (i, (id, addr)) in [(1, "a:1"), (2, "b:2"), (5, "e:5")].into_iter().enumerate() {
            let kind = if id == 5 { ConfChangeKind::AddLearner } else { ConfChangeKind::AddVoter };
            m.observe(&entry(i as u64 + 1, kind, id, ctx(addr).encode()));
        }
        m.remove(7);
        let mut conf = ConfState::with_voters([1, 2]);
        conf.learners.insert(5);
        (conf, m)
    }

    #[test]
    fn add_validates_ids_and_addresses() {
        let (conf, m) = setup();
        let plan = |id, addr: &str, allocate| plan_add(&conf, &m, id, addr, true, allocate);
        assert_eq!(plan(Some(3), "c:3", false), Ok(AddPlan::Propose(3, ctx("c:3"))));
        // Ids: 0 is invalid; members' and removed ids are never reused.
        let invalid = |r: Result<AddPlan, AddRefusal>| match r {
            Err(AddRefusal(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert!(invalid(plan(Some(0), "c:3", false)).contains("0 is not valid"));
        let e = invalid(plan(Some(2), "c:3", false));
        assert!(e.contains("node 2 is already a member") && e.contains("never reused"), "{e}");
        let e = invalid(plan(Some(7), "c:3", false));
        assert!(e.contains("node 7 was removed") && e.contains("never reused"), "{e}");
        // Allocation: above every id ever seen, removed ones included.
        assert_eq!(plan(Some(2), "c:3", true), Ok(AddPlan::Propose(8, ctx("c:3"))));
        assert_eq!(plan(Some(7), "c:3", true), Ok(AddPlan::Propose(8, ctx("c:3"))));
        assert_eq!(plan(None, "c:3", false), Ok(AddPlan::Propose(8, ctx("c:3"))));
        assert_eq!(plan(Some(9), "c:3", true), Ok(AddPlan::Propose(9, ctx("c:3"))));
        // Addresses: a learner's is an idempotent join, a voter's is refused.
        assert_eq!(plan(Some(9), "e:5", false), Ok(AddPlan::Existing(5)));
        assert_eq!(plan(Some(5), " e:5 ", false), Ok(AddPlan::Existing(5)));
        let e = invalid(plan(Some(9), "b:2", false));
        assert!(e.contains("b:2 already belongs to voter 2"), "{e}");
        assert!(invalid(plan(Some(9), "nope", false)).contains("no :PORT"));
        let long = format!("{}:1", "h".repeat(MAX_ADDR_LEN));
        assert!(invalid(plan(Some(9), &long, false)).contains("limit is 512"));
    }
}
