//! The interaction environment: a few [`RawNode`]s, each with a simulated disk and a
//! state machine, joined by a scripted network. Nothing happens unless a command says
//! so: time passes only by `tick`, messages move only by `deliver-msgs` or
//! `stabilize`, and a Ready is carried out only by `process-ready` or `stabilize`.
//!
//! Commands (ids are node ids; `(a,b)` is a list):
//!
//! - `add-nodes N [voters=(..)] [learners=(..)] [lost-state=B] [SETTING=V ..]`: N new
//!   nodes with the next free ids. With `voters`, they found a cluster of that
//!   configuration; without, they join one (no configuration). `lost-state=true`
//!   starts them like an empty data dir does ([`Recovered::empty`]). Settings of
//!   [`Config`]: prevote, checkquorum, election, heartbeat, slack (compaction_slack),
//!   chunk (snapshot_chunk_bytes), max-snapshot, max-inflight, max-append,
//!   promotion-lag, seed.
//! - `campaign ID`, `tick ID.. [n=N | until=change]`
//! - `propose ID DATA`, `propose-conf-change ID add-learner|promote|add-voter|remove NODE`,
//!   `read-index ID CTX`, `transfer-leader ID TARGET`, `confirm-new-cluster ID`
//! - `process-ready ID..`, `deliver-msgs [ID..] [drop=(..)] [type=NAME] [from=ID] [max=N]`,
//!   `stabilize [ID..]`, `msgs [ID..]` (`max=N`: at most N messages per recipient)
//! - `compact ID`: the state machine is snapshotted at the applied index.
//! - `crash ID`, `restart ID [wipe] [SETTING=V ..]`: a restart
//!   recovers what the disk holds; `wipe` empties the disk first (the node comes back
//!   as an empty data dir would). Each start has its own seed (`id | restarts << 32`)
//!   unless `seed=` says otherwise; a node's first seed is its id.
//! - `isolate ID..`, `partition (..) (..)`, `heal`: messages across a cut are dropped
//!   when delivered.
//! - `status ID`, `raft-state`, `raft-log ID`, `kv ID`
//! - `log-level none|all`: hide the output of set-up steps (they still run).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::str::FromStr;

use bytes::Bytes;
use raftkv_raft::{
    ConfChange, ConfChangeKind, ConfState, Config, Entry, EntryKind, HardState, Message, NodeId, RawNode, Recovered,
    Snapshot, SnapshotMeta,
};

use crate::describe;
use crate::script::{Arg, Command};

/// What a node's disk holds: exactly what its Readies asked to persist.
#[derive(Clone, Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Disk {
    fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty()
    }
}

struct Node {
    /// `None` while crashed.
    raw: Option<RawNode>,
    cfg: Config,
    /// The configuration it was started with: a founder's bootstraps a brand-new
    /// cluster (again, after a wipe); a joiner's is empty.
    start_conf: ConfState,
    disk: Disk,
    /// The state machine: every applied command, in order. Snapshots hold it joined
    /// by commas.
    kv: Vec<String>,
    /// The soft state (role, term, leader) last printed.
    shown: Option<String>,
    /// Restarts so far: each start gets its own seed, as raftkv-server and the
    /// simulation give it (the recovery nonce is drawn from it).
    restarts: u64,
}

/// Collects a command's output, indented under `stabilize`'s headers.
#[derive(Default)]
struct Output {
    text: String,
    indent: usize,
}

impl Output {
    fn line(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "{:width$}{}", "", line.as_ref(), width = self.indent);
    }
}

pub struct Env {
    nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered or dropped, in the order they were sent.
    net: Vec<Message>,
    /// Directed links that drop what crosses them.
    cut: BTreeSet<(NodeId, NodeId)>,
    out: Output,
    /// `log-level none`: outputs are replaced by `ok` (for uninteresting set-up steps,
    /// as in etcd-raft's tests).
    quiet: bool,
}

/// A command's arguments, checked against the keys it accepts.
struct Args<'a> {
    pos: Vec<&'a str>,
    kv: BTreeMap<&'a str, &'a str>,
}

