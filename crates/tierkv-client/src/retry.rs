//! Retrying the calls a retry can help: `UNAVAILABLE` (the server is
//! unreachable, restarting or draining), and `RESOURCE_EXHAUSTED` when the
//! server says when to come back (a `google.rpc.RetryInfo`, as load shedding
//! and origin limits send). Every other code is the answer: retrying an
//! `INVALID_ARGUMENT` or an `ABORTED` compare-and-set gives the same answer.
//!
//! A retried write may have been applied by the attempt that failed (an
//! `UNAVAILABLE` can come after the server committed); retry writes whose
//! repetition is harmless, or that carry a precondition (`if_version`).

use std::future::Future;
use std::hash::BuildHasher;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// How many times to try and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 never retries).
    pub max_attempts: u32,
    /// The back-off after the first failure; it doubles after each.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. A server asking for a longer one
    /// (`RetryInfo`) gets its error returned instead of a retry.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, waits from 50 ms doubling up to 2 s.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The `RetryInfo` delay the server attached to `status`, if any.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// Whether a retry can get a different answer: `UNAVAILABLE`, or
/// `RESOURCE_EXHAUSTED` with a `RetryInfo`.
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::ResourceExhausted => retry_delay(status).is_some(),
        _ => false,
    }
}

impl RetryPolicy {
    /// Calls `attempt` (with the attempt's number, from 0) until it succeeds,
    /// fails with a code that is not retryable, or the attempts are used up;
    /// returns the last result. Between attempts it waits the server's
    /// `RetryInfo` delay when there is one, else the back-off with jitter.
    pub async fn run<R, F, Fut>(&self, mut attempt: F) -> Result<R, Status>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let mut backoff = self.initial_backoff;
        let mut number = 0;
        loop {
            let status = match attempt(number).await {
                Ok(result) => return Ok(result),
                Err(status) => status,
            };
            number += 1;
            if number >= self.max_attempts {
                return Err(status);
            }
            let Some(wait) = self.wait_before_retry(&status, backoff) else {
                return Err(status);
            };
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }

    /// How long to wait before retrying after `status`, or `None` for no retry.
    fn wait_before_retry(&self, status: &Status, backoff: Duration) -> Option<Duration> {
        if !is_retryable(status) {
            return None;
        }
        match retry_delay(status) {
            Some(asked) if asked > self.max_backoff => None,
            Some(asked) => Some(asked),
            None => Some(jittered(backoff.min(self.max_backoff))),
        }
    }
}

/// Between half of `backoff` and all of it, so that clients failing together
/// do not retry together.
fn jittered(backoff: Duration) -> Duration {
    // std's per-process random hash keys: enough randomness for spreading
    // retries, without a dependency on a random number generator.
    let random = std::collections::hash_map::RandomState::new().hash_one(backoff);
    let half = backoff / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    fn with_retry_info(code: Code, delay: Duration) -> Status {
        Status::with_error_details(code, "busy", ErrorDetails::with_retry_info(Some(delay)))
    }

    /// Which codes are retried, and how long the wait is.
    #[test]
    fn only_retryable_codes_are_retried() {
        let policy = RetryPolicy::default();
        let backoff = Duration::from_millis(100);
        let unavailable = policy
            .wait_before_retry(&Status::unavailable("down"), backoff)
            .unwrap();
        assert!(
            unavailable >= backoff / 2 && unavailable <= backoff,
            "{unavailable:?}"
        );
        let hinted = with_retry_info(Code::ResourceExhausted, Duration::from_millis(300));
        assert_eq!(
            policy.wait_before_retry(&hinted, backoff),
            Some(Duration::from_millis(300)),
            "the server's delay, not the back-off"
        );
        let too_long = with_retry_info(Code::ResourceExhausted, Duration::from_secs(60));
        assert_eq!(policy.wait_before_retry(&too_long, backoff), None);
        for status in [
            Status::resource_exhausted("full, no hint"),
            Status::invalid_argument("bad"),
            Status::aborted("version mismatch"),
            Status::not_found("gone"),
            Status::deadline_exceeded("late"),
            Status::internal("bug"),
        ] {
            assert_eq!(
                policy.wait_before_retry(&status, backoff),
                None,
                "{status:?}"
            );
        }
    }

    /// Attempts stop at `max_attempts`, and the last error is returned.
    #[tokio::test]
    async fn attempts_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let mut seen = Vec::new();
        let result: Result<(), Status> = policy
            .run(|number| {
                seen.push(number);
                async move { Err(Status::unavailable(format!("attempt {number}"))) }
            })
            .await;
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(result.unwrap_err().message(), "attempt 2");
    }
}
