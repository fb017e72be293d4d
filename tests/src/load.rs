//! A bounded write load: concurrent writers putting distinct keys, and what became of
//! their puts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientError, ClientOptions};
use tokio::task::JoinSet;

use crate::test_cluster::eventually;

/// What a [`Load`] did: every key is written once, by one put.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Acknowledged puts: key → value.
    pub acked: BTreeMap<String, String>,
    /// Puts whose outcome is unknown (they may or may not have been applied).
    pub unknown: BTreeMap<String, String>,
    /// Definite failures (there should be none).
    pub errors: Vec<String>,
}

impl LoadResult {
    /// Acknowledged puts that `stored` lacks or holds with another value.
    pub fn lost<'a>(&'a self, stored: &BTreeMap<String, String>) -> Vec<&'a String> {
        self.acked.iter().filter(|(k, v)| stored.get(*k) != Some(*v)).map(|(k, _)| k).collect()
    }

    /// Pairs of `stored` that no put, acknowledged or unknown, wrote.
    pub fn invented<'a>(&self, stored: &'a BTreeMap<String, String>) -> Vec<(&'a String, &'a String)> {
        stored.iter().filter(|(k, v)| self.acked.get(*k).or(self.unknown.get(*k)) != Some(*v)).collect()
    }

    /// Panics if `stored` holds a value that no put, acknowledged or unknown, wrote to
    /// its key.
    pub fn assert_nothing_invented(&self, stored: &BTreeMap<String, String>) {
        let invented = self.invented(stored);
        assert!(invented.is_empty(), "values never written to their keys: {invented:?}");
    }
}

/// Concurrent writers, each with its own client, putting distinct keys
/// `<prefix>/w<writer>/<n>` until stopped, `per_writer` puts each, or `max_time`.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: JoinSet<LoadResult>,
}

impl Load {
    pub fn start(
        endpoints: Vec<String>,
        prefix: &str,
        writers: usize,
        per_writer: usize,
        opts: ClientOptions,
        max_time: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + max_time;
        let mut tasks = JoinSet::new();
        for w in 0..writers {
            let client = Client::new(endpoints.clone(), opts.clone()).expect("client");
            let (stop, acked, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
            tasks.spawn(async move {
                let mut result = LoadResult::default();
                for n in 0..per_writer {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= until {
                        break;
                    }
                    let key = format!("{prefix}/w{w}/{n:07}");
                    let value = format!("v{n}-w{w}-c{:08x}", client.client_id() as u32);
                    match client.put(key.clone(), value.clone()).await {
                        Ok(_) => {
                            result.acked.insert(key, value);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(ClientError::Unknown(_)) => {
                            result.unknown.insert(key, value);
                        }
                        Err(e) => result.errors.push(format!("put {key}: {e}")),
                    }
                }
                result
            });
        }
        Load { stop, acked, tasks }
    }

    /// Puts acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` puts were acknowledged.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        eventually(timeout, &format!("{n} acknowledged puts"), || async {
            let acked = self.acked();
            if acked >= n { Ok(()) } else { Err(format!("{acked} acknowledged")) }
        })
        .await
    }

    /// Tells the writers to stop after their current put, and collects their results.
    pub async fn stop(self, timeout: Duration) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        self.join(timeout).await
    }

    /// Waits for the writers to finish (all puts made, or their `max_time` passed).
    pub async fn join(mut self, timeout: Duration) -> LoadResult {
        let mut all = LoadResult::default();
        let joined = tokio::time::timeout(timeout, async {
            while let Some(r) = self.tasks.join_next().await {
                let r = r.expect("a writer task panicked");
                all.acked.extend(r.acked);
                all.unknown.extend(r.unknown);
                all.errors.extend(r.errors);
            }
        })
        .await;
        assert!(joined.is_ok(), "the writers did not finish within {timeout:?}");
        all
    }
}
