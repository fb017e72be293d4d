//! Jittered exponential backoff, bounded by a deadline.

use std::time::{Duration, Instant};

pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff { next: min, max: max.max(min) }
    }

    /// The next delay: uniformly in `[d/2, d]`, `d` doubling up to the maximum.
    pub(crate) fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let hi = d.as_micros() as u64;
        let lo = hi / 2;
        Duration::from_micros(rand::random_range(lo..=hi))
    }

    /// Sleeps for the next delay, but never past `deadline`.
    pub(crate) async fn sleep(&mut self, deadline: Instant) {
        let d = self.delay();
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(d.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let d = b.delay();
        assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20), "{d:?}");
        for _ in 0..20 {
            let d = b.delay();
            assert!(d <= Duration::from_millis(500), "{d:?}");
        }
        let d = b.delay();
        assert!(d >= Duration::from_millis(250), "{d:?}");
    }
}
