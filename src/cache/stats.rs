//! The cache's counters, kept as atomics so that every request can count
//! without a lock, and read as one [`CacheCounts`] snapshot (by a metrics
//! endpoint, tests, the benchmark).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::memory::MemoryTier;

/// Live counters of one server's cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub(crate) memory_hits: AtomicU64,
    pub(crate) store_hits: AtomicU64,
    pub(crate) origin_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) origin_requests: AtomicU64,
    pub(crate) coalesced_waiters: AtomicU64,
    pub(crate) stale_serves: AtomicU64,
    pub(crate) origin_errors: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) memory_clears: AtomicU64,
    pub(crate) discarded_fills: AtomicU64,
    pub(crate) fetches_refused: AtomicU64,
    pub(crate) stores_refused: AtomicU64,
    /// The memory tier, once the service is built, for its size.
    memory: OnceLock<Arc<MemoryTier>>,
}

/// A point-in-time copy of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Gets answered from memory (L1).
    pub memory_hits: u64,
    /// Gets answered from the store (L2).
    pub store_hits: u64,
    /// Gets answered by a fetch from the origin (L3), waiters included.
    pub origin_hits: u64,
    /// Gets of keys without an origin that found nothing.
    pub misses: u64,
    /// Requests sent to origins (conditional ones included).
    pub origin_requests: u64,
    /// Gets that joined a fetch already in flight instead of sending their own.
    pub coalesced_waiters: u64,
    /// Gets answered with a stale copy (stale-while-revalidate or stale-if-error).
    pub stale_serves: u64,
    /// Origin requests that failed (connection, timeout, 5xx, body too large).
    pub origin_errors: u64,
    /// Gets answered NOT_FOUND from a negatively cached 404/410.
    pub negative_hits: u64,
    /// Background refreshes started by stale-while-revalidate.
    pub background_refreshes: u64,
    /// Times the memory tier was cleared because the change feed lagged.
    pub memory_clears: u64,
    /// Origin answers not stored because a newer write, or an Invalidate or
    /// Purge of the key, came first.
    pub discarded_fills: u64,
    /// Origin requests not started because a `max_concurrent_fetches` limit
    /// was reached (the read was refused, or served stale).
    pub fetches_refused: u64,
    /// Origin answers served but not stored because the origin's
    /// `max_store_entries` or `max_store_bytes` was reached.
    pub stores_refused: u64,
    /// Bytes the memory tier holds, as its weigher counts them.
    pub memory_bytes: u64,
    /// Entries the memory tier holds.
    pub memory_entries: u64,
}

impl CacheStats {
    /// Fresh counters, shared between the service and whoever reads them.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub(crate) fn attach_memory(&self, memory: Arc<MemoryTier>) {
        let _ = self.memory.set(memory);
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now. The memory size is exact after pending evictions
    /// are applied, which this does first.
    pub fn snapshot(&self) -> CacheCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (memory_bytes, memory_entries) = self
            .memory
            .get()
            .map(|memory| memory.size())
            .unwrap_or_default();
        CacheCounts {
            memory_hits: load(&self.memory_hits),
            store_hits: load(&self.store_hits),
            origin_hits: load(&self.origin_hits),
            misses: load(&self.misses),
            origin_requests: load(&self.origin_requests),
            coalesced_waiters: load(&self.coalesced_waiters),
            stale_serves: load(&self.stale_serves),
            origin_errors: load(&self.origin_errors),
            negative_hits: load(&self.negative_hits),
            background_refreshes: load(&self.background_refreshes),
            memory_clears: load(&self.memory_clears),
            discarded_fills: load(&self.discarded_fills),
            fetches_refused: load(&self.fetches_refused),
            stores_refused: load(&self.stores_refused),
            memory_bytes,
            memory_entries,
        }
    }
}
