//! Bounds on inbound connections, so garbage, half frames and slowloris connections
//! cannot exhaust a node: at most [`MAX_CONNECTIONS`] are open, and one that has not
//! sent a complete request within [`FIRST_REQUEST_TIMEOUT`] is closed.
//!
//! When the table is full a new connection always gets in: the oldest connection that
//! has not sent a complete request is closed to make room, else the one idle the
//! longest (least recently used). Why peers are not starved: a peer sends its first
//! batch right after connecting, and a leader's links send heartbeats every few ticks,
//! so they are never the idlest; a closed idle link reconnects when it next has
//! something to send. Why idle connections are evicted rather than new ones refused:
//! otherwise 512 connections that each sent one request and then went silent would
//! lock every new client and restarted peer out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;

/// The most connections a node keeps open.
pub(crate) const MAX_CONNECTIONS: usize = 512;
/// A connection that sends no complete request within this is closed.
pub(crate) const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// When a connection last delivered a complete request; shared with its task.
#[derive(Clone)]
pub(crate) struct Activity {
    base: Instant,
    /// Milliseconds since `base` of the last complete request, plus one (0: none yet).
    last_request: Arc<AtomicU64>,
}

impl Activity {
    fn new(base: Instant) -> Self {
        Activity { base, last_request: Arc::new(AtomicU64::new(0)) }
    }

    /// Notes a complete request.
    pub fn request(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_request.store(ms + 1, Ordering::Relaxed);
    }

    fn last_request(&self) -> Option<u64> {
        self.last_request.load(Ordering::Relaxed).checked_sub(1)
    }
}

struct Conn {
    accepted: Instant,
    activity: Activity,
    abort: AbortHandle,
}

/// The open connections, each served on its own task.
pub(crate) struct Connections {
    tasks: JoinSet<()>,
    open: HashMap<Id, Conn>,
    base: Instant,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { tasks: JoinSet::new(), open: HashMap::new(), base: Instant::now() }
    }
}

impl Connections {
    /// Makes room for one more connection: when full, closes the oldest connection
    /// that has not sent a complete request, else the one idle the longest.
    pub fn make_room(&mut self) {
        if self.open.len() < MAX_CONNECTIONS {
            return;
        }
        let without_request = self
            .open
            .iter()
            .filter(|(_, c)| c.activity.last_request().is_none())
            .min_by_key(|(_, c)| c.accepted)
            .map(|(id, _)| *id);
        let victim = without_request.or_else(|| {
            self.open.iter().min_by_key(|(_, c)| c.activity.last_request().unwrap_or(0)).map(|(id, _)| *id)
        });
        if let Some(conn) = victim.and_then(|id| self.open.remove(&id)) {
            conn.abort.abort();
            let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            let idle_ms = conn.activity.last_request().map(|at| now.saturating_sub(at));
            tracing::debug!(
                ?idle_ms,
                "connection limit reached: closed the oldest connection without a request, else the idlest"
            );
        }
        debug_assert!(self.open.len() < MAX_CONNECTIONS, "make_room left the table full");
    }

    /// Serves a connection: `serve` (given the [`Activity`] to note its requests in)
    /// runs until it ends, or for [`FIRST_REQUEST_TIMEOUT`] if no request came by
    /// then.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&mut self, serve: impl FnOnce(Activity) -> F) {
        let activity = Activity::new(self.base);
        let task = with_first_request_timeout(serve(activity.clone()), activity.clone());
        let abort = self.tasks.spawn(task);
        self.open.insert(abort.id(), Conn { accepted: Instant::now(), activity, abort });
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for a connection to end and forgets it.
    pub async fn reap(&mut self) {
        if let Some(Ok(id) | Err(id)) =
            self.tasks.join_next_with_id().await.map(|r| r.map(|(id, ())| id).map_err(|e| e.id()))
        {
            self.open.remove(&id);
        }
    }

    /// Waits up to `grace` for the connections to end, then cuts the rest.
    pub async fn close(mut self, grace: Duration) {
        if !grace.is_zero() {
            let _ = tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} }).await;
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn with_first_request_timeout(serve: impl Future<Output = ()>, activity: Activity) {
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        () = &mut serve => return,
        () = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => {}
    }
    if activity.last_request().is_some() {
        serve.await;
    } else {
        tracing::debug!(timeout_s = FIRST_REQUEST_TIMEOUT.as_secs(), "closed a connection that sent no request");
    }
}
