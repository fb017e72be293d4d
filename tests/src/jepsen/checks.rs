//! The parts of a run's verdict beyond linearizability, each a function of the run's
//! data so that the unit tests below can feed them synthetic runs and see each catch a
//! bad one: every named fault kind injected, writes acknowledged again after every
//! heal, few unknown outcomes, snapshots installed on wiped nodes, and write replies of
//! the right kind.

use std::collections::BTreeMap;

use raftkv_client::NodeId;
use raftkv_linearizability::{Call, History, Outcome, Ret};

use super::nemesis::{Fault, Injected};

/// What a write's reply means in the history: a cas reply must carry a cas result and
/// a put reply must not. A reply of the wrong kind is a definite failure (`Err`), not
/// a swap: the operation then stays unknown in the history.
pub(crate) fn write_ret(is_cas: bool, cas: Option<(bool, Option<String>)>) -> Result<Ret, String> {
    match (is_cas, cas) {
        (false, None) | (true, Some((true, _))) => Ok(Ret::Ok),
        (true, Some((false, current))) => Ok(Ret::CasFailed { current }),
        (true, None) => Err("a cas reply without a cas result".into()),
        (false, Some(_)) => Err("a put reply with a cas result".into()),
    }
}

/// The kinds of `named` that no fault of `faults` injected (skipped ones do not count).
pub(crate) fn kinds_never_injected(named: &[Fault], faults: &[Injected]) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> =
        named.iter().filter(|k| !faults.iter().any(|f| f.done && f.fault == **k)).map(|k| k.name()).collect();
    missing.dedup();
    missing
}

/// Whether `op` is a write the cluster acknowledged as applied: a put, or a cas that
/// swapped. (A cas that did not swap changed nothing.)
fn acked_write(op: &raftkv_linearizability::Operation) -> bool {
    matches!((&op.call, &op.outcome), (Call::Put { .. } | Call::Cas { .. }, Outcome::Done { ret: Ret::Ok, .. }))
}

/// The fault windows without progress: for each injected fault, the time from its
/// heal to the start of the next injected fault (for the last, to `load_end`) must
/// hold the invocation of a write that was then acknowledged. Times in the history's
/// nanoseconds.
pub(crate) fn windows_without_writes(h: &History, faults: &[Injected], load_end: u64) -> Vec<String> {
    let done: Vec<&Injected> = faults.iter().filter(|f| f.done).collect();
    let mut stalled = Vec::new();
    for (i, f) in done.iter().enumerate() {
        let end = done.get(i + 1).map_or(load_end, |next| next.started);
        let progress = h.ops().iter().any(|op| acked_write(op) && op.invoke >= f.healed && op.invoke < end);
        if !progress {
            let s = |ns: u64| ns as f64 / 1e9;
            stalled.push(format!("{:.3}s..{:.3}s after {}", s(f.healed), s(end), f.what));
        }
    }
    stalled
}

/// The most operations of unknown outcome a run may have, as a share of all of them.
///
/// Why this bound is sound: an outcome is unknown when a client's deadline passed
/// (`ClientError::Unknown` for a write, `NoLeader` for a read come only then; other
/// errors on a write are rare), and a client has one operation in flight, so each of
/// the 7 clients adds at most one unknown per second of load (the shortest timeout is
/// 1 s): at most 7 per second. Above 5%, the run completed fewer than 20 operations
/// per unknown, so fewer than 140 per second: a healthy cluster does far more even on
/// two shared cores (measured: 48,749 operations in 25 s with 11 faults, 8 unknown,
/// 0.02%), so the bound fails only a cluster whose operations time out en masse.
pub(crate) const MAX_UNKNOWN_SHARE: f64 = 0.05;

/// An error when more than [`MAX_UNKNOWN_SHARE`] of the history's operations have an
/// unknown outcome.
pub(crate) fn too_many_unknown(h: &History) -> Option<String> {
    let unknown = h.ops().iter().filter(|op| op.outcome == Outcome::Unknown).count();
    let share = unknown as f64 / h.len().max(1) as f64;
    (share > MAX_UNKNOWN_SHARE).then(|| {
        format!(
            "{unknown} of {} operations ({:.1}%) have an unknown outcome; at most {:.0}% may",
            h.len(),
            share * 100.0,
            MAX_UNKNOWN_SHARE * 100.0
        )
    })
}

/// A follower restarted with an empty data directory.
#[derive(Clone, Debug)]
pub struct Wipe {
    pub node: NodeId,
    /// Whether every other node had compacted the log's first entry away when the
    /// node was wiped (snapshot index beyond the compaction slack), so that whichever
    /// of them leads can only catch the wiped node up with a snapshot.
    pub needs_snapshot: bool,
}

