//! A linearizability checker for key/value histories.
//!
//! A [`History`] records operations on string keys: `get`, `put`, `delete` and
//! compare-and-swap, each with the time it was invoked and, if it completed, the time
//! and result of its completion. [`check`] decides whether the history is linearizable
//! with respect to a map from keys to optional values that starts empty.
//!
//! Linearizability is *local* (Herlihy & Wing): a history is linearizable iff the
//! sub-history of every key is. So each key is checked on its own, which keeps the
//! search small.
//!
//! The search for one key is the Wing–Gong algorithm as improved by Lowe and used by
//! porcupine: call and return events are kept in one doubly linked list in time
//! order; the search linearizes the earliest pending call whose model step is legal,
//! lifts it (and its return) out of the list and starts again from the head; reaching
//! a return event whose operation is not linearized yet means some choice was wrong,
//! so it backtracks. Configurations already explored, the pair (set of linearized
//! operations, model state), are memoized, so each is explored once; the set is kept
//! as a 128-bit Zobrist hash of the bitset rather than the bitset itself, so that the
//! memo stays small on histories of hundreds of thousands of operations. A
//! bound on the number of search steps makes [`check`] answer [`Verdict::TimedOut`]
//! instead of running for ever.
//!
//! **Operations with an unknown outcome** (a client timeout, the CLI's exit 3) have no
//! return event: their completion time is +∞. They may have taken effect at any point
//! after their invocation, or never. The search is done once every *completed*
//! operation is linearized, so an unknown one is linearized only where that helps
//! explain the others. An unknown `get` constrains nothing and is dropped; an unknown
//! `put` or `cas` whose value nobody ever observes is dropped as well (applying it can
//! never help explain anything, see [`prune`]), which keeps the search small.
//!
//! **Definitely failed operations** ([`History::fail`]: e.g. a request rejected before
//! it was proposed) did not take effect and are ignored. A `cas` that did not swap is
//! not a failure: it completed and tells the value it found, which is checked.
//!
//! **On a violation** the report carries, per key, a small sub-history that is
//! non-linearizable on its own, found by greedy deletion (in chunks, then one
//! operation at a time): an operation is deleted when the rest is still
//! non-linearizable. Deleting the writer of a value that a remaining operation
//! observed is not allowed (the rest would be non-linearizable only because a
//! value now seems to come from nowhere), unless no operation of the whole history
//! wrote that value, which is then the anomaly itself.
//!
//! Times are plain `u64`s (the callers here use nanoseconds since the start of the
//! test, and the report prints them as such).

use std::collections::{HashMap, HashSet};
use std::fmt;

mod history;

pub use history::{Call, History, Operation, Outcome, Ret, Value};

/// Limits of a [`check`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Search steps allowed for one key before its verdict is [`Verdict::TimedOut`].
    pub max_steps_per_key: u64,
    /// Whether to shrink a violating key's history to a small violating sub-history.
    pub minimize: bool,
    /// Search steps allowed for shrinking one key (all the re-checks together); when
    /// they run out the witness is reported as it is then (`minimal: false`).
    pub max_minimize_steps: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_steps_per_key: 20_000_000, minimize: true, max_minimize_steps: 20_000_000 }
    }
}

/// The verdict on one key (or a whole history).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable.
    Violation,
    /// The search ran out of steps: no verdict.
    TimedOut,
}

/// The result for one key.
#[derive(Clone, Debug)]
pub struct KeyReport {
    pub key: String,
    /// Operations on the key (failed ones included).
    pub ops: usize,
    /// Operations the search considered (after dropping failed and useless unknown ones).
    pub searched: usize,
    pub verdict: Verdict,
    pub steps: u64,
    /// For a violation: a sub-history that is not linearizable on its own.
    pub witness: Vec<Operation>,
    /// Whether the witness is 1-minimal (no single operation can be deleted).
    pub minimal: bool,
}

/// The result of a [`check`], per key.
#[derive(Clone, Debug)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// Violation if any key has one, else timed out if any key did, else linearizable.
    pub fn verdict(&self) -> Verdict {
        if self.keys.iter().any(|k| k.verdict == Verdict::Violation) {
            Verdict::Violation
        } else if self.keys.iter().any(|k| k.verdict == Verdict::TimedOut) {
            Verdict::TimedOut
        } else {
            Verdict::Linearizable
        }
    }

    pub fn is_linearizable(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }

    /// The keys with a violation.
    pub fn violations(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys.iter().filter(|k| k.verdict == Verdict::Violation)
    }

    pub fn steps(&self) -> u64 {
        self.keys.iter().map(|k| k.steps).sum()
    }
}

