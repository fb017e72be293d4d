//! `raftkv endpoint status|health|hashkv` (and `raftkv status`): each endpoint on
//! its own, the operator's view after faults.

use std::time::{Duration, Instant};

use clap::Subcommand;
use raftkv_client::table::Table;
use raftkv_client::{Client, ClientError, HashKvRound, NodeId, NodeStatus, ServerInfo};
use serde_json::json;

use crate::global::{CliError, CliResult, Global, Output};
use crate::kv::client;
use crate::output::{print_json, write_out};

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Each endpoint's id, version, role, term, leader, commit and applied index, and
    /// the id of the cluster it belongs to (`raftkv status` adds the members that are
    /// not endpoints, asked through one that answered).
    Status,
    /// Whether each endpoint is healthy: it answers, its Raft loop and storage work (it
    /// answers status from the loop and is not recovering lost state), it knows a
    /// leader, and its applied index is within --max-lag of the leader's. Exit 1 when
    /// any is not.
    #[command(after_help = "Examples:\n  raftkv endpoint health\n  raftkv endpoint health --max-lag 100 -o json")]
    Health {
        /// Most log entries a node may have applied fewer than the leader and be healthy.
        #[arg(long, default_value_t = 1000, value_name = "ENTRIES")]
        max_lag: u64,
    },
    /// Each endpoint's state machine digest at one applied index (the leader's last
    /// log index, which every node reaches as it applies): equal digests mean equal
    /// replicas. Exit 1 when they differ or an endpoint does not answer. The
    /// consistency check after faults.
    Hashkv,
}

pub async fn command(global: &Global, cmd: EndpointCmd) -> CliResult {
    match cmd {
        EndpointCmd::Status => status(global, false).await,
        EndpointCmd::Health { max_lag } => health(global, max_lag).await,
        EndpointCmd::Hashkv => hashkv(global).await,
    }
}

/// One endpoint's answers.
struct Answer {
    endpoint: String,
    /// The node that asked this member for us, when it is not an endpoint.
    via: Option<NodeId>,
    status: Result<NodeStatus, ClientError>,
    info: Option<ServerInfo>,
    /// How long the status request took.
    took: Duration,
}

/// Every endpoint's status and build, asked concurrently.
async fn ask_all(client: &Client) -> Vec<Answer> {
    let ask = |endpoint: String| async move {
        let start = Instant::now();
        let status = client.status(&endpoint).await;
        let took = start.elapsed();
        let info = match &status {
            Ok(_) => client.server_info(&endpoint).await.ok(),
            Err(_) => None,
        };
        Answer { endpoint, via: None, status, info, took }
    };
    futures::future::join_all(client.endpoints().into_iter().map(ask)).await
}

/// The cluster id in hex, as the servers log it; `-` for a joining node without one.
fn cluster_hex(id: u64) -> String {
    if id == 0 { "-".into() } else { format!("{id:016x}") }
}

/// `0.1.0+<12 hex digits>`: the version and the commit, when the server knows it.
fn version(info: Option<&ServerInfo>) -> String {
    match info {
        None => "-".into(),
        Some(i) if i.commit == "unknown" => i.version.clone(),
        Some(i) => format!("{}+{}", i.version, i.commit),
    }
}

/// The members the endpoints' answers name that none of them is, asked through the
/// first endpoint that answered.
async fn other_members(client: &Client, answers: &[Answer]) -> Vec<Answer> {
    let answered: Vec<&NodeStatus> = answers.iter().filter_map(|a| a.status.as_ref().ok()).collect();
    let Some(first) = answers.iter().find(|a| a.status.is_ok()) else { return Vec::new() };
    let known = |id: NodeId| answered.iter().any(|s| s.id == id);
    let missing = answered.iter().flat_map(|s| s.peers.iter()).any(|(id, _)| !known(*id));
    if !missing {
        return Vec::new();
    }
    let via = first.status.as_ref().map(|s| s.id).ok();
    let start = Instant::now();
    let members = match client.cluster_status(&first.endpoint).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(endpoint = first.endpoint, error = %e, "cannot ask the other members through it");
            return Vec::new();
        }
    };
    let took = start.elapsed();
    let others = members.into_iter().filter(|m| !known(m.id));
    others
        .map(|m| match m.status {
            Ok((status, info)) => Answer { endpoint: m.addr, via, status: Ok(status), info: Some(info), took },
            Err(e) => Answer { endpoint: m.addr, via, status: Err(ClientError::Unreachable(e)), info: None, took },
        })
        .collect()
}

