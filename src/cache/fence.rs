//! Orders origin fills against `Invalidate` and `Purge`: a fill whose origin
//! request went out before an invalidation of its key stores nothing.
//!
//! The store's preconditions keep a fill from replacing a newer *write* (a
//! cold fill writes only while the key is absent, a refresh only over the
//! version it refreshed). They cannot see an invalidation of a key that is
//! absent again afterwards: a cold fill in flight while a key is invalidated
//! would find it absent and store an origin answer that may predate the
//! invalidation — the very answer the invalidation was meant to get rid of.
//!
//! So every fill registers here before it asks the origin ([`Fences::begin`])
//! and, when the answer arrives, checks and writes while holding a shared
//! guard ([`FillFence::admit`]). An invalidation marks every registered fill
//! of its key (or under its prefix) while holding the exclusive guard, and
//! only then deletes. Either the fill's write came first — and the
//! invalidation's delete removes it — or the mark came first — and the fill
//! sees it and stores nothing. Nothing is kept per invalidation: only fills in
//! flight are registered, and each removes itself when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{RwLock, RwLockReadGuard};

/// The fills in flight and the guard that orders them against invalidations.
#[derive(Debug, Default)]
pub struct Fences {
    /// Shared by a fill while it checks its mark and writes; exclusive while
    /// an invalidation marks fills. Never held by a fill while it waits for
    /// the origin, so an invalidation waits at most for the writes under way.
    order: RwLock<()>,
    /// Every fill in flight, by id: its key and its mark.
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Pending {
    key: Arc<str>,
    invalidated: Arc<AtomicBool>,
}

/// One fill's registration; unregisters when dropped.
#[derive(Debug)]
pub struct FillFence<'a> {
    fences: &'a Fences,
    id: u64,
    invalidated: Arc<AtomicBool>,
}

impl Fences {
    /// Registers a fill of `key`; call before asking the origin.
    pub fn begin(&self, key: &str) -> FillFence<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let invalidated = Arc::new(AtomicBool::new(false));
        self.lock_pending().insert(
            id,
            Pending {
                key: Arc::from(key),
                invalidated: Arc::clone(&invalidated),
            },
        );
        FillFence {
            fences: self,
            id,
            invalidated,
        }
    }

    /// Marks every fill of `key` in flight: none of them will store. Call
    /// before deleting the key.
    pub async fn invalidate_key(&self, key: &str) {
        self.mark(|pending| pending == key).await;
    }

    /// Marks every fill in flight of a key under `prefix`. Call before
    /// listing what to delete.
    pub async fn invalidate_prefix(&self, prefix: &str) {
        self.mark(|pending| pending.starts_with(prefix)).await;
    }

    async fn mark(&self, matches: impl Fn(&str) -> bool) {
        let _exclusive = self.order.write().await;
        for pending in self.lock_pending().values() {
            if matches(&pending.key) {
                pending.invalidated.store(true, Ordering::SeqCst);
            }
        }
    }

    /// How many fills are registered (for tests).
    pub fn in_flight(&self) -> usize {
        self.lock_pending().len()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|error| error.into_inner())
    }
}

impl FillFence<'_> {
    /// The guard to store under, or `None` when the key was invalidated
    /// since [`Fences::begin`]. Hold the guard until the store write (and
    /// the memory fill) are done: invalidations wait for it.
    pub async fn admit(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let shared = self.fences.order.read().await;
        (!self.invalidated.load(Ordering::SeqCst)).then_some(shared)
    }
}

impl Drop for FillFence<'_> {
    fn drop(&mut self) {
        self.fences.lock_pending().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invalidation of the key, or of a prefix above it, bars a fill
    /// registered before; one of another key does not, and a fill
    /// registered afterwards is admitted. Fills unregister when dropped.
    #[tokio::test]
    async fn invalidations_bar_the_fills_in_flight() {
        let fences = Fences::default();
        let by_key = fences.begin("cache:a:1");
        let by_prefix = fences.begin("cache:a:2");
        let other = fences.begin("cache:b:1");
        fences.invalidate_key("cache:a:1").await;
        assert!(by_key.admit().await.is_none());
        assert!(by_prefix.admit().await.is_some());
        fences.invalidate_prefix("cache:a:").await;
        assert!(by_prefix.admit().await.is_none());
        assert!(other.admit().await.is_some());
        let later = fences.begin("cache:a:1");
        assert!(later.admit().await.is_some());
        drop((by_key, by_prefix, other, later));
        assert_eq!(fences.in_flight(), 0);
    }

    /// An invalidation waits for a fill's write under way: marked after it,
    /// the fill's write is the one its delete removes.
    #[tokio::test]
    async fn an_invalidation_waits_for_an_admitted_write() {
        let fences = Arc::new(Fences::default());
        let fill = fences.begin("cache:k");
        let guard = fill.admit().await.expect("admitted");
        let marking = {
            let fences = Arc::clone(&fences);
            tokio::spawn(async move { fences.invalidate_key("cache:k").await })
        };
        tokio::task::yield_now().await;
        assert!(!marking.is_finished(), "waits for the admitted write");
        drop(guard);
        marking.await.unwrap();
        assert!(fill.admit().await.is_none());
    }
}
