//! The HTTP admin port (`--admin-listen`): probes and metrics for an orchestrator.
//!
//! - `GET /livez`: 200 while the process serves and its Raft loop is not stalled (no
//!   tick for [`STALL_AFTER`] once it started); 503 otherwise. Before the loop starts
//!   (storage still recovering) it answers 200: recovery of a long log is not a hang.
//! - `GET /readyz`: 200 once storage is opened and recovered and the RPC port listens,
//!   until shutdown begins; 503 before and after. It does **not** wait for a leader: a
//!   StatefulSet's pods become ready one by one only if readiness does not need the
//!   others, and a cluster without a quorum must still be reachable to recover.
//! - `GET /metrics`: Prometheus text format (version 0.0.4).
//!
//! The server is plain HTTP/1.1 on its own port, apart from the tarpc port, so a probe
//! never competes with Raft traffic for a connection slot.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use raftkv_raft::Role;
use tokio::net::TcpListener;

/// `/livez` fails when the Raft loop has not ticked for this long.
pub const STALL_AFTER: Duration = Duration::from_secs(30);
/// A connection open longer than this is dropped (probes and scrapes take milliseconds).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the admin port reports, shared by the node (which updates it) and the HTTP
/// server (which reads it). All updates are single relaxed atomic stores.
#[derive(Debug)]
pub struct AdminState {
    started: Instant,
    id: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since `started` of the last tick, plus one (0: the loop has not run).
    last_tick_ms: AtomicU64,
    pub(crate) metrics: Metrics,
}

/// The node's gauges and counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub term: AtomicU64,
    /// [`role_code`] of the current role.
    pub role: AtomicU8,
    /// 0 when no leader is known.
    pub leader: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub last_index: AtomicU64,
    pub snapshot_index: AtomicU64,
    pub pending_writes: AtomicU64,
    pub proposals: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub reads: AtomicU64,
    pub elections_started: AtomicU64,
    pub became_leader: AtomicU64,
    pub snapshots_saved: AtomicU64,
    pub snapshots_installed: AtomicU64,
    /// Snapshots a follower refused as larger than its limit (leader side).
    pub snapshots_refused: AtomicU64,
    /// 1 while this node recovers from lost state.
    pub recovering: AtomicU64,
}

const ROLES: [&str; 4] = ["follower", "pre-candidate", "candidate", "leader"];

pub(crate) fn role_code(role: Role) -> u8 {
    match role {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    }
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            started: Instant::now(),
            id: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(0),
            metrics: Metrics::default(),
        }
    }
}

impl AdminState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Whether `/livez` answers 200.
    pub fn is_live(&self) -> bool {
        match self.last_tick_ms.load(Ordering::Relaxed) {
            0 => true,
            t => self.elapsed_ms().saturating_sub(t - 1) < STALL_AFTER.as_millis() as u64,
        }
    }

    pub(crate) fn set_id(&self, id: u64) {
        self.id.store(id, Ordering::Relaxed);
    }

    /// Storage is recovered and the RPC port listens.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Shutdown began: no longer ready.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn ticked(&self) {
        self.last_tick_ms.store(self.elapsed_ms() + 1, Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The Prometheus text exposition of the current values.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        one("raftkv_node_id", "gauge", "This node's Raft id.", get(&self.id));
        one("raftkv_ready", "gauge", "1 when /readyz answers 200.", u64::from(self.is_ready()));
        one("raftkv_term", "gauge", "The current Raft term.", get(&m.term));
        one("raftkv_leader_id", "gauge", "The id of the leader this node knows of (0: none).", get(&m.leader));
        one(
            "raftkv_is_leader",
            "gauge",
            "1 when this node is the leader.",
            u64::from(m.role.load(Ordering::Relaxed) == role_code(Role::Leader)),
        );
        one("raftkv_commit_index", "gauge", "The highest log index known committed.", get(&m.commit_index));
        one(
            "raftkv_applied_index",
            "gauge",
            "The highest log index applied to the state machine.",
            get(&m.applied_index),
        );
        one("raftkv_last_index", "gauge", "The last index of this node's log.", get(&m.last_index));
        one("raftkv_snapshot_index", "gauge", "The index of the latest snapshot.", get(&m.snapshot_index));
        one("raftkv_pending_writes", "gauge", "Proposed writes waiting to commit.", get(&m.pending_writes));
        one("raftkv_proposals_total", "counter", "Writes proposed to the Raft log by this node.", get(&m.proposals));
        one(
            "raftkv_proposals_failed_total",
            "counter",
            "Writes refused before reaching the log (not the leader, overloaded, draining).",
            get(&m.proposals_failed),
        );
        one("raftkv_reads_total", "counter", "Read requests handled by this node.", get(&m.reads));
        one(
            "raftkv_elections_started_total",
            "counter",
            "Elections (and pre-votes) this node started.",
            get(&m.elections_started),
        );
        one("raftkv_became_leader_total", "counter", "Times this node became the leader.", get(&m.became_leader));
        one(
            "raftkv_snapshots_saved_total",
            "counter",
            "Snapshots this node took of its state machine.",
            get(&m.snapshots_saved),
        );
        one(
            "raftkv_snapshots_installed_total",
            "counter",
            "Snapshots received from a leader and installed.",
            get(&m.snapshots_installed),
        );
        one(
            "raftkv_snapshots_refused_total",
            "counter",
            "Snapshots a follower refused as larger than its --max-snapshot-bytes (this node leading).",
            get(&m.snapshots_refused),
        );
        one(
            "raftkv_recovering",
            "gauge",
            "1 while this node recovers from lost state: it neither votes nor counts toward a quorum.",
            get(&m.recovering),
        );
        one(
            "raftkv_uptime_seconds",
            "gauge",
            "Seconds since the process started serving the admin port.",
            self.started.elapsed().as_secs(),
        );
        let role = m.role.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP raftkv_role 1 for this node's current Raft role.\n# TYPE raftkv_role gauge");
        for (code, name) in ROLES.iter().enumerate() {
            let _ = writeln!(out, "raftkv_role{{role=\"{name}\"}} {}", u8::from(code as u8 == role));
        }
        out
    }
}