pub async fn status(global: &Global, whole_cluster: bool) -> CliResult {
    let client = client(global)?;
    let mut answers = ask_all(&client).await;
    if whole_cluster {
        let others = other_members(&client, &answers).await;
        answers.extend(others);
    }
    match global.output(Output::Table) {
        Output::Json => print_json(&serde_json::Value::Array(answers.iter().map(status_json).collect()))?,
        Output::Table => write_out(status_table(&answers).render().as_bytes())?,
        Output::Simple => write_out(status_table(&answers).render_simple().as_bytes())?,
    }
    if answers.iter().any(|a| a.status.is_ok()) { Ok(()) } else { Err(CliError::failed("error: no endpoint answered")) }
}

fn status_json(a: &Answer) -> serde_json::Value {
    match &a.status {
        Ok(s) => json!({
            "endpoint": a.endpoint,
            "via": a.via,
            "reachable": true,
            "id": s.id,
            "role": s.role.to_lowercase(),
            "term": s.term,
            "leader": s.leader,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "last_index": s.last_index,
            "snapshot_index": s.snapshot_index,
            "cluster_id": s.cluster_id,
            "recovering": s.recovering,
            "version": a.info.as_ref().map(|i| &i.version),
            "commit": a.info.as_ref().map(|i| &i.commit),
        }),
        Err(e) => json!({"endpoint": a.endpoint, "via": a.via, "reachable": false, "error": e.to_string()}),
    }
}

/// One row per endpoint.
fn status_table(answers: &[Answer]) -> Table {
    let header = ["ENDPOINT", "ID", "VERSION", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "CLUSTER", "REACHABLE"];
    let mut t = Table::new(&header);
    for a in answers {
        match &a.status {
            Ok(s) => {
                let role = if s.recovering {
                    format!("{} (recovering)", s.role.to_lowercase())
                } else {
                    s.role.to_lowercase()
                };
                t.row([
                    endpoint_cell(a),
                    s.id.to_string(),
                    version(a.info.as_ref()),
                    role,
                    s.term.to_string(),
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    cluster_hex(s.cluster_id),
                    "yes".into(),
                ]);
            }
            Err(e) => {
                let mut row = vec![endpoint_cell(a)];
                row.extend(std::iter::repeat_n("-".to_string(), header.len() - 2));
                row.push(format!("no ({})", e.to_string().trim_start_matches("unreachable: ")));
                t.row(row);
            }
        }
    }
    t
}

/// The endpoint, or the member's address and the node it was asked through.
fn endpoint_cell(a: &Answer) -> String {
    match a.via {
        Some(via) => format!("{} (via {via})", a.endpoint),
        None => a.endpoint.clone(),
    }
}

/// One endpoint's health: `Ok` with what shows it, or `Err` with why not.
fn verdict(s: &Result<NodeStatus, ClientError>, leader: Option<&NodeStatus>, max_lag: u64) -> Result<String, String> {
    let s = s.as_ref().map_err(|e| e.to_string())?;
    if s.role.eq_ignore_ascii_case("unavailable") {
        return Err("its Raft loop did not answer (stopped, e.g. after a storage failure, or overloaded)".into());
    }
    if s.recovering {
        return Err("recovering lost state: it neither votes nor counts toward a quorum yet".into());
    }
    let leader_id = s.leader.ok_or("no leader known")?;
    let Some(leader) = leader else {
        return Err(format!("its leader, node {leader_id}, did not answer status"));
    };
    if leader.cluster_id != s.cluster_id {
        return Err(format!(
            "in cluster {}, its leader in {}",
            cluster_hex(s.cluster_id),
            cluster_hex(leader.cluster_id)
        ));
    }
    let lag = leader.applied_index.saturating_sub(s.applied_index);
    if lag > max_lag {
        return Err(format!(
            "applied index {} is {lag} entries behind the leader's {} (more than --max-lag {max_lag})",
            s.applied_index, leader.applied_index
        ));
    }
    Ok(format!("leader {leader_id}, applied index {} ({lag} behind the leader)", s.applied_index))
}

