//! Fault injection into this running node, for development clusters and demos
//! (`--enable-faults`, `raftkv fault`): a partition from some or all peers, a slow
//! fsync, a paused Raft loop.
//!
//! Every fault heals by itself once its duration is up (a timer ends it; the checks
//! below also ignore an expired one), and none outlives the process: nothing of it is
//! persisted. Each is a `fault.inject` span, open from injection to healing, and a log
//! line at both ends, so the election it causes is easy to find; a step-down or an
//! election while it is active links to its span.
//!
//! It must never act when faults are disabled: every request is then refused, and the
//! checks on the message path cost one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use raftkv_raft::NodeId;
use raftkv_rpc::{ActiveFault, Fault, FaultReply, FaultRequest, MAX_FAULT_MS, MAX_FSYNC_DELAY_MS, RequestError};
use raftkv_telemetry::opentelemetry::KeyValue;
use raftkv_telemetry::opentelemetry::trace::{Span as _, SpanContext};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::trace::{self, BoxedSpan};

/// Faults active at once on one node; more are refused.
const MAX_ACTIVE: usize = 64;

/// This node's injected faults.
pub(crate) struct Faults {
    node: NodeId,
    enabled: bool,
    /// Whether any fault may be active: the message path's one check when none is.
    any: AtomicBool,
    table: Mutex<Table>,
    /// Wakes a paused Raft loop when its pause is healed early.
    pub changed: Notify,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    active: Vec<Injected>,
}

struct Injected {
    id: u64,
    fault: Fault,
    until: Instant,
    span: BoxedSpan,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active: Vec<String> = self.list().iter().map(|a| a.fault.describe()).collect();
        f.debug_struct("Faults").field("enabled", &self.enabled).field("active", &active).finish()
    }
}

impl Faults {
    pub fn new(node: NodeId, enabled: bool) -> Faults {
        Faults { node, enabled, any: AtomicBool::new(false), table: Mutex::default(), changed: Notify::new() }
    }

    /// Serves one `fault` request (the caller checked that it is for this node).
    pub fn handle(self: &Arc<Self>, request: FaultRequest) -> Result<FaultReply, RequestError> {
        if !self.enabled {
            return Err(RequestError::Invalid(format!(
                "fault injection is disabled on node {}: start it with --enable-faults (development clusters \
                 only)",
                self.node
            )));
        }
        let healed = match request {
            FaultRequest::Inject { fault, duration_ms } => {
                self.inject(fault, duration_ms)?;
                0
            }
            FaultRequest::List => 0,
            FaultRequest::Heal => self.heal(|_| true, "heal command"),
        };
        Ok(FaultReply { node: self.node, active: self.list(), healed })
    }

