//! [`Client::members`] and [`Client::change_member`]: the configuration as the leader
//! sees it, and changes to it, which the servers do not deduplicate (so a retried
//! change that may have been applied is settled by reading the member list).

use std::sync::atomic::{AtomicBool, Ordering};

use raftkv_raft::NodeId;
use raftkv_rpc::tarpc::client::RpcError;
use raftkv_rpc::{MemberChange, MemberChangeReply, MemberList, RequestError};
use tracing::Instrument as _;

use crate::client::Client;
use crate::error::ClientError;
use crate::routing::Route;
use crate::spans::record_error;

impl Client {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