/// The status of each endpoint's leader: from the answers, or asked of the address
/// the endpoint knows it at (when --endpoints does not list it).
async fn leaders(client: &Client, answers: &[Answer]) -> Vec<(u64, NodeStatus)> {
    let mut known: Vec<(u64, NodeStatus)> =
        answers.iter().filter_map(|a| a.status.as_ref().ok()).map(|s| (s.id, s.clone())).collect();
    for s in answers.iter().filter_map(|a| a.status.as_ref().ok()) {
        let Some(leader) = s.leader else { continue };
        if known.iter().any(|(id, _)| *id == leader) {
            continue;
        }
        if let Some((_, addr)) = s.peers.iter().find(|(id, _)| *id == leader)
            && let Ok(status) = client.status(addr).await
        {
            known.push((leader, status));
        }
    }
    known
}

pub async fn health(global: &Global, max_lag: u64) -> CliResult {
    let client = client(global)?;
    let answers = ask_all(&client).await;
    let leaders = leaders(&client, &answers).await;
    let verdicts: Vec<Result<String, String>> = answers
        .iter()
        .map(|a| {
            let leader_id = a.status.as_ref().ok().and_then(|s| s.leader);
            let leader = leaders.iter().find(|(id, _)| Some(*id) == leader_id).map(|(_, s)| s);
            verdict(&a.status, leader, max_lag)
        })
        .collect();
    let took = |a: &Answer| format!("{:.1}ms", a.took.as_secs_f64() * 1000.0);
    match global.output(Output::Simple) {
        Output::Json => {
            let rows = answers.iter().zip(&verdicts).map(|(a, v)| {
                json!({
                    "endpoint": a.endpoint,
                    "health": v.is_ok(),
                    "took_ms": a.took.as_secs_f64() * 1000.0,
                    "detail": v.as_ref().ok(),
                    "error": v.as_ref().err(),
                })
            });
            print_json(&serde_json::Value::Array(rows.collect()))?;
        }
        Output::Table => {
            let mut t = Table::new(&["ENDPOINT", "HEALTH", "TOOK", "DETAIL"]);
            for (a, v) in answers.iter().zip(&verdicts) {
                let (health, detail) = match v {
                    Ok(d) => ("true", d),
                    Err(e) => ("false", e),
                };
                t.row([a.endpoint.clone(), health.into(), took(a), detail.clone()]);
            }
            write_out(t.render().as_bytes())?;
        }
        Output::Simple => {
            let lines: String = answers
                .iter()
                .zip(&verdicts)
                .map(|(a, v)| match v {
                    Ok(d) => format!("{} is healthy: {d}; took {}\n", a.endpoint, took(a)),
                    Err(e) => format!("{} is unhealthy: {e}\n", a.endpoint),
                })
                .collect();
            write_out(lines.as_bytes())?;
        }
    }
    match verdicts.iter().filter(|v| v.is_err()).count() {
        0 => Ok(()),
        n => Err(CliError::failed(format!("error: {n} of {} endpoints unhealthy", answers.len()))),
    }
}

pub async fn hashkv(global: &Global) -> CliResult {
    let round = client(global)?.hash_kv_all().await;
    let verdict = round.agreed();
    match global.output(Output::Table) {
        Output::Json => print_json(&hashkv_json(&round, &verdict))?,
        Output::Table => write_out(hashkv_table(&round).render().as_bytes())?,
        Output::Simple => write_out(hashkv_table(&round).render_simple().as_bytes())?,
    }
    verdict.map(|_| ()).map_err(|e| CliError::failed(format!("error: {e}")))
}

