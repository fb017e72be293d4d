//! Which cluster this node belongs to, and as which id: read from the data dir's meta
//! file, or established once — by founding a cluster (`--peers`) or by joining one
//! (`--join`) — and then written there for good.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use raftkv_raft::{ConfChange, ConfChangeKind, NodeId};
use raftkv_rpc::{MemberChange, MemberChangeReply, RequestError, tarpc};
use raftkv_storage::{FileSystem, NodeMeta, Tombstone};
use tokio::time::Instant;

use crate::args::NodeConfig;
use raftkv_replica::{MemberContext, cluster_id};

/// Static mode gives up joining after this long.
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one join attempt (connecting, then the change committing).
const JOIN_ATTEMPT: Duration = Duration::from_secs(10);
const JOIN_MIN_BACKOFF: Duration = Duration::from_millis(100);
const JOIN_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Leader hints followed in a row before backing off (two nodes that each name the
/// other must not make a busy loop).
const MAX_REDIRECTS: u32 = 3;

/// How the Raft core starts.
#[derive(Debug)]
pub(crate) enum Start {
    /// A brand-new member of a new cluster: the log starts with these changes (unless
    /// storage already holds a log).
    Bootstrap(Vec<ConfChange>),
    /// From whatever storage holds (nothing, for a member that joined and has not
    /// received the log yet: it learns the configuration from the leader).
    Resume,
    /// Just joined: as `Resume`, knowing the members' addresses from the reply.
    Joined(MemberChangeReply),
}

/// This node's identity in its cluster, and how to start.
#[derive(Debug)]
pub(crate) struct Identity {
    pub id: NodeId,
    pub cluster_id: u64,
    pub start: Start,
}

/// Refuses a data dir whose node was removed from its cluster.
pub(crate) fn check_tombstone(fs: &dyn FileSystem, dir: &Path) -> anyhow::Result<()> {
    let tombstone = Tombstone::load(fs, dir).with_context(|| format!("reading the tombstone in {}", dir.display()))?;
    if let Some(t) = tombstone {
        bail!(
            "refusing to start: the data dir {} belongs to node {}, which was removed from cluster {:016x}{}; \
             a removed node never serves again. Delete the data dir to join again as a new member (with a new id)",
            dir.display(),
            t.node_id,
            t.cluster_id,
            if t.index > 0 { format!(" by the configuration change at index {}", t.index) } else { String::new() },
        );
    }
    Ok(())
}

/// Writes the tombstone of a removed node.
pub(crate) fn write_tombstone(fs: &dyn FileSystem, dir: &Path, t: Tombstone) -> anyhow::Result<()> {
    t.save(fs, dir).with_context(|| format!("writing the tombstone in {}", dir.display()))
}

/// Reads the node's identity from the data dir's meta file, or establishes it (founds
/// or joins, per `cfg`) and writes the meta file. `has_log`: storage holds entries or a
/// snapshot.
pub(crate) async fn establish(cfg: &NodeConfig, fs: &dyn FileSystem, has_log: bool) -> anyhow::Result<Identity> {
    let dir = &cfg.data_dir;
    let meta = NodeMeta::load(fs, dir).with_context(|| format!("reading the meta file in {}", dir.display()))?;
    let save =
        |meta: NodeMeta| meta.save(fs, dir).with_context(|| format!("writing the meta file in {}", dir.display()));
    let token = &cfg.cluster.token;
    match meta {
        Some(meta) if must_rejoin(cfg, has_log) => rejoin(cfg, meta).await,
        Some(meta) => resume(cfg, meta, has_log),
        None if has_log => {
            if !cfg.cluster.join.is_empty() {
                bail!(
                    "the data dir {} holds a log but no meta file (written by an older version, which could only \
                     found clusters): start it with the --peers and --cluster-token it was founded with, not --join",
                    dir.display()
                );
            }
            let cluster_id = cluster_id(token, &cfg.peers);
            tracing::info!(
                cluster_id = format!("{cluster_id:016x}"),
                "the data dir predates meta files: derived the cluster id from --cluster-token and --peers"
            );
            save(NodeMeta { cluster_id, node_id: cfg.id })?;
            Ok(Identity { id: cfg.id, cluster_id, start: Start::Resume })
        }
        None if !cfg.cluster.join.is_empty() => {
            let reply = join(cfg).await?;
            let meta = NodeMeta { cluster_id: reply.members.cluster_id, node_id: reply.id };
            save(meta)?;
            tracing::info!(
                id = reply.id,
                cluster_id = format!("{:016x}", meta.cluster_id),
                "joined the cluster as a learner"
            );
            Ok(Identity { id: reply.id, cluster_id: meta.cluster_id, start: Start::Joined(reply) })
        }
        None => {
            let cluster_id = cluster_id(token, &cfg.peers);
            save(NodeMeta { cluster_id, node_id: cfg.id })?;
            tracing::info!(cluster_id = format!("{cluster_id:016x}"), members = ?cfg.peers, "founding a new cluster");
            Ok(Identity { id: cfg.id, cluster_id, start: Start::Bootstrap(bootstrap_changes(&cfg.peers)) })
        }
    }
}

/// A node that joined, then stopped before it received any entry, knows no member
/// address and would wait for ever: it asks to join again under its stored id.
fn must_rejoin(cfg: &NodeConfig, has_log: bool) -> bool {
    !has_log && !cfg.cluster.join.is_empty()
}

/// Joins again as the node the meta file names; the cluster still lists it as a learner
/// at the same address, so it answers with the same id and the current members.
async fn rejoin(cfg: &NodeConfig, meta: NodeMeta) -> anyhow::Result<Identity> {
    tracing::info!(id = meta.node_id, "the data dir has a node id but no log: asking to join again");
    let mut again = cfg.clone();
    again.id = meta.node_id;
    let reply = join(&again).await?;
    if reply.id != meta.node_id || reply.members.cluster_id != meta.cluster_id {
        bail!(
            "the data dir {} belongs to node {} of cluster {:016x}, but joining again answered node {} of cluster              {:016x}: start this node with another data dir",
            cfg.data_dir.display(),
            meta.node_id,
            meta.cluster_id,
            reply.id,
            reply.members.cluster_id
        );
    }
    Ok(Identity { id: meta.node_id, cluster_id: meta.cluster_id, start: Start::Joined(reply) })
}

/// The data dir already belongs to a cluster.
fn resume(cfg: &NodeConfig, meta: NodeMeta, has_log: bool) -> anyhow::Result<Identity> {
    if meta.node_id != cfg.id {
        if !cfg.cluster.allocate_id {
            bail!(
                "--id is {}, but the data dir {} belongs to node {} (of cluster {:016x}): use --id {} or another data dir",
                cfg.id,
                cfg.data_dir.display(),
                meta.node_id,
                meta.cluster_id,
                meta.node_id
            );
        }
        tracing::info!(requested = cfg.id, id = meta.node_id, "using the node id the cluster gave this data dir");
    }
    if !cfg.cluster.join.is_empty() || cfg.peers.len() > 1 {
        tracing::info!(
            id = meta.node_id,
            cluster_id = format!("{:016x}", meta.cluster_id),
            "the data dir belongs to a cluster already: --join and --peers are ignored for its configuration"
        );
    }
    // A founding member that stopped before its first write bootstraps again: the
    // same entries as every other founding member.
    let founder = cfg.cluster.join.is_empty() && cfg.peers.contains_key(&meta.node_id);
    let start = if !has_log && founder {
        let derived = cluster_id(&cfg.cluster.token, &cfg.peers);
        if derived != meta.cluster_id {
            bail!(
                "the data dir {} belongs to cluster {:016x}, but --peers and --cluster-token describe cluster {derived:016x}",
                cfg.data_dir.display(),
                meta.cluster_id
            );
        }
        Start::Bootstrap(bootstrap_changes(&cfg.peers))
    } else {
        Start::Resume
    };
    Ok(Identity { id: meta.node_id, cluster_id: meta.cluster_id, start })
}

/// One AddVoter per founding member, carrying its address.
pub(crate) fn bootstrap_changes(peers: &BTreeMap<NodeId, String>) -> Vec<ConfChange> {
    peers
        .iter()
        .map(|(id, addr)| {
            let ctx = MemberContext { addr: addr.clone(), auto_promote: false };
            ConfChange::new(ConfChangeKind::AddVoter, *id, ctx.encode())
        })
        .collect()
}

/// Why one join attempt failed.
enum Attempt {
    /// Ask this address next (the leader's, as a follower said).
    Redirect(String),
    /// The cluster said no (say, the id is taken).
    Refused(String),
    /// Worth retrying.
    Failed(String),
}

/// Asks the `--join` members to add this node as an auto-promoted learner, following
/// leader hints and retrying with bounded backoff: for at most [`JOIN_TIMEOUT`] in
/// static mode, for ever (logging each failure) in Kubernetes mode.
async fn join(cfg: &NodeConfig) -> anyhow::Result<MemberChangeReply> {
    let seeds = &cfg.cluster.join;
    let change = MemberChange::Add {
        id: Some(cfg.id),
        addr: cfg.cluster.advertise.clone(),
        auto_promote: true,
        allocate_if_taken: cfg.cluster.allocate_id,
    };
    let keep_trying = cfg.cluster.allocate_id;
    let give_up = Instant::now() + JOIN_TIMEOUT;
    let (mut backoff, mut next_seed, mut redirects) = (JOIN_MIN_BACKOFF, 0, 0);
    let mut target = seeds[0].clone();
    tracing::info!(id = cfg.id, advertise = %cfg.cluster.advertise, join = ?seeds, "joining a cluster");
    loop {
        let error = match attempt(&target, &change, cfg.tls.as_ref()).await {
            Ok(reply) => return check_reply(cfg, reply),
            Err(Attempt::Redirect(leader)) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                target = leader;
                continue;
            }
            Err(Attempt::Redirect(leader)) => format!("redirected too often (last to {leader})"),
            Err(Attempt::Refused(msg)) if !keep_trying => {
                bail!("cannot join the cluster through {target}: it refused: {msg}");
            }
            Err(Attempt::Refused(msg)) => format!("refused: {msg}"),
            Err(Attempt::Failed(msg)) => msg,
        };
        if !keep_trying && Instant::now() + backoff >= give_up {
            bail!(
                "cannot join the cluster through --join {}: no member added this node within {}s (last error, from \
                 {target}: {error})",
                seeds.join(","),
                JOIN_TIMEOUT.as_secs()
            );
        }
        tracing::warn!(id = cfg.id, through = %target, error, retry_in_ms = backoff.as_millis() as u64, "join attempt failed");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(JOIN_MAX_BACKOFF);
        redirects = 0;
        target = seeds[next_seed % seeds.len()].clone();
        next_seed += 1;
    }
}

