//! The Raft consensus core of raftkv, as a pure state machine.
//!
//! Its job: decide elections, replicate and commit the log, confirm linearizable reads,
//! hand off leadership and ship snapshots — and say what must be persisted, sent and
//! applied, through [`Ready`].
//!
//! It must never do I/O: no clocks (time is [`RawNode::tick`]), no sockets, no files,
//! no threads, and no randomness but its own seeded RNG. That is what makes a
//! simulation of it replayable from a seed.

mod config;
mod event;
mod log;
mod node;
mod progress;
mod raft;
mod read_only;
mod tracker;
mod types;

pub use config::{Config, ConfigError, PlantedBug};
pub use event::{CandidateRequest, ElectionOutcome, Event, StepDownReason, VoteReason};
pub use log::LogError;
pub use node::{PeerProgress, RawNode, Ready, Recovered, Status};
pub use raft::{ProposeError, Role, StepError};
pub use read_only::ReadState;
pub use types::*;