/// Operations of a witness the report prints (the rest are counted).
const MAX_SHOWN: usize = 100;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: usize = self.keys.iter().map(|k| k.ops).sum();
        writeln!(f, "{:?}: {} keys, {ops} operations, {} search steps", self.verdict(), self.keys.len(), self.steps())?;
        for k in &self.keys {
            match k.verdict {
                Verdict::Linearizable => {}
                Verdict::TimedOut => {
                    writeln!(f, "key {:?}: no verdict within {} steps ({} ops)", k.key, k.steps, k.ops)?
                }
                Verdict::Violation => {
                    writeln!(
                        f,
                        "key {:?}: NOT LINEARIZABLE ({} ops); {}violating sub-history of {} ops (times: invoke .. complete):",
                        k.key,
                        k.ops,
                        if k.minimal { "a minimal " } else { "a (not fully shrunk) " },
                        k.witness.len()
                    )?;
                    for op in k.witness.iter().take(MAX_SHOWN) {
                        writeln!(f, "  {op}")?;
                    }
                    if k.witness.len() > MAX_SHOWN {
                        writeln!(f, "  ... and {} more", k.witness.len() - MAX_SHOWN)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks `history`, key by key. An error means the history is malformed (a result
/// that does not fit its call, or a completion before the invocation).
pub fn check(history: &History, opts: &Options) -> Result<Report, String> {
    for op in history.ops() {
        op.check_shape()?;
    }
    let mut by_key: Vec<(String, Vec<Operation>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for op in history.ops() {
        let i = *index.entry(op.key.as_str()).or_insert_with(|| {
            by_key.push((op.key.clone(), Vec::new()));
            by_key.len() - 1
        });
        by_key[i].1.push(op.clone());
    }
    let mut keys = Vec::new();
    for (key, ops) in by_key {
        let searched = prune(&ops).len();
        let (verdict, steps) = check_ops(&ops, opts.max_steps_per_key);
        let (witness, minimal) = if verdict == Verdict::Violation && opts.minimize {
            shrink(&ops, opts.max_steps_per_key, opts.max_minimize_steps)
        } else if verdict == Verdict::Violation {
            (ops.clone(), false)
        } else {
            (Vec::new(), false)
        };
        keys.push(KeyReport { key, ops: ops.len(), searched, verdict, steps, witness, minimal });
    }
    Ok(Report { keys })
}

/// Checks the operations of one key (their `key` fields are not looked at). Returns
/// the verdict and the search steps taken.
pub fn check_ops(ops: &[Operation], max_steps: u64) -> (Verdict, u64) {
    let ops = prune(ops);
    Search::new(&ops).run(max_steps)
}

/// The operations the search needs: failed ones and unknown gets are dropped (they
/// took no effect, or constrain nothing), and so is an unknown write of a value that
/// no operation observes (as a get's answer, a failed cas's `current`, or any cas's
/// `expected`): applying it sets a value that the next operation applied after it must
/// not see, so that operation is a blind write (put, delete) and the unknown write
/// may as well not have happened.
pub fn prune(ops: &[Operation]) -> Vec<Operation> {
    let mut observed: HashSet<&str> = HashSet::new();
    for op in ops {
        if let Call::Cas { expected: Some(v), .. } = &op.call {
            observed.insert(v);
        }
        match &op.outcome {
            Outcome::Done { ret: Ret::Value(Some(v)), .. }
            | Outcome::Done { ret: Ret::CasFailed { current: Some(v) }, .. } => {
                observed.insert(v);
            }
            _ => {}
        }
    }
    ops.iter()
        .filter(|op| match (&op.call, &op.outcome) {
            (_, Outcome::Failed { .. }) => false,
            (Call::Get, Outcome::Unknown) => false,
            (Call::Put { value }, Outcome::Unknown) | (Call::Cas { new: value, .. }, Outcome::Unknown) => {
                observed.contains(value.as_str())
            }
            _ => true,
        })
        .cloned()
        .collect()
}

// ---- the search -----------------------------------------------------------------------

/// A value interned as a number; `None` is absent.
type State = Option<u32>;

/// An operation as a step of the model (a register that may be absent).
#[derive(Clone, Copy, Debug)]
enum Step {
    Get(State),
    Put(u32),
    Delete,
    /// A cas that swapped, or whose outcome is unknown (if it did not swap it had no
    /// effect, the same as not being linearized at all).
    Swap {
        expected: State,
        new: u32,
    },
    CasFailed {
        expected: State,
        current: State,
    },
}

impl Step {
    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Get(v) => (s == v).then_some(s),
            Step::Put(v) => Some(Some(v)),
            Step::Delete => Some(None),
            Step::Swap { expected, new } => (s == expected).then_some(Some(new)),
            Step::CasFailed { expected, current } => (s != expected && s == current).then_some(s),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Node {
    prev: usize,
    next: usize,
    /// The operation (index into `steps`); unused for the sentinels.
    op: usize,
    is_call: bool,
    /// For a call: its return node, if the operation completed.
    ret: Option<usize>,
}

struct Search {
    steps: Vec<Step>,
    /// 0 is the head sentinel, the last node the tail sentinel.
    nodes: Vec<Node>,
    returns: usize,
}

impl Search {
    fn new<'a>(ops: &'a [Operation]) -> Search {
        let mut values: HashMap<&'a str, u32> = HashMap::new();
        let mut intern = |v: Option<&'a str>| -> State {
            v.map(|v| {
                let n = values.len() as u32;
                *values.entry(v).or_insert(n)
            })
        };
        let mut steps = Vec::with_capacity(ops.len());
        for op in ops {
            let step = match (&op.call, &op.outcome) {
                (Call::Get, Outcome::Done { ret: Ret::Value(v), .. }) => Step::Get(intern(v.as_deref())),
                (Call::Put { value }, _) => Step::Put(intern(Some(value)).expect("some")),
                (Call::Delete, _) => Step::Delete,
                (Call::Cas { expected, .. }, Outcome::Done { ret: Ret::CasFailed { current }, .. }) => {
                    Step::CasFailed { expected: intern(expected.as_deref()), current: intern(current.as_deref()) }
                }
                (Call::Cas { expected, new }, _) => {
                    Step::Swap { expected: intern(expected.as_deref()), new: intern(Some(new)).expect("some") }
                }
                (Call::Get, _) => unreachable!("pruned: unknown or failed get"),
            };
            steps.push(step);
        }
        // Events: (time, 0 = call / 1 = return, op). At equal times calls come first, so
        // the operations count as concurrent (the permissive choice).
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, 0, i));
            if let Some(at) = op.complete() {
                events.push((at.max(op.invoke), 1, i));
            }
        }
        events.sort_unstable();
        let n = events.len();
        let mut nodes = Vec::with_capacity(n + 2);
        nodes.push(Node { prev: 0, next: 1, op: usize::MAX, is_call: false, ret: None });
        let mut call_node = vec![0; ops.len()];
        let mut returns = 0;
        for (k, (_, kind, op)) in events.iter().enumerate() {
            let idx = k + 1;
            nodes.push(Node { prev: idx - 1, next: idx + 1, op: *op, is_call: *kind == 0, ret: None });
            if *kind == 0 {
                call_node[*op] = idx;
            } else {
                nodes[call_node[*op]].ret = Some(idx);
                returns += 1;
            }
        }
        nodes.push(Node { prev: n, next: n + 1, op: usize::MAX, is_call: false, ret: None });
        Search { steps, nodes, returns }
    }

    fn tail(&self) -> usize {
        self.nodes.len() - 1
    }

    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = next;
        self.nodes[next].prev = prev;
    }

    fn relink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = i;
        self.nodes[next].prev = i;
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Some(r) = self.nodes[call].ret {
            self.unlink(r);
            self.returns -= 1;
        }
    }

    /// Undoes the last [`lift`](Self::lift) (lifts are undone in reverse order).
    fn unlift(&mut self, call: usize) {
        if let Some(r) = self.nodes[call].ret {
            self.relink(r);
            self.returns += 1;
        }
        self.relink(call);
    }

    fn run(mut self, max_steps: u64) -> (Verdict, u64) {
        // The set of linearized operations, as a Zobrist hash: the XOR of a random
        // 128-bit tag per operation. Memoizing (hash, state) instead of (bitset, state)
        // keeps the cache O(1) per entry on long histories; two different sets share a
        // hash with probability about 2^-128 per pair.
        let tags: Vec<u128> = (0..self.steps.len() as u64).map(zobrist).collect();
        let mut linearized: u128 = 0;
        let mut cache: HashSet<(u128, State)> = HashSet::new();
        let mut state: State = None;
        // (call node, state before it)
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut entry = self.nodes[0].next;
        let mut n: u64 = 0;
        let tail = self.tail();
        while self.returns > 0 {
            n += 1;
            if n > max_steps {
                return (Verdict::TimedOut, n);
            }
            let node = self.nodes[entry];
            if entry != tail && node.is_call {
                if let Some(next) = self.steps[node.op].apply(state)
                    && cache.insert((linearized ^ tags[node.op], next))
                {
                    linearized ^= tags[node.op];
                    stack.push((entry, state));
                    state = next;
                    self.lift(entry);
                    entry = self.nodes[0].next;
                    continue;
                }
                entry = node.next;
            } else {
                // A return of an operation not linearized yet: undo the last choice.
                let Some((call, before)) = stack.pop() else { return (Verdict::Violation, n) };
                linearized ^= tags[self.nodes[call].op];
                state = before;
                self.unlift(call);
                entry = self.nodes[call].next;
            }
        }
        (Verdict::Linearizable, n)
    }
}

