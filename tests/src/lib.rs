//! What the process-level tests under `tests/tests/` share: the executables under test
//! ([`bins`]), a cluster of real server processes ([`cluster`]), optionally each in its
//! own network namespace ([`netns`]), a bounded write load ([`load`]), a recorded
//! history ([`history`]), the `raftkv` CLI run with a deadline ([`cli`]), the
//! Jepsen-style run ([`jepsen`]), and the source-shape check ([`shape`]).
//!
//! The long fault tests need the `fault-tier` feature (`tests/Cargo.toml`), so that a
//! plain `cargo test --workspace` stays fast; `cargo xtask` lists both tiers.

pub mod bins;
pub mod cli;
pub mod history;
pub mod jepsen;
pub mod load;
pub mod netns;
pub mod shape;
pub mod test_cluster;

pub use bins::{Binaries, NO_BUILD_ENV, binaries, workspace_root};
pub use cli::{CliOutput, dead_endpoint, endpoints_arg, number_after, raftkv};
pub use history::Recorder;
pub use load::{Load, LoadResult};
pub use test_cluster::{
    CATCH_UP_TIMEOUT, EXIT_TIMEOUT, LEADER_TIMEOUT, OP_TIMEOUT, SCAN_ALL, TestCluster, eventually, print_log_tail,
    scan_map, spawn_node, text,
};