/// The wiped nodes that installed fewer snapshots from a leader (`installs`, counted in
/// each node's log over the whole run) than they had wipes that needed one.
pub(crate) fn wipes_without_snapshot(faults: &[Injected], installs: &BTreeMap<NodeId, usize>) -> Vec<String> {
    let mut needed: BTreeMap<NodeId, usize> = BTreeMap::new();
    for w in faults.iter().filter(|f| f.done).filter_map(|f| f.wipe.as_ref()).filter(|w| w.needs_snapshot) {
        *needed.entry(w.node).or_default() += 1;
    }
    needed
        .into_iter()
        .filter_map(|(node, n)| {
            let got = installs.get(&node).copied().unwrap_or(0);
            (got < n).then(|| format!("node {node}: wiped {n} times past a compaction, installed {got} snapshots"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn fault(fault: Fault, started: u64, healed: u64) -> Injected {
        Injected { fault, done: true, new_leader: None, what: fault.name().into(), started, healed, wipe: None }
    }

    fn put(h: &mut History, at: u64, ret: Option<Ret>) {
        let id = h.invoke(0, "k", Call::Put { value: format!("v{at}") }, at);
        if let Some(ret) = ret {
            h.complete(id, ret, at + S / 100);
        }
    }

    #[test]
    fn a_cas_reply_without_a_cas_result_is_a_failure() {
        assert_eq!(write_ret(false, None), Ok(Ret::Ok));
        assert_eq!(write_ret(true, Some((true, None))), Ok(Ret::Ok));
        assert_eq!(write_ret(true, Some((false, Some("x".into())))), Ok(Ret::CasFailed { current: Some("x".into()) }));
        assert!(write_ret(true, None).unwrap_err().contains("without a cas result"));
        assert!(write_ret(false, Some((true, None))).is_err());
    }

    #[test]
    fn a_named_kind_never_injected_is_caught() {
        let named = [Fault::KillLeader, Fault::WipeFollower, Fault::PauseLeader];
        let mut faults = vec![fault(Fault::KillLeader, 0, S), fault(Fault::PauseLeader, 2 * S, 3 * S)];
        faults.push(Injected { done: false, ..fault(Fault::WipeFollower, 4 * S, 4 * S) });
        assert_eq!(kinds_never_injected(&named, &faults), vec!["wipe-follower"]);
        faults.push(fault(Fault::WipeFollower, 5 * S, 6 * S));
        assert!(kinds_never_injected(&named, &faults).is_empty());
    }

    #[test]
    fn a_cluster_that_stops_acknowledging_writes_after_a_fault_is_caught() {
        let faults = [fault(Fault::KillLeader, S, 2 * S), fault(Fault::PauseLeader, 4 * S, 5 * S)];
        let mut h = History::new();
        put(&mut h, S / 2, Some(Ret::Ok));
        // After the first heal: only a write invoked before it, one that timed out,
        // and a cas that did not swap. Reads fill the history.
        put(&mut h, 2 * S - 1, Some(Ret::Ok));
        put(&mut h, 3 * S, None);
        let cas = h.invoke(0, "k", Call::Cas { expected: None, new: "c".into() }, 3 * S);
        h.complete(cas, Ret::CasFailed { current: Some("x".into()) }, 3 * S + 1);
        for i in 0..100 {
            let g = h.invoke(1, "k", Call::Get, 2 * S + i * S / 100);
            h.complete(g, Ret::Value(None), 2 * S + i * S / 100 + 1);
        }
        put(&mut h, 6 * S, Some(Ret::Ok));
        let stalled = windows_without_writes(&h, &faults, 7 * S);
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert!(stalled[0].contains("kill-leader"), "{stalled:?}");
        put(&mut h, 3 * S, Some(Ret::Ok));
        assert!(windows_without_writes(&h, &faults, 7 * S).is_empty());
        // The last window ends with the load: nothing after it counts.
        assert_eq!(windows_without_writes(&h, &faults, 6 * S).len(), 1);
    }

    #[test]
    fn too_many_unknown_outcomes_are_caught() {
        let mut h = History::new();
        for i in 0..95 {
            put(&mut h, i, Some(Ret::Ok));
        }
        for i in 0..5 {
            put(&mut h, 100 + i, None);
        }
        assert_eq!(too_many_unknown(&h), None, "5 of 100 is 5%");
        put(&mut h, 200, None);
        let e = too_many_unknown(&h).expect("6 of 101");
        assert!(e.contains("6 of 101"), "{e}");
    }

    #[test]
    fn a_wipe_past_a_compaction_without_a_snapshot_is_caught() {
        let wiped = |node, needs_snapshot| Injected {
            wipe: Some(Wipe { node, needs_snapshot }),
            ..fault(Fault::WipeFollower, 0, S)
        };
        let faults = [wiped(2, true), wiped(2, true), wiped(3, false)];
        let installs = BTreeMap::from([(2, 1), (3, 0)]);
        let missing = wipes_without_snapshot(&faults, &installs);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("node 2:"), "{missing:?}");
        assert!(wipes_without_snapshot(&faults, &BTreeMap::from([(2, 2)])).is_empty());
    }
}
