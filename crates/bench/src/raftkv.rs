//! The raftkv backend: raw RPC connections to the leader (found once, before the run),
//! or with `--via-follower` to one follower that forwards to it, and one exactly-once
//! session (client id, sequence numbers) per benchmark client.
//!
//! It uses the wire protocol directly rather than [`raftkv_client::Client`]: a `Client`
//! owns its connections and serializes its writes, whereas here many clients share
//! few connections. Unless `--batch-in-flight 0`, the clients of one connection send
//! their writes and linearizable reads through a [`BatchingConnection`], in `batch`
//! RPCs. There are no retries: a failed operation is an error in the report (a
//! benchmark of a healthy cluster expects none).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use raftkv_client::{BatchingConnection, Client, ClientOptions};
use raftkv_kv::{Command, WriteOp};
use raftkv_rpc::tarpc::context;
use raftkv_rpc::{BatchOp, BatchOpReply, RaftKvClient, ReadConsistency};

use crate::Backend;

/// How long to wait for a leader before the run.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RaftKvBackend {
    endpoints: Vec<String>,
    leader: String,
    /// Where writes and linearizable reads go: the leader, or a follower.
    target: String,
    tls: Option<raftkv_rpc::TlsConfig>,
    /// Batch RPCs in flight per connection; 0: no batching.
    batch_in_flight: usize,
}

impl RaftKvBackend {
    /// Finds the leader among `endpoints` (waiting up to 20 s for one), and with
    /// `via_follower` a follower among them to send to instead. `tls`: mutual TLS to
    /// the servers, if they use it. `batch_in_flight`: see
    /// [`crate::BenchArgs::batch_in_flight`].
    pub async fn new(
        endpoints: Vec<String>,
        tls: Option<raftkv_rpc::TlsConfig>,
        via_follower: bool,
        batch_in_flight: usize,
    ) -> anyhow::Result<RaftKvBackend> {
        let opts = ClientOptions { tls: tls.clone(), ..ClientOptions::with_timeout(Duration::from_secs(2)) };
        let client = Client::new(endpoints.clone(), opts)?;
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let statuses = client.status_all().await;
            let leader = statuses
                .iter()
                .filter_map(|(ep, s)| s.as_ref().ok().map(|s| (ep, s)))
                .filter(|(_, s)| raftkv_client::local::is_leader(s))
                .max_by_key(|(_, s)| s.term);
            if let Some((ep, status)) = leader {
                let follower = statuses
                    .iter()
                    .find(|(_, s)| s.as_ref().is_ok_and(|s| s.leader == Some(status.id) && s.id != status.id));
                let target = match (via_follower, follower) {
                    (false, _) => ep.clone(),
                    (true, Some((f, _))) => f.clone(),
                    (true, None) => bail!("--via-follower: no follower among {endpoints:?} follows the leader {ep}"),
                };
                let endpoints = client.endpoints();
                return Ok(RaftKvBackend { endpoints, leader: ep.clone(), target, tls, batch_in_flight });
            }
            if Instant::now() >= deadline {
                bail!("no leader among {endpoints:?} within {LEADER_TIMEOUT:?}: {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn leader(&self) -> &str {
        &self.leader
    }

    /// Where writes and linearizable reads go.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// One benchmark client's exactly-once session.
pub struct Session {
    client_id: u64,
    seq: u64,
}

/// A connection to the target (the leader, or a follower that forwards), and (for
/// stale reads) one to some node.
#[derive(Clone)]
pub struct Conn {
    target: RaftKvClient,
    reads: RaftKvClient,
    /// Over `target`, when batching.
    batching: Option<BatchingConnection>,
}

fn ctx(timeout: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + timeout;
    ctx
}

impl Backend for RaftKvBackend {
    type Conn = Conn;
    type Session = Session;

    fn name(&self) -> &'static str {
        if self.target == self.leader { "raftkv" } else { "raftkv via a follower" }
    }

    async fn connect(&self, index: usize, _count: usize, stale_reads: bool) -> anyhow::Result<Conn> {
        let target = raftkv_rpc::connect_with(&self.target, self.tls.as_ref())
            .await
            .with_context(|| format!("connect to {}", self.target))?;
        let reads = if stale_reads {
            let ep = &self.endpoints[index % self.endpoints.len()];
            raftkv_rpc::connect_with(ep, self.tls.as_ref()).await.with_context(|| format!("connect to {ep}"))?
        } else {
            target.clone()
        };
        let batching =
            (self.batch_in_flight > 0).then(|| BatchingConnection::new(target.clone(), self.batch_in_flight));
        Ok(Conn { target, reads, batching })
    }

    fn session(&self, _index: usize) -> Session {
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Session { client_id, seq: 0 }
    }

    async fn put(
        &self,
        conn: &Conn,
        session: &mut Session,
        key: Bytes,
        value: Bytes,
        timeout: Duration,
    ) -> Result<(), String> {
        session.seq += 1;
        let cmd = Command { client_id: session.client_id, seq: session.seq, op: WriteOp::Put { key, value } };
        if let Some(b) = &conn.batching {
            return match b.call(BatchOp::Write(cmd), timeout).await {
                Ok(BatchOpReply::Write(_)) => Ok(()),
                Ok(other) => Err(format!("a write was answered with {other:?}")),
                Err(e) => Err(e.to_string()),
            };
        }
        match conn.target.write(ctx(timeout), cmd).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("rpc: {e}")),
        }
    }

    fn batches(conn: &Conn) -> Option<raftkv_client::BatchStats> {
        conn.batching.as_ref().map(BatchingConnection::stats)
    }

    async fn get(
        &self,
        conn: &Conn,
        _session: &mut Session,
        key: Bytes,
        stale: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        if let (false, Some(b)) = (stale, &conn.batching) {
            return match b.call(BatchOp::Get { key, consistency: ReadConsistency::Linearizable }, timeout).await {
                Ok(BatchOpReply::Get(_)) => Ok(()),
                Ok(other) => Err(format!("a get was answered with {other:?}")),
                Err(e) => Err(e.to_string()),
            };
        }
        let (c, consistency) =
            if stale { (&conn.reads, ReadConsistency::Stale) } else { (&conn.target, ReadConsistency::Linearizable) };
        match c.get(ctx(timeout), key, consistency).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("rpc: {e}")),
        }
    }
}
