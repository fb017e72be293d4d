//! The simulated network: messages in transit with random delays, drops, duplicates and
//! cut links, delivered in an order that depends only on the seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use raftkv_raft::{Message, NodeId, TraceTag};
use raftkv_replica::StepRefusal;
use rand_core::Rng;

use crate::cluster::{Cluster, ELECTION_TICKS, MAX_IN_TRANSIT, TICK};

/// A late message is held at least this long, the longest randomized election timeout
/// (twice the base), and up to twice that: whoever sent it may have been replaced by a
/// leader of a new term before it arrives.
pub(crate) const LATE_DELAY: u64 = 2 * ELECTION_TICKS as u64 * TICK;

pub(crate) struct InTransit {
    pub deliver_at: u64,
    /// Held for [`LATE_DELAY`] or more.
    pub late: bool,
    /// Send order: a unique tie-breaker, so delivery order depends only on the seed.
    pub order: u64,
    pub msg: Message,
}

impl PartialEq for InTransit {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.order) == (other.deliver_at, other.order)
    }
}

impl Eq for InTransit {}

impl PartialOrd for InTransit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InTransit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at, self.order).cmp(&(other.deliver_at, other.order))
    }
}

/// Messages in transit and the links that are cut.
#[derive(Default)]
pub(crate) struct Network {
    pub in_transit: BinaryHeap<Reverse<InTransit>>,
    pub sent: u64,
    /// Directed links that drop everything: (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Late messages delivered, and those of them whose term was older than their
    /// recipient's by then (stale: a new term began while they were held).
    pub late_delivered: u64,
    pub stale_late_delivered: u64,
}

impl Cluster {
    /// Hands `msgs` to the network: each may be dropped, duplicated and delayed.
    pub(crate) fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            *self.sent_by_kind.entry((msg.to, msg.body.name())).or_default() += 1;
            if self.net.in_transit.len() >= MAX_IN_TRANSIT {
                if self.harness_violations.iter().all(|v| !v.starts_with("message storm")) {
                    self.harness_violations.push(format!("message storm: {MAX_IN_TRANSIT} messages in flight"));
                }
                return;
            }
            if self.net.blocked.contains(&(msg.from, msg.to)) || self.rng.next_u64() % 100 < self.opts.drop_percent {
                continue;
            }
            let copies = if self.rng.next_u64() % 100 < self.opts.duplicate_percent { 2 } else { 1 };
            for _ in 0..copies {
                let mut deliver_at = self.now + 1 + self.rng.next_u64() % self.opts.max_delay.max(1);
                // Drawn only when enabled, so runs without late messages stay as they were.
                let late = self.opts.late_percent > 0 && self.rng.next_u64() % 100 < self.opts.late_percent;
                if late {
                    deliver_at += LATE_DELAY + self.rng.next_u64() % LATE_DELAY;
                }
                self.net.sent += 1;
                let order = self.net.sent;
                let mut msg = msg.clone();
                if self.opts.trace_tags {
                    msg.trace =
                        Some(TraceTag { trace_id: (u128::from(msg.from) << 64) | u128::from(order), span_id: order });
                }
                self.net.in_transit.push(Reverse(InTransit { deliver_at, late, order, msg }));
            }
        }
    }

    /// Delivers the messages that are due: to a paused node they wait, to a down one
    /// they are lost.
    pub(crate) fn deliver_due(&mut self) {
        while self.net.in_transit.peek().is_some_and(|Reverse(m)| m.deliver_at <= self.now) {
            let Reverse(InTransit { msg, late, .. }) = self.net.in_transit.pop().expect("peeked");
            if self.net.blocked.contains(&(msg.from, msg.to)) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&msg.to).filter(|n| n.replica.is_some()) else { continue };
            if late {
                self.net.late_delivered += 1;
                let term = node.replica.as_ref().map_or(0, |r| r.status().term);
                self.net.stale_late_delivered += u64::from(msg.term < term);
            }
            if node.paused {
                // Bounded like a socket buffer: the excess is lost.
                if node.backlog.len() < MAX_IN_TRANSIT {
                    node.backlog.push(msg);
                }
                continue;
            }
            self.step_at(msg);
        }
    }

    /// Hands `msg` to its recipient's replica. A message from a node the recipient knows
    /// was removed is answered as the server's RPC service does: the sender learns it
    /// was removed (here at once).
    pub(crate) fn step_at(&mut self, msg: Message) {
        let (from, to) = (msg.from, msg.to);
        let Some(replica) = self.nodes.get_mut(&to).and_then(|n| n.replica.as_mut()) else { return };
        // A refused message is a peer's bug, corruption or a stale sender; the
        // replica stays intact.
        if let Err(StepRefusal::Removed(_)) = replica.step(msg)
            && !self.net.blocked.contains(&(to, from))
            && let Some(sender) = self.nodes.get_mut(&from).and_then(|n| n.replica.as_mut())
        {
            sender.removed_by_peer(to);
        }
    }

    /// Cuts every link between the groups (each node may reach only its own group).
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        self.net.blocked.clear();
        for a in self.node_ids() {
            for b in self.node_ids() {
                let same = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
                if a != b && !same {
                    self.net.blocked.insert((a, b));
                }
            }
        }
        self.note(format!("partition {groups:?}"));
    }

    pub fn isolate(&mut self, id: NodeId) {
        let rest: Vec<NodeId> = self.node_ids().into_iter().filter(|&n| n != id).collect();
        self.partition(&[vec![id], rest]);
    }

    /// Drops messages from `from` to `to` only.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.net.blocked.insert((from, to));
        self.note(format!("cut {from} -> {to}"));
    }

    pub fn heal(&mut self) {
        self.net.blocked.clear();
        self.note("heal".to_string());
    }
}