fn hashkv_json(round: &HashKvRound, verdict: &Result<u64, String>) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = round
        .replies
        .iter()
        .map(|(endpoint, r)| match r {
            Ok(h) => json!({
                "endpoint": endpoint,
                "id": h.node,
                "applied_index": h.applied_index,
                "hash": h.digest.map(|d| format!("{d:016x}")),
            }),
            Err(e) => json!({"endpoint": endpoint, "error": e.to_string()}),
        })
        .collect();
    json!({
        "index": round.index,
        "rounds": round.rounds,
        "agreed": verdict.is_ok(),
        "hash": verdict.as_ref().ok().map(|d| format!("{d:016x}")),
        "error": verdict.as_ref().err(),
        "endpoints": rows,
    })
}

fn hashkv_table(round: &HashKvRound) -> Table {
    let mut t = Table::new(&["ENDPOINT", "ID", "INDEX", "HASH"]);
    for (endpoint, r) in &round.replies {
        match r {
            Ok(h) => t.row([
                endpoint.clone(),
                h.node.to_string(),
                h.applied_index.to_string(),
                h.digest.map_or_else(|| format!("- (already past {})", round.index), |d| format!("{d:016x}")),
            ]),
            Err(e) => t.row([endpoint.clone(), "-".into(), "-".into(), format!("- ({e})")]),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, leader: Option<u64>, applied: u64) -> NodeStatus {
        let role = if leader == Some(id) { "leader" } else { "follower" };
        let indexes =
            NodeStatus { commit_index: applied, applied_index: applied, last_index: applied, ..NodeStatus::default() };
        NodeStatus { id, role: role.into(), term: 12, leader, cluster_id: 7, ..indexes }
    }

    #[test]
    fn status_table_is_aligned_and_shows_unreachable_nodes() {
        let info = ServerInfo { id: 1, version: "0.1.0".into(), commit: "abc".into() };
        let answers = vec![
            Answer {
                endpoint: "127.0.0.1:7001".into(),
                via: None,
                status: Ok(NodeStatus { commit_index: 100, applied_index: 99, ..node(1, Some(1), 99) }),
                info: Some(info),
                took: Duration::ZERO,
            },
            Answer {
                endpoint: "127.0.0.1:7002".into(),
                via: None,
                status: Err(ClientError::Unreachable("127.0.0.1:7002: refused".into())),
                info: None,
                took: Duration::ZERO,
            },
        ];
        let table = status_table(&answers).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ENDPOINT        ID  VERSION    ROLE    TERM  LEADER  COMMIT  APPLIED  CLUSTER           REACHABLE",
            "{table}"
        );
        assert_eq!(
            lines[1], "127.0.0.1:7001  1   0.1.0+abc  leader  12    1       100     99       0000000000000007  yes",
            "{table}"
        );
        assert!(lines[2].starts_with("127.0.0.1:7002  -   -"), "{table}");
        assert!(lines[2].ends_with("no (127.0.0.1:7002: refused)"), "{table}");
        let json = status_json(&answers[0]);
        assert_eq!((json["role"].as_str(), json["version"].as_str()), (Some("leader"), Some("0.1.0")), "{json}");
    }

    #[test]
    fn health_verdicts_name_what_is_wrong() {
        let leader = node(1, Some(1), 5000);
        let check = |s: NodeStatus| verdict(&Ok(s), Some(&leader), 1000);
        assert!(check(node(2, Some(1), 4500)).is_ok_and(|d| d.contains("500 behind")));
        assert!(check(node(2, Some(1), 3999)).unwrap_err().contains("1001 entries behind the leader's 5000"));
        assert!(check(node(2, None, 5000)).unwrap_err().contains("no leader"));
        assert!(check(NodeStatus { recovering: true, ..node(2, Some(1), 5000) }).unwrap_err().contains("recovering"));
        let unavailable = NodeStatus { role: "unavailable".into(), ..node(2, Some(1), 5000) };
        assert!(check(unavailable).unwrap_err().contains("Raft loop did not answer"));
        let other = NodeStatus { cluster_id: 8, ..node(2, Some(1), 5000) };
        assert!(check(other).unwrap_err().contains("in cluster 0000000000000008"));
        assert!(verdict(&Ok(node(2, Some(3), 5000)), None, 1000).unwrap_err().contains("node 3, did not answer"));
        let down = Err(ClientError::Unreachable("127.0.0.1:1: refused".into()));
        assert!(verdict(&down, Some(&leader), 1000).unwrap_err().contains("refused"));
    }
}
