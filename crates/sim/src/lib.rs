//! Deterministic simulation of raftkv clusters: the real Raft core and the real
//! key/value state machine over a simulated network and simulated disks, with faults,
//! all driven by one seed so any failure replays exactly.
//!
//! Its job: find safety and liveness bugs by exploring many seeds, and say how to replay
//! each failure. It must never use wall-clock time, threads, or unseeded randomness.

mod checker;
mod cluster;
mod disk;
mod driving;
mod network;
mod reads;
mod run;

pub use checker::{Checker, Observation, Violation};
pub use cluster::{Cluster, MAX_NODES, MAX_PROMOTION_LAG, SimOptions, TICK};
pub use run::{Failure, RunReport, decisions_fingerprint, run_seed, run_seed_traced, run_seed_with};
