//! [`Client`]: routing, retries and exactly-once writes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp, WriteResult};
use raftkv_raft::NodeId;
use raftkv_rpc::tarpc::client::RpcError;
use raftkv_rpc::tarpc::context::{self, Context};
use raftkv_rpc::{
    GetReply, HashKvReply, MemberChange, MemberChangeReply, MemberList, NodeStatus, RaftKvClient, ReadConsistency,
    RequestError, ScanReply, ScanStart, ServerInfo,
};
use tracing::{Instrument as _, debug};

use crate::backoff::Backoff;
use crate::error::ClientError;

/// Grace beyond an attempt's deadline before the client gives up waiting locally
/// (tarpc enforces the deadline itself; this only guards against a stuck transport).
const LOCAL_TIMEOUT_SLACK: Duration = Duration::from_millis(100);

/// How patient a [`Client`] is.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overall deadline of one operation, retries included.
    pub timeout: Duration,
    /// Deadline of one attempt (one RPC to one server).
    pub rpc_timeout: Duration,
    /// Deadline of opening a TCP connection (a dead address must not stall a retry).
    pub connect_timeout: Duration,
    /// First backoff delay after a failed attempt; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Deadline of one endpoint's answer in [`Client::status_all`].
    pub status_timeout: Duration,
    /// Mutual TLS to the servers (they must be started with TLS too); `None`: plaintext.
    pub tls: Option<raftkv_rpc::TlsConfig>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            status_timeout: Duration::from_secs(1),
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Default options with the given overall deadline (attempts and connects are
    /// bounded by the smaller of it and their default).
    pub fn with_timeout(timeout: Duration) -> Self {
        let d = ClientOptions::default();
        ClientOptions {
            timeout,
            rpc_timeout: d.rpc_timeout.min(timeout),
            connect_timeout: d.connect_timeout.min(timeout),
            status_timeout: d.status_timeout.min(timeout),
            ..d
        }
    }
}

/// A committed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Log index and term the write was committed at (the original ones when
    /// `duplicate`).
    pub index: u64,
    pub term: u64,
    /// The leader that answered.
    pub leader: NodeId,
    pub result: WriteResult,
    /// The server had already applied this `(client_id, seq)`: an earlier attempt
    /// went through, and this is its cached outcome.
    pub duplicate: bool,
    /// The endpoint that answered.
    pub endpoint: String,
    /// The request's sequence number.
    pub seq: u64,
}

impl WriteOutcome {
    /// For a cas: whether it swapped, and the value found when it did not.
    pub fn cas_result(&self) -> Option<(bool, Option<Bytes>)> {
        match &self.result {
            WriteResult::Cas { swapped, current } => Some((*swapped, current.clone())),
            _ => None,
        }
    }
}

/// Where a request may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Only the leader serves it; a success confirms the endpoint as leader.
    Leader,
    /// Any node may answer (stale reads).
    Any,
}

struct Routing {
    endpoints: Vec<String>,
    /// The endpoint believed to be the leader.
    leader: Option<String>,
    /// The next endpoint to try when no leader is known.
    cursor: usize,
    conns: HashMap<String, RaftKvClient>,
}

struct Writer {
    next_seq: u64,
    /// The last write, when its outcome is unknown: it may still be retried with
    /// the same seq until another write is issued.
    unknown: Option<Command>,
}

/// What one attempt yielded, when it did not succeed.
enum Failure {
    /// The node is not the leader; go to the hinted address, if any.
    NotLeader(Option<String>),
    /// Try again, elsewhere (the node is unreachable, unavailable or timed out).
    Elsewhere(String),
    /// Try again on the same node after backing off (it is overloaded).
    Same(String),
    /// Give up now.
    Fatal(ClientError),
}

/// A raftkv client. Cheap to share by reference: reads run concurrently, writes are
/// serialized (one outstanding write per client id). Create several clients for
/// concurrent writes.
pub struct Client {
    opts: ClientOptions,
    client_id: u64,
    routing: Mutex<Routing>,
    writer: tokio::sync::Mutex<Writer>,
}

