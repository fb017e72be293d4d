//! One-line descriptions of the core's values for the golden output. Each names the
//! fields a protocol decision sets, so that a changed decision changes a line.

use raftkv_raft::{
    ConfChange, ConfState, Entry, EntryKind, Event, HardState, Message, MessageBody, PeerProgress, RecoveryMarker,
    Snapshot, SnapshotMeta, Status, VoteReason,
};

/// `(1,2,3)`
pub fn ids<'a>(ids: impl IntoIterator<Item = &'a u64>) -> String {
    let list: Vec<String> = ids.into_iter().map(u64::to_string).collect();
    format!("({})", list.join(","))
}

pub fn conf(c: &ConfState) -> String {
    if c.learners.is_empty() {
        format!("voters={}", ids(&c.voters))
    } else {
        format!("voters={} learners={}", ids(&c.voters), ids(&c.learners))
    }
}

/// Snapshot data and commands are short ASCII strings in these tests; anything else is
/// shown escaped.
fn data(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

pub fn entry(e: &Entry) -> String {
    let at = format!("{}/{}", e.index, e.term);
    match e.kind {
        EntryKind::Noop => match RecoveryMarker::decode(&e.data) {
            Some(m) => format!("{at} noop recovery-marker(node={} nonce={:#x})", m.node, m.nonce),
            None if e.data.is_empty() => format!("{at} noop"),
            None => format!("{at} noop {}", data(&e.data)),
        },
        EntryKind::Command => format!("{at} cmd {}", data(&e.data)),
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Ok(cc) => format!("{at} conf {} {}", cc.change.as_str(), cc.node),
            Err(err) => format!("{at} conf <{err}>"),
        },
    }
}

fn entries(es: &[Entry]) -> String {
    let list: Vec<String> = es.iter().map(entry).collect();
    format!("[{}]", list.join(", "))
}

fn snapshot_meta(m: &SnapshotMeta) -> String {
    format!("{}/{} {}", m.index, m.term, conf(&m.conf))
}

pub fn snapshot(s: &Snapshot) -> String {
    format!("{} data={}", snapshot_meta(&s.meta), data(&s.data))
}

pub fn hard_state(hs: &HardState) -> String {
    let vote = hs.vote.map_or("none".to_string(), |v| v.to_string());
    let recovering = if hs.recovering { " recovering" } else { "" };
    format!("term={} vote={vote} commit={}{recovering}", hs.term, hs.commit)
}

pub fn message(m: &Message) -> String {
    let head = format!("{}->{} {} term={}", m.from, m.to, m.body.name(), m.term);
    let body = match &m.body {
        MessageBody::RequestVote { last_log_index, last_log_term, force, .. } => {
            format!(" last={last_log_index}/{last_log_term}{}", if *force { " force" } else { "" })
        }
        MessageBody::RequestVoteResponse { granted, .. } => {
            (if *granted { " granted" } else { " rejected" }).to_string()
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries: es, leader_commit } => {
            let es = if es.is_empty() { String::new() } else { format!(" entries={}", entries(es)) };
            format!(" prev={prev_log_index}/{prev_log_term} commit={leader_commit}{es}")
        }
        MessageBody::AppendEntriesResponse { success: true, index, .. } => format!(" ok index={index}"),
        MessageBody::AppendEntriesResponse { success: false, index, reject_hint, hint_term } => {
            format!(" reject index={index} hint={reject_hint}/{hint_term}")
        }
        MessageBody::Heartbeat { leader_commit, read_round } => format!(" commit={leader_commit} round={read_round}"),
        MessageBody::HeartbeatResponse { read_round, missing_from } => {
            let missing = missing_from.map_or(String::new(), |i| format!(" missing-from={i}"));
            format!(" round={read_round}{missing}")
        }
        MessageBody::InstallSnapshot { meta, offset, total_len, data: chunk, done } => {
            let done = if *done { " done" } else { "" };
            format!(" snap={} offset={offset}/{total_len} data={}{done}", snapshot_meta(meta), data(chunk))
        }
        MessageBody::InstallSnapshotResponse { meta_index, next_offset, done, rejected, too_large } => {
            let mut s = format!(" snap-index={meta_index} next-offset={next_offset}");
            if *done {
                s.push_str(" done");
            }
            if *rejected {
                s.push_str(" rejected");
            }
            if let Some(limit) = too_large {
                s.push_str(&format!(" too-large(limit={limit})"));
            }
            s
        }
        MessageBody::TimeoutNow => String::new(),
    };
    let recovery = m.recovery.map_or(String::new(), |n| format!(" recovery={n:#x}"));
    format!("{head}{body}{recovery}")
}