/// Serves the admin endpoints on `listener` until the task is aborted.
pub async fn serve_http(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin port: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A timeout just drops a connection left open (a probe never needs long).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(error = %e, "admin port: connection failed");
            }
        });
    }
}

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/livez" => {
            if state.is_live() {
                text(StatusCode::OK, "ok\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("the Raft loop has not ticked for {STALL_AFTER:?}\n"))
            }
        }
        "/readyz" => {
            if state.is_ready() {
                text(StatusCode::OK, "ok\n".into())
            } else if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "starting: storage not yet recovered or RPC port not listening\n".into(),
                )
            }
        }
        "/metrics" => {
            let mut resp = text(StatusCode::OK, state.render_metrics());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /livez, /readyz or /metrics\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf.split(' ').nth(1).unwrap().parse().unwrap();
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }

    #[tokio::test]
    async fn probes_follow_the_state_and_metrics_are_prometheus_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AdminState::new();
        let server = tokio::spawn(serve_http(listener, state.clone()));

        assert_eq!(get(addr, "/livez").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        state.set_ready();
        assert_eq!(get(addr, "/readyz").await.0, 200, "ready without any leader");
        state.set_draining();
        assert_eq!(get(addr, "/readyz").await.0, 503);
        assert_eq!(get(addr, "/nope").await.0, 404);

        state.set_id(2);
        state.metrics.term.store(7, Ordering::Relaxed);
        state.metrics.role.store(role_code(Role::Leader), Ordering::Relaxed);
        state.metrics.proposals.store(3, Ordering::Relaxed);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        for line in ["raftkv_node_id 2", "raftkv_term 7", "raftkv_is_leader 1", "raftkv_proposals_total 3"] {
            assert!(body.lines().any(|l| l == line), "{line} missing in\n{body}");
        }
        assert!(body.contains("raftkv_role{role=\"leader\"} 1"));
        assert!(body.contains("raftkv_role{role=\"follower\"} 0"));
        // Every sample line is `name[{labels}] value` with a declared TYPE.
        for l in body.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let base = name.split('{').next().unwrap();
            assert!(body.contains(&format!("# TYPE {base} ")), "{base} has no TYPE");
        }
        server.abort();
    }

    #[test]
    fn liveness_fails_after_a_stall() {
        let state = AdminState::default();
        assert!(state.is_live(), "live before the loop starts");
        state.ticked();
        assert!(state.is_live());
        let Some(long_ago) = Instant::now().checked_sub(STALL_AFTER * 2) else { return };
        let old = AdminState { started: long_ago, ..AdminState::default() };
        old.last_tick_ms.store(1, Ordering::Relaxed);
        assert!(!old.is_live(), "no tick since the start, long ago");
    }
}
