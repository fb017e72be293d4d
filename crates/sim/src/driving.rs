//! The clock and the replicas' work: ticks, each Ready carried out by the replica's own
//! driver (the one raftkv-server uses) over simulated disks, snapshots, clients and
//! what the checker learns along the way.

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Entry, EntryKind, Event, Index, Message, NodeId, ReadState, Role, Snapshot, Term};
use raftkv_replica::{ApplyHooks, ApplyOutcome, Io, Persist, ReadyRun, Stop};
use rand_core::Rng;

use crate::checker::{Checker, Observation};
use crate::cluster::{Cluster, MAX_PENDING_WRITES, TICK};

/// A Ready whose write is not durable yet: parked until `durable_at`.
pub(crate) struct InFlightRun {
    durable_at: u64,
    run: ReadyRun,
    write: Persist,
    snapshot: Option<Snapshot>,
    /// What the checker learns from this Ready once it is durable: a crash before then
    /// loses the Ready, and nothing of it left the node that the receivers do not
    /// report themselves.
    observations: Vec<Observation>,
}

/// A Ready advanced before its write was durable (`async_persist`).
pub(crate) struct PendingWrite {
    durable_at: u64,
    write: Persist,
    after: Vec<Message>,
    last_entry: Option<(Index, Term)>,
    observations: Vec<Observation>,
}

#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    command: Bytes,
    sent_at: u64,
    at: Option<(NodeId, Index, Term)>,
}

#[derive(Clone, Debug)]
pub(crate) struct SimClient {
    pub id: u64,
    pub seq: u64,
    pub outstanding: Option<Outstanding>,
}

/// A hash of an entry's data and kind, for the checker.
fn fnv(data: &[u8], kind: EntryKind) -> u64 {
    use std::hash::Hasher as _;
    let mut h = fnv::FnvHasher::default();
    h.write_u8(kind.to_byte());
    h.write(data);
    h.finish()
}

/// The simulation's [`ApplyHooks`]: what applying tells the checker and the clients.
struct SimHooks<'a> {
    node: NodeId,
    now: u64,
    checker: &'a mut Checker,
    clients: &'a mut [crate::driving::SimClient],
    acked_max_index: &'a mut Index,
    acked_commands: &'a mut u64,
    applied_commands: &'a mut std::collections::BTreeMap<(NodeId, u64, u64), Index>,
    harness_violations: &'a mut Vec<String>,
    pending_reads: &'a mut std::collections::BTreeMap<(NodeId, u64), Index>,
    released: &'a mut Vec<(u64, NodeId, u64, Index)>,
    value_reads: &'a mut crate::reads::ValueReads,
    /// ConfChange entries applied: their configuration is observed once the replica is
    /// free to be asked.
    conf_applied: Vec<Index>,
}

impl ApplyHooks for SimHooks<'_> {
    fn applied(&mut self, entry: &Entry, outcome: ApplyOutcome, _kv: &raftkv_kv::KvStateMachine) {
        let (node, data_hash) = (self.node, fnv(&entry.data, entry.kind));
        self.checker.observe(Observation::Applied { node, index: entry.index, term: entry.term, data_hash });
        if entry.kind == EntryKind::ConfChange {
            self.conf_applied.push(entry.index);
        }
        if let ApplyOutcome::Command(applied) = outcome
            && !applied.duplicate
            && applied.result.is_ok()
        {
            let key = (node, applied.client_id, applied.seq);
            self.value_reads.applied(entry.index, &entry.data);
            let first = *self.applied_commands.entry(key).or_insert(entry.index);
            if first != entry.index {
                let v =
                    format!("node {node} applied client {} seq {} twice: at {first} and {}", key.1, key.2, entry.index);
                self.harness_violations.push(v);
            }
        }
        self.ack_clients(entry);
    }

    fn reads(&mut self, released: Vec<ReadState>, dropped: Vec<u64>) {
        for read in released {
            if let Some(acked_before) = self.pending_reads.remove(&(self.node, read.ctx)) {
                let node = self.node;
                self.checker.observe(Observation::ReadReleased { node, read_index: read.index, acked_before });
                self.released.push((self.now, node, read.ctx, read.index));
                self.value_reads.released(node, read.ctx, read.index);
            }
        }
        for ctx in dropped {
            self.pending_reads.remove(&(self.node, ctx));
        }
    }
}

