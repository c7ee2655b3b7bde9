//! Wall-clock time, injectable so that expiry can be tested without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Expiry is wall-clock based (an `expire_time` is an absolute instant), so the
/// clock is wall time, not a monotonic instant.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// A shareable clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now_millis: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now_millis`.
    pub fn new(now_millis: u64) -> Arc<Self> {
        Arc::new(Self {
            now_millis: AtomicU64::new(now_millis),
        })
    }

    /// A clock standing at the current system time.
    pub fn starting_now() -> Arc<Self> {
        Self::new(SystemClock.now_millis())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now_millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the clock to an absolute time.
    pub fn set_millis(&self, now_millis: u64) {
        self.now_millis.store(now_millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.now_millis.load(Ordering::SeqCst)
    }
}

/// A clock that never goes back: the greater of a source clock and the latest
/// time it has already reported (or was told to start from).
///
/// The engine reads time through it, so a source clock stepped back (an NTP
/// correction, a VM restored with a wrong RTC) cannot make expired records
/// visible again; with a floor persisted by the engine, not even across a
/// restart.
pub struct MonotonicClock {
    source: SharedClock,
    floor_millis: AtomicU64,
}

impl std::fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonotonicClock")
            .field("floor_millis", &self.floor_millis)
            .finish_non_exhaustive()
    }
}

impl MonotonicClock {
    /// A clock over `source` that starts no earlier than `floor_millis`.
    pub fn new(source: SharedClock, floor_millis: u64) -> Self {
        Self {
            source,
            floor_millis: AtomicU64::new(floor_millis),
        }
    }

    /// Makes sure the clock never reports less than `floor_millis` from now on.
    pub fn raise_floor(&self, floor_millis: u64) {
        self.floor_millis.fetch_max(floor_millis, Ordering::SeqCst);
    }

    /// The source clock's own reading, which may be behind [`Clock::now_millis`].
    pub fn source_millis(&self) -> u64 {
        self.source.now_millis()
    }
}

impl Clock for MonotonicClock {
    fn now_millis(&self) -> u64 {
        let now = self.source.now_millis();
        let floor = self.floor_millis.load(Ordering::SeqCst);
        if now <= floor {
            return floor;
        }
        // Only the first reading of a new millisecond writes.
        self.floor_millis.fetch_max(now, Ordering::SeqCst);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stepping the source back does not step the monotonic clock back.
    #[test]
    fn monotonic_clock_never_goes_back() {
        let source = ManualClock::new(1_000);
        let clock = MonotonicClock::new(source.clone(), 500);
        assert_eq!(clock.now_millis(), 1_000);
        source.set_millis(400);
        assert_eq!(clock.now_millis(), 1_000);
        assert_eq!(clock.source_millis(), 400);
        source.set_millis(2_000);
        assert_eq!(clock.now_millis(), 2_000);
        clock.raise_floor(5_000);
        assert_eq!(clock.now_millis(), 5_000);
        clock.raise_floor(10);
        assert_eq!(clock.now_millis(), 5_000);
    }
}
