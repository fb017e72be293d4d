//! `raftkv fault partition|delay-fsync|pause|list|heal`: faults injected into a
//! running cluster, for development clusters and demos. Each node refuses them unless
//! it runs with `--enable-faults`; every fault heals by itself after its duration.

use std::time::Duration;

use clap::Subcommand;
use raftkv_client::duration::parse_duration;
use raftkv_client::table::Table;
use raftkv_client::{Client, Fault, FaultReply, FaultRequest, NodeId};
use serde_json::json;

use crate::global::{CliError, CliResult, Global, Output};
use crate::kv::client;
use crate::member::parse_id;
use crate::output::{print_json, write_out};

/// How long a fault lasts when `--for` is not given.
const DEFAULT_FOR: &str = "30s";

#[derive(Subcommand, Debug)]
pub enum FaultCmd {
    /// Drop every Raft message between NODE and the others (or the nodes of --from),
    /// both ways, until the duration is up. Client requests still reach NODE.
    #[command(after_help = "Examples:\n  raftkv fault partition 1\n  raftkv fault partition 3 --from 1 --for 10s")]
    Partition {
        /// The node to cut off.
        #[arg(value_parser = parse_id)]
        node: NodeId,
        /// Cut it off from these nodes only (comma-separated ids).
        #[arg(long, value_delimiter = ',', value_parser = parse_id, value_name = "NODE,...")]
        from: Vec<NodeId>,
        /// How long the partition lasts; it heals by itself (at most 1h).
        #[arg(long = "for", value_parser = parse_duration, default_value = DEFAULT_FOR, value_name = "DURATION")]
        duration: Duration,
    },
    /// Delay each Raft log write of NODE by DELAY before it reaches the disk (a slow
    /// fsync), until the duration is up.
    #[command(after_help = "Examples:\n  raftkv fault delay-fsync 2 200ms --for 1m")]
    DelayFsync {
        /// The node whose writes slow down.
        #[arg(value_parser = parse_id)]
        node: NodeId,
        /// The delay per write (at most 10s).
        #[arg(value_parser = parse_duration)]
        delay: Duration,
        /// How long the delay lasts; it heals by itself (at most 1h).
        #[arg(long = "for", value_parser = parse_duration, default_value = DEFAULT_FOR, value_name = "DURATION")]
        duration: Duration,
    },
    /// Stop NODE's Raft loop (no ticks, no messages stepped, no commits) for the
    /// duration, as a stalled process would.
    #[command(after_help = "Examples:\n  raftkv fault pause 1 --for 3s")]
    Pause {
        /// The node to pause.
        #[arg(value_parser = parse_id)]
        node: NodeId,
        /// How long the pause lasts (at most 1h).
        #[arg(long = "for", value_parser = parse_duration, value_name = "DURATION", required = true)]
        duration: Duration,
    },
    /// Show the active faults of NODE, or of every member.
    List {
        /// One node (default: every member).
        #[arg(value_parser = parse_id)]
        node: Option<NodeId>,
    },
    /// End the active faults of NODE, or of every member, now.
    Heal {
        /// One node (default: every member).
        #[arg(value_parser = parse_id)]
        node: Option<NodeId>,
    },
}

pub async fn command(global: &Global, cmd: FaultCmd) -> CliResult {
    let client = client(global)?;
    let (nodes, request) = match cmd {
        FaultCmd::Partition { node, from, duration } => {
            (vec![node], inject(Fault::Partition { peers: from }, duration)?)
        }
        FaultCmd::DelayFsync { node, delay, duration } => {
            (vec![node], inject(Fault::DelayFsync { delay_ms: millis("DELAY", delay)? }, duration)?)
        }
        FaultCmd::Pause { node, duration } => (vec![node], inject(Fault::Pause, duration)?),
        FaultCmd::List { node } => (nodes_or_all(&client, node).await?, FaultRequest::List),
        FaultCmd::Heal { node } => (nodes_or_all(&client, node).await?, FaultRequest::Heal),
    };
    let mut replies = Vec::new();
    for node in nodes {
        let reply = client.fault(node, request.clone()).await;
        replies.push(reply.map_err(|e| CliError { message: format!("error: node {node}: {e}"), ..CliError::from(e) })?);
    }
    print(global, &request, &replies)
}

fn inject(fault: Fault, duration: Duration) -> Result<FaultRequest, CliError> {
    Ok(FaultRequest::Inject { fault, duration_ms: millis("--for", duration)? })
}

/// A duration in whole milliseconds, at least one.
fn millis(what: &str, d: Duration) -> Result<u64, CliError> {
    match u64::try_from(d.as_millis()) {
        Ok(0) | Err(_) => Err(CliError::usage(format!("{what} must be at least 1ms (and at most 1h)"))),
        Ok(ms) => Ok(ms),
    }
}

/// `node`, or every member as the first endpoint that answers lists them.
async fn nodes_or_all(client: &Client, node: Option<NodeId>) -> Result<Vec<NodeId>, CliError> {
    if let Some(node) = node {
        return Ok(vec![node]);
    }
    let mut last = None;
    for endpoint in client.endpoints() {
        match client.cluster_status(&endpoint).await {
            Ok(members) => return Ok(members.iter().map(|m| m.id).collect()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| CliError::failed("error: no endpoint given"), CliError::from))
}

fn print(global: &Global, request: &FaultRequest, replies: &[FaultReply]) -> CliResult {
    match global.output(Output::Table) {
        Output::Json => print_json(&json!(replies.iter().map(reply_json).collect::<Vec<_>>())),
        Output::Table if matches!(request, FaultRequest::List) => write_out(table(replies).render().as_bytes()),
        Output::Simple if matches!(request, FaultRequest::List) => write_out(table(replies).render_simple().as_bytes()),
        _ => write_out(summary(request, replies).as_bytes()),
    }
}

/// One line per node: what was done, and what is active now.
fn summary(request: &FaultRequest, replies: &[FaultReply]) -> String {
    let mut out = String::new();
    for r in replies {
        let done = match request {
            FaultRequest::Inject { fault, duration_ms } => {
                format!("node {}: injected {} for {}", r.node, fault.describe(), human_ms(*duration_ms))
            }
            FaultRequest::Heal => format!("node {}: healed {} fault(s)", r.node, r.healed),
            FaultRequest::List => format!("node {}", r.node),
        };
        out.push_str(&format!("{done}; {} active\n", r.active.len()));
    }
    out
}

fn table(replies: &[FaultReply]) -> Table {
    let mut t = Table::new(&["NODE", "ID", "FAULT", "REMAINING"]);
    for r in replies {
        for a in &r.active {
            t.row(vec![r.node.to_string(), a.id.to_string(), a.fault.describe(), human_ms(a.remaining_ms)]);
        }
    }
    t
}

fn reply_json(r: &FaultReply) -> serde_json::Value {
    let active: Vec<serde_json::Value> = r
        .active
        .iter()
        .map(|a| json!({"id": a.id, "kind": a.fault.kind(), "fault": a.fault.describe(), "remaining_ms": a.remaining_ms}))
        .collect();
    json!({"node": r.node, "healed": r.healed, "active": active})
}

fn human_ms(ms: u64) -> String {
    if ms >= 1000 && ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}