impl Client {
    /// A client for the cluster reachable at `endpoints` (`host:port`, any members;
    /// it learns the leader's address from their answers).
    pub fn new(endpoints: Vec<String>, opts: ClientOptions) -> Result<Client, ClientError> {
        let mut eps: Vec<String> = Vec::new();
        for e in endpoints {
            let e = e.trim().to_string();
            if !e.is_empty() && !eps.contains(&e) {
                eps.push(e);
            }
        }
        if eps.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let cursor = rand::random_range(0..eps.len());
        Ok(Client {
            opts,
            client_id,
            routing: Mutex::new(Routing { endpoints: eps, leader: None, cursor, conns: HashMap::new() }),
            writer: tokio::sync::Mutex::new(Writer { next_seq: 0, unknown: None }),
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The known endpoints (the given ones plus any learned from leader hints).
    pub fn endpoints(&self) -> Vec<String> {
        self.routing().endpoints.clone()
    }

    /// The endpoint currently believed to be the leader.
    pub fn leader_endpoint(&self) -> Option<String> {
        self.routing().leader.clone()
    }

    // ---- writes -------------------------------------------------------------------

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<WriteOutcome, ClientError> {
        self.write(WriteOp::Put { key: key.into(), value: value.into() }).await
    }

    /// Removes `key` (a success whether or not it existed; see `result`).
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<WriteOutcome, ClientError> {
        self.write(WriteOp::Delete { key: key.into() }).await
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: if it is absent). The
    /// outcome's [`WriteOutcome::cas_result`] tells whether it swapped.
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<WriteOutcome, ClientError> {
        self.write(WriteOp::Cas { key: key.into(), expected, new: new.into() }).await
    }

    /// Performs one write, exactly once, with a new sequence number.
    ///
    /// Traced as one `kv.put` / `kv.delete` / `kv.cas` client span; the servers'
    /// spans join its trace through tarpc's request context.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, ClientError> {
        let span = write_span(&op, self.client_id, false);
        async {
            op.validate().map_err(|e| ClientError::Rejected(e.to_string()))?;
            let mut w = self.writer.lock().await;
            w.next_seq += 1;
            tracing::Span::current().record("seq", w.next_seq);
            let cmd = Command { client_id: self.client_id, seq: w.next_seq, op };
            w.unknown = None;
            let res = self.send_write(&cmd).await;
            if matches!(res, Err(ClientError::Unknown(_))) {
                w.unknown = Some(cmd);
            }
            res
        }
        .instrument(span.clone())
        .await
        .inspect(|o| record_write(&span, o))
        .inspect_err(|e| record_error(&span, e))
    }

    /// Retries the last write if its outcome was unknown, with the same sequence
    /// number (so it is applied at most once). `Ok(None)`: there is no such write
    /// (the last write succeeded or failed definitely, or none was made).
    pub async fn retry_unknown(&self) -> Result<Option<WriteOutcome>, ClientError> {
        let mut w = self.writer.lock().await;
        let Some(cmd) = w.unknown.clone() else { return Ok(None) };
        let span = write_span(&cmd.op, self.client_id, true);
        span.record("seq", cmd.seq);
        let res = self
            .send_write(&cmd)
            .instrument(span.clone())
            .await
            .inspect(|o| record_write(&span, o))
            .inspect_err(|e| record_error(&span, e));
        if !matches!(res, Err(ClientError::Unknown(_))) {
            w.unknown = None;
        }
        res.map(Some)
    }

    async fn send_write(&self, cmd: &Command) -> Result<WriteOutcome, ClientError> {
        let seq = cmd.seq;
        let (reply, endpoint) = self
            .call("write", true, Route::Leader, |c, ctx| {
                let cmd = cmd.clone();
                async move { c.write(ctx, cmd).await }
            })
            .await?;
        Ok(WriteOutcome {
            index: reply.index,
            term: reply.term,
            leader: reply.leader,
            result: reply.result,
            duplicate: reply.duplicate,
            endpoint,
            seq,
        })
    }

    // ---- reads --------------------------------------------------------------------

    /// The value of `key`, or `None` if absent. Linearizable unless `stale`.
    pub async fn get(&self, key: impl Into<Bytes>, stale: bool) -> Result<Option<Bytes>, ClientError> {
        Ok(self.get_meta(key, stale).await?.value)
    }

    /// Like [`get`](Self::get), with the index the read was served at and who served it.
    pub async fn get_meta(&self, key: impl Into<Bytes>, stale: bool) -> Result<GetReply, ClientError> {
        let key = key.into();
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.get",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            key = %key_text(&key),
            stale,
            found = tracing::field::Empty,
            index = tracing::field::Empty,
            node = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        async {
            raftkv_kv::validate_key(&key).map_err(|e| ClientError::Rejected(e.to_string()))?;
            let (consistency, route) = consistency(stale);
            let (reply, _) = self
                .call("get", false, route, |c, ctx| {
                    let key = key.clone();
                    async move { c.get(ctx, key, consistency).await }
                })
                .await?;
            Ok(reply)
        }
        .instrument(span.clone())
        .await
        .inspect(|r: &GetReply| {
            span.record("found", r.value.is_some());
            span.record("index", r.index);
            span.record("node", r.node);
        })
        .inspect_err(|e| record_error(&span, e))
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    pub async fn scan(&self, prefix: impl Into<Bytes>, limit: u32, stale: bool) -> Result<ScanReply, ClientError> {
        self.scan_page(prefix, ScanStart::First, limit, stale).await
    }

    /// One page of the pairs whose key starts with `prefix`, from `start` on, in key
    /// order: at most `limit` pairs (1 to [`raftkv_kv::MAX_SCAN_LIMIT`]), fewer once
    /// their bytes reach [`raftkv_kv::MAX_SCAN_BYTES`]. One read, linearizable unless
    /// `stale`. [`ScanPages`](crate::ScanPages) pages through a prefix of any size.
    pub async fn scan_page(
        &self,
        prefix: impl Into<Bytes>,
        start: ScanStart,
        limit: u32,
        stale: bool,
    ) -> Result<ScanReply, ClientError> {
        let prefix = prefix.into();
        raftkv_kv::validate_scan(&prefix, limit as usize).map_err(|e| ClientError::Rejected(e.to_string()))?;
        if let ScanStart::AtOrAfter(key) | ScanStart::After(key) = &start
            && key.len() > raftkv_kv::MAX_KEY_LEN
        {
            return Err(ClientError::Rejected(raftkv_kv::KvError::KeyTooLong { len: key.len() }.to_string()));
        }
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.scan",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            prefix = %key_text(&prefix),
            start = %start_text(&start),
            limit,
            stale,
            items = tracing::field::Empty,
            index = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let (consistency, route) = consistency(stale);
        let (reply, _) = self
            .call("scan", false, route, |c, ctx| {
                let (prefix, start) = (prefix.clone(), start.clone());
                async move {
                    match start {
                        // The first page through `scan`, which servers of every version serve.
                        ScanStart::First => c.scan(ctx, prefix, limit, consistency).await,
                        start => c.scan_page(ctx, prefix, start, limit, consistency).await,
                    }
                }
            })
            .instrument(span.clone())
            .await
            .inspect_err(|e| record_error(&span, e))?;
        span.record("items", reply.items.len() as u64);
        span.record("index", reply.index);
        Ok(reply)
    }

    /// Asks the leader to hand leadership to `target` (or to the most caught-up
    /// peer); returns the node leadership goes to.
    pub async fn transfer_leader(&self, target: Option<NodeId>) -> Result<NodeId, ClientError> {
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.transfer_leader",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            target = target.unwrap_or(0),
            new_leader = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let (id, _) = self
            .call("transfer_leader", false, Route::Leader, |c, ctx| async move { c.transfer_leader(ctx, target).await })
            .instrument(span.clone())
            .await
            .inspect_err(|e| record_error(&span, e))?;
        span.record("new_leader", id);
        Ok(id)
    }

    // ---- membership ---------------------------------------------------------------

    /// The configuration as the leader sees it (with its replication progress). A
    /// follower's view is only used to find the leader it names.
    pub async fn members(&self) -> Result<MemberList, ClientError> {
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.members",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            conf_index = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let (list, _) =
            self.call("members", false, Route::Leader, |c, ctx| async move {
                Ok(c.members(ctx).await?.and_then(leaders_view))
            })
            .instrument(span.clone())
            .await
            .inspect_err(|e| record_error(&span, e))?;
        span.record("conf_index", list.conf_index);
        Ok(list)
    }

    /// Asks the leader to change the configuration; returns once the change committed.
    ///
    /// Like a write, a change whose fate is not known by the deadline is
    /// [`ClientError::Unknown`]. Unlike writes, changes are not deduplicated: when an
    /// attempt may have been applied and a retry is then refused (e.g. "already
    /// removed"), the leader's member list tells whether the change is in effect
    /// (success), not (the refusal stands), or cannot be read (unknown). That read
    /// has its own deadline.
    pub async fn change_member(&self, change: MemberChange) -> Result<MemberChangeReply, ClientError> {
        let span = tracing::info_span!(
            "kv.request",
            otel.name = "kv.change_member",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            change = ?change,
            conf_index = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let doubt = Doubt::default();
        let res = self
            .call("membership change", true, Route::Leader, |c, ctx| {
                let (change, doubt) = (change.clone(), &doubt);
                async move {
                    doubt.attempt();
                    let reply = c.change_member(ctx, change).await;
                    doubt.settle(&reply);
                    reply
                }
            })
            .instrument(span.clone())
            .await;
        let res = match res {
            Err(ClientError::Rejected(m)) if doubt.before_last() => self.resolve_doubt(&change, m).await,
            other => other.map(|(reply, _)| reply),
        };
        res.inspect(|r| {
            span.record("conf_index", r.members.conf_index);
        })
        .inspect_err(|e| record_error(&span, e))
    }

    /// A retry of `change` was refused (`refusal`) after an earlier attempt may have
    /// been applied (e.g. "already removed" once the first attempt committed): the
    /// leader's member list tells whether the change is in effect.
    async fn resolve_doubt(&self, change: &MemberChange, refusal: String) -> Result<MemberChangeReply, ClientError> {
        let doubt = format!("a retry was refused ({refusal}) after an earlier attempt may have applied the change");
        let list = self.members().await.map_err(|e| {
            ClientError::Unknown(format!("{doubt}, and the member list could not be read to tell: {e}"))
        })?;
        match in_effect(change, &list) {
            Some(id) if list.committed => Ok(MemberChangeReply { id, members: list }),
            Some(_) => Err(ClientError::Unknown(format!("{doubt}; it is in the configuration, not committed yet"))),
            // Not in effect: the earlier attempt was not applied, and the refusal stands.
            None => Err(ClientError::Rejected(refusal)),
        }
    }

    // ---- status -------------------------------------------------------------------

    /// One endpoint's status, within [`ClientOptions::status_timeout`].
    pub async fn status(&self, endpoint: &str) -> Result<NodeStatus, ClientError> {
        self.ask(endpoint, self.opts.status_timeout, |c, ctx| async move { c.status(ctx).await }).await
    }

    /// One endpoint's version and git commit, within [`ClientOptions::status_timeout`].
    pub async fn server_info(&self, endpoint: &str) -> Result<ServerInfo, ClientError> {
        self.ask(endpoint, self.opts.status_timeout, |c, ctx| async move { c.server_info(ctx).await }).await
    }

    /// One endpoint's state machine digest once it has applied exactly `index` (it
    /// waits to get there, within [`ClientOptions::timeout`]); see
    /// [`RaftKvClient::hash_kv`] and [`Client::hash_kv_all`].
    pub async fn hash_kv(&self, endpoint: &str, index: u64) -> Result<HashKvReply, ClientError> {
        self.hash_kv_within(endpoint, index, self.opts.timeout).await
    }

    pub(crate) async fn hash_kv_within(
        &self,
        endpoint: &str,
        index: u64,
        timeout: Duration,
    ) -> Result<HashKvReply, ClientError> {
        let reply = self.ask(endpoint, timeout, |c, ctx| async move { c.hash_kv(ctx, index).await }).await?;
        reply.map_err(|e| match e {
            RequestError::Invalid(m) => ClientError::Rejected(format!("{endpoint}: {m}")),
            RequestError::Timeout => {
                ClientError::Unreachable(format!("{endpoint}: did not reach applied index {index} within {timeout:?}"))
            }
            e => ClientError::Unreachable(format!("{endpoint}: {e}")),
        })
    }

    /// One request to `endpoint` itself (no leader finding, no retry), within `timeout`.
    async fn ask<T, F, Fut>(&self, endpoint: &str, timeout: Duration, request: F) -> Result<T, ClientError>
    where
        F: FnOnce(RaftKvClient, Context) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let deadline = Instant::now() + timeout;
        let conn = self.connection(endpoint, deadline).await.map_err(ClientError::Unreachable)?;
        let mut ctx = context::current();
        ctx.deadline = deadline;
        let left = deadline.saturating_duration_since(Instant::now()) + LOCAL_TIMEOUT_SLACK;
        match tokio::time::timeout(left, request(conn, ctx)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.drop_connection(endpoint, &e);
                Err(ClientError::Unreachable(self.describe(endpoint, &e)))
            }
            Err(_) => Err(ClientError::Unreachable(format!("{endpoint}: no answer within {timeout:?}"))),
        }
    }

    /// Every known endpoint's status, queried concurrently, in endpoint order.
    pub async fn status_all(&self) -> Vec<(String, Result<NodeStatus, ClientError>)> {
        let eps = self.endpoints();
        let results = futures::future::join_all(eps.iter().map(|e| self.status(e))).await;
        eps.into_iter().zip(results).collect()
    }

    // ---- routing and retries ------------------------------------------------------

    fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        // A panic while holding this lock cannot leave the routing state invalid.
        self.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leader if known, else the next endpoint in turn.
    fn pick(&self) -> String {
        let r = self.routing();
        r.leader.clone().unwrap_or_else(|| r.endpoints[r.cursor % r.endpoints.len()].clone())
    }

    /// The attempt at `endpoint` failed: stop treating it as leader and move on.
    fn failed(&self, endpoint: &str) {
        let mut r = self.routing();
        if r.leader.as_deref() == Some(endpoint) {
            r.leader = None;
        }
        if let Some(i) = r.endpoints.iter().position(|e| e == endpoint) {
            r.cursor = i + 1;
        } else {
            r.cursor += 1;
        }
    }

    fn set_leader(&self, endpoint: &str) {
        let mut r = self.routing();
        if !r.endpoints.iter().any(|e| e == endpoint) {
            r.endpoints.push(endpoint.to_string());
        }
        r.leader = Some(endpoint.to_string());
    }

    async fn connection(&self, endpoint: &str, deadline: Instant) -> Result<RaftKvClient, String> {
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
    fn describe(&self, endpoint: &str, e: &RpcError) -> String {
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

    fn drop_connection(&self, endpoint: &str, e: &RpcError) {
        if !matches!(e, RpcError::DeadlineExceeded) {
            debug!(endpoint, error = %e, "dropping connection");
            self.routing().conns.remove(endpoint);
        }
    }

    /// Runs one request until it succeeds, fails definitely, or the deadline passes.
    /// Returns the reply and the endpoint that gave it.
    async fn call<T, F, Fut>(
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
        let deadline = start + self.opts.timeout;
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        let mut last_error = String::from("no attempt was made");
        let mut redirects = 0usize;
        let mut attempts = 0u32;
        loop {
            if Instant::now() >= deadline {
                let msg = format!(
                    "{op} did not complete within {:?} ({attempts} attempts; last error: {last_error})",
                    self.opts.timeout
                );
                return Err(if is_write { ClientError::Unknown(msg) } else { ClientError::NoLeader(msg) });
            }
            attempts += 1;
            let endpoint = self.pick();
            let failure = match self.connection(&endpoint, deadline).await {
                Err(e) => Failure::Elsewhere(e),
                Ok(conn) => {
                    let attempt_deadline = (Instant::now() + self.opts.rpc_timeout).min(deadline);
                    let mut ctx = context::current();
                    ctx.deadline = attempt_deadline;
                    let local = attempt_deadline.saturating_duration_since(Instant::now()) + LOCAL_TIMEOUT_SLACK;
                    match tokio::time::timeout(local, attempt(conn, ctx)).await {
                        Ok(Ok(Ok(v))) => {
                            if route == Route::Leader {
                                self.set_leader(&endpoint);
                            }
                            debug!(op, endpoint, attempts, elapsed = ?start.elapsed(), "ok");
                            return Ok((v, endpoint));
                        }
                        Ok(Ok(Err(e))) => classify(op, is_write, &endpoint, e),
                        Ok(Err(e)) => {
                            self.drop_connection(&endpoint, &e);
                            Failure::Elsewhere(self.describe(&endpoint, &e))
                        }
                        Err(_) => {
                            Failure::Elsewhere(format!("{endpoint}: no answer within {:?}", self.opts.rpc_timeout))
                        }
                    }
                }
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::NotLeader(Some(hint)) if hint != endpoint => {
                    debug!(op, endpoint, hint, "redirected to leader");
                    last_error = format!("{endpoint}: not the leader (hint: {hint})");
                    self.set_leader(&hint);
                    redirects += 1;
                    // Hints can be stale during an election; stop trusting them blindly
                    // after a round of redirects.
                    if redirects > self.endpoints().len() {
                        backoff.sleep(deadline).await;
                    }
                }
                Failure::NotLeader(_) => {
                    debug!(op, endpoint, "not the leader, no hint");
                    last_error = format!("{endpoint}: not the leader, leader unknown");
                    self.failed(&endpoint);
                    backoff.sleep(deadline).await;
                }
                Failure::Elsewhere(e) => {
                    debug!(op, endpoint, error = %e, "attempt failed");
                    last_error = e;
                    self.failed(&endpoint);
                    backoff.sleep(deadline).await;
                }
                Failure::Same(e) => {
                    debug!(op, endpoint, error = %e, "backing off");
                    last_error = e;
                    backoff.sleep(deadline).await;
                }
            }
        }
    }
}

/// A follower's member list, turned into the `NotLeader` redirect the retry loop
/// follows (to the leader's address in that list, if it knows one).
fn leaders_view(list: MemberList) -> Result<MemberList, RequestError> {
    if list.leader == Some(list.node) {
        return Ok(list);
    }
    let leader_addr = list.leader.and_then(|l| list.members.iter().find(|m| m.id == l)).map(|m| m.addr.clone());
    Err(RequestError::NotLeader { leader: list.leader, leader_addr })
}

/// The member `change` is about, if `list` shows it done: an added address is a
/// member (under the asked id, unless the leader was free to allocate one), a promoted
/// node a voter, a removed one among the removed.
fn in_effect(change: &MemberChange, list: &MemberList) -> Option<NodeId> {
    let member = |id: NodeId| list.members.iter().find(|m| m.id == id);
    match change {
        MemberChange::Add { id, addr, allocate_if_taken, .. } => list
            .members
            .iter()
            .find(|m| m.addr == *addr && (*allocate_if_taken || id.is_none_or(|id| id == m.id)))
            .map(|m| m.id),
        MemberChange::Promote { id } => member(*id).filter(|m| m.role == raftkv_rpc::MemberRole::Voter).map(|m| m.id),
        MemberChange::Remove { id } => list.removed.contains(id).then_some(*id),
    }
}

/// Whether a membership change may already have been applied by an earlier attempt.
#[derive(Default)]
struct Doubt {
    /// Some attempt so far may have been applied.
    any: AtomicBool,
    /// Some attempt before the latest one may have been applied.
    before_last: AtomicBool,
}

impl Doubt {
    /// An attempt is sent: in doubt until it gets a definite answer.
    fn attempt(&self) {
        let earlier = self.any.swap(true, Ordering::SeqCst);
        self.before_last.store(earlier, Ordering::SeqCst);
    }

    /// The attempt's answer. `NotLeader`, `Unavailable`, `Overloaded` and `Invalid`
    /// say the change was not applied (the protocol's contract); `Timeout`, a transport
    /// error or no answer leave it in doubt.
    fn settle<T>(&self, reply: &Result<Result<T, RequestError>, RpcError>) {
        use RequestError::{Invalid, NotLeader, Overloaded, Unavailable};
        if matches!(reply, Ok(Err(NotLeader { .. } | Unavailable(_) | Overloaded(_) | Invalid(_)))) {
            self.any.store(self.before_last.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    fn before_last(&self) -> bool {
        self.before_last.load(Ordering::SeqCst)
    }
}

fn consistency(stale: bool) -> (ReadConsistency, Route) {
    if stale { (ReadConsistency::Stale, Route::Any) } else { (ReadConsistency::Linearizable, Route::Leader) }
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

// ---- tracing ----------------------------------------------------------------------

/// The client span of one write: `kv.put`, `kv.delete` or `kv.cas` (the OpenTelemetry
/// name; the `tracing` name is `kv.request` for all of them).
fn write_span(op: &WriteOp, client_id: u64, retry: bool) -> tracing::Span {
    let (name, key) = match op {
        WriteOp::Put { key, .. } => ("kv.put", key),
        WriteOp::Delete { key } => ("kv.delete", key),
        WriteOp::Cas { key, .. } => ("kv.cas", key),
    };
    tracing::info_span!(
        "kv.request",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        key = %key_text(key),
        client_id,
        seq = tracing::field::Empty,
        retry,
        index = tracing::field::Empty,
        term = tracing::field::Empty,
        leader = tracing::field::Empty,
        endpoint = tracing::field::Empty,
        duplicate = tracing::field::Empty,
        error = tracing::field::Empty,
    )
}

fn record_write(span: &tracing::Span, o: &WriteOutcome) {
    span.record("index", o.index);
    span.record("term", o.term);
    span.record("leader", o.leader);
    span.record("endpoint", o.endpoint.as_str());
    span.record("duplicate", o.duplicate);
}

fn record_error(span: &tracing::Span, e: &ClientError) {
    span.record("otel.status_code", "ERROR");
    span.record("error", tracing::field::display(e));
}

/// Where a scan page starts, as span attribute.
fn start_text(start: &ScanStart) -> String {
    match start {
        ScanStart::First => "first".into(),
        ScanStart::AtOrAfter(key) => format!(">= {}", key_text(key)),
        ScanStart::After(key) => format!("> {}", key_text(key)),
    }
}

/// A key as span attribute: UTF-8 (lossy), at most 64 characters.
fn key_text(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    if text.chars().count() > 64 {
        format!("{}…", text.chars().take(64).collect::<String>())
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_requires_endpoints_and_dedups() {
        assert!(matches!(Client::new(vec![], ClientOptions::default()), Err(ClientError::Config(_))));
        let c = Client::new(vec!["a:1".into(), " a:1 ".into(), "b:2".into(), String::new()], ClientOptions::default())
            .unwrap();
        assert_eq!(c.endpoints(), vec!["a:1".to_string(), "b:2".to_string()]);
        assert_ne!(c.client_id(), 0);
    }

    #[tokio::test]
    async fn dead_endpoints_give_deadline_errors() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let opts = ClientOptions::with_timeout(Duration::from_millis(300));
        let c = Client::new(vec![addr], opts).unwrap();
        let start = Instant::now();
        let e = c.put("k", "v").await.unwrap_err();
        assert!(matches!(e, ClientError::Unknown(_)), "{e}");
        assert!(e.to_string().contains("may or may not have been applied"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        let e = c.get("k", false).await.unwrap_err();
        assert!(matches!(e, ClientError::NoLeader(_)), "{e}");
        // The unknown write is remembered for a same-seq retry.
        assert!(matches!(c.retry_unknown().await, Err(ClientError::Unknown(_))));
        let st = c.status_all().await;
        assert_eq!(st.len(), 1);
        assert!(st[0].1.is_err());
    }

    fn list(node: NodeId, leader: Option<NodeId>) -> MemberList {
        let member = |id: NodeId| raftkv_rpc::MemberInfo {
            id,
            addr: format!("10.0.0.{id}:6000"),
            role: raftkv_rpc::MemberRole::Voter,
            auto_promote: false,
            match_index: None,
        };
        MemberList {
            cluster_id: 9,
            node,
            leader,
            conf_index: 1,
            committed: true,
            members: vec![member(1), member(2)],
            removed: vec![],
        }
    }

    #[test]
    fn a_followers_member_list_redirects_to_its_leader() {
        assert_eq!(leaders_view(list(1, Some(1))), Ok(list(1, Some(1))));
        let hint = |e| match e {
            Err(RequestError::NotLeader { leader, leader_addr }) => (leader, leader_addr),
            other => panic!("not a redirect: {other:?}"),
        };
        assert_eq!(hint(leaders_view(list(2, Some(1)))), (Some(1), Some("10.0.0.1:6000".into())));
        assert_eq!(hint(leaders_view(list(2, None))), (None, None));
        // A leader missing from the list: no address to go to.
        assert_eq!(hint(leaders_view(list(2, Some(7)))), (Some(7), None));
    }

    #[test]
    fn a_change_is_in_effect_when_the_list_shows_it() {
        let mut l = list(1, Some(1));
        l.members[1].role = raftkv_rpc::MemberRole::Learner;
        l.removed = vec![3];
        let add = |id, addr: &str, allocate_if_taken| MemberChange::Add {
            id,
            addr: addr.into(),
            auto_promote: true,
            allocate_if_taken,
        };
        assert_eq!(in_effect(&add(Some(2), "10.0.0.2:6000", false), &l), Some(2));
        assert_eq!(in_effect(&add(None, "10.0.0.2:6000", false), &l), Some(2));
        assert_eq!(in_effect(&add(Some(4), "10.0.0.2:6000", true), &l), Some(2));
        // Another id at that address, or nobody at it: not this change.
        assert_eq!(in_effect(&add(Some(4), "10.0.0.2:6000", false), &l), None);
        assert_eq!(in_effect(&add(Some(2), "10.0.0.9:6000", false), &l), None);
        assert_eq!(in_effect(&MemberChange::Promote { id: 1 }, &l), Some(1));
        assert_eq!(in_effect(&MemberChange::Promote { id: 2 }, &l), None);
        assert_eq!(in_effect(&MemberChange::Remove { id: 3 }, &l), Some(3));
        assert_eq!(in_effect(&MemberChange::Remove { id: 2 }, &l), None);
    }

    #[test]
    fn a_change_is_in_doubt_once_an_attempt_may_have_been_applied() {
        type Reply = Result<Result<(), RequestError>, RpcError>;
        let not_leader: Reply = Ok(Err(RequestError::NotLeader { leader: None, leader_addr: None }));
        let timeout: Reply = Ok(Err(RequestError::Timeout));
        let invalid: Reply = Ok(Err(RequestError::Invalid("already a member".into())));
        let unavailable: Reply = Ok(Err(RequestError::Unavailable("conf change pending".into())));

        // Definite refusals leave no doubt.
        let d = Doubt::default();
        for reply in [&not_leader, &unavailable, &invalid] {
            d.attempt();
            d.settle(reply);
        }
        d.attempt();
        assert!(!d.before_last());

        // A server timeout (or an attempt abandoned without an answer) may have applied it.
        let d = Doubt::default();
        d.attempt();
        d.settle(&timeout);
        d.attempt();
        d.settle(&not_leader);
        d.attempt();
        assert!(d.before_last(), "the doubt of the first attempt must survive a later NotLeader");
        let d = Doubt::default();
        d.attempt(); // dropped on a local timeout: never settled
        d.attempt();
        assert!(d.before_last());
    }

    #[tokio::test]
    async fn invalid_requests_are_rejected_locally() {
        let c =
            Client::new(vec!["127.0.0.1:1".into()], ClientOptions::with_timeout(Duration::from_millis(100))).unwrap();
        assert!(matches!(c.put("", "v").await, Err(ClientError::Rejected(_))));
        assert!(matches!(c.scan("p", 0, false).await, Err(ClientError::Rejected(_))));
        assert!(matches!(c.retry_unknown().await, Ok(None)));
    }
}
