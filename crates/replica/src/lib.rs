//! One raftkv node as an I/O-free unit: its Raft core ([`raftkv_raft::RawNode`]), its
//! key/value state machine ([`raftkv_kv::KvStateMachine`]) and what it knows of the
//! membership ([`Membership`]), with the policies that used to live in the server's
//! I/O code. raftkv-server drives it with tokio, disks and sockets; the simulation
//! drives the same code with simulated ones, so every policy here meets the
//! simulation's faults.
//!
//! Its job:
//! - carry out each Ready in the order the core documents ([`ReadyRun`]: the runtime
//!   does the I/O each step names, the replica applies and installs between them);
//! - decide the runtime's policies: which messages to take ([`Replica::step`]), when to
//!   promote a caught-up learner and to probe peers when forgotten ([`Replica::tick`]),
//!   when to take a snapshot ([`Replica::snapshot_due`]), whom to hand leadership to on
//!   shutdown and when to stop ([`Replica::stop_decision`]), and when this node was
//!   removed.
//!
//! What it must never do: I/O of any kind (no clocks — time is [`Replica::tick`] —, no
//! files, no sockets, no threads), or let a step of a Ready happen out of its order.

mod membership;
mod policy;
mod ready;
mod replica;

pub use membership::{
    AddPlan, AddRefusal, MAX_ADDR_LEN, MemberContext, Membership, MembershipSection, check_addr, cluster_id, plan_add,
    snapshot_prefix, unwrap_snapshot, wrap_snapshot,
};
pub use policy::{DrainEnd, Stop, TickReport};
pub use ready::{ApplyHooks, ApplyOutcome, Detached, Finished, Io, Persist, ReadyRun};
pub use replica::{
    MemberEntry, MemberView, Proposed, Refusal, Replica, ReplicaConfig, ReplicaError, SnapshotPlan, StepRefusal,
    refused_from_removed,
};
