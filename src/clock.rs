//! Time as the agent may use it: a monotonic clock for "how long did that take"
//! and a sleeper for waits, behind one trait so tests run a cycle's retries,
//! polls and backoff in virtual time. Never a wall clock: a Pi has no real-time
//! clock, so nothing is ordered or decided by the date (status shows the date for
//! people only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl Clock for System {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// The clock every real caller uses.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(System)
}

/// Virtual time: `sleep` returns at once and moves the clock on. Shared between
/// threads (the in-process central may run beside the test).
#[derive(Debug)]
pub struct Virtual {
    start: Instant,
    nanos: AtomicU64,
}

impl Default for Virtual {
    fn default() -> Self {
        Virtual {
            start: Instant::now(),
            nanos: AtomicU64::new(0),
        }
    }
}

impl Virtual {
    /// How much virtual time has passed.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
    pub fn advance(&self, d: Duration) {
        self.nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::SeqCst);
    }
}

impl Clock for Virtual {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_moves_only_by_sleeping() {
        let c = Virtual::default();
        let t0 = c.now();
        c.sleep(Duration::from_secs(30));
        assert_eq!(c.now() - t0, Duration::from_secs(30));
        assert_eq!(c.elapsed(), Duration::from_secs(30));
    }
}
