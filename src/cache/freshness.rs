//! How long an origin's answer may be kept and served: the origin's
//! configured windows, narrowed (when honoured) by its `Cache-Control`.

use std::time::Duration;

use super::config::OriginConfig;
use super::entry::StoredMeta;
use super::origin::{Freshness, Validators};

/// How long a fetched response may be kept, from the origin's configuration
/// and (when honoured) its `Cache-Control`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lifetimes {
    /// Whether the answer may be stored at all.
    pub(super) store: bool,
    /// How long the stored copy is fresh.
    pub(super) store_ttl_ms: u64,
    /// How long memory may answer.
    pub(super) memory_ttl_ms: u64,
    /// How long a stale copy is served while one request refreshes it.
    pub(super) stale_while_revalidate_ms: u64,
    /// How long a stale copy is served in place of a failed origin.
    pub(super) stale_if_error_ms: u64,
}

impl Lifetimes {
    /// The lifetimes of an answer of `origin` that came with `freshness`.
    pub(super) fn new(origin: &OriginConfig, freshness: &Freshness) -> Self {
        let honor = origin.honor_cache_control;
        let mut store_ttl = origin.store_ttl;
        if honor {
            if let Some(max_age) = freshness.max_age {
                store_ttl = store_ttl.min(max_age);
            }
        }
        let window = |configured: Duration, directive: Option<Duration>| {
            millis(if honor {
                directive.unwrap_or(configured)
            } else {
                configured
            })
        };
        Self {
            store: !honor || freshness.store,
            store_ttl_ms: millis(store_ttl),
            memory_ttl_ms: millis(origin.memory_ttl.min(store_ttl)),
            stale_while_revalidate_ms: window(
                origin.stale_while_revalidate,
                freshness.stale_while_revalidate,
            ),
            stale_if_error_ms: window(origin.stale_if_error, freshness.stale_if_error),
        }
    }

    /// The record's expiry: fresh, then stale for the longer window.
    pub(super) fn record_expire_at(&self, now: u64) -> u64 {
        now.saturating_add(self.store_ttl_ms)
            .saturating_add(self.stale_while_revalidate_ms.max(self.stale_if_error_ms))
    }

    /// The record's expiry when an answer fetched at `now` may be stored;
    /// `None` when it may not (`no-store`, or no time to live).
    pub(super) fn storable_until(&self, now: u64) -> Option<u64> {
        let expire_at = self.record_expire_at(now);
        (self.store && expire_at > now).then_some(expire_at)
    }

    /// What the store keeps with an answer fetched at `now`: the same for
    /// a new body and for a revalidated (304) copy.
    pub(super) fn stored_meta(
        &self,
        now: u64,
        content_type: Option<String>,
        validators: Validators,
    ) -> StoredMeta {
        StoredMeta {
            content_type,
            etag: validators.etag,
            last_modified: validators.last_modified,
            fetched_at_ms: now,
            fresh_until_ms: Some(now.saturating_add(self.store_ttl_ms)),
            stale_while_revalidate_ms: self.stale_while_revalidate_ms,
            stale_if_error_ms: self.stale_if_error_ms,
            memory_ttl_ms: Some(self.memory_ttl_ms),
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