pub fn event(e: &Event) -> String {
    let flag = |on: bool, name: &str| if on { format!(" {name}") } else { String::new() };
    match e {
        Event::ElectionStarted { term, pre_vote, transfer, .. } => {
            format!("ElectionStarted term={term}{}{}", flag(*pre_vote, "pre-vote"), flag(*transfer, "transfer"))
        }
        Event::VoteDecided { candidate: c, granted, reason, own_last, .. } => format!(
            "VoteDecided candidate={} term={}{} {} reason={} candidate-last={}/{} own-last={}/{}",
            c.id,
            c.term,
            flag(c.pre_vote, "pre-vote"),
            if *granted { "granted" } else { "rejected" },
            vote_reason(reason),
            c.last.index,
            c.last.term,
            own_last.index,
            own_last.term
        ),
        Event::VoteReceived { from, term, pre_vote, granted } => format!(
            "VoteReceived from={from} term={term}{} {}",
            flag(*pre_vote, "pre-vote"),
            if *granted { "granted" } else { "rejected" }
        ),
        Event::ElectionFinished { term, pre_vote, outcome, granted, needed } => format!(
            "ElectionFinished term={term}{} {} granted={granted} needed={needed}",
            flag(*pre_vote, "pre-vote"),
            outcome.as_str()
        ),
        Event::BecameLeader { term } => format!("BecameLeader term={term}"),
        Event::SteppedDown { term, reason, .. } => format!("SteppedDown term={term} reason={}", reason.as_str()),
        Event::TermChanged { from, to } => format!("TermChanged {from}->{to}"),
        Event::LeaderKnown { term, leader } => format!("LeaderKnown term={term} leader={leader}"),
        Event::Committed { first, last, term, entries, bytes, acked_by } => {
            format!("Committed {first}..={last} term={term} entries={entries} bytes={bytes} acked-by={}", ids(acked_by))
        }
        Event::SnapshotInstalled { index, term } => format!("SnapshotInstalled {index}/{term}"),
        Event::PeerLostLog { peer, match_index, last_index } => {
            format!("PeerLostLog peer={peer} match={match_index} last={last_index}")
        }
        Event::TransferAborted { target } => format!("TransferAborted target={target}"),
        Event::RecoveryStarted { nonce, lost_state } => {
            format!("RecoveryStarted nonce={nonce:#x}{}", flag(*lost_state, "lost-state"))
        }
        Event::RecoveryFinished { term, index } => format!("RecoveryFinished term={term} index={index}"),
        Event::RecoveryMarked { peer, index } => format!("RecoveryMarked peer={peer} index={index}"),
        Event::SnapshotRefused { peer, index, bytes, limit, refusals, retry_in_ticks } => format!(
            "SnapshotRefused peer={peer} index={index} bytes={bytes} limit={limit} refusals={refusals} retry-in-ticks={retry_in_ticks}"
        ),
        Event::ConfChanged { index, conf: c } => format!("ConfChanged index={index} {}", conf(c)),
    }
}

fn vote_reason(r: &VoteReason) -> String {
    match *r {
        VoteReason::AlreadyVoted { voted_for } => format!("already_voted({voted_for})"),
        VoteReason::LeaderKnown { leader } => format!("leader_known({leader})"),
        VoteReason::LeaderLease { leader } => format!("leader_lease({leader})"),
        VoteReason::LowerTerm { own_term } => format!("lower_term({own_term})"),
        other => other.as_str().to_string(),
    }
}

/// The soft state shown when it changes: role, term and known leader.
pub fn soft_state(s: &Status) -> String {
    let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
    format!("{} term={} leader={leader}", s.role.as_str(), s.term)
}

pub fn status(s: &Status) -> String {
    let vote = s.vote.map_or("none".to_string(), |v| v.to_string());
    let recovering = if s.recovering { " recovering" } else { "" };
    format!(
        "{}: {} vote={vote} commit={} applied={} log={}..={} persisted={} {}{recovering}",
        s.id,
        soft_state(s),
        s.commit_index,
        s.applied_index,
        s.first_index,
        s.last_index,
        s.persisted_index,
        conf(&s.conf)
    )
}

pub fn progress(p: &PeerProgress) -> String {
    let recovering = if p.recovering { " recovering" } else { "" };
    format!("progress {}: match={} next={}{recovering}", p.id, p.match_index, p.next_index)
}
