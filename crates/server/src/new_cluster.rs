//! Whether a founding member that starts without Raft state founds a brand-new cluster.
//!
//! A data dir with no log cannot tell a first start from a wiped disk, so such a node
//! starts recovering: it may not vote until a leader brings it up to date. That leaves
//! a brand-new cluster, whose founders all start that way, without a leader — unless
//! the founders learn that the cluster is new. This task asks every other founding
//! member (`--peers`) for its status until all of them answer at term 1 or below (no
//! vote or replication has ever happened) and then ends this node's recovery; it gives
//! up as soon as one answers past term 1 (the cluster exists: a leader's marker will end
//! the recovery). Safe against a minority of wiped founders: whatever this node could
//! have done before it lost its state involved another founder, which would be past
//! term 1.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_raft::NodeId;
use raftkv_rpc::{RaftKvClient, tarpc};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::raft_loop::Request;

/// Between two rounds of questions.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Deadline of one connection attempt and one status request.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the wait for absent founders is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What one round of questions found.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// Every other founder answered at term 1 or below.
    AllNew,
    /// This founder is past term 1: the cluster has run.
    Established { founder: NodeId, term: u64 },
    /// These founders did not answer.
    Waiting(Vec<NodeId>),
}

/// The founders' answers: `Some((cluster id, term))`, or `None` where there was none.
/// A founder that answers for another cluster was never part of this one (its votes
/// and entries carry its own cluster id, which this one refuses): it holds no past of
/// this node's, so it counts as new.
fn judge(cluster_id: u64, answers: &BTreeMap<NodeId, Option<(u64, u64)>>) -> Round {
    if let Some((&founder, &Some((_, term)))) =
        answers.iter().find(|(_, a)| a.is_some_and(|(c, t)| c == cluster_id && t > 1))
    {
        return Round::Established { founder, term };
    }
    let absent: Vec<NodeId> = answers.iter().filter(|(_, a)| a.is_none()).map(|(id, _)| *id).collect();
    if absent.is_empty() { Round::AllNew } else { Round::Waiting(absent) }
}

/// Asks the other `founders` until the cluster is known to be new (then ends this
/// node's recovery through `loop_tx`) or established, or the loop is gone.
pub(crate) async fn confirm(
    id: NodeId,
    cluster_id: u64,
    founders: BTreeMap<NodeId, String>,
    tls: Option<raftkv_rpc::TlsConfig>,
    loop_tx: mpsc::Sender<Request>,
) {
    let mut clients: BTreeMap<NodeId, RaftKvClient> = BTreeMap::new();
    let mut logged = Instant::now();
    loop {
        let mut answers = BTreeMap::new();
        for (&peer, addr) in founders.iter().filter(|(peer, _)| **peer != id) {
            answers.insert(peer, ask(&mut clients, peer, addr, tls.as_ref()).await);
        }
        match judge(cluster_id, &answers) {
            Round::AllNew => {
                let (reply, rx) = oneshot::channel();
                if loop_tx.send(Request::ConfirmNewCluster(reply)).await.is_err() {
                    return;
                }
                if rx.await == Ok(false) {
                    tracing::info!(id, "the cluster moved past term 1 meanwhile: recovering from its leader");
                }
                return;
            }
            Round::Established { founder, term } => {
                tracing::info!(
                    id,
                    founder,
                    term,
                    "the cluster already ran (a founding member is past term 1): recovering from its leader"
                );
                return;
            }
            Round::Waiting(absent) if logged.elapsed() >= LOG_EVERY => {
                logged = Instant::now();
                tracing::info!(
                    id,
                    ?absent,
                    "waiting for every founding member to answer: a new cluster elects its first leader once all \
                     have started"
                );
            }
            Round::Waiting(_) => {}
        }
        if loop_tx.is_closed() {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One founder's (cluster id, term), or `None` if it did not answer in time.
async fn ask(
    clients: &mut BTreeMap<NodeId, RaftKvClient>,
    peer: NodeId,
    addr: &str,
    tls: Option<&raftkv_rpc::TlsConfig>,
) -> Option<(u64, u64)> {
    let client = match clients.entry(peer) {
        std::collections::btree_map::Entry::Occupied(c) => c.into_mut(),
        std::collections::btree_map::Entry::Vacant(slot) => {
            let connect = raftkv_rpc::connect_with(addr, tls);
            slot.insert(tokio::time::timeout(ASK_TIMEOUT, connect).await.ok()?.ok()?)
        }
    };
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + ASK_TIMEOUT;
    match client.status(ctx).await {
        // A node whose loop is not running yet answers "unavailable" at term 0: no answer.
        Ok(status) if status.role != "unavailable" => Some((status.cluster_id, status.term)),
        Ok(_) => None,
        Err(_) => {
            clients.remove(&peer);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_new_only_if_every_other_founder_of_it_answers_at_term_one_or_below() {
        let answers = |list: &[(NodeId, Option<(u64, u64)>)]| list.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(judge(7, &answers(&[(2, Some((7, 1))), (3, Some((7, 0)))])), Round::AllNew);
        assert_eq!(judge(7, &answers(&[(2, Some((7, 1))), (3, None)])), Round::Waiting(vec![3]));
        // Another cluster's node never took part in this one, whatever its term.
        assert_eq!(judge(7, &answers(&[(2, Some((8, 9))), (3, Some((7, 1)))])), Round::AllNew);
        // One founder past term 1 settles it, whoever else is missing.
        assert_eq!(judge(7, &answers(&[(2, None), (3, Some((7, 4)))])), Round::Established { founder: 3, term: 4 });
        assert_eq!(judge(7, &answers(&[(2, Some((8, 9))), (3, None)])), Round::Waiting(vec![3]));
        assert_eq!(judge(7, &BTreeMap::new()), Round::AllNew, "a single founder is a new cluster by itself");
    }
}
