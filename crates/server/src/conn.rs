//! Bounds on inbound connections, so garbage, half frames and slowloris connections
//! cannot exhaust a node: at most [`MAX_CONNECTIONS`] are open, and one that has not
//! sent a complete request within [`FIRST_REQUEST_TIMEOUT`] is closed.
//!
//! Why peers are not starved: a peer sends its first batch right after connecting,
//! and only connections that have not sent a complete request are evicted to make
//! room for new ones.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;

/// The most connections a node keeps open.
pub(crate) const MAX_CONNECTIONS: usize = 512;
/// A connection that sends no complete request within this is closed.
pub(crate) const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

struct Conn {
    accepted: Instant,
    /// Set once the connection delivered its first complete request.
    started: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// The open connections, each served on its own task.
#[derive(Default)]
pub(crate) struct Connections {
    tasks: JoinSet<()>,
    open: HashMap<Id, Conn>,
}

impl Connections {
    /// Makes room for one more connection: when full, evicts the oldest connection
    /// that has not sent a complete request. False if every open one has.
    pub fn make_room(&mut self) -> bool {
        if self.open.len() < MAX_CONNECTIONS {
            return true;
        }
        let oldest = self
            .open
            .iter()
            .filter(|(_, c)| !c.started.load(Ordering::Relaxed))
            .min_by_key(|(_, c)| c.accepted)
            .map(|(id, _)| *id);
        match oldest.and_then(|id| self.open.remove(&id)) {
            Some(conn) => {
                conn.abort.abort();
                tracing::debug!("connection limit reached: closed the oldest connection without a request");
                true
            }
            None => false,
        }
    }

    /// Serves a connection: `serve` (given the flag to set on its first complete
    /// request) runs until it ends, or for [`FIRST_REQUEST_TIMEOUT`] if no request
    /// came by then.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&mut self, serve: impl FnOnce(Arc<AtomicBool>) -> F) {
        let started = Arc::new(AtomicBool::new(false));
        let task = with_first_request_timeout(serve(started.clone()), started.clone());
        let abort = self.tasks.spawn(task);
        self.open.insert(abort.id(), Conn { accepted: Instant::now(), started, abort });
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

async fn with_first_request_timeout(serve: impl Future<Output = ()>, started: Arc<AtomicBool>) {
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        () = &mut serve => return,
        () = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => {}
    }
    if started.load(Ordering::Relaxed) {
        serve.await;
    } else {
        tracing::debug!(timeout_s = FIRST_REQUEST_TIMEOUT.as_secs(), "closed a connection that sent no request");
    }
}
