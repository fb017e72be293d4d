//! The one Ready driver: a [`ReadyRun`] walks a Ready through the order the core
//! documents (see [`raftkv_raft::Ready`]). The runtime asks it for the next I/O step
//! ([`Replica::next_io`]) and does it; between steps the replica applies committed
//! entries and installs snapshots itself.
//!
//! 1. [`Io::Send`]: the leader's replication traffic, safe before persisting;
//! 2. [`Io::SaveSnapshot`]: a snapshot from the leader, durable before the entries;
//! 3. committed entries applied here when the Ready carries no snapshot: they are at or
//!    below the persisted index, durable on a majority, so they need not wait for this
//!    Ready's fsync;
//! 4. [`Io::Persist`]: the new entries and hard state (fsynced if `must_sync`);
//! 5. [`Io::SendPersisted`]: votes and acknowledgements, only once durable;
//! 6. the snapshot installed into the state machine, then (if not done in 3) the
//!    committed entries applied;
//! 7. [`Replica::finish_ready`] advances the core.

use bytes::Bytes;
use raftkv_kv::KvStateMachine;
use raftkv_raft::{
    ConfChange, ConfChangeKind, Entry, EntryKind, Event, HardState, Index, Message, ReadState, Ready, Snapshot,
    SnapshotMeta, Term,
};

use crate::membership;
use crate::replica::{Replica, ReplicaError};

/// Where a [`ReadyRun`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    SendNow,
    SaveSnapshot,
    ApplyEarly,
    Persist,
    SendPersisted,
    Install,
    ApplyLate,
    Done,
}

/// A Ready being carried out. Taken by [`Replica::take_ready`], walked by
/// [`Replica::next_io`], ended by [`Replica::finish_ready`] (or, for a Ready that
/// may be written in the background, [`Replica::detach_ready`]).
#[derive(Debug)]
pub struct ReadyRun {
    rd: Ready,
    stage: Stage,
    /// The state machine part of the Ready's snapshot.
    snapshot_kv: Option<Bytes>,
    /// Members' addresses or removals changed: the runtime re-links its peers.
    links_changed: bool,
    installed: Option<SnapshotMeta>,
}

impl ReadyRun {
    /// What happened in the core, for logs and traces (before any I/O is done).
    pub fn events(&self) -> &[Event] {
        &self.rd.events
    }

    /// The new entries (before [`Io::Persist`] takes them).
    pub fn entries(&self) -> &[Entry] {
        &self.rd.entries
    }

    /// Whether members' addresses or removed ids changed: re-link the peers.
    pub fn links_changed(&self) -> bool {
        self.links_changed
    }

    /// Whether it may be written while the node goes on ([`Replica::detach_ready`]).
    pub fn can_persist_async(&self) -> bool {
        self.rd.can_persist_async()
    }

    /// The hard state to write, if it changed.
    pub fn hard_state(&self) -> Option<HardState> {
        self.rd.hard_state
    }

    /// The leader's snapshot this Ready installs, if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.rd.snapshot.as_ref()
    }
}

/// The I/O step a runtime must do next for a [`ReadyRun`].
#[derive(Debug)]
pub enum Io {
    /// Send these messages (each to its `to`).
    Send(Vec<Message>),
    /// Make this snapshot from the leader durable, before anything else is persisted.
    SaveSnapshot(Snapshot),
    /// Write these entries and hard state; fsync if `must_sync` (or defer a hard state
    /// that only moved the commit index to the next write: Raft can re-learn it).
    Persist(Persist),
    /// Send these votes and acknowledgements: they depend on what was just persisted.
    SendPersisted(Vec<Message>),
    /// Nothing more: call [`Replica::finish_ready`].
    Done,
}

/// The write of one Ready.
#[derive(Debug, Default)]
pub struct Persist {
    /// The first may overwrite the stored log from its index on.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub must_sync: bool,
}

/// What applying one committed entry did.
#[derive(Debug)]
pub enum ApplyOutcome {
    /// A command: the state machine's answer.
    Command(raftkv_kv::Applied),
    /// A no-op or a configuration change (the core applied the latter itself).
    Other,
}

/// The runtime's side of applying: answering clients and serving reads.
pub trait ApplyHooks {
    /// `entry` is about to be applied.
    fn applying(&mut self, _entry: &Entry) {}
    /// `entry` was applied; `kv` is the state machine right after it (to read it at
    /// exactly that index).
    fn applied(&mut self, entry: &Entry, outcome: ApplyOutcome, kv: &KvStateMachine);
    /// Reads confirmed at these indexes, and reads that can no longer be (leadership
    /// lost): serve the first once the state machine has applied their index.
    fn reads(&mut self, released: Vec<ReadState>, dropped: Vec<u64>);
    /// The leader's snapshot replaced the state machine (now `kv`): what waited at or
    /// below its index cannot be told apart any more.
    fn snapshot_installed(&mut self, _meta: &SnapshotMeta, _kv: &KvStateMachine) {}
}

