//! A linearizability history recorded by concurrent clients.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use raftkv_linearizability::{Call, History, Ret};

/// A history shared by concurrent clients, with times in nanoseconds since it began.
pub struct Recorder {
    base: Instant,
    history: Mutex<History>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder { base: Instant::now(), history: Mutex::new(History::new()) }
    }
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    /// Nanoseconds since the history began (the time of its operations).
    pub fn nanos(&self) -> u64 {
        self.now()
    }
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn invoke(&self, process: u64, key: &str, call: Call) -> usize {
        let at = self.now();
        self.lock().invoke(process, key, call, at)
    }
    pub fn complete(&self, id: usize, ret: Ret) {
        let at = self.now();
        self.lock().complete(id, ret, at);
    }
    pub fn fail(&self, id: usize) {
        let at = self.now();
        self.lock().fail(id, at);
    }
    /// Seconds since the history began.
    pub fn secs(&self) -> f64 {
        self.base.elapsed().as_secs_f64()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}
