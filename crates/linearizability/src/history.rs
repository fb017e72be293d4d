//! The history a checker reads: operations (call, return, outcome, times) per key.

use std::fmt;

/// Keys and values are strings (the tests write readable values).
pub type Value = String;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Get,
    Put {
        value: Value,
    },
    Delete,
    /// Sets the key to `new` if its value is `expected` (`None`: if it is absent).
    Cas {
        expected: Option<Value>,
        new: Value,
    },
}

/// What a completed operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A `get`'s answer (`None`: absent).
    Value(Option<Value>),
    /// A `put` or `delete` was applied, or a `cas` swapped.
    Ok,
    /// A `cas` did not swap; `current` is the value it found.
    CasFailed { current: Option<Value> },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It completed at `at` with `ret`.
    Done { at: u64, ret: Ret },
    /// It definitely did not take effect (ignored by the checker).
    Failed { at: u64 },
    /// Not known (timeout): it may take effect at any time after its invocation, or
    /// never. Its completion time is +∞.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Its index in the [`History`].
    pub id: usize,
    /// The client (process) that issued it; only for display.
    pub process: u64,
    pub key: String,
    pub call: Call,
    pub invoke: u64,
    pub outcome: Outcome,
}

impl Operation {
    /// The completion time; `None` is +∞ (unknown outcome).
    pub fn complete(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Done { at, .. } | Outcome::Failed { at } => Some(at),
            Outcome::Unknown => None,
        }
    }

    pub(crate) fn check_shape(&self) -> Result<(), String> {
        let ok = matches!(
            (&self.call, &self.outcome),
            (_, Outcome::Unknown | Outcome::Failed { .. })
                | (Call::Get, Outcome::Done { ret: Ret::Value(_), .. })
                | (Call::Put { .. } | Call::Delete, Outcome::Done { ret: Ret::Ok, .. })
                | (Call::Cas { .. }, Outcome::Done { ret: Ret::Ok | Ret::CasFailed { .. }, .. })
        );
        if !ok {
            return Err(format!("operation {}: {:?} cannot return {:?}", self.id, self.call, self.outcome));
        }
        if let Some(at) = self.complete()
            && at < self.invoke
        {
            return Err(format!("operation {} completes at {at}, before its invocation at {}", self.id, self.invoke));
        }
        Ok(())
    }
}

/// Nanoseconds as seconds with millisecond precision.
fn secs(ns: u64) -> String {
    format!("{}.{:03}s", ns / 1_000_000_000, (ns / 1_000_000) % 1_000)
}

fn opt(v: &Option<Value>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".into(),
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.complete() {
            Some(at) => secs(at),
            None => "∞".into(),
        };
        let call = match &self.call {
            Call::Get => format!("get({:?})", self.key),
            Call::Put { value } => format!("put({:?}, {value:?})", self.key),
            Call::Delete => format!("delete({:?})", self.key),
            Call::Cas { expected, new } => format!("cas({:?}, {} -> {new:?})", self.key, opt(expected)),
        };
        let ret = match &self.outcome {
            Outcome::Unknown => "? (unknown outcome)".to_string(),
            Outcome::Failed { .. } => "failed (not applied)".to_string(),
            Outcome::Done { ret: Ret::Value(v), .. } => opt(v),
            Outcome::Done { ret: Ret::Ok, .. } if matches!(self.call, Call::Cas { .. }) => "swapped".into(),
            Outcome::Done { ret: Ret::Ok, .. } => "ok".into(),
            Outcome::Done { ret: Ret::CasFailed { current }, .. } => format!("not swapped, found {}", opt(current)),
        };
        write!(f, "#{:<7} [{:>9} .. {:>9}] client {:<3} {call} -> {ret}", self.id, secs(self.invoke), end, self.process)
    }
}

/// A recorded history: operations with invocation and completion times.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    /// Records the invocation of `call` on `key` at `at`; the operation's outcome is
    /// unknown until [`complete`](Self::complete) or [`fail`](Self::fail). Returns its id.
    pub fn invoke(&mut self, process: u64, key: impl Into<String>, call: Call, at: u64) -> usize {
        let id = self.ops.len();
        self.ops.push(Operation { id, process, key: key.into(), call, invoke: at, outcome: Outcome::Unknown });
        id
    }

    /// Operation `id` completed at `at` and returned `ret`.
    pub fn complete(&mut self, id: usize, ret: Ret, at: u64) {
        self.ops[id].outcome = Outcome::Done { at, ret };
    }

    /// Operation `id` definitely did not take effect.
    pub fn fail(&mut self, id: usize, at: u64) {
        self.ops[id].outcome = Outcome::Failed { at };
    }

    /// Operation `id`'s outcome is unknown (the default until completed).
    pub fn unknown(&mut self, id: usize) {
        self.ops[id].outcome = Outcome::Unknown;
    }

    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    pub fn ops_mut(&mut self) -> &mut [Operation] {
        &mut self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Operations whose outcome is unknown.
    pub fn unknown_count(&self) -> usize {
        self.ops.iter().filter(|o| o.outcome == Outcome::Unknown).count()
    }
}
