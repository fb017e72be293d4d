//! The outcome of a Jepsen-style run: its figures, the report it prints, and the
//! checks of its verdict, each shown to catch a bad history or store made from the run.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_linearizability::{Call, History, Options, Outcome, Report as CheckReport, Ret, Verdict, check};

use super::ACKED_PREFIX;
use super::checks;
use super::nemesis::{Fault, Injected};
use crate::LoadResult;

/// Figures of one history.
#[derive(Debug, Default)]
pub struct Figures {
    pub ops: usize,
    pub ok: usize,
    pub unknown_writes: usize,
    pub unknown_reads: usize,
    pub failed: usize,
    pub cas_swapped: usize,
    pub cas_not_swapped: usize,
}

pub(crate) fn figures(h: &History) -> Figures {
    let mut f = Figures { ops: h.len(), ..Figures::default() };
    for op in h.ops() {
        match (&op.call, &op.outcome) {
            (Call::Get, Outcome::Unknown) => f.unknown_reads += 1,
            (_, Outcome::Unknown) => f.unknown_writes += 1,
            (_, Outcome::Failed { .. }) => f.failed += 1,
            (Call::Cas { .. }, Outcome::Done { ret: Ret::Ok, .. }) => {
                f.ok += 1;
                f.cas_swapped += 1;
            }
            (Call::Cas { .. }, Outcome::Done { .. }) => {
                f.ok += 1;
                f.cas_not_swapped += 1;
            }
            (_, Outcome::Done { .. }) => f.ok += 1,
        }
    }
    f
}

/// The outcome of a run.
pub struct Report {
    pub title: String,
    pub secs: u64,
    pub seed: u64,
    pub history: History,
    pub figures: Figures,
    pub check: CheckReport,
    pub check_time: Duration,
    pub faults: Vec<Injected>,
    /// The fault kinds the run cycles through: each must be injected.
    pub named: Vec<Fault>,
    /// When the clients stopped, in the history's nanoseconds.
    pub load_end: u64,
    /// Definite failures the clients saw.
    pub failures: Vec<String>,
    /// The unique-key writer's puts.
    pub written: LoadResult,
    /// Acknowledged unique-key puts missing or changed at the end.
    pub lost: Vec<String>,
    /// Unique keys holding a value no put wrote.
    pub invented: Vec<String>,
    /// Unknown-outcome unique-key puts found applied.
    pub unknown_applied: usize,
    /// Snapshots each node installed from a leader (from its log).
    pub installs: BTreeMap<raftkv_client::NodeId, usize>,
    pub total: Duration,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.check.violations().count()
    }

    /// Faults injected, by kind (skipped ones apart).
    pub fn faults_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut by_kind = BTreeMap::new();
        for f in self.faults.iter().filter(|f| f.done) {
            *by_kind.entry(f.fault.name()).or_default() += 1;
        }
        by_kind
    }

    /// Prints the checker's report, the faults and one summary block.
    pub fn print(&self) {
        eprintln!("{}", self.check);
        let per_key: Vec<String> = self.check.keys.iter().map(|k| format!("{}: {} ops", k.key, k.ops)).collect();
        eprintln!("per key: {}", per_key.join(", "));
        eprintln!("faults ({}):", self.faults.len());
        for f in &self.faults {
            eprintln!("  {}", f.what);
        }
        let f = &self.figures;
        let injected: usize = self.faults_by_kind().values().sum();
        let kinds: Vec<String> = self.faults_by_kind().iter().map(|(k, n)| format!("{k} {n}")).collect();
        let skipped = self.faults.len() - injected;
        let isolations: Vec<bool> = self.faults.iter().filter_map(|f| f.new_leader).collect();
        let w = &self.written;
        let bar = "=".repeat(78);
        eprintln!("{bar}\nJEPSEN REPORT: {}", self.title);
        eprintln!("  load                  {} s, seed {}; whole run {:.1?}", self.secs, self.seed, self.total);
        eprintln!(
            "  ops                   {} (ok {}: cas swapped {}, cas not swapped {}; failed {})",
            f.ops, f.ok, f.cas_swapped, f.cas_not_swapped, f.failed
        );
        eprintln!(
            "  unknown outcome       {} writes, {} timed-out reads ({:.1}% of ops; at most {:.0}%)",
            f.unknown_writes,
            f.unknown_reads,
            (f.unknown_writes + f.unknown_reads) as f64 * 100.0 / f.ops.max(1) as f64,
            checks::MAX_UNKNOWN_SHARE * 100.0
        );
        eprintln!("  faults injected       {injected} ({}); skipped {skipped}", kinds.join(", "));
        if !isolations.is_empty() {
            let elected = isolations.iter().filter(|e| **e).count();
            eprintln!("  isolated leaders      {elected} of {} replaced by a leader of the others", isolations.len());
        }
        let wipes_needing = self.faults.iter().filter(|f| f.done && f.wipe.as_ref().is_some_and(|w| w.needs_snapshot));
        eprintln!(
            "  snapshots installed   {} {:?} ({} wipes past a compaction)",
            self.installs.values().sum::<usize>(),
            self.installs,
            wipes_needing.count()
        );
        eprintln!(
            "  violations            {} (verdict {:?}; checked in {:.2?}, {} steps)",
            self.violations(),
            self.check.verdict(),
            self.check_time,
            self.check.steps()
        );
        eprintln!(
            "  unique-key puts       {} acknowledged, {} unknown ({} applied)",
            w.acked.len(),
            w.unknown.len(),
            self.unknown_applied
        );
        eprintln!("  lost acked writes     {} (invented values: {})", self.lost.len(), self.invented.len());
        eprintln!("  client failures       {}", self.failures.len());
        eprintln!("{bar}");
    }

    /// The run's verdict: linearizable, nothing lost or invented, no definite failure
    /// (a write reply of the wrong kind is one); every named fault kind injected;
    /// writes acknowledged again after every heal; few unknown outcomes; a snapshot
    /// installed on every node wiped after the others compacted their logs.
    pub fn assert_sound(&self) {
        assert_eq!(self.check.verdict(), Verdict::Linearizable, "{}", self.check);
        assert!(self.lost.is_empty(), "{} acknowledged puts lost or changed: {:?}", self.lost.len(), self.lost);
        assert!(self.invented.is_empty(), "values never written: {:?}", self.invented);
        assert!(self.failures.is_empty(), "definite client failures: {:?}", self.failures);
        assert!(self.figures.ok >= 100, "too little progress: {:?}", self.figures);
        assert!(!self.written.acked.is_empty(), "the unique-key writer got no put acknowledged");
        let missing = checks::kinds_never_injected(&self.named, &self.faults);
        assert!(
            missing.is_empty(),
            "fault kinds never injected: {missing:?} (is {} s of load enough for one cycle of {} faults?)",
            self.secs,
            self.named.len()
        );
        let stalled = checks::windows_without_writes(&self.history, &self.faults, self.load_end);
        assert!(stalled.is_empty(), "no write acknowledged after these heals: {stalled:#?}");
        if let Some(e) = checks::too_many_unknown(&self.history) {
            panic!("{e}");
        }
        let missing = checks::wipes_without_snapshot(&self.faults, &self.installs);
        assert!(missing.is_empty(), "wiped nodes caught up without a snapshot: {missing:?}");
    }

    /// The same pipeline catches bad histories made from this one.
    pub fn assert_checker_catches_planted_bugs(&self) {
        let (bad, victim) = corrupt(&self.history).expect("some acknowledged put was read");
        let bad_report = check(&bad, &Options::default()).expect("well-formed");
        eprintln!("with operation #{victim}'s value altered:\n{bad_report}");
        assert_eq!(bad_report.verdict(), Verdict::Violation);
        assert_eq!(bad_report.violations().count(), 1);
        let (bad, victim) = make_stale(&self.history).expect("a late get after two puts to its key");
        let bad_report = check(&bad, &Options::default()).expect("well-formed");
        eprintln!("with operation #{victim} made a stale read:\n{bad_report}");
        assert_eq!(bad_report.verdict(), Verdict::Violation);
        assert!(bad_report.violations().all(|k| k.witness.iter().any(|o| o.id == victim)), "{bad_report}");
    }
}

