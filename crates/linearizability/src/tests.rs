use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

use super::*;

const K: &str = "k";

fn put(v: &str) -> Call {
    Call::Put { value: v.into() }
}

fn cas(expected: Option<&str>, new: &str) -> Call {
    Call::Cas { expected: expected.map(String::from), new: new.into() }
}

fn val(v: Option<&str>) -> Ret {
    Ret::Value(v.map(String::from))
}

/// Adds a completed operation on key `K`.
fn op(h: &mut History, p: u64, call: Call, invoke: u64, complete: u64, ret: Ret) -> usize {
    let id = h.invoke(p, K, call, invoke);
    h.complete(id, ret, complete);
    id
}

fn verdict(h: &History) -> Verdict {
    check(h, &Options::default()).expect("well-formed").verdict()
}

fn violation(h: &History) -> Report {
    let r = check(h, &Options::default()).expect("well-formed");
    assert_eq!(r.verdict(), Verdict::Violation, "{r}");
    eprintln!("{r}");
    r
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert_eq!(verdict(&History::new()), Verdict::Linearizable);
    let mut h = History::new();
    op(&mut h, 1, Call::Get, 0, 1, val(None));
    op(&mut h, 1, put("a"), 2, 3, Ret::Ok);
    op(&mut h, 1, Call::Get, 4, 5, val(Some("a")));
    op(&mut h, 1, cas(Some("a"), "b"), 6, 7, Ret::Ok);
    op(&mut h, 1, cas(Some("a"), "c"), 8, 9, Ret::CasFailed { current: Some("b".into()) });
    op(&mut h, 1, Call::Delete, 10, 11, Ret::Ok);
    op(&mut h, 1, cas(None, "d"), 12, 13, Ret::Ok);
    op(&mut h, 1, Call::Get, 14, 15, val(Some("d")));
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn concurrent_reads_may_see_either_value() {
    // put(a) done; put(b) overlaps two reads, which see b then a? No: b then a is only
    // fine if the reads overlap each other too.
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 1, put("b"), 2, 10, Ret::Ok);
    op(&mut h, 2, Call::Get, 3, 4, val(Some("a")));
    op(&mut h, 3, Call::Get, 5, 6, val(Some("b")));
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // A later read going back to a after b was seen: not linearizable.
    op(&mut h, 2, Call::Get, 7, 8, val(Some("a")));
    violation(&h);
}

#[test]
fn stale_read_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 1, put("b"), 2, 3, Ret::Ok);
    // Read strictly after put(b) completed, yet it sees a (e.g. a deposed leader).
    let stale = op(&mut h, 2, Call::Get, 4, 5, val(Some("a")));
    let r = violation(&h);
    let w = &r.keys[0].witness;
    assert!(r.keys[0].minimal);
    assert!(w.iter().any(|o| o.id == stale), "{r}");
    assert_eq!(w.len(), 3, "{r}");
}

#[test]
fn lost_write_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 2, Call::Get, 2, 3, val(Some("a")));
    let lost = op(&mut h, 1, put("b"), 4, 5, Ret::Ok);
    // Acknowledged put(b) vanished: later reads still see a.
    op(&mut h, 2, Call::Get, 6, 7, val(Some("a")));
    let r = violation(&h);
    assert!(r.keys[0].witness.iter().any(|o| o.id == lost), "{r}");
    // And a lost write into an absent key.
    let mut h = History::new();
    op(&mut h, 1, put("x"), 0, 1, Ret::Ok);
    op(&mut h, 2, Call::Get, 2, 3, val(None));
    let r = violation(&h);
    assert_eq!(r.keys[0].witness.len(), 2, "{r}");
}

