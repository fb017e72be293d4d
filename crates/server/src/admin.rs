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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::NodeMetrics;

/// `/livez` fails when the Raft loop has not ticked for this long.
pub const STALL_AFTER: Duration = Duration::from_secs(30);
/// A connection open longer than this is dropped (probes and scrapes take milliseconds).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the admin port reports, shared by the node (which updates it) and the HTTP
/// server (which reads it). All updates are relaxed atomic stores.
#[derive(Debug)]
pub struct AdminState {
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since `started` of the last tick, plus one (0: the loop has not run).
    last_tick_ms: AtomicU64,
    pub(crate) metrics: Arc<NodeMetrics>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(0),
            metrics: Arc::new(NodeMetrics::default()),
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

    /// The node knows its id: the metrics are exposed from now on, labelled with it.
    pub(crate) fn set_id(&self, id: u64) {
        self.metrics.register(id);
    }

    /// Storage is recovered and the RPC port listens.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
        self.metrics.ready.set(i64::from(self.is_ready()));
    }

    /// Shutdown began: no longer ready.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.ready.set(0);
    }

    pub(crate) fn ticked(&self) {
        self.last_tick_ms.store(self.elapsed_ms() + 1, Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The Prometheus text exposition of the current values.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
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

        let (code, early) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(!early.contains("raftkv_term"), "no node metrics before the node knows its id:\n{early}");
        state.set_id(2);
        state.metrics.term.set(7);
        state.metrics.set_role(raftkv_raft::Role::Leader);
        state.metrics.proposals.inc_by(3);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        for line in [
            "raftkv_term{server_id=\"2\"} 7",
            "raftkv_is_leader{server_id=\"2\"} 1",
            "raftkv_proposals_total{server_id=\"2\"} 3",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} missing in\n{body}");
        }
        assert!(body.contains("raftkv_role{server_id=\"2\",role=\"leader\"} 1"), "{body}");
        assert!(body.contains("raftkv_role{server_id=\"2\",role=\"follower\"} 0"), "{body}");
        assert!(body.contains("raftkv_build_info{server_id=\"2\",version=\""), "{body}");
        // Every sample line is `name[{labels}] value` with a declared TYPE.
        for l in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap_or_else(|e| panic!("{l}: {e}"));
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"].iter().fold(base, |b, s| b.strip_suffix(s).unwrap_or(b));
            assert!(
                body.contains(&format!("# TYPE {base} ")) || body.contains(&format!("# TYPE {family} ")),
                "{base} has no TYPE"
            );
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
