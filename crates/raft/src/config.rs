//! Static settings of one Raft node.

use crate::types::NodeId;

/// How a node behaves. Times are in ticks; the runtime decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns. The actual
    /// timeout is drawn from `[election_tick, 2 * election_tick)` per term.
    pub election_tick: u32,
    /// Ticks between leader heartbeats. Must be well below `election_tick`.
    pub heartbeat_tick: u32,
    /// Ask peers first whether they would vote (Raft thesis §9.6), so a node that was
    /// partitioned away does not raise the term of a healthy cluster.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down,
    /// and voters that hear from a leader ignore vote requests for that long.
    pub check_quorum: bool,
    /// Upper bound on the bytes of entries in one AppendEntries.
    pub max_append_bytes: usize,
    /// Upper bound on AppendEntries in flight to one follower (the pipeline window).
    pub max_inflight_appends: usize,
    /// Proposals are refused once this many bytes of entries are uncommitted.
    pub max_uncommitted_bytes: usize,
    /// Upper bound on bytes of committed entries handed out in one Ready.
    pub max_apply_bytes: usize,
    /// ReadIndex requests waiting for confirmation; more are refused.
    pub max_pending_reads: usize,
    /// Bytes of snapshot data per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// A snapshot received from a leader may not exceed this many bytes.
    pub max_snapshot_bytes: u64,
    /// Entries kept in memory behind a snapshot, so slightly lagging followers catch up
    /// from the log instead of a whole snapshot.
    pub compaction_slack: u64,
    /// A learner is promoted to voter only once its log is within this many entries of
    /// the leader's last index, so a promotion cannot stall commits while it catches up.
    pub max_promotion_lag: u64,
    /// Seed of the node's RNG: election timeout jitter, and the nonce of a recovery from
    /// lost state. Use a new seed for every start of a node: a recovery whose nonce an
    /// earlier start already used could be ended by that start's committed marker,
    /// before the node caught up.
    pub seed: u64,
    /// A deliberate bug, for tests that show the simulation's checker catching it
    /// through the real observation path. Never set outside tests.
    #[doc(hidden)]
    pub planted_bug: Option<PlantedBug>,
}

/// Deliberate bugs a test may plant in the core (see [`Config::planted_bug`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A leader counts a recovering node's acknowledgements toward commits.
    CountRecoveringAcks,
    /// A node grants (pre-)votes without checking that the candidate's log is at least
    /// as up to date as its own (§5.4.1): a candidate missing committed entries can win.
    #[cfg(feature = "planted-bug")]
    VoteForStaleLog,
    /// A leader commits every entry of its term it has appended, without waiting for a
    /// quorum to store it.
    #[cfg(feature = "planted-bug")]
    CommitWithoutQuorum,
}

impl Config {
    /// Sensible defaults for node `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 64,
            max_uncommitted_bytes: 64 << 20,
            max_apply_bytes: 16 << 20,
            max_pending_reads: 65_536,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 8 << 30,
            compaction_slack: 1_000,
            max_promotion_lag: 1_000,
            seed: id,
            planted_bug: None,
        }
    }

    /// Checks the settings for mistakes the core could not survive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &str| Err(ConfigError(what.to_string()));
        if self.id == 0 {
            return fail("node id must be non-zero");
        }
        if self.heartbeat_tick == 0 {
            return fail("heartbeat_tick must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return fail("election_tick must be greater than heartbeat_tick");
        }
        if self.max_inflight_appends == 0 {
            return fail("max_inflight_appends must be at least 1");
        }
        if self.snapshot_chunk_bytes == 0 {
            return fail("snapshot_chunk_bytes must be at least 1");
        }
        if self.max_append_bytes == 0 || self.max_apply_bytes == 0 {
            return fail("max_append_bytes and max_apply_bytes must be at least 1");
        }
        Ok(())
    }
}

/// An invalid [`Config`].
#[derive(Debug, thiserror::Error)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// A setting made invalid, and what it is.
    type Breaker = (&'static str, fn(&mut Config));

    #[test]
    fn the_defaults_are_valid_and_each_setting_the_core_cannot_survive_is_refused() {
        assert!(Config::new(1).validate().is_ok());
        let breakers: [Breaker; 7] = [
            ("id 0", |c| c.id = 0),
            ("heartbeat_tick 0", |c| c.heartbeat_tick = 0),
            ("election_tick = heartbeat_tick", |c| c.election_tick = c.heartbeat_tick),
            ("max_inflight_appends 0", |c| c.max_inflight_appends = 0),
            ("snapshot_chunk_bytes 0", |c| c.snapshot_chunk_bytes = 0),
            ("max_append_bytes 0 alone", |c| c.max_append_bytes = 0),
            ("max_apply_bytes 0 alone", |c| c.max_apply_bytes = 0),
        ];
        for (what, break_it) in breakers {
            let mut cfg = Config::new(1);
            break_it(&mut cfg);
            assert!(cfg.validate().is_err(), "{what} must be refused");
        }
    }
}
