//! Questions to one node at a time (no leader finding, no retry): its status, build
//! and state machine digest, and the whole cluster's status through one node.

use std::future::Future;
use std::time::{Duration, Instant};

use raftkv_raft::NodeId;
use raftkv_rpc::tarpc::client::RpcError;
use raftkv_rpc::tarpc::context::{self, Context};
use raftkv_rpc::{
    FaultReply, FaultRequest, HashKvReply, MemberStatus, NodeStatus, RaftKvClient, RequestError, ServerInfo,
};

use crate::client::Client;
use crate::error::ClientError;
use crate::routing::LOCAL_TIMEOUT_SLACK;

impl Client {
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

    /// Every member's status and build as the node at `endpoint` reaches them: the
    /// whole cluster through one endpoint (the answering node asks the others).
    pub async fn cluster_status(&self, endpoint: &str) -> Result<Vec<MemberStatus>, ClientError> {
        // The node asks each member within a second; allow for that on top.
        let timeout = self.opts.status_timeout + Duration::from_secs(1);
        self.ask(endpoint, timeout, |c, ctx| async move { c.cluster_status(ctx).await }).await
    }

    /// Injects, lists or heals the faults of node `node` (`raftkv fault`), through the
    /// first endpoint that answers: that node passes the request on to `node`. A
    /// refusal (faults disabled, a bound exceeded) is final; an endpoint that cannot
    /// be reached gives way to the next.
    pub async fn fault(&self, node: NodeId, request: FaultRequest) -> Result<FaultReply, ClientError> {
        let mut last = ClientError::Unreachable("no endpoint given".into());
        for endpoint in self.endpoints() {
            let request = request.clone();
            let answer = self
                .ask(&endpoint, self.opts.timeout, |c, ctx| async move { c.fault(ctx, node, request, false).await });
            match answer.await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(RequestError::Invalid(m))) => return Err(ClientError::Rejected(m)),
                Ok(Err(e)) => last = ClientError::Unreachable(format!("{endpoint}: {e}")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
