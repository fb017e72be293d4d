//! `raftkv member list|add|promote|remove`: the cluster's configuration.

use clap::Subcommand;
use raftkv_client::table::Table;
use raftkv_client::{MemberChange, MemberChangeReply, MemberInfo, MemberList, MemberRole, NodeId};
use serde_json::json;

use crate::global::{CliError, CliResult, Global, Output, parse_host_port};
use crate::kv::client;
use crate::output::{print_json, write_out};

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Show the configuration as the leader sees it: ID, ADDRESS, ROLE, MATCH (the
    /// leader's replication index of each member), the cluster id, the leader and the
    /// configuration's log index.
    List,
    /// Add node ID at HOST:PORT as a learner. The leader promotes it to voter once it
    /// has caught up, unless --learner is given.
    #[command(
        after_help = "Examples:\n  raftkv member add 4 10.0.0.4:6000\n  raftkv member add 5 10.0.0.5:6000 --learner"
    )]
    Add {
        /// The new node's id: a number never used in this cluster before.
        #[arg(value_parser = parse_id)]
        id: NodeId,
        /// The address its peers and clients reach it at.
        #[arg(value_name = "HOST:PORT", value_parser = parse_host_port)]
        addr: String,
        /// Keep it a learner (no vote) until `raftkv member promote ID`.
        #[arg(long)]
        learner: bool,
    },
    /// Make learner ID a voter (once it has caught up).
    Promote {
        /// The learner's id.
        #[arg(value_parser = parse_id)]
        id: NodeId,
    },
    /// Remove node ID from the configuration (the leader hands leadership off first if
    /// it is the one removed). The removed node stops; its id is never reused.
    Remove {
        /// The member's id.
        #[arg(value_parser = parse_id)]
        id: NodeId,
    },
}

/// A node id: a non-zero number.
pub fn parse_id(s: &str) -> Result<NodeId, String> {
    match s.trim().parse::<NodeId>() {
        Ok(0) => Err("node ids are non-zero".into()),
        Ok(id) => Ok(id),
        Err(_) => Err("a node id is a positive number, e.g. 4".into()),
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
    match global.output(Output::Table) {
        Output::Json => print_json(&list_json(&list)),
        Output::Table => write_out(member_table(&list).as_bytes()),
        Output::Simple => write_out(member_rows(&list).render_simple().as_bytes()),
    }
}

/// Sends `change`; prints the reply unless the format is simple (the caller prints
/// its line then).
async fn change_member(global: &Global, change: MemberChange) -> Result<MemberChangeReply, CliError> {
    let reply = client(global)?.change_member(change).await?;
    match global.output(Output::Simple) {
        Output::Json => print_json(&json!({"id": reply.id, "members": list_json(&reply.members)}))?,
        Output::Table => write_out(member_table(&reply.members).as_bytes())?,
        Output::Simple => {}
    }
    Ok(reply)
}

/// The outcome of a change, in simple output.
fn text_line(global: &Global, reply: &MemberChangeReply, line: String) {
    if global.output(Output::Simple) == Output::Simple {
        println!("{line} (conf index {})", reply.members.conf_index);
    }
}

/// The member list as JSON: roles in lower case, as everywhere in the CLI's output.
fn list_json(list: &MemberList) -> serde_json::Value {
    let members: Vec<serde_json::Value> = list
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "addr": m.addr,
                "role": role_name(m.role),
                "auto_promote": m.auto_promote,
                "match_index": m.match_index,
            })
        })
        .collect();
    json!({
        "cluster_id": list.cluster_id,
        "node": list.node,
        "leader": list.leader,
        "conf_index": list.conf_index,
        "committed": list.committed,
        "members": members,
        "removed": list.removed,
    })
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
    }
}

/// Member `id` in the configuration a change committed.
fn member(reply: &MemberChangeReply, id: NodeId) -> Result<&MemberInfo, CliError> {
    reply.members.members.iter().find(|m| m.id == id).ok_or_else(|| {
        CliError::failed(format!("error: the change committed, but node {id} is not in the configuration it returned"))
    })
}

fn role(m: &MemberInfo) -> &'static str {
    match (m.role, m.auto_promote) {
        (MemberRole::Learner, true) => "learner (auto-promote)",
        (role, _) => role_name(role),
    }
}

/// One row per member: ID, ADDRESS, ROLE, MATCH.
fn member_rows(list: &MemberList) -> Table {
    let mut t = Table::new(&["ID", "ADDRESS", "ROLE", "MATCH"]);
    for m in &list.members {
        t.row([
            m.id.to_string(),
            m.addr.clone(),
            role(m).to_string(),
            m.match_index.map_or("-".into(), |i| i.to_string()),
        ]);
    }
    t
}

/// A summary line (the cluster id in hex, as the servers log it), then an aligned
/// table, one row per member, then removed ids.
pub fn member_table(list: &MemberList) -> String {
    let mut out = format!(
        "cluster {:016x}  leader {}  conf index {} ({})  answered by node {}\n",
        list.cluster_id,
        list.leader.map_or("-".into(), |l| l.to_string()),
        list.conf_index,
        if list.committed { "committed" } else { "not committed yet" },
        list.node
    );
    out.push_str(&member_rows(list).render());
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
    fn ids_are_checked() {
        assert_eq!(parse_id("4"), Ok(4));
        assert!(parse_id("0").unwrap_err().contains("non-zero"));
        assert!(parse_id("x").is_err() && parse_id("-1").is_err());
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