/// A pseudo-random 128-bit tag for operation `i` (two rounds of splitmix64).
fn zobrist(i: u64) -> u128 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let a = splitmix(i.wrapping_mul(2));
    let b = splitmix(i.wrapping_mul(2).wrapping_add(1));
    (u128::from(a) << 64) | u128::from(b)
}

// ---- shrinking ------------------------------------------------------------------------

/// The value written by `op` (put's value, a cas's new value).
fn written(op: &Operation) -> Option<&str> {
    match &op.call {
        Call::Put { value } | Call::Cas { new: value, .. } => Some(value),
        _ => None,
    }
}

/// The values `op` observed or needs (a get's answer, a failed cas's current value, the
/// expected value of a cas that swapped or may have).
fn observed(op: &Operation) -> Vec<&str> {
    let mut v = Vec::new();
    match (&op.call, &op.outcome) {
        (_, Outcome::Done { ret: Ret::Value(Some(x)), .. }) => v.push(x.as_str()),
        (_, Outcome::Done { ret: Ret::CasFailed { current: Some(x) }, .. }) => v.push(x.as_str()),
        // A swapped cas needs its expected value; so does an unknown one, to be able to
        // swap.
        (Call::Cas { expected: Some(x), .. }, Outcome::Done { ret: Ret::Ok, .. } | Outcome::Unknown) => {
            v.push(x.as_str())
        }
        _ => {}
    }
    v
}