/// What a finished Ready leaves for the runtime.
#[derive(Debug)]
pub struct Finished {
    pub events: Vec<Event>,
    /// Re-link the peers (addresses or removals changed while applying).
    pub links_changed: bool,
    /// The leader's snapshot this Ready installed.
    pub installed: Option<SnapshotMeta>,
    /// A shutdown hand-off was retried (the first transfer timed out): to whom.
    pub handed_off_again: Option<Result<Option<raftkv_raft::NodeId>, String>>,
}

impl Replica {
    /// Whether the core has work (and none is being carried out).
    pub fn has_ready(&self) -> bool {
        !self.in_ready && self.raw.has_ready()
    }

    /// Takes the next Ready, if any, and takes in its membership news before anything
    /// of it goes out: the contexts of appended ConfChange entries (a configuration is
    /// effective on append, so a leader must reach a new learner before the change
    /// commits) and the membership section of a snapshot from the leader.
    pub fn take_ready(&mut self) -> Result<Option<ReadyRun>, ReplicaError> {
        if !self.has_ready() {
            return Ok(None);
        }
        assert!(!self.in_ready, "a Ready is taken while another is carried out");
        let rd = self.raw.ready();
        let mut links_changed = rd.events.iter().any(|e| matches!(e, Event::ConfChanged { .. }));
        for e in &rd.entries {
            links_changed |= self.membership.observe(e);
        }
        let mut snapshot_kv = None;
        if let Some(snap) = &rd.snapshot {
            let bad = |reason: String| ReplicaError::Snapshot { index: snap.meta.index, reason };
            let (section, data) = membership::unwrap_snapshot(&snap.data).map_err(bad)?;
            if let Some(section) = section {
                self.membership.restore(section);
            }
            links_changed = true;
            snapshot_kv = Some(data);
        }
        self.in_ready = true;
        Ok(Some(ReadyRun { rd, stage: Stage::SendNow, snapshot_kv, links_changed, installed: None }))
    }

    /// The next I/O step of `run`; applies and installs what the order allows between
    /// steps, through `hooks`.
    pub fn next_io(&mut self, run: &mut ReadyRun, hooks: &mut impl ApplyHooks) -> Result<Io, ReplicaError> {
        assert!(self.in_ready, "next_io on a Ready that is not being carried out");
        loop {
            let stage = run.stage;
            run.stage = match stage {
                Stage::Done => Stage::Done,
                _ => next_stage(stage),
            };
            let apply_early = run.rd.snapshot.is_none();
            match stage {
                Stage::SendNow if !run.rd.messages.is_empty() => {
                    return Ok(Io::Send(std::mem::take(&mut run.rd.messages)));
                }
                Stage::SaveSnapshot if run.rd.snapshot.is_some() => {
                    return Ok(Io::SaveSnapshot(run.rd.snapshot.clone().expect("checked")));
                }
                Stage::ApplyEarly if apply_early => self.apply_ready(run, hooks),
                Stage::Persist => {
                    let entries = std::mem::take(&mut run.rd.entries);
                    let (hard_state, must_sync) = (run.rd.hard_state, run.rd.must_sync());
                    return Ok(Io::Persist(Persist { entries, hard_state, must_sync }));
                }
                Stage::SendPersisted if !run.rd.persisted_messages.is_empty() => {
                    return Ok(Io::SendPersisted(std::mem::take(&mut run.rd.persisted_messages)));
                }
                Stage::Install => self.install(run, hooks)?,
                Stage::ApplyLate if !apply_early => self.apply_ready(run, hooks),
                Stage::Done => return Ok(Io::Done),
                _ => {}
            }
        }
    }

    /// Ends `run` (every step done): advances the core. A transfer that timed out
    /// during a shutdown is tried again.
    pub fn finish_ready(&mut self, mut run: ReadyRun) -> Finished {
        assert_eq!(run.stage, Stage::Done, "finish_ready before every step of the Ready was done");
        self.raw.advance();
        self.in_ready = false;
        let events = std::mem::take(&mut run.rd.events);
        let aborted = events.iter().any(|e| matches!(e, Event::TransferAborted { .. }));
        let handed_off_again = (aborted && self.draining.is_some()).then(|| self.hand_off());
        Finished { events, links_changed: run.links_changed, installed: run.installed.take(), handed_off_again }
    }

