//! [`Client`]: routing, retries and exactly-once writes.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp, WriteResult};
use raftkv_raft::NodeId;
use raftkv_rpc::{GetReply, ReadConsistency, ScanReply, ScanStart};
use tracing::Instrument as _;

use crate::error::ClientError;
use crate::routing::{Route, Routing};
use crate::spans::{key_text, record_error, record_write, start_text, write_span};

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
    /// Only ever send to the given endpoints, never to a leader address learned from
    /// replies (they forward to the leader): for clients that must use one route, such
    /// as a load balancer's address.
    pub stay_on_endpoints: bool,
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
            stay_on_endpoints: false,
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

struct Writer {
    next_seq: u64,
    /// The last write, when its outcome is unknown: it may still be retried with
    /// the same seq until another write is issued.
    unknown: Option<Command>,
}

/// A raftkv client. Cheap to share by reference: reads run concurrently, writes are
/// serialized (one outstanding write per client id). Create several clients for
/// concurrent writes.
pub struct Client {
    pub(crate) opts: ClientOptions,
    client_id: u64,
    pub(crate) routing: Mutex<Routing>,
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
            routing: Mutex::new(Routing::new(eps, cursor)),
            writer: tokio::sync::Mutex::new(Writer { next_seq: 0, unknown: None }),
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The endpoints the client was given.
    pub fn endpoints(&self) -> Vec<String> {
        self.routing().endpoints.clone()
    }

    /// Where requests for the leader go now: the leader's address, or an endpoint
    /// that forwards to it.
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
        self.learn_route(&endpoint, reply.forwarded.as_ref());
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
            let (reply, endpoint) = self
                .call("get", false, route, |c, ctx| {
                    let key = key.clone();
                    async move { c.get(ctx, key, consistency).await }
                })
                .await?;
            self.learn_route(&endpoint, reply.forwarded.as_ref());
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
        let (reply, endpoint) = self
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
        self.learn_route(&endpoint, reply.forwarded.as_ref());
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
}

fn consistency(stale: bool) -> (ReadConsistency, Route) {
    if stale { (ReadConsistency::Stale, Route::Any) } else { (ReadConsistency::Linearizable, Route::Leader) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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

    #[tokio::test]
    async fn invalid_requests_are_rejected_locally() {
        let c =
            Client::new(vec!["127.0.0.1:1".into()], ClientOptions::with_timeout(Duration::from_millis(100))).unwrap();
        assert!(matches!(c.put("", "v").await, Err(ClientError::Rejected(_))));
        assert!(matches!(c.scan("p", 0, false).await, Err(ClientError::Rejected(_))));
        assert!(matches!(c.retry_unknown().await, Ok(None)));
    }
}