impl Report {
    /// The lost-write check catches a store that lacks an acknowledged put, holds one
    /// with another value, or holds a value nobody wrote (made from this run's puts).
    pub fn assert_lost_write_check_catches_planted_bugs(&self) {
        let w = &self.written;
        let mut keys = w.acked.keys();
        let (Some(dropped), Some(altered)) = (keys.next(), keys.next()) else {
            panic!("fewer than 2 acknowledged unique-key puts: {}", w.acked.len())
        };
        let mut stored = w.acked.clone();
        stored.remove(dropped);
        stored.insert(altered.clone(), "altered".into());
        stored.insert(format!("{ACKED_PREFIX}/w0/never"), "invented".into());
        assert_eq!(w.lost(&stored), vec![dropped, altered]);
        let invented: Vec<&String> = w.invented(&stored).into_iter().map(|(k, _)| k).collect();
        assert_eq!(invented.len(), 2, "{invented:?}");
        assert!(w.lost(&w.acked).is_empty() && w.invented(&w.acked).is_empty());
    }
}

/// Alters the value of one acknowledged put that a later get observed: the checker
/// must then find that get reading a value nobody wrote.
fn corrupt(h: &History) -> Option<(History, usize)> {
    let reads: BTreeMap<&str, u64> = h
        .ops()
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Done { ret: Ret::Value(Some(v)), .. } => Some((v.as_str(), o.invoke)),
            _ => None,
        })
        .collect();
    let victim = h.ops().iter().find(|o| match (&o.call, &o.outcome) {
        (Call::Put { value }, Outcome::Done { ret: Ret::Ok, .. }) => reads.contains_key(value.as_str()),
        _ => false,
    })?;
    let mut bad = h.clone();
    if let Call::Put { value } = &mut bad.ops_mut()[victim.id].call {
        value.push_str("-altered");
    }
    Some((bad, victim.id))
}

/// Makes one late get return an acknowledged put's value although a later put to the
/// same key had completed before that get was invoked: a stale read.
fn make_stale(h: &History) -> Option<(History, usize)> {
    let acked_put = |o: &&raftkv_linearizability::Operation| {
        matches!((&o.call, &o.outcome), (Call::Put { .. }, Outcome::Done { ret: Ret::Ok, .. }))
    };
    let get = h.ops().iter().rev().find(|o| matches!(o.outcome, Outcome::Done { ret: Ret::Value(_), .. }))?;
    let newer = h
        .ops()
        .iter()
        .rev()
        .filter(acked_put)
        .find(|p| p.key == get.key && p.complete().is_some_and(|c| c < get.invoke))?;
    let older = h
        .ops()
        .iter()
        .filter(acked_put)
        .find(|p| p.key == get.key && p.complete().is_some_and(|c| c < newer.invoke))?;
    let Call::Put { value } = &older.call else { return None };
    let mut bad = h.clone();
    bad.ops_mut()[get.id].outcome = Outcome::Done { at: get.complete()?, ret: Ret::Value(Some(value.clone())) };
    Some((bad, get.id))
}