/// Static mode insists on the id it asked for.
fn check_reply(cfg: &NodeConfig, reply: MemberChangeReply) -> anyhow::Result<MemberChangeReply> {
    if reply.id != cfg.id && !cfg.cluster.allocate_id {
        bail!(
            "cannot join as node {}: the address {} already belongs to learner {} of the cluster; start with --id {} \
             or remove that learner first",
            cfg.id,
            cfg.cluster.advertise,
            reply.id,
            reply.id
        );
    }
    if reply.members.cluster_id == 0 {
        bail!("the cluster answered the join without a cluster id");
    }
    Ok(reply)
}

async fn attempt(
    addr: &str,
    change: &MemberChange,
    tls: Option<&raftkv_rpc::TlsConfig>,
) -> Result<MemberChangeReply, Attempt> {
    let client = match tokio::time::timeout(JOIN_ATTEMPT, raftkv_rpc::connect_with(addr, tls)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(Attempt::Failed(format!("cannot connect to {addr}: {e}"))),
        Err(_) => return Err(Attempt::Failed(format!("connecting to {addr} timed out"))),
    };
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + JOIN_ATTEMPT;
    match client.change_member(ctx, change.clone()).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(RequestError::NotLeader { leader_addr: Some(leader), .. })) => Err(Attempt::Redirect(leader)),
        Ok(Err(RequestError::Invalid(msg))) => Err(Attempt::Refused(msg)),
        Ok(Err(e)) => Err(Attempt::Failed(e.to_string())),
        Err(e) => Err(Attempt::Failed(format!("the request to {addr} failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::ClusterConfig;
    use raftkv_storage::RealFs;

    fn config(dir: &Path, id: NodeId, peers: &[(NodeId, &str)], join: &[&str]) -> NodeConfig {
        NodeConfig {
            id,
            listen: "127.0.0.1:1".into(),
            peers: peers.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            data_dir: dir.to_path_buf(),
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 0,
            fsync: raftkv_storage::FsyncPolicy::Always,
            cluster: ClusterConfig {
                join: join.iter().map(|s| s.to_string()).collect(),
                ..ClusterConfig::found("127.0.0.1:1")
            },
            storage: None,
            tls: None,
            enable_faults: false,
        }
    }

    #[tokio::test]
    async fn founding_writes_meta_and_restarts_check_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let peers = [(1, "a:1"), (2, "b:2")];
        let cfg = config(dir.path(), 1, &peers, &[]);
        let first = establish(&cfg, &RealFs, false).await.unwrap();
        let expected = cluster_id("raftkv", &cfg.peers);
        assert_eq!((first.id, first.cluster_id), (1, expected));
        let Start::Bootstrap(changes) = first.start else { panic!("founds") };
        assert_eq!(changes.len(), 2);
        assert_eq!(MemberContext::decode(&changes[1].context).unwrap().addr, "b:2");
        assert_eq!(NodeMeta::load(&RealFs, dir.path()).unwrap(), Some(NodeMeta { cluster_id: expected, node_id: 1 }));

        // With a log, a restart resumes whatever the flags say now.
        let other = config(dir.path(), 1, &[(1, "x:1")], &[]);
        let again = establish(&other, &RealFs, true).await.unwrap();
        assert!(matches!(again.start, Start::Resume));
        assert_eq!(again.cluster_id, expected);
        // Without one (stopped before the first write), it bootstraps again — only
        // with the same founding members.
        assert!(matches!(establish(&cfg, &RealFs, false).await.unwrap().start, Start::Bootstrap(_)));
        let e = establish(&config(dir.path(), 1, &[(1, "a:1")], &[]), &RealFs, false).await.unwrap_err();
        assert!(e.to_string().contains("describe cluster"), "{e:#}");
        // Another --id is refused, naming both.
        let e = establish(&config(dir.path(), 2, &peers, &[]), &RealFs, true).await.unwrap_err().to_string();
        assert!(e.contains("--id is 2") && e.contains("belongs to node 1"), "{e}");
        // Kubernetes mode: the stored id wins.
        let mut k8s = config(dir.path(), 2, &peers, &[]);
        k8s.cluster.allocate_id = true;
        assert_eq!(establish(&k8s, &RealFs, true).await.unwrap().id, 1);
    }

    #[tokio::test]
    async fn an_old_data_dir_gets_meta_from_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 3, &[(1, "a:1"), (3, "c:3")], &[]);
        let id = establish(&cfg, &RealFs, true).await.unwrap();
        assert!(matches!(id.start, Start::Resume));
        let meta = NodeMeta::load(&RealFs, dir.path()).unwrap().unwrap();
        assert_eq!(meta, NodeMeta { cluster_id: cluster_id("raftkv", &cfg.peers), node_id: 3 });
        let dir = tempfile::tempdir().unwrap();
        let e = establish(&config(dir.path(), 3, &[], &["h:1"]), &RealFs, true).await.unwrap_err();
        assert!(e.to_string().contains("not --join"), "{e:#}");
    }

    #[tokio::test]
    async fn tombstones_refuse_to_start_naming_dir_cluster_and_id() {
        let dir = tempfile::tempdir().unwrap();
        check_tombstone(&RealFs, dir.path()).unwrap();
        write_tombstone(&RealFs, dir.path(), Tombstone { cluster_id: 0xabc, node_id: 4, index: 17 }).unwrap();
        let e = check_tombstone(&RealFs, dir.path()).unwrap_err().to_string();
        for part in [&dir.path().display().to_string(), "node 4", "0000000000000abc", "index 17", "Delete the data dir"]
        {
            assert!(e.contains(part), "{part} missing in {e}");
        }
    }

    #[tokio::test]
    async fn joining_an_unreachable_cluster_names_the_seed() {
        // Refused connections fail fast; the port is free once the listener is dropped.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let seed = l.local_addr().unwrap().to_string();
        drop(l);
        let Err(Attempt::Failed(msg)) = attempt(&seed, &MemberChange::Promote { id: 1 }, None).await else {
            panic!("a dead seed fails the attempt")
        };
        assert!(msg.contains(&seed), "{msg}");
    }
}
