//! Time as the agent may use it: a monotonic clock for "how long did that take"
//! and a sleeper for waits, behind one trait so tests run a cycle's retries,
//! polls and backoff in virtual time; jitter that spreads a fleet's waits; and
//! the device's date for people. Nothing is ordered or decided by the date: a Pi
//! has no real-time clock ([`now_unix`] and [`utc_date`] are for display, and for
//! naming the clock in a certificate error). The bottom layer: it imports nothing
//! of this crate.

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

/// The device clock in unix seconds, for people only ("last sync at …").
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DD` (UTC) of a unix time, for people only (Howard Hinnant's
/// days-to-civil algorithm; no time-zone database on the device).
pub fn utc_date(unix: u64) -> String {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Up to a quarter of `d`, from the OS's random source: spreads a fleet's
/// retries and timers so a thousand sites do not arrive together.
pub fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let r = ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map(|()| u64::from_le_bytes(b))
        .unwrap_or(0);
    let quarter = d.as_millis() as u64 / 4;
    if quarter == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(r % quarter)
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

    #[test]
    fn dates_for_people() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_996_800), "2026-11-30");
    }

    #[test]
    fn jitter_is_within_a_quarter() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(8)) < Duration::from_secs(2));
        }
        assert_eq!(jitter(Duration::from_millis(3)), Duration::ZERO);
    }
}
