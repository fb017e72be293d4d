//! Rate limits for warnings that anyone on the network can trigger (refused
//! handshakes, a full connection table, peers of another cluster): one line per
//! interval with a count of what was left out, so a flood cannot fill the disk with
//! logs or drown the lines that matter.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of warning, logged at most once per `every`.
#[derive(Debug)]
pub(crate) struct LogLimit {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(every: Duration) -> LogLimit {
        LogLimit { every, state: Mutex::new(State { last_logged: None, suppressed: 0 }) }
    }

    /// The interval, for the log line itself ("not logged again for ...").
    pub fn every(&self) -> Duration {
        self.every
    }

    /// `Some(n)` if an event now should be logged, `n` being how many were left out
    /// since the last logged one; `None` if it falls inside the interval (counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update of two counters:
        // logging too much or too little once is harmless.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.last_logged.is_some_and(|at| now < at + self.every) {
            state.suppressed = state.suppressed.saturating_add(1);
            return None;
        }
        state.last_logged = Some(now);
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0), "the first event is logged");
        for s in 1..10 {
            assert_eq!(limit.admit_at(t0 + Duration::from_secs(s)), None, "{s}s: inside the interval");
        }
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(10)), Some(9), "logged again, with the 9 left out");
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(25)), Some(1), "the count restarts after each line");
    }
}
