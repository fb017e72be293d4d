//! ReadIndex reads checked by the value they return, not only by their index: once a
//! released read's node has applied its read index, the value it holds for the read's
//! key must be the last one acknowledged before the read was issued, or one written
//! after that (a newer write), and one that some put wrote.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Index, NodeId};

use crate::cluster::Cluster;

/// The last acknowledged put of a key: its index and value.
type Acked = Option<(Index, Bytes)>;

/// The reads' bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct ValueReads {
    /// Per key, the acknowledged put of the highest index.
    acked: BTreeMap<Bytes, (Index, Bytes)>,
    /// Per value (every put's value is unique), the index where a put first wrote it.
    written: BTreeMap<Bytes, Index>,
    /// Reads asked for, not yet released: (node, ctx) → (key, last acked put of it).
    issued: BTreeMap<(NodeId, u64), (Bytes, Acked)>,
    /// Reads released at an index, waiting for their node to apply it.
    waiting: Vec<(NodeId, Index, Bytes, Acked)>,
    /// Reads whose value was checked.
    pub served: u64,
}

/// The put of a command's data, if it is one.
fn put_of(data: &[u8]) -> Option<(Bytes, Bytes)> {
    match Command::decode(data).ok()?.op {
        WriteOp::Put { key, value } => Some((key, value)),
        _ => None,
    }
}

impl ValueReads {
    /// A read of `key` asked of `node` with context `ctx`.
    pub fn issued(&mut self, node: NodeId, ctx: u64, key: Bytes) {
        let acked = self.acked.get(&key).cloned();
        self.issued.insert((node, ctx), (key, acked));
    }

    pub fn released(&mut self, node: NodeId, ctx: u64, index: Index) {
        if let Some((key, acked)) = self.issued.remove(&(node, ctx)) {
            self.waiting.push((node, index, key, acked));
        }
    }

    /// A command applied for the first time at `index` (not a duplicate).
    pub fn applied(&mut self, index: Index, data: &[u8]) {
        if let Some((_, value)) = put_of(data) {
            self.written.entry(value).or_insert(index);
        }
    }

    /// A client's command acknowledged at `index`. A retry acknowledged as a duplicate
    /// took effect where it was first applied: that index is the one that counts.
    pub fn acknowledged(&mut self, index: Index, data: &[u8]) {
        let Some((key, value)) = put_of(data) else { return };
        let index = self.written.get(&value).copied().unwrap_or(index);
        if self.acked.get(&key).is_none_or(|(i, _)| *i < index) {
            self.acked.insert(key, (index, value));
        }
    }

    /// `node` lost its state (crash): its reads are gone.
    pub fn forget(&mut self, node: NodeId) {
        self.issued.retain(|(n, _), _| *n != node);
        self.waiting.retain(|r| r.0 != node);
    }
}

/// Whether `got`, read after the read was released, may be the value of a key whose
/// last put acknowledged before the read was issued is `acked`. `written` maps each
/// value a put wrote to the index where it was first applied.
pub(crate) fn check_read(acked: &Acked, written: &BTreeMap<Bytes, Index>, got: Option<&Bytes>) -> Result<(), String> {
    match (acked, got) {
        (None, None) => Ok(()),
        (Some((index, value)), None) => Err(format!("read nothing, but {value:?} was acknowledged at {index}")),
        (_, Some(v)) => {
            let Some(at) = written.get(v) else { return Err(format!("read {v:?}, which no put wrote")) };
            match acked {
                Some((index, a)) if a != v && at <= index => {
                    Err(format!("read {v:?} (written at {at}), but {a:?} was acknowledged at {index} before the read"))
                }
                _ => Ok(()),
            }
        }
    }
}

impl Cluster {
    /// Checks the value of every released read whose node has applied its index.
    pub(crate) fn serve_reads(&mut self) {
        let waiting = std::mem::take(&mut self.value_reads.waiting);
        for read in waiting {
            let (node, index, key, acked) = &read;
            let Some(replica) = self.nodes.get(node).and_then(|n| n.replica.as_ref()) else { continue };
            if replica.applied_index() < *index {
                self.value_reads.waiting.push(read);
                continue;
            }
            let got = replica.kv().get(key);
            if let Err(e) = check_read(acked, &self.value_reads.written, got.as_ref()) {
                self.harness_violations.push(format!("node {node}: stale read of {key:?} released at {index}: {e}"));
            }
            self.value_reads.served += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn a_read_must_return_the_last_acknowledged_value_or_a_newer_one() {
        let written = BTreeMap::from([(b("a"), 3), (b("b"), 5), (b("c"), 9)]);
        let acked = Some((5, b("b")));
        assert_eq!(check_read(&acked, &written, Some(&b("b"))), Ok(()));
        assert_eq!(check_read(&acked, &written, Some(&b("c"))), Ok(()), "newer than the acknowledged put");
        assert!(check_read(&acked, &written, Some(&b("a"))).unwrap_err().contains("acknowledged at 5"), "stale");
        assert!(check_read(&acked, &written, None).is_err(), "the acknowledged put is missing");
        assert!(check_read(&acked, &written, Some(&b("z"))).unwrap_err().contains("no put wrote"), "invented");
        assert_eq!(check_read(&None, &written, None), Ok(()));
        assert_eq!(check_read(&None, &written, Some(&b("a"))), Ok(()));
    }
}