impl SimHooks<'_> {
    fn ack_clients(&mut self, entry: &Entry) {
        for client in self.clients.iter_mut() {
            let Some(out) = &mut client.outstanding else { continue };
            let Some((node, index, term)) = out.at else { continue };
            if node != self.node || index != entry.index {
                continue;
            }
            if term == entry.term {
                client.outstanding = None;
                *self.acked_max_index = (*self.acked_max_index).max(index);
                *self.acked_commands += 1;
                self.value_reads.acknowledged(index, &entry.data);
            } else {
                out.at = None; // replaced by another leader's entry: retry
            }
        }
    }
}

impl Cluster {
    pub fn step(&mut self) {
        self.now += 1;
        self.supervise();
        self.deliver_due();
        for id in self.node_ids() {
            let node = self.nodes.get_mut(&id).expect("known node");
            if !(self.now + node.tick_phase).is_multiple_of(TICK) || node.paused {
                continue;
            }
            let Some(replica) = node.replica.as_mut() else { continue };
            let report = replica.tick();
            for (peer, index) in report.promoted {
                self.note(format!("node {id}: auto-promotes {peer} at {index}"));
            }
            self.send(report.probes);
        }
        if self.clients_active {
            self.clients_act();
        }
        self.confirm_new_clusters();
        for id in self.node_ids() {
            self.process_node(id);
            self.maybe_stop(id);
        }
        self.serve_reads();
    }

    pub fn run_until(&mut self, max_units: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..max_units {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn run_for(&mut self, units: u64) {
        for _ in 0..units {
            self.step();
        }
    }

    /// What raftkv-server does for a founding member that starts with an empty data
    /// dir: ask every other founding member for its term, and end the recovery if all
    /// are up and at term 1 or below (the cluster is brand new). Run every step.
    fn confirm_new_clusters(&mut self) {
        let founders: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.bootstrap).map(|(id, _)| *id).collect();
        let all_new = founders.iter().all(|id| self.raw(*id).is_some_and(|r| r.status().term <= 1));
        if !all_new {
            return;
        }
        for id in founders {
            let replica = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()).expect("up");
            if replica.status().recovering && replica.confirm_new_cluster() {
                self.note(format!("node {id}: a brand-new cluster, recovery confirmed over"));
            }
        }
    }

    /// A node whose replica says it must stop (drained, or removed) stops; a removed
    /// one for good.
    fn maybe_stop(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(stop) = node.replica.as_ref().filter(|_| node.in_flight.is_none()).and_then(|r| r.stop_decision())
        else {
            return;
        };
        self.crash(id);
        self.stops.push((id, stop));
        self.note(format!("node {id} stops: {stop:?}"));
        let delay = 50 + self.rng.next_u64() % 450;
        let node = self.nodes.get_mut(&id).expect("known node");
        match stop {
            Stop::Removed { .. } => node.tombstone = true,
            // Its supervisor (a StatefulSet, systemd) starts it again after a while.
            Stop::Shutdown(_) => node.restart_at = Some(self.now + delay),
        }
    }

