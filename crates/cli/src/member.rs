//! `raftkv member list|add|promote|remove`: the cluster's configuration.

use clap::Subcommand;
use raftkv_client::{MemberChange, MemberChangeReply, MemberInfo, MemberList, MemberRole, NodeId};

use crate::kv::client;
use crate::{CliError, CliResult, Global};

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Show the configuration as the leader sees it: ID, ADDRESS, ROLE, MATCH (the
    /// leader's replication index of each member), the cluster id, the leader and the
    /// configuration's log index. --json prints it as JSON.
    List,
    /// Add node ID at HOST:PORT as a learner. The leader promotes it to voter once it
    /// has caught up, unless --learner is given.
    Add {
        #[arg(value_parser = parse_id)]
        id: NodeId,
        #[arg(value_name = "HOST:PORT", value_parser = parse_host_port)]
        addr: String,
        /// Keep it a learner (no vote) until `raftkv member promote ID`.
        #[arg(long)]
        learner: bool,
    },
    /// Make learner ID a voter (once it has caught up).
    Promote {
        #[arg(value_parser = parse_id)]
        id: NodeId,
    },
    /// Remove node ID from the configuration (the leader hands leadership off first if
    /// it is the one removed). The removed node stops; its id is never reused.
    Remove {
        #[arg(value_parser = parse_id)]
        id: NodeId,
    },
}

/// A node id: a non-zero number.
fn parse_id(s: &str) -> Result<NodeId, String> {
    match s.trim().parse::<NodeId>() {
        Ok(0) => Err("node ids are non-zero".into()),
        Ok(id) => Ok(id),
        Err(_) => Err("a node id is a positive number, e.g. 4".into()),
    }
}

/// `HOST:PORT` (the host is not resolved: the node may not exist yet).
fn parse_host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT, e.g. 10.0.0.4:6000 (no :PORT)")?;
    if host.is_empty() {
        return Err("expected HOST:PORT, e.g. 10.0.0.4:6000 (no host)".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("the port '{port}' is not a number in 1..=65535")),
    }
}

pub async fn command(global: &Global, cmd: MemberCmd) -> CliResult {
    match cmd {
        MemberCmd::List => list(global).await,
        MemberCmd::Add { id, addr, learner } => {
            let change = MemberChange::Add { id: Some(id), addr, auto_promote: !learner, allocate_if_taken: false };
            let reply = change_member(global, change).await?;
            let m = member(&reply, reply.id)?;
            let then = if learner {
                format!("promote it with `raftkv member promote {}`", m.id)
            } else {
                "the leader promotes it to voter once it has caught up".to_string()
            };
            text_line(global, &reply, format!("added node {} at {} as a learner; {then}", m.id, m.addr));
            Ok(())
        }
        MemberCmd::Promote { id } => {
            let reply = change_member(global, MemberChange::Promote { id }).await?;
            let m = member(&reply, id)?;
            text_line(global, &reply, format!("node {id} at {} is a {}", m.addr, role(m)));
            Ok(())
        }
        MemberCmd::Remove { id } => {
            let reply = change_member(global, MemberChange::Remove { id }).await?;
            text_line(global, &reply, format!("removed node {id}"));
            Ok(())
        }
    }
}

async fn list(global: &Global) -> CliResult {
    let list = client(global)?.members().await?;
    if global.json {
        println!("{}", to_json(&list)?);
    } else {
        print!("{}", member_table(&list));
    }
    Ok(())
}

/// Sends `change`; with --json prints the reply (the caller prints a line otherwise).
async fn change_member(global: &Global, change: MemberChange) -> Result<MemberChangeReply, CliError> {
    let reply = client(global)?.change_member(change).await?;
    if global.json {
        println!("{}", to_json(&reply)?);
    }
    Ok(reply)
}

/// The outcome of a change, in text mode.
fn text_line(global: &Global, reply: &MemberChangeReply, line: String) {
    if !global.json {
        println!("{line} (conf index {})", reply.members.conf_index);
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string(v).map_err(|e| CliError::failed(format!("error: cannot print JSON: {e}")))
}

/// Member `id` in the configuration a change committed.
fn member(reply: &MemberChangeReply, id: NodeId) -> Result<&MemberInfo, CliError> {
    reply.members.members.iter().find(|m| m.id == id).ok_or_else(|| {
        CliError::failed(format!("error: the change committed, but node {id} is not in the configuration it returned"))
    })
}

fn role(m: &MemberInfo) -> &'static str {
    match (m.role, m.auto_promote) {
        (MemberRole::Voter, _) => "voter",
        (MemberRole::Learner, true) => "learner (auto-promote)",
        (MemberRole::Learner, false) => "learner",
    }
}

/// A summary line (the cluster id in hex, as the servers log it), then an aligned table, one row per member, then removed ids.
pub fn member_table(list: &MemberList) -> String {
    let mut out = format!(
        "cluster {:016x}  leader {}  conf index {} ({})  answered by node {}\n",
        list.cluster_id,
        list.leader.map_or("-".into(), |l| l.to_string()),
        list.conf_index,
        if list.committed { "committed" } else { "not committed yet" },
        list.node
    );
    let mut rows: Vec<[String; 4]> = vec![["ID", "ADDRESS", "ROLE", "MATCH"].map(String::from)];
    for m in &list.members {
        rows.push([
            m.id.to_string(),
            m.addr.clone(),
            role(m).to_string(),
            m.match_index.map_or("-".into(), |i| i.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if !list.removed.is_empty() {
        let removed: Vec<String> = list.removed.iter().map(|id| id.to_string()).collect();
        out.push_str(&format!("removed (ids never reused): {}\n", removed.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_addresses_are_checked() {
        assert_eq!(parse_id("4"), Ok(4));
        assert!(parse_id("0").unwrap_err().contains("non-zero"));
        assert!(parse_id("x").is_err() && parse_id("-1").is_err());
        assert_eq!(parse_host_port("raft-3.raft-service:6000").as_deref(), Ok("raft-3.raft-service:6000"));
        assert_eq!(parse_host_port("[::1]:6000").as_deref(), Ok("[::1]:6000"));
        for bad in ["10.0.0.4", ":6000", "h:0", "h:port", "h:70000"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_table_is_aligned() {
        let m = |id, role, auto_promote, match_index| MemberInfo {
            id,
            addr: format!("127.0.0.1:700{id}"),
            role,
            auto_promote,
            match_index,
        };
        let list = MemberList {
            cluster_id: 77,
            node: 1,
            leader: Some(1),
            conf_index: 12,
            committed: true,
            members: vec![
                m(1, MemberRole::Voter, false, Some(120)),
                m(4, MemberRole::Learner, true, Some(90)),
                m(5, MemberRole::Learner, false, None),
            ],
            removed: vec![2, 3],
        };
        let table = member_table(&list);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0], "cluster 000000000000004d  leader 1  conf index 12 (committed)  answered by node 1",
            "{table}"
        );
        assert_eq!(lines[1], "ID  ADDRESS         ROLE                    MATCH", "{table}");
        assert_eq!(lines[2], "1   127.0.0.1:7001  voter                   120", "{table}");
        assert_eq!(lines[3], "4   127.0.0.1:7004  learner (auto-promote)  90", "{table}");
        assert_eq!(lines[4], "5   127.0.0.1:7005  learner                 -", "{table}");
        assert_eq!(lines[5], "removed (ids never reused): 2, 3", "{table}");
    }
}