#[test]
fn cas_that_succeeded_twice_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, put("0"), 0, 1, Ret::Ok);
    // Two concurrent increments from 0, both report success.
    op(&mut h, 2, cas(Some("0"), "1-from-2"), 2, 6, Ret::Ok);
    op(&mut h, 3, cas(Some("0"), "1-from-3"), 3, 7, Ret::Ok);
    let r = violation(&h);
    assert_eq!(r.keys[0].witness.len(), 3, "{r}");
    // One of them failing (and seeing the other's value) is fine.
    let mut h = History::new();
    op(&mut h, 1, put("0"), 0, 1, Ret::Ok);
    op(&mut h, 2, cas(Some("0"), "1-from-2"), 2, 6, Ret::Ok);
    op(&mut h, 3, cas(Some("0"), "1-from-3"), 3, 7, Ret::CasFailed { current: Some("1-from-2".into()) });
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn failed_cas_must_report_the_real_current_value() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 2, cas(Some("z"), "n"), 2, 3, Ret::CasFailed { current: Some("q".into()) });
    violation(&h);
    // A cas that failed although the value matched.
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 2, cas(Some("a"), "n"), 2, 3, Ret::CasFailed { current: Some("a".into()) });
    violation(&h);
}

#[test]
fn deletes_are_modelled() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 1, Call::Delete, 2, 3, Ret::Ok);
    op(&mut h, 2, Call::Get, 4, 5, val(Some("a")));
    violation(&h);
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    op(&mut h, 1, Call::Delete, 2, 6, Ret::Ok);
    op(&mut h, 2, Call::Get, 3, 4, val(None));
    op(&mut h, 2, cas(None, "b"), 7, 8, Ret::Ok);
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn timed_out_put_may_be_read_later() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    h.invoke(2, K, put("maybe"), 2); // outcome unknown
    op(&mut h, 3, Call::Get, 3, 4, val(Some("a")));
    op(&mut h, 3, Call::Get, 100, 101, val(Some("maybe")));
    op(&mut h, 3, Call::Get, 102, 103, val(Some("maybe")));
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // ... or never take effect.
    let mut h2 = History::new();
    op(&mut h2, 1, put("a"), 0, 1, Ret::Ok);
    h2.invoke(2, K, put("maybe"), 2);
    op(&mut h2, 3, Call::Get, 100, 101, val(Some("a")));
    assert_eq!(verdict(&h2), Verdict::Linearizable);
    // But it takes effect once: it cannot be seen, then overwritten, then seen again.
    let mut h3 = History::new();
    h3.invoke(2, K, put("maybe"), 0);
    op(&mut h3, 3, Call::Get, 10, 11, val(Some("maybe")));
    op(&mut h3, 1, put("b"), 12, 13, Ret::Ok);
    op(&mut h3, 3, Call::Get, 14, 15, val(Some("maybe")));
    violation(&h3);
}

#[test]
fn timed_out_put_cannot_be_read_before_it_was_invoked() {
    let mut h = History::new();
    op(&mut h, 3, Call::Get, 0, 1, val(Some("later")));
    h.invoke(2, K, put("later"), 5);
    violation(&h);
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    h.invoke(2, K, put("b"), 2); // unknown, never read: pruned
    let ghost = op(&mut h, 3, Call::Get, 5, 6, val(Some("ghost")));
    let r = violation(&h);
    assert_eq!(r.keys[0].witness.iter().map(|o| o.id).collect::<Vec<_>>(), vec![ghost], "{r}");
    assert!(r.keys[0].minimal);
}

#[test]
fn unknown_cas_may_or_may_not_have_swapped() {
    for seen in [Some("x"), None] {
        let mut h = History::new();
        h.invoke(1, K, cas(None, "x"), 0);
        op(&mut h, 2, Call::Get, 5, 6, val(seen));
        assert_eq!(verdict(&h), Verdict::Linearizable, "{seen:?}");
    }
    // It can only swap from its expected value.
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    h.invoke(2, K, cas(Some("not-a"), "x"), 2);
    op(&mut h, 3, Call::Get, 5, 6, val(Some("x")));
    violation(&h);
}

#[test]
fn unknown_and_failed_reads_and_failed_writes_are_ignored() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 0, 1, Ret::Ok);
    h.invoke(2, K, Call::Get, 2); // timed out
    let f = h.invoke(3, K, put("rejected"), 3);
    h.fail(f, 4);
    op(&mut h, 1, Call::Get, 5, 6, val(Some("a")));
    assert_eq!(verdict(&h), Verdict::Linearizable);
    let r = check(&h, &Options::default()).unwrap();
    assert_eq!((r.keys[0].ops, r.keys[0].searched), (4, 2));
}

