//! Fallback reads: `Get`/`BatchGet` with a caller's default answer for a key
//! that is missing or expired, or for a read that fails or runs out of time
//! (the "error boundary" pattern: a page renders with a default instead of
//! failing). Invalid requests, keys of another service's namespace and values
//! that cannot be returned as asked still fail: those are the caller's to fix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Entry, KvError, KvService, ValueType};

/// How many keys were answered with a fallback, by reason; shared by every
/// clone of a [`KvService`], for a metrics endpoint.
#[derive(Debug, Default)]
pub struct FallbackCounters {
    absent: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

/// A point-in-time copy of [`FallbackCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FallbackCounts {
    /// Keys that were missing or expired.
    pub absent: u64,
    /// Keys whose read failed.
    pub failed: u64,
    /// Keys whose read ran out of time.
    pub timed_out: u64,
}

impl FallbackCounts {
    /// Every key answered with a fallback.
    pub fn total(&self) -> u64 {
        self.absent + self.failed + self.timed_out
    }
}

impl FallbackCounters {
    /// The counts so far.
    pub fn snapshot(&self) -> FallbackCounts {
        FallbackCounts {
            absent: self.absent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// Why a read answered with the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The key is missing or expired.
    Absent,
    /// The read failed.
    Failed,
    /// The read did not finish in the time it had.
    TimedOut,
}

impl KvError {
    /// Whether a read that failed with this error answers with the caller's
    /// fallback: failures of the store do; mistakes in the request do not.
    pub fn allows_fallback(&self) -> bool {
        matches!(self, KvError::Engine(_))
    }
}

impl KvService {
    /// The service counting its fallbacks into `counters` (shared with
    /// whatever reports them, e.g. the server's statistics).
    pub fn with_fallback_counters(mut self, counters: Arc<FallbackCounters>) -> Self {
        self.fallbacks = counters;
        self
    }

    /// Fallbacks served since the service started.
    pub fn fallback_counts(&self) -> FallbackCounts {
        self.fallbacks.snapshot()
    }

    fn count_fallbacks(&self, method: &'static str, reason: FallbackReason, keys: usize) {
        let counter = match reason {
            FallbackReason::Absent => &self.fallbacks.absent,
            FallbackReason::Failed => &self.fallbacks.failed,
            FallbackReason::TimedOut => &self.fallbacks.timed_out,
        };
        counter.fetch_add(keys as u64, Ordering::Relaxed);
        // Keys are never logged; an absent key is routine, not worth a line.
        if reason != FallbackReason::Absent {
            tracing::warn!(method, ?reason, keys, "read answered with the fallback");
        }
    }

    /// Reads one key; `Err(reason)` inside `Ok` when the caller's fallback
    /// answers instead. `time` is how long the read may take.
    pub async fn get_or_fallback(
        &self,
        key: &str,
        value_type: ValueType,
        time: Option<Duration>,
    ) -> Result<Result<Entry, FallbackReason>, KvError> {
        let read = self.get(key, value_type);
        let outcome = match time {
            Some(time) => match tokio::time::timeout(time, read).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.count_fallbacks("Get", FallbackReason::TimedOut, 1);
                    return Ok(Err(FallbackReason::TimedOut));
                }
            },
            None => read.await,
        };
        let reason = match outcome {
            Ok(Some(entry)) => return Ok(Ok(entry)),
            Ok(None) => FallbackReason::Absent,
            Err(error) if error.allows_fallback() => {
                tracing::debug!(method = "Get", error = %summary(&error), "read failed");
                FallbackReason::Failed
            }
            Err(error) => return Err(error),
        };
        self.count_fallbacks("Get", reason, 1);
        Ok(Err(reason))
    }

    /// Reads up to 100 keys, one result per key in order; `Err(reason)` where
    /// the caller's fallback answers instead (every key, when the read fails
    /// or runs out of time).
    pub async fn batch_get_or_fallback(
        &self,
        keys: &[String],
        value_type: ValueType,
        time: Option<Duration>,
    ) -> Result<Vec<Result<Entry, FallbackReason>>, KvError> {
        let read = self.batch_get(keys, value_type);
        let outcome = match time {
            Some(time) => match tokio::time::timeout(time, read).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.count_fallbacks("BatchGet", FallbackReason::TimedOut, keys.len());
                    return Ok(keys.iter().map(|_| Err(FallbackReason::TimedOut)).collect());
                }
            },
            None => read.await,
        };
        match outcome {
            Ok(entries) => {
                let absent = entries.iter().filter(|entry| entry.is_none()).count();
                if absent > 0 {
                    self.count_fallbacks("BatchGet", FallbackReason::Absent, absent);
                }
                Ok(entries
                    .into_iter()
                    .map(|entry| entry.ok_or(FallbackReason::Absent))
                    .collect())
            }
            Err(error) if error.allows_fallback() => {
                tracing::debug!(method = "BatchGet", error = %summary(&error), "read failed");
                self.count_fallbacks("BatchGet", FallbackReason::Failed, keys.len());
                Ok(keys.iter().map(|_| Err(FallbackReason::Failed)).collect())
            }
            Err(error) => Err(error),
        }
    }
}

/// An error as logs may show it: without keys.
fn summary(error: &KvError) -> String {
    match error {
        KvError::Engine(engine) => engine.log_summary(),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}