/// Shrinks a violating history by greedy deletion (chunks of halving size, then single
/// operations until none can go). Returns the witness and whether it is 1-minimal.
fn shrink(ops: &[Operation], max_steps: u64, budget: u64) -> (Vec<Operation>, bool) {
    let ever_written: HashSet<&str> = ops.iter().filter_map(written).collect();
    // Whether `cand` keeps, for every value a member observed, some writer of it (if the
    // whole history had one).
    let closed = |cand: &[Operation]| {
        let have: HashSet<&str> = cand.iter().filter_map(written).collect();
        cand.iter().flat_map(observed).all(|v| have.contains(v) || !ever_written.contains(v))
    };
    let mut current: Vec<Operation> = prune(ops);
    current.sort_by_key(|o| (o.invoke, o.id));
    let mut spent: u64 = 0;
    // Long histories first: the shortest violating prefix, then the shortest violating
    // suffix of that (by invocation order), each by binary search. Neither is
    // guaranteed monotone, so the search only keeps windows it saw violate.
    let violates = |cand: &[Operation], spent: &mut u64| {
        if !closed(cand) {
            return false;
        }
        let (verdict, steps) = check_ops(cand, max_steps.min(budget.saturating_sub(*spent).max(1)));
        *spent += steps;
        verdict == Verdict::Violation
    };
    if current.len() > 16 {
        let (mut lo, mut hi) = (1, current.len());
        while lo < hi && spent < budget {
            let mid = lo + (hi - lo) / 2;
            if violates(&current[..mid], &mut spent) { hi = mid } else { lo = mid + 1 }
        }
        if hi < current.len() && violates(&current[..hi], &mut spent) {
            current.truncate(hi);
        }
        let (mut lo, mut hi) = (0, current.len() - 1);
        while lo < hi && spent < budget {
            let mid = lo + (hi - lo).div_ceil(2);
            if violates(&current[mid..], &mut spent) { lo = mid } else { hi = mid - 1 }
        }
        if lo > 0 && violates(&current[lo..], &mut spent) {
            current.drain(..lo);
        }
    }
    let mut chunk = (current.len() / 2).max(1);
    loop {
        let mut changed = false;
        let mut i = 0;
        while i < current.len() {
            let end = (i + chunk).min(current.len());
            let cand: Vec<Operation> = current[..i].iter().chain(&current[end..]).cloned().collect();
            let removed = violates(&cand, &mut spent);
            if removed {
                current = cand;
                changed = true;
            }
            if spent >= budget {
                return (current, false);
            }
            if !removed {
                i += chunk;
            }
        }
        if chunk == 1 {
            if !changed {
                return (current, true);
            }
        } else {
            chunk = (chunk / 2).max(1);
        }
    }
}

#[cfg(test)]
mod tests;