#[test]
fn keys_are_checked_independently() {
    let mut h = History::new();
    let a = h.invoke(1, "a", put("1"), 0);
    h.complete(a, Ret::Ok, 1);
    let b = h.invoke(1, "b", Call::Get, 2);
    h.complete(b, val(None), 3);
    let c = h.invoke(1, "b", Call::Get, 4);
    h.complete(c, val(Some("1")), 5); // "1" was written to a, not to b
    let r = check(&h, &Options::default()).unwrap();
    assert_eq!(r.keys.len(), 2);
    assert_eq!(r.violations().map(|k| k.key.as_str()).collect::<Vec<_>>(), vec!["b"]);
}

#[test]
fn malformed_histories_are_errors() {
    let mut h = History::new();
    op(&mut h, 1, Call::Get, 0, 1, Ret::Ok);
    assert!(check(&h, &Options::default()).is_err());
    let mut h = History::new();
    op(&mut h, 1, put("a"), 5, 1, Ret::Ok);
    assert!(check(&h, &Options::default()).unwrap_err().contains("before its invocation"));
}

/// A seeded generator (rand's `SmallRng`), so every history replays from its seed.
struct SeededRng(SmallRng);
impl SeededRng {
    fn new(seed: u64) -> Self {
        SeededRng(SmallRng::seed_from_u64(seed))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }
}

/// A history of `clients` concurrent clients on one atomic register: each operation
/// takes effect at a point inside its interval, so the history is linearizable by
/// construction. Some writes time out (unknown) after taking effect or not at all.
fn atomic_history(seed: u64, clients: u64, ops_per_client: usize) -> History {
    let mut rng = SeededRng::new(seed);
    // (linearization point, client, call, whether it takes effect, invoke, complete or None)
    let mut planned = Vec::new();
    for c in 0..clients {
        let mut t = rng.below(20);
        for n in 0..ops_per_client {
            let invoke = t;
            let point = invoke + 1 + rng.below(30);
            let complete = point + 1 + rng.below(30);
            let call = match rng.below(4) {
                0 | 1 => Call::Get,
                2 => put(&format!("c{c}-{n}")),
                _ => Call::Cas { expected: None, new: format!("c{c}-{n}") }, // expected set at apply time
            };
            let unknown = !matches!(call, Call::Get) && rng.below(10) == 0;
            let happens = !unknown || rng.below(2) == 0;
            planned.push((point, c, call, happens, invoke, (!unknown).then_some(complete)));
            t = if unknown { complete + 100 } else { complete + 1 + rng.below(5) };
        }
    }
    planned.sort_by_key(|p| p.0);
    let mut state: Option<String> = None;
    let mut h = History::new();
    for (_, c, call, happens, invoke, complete) in planned {
        let (call, ret) = match call {
            Call::Get => (Call::Get, Ret::Value(state.clone())),
            Call::Put { value } => {
                if happens {
                    state = Some(value.clone());
                }
                (Call::Put { value }, Ret::Ok)
            }
            Call::Cas { new, .. } => {
                // Half the time expect the current value (swaps), else a wrong one.
                let expected = if rng.below(2) == 0 { state.clone() } else { Some("nope".to_string()) };
                let ret = if expected == state {
                    if happens {
                        state = Some(new.clone());
                    }
                    Ret::Ok
                } else {
                    Ret::CasFailed { current: state.clone() }
                };
                (Call::Cas { expected, new }, ret)
            }
            Call::Delete => unreachable!(),
        };
        let id = h.invoke(c, K, call, invoke);
        if let Some(at) = complete {
            h.complete(id, ret, at);
        }
    }
    h
}

#[test]
fn random_atomic_histories_are_linearizable() {
    for seed in 0..200 {
        let h = atomic_history(seed, 5, 40);
        let r = check(&h, &Options::default()).unwrap();
        assert_eq!(r.verdict(), Verdict::Linearizable, "seed {seed}: {r}");
    }
}

