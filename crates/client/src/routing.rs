//! How a [`Client`] picks the node for each attempt and retries: the leader when it
//! knows one it can reach, else the endpoints in turn; connections are cached per
//! address.
//!
//! Servers forward what a follower cannot serve, so any endpoint that answers will
//! do. A reply that a follower forwarded names the leader's address: the client goes
//! there directly next time (one hop fewer), unless it failed to connect to that
//! address lately (a name only the cluster resolves, behind a port-forward, NAT or
//! load balancer), in which case it stays on the endpoint that answers.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use raftkv_rpc::tarpc::client::RpcError;
use raftkv_rpc::tarpc::context::{self, Context};
use raftkv_rpc::{Forwarded, RaftKvClient, RequestError};
use tracing::debug;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::ClientError;

/// Grace beyond an attempt's deadline before the client gives up waiting locally
/// (tarpc enforces the deadline itself; this only guards against a stuck transport).
pub(crate) const LOCAL_TIMEOUT_SLACK: Duration = Duration::from_millis(100);

/// How long a learned leader address that could not be reached is not tried again.
pub(crate) const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// Where a request may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The leader serves it (a follower forwards it there); a direct success confirms
    /// the endpoint as the one to use.
    Leader,
    /// Any node may answer (stale reads).
    Any,
}

pub(crate) struct Routing {
    /// The endpoints the client was given (never grows).
    pub endpoints: Vec<String>,
    /// Where requests for the leader go: the leader's address, or an endpoint that
    /// forwards to it.
    pub leader: Option<String>,
    /// The next endpoint to try when no leader is known.
    pub cursor: usize,
    pub conns: HashMap<String, RaftKvClient>,
    /// Learned leader addresses that could not be connected to, and when.
    pub unreachable: HashMap<String, Instant>,
}

impl Routing {
    pub fn new(endpoints: Vec<String>, cursor: usize) -> Routing {
        Routing { endpoints, leader: None, cursor, conns: HashMap::new(), unreachable: HashMap::new() }
    }

    /// `addr` failed to connect lately and is not one of the given endpoints.
    fn avoided(&self, addr: &str) -> bool {
        self.unreachable.get(addr).is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
    }
}

/// What one attempt yielded, when it did not succeed.
enum Failure {
    /// The node is not the leader; go to the hinted address, if any.
    NotLeader(Option<String>),
    /// Try again, elsewhere (the node is unreachable, unavailable or timed out).
    Elsewhere(String),
    /// The connection to this address could not be made.
    NoConnection(String),
    /// Try again on the same node after backing off (it is overloaded).
    Same(String),
    /// Give up now.
    Fatal(ClientError),
}

/// One request's retry state.
struct Attempts {
    op: &'static str,
    is_write: bool,
    deadline: Instant,
    backoff: Backoff,
    last_error: String,
    redirects: usize,
    count: u32,
}

impl Client {
    pub(crate) fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        // A panic while holding this lock cannot leave the routing state invalid.
        self.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leader if known, else the next endpoint in turn.
    fn pick(&self) -> String {
        let r = self.routing();
        r.leader.clone().unwrap_or_else(|| r.endpoints[r.cursor % r.endpoints.len()].clone())
    }

    /// The attempt at `endpoint` failed: stop sending there and move on.
    fn failed(&self, endpoint: &str) {
        let mut r = self.routing();
        if r.leader.as_deref() == Some(endpoint) {
            r.leader = None;
        }
        if let Some(i) = r.endpoints.iter().position(|e| e == endpoint) {
            r.cursor = i + 1;
        }
    }

    /// `endpoint` could not be connected to: if it was learned (not given), it is
    /// not tried as the leader again for [`UNREACHABLE_FOR`].
    fn unreachable(&self, endpoint: &str) {
        let mut r = self.routing();
        if !r.endpoints.iter().any(|e| e == endpoint) {
            r.unreachable.insert(endpoint.to_string(), Instant::now());
        }
    }

    /// Sends requests for the leader to `addr` from now on, unless it could not be
    /// reached lately.
    fn set_leader(&self, addr: &str) -> bool {
        let stay = self.opts.stay_on_endpoints;
        let mut r = self.routing();
        if r.avoided(addr) || (stay && !r.endpoints.iter().any(|e| e == addr)) {
            return false;
        }
        r.leader = Some(addr.to_string());
        true
    }

    /// A reply came from `endpoint`, forwarded (or not) to the leader: go to the
    /// leader directly next time if it can be reached.
    pub(crate) fn learn_route(&self, endpoint: &str, forwarded: Option<&Forwarded>) {
        if let Some(f) = forwarded
            && f.leader_addr != endpoint
            && self.set_leader(&f.leader_addr)
        {
            debug!(endpoint, leader = f.leader, leader_addr = f.leader_addr, "going to the leader directly");
        }
    }

