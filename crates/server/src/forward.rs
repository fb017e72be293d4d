//! Any node serves every client request. What a follower cannot serve itself (a
//! write, a linearizable read, a membership command) it passes to the leader with the
//! [`RaftKv::forward`] RPC and answers the client itself, so a client that reaches one
//! node never needs another address (a port-forward, a load balancer, a NAT).
//!
//! Bounds: at most [`MAX_FORWARDED`] requests are being forwarded by a node at once
//! (more are refused as overloaded, never queued); each waits at most for its client's
//! deadline. A forwarded request takes one hop: the receiver serves it only if it
//! leads. Exactly-once holds across forwarding because a write keeps its client id and
//! sequence number, so a retry through another node is recognised by the state
//! machine.
//!
//! The connection to the leader is the forwarder's own, kept per address: a
//! follower's Raft link to its leader is often not connected at all (its replies ride
//! back on the leader's RPCs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_raft::NodeId;
use raftkv_rpc::tarpc::context::{self, Context};
use raftkv_rpc::{
    ForwardReply, ForwardRequest, Forwarded, MemberStatus, RaftKvClient, ReadConsistency, RequestError, TlsConfig,
};
use raftkv_telemetry::OpenTelemetrySpanExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::raft_loop::{ReadOp, Request};
use crate::service::{MAX_WAIT, Service, wait, wait_write};

/// Requests a node forwards at once; the next is refused as overloaded.
pub(crate) const MAX_FORWARDED: usize = 512;
/// Bound on connecting to the leader (within the request's deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Waits between attempts while the leader changes.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Bound on asking one member for `cluster_status`.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The connections a node forwards over and the bound on requests in flight.
pub(crate) struct Forwarder {
    cluster_id: u64,
    tls: Option<TlsConfig>,
    conns: Mutex<HashMap<String, RaftKvClient>>,
    permits: Arc<Semaphore>,
}

impl Forwarder {
    pub fn new(cluster_id: u64, tls: Option<TlsConfig>) -> Forwarder {
        Forwarder { cluster_id, tls, conns: Mutex::default(), permits: Arc::new(Semaphore::new(MAX_FORWARDED)) }
    }

    fn permit(&self, node: NodeId) -> Result<OwnedSemaphorePermit, RequestError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            RequestError::Overloaded(format!(
                "node {node} is already forwarding {MAX_FORWARDED} requests to the leader (the limit); retry later"
            ))
        })
    }

    /// A connection to `addr`: the cached one, or a new one made within `deadline`.
    pub async fn connection(&self, addr: &str, deadline: Instant) -> Result<RaftKvClient, String> {
        if let Some(c) = self.conns.lock().ok().and_then(|c| c.get(addr).cloned()) {
            return Ok(c);
        }
        let limit = CONNECT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let conn = match tokio::time::timeout(limit, raftkv_rpc::connect_with(addr, self.tls.as_ref())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {e}")),
            Err(_) => return Err(format!("cannot connect to {addr} within {limit:?}")),
        };
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(addr.to_string(), conn.clone());
        }
        Ok(conn)
    }

    fn drop_connection(&self, addr: &str) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(addr);
        }
    }

    /// One attempt: `request` to the leader at `addr`, within `deadline`.
    async fn send(&self, addr: &str, deadline: Instant, request: ForwardRequest) -> Attempt {
        let conn = match self.connection(addr, deadline).await {
            Ok(c) => c,
            Err(e) => return Attempt::Retry(e),
        };
        let mut ctx = context::current();
        ctx.deadline = deadline.into_std();
        match conn.forward(ctx, self.cluster_id, request).await {
            Ok(Ok(reply)) => Attempt::Done(Ok(reply)),
            // The leader changed under us: ask the local node who leads now.
            Ok(Err(RequestError::NotLeader { .. })) => Attempt::Retry(format!("{addr} no longer leads")),
            Ok(Err(RequestError::Unavailable(m))) => Attempt::Retry(format!("{addr}: unavailable: {m}")),
            Ok(Err(e)) => Attempt::Done(Err(e)),
            Err(e) => {
                self.drop_connection(addr);
                Attempt::Retry(format!("{addr}: {e}"))
            }
        }
    }
}