#[test]
fn a_corrupted_atomic_history_is_caught_and_shrunk() {
    let mut caught = 0;
    for seed in 0..50 {
        let mut h = atomic_history(seed, 5, 40);
        // Make one late read return a value that was overwritten long before.
        let reads: Vec<usize> = h
            .ops()
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Done { ret: Ret::Value(Some(_)), .. }))
            .map(|o| o.id)
            .collect();
        let (Some(&first), Some(&last)) = (reads.first(), reads.last()) else { continue };
        let old = match &h.ops()[first].outcome {
            Outcome::Done { ret: Ret::Value(v), .. } => v.clone(),
            _ => unreachable!(),
        };
        if let Outcome::Done { ret, .. } = &mut h.ops_mut()[last].outcome {
            if *ret == Ret::Value(old.clone()) {
                continue;
            }
            *ret = Ret::Value(old);
        }
        let r = check(&h, &Options::default()).unwrap();
        if r.verdict() == Verdict::Violation {
            caught += 1;
            let w = &r.keys[0].witness;
            assert!(w.len() <= 8, "seed {seed}: witness of {} ops:\n{r}", w.len());
            assert!(w.iter().any(|o| o.id == last), "seed {seed}: {r}");
        }
    }
    // The old value could legitimately have been written again only by chance (values are
    // unique), or still be current if nothing overwrote it; nearly every case is caught.
    assert!(caught >= 40, "only {caught} of 50 corrupted histories were caught");
}

#[test]
fn a_step_bound_gives_timed_out() {
    let h = atomic_history(7, 5, 40);
    let r = check(&h, &Options { max_steps_per_key: 10, ..Options::default() }).unwrap();
    assert_eq!(r.verdict(), Verdict::TimedOut);
    assert!(r.to_string().contains("no verdict within"), "{r}");
}

