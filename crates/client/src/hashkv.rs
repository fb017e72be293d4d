//! [`Client::hash_kv_all`]: every endpoint's state machine digest at one applied
//! index, the operator's consistency check (`raftkv endpoint hashkv`).

use std::time::{Duration, Instant};

use raftkv_rpc::{HashKvReply, NodeStatus};

use crate::{Client, ClientError};

/// Rounds [`Client::hash_kv_all`] makes at most: a node that had already applied past
/// the index asked for (the cluster kept writing) makes another round at a later one.
pub const HASH_KV_ROUNDS: u32 = 5;

/// Every endpoint's answer at one applied index.
#[derive(Clone, Debug)]
pub struct HashKvRound {
    /// The applied index every node was asked for.
    pub index: u64,
    /// Per endpoint, in endpoint order.
    pub replies: Vec<(String, Result<HashKvReply, ClientError>)>,
    /// Rounds made (the last one is this).
    pub rounds: u32,
}

impl HashKvRound {
    /// The digest every endpoint agrees on, or why there is none: an endpoint did not
    /// answer a digest, or two digests differ (naming them).
    pub fn agreed(&self) -> Result<u64, String> {
        let mut digests = Vec::new();
        for (endpoint, reply) in &self.replies {
            match reply {
                Ok(HashKvReply { digest: Some(d), .. }) => digests.push((endpoint, *d)),
                Ok(HashKvReply { applied_index, .. }) => {
                    return Err(format!(
                        "{endpoint} had already applied index {applied_index}, past {} ({} rounds)",
                        self.index, self.rounds
                    ));
                }
                // (The error names the endpoint.)
                Err(e) => return Err(e.to_string()),
            }
        }
        let Some(&(first_endpoint, first)) = digests.first() else {
            return Err("no endpoint to ask".into());
        };
        match digests.iter().find(|(_, d)| *d != first) {
            None => Ok(first),
            Some((endpoint, d)) => Err(format!(
                "the state machines differ at applied index {}: {first_endpoint} has {first:016x}, {endpoint} has {d:016x}",
                self.index
            )),
        }
    }
}

impl Client {
    /// Asks every endpoint for its digest at one applied index (the leader's last log
    /// index, which the others reach as they apply; without a leader, the highest
    /// applied index), all within [`ClientOptions::timeout`](crate::ClientOptions).
    /// When a node had already applied past it, asks again at a later index, up to
    /// [`HASH_KV_ROUNDS`] rounds.
    pub async fn hash_kv_all(&self) -> HashKvRound {
        let deadline = Instant::now() + self.options().timeout;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let statuses = self.status_all().await;
            let reachable: Vec<&NodeStatus> = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
            let leader = reachable.iter().filter(|s| crate::local::is_leader(s)).max_by_key(|s| s.term);
            let index = match leader {
                Some(l) => l.last_index,
                None => reachable.iter().map(|s| s.applied_index).max().unwrap_or(0),
            };
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let endpoints: Vec<String> = statuses.into_iter().map(|(e, _)| e).collect();
            let replies =
                futures::future::join_all(endpoints.iter().map(|e| self.hash_kv_within(e, index, left))).await;
            let passed = replies.iter().any(|r| matches!(r, Ok(HashKvReply { digest: None, .. })));
            let round = HashKvRound { index, replies: endpoints.into_iter().zip(replies).collect(), rounds };
            if !passed || rounds >= HASH_KV_ROUNDS || Instant::now() >= deadline {
                return round;
            }
        }
    }
}