/// What one forwarding attempt came to.
enum Attempt {
    Done(Result<ForwardReply, RequestError>),
    /// Worth another try (the leader changed or could not be reached): why.
    Retry(String),
}

/// The request's deadline, capped at [`MAX_WAIT`].
fn deadline_of(ctx: &Context) -> Instant {
    Instant::from_std(ctx.deadline).min(Instant::now() + MAX_WAIT)
}

impl Service {
    /// Serves `request` here if this node can, else forwards it to the leader: waits
    /// for a leader while there is none, and follows leader changes, until the
    /// request's deadline (then `Timeout`: the outcome of a write is unknown).
    pub(crate) async fn serve_or_forward(
        &self,
        ctx: Context,
        request: ForwardRequest,
    ) -> Result<ForwardReply, RequestError> {
        if matches!(request, ForwardRequest::Members) {
            return self.members_view(ctx).await;
        }
        let deadline = deadline_of(&ctx);
        let mut permit = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            let here = self.serve_here(ctx, request.clone()).await;
            let (leader, leader_addr) = match here {
                Err(RequestError::NotLeader { leader, leader_addr }) => (leader, leader_addr),
                other => return other,
            };
            if permit.is_none() {
                permit = Some(self.forwarder.permit(self.id)?);
            }
            let last = match (leader, leader_addr) {
                (Some(leader), Some(addr)) if leader != self.id => {
                    match self.forwarder.send(&addr, deadline, request.clone()).await {
                        Attempt::Done(reply) => {
                            self.shared.metrics.forwarded.inc();
                            return reply.map(|r| with_forwarded(r, self.id, leader, addr));
                        }
                        Attempt::Retry(why) => why,
                    }
                }
                _ => "no leader is known (an election is under way)".to_string(),
            };
            if Instant::now() + backoff >= deadline {
                tracing::debug!(node = self.id, request = request.name(), last, "forwarding ran out of time");
                return Err(RequestError::Timeout);
            }
            // Wakes early when this node learns of a (new) leader.
            self.shared.leader_changed(Instant::now() + backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The leader's member list (authoritative) when this node follows a leader that
    /// answers in time, else this node's own view.
    async fn members_view(&self, ctx: Context) -> Result<ForwardReply, RequestError> {
        let here = self.serve_here(ctx, ForwardRequest::Members).await?;
        let ForwardReply::Members(list) = &here else { return Ok(here) };
        if list.leader.is_none_or(|l| l == self.id) {
            return Ok(here);
        }
        Ok(self.forward_members(ctx, list).await.unwrap_or(here))
    }

    async fn forward_members(&self, ctx: Context, list: &raftkv_rpc::MemberList) -> Option<ForwardReply> {
        let leader = list.leader?;
        let addr = list.members.iter().find(|m| m.id == leader)?.addr.clone();
        let _permit = self.forwarder.permit(self.id).ok()?;
        let deadline = deadline_of(&ctx).min(Instant::now() + MEMBER_STATUS_TIMEOUT);
        match self.forwarder.send(&addr, deadline, ForwardRequest::Members).await {
            Attempt::Done(Ok(reply)) => Some(reply),
            _ => None,
        }
    }

    /// Serves `request` on this node, never forwarding: `NotLeader` if it needs a
    /// leader and this node is not it.
    pub(crate) async fn serve_here(&self, ctx: Context, request: ForwardRequest) -> Result<ForwardReply, RequestError> {
        let gone = || RequestError::Unavailable("the node is shutting down".into());
        match request {
            ForwardRequest::Write(command) => {
                let (request, rx) = Request::write(&command, tracing::Span::current().context());
                self.submit(request)?;
                wait_write(ctx, rx).await.map(ForwardReply::Write)
            }
            ForwardRequest::Get { key } => {
                let read = self.read(ctx, ReadOp::Get(key), ReadConsistency::Linearizable).await?;
                read.into_get().map(ForwardReply::Get)
            }
            ForwardRequest::ScanPage { prefix, start, limit } => {
                let op = ReadOp::Scan { prefix, start, limit: limit as usize };
                let read = self.read(ctx, op, ReadConsistency::Linearizable).await?;
                read.into_scan().map(ForwardReply::ScanPage)
            }
            ForwardRequest::Members => {
                let (reply, rx) = oneshot::channel();
                self.submit(Request::Members(reply))?;
                wait(ctx, rx, gone()).await.map(ForwardReply::Members)
            }
            ForwardRequest::ChangeMember(change) => {
                let (reply, rx) = oneshot::channel();
                self.submit(Request::ChangeMember { change, reply })?;
                // Why Timeout when the loop is gone: the change may have been proposed already.
                wait(ctx, rx, RequestError::Timeout).await.map(ForwardReply::ChangeMember)
            }
            ForwardRequest::TransferLeader(target) => {
                let (reply, rx) = oneshot::channel();
                self.submit(Request::Transfer { target, reply })?;
                wait(ctx, rx, gone()).await.map(ForwardReply::TransferLeader)
            }
        }
    }

    /// Every member's status and build: this node's own, the others' asked over the
    /// forwarder's connections, concurrently, each within [`MEMBER_STATUS_TIMEOUT`].
    pub(crate) async fn member_statuses(&self, ctx: Context) -> Vec<MemberStatus> {
        let deadline = deadline_of(&ctx).min(Instant::now() + MEMBER_STATUS_TIMEOUT);
        let ask = |(id, addr): (NodeId, String)| async move {
            let status = if id == self.id {
                Ok((self.local_status(ctx).await, self.server_info_here()))
            } else {
                self.remote_status(&addr, deadline).await
            };
            MemberStatus { id, addr, status }
        };
        futures::future::join_all(self.shared.addrs().into_iter().map(ask)).await
    }

    async fn remote_status(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> Result<(raftkv_rpc::NodeStatus, raftkv_rpc::ServerInfo), String> {
        let conn = self.forwarder.connection(addr, deadline).await?;
        let mut ctx = context::current();
        ctx.deadline = deadline.into_std();
        let asked = async { tokio::try_join!(conn.status(ctx), conn.server_info(ctx)) };
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.forwarder.drop_connection(addr);
                Err(format!("{addr}: {e}"))
            }
            Err(_) => Err(format!("{addr}: no answer within {MEMBER_STATUS_TIMEOUT:?}")),
        }
    }
}

impl Service {
    /// Passes a `fault` request for another member on to it (one hop: that member
    /// serves it or refuses it; it never passes it on again).
    pub(crate) async fn fault_elsewhere(
        &self,
        ctx: Context,
        node: NodeId,
        request: raftkv_rpc::FaultRequest,
    ) -> Result<raftkv_rpc::FaultReply, RequestError> {
        let Some((_, addr)) = self.shared.addrs().into_iter().find(|(id, _)| *id == node) else {
            let ids: Vec<String> = self.shared.addrs().iter().map(|(id, _)| id.to_string()).collect();
            return Err(RequestError::Invalid(format!(
                "node {node} is not a member of this cluster (members: {})",
                ids.join(",")
            )));
        };
        let deadline = deadline_of(&ctx);
        let conn = self.forwarder.connection(&addr, deadline).await.map_err(RequestError::Unavailable)?;
        let mut hop = context::current();
        hop.deadline = deadline.into_std();
        match conn.fault(hop, node, request, true).await {
            Ok(answer) => answer,
            Err(e) => {
                self.forwarder.drop_connection(&addr);
                Err(RequestError::Unavailable(format!("node {node} at {addr}: {e}")))
            }
        }
    }
}

/// Marks a forwarded reply with how it travelled.
fn with_forwarded(reply: ForwardReply, via: NodeId, leader: NodeId, leader_addr: String) -> ForwardReply {
    let forwarded = Some(Forwarded { via, leader, leader_addr });
    match reply {
        ForwardReply::Write(r) => ForwardReply::Write(raftkv_rpc::WriteReply { forwarded, ..r }),
        ForwardReply::Get(r) => ForwardReply::Get(raftkv_rpc::GetReply { forwarded, ..r }),
        ForwardReply::ScanPage(r) => ForwardReply::ScanPage(raftkv_rpc::ScanReply { forwarded, ..r }),
        other => other,
    }
}