    pub(crate) async fn connection(&self, endpoint: &str, deadline: Instant) -> Result<RaftKvClient, String> {
        if let Some(c) = self.routing().conns.get(endpoint) {
            return Ok(c.clone());
        }
        let limit = self.opts.connect_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let c = match tokio::time::timeout(limit, raftkv_rpc::connect_with(endpoint, self.opts.tls.as_ref())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("{endpoint}: cannot connect: {e}")),
            Err(_) => return Err(format!("{endpoint}: cannot connect within {limit:?}")),
        };
        debug!(endpoint, "connected");
        self.routing().conns.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    /// A failed RPC, with a hint when the connection itself broke: the usual cause of
    /// that right after connecting is a TLS mismatch (the server refusing our
    /// certificate, or requiring TLS from a plaintext client).
    pub(crate) fn describe(&self, endpoint: &str, e: &RpcError) -> String {
        if matches!(e, RpcError::DeadlineExceeded | RpcError::Server(_)) {
            return format!("{endpoint}: {e}");
        }
        let hint = if self.opts.tls.is_some() {
            "if this persists, the server may refuse our TLS certificate: is --tls-cert signed by the cluster's CA?"
        } else {
            "if this persists, the server may require TLS: give --tls-cert, --tls-key and --tls-ca"
        };
        format!("{endpoint}: {e} ({hint})")
    }

    pub(crate) fn drop_connection(&self, endpoint: &str, e: &RpcError) {
        if !matches!(e, RpcError::DeadlineExceeded) {
            debug!(endpoint, error = %e, "dropping connection");
            self.routing().conns.remove(endpoint);
        }
    }

    /// Runs one request until it succeeds, fails definitely, or the deadline passes.
    /// Returns the reply and the endpoint that gave it.
    /// Runs one request until it succeeds, fails definitely, or the deadline passes.
    /// Returns the reply and the endpoint that gave it.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        is_write: bool,
        route: Route,
        mut attempt: F,
    ) -> Result<(T, String), ClientError>
    where
        F: FnMut(RaftKvClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, RequestError>, RpcError>>,
    {
        let start = Instant::now();
        let mut a = Attempts {
            op,
            is_write,
            deadline: start + self.opts.timeout,
            backoff: Backoff::new(self.opts.backoff_min, self.opts.backoff_max),
            last_error: String::from("no attempt was made"),
            redirects: 0,
            count: 0,
        };
        loop {
            if Instant::now() >= a.deadline {
                return Err(self.gave_up(&a));
            }
            a.count += 1;
            let endpoint = self.pick();
            match self.attempt_once(&endpoint, &a, &mut attempt).await {
                Ok(v) => {
                    if route == Route::Leader {
                        self.set_leader(&endpoint);
                    }
                    debug!(op, endpoint, attempts = a.count, elapsed = ?start.elapsed(), "ok");
                    return Ok((v, endpoint));
                }
                Err(failure) => self.after_failure(&endpoint, failure, &mut a).await?,
            }
        }
    }

    fn gave_up(&self, a: &Attempts) -> ClientError {
        let msg = format!(
            "{} did not complete within {:?} ({} attempts; last error: {})",
            a.op, self.opts.timeout, a.count, a.last_error
        );
        if a.is_write { ClientError::Unknown(msg) } else { ClientError::NoLeader(msg) }
    }

    /// One RPC to `endpoint`, within the attempt's deadline.
    async fn attempt_once<T, F, Fut>(&self, endpoint: &str, a: &Attempts, attempt: &mut F) -> Result<T, Failure>
    where
        F: FnMut(RaftKvClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, RequestError>, RpcError>>,
    {
        let conn = self.connection(endpoint, a.deadline).await.map_err(Failure::NoConnection)?;
        let attempt_deadline = (Instant::now() + self.opts.rpc_timeout).min(a.deadline);
        let mut ctx = context::current();
        ctx.deadline = attempt_deadline;
        let local = attempt_deadline.saturating_duration_since(Instant::now()) + LOCAL_TIMEOUT_SLACK;
        match tokio::time::timeout(local, attempt(conn, ctx)).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(classify(a.op, a.is_write, endpoint, e)),
            Ok(Err(e)) => {
                self.drop_connection(endpoint, &e);
                Err(Failure::Elsewhere(self.describe(endpoint, &e)))
            }
            Err(_) => Err(Failure::Elsewhere(format!("{endpoint}: no answer within {:?}", self.opts.rpc_timeout))),
        }
    }

    /// Decides where the next attempt goes (and waits before it when the cluster
    /// needs time); `Err` ends the request.
    async fn after_failure(&self, endpoint: &str, failure: Failure, a: &mut Attempts) -> Result<(), ClientError> {
        let op = a.op;
        match failure {
            Failure::Fatal(e) => return Err(e),
            Failure::NotLeader(Some(hint)) if hint != endpoint && self.set_leader(&hint) => {
                debug!(op, endpoint, hint, "redirected to leader");
                a.last_error = format!("{endpoint}: not the leader (hint: {hint})");
                a.redirects += 1;
                // Hints can be stale during an election; stop trusting them blindly
                // after a round of redirects.
                if a.redirects > self.endpoints().len() {
                    a.backoff.sleep(a.deadline).await;
                }
            }
            Failure::NotLeader(_) => {
                debug!(op, endpoint, "not the leader, no usable hint");
                a.last_error = format!("{endpoint}: not the leader, leader unknown or unreachable");
                self.failed(endpoint);
                a.backoff.sleep(a.deadline).await;
            }
            Failure::NoConnection(e) => {
                debug!(op, endpoint, error = %e, "cannot connect");
                a.last_error = e;
                self.unreachable(endpoint);
                self.failed(endpoint);
                // A learned address that failed: an endpoint is tried at once.
                if self.routing().endpoints.iter().any(|x| x == endpoint) {
                    a.backoff.sleep(a.deadline).await;
                }
            }
            Failure::Elsewhere(e) => {
                debug!(op, endpoint, error = %e, "attempt failed");
                a.last_error = e;
                self.failed(endpoint);
                a.backoff.sleep(a.deadline).await;
            }
            Failure::Same(e) => {
                debug!(op, endpoint, error = %e, "backing off");
                a.last_error = e;
                a.backoff.sleep(a.deadline).await;
            }
        }
        Ok(())
    }
}

