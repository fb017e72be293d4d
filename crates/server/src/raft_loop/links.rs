//! The peer links: one per other member of the latest and of the committed
//! configuration (see [`raftkv_replica::Replica::link_targets`]), opened and closed as
//! the configuration and the members' addresses change.

use tokio::task::JoinHandle;

use super::RaftLoop;
use crate::peer::PeerSender;

/// One outbound link.
pub(super) struct Peer {
    pub addr: String,
    pub sender: PeerSender,
    pub task: JoinHandle<()>,
}

impl RaftLoop {
    /// Links to exactly the members the replica names, and publishes their addresses
    /// and the removed ids to the RPC service.
    pub(super) fn sync_links(&mut self) {
        let (members, unknown) = self.replica.link_targets();
        for peer in unknown {
            tracing::warn!(id = self.id, peer, "no address known for a member; cannot reach it");
        }
        let id = self.id;
        self.peers.retain(|peer, p| {
            let keep = members.get(peer) == Some(&p.addr);
            if !keep {
                tracing::info!(id, peer, addr = %p.addr, "closing the link to a former member");
            }
            keep
        });
        for (peer, addr) in members.iter().filter(|(peer, _)| **peer != id) {
            if !self.peers.contains_key(peer) {
                tracing::info!(id, peer, %addr, "opening a link to a member");
                let (sender, task) = crate::peer::spawn_peer(*peer, addr.clone(), self.link.clone());
                self.peers.insert(*peer, Peer { addr: addr.clone(), sender, task });
            }
        }
        self.shared.set_addrs(members.into_iter().collect());
        self.shared.set_removed(self.replica.membership().removed());
    }

    /// Closes every peer link. With `deliver`, first waits (bounded) for the links to
    /// send what is queued — a leader that removed itself just queued its hand-off.
    pub(super) async fn stop_links(&mut self, deliver: bool) -> u64 {
        let dropped =
            self.peers.values().map(|p| p.sender.stats().dropped.load(std::sync::atomic::Ordering::Relaxed)).sum();
        let mut tasks: Vec<JoinHandle<()>> = self.peers.drain().map(|(_, p)| p.task).collect();
        if deliver {
            let all = futures::future::join_all(tasks.iter_mut());
            let _ = tokio::time::timeout(self.cfg.election_timeout, all).await;
        }
        for t in tasks {
            t.abort();
        }
        dropped
    }
}