#[test]
fn the_report_is_readable() {
    let mut h = History::new();
    op(&mut h, 1, put("a"), 1_000_000, 2_000_000, Ret::Ok);
    op(&mut h, 1, put("b"), 3_000_000, 4_000_000, Ret::Ok);
    op(&mut h, 2, Call::Get, 1_005_000_000, 1_006_000_000, val(Some("a")));
    h.invoke(3, K, put("c"), 1_007_000_000);
    let text = violation(&h).to_string();
    assert!(text.contains("NOT LINEARIZABLE"), "{text}");
    assert!(text.contains(r#"put("k", "b") -> ok"#), "{text}");
    assert!(text.contains(r#"get("k") -> "a""#), "{text}");
    assert!(text.contains("1.005s"), "{text}");
}

#[test]
fn a_long_corrupted_history_shrinks_to_a_few_ops() {
    let mut h = atomic_history(3, 5, 2_000);
    // A read in the middle returns the value of the very first write: stale by far.
    let first_written = h
        .ops()
        .iter()
        .find_map(|o| match (&o.call, &o.outcome) {
            (Call::Put { value }, Outcome::Done { .. }) => Some(value.clone()),
            _ => None,
        })
        .unwrap();
    let mid = h.ops().iter().filter(|o| matches!(o.call, Call::Get)).nth(2_500).unwrap().id;
    if let Outcome::Done { ret, .. } = &mut h.ops_mut()[mid].outcome {
        *ret = Ret::Value(Some(first_written));
    }
    let started = std::time::Instant::now();
    let r = check(&h, &Options::default()).unwrap();
    assert_eq!(r.verdict(), Verdict::Violation);
    let w = &r.keys[0].witness;
    eprintln!("{r}\nchecked and shrunk in {:?}", started.elapsed());
    assert!(w.len() <= 6, "{r}");
    assert!(w.iter().any(|o| o.id == mid), "{r}");
}

/// Brute force: whether some order of the operations that respects real time (an
/// operation completed before another was invoked comes first) explains every
/// completed result, each unknown write taking effect at most once. Small histories only.
fn brute_force_linearizable(ops: &[Operation]) -> bool {
    let ops: Vec<&Operation> = ops.iter().filter(|o| !matches!(o.outcome, Outcome::Failed { .. })).collect();
    assert!(ops.len() <= 10, "brute force is for small histories");
    fn search(ops: &[&Operation], done: u32, state: Option<String>) -> bool {
        let must_do = ops.iter().enumerate().all(|(i, o)| done & (1 << i) != 0 || o.outcome == Outcome::Unknown);
        if must_do {
            return true;
        }
        for (i, o) in ops.iter().enumerate() {
            if done & (1 << i) != 0 {
                continue;
            }
            // Every other pending operation that completed before `o` was invoked must go first.
            let blocked = ops
                .iter()
                .enumerate()
                .any(|(j, p)| j != i && done & (1 << j) == 0 && p.complete().is_some_and(|at| at < o.invoke));
            if blocked {
                continue;
            }
            let ret = match &o.outcome {
                Outcome::Done { ret, .. } => Some(ret),
                _ => None,
            };
            let next = match (&o.call, ret) {
                (Call::Get, Some(Ret::Value(v))) => (*v == state).then(|| state.clone()),
                (Call::Get, None) => Some(state.clone()),
                (Call::Put { value }, _) => Some(Some(value.clone())),
                (Call::Delete, _) => Some(None),
                (Call::Cas { expected, new }, Some(Ret::Ok) | None) => (*expected == state).then(|| Some(new.clone())),
                (Call::Cas { expected, .. }, Some(Ret::CasFailed { current })) => {
                    (*expected != state && *current == state).then(|| state.clone())
                }
                _ => None,
            };
            if let Some(next) = next
                && search(ops, done | (1 << i), next)
            {
                return true;
            }
        }
        false
    }
    search(&ops, 0, None)
}

/// A small random history on one key, with few distinct values so that results often
/// agree with some order and often do not, and some outcomes unknown.
fn small_random_history(seed: u64) -> History {
    let mut rng = SeededRng::new(seed);
    let value = |rng: &mut SeededRng| ["a", "b"][rng.below(2) as usize].to_string();
    let maybe = |rng: &mut SeededRng| (rng.below(3) > 0).then(|| ["a", "b"][rng.below(2) as usize].to_string());
    let mut h = History::new();
    for c in 0..3u64 {
        let mut t = rng.below(6);
        for _ in 0..1 + rng.below(3) {
            // Invocations at even times, completions at odd ones: no ties.
            let invoke = 2 * t;
            let complete = 2 * (t + 1 + rng.below(6)) + 1;
            let (call, ret) = match rng.below(5) {
                0 | 1 => (Call::Get, Ret::Value(maybe(&mut rng))),
                2 => (Call::Put { value: value(&mut rng) }, Ret::Ok),
                3 => (Call::Delete, Ret::Ok),
                _ => {
                    let call = Call::Cas { expected: maybe(&mut rng), new: value(&mut rng) };
                    let ret = if rng.below(2) == 0 { Ret::Ok } else { Ret::CasFailed { current: maybe(&mut rng) } };
                    (call, ret)
                }
            };
            let id = h.invoke(c, K, call, invoke);
            match rng.below(8) {
                0 => h.unknown(id),
                1 => h.fail(id, complete),
                _ => h.complete(id, ret, complete),
            }
            // The next operation of this client is invoked after this one completed.
            t = complete.div_ceil(2) + rng.below(3);
        }
    }
    h
}

#[test]
fn the_search_agrees_with_brute_force_on_small_random_histories() {
    let (mut linearizable, mut violations) = (0, 0);
    for seed in 0..20_000 {
        let h = small_random_history(seed);
        let expected = brute_force_linearizable(h.ops());
        let got = check(&h, &Options::default()).unwrap();
        assert_ne!(got.verdict(), Verdict::TimedOut, "seed {seed}");
        assert_eq!(got.is_linearizable(), expected, "seed {seed}: brute force says {expected}; {got}\n{:#?}", h.ops());
        if expected { linearizable += 1 } else { violations += 1 }
    }
    // Both verdicts are well represented, so the agreement means something.
    eprintln!("{linearizable} linearizable, {violations} violations");
    assert!(linearizable >= 2_000 && violations >= 2_000, "{linearizable} linearizable, {violations} violations");
}