impl<'a> Args<'a> {
    fn new(cmd: &'a Command, keys: &[&str]) -> Result<Args<'a>, String> {
        let mut args = Args { pos: Vec::new(), kv: BTreeMap::new() };
        for arg in &cmd.args {
            match arg {
                Arg::Pos(p) => args.pos.push(p),
                Arg::Kv(k, v) if keys.contains(&k.as_str()) => {
                    args.kv.insert(k, v);
                }
                Arg::Kv(k, _) => return Err(format!("unknown argument {k}= (accepted: {keys:?})")),
            }
        }
        Ok(args)
    }

    fn pos(&self, i: usize, what: &str) -> Result<&'a str, String> {
        self.pos.get(i).copied().ok_or_else(|| format!("missing argument {} ({what})", i + 1))
    }

    fn id(&self, i: usize) -> Result<NodeId, String> {
        parse(self.pos(i, "node id")?)
    }

    fn ids(&self) -> Result<Vec<NodeId>, String> {
        self.pos.iter().map(|p| parse(p)).collect()
    }

    fn get<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.kv.get(key).map(|v| parse(v)).transpose()
    }

    fn list(&self, key: &str) -> Result<Option<Vec<u64>>, String> {
        self.kv.get(key).map(|v| parse_list(v)).transpose()
    }
}

/// The [`Config`] settings `add-nodes` and `restart` accept.
const CONFIG_KEYS: [&str; 11] = [
    "prevote",
    "checkquorum",
    "election",
    "heartbeat",
    "slack",
    "chunk",
    "max-snapshot",
    "max-inflight",
    "max-append",
    "promotion-lag",
    "seed",
];

fn configure(cfg: &mut Config, args: &Args) -> Result<(), String> {
    cfg.pre_vote = args.get("prevote")?.unwrap_or(cfg.pre_vote);
    cfg.check_quorum = args.get("checkquorum")?.unwrap_or(cfg.check_quorum);
    cfg.election_tick = args.get("election")?.unwrap_or(cfg.election_tick);
    cfg.heartbeat_tick = args.get("heartbeat")?.unwrap_or(cfg.heartbeat_tick);
    cfg.compaction_slack = args.get("slack")?.unwrap_or(cfg.compaction_slack);
    cfg.snapshot_chunk_bytes = args.get("chunk")?.unwrap_or(cfg.snapshot_chunk_bytes);
    cfg.max_snapshot_bytes = args.get("max-snapshot")?.unwrap_or(cfg.max_snapshot_bytes);
    cfg.max_inflight_appends = args.get("max-inflight")?.unwrap_or(cfg.max_inflight_appends);
    cfg.max_append_bytes = args.get("max-append")?.unwrap_or(cfg.max_append_bytes);
    cfg.max_promotion_lag = args.get("promotion-lag")?.unwrap_or(cfg.max_promotion_lag);
    cfg.seed = args.get("seed")?.unwrap_or(cfg.seed);
    Ok(())
}

fn parse<T: FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("cannot parse {s:?}"))
}

/// `(1,2,3)` or `()`.
fn parse_list(s: &str) -> Result<Vec<u64>, String> {
    let inner =
        s.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| format!("{s:?} is not a (list)"))?;
    inner.split(',').filter(|p| !p.is_empty()).map(parse).collect()
}

impl Env {
    pub fn new() -> Env {
        Env { nodes: BTreeMap::new(), net: Vec::new(), cut: BTreeSet::new(), out: Output::default(), quiet: false }
    }