    fn inject(self: &Arc<Self>, fault: Fault, duration_ms: u64) -> Result<(), RequestError> {
        check(self.node, &fault, duration_ms)?;
        let duration = Duration::from_millis(duration_ms);
        let until = Instant::now() + duration;
        let mut table = self.lock();
        if table.active.len() >= MAX_ACTIVE {
            return Err(RequestError::Overloaded(format!(
                "node {} already has {MAX_ACTIVE} active faults (the limit); heal some first",
                self.node
            )));
        }
        table.next_id += 1;
        let id = table.next_id;
        tracing::warn!(node = self.node, id, fault = %fault.describe(), duration_ms, "fault injected");
        let span = inject_span(self.node, id, &fault, duration_ms);
        table.active.push(Injected { id, fault, until, span });
        self.any.store(true, Ordering::Release);
        drop(table);
        self.changed.notify_one();
        let faults = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            faults.heal(|f| f.id == id, "expired");
        });
        Ok(())
    }

    /// Ends the active faults `which` selects (and any expired one); returns how many.
    fn heal(&self, which: impl Fn(&Injected) -> bool, why: &'static str) -> u32 {
        let now = Instant::now();
        let mut table = self.lock();
        let (ended, kept): (Vec<Injected>, Vec<Injected>) =
            std::mem::take(&mut table.active).into_iter().partition(|f| which(f) || f.until <= now);
        table.active = kept;
        self.any.store(!table.active.is_empty(), Ordering::Release);
        drop(table);
        let n = ended.len() as u32;
        for mut f in ended {
            let why = if f.until <= now { "expired" } else { why };
            tracing::warn!(node = self.node, id = f.id, fault = %f.fault.describe(), healed_by = why, "fault healed");
            f.span.add_event("fault.healed", vec![KeyValue::new("healed_by", why)]);
            f.span.set_attribute(KeyValue::new("healed_by", why));
            f.span.end();
        }
        if n > 0 {
            self.changed.notify_one();
        }
        n
    }

    /// Ends every fault: the process is stopping.
    pub fn heal_all(&self) {
        self.heal(|_| true, "shutdown");
    }

    fn list(&self) -> Vec<ActiveFault> {
        let now = Instant::now();
        self.lock()
            .active
            .iter()
            .filter(|f| f.until > now)
            .map(|f| ActiveFault {
                id: f.id,
                fault: f.fault.clone(),
                remaining_ms: f.until.saturating_duration_since(now).as_millis() as u64,
            })
            .collect()
    }

    /// Calls `f` on each active, unexpired fault; nothing (one atomic load) when none is.
    fn each_active(&self, mut f: impl FnMut(&Injected)) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        for injected in self.lock().active.iter().filter(|i| i.until > now) {
            f(injected);
        }
    }

    /// Whether Raft messages between this node and `peer` are dropped.
    pub fn partitioned(&self, peer: NodeId) -> bool {
        let mut cut = false;
        self.each_active(|i| {
            if let Fault::Partition { peers } = &i.fault {
                cut |= peers.is_empty() || peers.contains(&peer);
            }
        });
        cut
    }

    /// How long to hold each log write before it goes to disk.
    pub fn fsync_delay(&self) -> Option<Duration> {
        let mut delay = None;
        self.each_active(|i| {
            if let Fault::DelayFsync { delay_ms } = i.fault {
                delay = delay.max(Some(Duration::from_millis(delay_ms)));
            }
        });
        delay
    }

    /// Until when the Raft loop is paused.
    pub fn paused_until(&self) -> Option<Instant> {
        let mut until = None;
        self.each_active(|i| {
            if i.fault == Fault::Pause {
                until = until.max(Some(i.until));
            }
        });
        until
    }

    /// The spans of the active faults: what a step-down or an election here links.
    pub fn active_spans(&self) -> Vec<SpanContext> {
        let mut spans = Vec::new();
        self.each_active(|i| spans.extend(trace::sampled_span(&i.span)));
        spans
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent (each
        // change is one push or one swap), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Refuses a fault outside its bounds, naming the bound.
fn check(node: NodeId, fault: &Fault, duration_ms: u64) -> Result<(), RequestError> {
    let invalid = |m: String| Err(RequestError::Invalid(m));
    if duration_ms == 0 || duration_ms > MAX_FAULT_MS {
        return invalid(format!("a fault lasts 1 ms to {} s; {duration_ms} ms asked", MAX_FAULT_MS / 1000));
    }
    match fault {
        Fault::Partition { peers } if peers.contains(&node) => {
            invalid(format!("node {node} cannot be partitioned from itself"))
        }
        Fault::Partition { peers } if peers.len() > MAX_ACTIVE => {
            invalid(format!("a partition names at most {MAX_ACTIVE} nodes; {} named", peers.len()))
        }
        Fault::DelayFsync { delay_ms } if *delay_ms == 0 || *delay_ms > MAX_FSYNC_DELAY_MS => {
            invalid(format!("an fsync delay is 1 ms to {MAX_FSYNC_DELAY_MS} ms; {delay_ms} ms asked"))
        }
        _ => Ok(()),
    }
}

/// The `fault.inject` span of one fault: a root span, open until the fault heals.
fn inject_span(node: NodeId, id: u64, fault: &Fault, duration_ms: u64) -> BoxedSpan {
    let mut attributes = vec![
        trace::kv("node", node),
        trace::kv("fault_id", id),
        KeyValue::new("kind", fault.kind()),
        KeyValue::new("fault", fault.describe()),
        trace::kv("duration_ms", duration_ms),
    ];
    match fault {
        Fault::Partition { peers } => attributes.push(KeyValue::new(
            "peers",
            raftkv_telemetry::opentelemetry::Value::Array(
                peers.iter().map(|p| i64::try_from(*p).unwrap_or(i64::MAX)).collect::<Vec<_>>().into(),
            ),
        )),
        Fault::DelayFsync { delay_ms } => attributes.push(trace::kv("delay_ms", *delay_ms)),
        Fault::Pause => {}
    }
    trace::past_span(
        "fault.inject",
        SystemTime::now(),
        &raftkv_telemetry::opentelemetry::Context::new(),
        Vec::new(),
        attributes,
    )
}
