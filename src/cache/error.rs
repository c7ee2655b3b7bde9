//! The Cache service's error, and the fetch errors its waiters share.

use std::time::Duration;

use thiserror::Error;

use crate::kv::{self, KvError};

use super::budget::FetchLimit;
use super::origin::OriginError;

/// A failure of a cache operation.
#[derive(Debug, Error)]
pub enum CacheError {
    /// Validation, ownership, conversion and storage failures, as the KV
    /// service reports them.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The origin answered 404 or 410 (now, or within the negative TTL).
    #[error("the origin has no such resource (HTTP {status})")]
    NotFound {
        /// The origin's status.
        status: u16,
    },
    /// The origin could not be reached or answered 5xx, and no stale copy
    /// may be served.
    #[error("the origin is unavailable: {reason}")]
    OriginUnavailable {
        /// Why, without the key.
        reason: String,
    },
    /// The origin did not answer within its timeout.
    #[error("the origin did not answer within {} ms", after.as_millis())]
    OriginTimeout {
        /// The origin's timeout.
        after: Duration,
    },
    /// The caller's deadline came before the origin's answer.
    #[error("no answer from the origin within the request's deadline ({} ms)", waited.as_millis())]
    DeadlineExceeded {
        /// How long the call waited.
        waited: Duration,
    },
    /// The key cannot be turned into an origin URL.
    #[error("the key cannot be sent to its origin: {reason}")]
    InvalidOriginKey {
        /// Why.
        reason: String,
    },
    /// The origin's body exceeds the origin's `max_body_bytes`.
    #[error("the origin's response exceeds the {limit}-byte body limit of its configuration")]
    OriginBodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A purge's confirmation does not match what it listed; nothing was
    /// deleted.
    #[error("{}", purge_mismatch_message(.prefix, *.expected, *.actual, *.more))]
    PurgeExpectedKeysMismatch {
        /// The prefix.
        prefix: String,
        /// The confirmation given, if any.
        expected: Option<u64>,
        /// The number of keys listed.
        actual: u64,
        /// Whether the prefix holds more keys than one purge lists.
        more: bool,
    },
    /// Starting one more origin request would exceed a
    /// `max_concurrent_fetches` limit; nothing was sent.
    #[error("{limit}; retry after {} ms", .retry_after.as_millis())]
    FetchesExhausted {
        /// The limit that was reached.
        limit: FetchLimit,
        /// When trying again is likely to find room.
        retry_after: Duration,
    },
    /// A purge ran out of time; what it deleted stays deleted.
    #[error(
        "the purge deleted {purged} keys before the request's deadline; call it again to finish"
    )]
    PurgeIncomplete {
        /// Keys deleted before the deadline.
        purged: u64,
    },
}

impl CacheError {
    /// Whether a stale copy may be served instead (RFC 5861 stale-if-error;
    /// an origin we may not ask now is as good as one that failed).
    pub(super) fn allows_stale(&self) -> bool {
        matches!(
            self,
            CacheError::OriginUnavailable { .. }
                | CacheError::OriginTimeout { .. }
                | CacheError::DeadlineExceeded { .. }
                | CacheError::OriginBodyTooLarge { .. }
                | CacheError::FetchesExhausted { .. }
        )
    }
}

fn purge_mismatch_message(prefix: &str, expected: Option<u64>, actual: u64, more: bool) -> String {
    let expected = match expected {
        Some(expected) => format!(", not the {expected} expected"),
        None => String::new(),
    };
    if more {
        // A listing with more behind it is cut at the purge's bound
        // (`purge::MAX_PURGE_KEYS`), so `actual` is that bound.
        format!(
            "prefix {prefix:?} holds more than {actual} live keys{expected}; a purge deletes at \
             most {actual}: pass expected_keys = {actual} to purge the first {actual}, \
             then call again"
        )
    } else {
        format!(
            "prefix {prefix:?} holds {actual} live keys{expected}; pass expected_keys = {actual} \
             to purge them"
        )
    }
}

/// [`CacheError`]s a fetch can end with, cloneable for its waiters.
#[derive(Debug, Clone)]
pub(super) enum FetchError {
    NotFound(u16),
    Unavailable(String),
    Timeout(Duration),
    InvalidKey(String),
    TooLarge(usize),
}

impl From<FetchError> for CacheError {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::NotFound(status) => CacheError::NotFound { status },
            FetchError::Unavailable(reason) => CacheError::OriginUnavailable { reason },
            FetchError::Timeout(after) => CacheError::OriginTimeout { after },
            FetchError::InvalidKey(reason) => CacheError::InvalidOriginKey { reason },
            FetchError::TooLarge(limit) => CacheError::OriginBodyTooLarge { limit },
        }
    }
}

impl From<OriginError> for FetchError {
    fn from(error: OriginError) -> Self {
        match error {
            OriginError::NoOrigin => FetchError::Unavailable(error.to_string()),
            OriginError::InvalidKey(reason) => FetchError::InvalidKey(reason),
            OriginError::Timeout { after } => FetchError::Timeout(after),
            OriginError::Connect(_) | OriginError::Status(_) => {
                FetchError::Unavailable(error.to_string())
            }
            OriginError::BodyTooLarge { limit } => FetchError::TooLarge(limit),
        }
    }
}

/// A request refused for one field, as the KV service refuses it.
pub(super) fn invalid(field: &str, description: String) -> CacheError {
    CacheError::Kv(kv::invalid(field, description))
}

/// The KV service names the record's TTL `ttl`; here it is `store_ttl`.
pub(super) fn store_ttl_violations(error: KvError) -> CacheError {
    match error {
        KvError::InvalidArgument(mut violations) => {
            for violation in &mut violations {
                if violation.field == "ttl" {
                    violation.field = "store_ttl".into();
                    violation.description = violation.description.replacen("ttl", "store_ttl", 1);
                }
            }
            CacheError::Kv(KvError::InvalidArgument(violations))
        }
        other => CacheError::Kv(other),
    }
}