    /// Starts the nodes whose supervisor's delay is up.
    fn supervise(&mut self) {
        let due: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.restart_at.is_some_and(|t| t <= self.now)).map(|(id, _)| *id).collect();
        for id in due {
            self.restart(id);
        }
    }

    fn hooks_for(&mut self, id: NodeId) -> (&mut raftkv_replica::Replica, SimHooks<'_>) {
        let replica = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()).expect("live node");
        let hooks = SimHooks {
            node: id,
            now: self.now,
            checker: &mut self.checker,
            clients: &mut self.clients,
            acked_max_index: &mut self.acked_max_index,
            acked_commands: &mut self.acked_commands,
            applied_commands: &mut self.applied_commands,
            harness_violations: &mut self.harness_violations,
            pending_reads: &mut self.pending_reads,
            released: &mut self.released,
            value_reads: &mut self.value_reads,
            conf_applied: Vec::new(),
        };
        (replica, hooks)
    }

    fn process_node(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.replica.is_none() || node.paused {
            return;
        }
        self.complete_writes(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.replica.is_some() && node.in_flight.as_ref().is_some_and(|f| f.durable_at <= self.now) {
            self.resume_run(id);
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        // A failed fsync above stopped it.
        let Some(replica) = node.replica.as_mut() else { return };
        if node.in_flight.is_some() || node.writes.len() >= MAX_PENDING_WRITES || !replica.has_ready() {
            return;
        }
        let run = replica.take_ready().expect("simulated snapshots are valid").expect("has a Ready");
        // Writes are durable in the order they were taken.
        let after = node.writes.back().map_or(0, |w| w.durable_at);
        let durable_at = (self.now + self.rng.next_u64() % (self.opts.max_fsync + 1)).max(after);
        let observations = self.observe_ready(id, &run);
        self.drive(id, run, durable_at, observations);
    }

    /// Carries `run` on until its write must wait (then parks it, or writes it in the
    /// background when allowed) or it is done.
    fn drive(&mut self, id: NodeId, mut run: ReadyRun, durable_at: u64, observations: Vec<Observation>) {
        loop {
            let (replica, mut hooks) = self.hooks_for(id);
            let io = replica.next_io(&mut run, &mut hooks).expect("simulated snapshots are valid");
            let conf_applied = std::mem::take(&mut hooks.conf_applied);
            self.observe_confs(id, &conf_applied);
            match io {
                Io::Send(messages) | Io::SendPersisted(messages) => self.send(messages),
                // Durable with the rest of the Ready, at `durable_at`.
                Io::SaveSnapshot(_) => {}
                Io::Persist(write) if self.opts.async_persist && run.can_persist_async() => {
                    return self.write_in_background(id, run, write, durable_at, observations);
                }
                Io::Persist(write) => {
                    let snapshot = run_snapshot(&run);
                    let parked = InFlightRun { durable_at, run, write, snapshot, observations };
                    self.nodes.get_mut(&id).expect("known node").in_flight = Some(parked);
                    if durable_at <= self.now {
                        self.resume_run(id);
                    }
                    return;
                }
                Io::Done => {
                    let replica = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()).expect("live");
                    replica.finish_ready(run);
                    self.maybe_snapshot(id);
                    return;
                }
            }
        }
    }

    /// The parked Ready's write is durable: the disk takes it, the checker learns what
    /// it brought, and the run goes on.
    fn resume_run(&mut self, id: NodeId) {
        if self.fsync_fails(id) {
            return;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let InFlightRun { run, write, snapshot, observations, .. } = node.in_flight.take().expect("a run in flight");
        if let Some(snapshot) = &snapshot {
            node.disk.install_snapshot(snapshot);
        }
        node.disk.write_entries(&write.entries);
        if let Some(hs) = write.hard_state {
            node.disk.hard_state = hs;
        }
        for o in observations {
            self.checker.observe(o);
        }
        self.drive(id, run, self.now, Vec::new());
    }

    /// Detaches `run` (its committed entries are applied) and queues its write.
    fn write_in_background(
        &mut self,
        id: NodeId,
        run: ReadyRun,
        write: Persist,
        durable_at: u64,
        observations: Vec<Observation>,
    ) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let detached = node.replica.as_mut().expect("live").detach_ready(run, write);
        self.background_writes += 1;
        node.writes.push_back(PendingWrite {
            durable_at,
            write: detached.write,
            after: detached.after,
            last_entry: detached.last_entry,
            observations,
        });
        self.maybe_snapshot(id);
        self.complete_writes(id);
    }

    /// Whether `id` has a write of entries not yet durable (a crash now may tear it).
    pub(crate) fn mid_write(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| {
            n.writes.front().is_some_and(|w| !w.write.entries.is_empty())
                || n.in_flight.as_ref().is_some_and(|f| !f.write.entries.is_empty())
        })
    }

    /// When `torn_writes` is on, a crash keeps a random non-empty prefix of the entries
    /// of the first write not yet durable, as the real WAL does after a torn write: its entry
    /// records come before its hard state record (which is lost), and the torn tail is
    /// cut at the next start. Writes after it are lost whole. None was acknowledged.
    pub(crate) fn tear(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !self.opts.torn_writes || node.replica.is_none() {
            return;
        }
        let first = match node.writes.front() {
            Some(w) => Some(&w.write),
            // A Ready that installs a snapshot writes its file first: not torn here.
            None => node.in_flight.as_ref().filter(|f| f.snapshot.is_none()).map(|f| &f.write),
        };
        let Some(entries) = first.map(|w| &w.entries).filter(|e| !e.is_empty()) else { return };
        // All of them is a torn write too: the hard state record after them is lost.
        let kept = 1 + (self.rng.next_u64() % entries.len() as u64) as usize;
        let (torn, of) = (entries[..kept].to_vec(), entries.len());
        node.disk.write_entries(&torn);
        self.torn_writes += 1;
        self.note(format!("node {id}: torn write keeps {kept} of {of} entries"));
    }

    /// Whether the fsync of `id`'s next write fails (`failed_fsync_percent`). A failed
    /// fsync stops the node, as it stops raftkv-server (its data may be lost or
    /// written only in part, so nothing after it can be trusted): it crashes with
    /// the write torn or lost, and nothing the write would have allowed is sent.
    fn fsync_fails(&mut self, id: NodeId) -> bool {
        // Drawn only when enabled, so runs without failed fsyncs stay as they were.
        if self.opts.failed_fsync_percent == 0 || self.rng.next_u64() % 100 >= self.opts.failed_fsync_percent {
            return false;
        }
        // A node whose first write fails loses its state: a wipe, within its bound.
        if !self.may_lose_state(id) {
            return false;
        }
        self.failed_fsyncs += 1;
        self.note(format!("node {id}: fsync failed; the node stops"));
        self.crash(id);
        true
    }

    /// Makes the background writes that are due durable, oldest first.
    fn complete_writes(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            if node.replica.is_none() || node.writes.front().is_none_or(|w| w.durable_at > self.now) {
                return;
            }
            if self.fsync_fails(id) {
                return;
            }
            let node = self.nodes.get_mut(&id).expect("known node");
            let write = node.writes.pop_front().expect("checked");
            node.disk.write_entries(&write.write.entries);
            if let Some(hs) = write.write.hard_state {
                node.disk.hard_state = hs;
            }
            if let Some((index, term)) = write.last_entry {
                node.replica.as_mut().expect("live").persisted(index, term);
            }
            for o in write.observations {
                self.checker.observe(o);
            }
            self.send(write.after);
        }
    }

    /// Records a Ready's events, and returns what the checker learns once it is durable.
    fn observe_ready(&mut self, id: NodeId, run: &ReadyRun) -> Vec<Observation> {
        let raw = self.raw(id).expect("live node");
        let mut observations = Vec::new();
        for entry in run.entries() {
            let prev_term = raw.log_term(entry.index - 1).unwrap_or(0);
            let data_hash = fnv(&entry.data, entry.kind);
            observations.push(Observation::Appended {
                node: id,
                index: entry.index,
                term: entry.term,
                prev_term,
                data_hash,
            });
        }
        let mut decided = Vec::new();
        for event in run.events() {
            if let Event::Committed { term, last, .. } = event {
                decided.push(Observation::Committed { node: id, term: *term, last: *last });
            }
            if let Event::BecameLeader { term } = event {
                let log = raw.log_entries().iter().map(|e| (e.index, e.term, fnv(&e.data, e.kind))).collect();
                let first_index = raw.status().first_index;
                observations.push(Observation::BecameLeader { node: id, term: *term, first_index, log });
                let (conf_index, conf) = (raw.conf_index(), raw.conf().clone());
                let committed_conf = raw.conf_at(raw.status().commit_index).unwrap_or_default();
                observations.push(Observation::LeaderConf { node: id, term: *term, conf_index, conf, committed_conf });
            }
        }
        let events = run.events().to_vec();
        for o in decided {
            self.checker.observe(o);
        }
        for event in events {
            if !matches!(event, Event::Committed { .. }) {
                self.note(format!("node {id}: {event:?}"));
            }
            self.events.push((self.now, id, event));
        }
        observations
    }

    /// The configurations the applied ConfChange entries at `indexes` made on `id`.
    fn observe_confs(&mut self, id: NodeId, indexes: &[Index]) {
        for &index in indexes {
            // None if a snapshot replaced the log meanwhile (its maker applied the
            // entry, and was observed then).
            if let Some(conf) = self.raw(id).and_then(|r| r.conf_at(index)) {
                self.checker.observe(Observation::ConfApplied { node: id, index, conf });
            }
        }
    }

    /// Takes the snapshot the replica's policy says is due, into the simulated disk.
    fn maybe_snapshot(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let replica = node.replica.as_mut().expect("live");
        let Some(plan) = replica.snapshot_due() else { return };
        let snapshot = replica.build_snapshot(&plan);
        node.disk.compact(snapshot.clone());
        replica.snapshot_saved(snapshot);
    }

    // ---- clients ----

    fn clients_act(&mut self) {
        if !self.rng.next_u64().is_multiple_of(4) {
            return;
        }
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.paused && n.replica.as_ref().is_some_and(|r| r.status().role == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        if leaders.is_empty() || self.clients.is_empty() {
            return;
        }
        let leader = leaders[(self.rng.next_u64() % leaders.len() as u64) as usize];
        let c = (self.rng.next_u64() % self.clients.len() as u64) as usize;
        if self.rng.next_u64().is_multiple_of(5) {
            self.read_at(leader);
            return;
        }
        let key = self.rng.next_u64() % 5;
        let Some(command) = self.next_command(c, key) else { return };
        if let Some(raw) = self.raw_mut(leader)
            && let Ok((index, term)) = raw.propose(command)
        {
            self.clients[c].outstanding.as_mut().expect("set").at = Some((leader, index, term));
        }
    }

    /// Client `c`'s command to send now: a new one, or its outstanding one again once
    /// it is due for a retry. `None` while it waits.
    fn next_command(&mut self, c: usize, key: u64) -> Option<Bytes> {
        let (now, retry_after) = (self.now, self.opts.retry_after);
        let client = &mut self.clients[c];
        let due = match &client.outstanding {
            None => true,
            Some(o) => o.at.is_none() || now >= o.sent_at + retry_after,
        };
        if !due {
            return None;
        }
        if client.outstanding.is_none() {
            client.seq += 1;
            let op = WriteOp::Put {
                key: Bytes::from(format!("k{key}")),
                value: Bytes::from(format!("{}-{}", client.id, client.seq)),
            };
            let command = Command { client_id: client.id, seq: client.seq, op }.encode();
            client.outstanding = Some(Outstanding { command, sent_at: now, at: None });
        }
        let out = client.outstanding.as_mut().expect("set above");
        out.sent_at = now;
        Some(out.command.clone())
    }
}

/// The snapshot of a run that has one (to make durable with its write).
fn run_snapshot(run: &ReadyRun) -> Option<Snapshot> {
    run.snapshot().cloned()
}