fn classify(op: &str, is_write: bool, endpoint: &str, e: RequestError) -> Failure {
    match e {
        RequestError::NotLeader { leader_addr, .. } => Failure::NotLeader(leader_addr),
        RequestError::Timeout => Failure::Elsewhere(format!("{endpoint}: {op} timed out on the server")),
        RequestError::Unavailable(m) => Failure::Elsewhere(format!("{endpoint}: unavailable: {m}")),
        RequestError::Overloaded(m) => Failure::Same(format!("{endpoint}: overloaded: {m}")),
        RequestError::Invalid(m) => Failure::Fatal(ClientError::Rejected(m)),
        // Retrying a write with the same seq is safe, and its outcome is not known.
        RequestError::Internal(m) if is_write => Failure::Elsewhere(format!("{endpoint}: server error: {m}")),
        RequestError::Internal(m) => Failure::Fatal(ClientError::Server(format!("{endpoint}: {m}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientOptions;

    fn forwarded(addr: &str) -> Forwarded {
        Forwarded { via: 2, leader: 1, leader_addr: addr.into() }
    }

    #[test]
    fn a_forwarded_reply_sends_the_next_request_to_the_leader_unless_it_was_unreachable() {
        let c = Client::new(vec!["127.0.0.1:6001".into()], ClientOptions::default()).unwrap();
        c.learn_route("127.0.0.1:6001", None);
        assert_eq!(c.leader_endpoint(), None, "a direct answer teaches nothing");
        c.learn_route("127.0.0.1:6001", Some(&forwarded("raft-1.raft-service:6000")));
        assert_eq!(c.leader_endpoint().as_deref(), Some("raft-1.raft-service:6000"));
        // It cannot be reached: the endpoint that answered is used, and the learned
        // address is not tried again for a while.
        c.unreachable("raft-1.raft-service:6000");
        c.failed("raft-1.raft-service:6000");
        assert_eq!(c.leader_endpoint(), None);
        assert_eq!(c.pick(), "127.0.0.1:6001");
        c.learn_route("127.0.0.1:6001", Some(&forwarded("raft-1.raft-service:6000")));
        assert_eq!(c.leader_endpoint(), None);
        assert_eq!(c.endpoints(), vec!["127.0.0.1:6001".to_string()], "learned addresses are not endpoints");
        // A given endpoint is never avoided.
        c.unreachable("127.0.0.1:6001");
        assert!(c.set_leader("127.0.0.1:6001"));
    }

    #[test]
    fn a_client_told_to_stay_on_its_endpoints_never_goes_elsewhere() {
        let opts = ClientOptions { stay_on_endpoints: true, ..ClientOptions::default() };
        let c = Client::new(vec!["127.0.0.1:6001".into()], opts).unwrap();
        c.learn_route("127.0.0.1:6001", Some(&forwarded("127.0.0.1:6002")));
        assert_eq!(c.leader_endpoint(), None);
        assert!(!c.set_leader("127.0.0.1:6002"), "nor to a NotLeader hint");
        assert_eq!(c.pick(), "127.0.0.1:6001");
    }
}
