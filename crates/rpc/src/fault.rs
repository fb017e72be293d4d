//! The wire types of fault injection into a running cluster (`raftkv fault`): for
//! development clusters and demos only. A node refuses every fault unless it was
//! started with `--enable-faults`.

use raftkv_raft::NodeId;
use serde::{Deserialize, Serialize};

/// The longest a fault may last: it always heals by itself.
pub const MAX_FAULT_MS: u64 = 60 * 60 * 1000;
/// The longest delay `DelayFsync` may add to each write.
pub const MAX_FSYNC_DELAY_MS: u64 = 10_000;

/// One kind of fault a node can inject into itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Drop every Raft message between this node and `peers` (every other node when
    /// empty), both ways. Client requests still pass.
    Partition { peers: Vec<NodeId> },
    /// Delay each write to the Raft log (entries, votes) by `delay_ms` before it
    /// reaches the disk: a slow fsync.
    DelayFsync { delay_ms: u64 },
    /// The Raft loop stops ticking and stepping: no heartbeats, no votes, no
    /// commits (a stalled process); requests queue until it resumes.
    Pause,
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::DelayFsync { .. } => "delay-fsync",
            Fault::Pause => "pause",
        }
    }

    /// A human description: `partition from 2,3`, `delay-fsync 200ms`, `pause`.
    pub fn describe(&self) -> String {
        match self {
            Fault::Partition { peers } if peers.is_empty() => "partition from every other node".to_string(),
            Fault::Partition { peers } => {
                let ids: Vec<String> = peers.iter().map(NodeId::to_string).collect();
                format!("partition from {}", ids.join(","))
            }
            Fault::DelayFsync { delay_ms } => format!("delay-fsync {delay_ms}ms"),
            Fault::Pause => "pause".to_string(),
        }
    }
}

/// What `fault` asks of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultRequest {
    /// Inject `fault` for `duration_ms` (1 ms to [`MAX_FAULT_MS`]); it heals by itself.
    Inject { fault: Fault, duration_ms: u64 },
    /// The node's active faults.
    List,
    /// End every active fault of the node now.
    Heal,
}

/// One active fault and how long it has left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFault {
    pub id: u64,
    pub fault: Fault,
    pub remaining_ms: u64,
}

/// A node's answer: its active faults after the request, and how many it healed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultReply {
    pub node: NodeId,
    pub active: Vec<ActiveFault>,
    pub healed: u32,
}