    /// Ends `run` right after [`Io::Persist`] handed out `write`, before the write is
    /// durable (the run said [`ReadyRun::can_persist_async`]): its committed entries
    /// were applied (step 3); the messages that depend on the write are returned, to
    /// send once it is durable, with what to pass to [`Replica::persisted`] then. Until
    /// then its entries count toward no quorum.
    pub fn detach_ready(&mut self, mut run: ReadyRun, write: Persist) -> Detached {
        assert!(run.can_persist_async(), "a Ready with a vote or a snapshot must be persisted before advancing");
        assert_eq!(run.stage, Stage::SendPersisted, "detach_ready right after Io::Persist");
        let after = std::mem::take(&mut run.rd.persisted_messages);
        let last_entry = self.raw.advance_async();
        self.in_ready = false;
        let events = std::mem::take(&mut run.rd.events);
        Detached { write, after, last_entry, events, links_changed: run.links_changed }
    }

    /// A detached write of entries up to `index` (term `term`) is durable.
    pub fn persisted(&mut self, index: Index, term: Term) {
        self.raw.persisted(index, term);
    }

    /// Applies the Ready's committed entries, then hands over its reads.
    fn apply_ready(&mut self, run: &mut ReadyRun, hooks: &mut impl ApplyHooks) {
        for entry in std::mem::take(&mut run.rd.committed_entries) {
            if entry.index <= self.kv.applied_index() {
                continue;
            }
            hooks.applying(&entry);
            let outcome = self.apply_entry(&entry, &mut run.links_changed);
            hooks.applied(&entry, outcome, &self.kv);
        }
        let released = std::mem::take(&mut run.rd.read_states);
        let dropped = std::mem::take(&mut run.rd.dropped_reads);
        if !released.is_empty() || !dropped.is_empty() {
            hooks.reads(released, dropped);
        }
    }

    fn apply_entry(&mut self, entry: &Entry, links_changed: &mut bool) -> ApplyOutcome {
        match entry.kind {
            // The core applies configuration changes itself; to the state machine
            // they are position-only, like a no-op.
            EntryKind::Noop | EntryKind::ConfChange => {
                let applied = self.kv.apply_noop(entry.index, entry.term);
                debug_assert!(applied.is_ok(), "indexes increase: {applied:?}");
                if entry.kind == EntryKind::ConfChange {
                    self.conf_change_applied(entry);
                    *links_changed = true;
                }
                ApplyOutcome::Other
            }
            EntryKind::Command => ApplyOutcome::Command(self.kv.apply(entry.index, entry.term, &entry.data)),
        }
    }

    /// A committed ConfChange was applied: a removal is final (the core skips a change
    /// that was invalid where it stands; so does this).
    fn conf_change_applied(&mut self, entry: &Entry) {
        self.membership.observe(entry);
        let Ok(cc) = ConfChange::decode(&entry.data) else { return };
        if cc.change != ConfChangeKind::Remove {
            return;
        }
        let member_before = entry.index < 2 || self.raw.conf_at(entry.index - 1).is_none_or(|c| c.contains(cc.node));
        let gone_after = self.raw.conf_at(entry.index).is_none_or(|c| !c.contains(cc.node));
        if member_before && gone_after {
            self.membership.remove(cc.node);
            if cc.node == self.id {
                self.removal_applied(entry.index);
            }
        }
    }

    /// Installs the state machine part of the Ready's snapshot.
    fn install(&mut self, run: &mut ReadyRun, hooks: &mut impl ApplyHooks) -> Result<(), ReplicaError> {
        let (Some(snap), Some(data)) = (run.rd.snapshot.as_ref(), run.snapshot_kv.take()) else { return Ok(()) };
        let meta = snap.meta.clone();
        let bad = |reason: String| ReplicaError::Snapshot { index: meta.index, reason };
        let kv = KvStateMachine::restore(&data).map_err(|e| bad(e.to_string()))?;
        if kv.applied_index() != meta.index {
            return Err(bad(format!("it holds a state machine at index {}", kv.applied_index())));
        }
        self.kv = kv;
        self.snapshot_index = meta.index;
        hooks.snapshot_installed(&meta, &self.kv);
        run.installed = Some(meta);
        Ok(())
    }
}

fn next_stage(stage: Stage) -> Stage {
    match stage {
        Stage::SendNow => Stage::SaveSnapshot,
        Stage::SaveSnapshot => Stage::ApplyEarly,
        Stage::ApplyEarly => Stage::Persist,
        Stage::Persist => Stage::SendPersisted,
        Stage::SendPersisted => Stage::Install,
        Stage::Install => Stage::ApplyLate,
        Stage::ApplyLate | Stage::Done => Stage::Done,
    }
}

/// A Ready advanced before its write is durable (see [`Replica::detach_ready`]).
#[derive(Debug)]
pub struct Detached {
    pub write: Persist,
    /// Send once the write is durable.
    pub after: Vec<Message>,
    /// Pass to [`Replica::persisted`] once the write is durable.
    pub last_entry: Option<(Index, Term)>,
    pub events: Vec<Event>,
    pub links_changed: bool,
}