    /// Runs one command. An `Err` is a mistake in the scenario (the test fails); what
    /// the core refuses is output.
    pub fn run(&mut self, cmd: &Command) -> Result<String, String> {
        self.out = Output::default();
        match cmd.name.as_str() {
            "add-nodes" => self.add_nodes(cmd)?,
            "campaign" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                self.raw(id)?.campaign();
            }
            "tick" => self.tick(cmd)?,
            "propose" => {
                let args = Args::new(cmd, &[])?;
                let id = args.id(0)?;
                let data = Bytes::copy_from_slice(args.pos(1, "data")?.as_bytes());
                let result = self.raw(id)?.propose(data);
                self.report(result.map(|(index, term)| format!("index={index} term={term}")));
            }
            "propose-conf-change" => self.propose_conf_change(cmd)?,
            "read-index" => {
                let args = Args::new(cmd, &[])?;
                let (id, ctx) = (args.id(0)?, parse(args.pos(1, "ctx")?)?);
                let result = self.raw(id)?.read_index(ctx);
                self.report(result.map(|()| "ok".to_string()));
            }
            "transfer-leader" => {
                let args = Args::new(cmd, &[])?;
                let (id, target) = (args.id(0)?, args.id(1)?);
                let result = self.raw(id)?.transfer_leader(target);
                self.report(result.map(|()| "ok".to_string()));
            }
            "confirm-new-cluster" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                let confirmed = self.raw(id)?.confirm_new_cluster();
                self.out.line(format!("confirmed={confirmed}"));
            }
            "process-ready" => {
                for id in Args::new(cmd, &[])?.ids()? {
                    self.process_ready(id)?;
                }
            }
            "deliver-msgs" => self.deliver_msgs(cmd)?,
            "stabilize" => {
                let ids = Args::new(cmd, &[])?.ids()?;
                self.stabilize(ids)?;
            }
            "msgs" => {
                let ids = Args::new(cmd, &[])?.ids()?;
                let pending: Vec<String> =
                    self.net.iter().filter(|m| ids.is_empty() || ids.contains(&m.to)).map(describe::message).collect();
                for line in pending {
                    self.out.line(line);
                }
            }
            "compact" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                self.compact(id)?;
            }
            "crash" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                self.node(id)?.raw = None;
            }
            "restart" => {
                let args = Args::new(cmd, &CONFIG_KEYS)?;
                let node = self.node(args.id(0)?)?;
                node.restarts += 1;
                // Fixed, but new per start: id in the low bits, the start in the high.
                node.cfg.seed = node.cfg.id | (node.restarts << 32);
                configure(&mut node.cfg, &args)?;
                let wipe = match args.pos.get(1) {
                    None => false,
                    Some(&"wipe") => true,
                    Some(other) => return Err(format!("restart takes `wipe` or nothing, not {other:?}")),
                };
                self.restart(args.id(0)?, wipe)?;
            }
            "isolate" => {
                let isolated = Args::new(cmd, &[])?.ids()?;
                let all: Vec<NodeId> = self.nodes.keys().copied().collect();
                for &a in &isolated {
                    for &b in all.iter().filter(|&&b| b != a) {
                        self.cut.insert((a, b));
                        self.cut.insert((b, a));
                    }
                }
            }
            "partition" => {
                let args = Args::new(cmd, &[])?;
                let groups: Vec<Vec<u64>> = args.pos.iter().map(|g| parse_list(g)).collect::<Result<_, _>>()?;
                for (i, g) in groups.iter().enumerate() {
                    for h in groups.iter().skip(i + 1) {
                        for &a in g {
                            for &b in h {
                                self.cut.insert((a, b));
                                self.cut.insert((b, a));
                            }
                        }
                    }
                }
            }
            "heal" => self.cut.clear(),
            "status" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                let status = self.raw(id)?.status();
                self.out.line(describe::status(&status));
                for p in &status.progress {
                    self.out.line(format!("  {}", describe::progress(p)));
                }
            }
            "raft-state" => {
                let lines: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|(id, n)| n.raw.as_ref().map_or(format!("{id}: down"), |r| describe::status(&r.status())))
                    .collect();
                for line in lines {
                    self.out.line(line);
                }
            }
            "raft-log" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                let raw = self.raw(id)?;
                let status = raw.status();
                let mut lines = vec![format!("first={} last={}", status.first_index, status.last_index)];
                lines.extend(raw.log_entries().iter().map(describe::entry));
                for line in lines {
                    self.out.line(line);
                }
            }
            "kv" => {
                let id = Args::new(cmd, &[])?.id(0)?;
                let kv = self.node(id)?.kv.join(",");
                self.out.line(format!("applied=[{kv}]"));
            }
            "log-level" => {
                self.quiet = match Args::new(cmd, &[])?.pos(0, "none or all")? {
                    "none" => true,
                    "all" => false,
                    other => return Err(format!("log-level {other:?} (none or all)")),
                };
            }
            other => return Err(format!("unknown command {other:?}")),
        }
        if self.out.text.is_empty() || self.quiet {
            self.out.text.clear();
            self.out.line("ok");
        }
        Ok(std::mem::take(&mut self.out.text))
    }

    fn report<E: std::fmt::Display>(&mut self, result: Result<String, E>) {
        match result {
            Ok(s) => self.out.line(s),
            Err(e) => self.out.line(format!("error: {e}")),
        }
    }

    fn node(&mut self, id: NodeId) -> Result<&mut Node, String> {
        self.nodes.get_mut(&id).ok_or_else(|| format!("no node {id}"))
    }

    fn raw(&mut self, id: NodeId) -> Result<&mut RawNode, String> {
        self.node(id)?.raw.as_mut().ok_or_else(|| format!("node {id} is down"))
    }

    fn add_nodes(&mut self, cmd: &Command) -> Result<(), String> {
        let keys: Vec<&str> = ["voters", "learners", "lost-state"].into_iter().chain(CONFIG_KEYS).collect();
        let args = Args::new(cmd, &keys)?;
        let count: u64 = parse(args.pos(0, "number of nodes")?)?;
        let mut start_conf = ConfState::default();
        if let Some(voters) = args.list("voters")? {
            start_conf.voters = voters.into_iter().collect();
        }
        if let Some(learners) = args.list("learners")? {
            start_conf.learners = learners.into_iter().collect();
        }
        let lost_state = args.get("lost-state")?.unwrap_or(false);
        let first = self.nodes.keys().max().map_or(1, |m| m + 1);
        for id in first..first + count {
            let mut cfg = Config::new(id);
            configure(&mut cfg, &args)?;
            let recovered = if lost_state { Recovered::empty() } else { Recovered::default() };
            let raw = RawNode::new(cfg.clone(), start_conf.clone(), recovered).map_err(|e| e.to_string())?;
            let node = Node {
                raw: Some(raw),
                cfg,
                start_conf: start_conf.clone(),
                disk: Disk::default(),
                kv: Vec::new(),
                shown: None,
                restarts: 0,
            };
            self.nodes.insert(id, node);
        }
        Ok(())
    }

    fn tick(&mut self, cmd: &Command) -> Result<(), String> {
        let args = Args::new(cmd, &["n", "until"])?;
        let until_change = match args.kv.get("until") {
            None => false,
            Some(&"change") => true,
            Some(other) => return Err(format!("until={other} (only until=change is known)")),
        };
        let n: u32 = args.get("n")?.unwrap_or(if until_change { 1_000 } else { 1 });
        for id in args.ids()? {
            let raw = self.raw(id)?;
            let before = describe::soft_state(&raw.status());
            let mut last = before.clone();
            let mut lines = Vec::new();
            for k in 1..=n {
                raw.tick();
                let now = describe::soft_state(&raw.status());
                if now != last {
                    lines.push(format!("{id}: tick {k}: {now}"));
                    last = now;
                    if until_change {
                        break;
                    }
                }
            }
            // Output, not an error: a changed protocol may well change this, and the
            // diff should show it.
            if until_change && last == before {
                lines.push(format!("{id}: no state change within {n} ticks"));
            }
            for line in lines {
                self.out.line(line);
            }
        }
        Ok(())
    }

    fn propose_conf_change(&mut self, cmd: &Command) -> Result<(), String> {
        let args = Args::new(cmd, &[])?;
        let id = args.id(0)?;
        let change = match args.pos(1, "change kind")? {
            "add-learner" => ConfChangeKind::AddLearner,
            "promote" => ConfChangeKind::PromoteVoter,
            "add-voter" => ConfChangeKind::AddVoter,
            "remove" => ConfChangeKind::Remove,
            other => return Err(format!("unknown change kind {other:?}")),
        };
        let target = args.id(2)?;
        let result = self.raw(id)?.propose_conf_change(ConfChange::new(change, target, Bytes::new()));
        self.report(result.map(|(index, term)| format!("index={index} term={term}")));
        Ok(())
    }

    /// Takes node `id`'s Ready, prints it, and carries it out as the runtime must:
    /// send, persist, send what waited for persistence, apply, advance.
    fn process_ready(&mut self, id: NodeId) -> Result<(), String> {
        let Env { nodes, net, out, .. } = self;
        let node = nodes.get_mut(&id).ok_or_else(|| format!("no node {id}"))?;
        let raw = node.raw.as_mut().ok_or_else(|| format!("node {id} is down"))?;
        if !raw.has_ready() {
            out.line("no Ready");
            return Ok(());
        }
        let rd = raw.ready();
        out.line(format!("Ready must-sync={} async-ok={}", rd.must_sync(), rd.can_persist_async()));
        let soft = describe::soft_state(&raw.status());
        if node.shown.as_ref() != Some(&soft) {
            out.line(format!("State: {soft}"));
            node.shown = Some(soft);
        }
        if let Some(hs) = &rd.hard_state {
            out.line(format!("HardState {}", describe::hard_state(hs)));
        }
        if let Some(s) = &rd.snapshot {
            out.line(format!("Snapshot {}", describe::snapshot(s)));
        }
        let mut section = |title: &str, lines: Vec<String>| {
            if !lines.is_empty() {
                out.line(format!("{title}:"));
                for line in lines {
                    out.line(format!("  {line}"));
                }
            }
        };
        section("Entries", rd.entries.iter().map(describe::entry).collect());
        section("CommittedEntries", rd.committed_entries.iter().map(describe::entry).collect());
        section("Messages", rd.messages.iter().map(describe::message).collect());
        section("PersistedMessages", rd.persisted_messages.iter().map(describe::message).collect());
        section("ReadStates", rd.read_states.iter().map(|r| format!("ctx={} index={}", r.ctx, r.index)).collect());
        section("DroppedReads", rd.dropped_reads.iter().map(|ctx| format!("ctx={ctx}")).collect());
        section("Events", rd.events.iter().map(describe::event).collect());

        net.extend(rd.messages);
        let disk = &mut node.disk;
        if let Some(s) = &rd.snapshot {
            // An installed snapshot replaces the whole log; entries after it follow.
            disk.snapshot = Some(s.clone());
            disk.entries.clear();
        }
        if let Some(first) = rd.entries.first() {
            disk.entries.retain(|e| e.index < first.index);
            disk.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = rd.hard_state {
            disk.hard_state = hs;
        }
        net.extend(rd.persisted_messages);
        if let Some(s) = &rd.snapshot {
            node.kv = snapshot_kv(&s.data);
        }
        for e in rd.committed_entries.iter().filter(|e| e.kind == EntryKind::Command) {
            node.kv.push(String::from_utf8_lossy(&e.data).into_owned());
        }
        raw.advance();
        Ok(())
    }

    /// Delivers (or drops) the first `max` pending messages to `to` that `matches`
    /// accepts, in the order sent. Returns how many were handled.
    fn deliver(&mut self, to: NodeId, drop: bool, matches: &dyn Fn(&Message) -> bool, max: usize) -> usize {
        let mut mine = Vec::new();
        let mut rest = Vec::new();
        for m in std::mem::take(&mut self.net) {
            if m.to == to && mine.len() < max && matches(&m) { mine.push(m) } else { rest.push(m) }
        }
        self.net = rest;
        let count = mine.len();
        for m in mine {
            let line = describe::message(&m);
            if drop {
                self.out.line(format!("dropped: {line}"));
                continue;
            }
            if self.cut.contains(&(m.from, m.to)) {
                self.out.line(format!("dropped: {line} (partitioned)"));
                continue;
            }
            let Some(raw) = self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) else {
                self.out.line(format!("dropped: {line} (node down)"));
                continue;
            };
            self.out.line(&line);
            if let Err(e) = raw.step(m) {
                self.out.line(format!("  refused: {e}"));
            }
        }
        count
    }

    fn deliver_msgs(&mut self, cmd: &Command) -> Result<(), String> {
        let args = Args::new(cmd, &["drop", "type", "from", "max"])?;
        let max: usize = args.get("max")?.unwrap_or(usize::MAX);
        let mut to = args.ids()?;
        if to.is_empty() && !args.kv.contains_key("drop") {
            to = self.nodes.keys().copied().collect();
        }
        let kind = args.kv.get("type").map(|s| s.to_string());
        let from: Option<NodeId> = args.get("from")?;
        let matches =
            |m: &Message| kind.as_deref().is_none_or(|k| m.body.name() == k) && from.is_none_or(|f| m.from == f);
        let mut handled = 0;
        for id in to {
            handled += self.deliver(id, false, &matches, max);
        }
        for id in args.list("drop")?.unwrap_or_default() {
            handled += self.deliver(id, true, &matches, max);
        }
        if handled == 0 {
            self.out.line("no messages");
        }
        Ok(())
    }

    /// Carries out Readies and delivers messages among `ids` (all nodes if empty) until
    /// nothing is left to do.
    fn stabilize(&mut self, ids: Vec<NodeId>) -> Result<(), String> {
        let ids = if ids.is_empty() { self.nodes.keys().copied().collect() } else { ids };
        for _ in 0..1_000 {
            let mut done = true;
            for &id in &ids {
                let ready = self.nodes.get(&id).and_then(|n| n.raw.as_ref()).is_some_and(RawNode::has_ready);
                if ready {
                    self.out.line(format!("> {id} handling Ready"));
                    self.out.indent += 2;
                    self.process_ready(id)?;
                    self.out.indent -= 2;
                    done = false;
                }
            }
            for &id in &ids {
                if self.net.iter().any(|m| m.to == id) {
                    self.out.line(format!("> {id} receiving messages"));
                    self.out.indent += 2;
                    self.deliver(id, false, &|_| true, usize::MAX);
                    self.out.indent -= 2;
                    done = false;
                }
            }
            if done {
                return Ok(());
            }
        }
        Err("no fixed point after 1,000 rounds".to_string())
    }

    /// The runtime snapshots the state machine at its applied index and lets the core
    /// compact its log.
    fn compact(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.node(id)?;
        let raw = node.raw.as_mut().ok_or_else(|| format!("node {id} is down"))?;
        let applied = raw.status().applied_index;
        let (Some(term), Some(conf)) = (raw.log_term(applied), raw.conf_at(applied)) else {
            self.out.line(format!("cannot snapshot: applied index {applied} is not in the log"));
            return Ok(());
        };
        let snapshot =
            Snapshot { meta: SnapshotMeta { index: applied, term, conf }, data: Bytes::from(node.kv.join(",")) };
        raw.compact(snapshot.clone());
        let first = raw.status().first_index;
        let line = format!("snapshot {}; log now starts at {first}", describe::snapshot(&snapshot));
        node.disk.entries.retain(|e| e.index > applied);
        node.disk.snapshot = Some(snapshot);
        self.out.line(line);
        Ok(())
    }

    /// Starts node `id` again from its disk (emptied first with `wipe`), like a process
    /// restart: the state machine is rebuilt from the snapshot, the rest re-applied.
    fn restart(&mut self, id: NodeId, wipe: bool) -> Result<(), String> {
        let node = self.node(id)?;
        if wipe {
            node.disk = Disk::default();
        }
        // An empty disk cannot tell a first start from a lost one (as raftkv-server).
        let recovered = Recovered {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.clone(),
            entries: node.disk.entries.clone(),
            lost_state: node.disk.is_empty(),
        };
        node.kv = node.disk.snapshot.as_ref().map_or_else(Vec::new, |s| snapshot_kv(&s.data));
        node.raw = Some(RawNode::new(node.cfg.clone(), node.start_conf.clone(), recovered).map_err(|e| e.to_string())?);
        node.shown = None;
        Ok(())
    }
}

fn snapshot_kv(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data).split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}
