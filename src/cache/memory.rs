//! The memory tier (L1): a moka cache bounded in bytes, kept coherent with the
//! store by the engine's change feed.
//!
//! # Coherence
//!
//! Two rules, and why they suffice:
//!
//! 1. **Every read catches up with the feed before it looks.** A read first
//!    waits until the feed has published everything up to the engine's
//!    [`acknowledged sequence`](crate::engine::Engine::acknowledged_sequence)
//!    (the wait of [`ChangeSubscription::catch_up_to`], on the feed position
//!    every subscription shares), so every write that returned before the
//!    read started has its event in this tier's subscriptions. This is the
//!    engine contract, not an assumption about timing: the RocksDB engine
//!    publishes before it answers, so the wait ends at once; a remote
//!    engine's feed may arrive later, and the read waits for it (until its
//!    deadline, at most [`MAX_CATCH_UP_WAIT`]; past that it skips memory and
//!    reads the store, whose reads are strong). The tier is split
//!    into [`SHARDS`] shards by key hash, each with a subscription of its own
//!    and a lock of its own, and applies, from that subscription, the events
//!    of its keys only. [`MemoryTier::get`] first applies every event of its
//!    key's shard already published (under the shard's lock, so a reader
//!    never overtakes an event another reader is applying), and applying a
//!    put or delete of a key drops that key's entry unless the entry holds
//!    the put's version or a newer one. So no read after a write returns sees
//!    the older value from memory. A read waits only for events of its own
//!    shard being applied: a burst of writes to other keys costs it a
//!    hash per event, not a lock held while the burst is applied. A
//!    background task applies events too, so that a quiet tier does not lag
//!    behind the feed.
//!
//! 2. **A fill that raced a newer commit is never seen.** A filler takes a
//!    [`FillTicket`] *before* it reads the store (or asks the origin): a
//!    snapshot of its key's stripe — the highest put version and the number
//!    of deletes the feed has applied to keys hashing there — and of the
//!    clear epoch. [`MemoryTier::fill`] then compares, and inserts only if no
//!    delete or clear was applied since the ticket, nor a put whose version
//!    is above the entry's. It checks and inserts under the lock of the
//!    shard the key's events are applied under, so the two never interleave
//!    (a stripe belongs to one shard). Versions are ordered store-wide (a
//!    commit's versions are above every earlier commit's, as the engine
//!    contract states), so a commit newer than the value read has a higher
//!    version, whichever key of the stripe it wrote.
//!    Either its event was applied before the fill — the check sees it and
//!    nothing is inserted — or after — and applying it drops the entry
//!    (rule 1) before any read that starts after the write returned looks.
//!    (Inserting first and removing after a failed check is not enough: a
//!    reader that had already caught up with the newer event could find the
//!    older entry in between.) A filler's own write (a Put, an origin fill)
//!    has exactly the entry's version, so it does not count as newer; a 404
//!    remembered in memory (version 0) stays only if no put at all reached
//!    its stripe. Sharing a stripe with other keys only causes extra lost
//!    fills, never a stale entry.
//!
//! A lagging subscription may have missed anything of its shard: the tier
//! clears itself and bumps the epoch, which fails every ticket taken before
//! (in every shard: more than needed, never less). A dropped namespace (one
//! `NamespaceCleared` event for all its keys, which every shard receives and
//! applies) bumps the epoch too and drops every entry under its prefix.
//!
//! Entries carry their own deadline, checked against the engine's clock (the
//! injected one), so tests move time instead of sleeping; moka's own expiry
//! is not used.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::engine::{Change, ChangeEvent, ChangeSubscription, FeedPosition, RecvError};

use super::entry::MemoryEntry;

/// Stripes of the fill check: 16384 × 16 bytes. A write to another key of
/// the stripe between a filler's ticket and its check costs that fill (a
/// later read fills again), so more stripes mean fewer lost fills.
const STRIPES: usize = 16384;
/// Shards of the feed: each applies the events of the keys whose stripe is
/// its index modulo `SHARDS`, under its own lock. Every shard reads every
/// event (and skips most), so more shards cost more hashing per write;
/// sixteen keep readers of different keys from waiting on each other's
/// events on any core count this runs on.
pub const SHARDS: usize = 16;
/// Longest a read waits for the feed to publish what the engine has
/// acknowledged, when its caller's deadline is not sooner; past it the read
/// skips memory and goes to the store. Never reached with the RocksDB
/// engine, which publishes before it acknowledges.
pub const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// A filler's view of its key's stripe, taken before it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket {
    stripe: usize,
    max_put_version: u64,
    deletes: u64,
    epoch: u64,
}

#[derive(Debug, Default)]
struct Stripe {
    /// The highest version of a put the feed applied to a key of this stripe.
    max_put_version: AtomicU64,
    /// How many deletes the feed applied to keys of this stripe.
    deletes: AtomicU64,
}

/// The memory tier.
pub struct MemoryTier {
    cache: moka::sync::Cache<Arc<str>, Arc<MemoryEntry>>,
    stripes: Box<[Stripe]>,
    hasher: std::collections::hash_map::RandomState,
    /// Bumped on every clear.
    epoch: AtomicU64,
    /// Each shard's subscription, which its events are applied from. Std
    /// mutexes: one is held while applying what is already queued for its
    /// shard, and while a fill of one of its keys checks its ticket and
    /// inserts (see the module docs); never across an await.
    shards: Box<[Mutex<ChangeSubscription>]>,
    /// How far the feed has published, shared by every shard's subscription.
    published: FeedPosition,
    capacity_bytes: u64,
    on_clear: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MemoryTier")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryTier {
    /// A tier holding at most `capacity_bytes` (as [`MemoryEntry::weight`]
    /// counts), applying events from subscriptions `subscribe` makes (one
    /// per shard, and one to wake the background task); `on_clear` is called
    /// when a lag clears it. Starts the background task that keeps it caught
    /// up, which ends when the tier is dropped or the feed closes. The tier
    /// holds no engine handle (its counters outlive the server, and must not
    /// keep the store open): readers pass the sequence to catch up to.
    pub fn start(
        capacity_bytes: u64,
        subscribe: impl Fn() -> ChangeSubscription,
        on_clear: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Self> {
        let shards: Box<[Mutex<ChangeSubscription>]> =
            (0..SHARDS).map(|_| Mutex::new(subscribe())).collect();
        let published = shards[0]
            .lock()
            .unwrap_or_else(|error| error.into_inner())
            .feed_position();
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &Arc<str>, entry: &Arc<MemoryEntry>| entry.weight(key))
            .support_invalidation_closures()
            .build();
        let tier = Arc::new(Self {
            cache,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            hasher: Default::default(),
            epoch: AtomicU64::new(0),
            shards,
            published,
            capacity_bytes,
            on_clear: Box::new(on_clear),
        });
        tokio::spawn(keep_up(Arc::downgrade(&tier), subscribe()));
        tier
    }

    /// The largest entry worth keeping: an entry above a quarter of the
    /// bound would push out many others.
    pub fn max_entry_bytes(&self) -> u64 {
        self.capacity_bytes / 4
    }

    /// The entry for `key`, after catching up with every event up to
    /// `acknowledged`: the engine's
    /// [`acknowledged_sequence`](crate::engine::Engine::acknowledged_sequence)
    /// read when the call started (see the module docs). `None` as well when
    /// the feed did not get there by `deadline` (or within
    /// [`MAX_CATCH_UP_WAIT`]): the caller then reads the store.
    pub async fn get(
        &self,
        key: &str,
        acknowledged: u64,
        deadline: Option<Instant>,
    ) -> Option<Arc<MemoryEntry>> {
        if !self.wait_for_feed(acknowledged, deadline).await {
            return None;
        }
        self.get_published(key)
    }

    /// The entry for `key`, after applying every change of its shard
    /// already published (not waiting for acknowledged ones still to come).
    fn get_published(&self, key: &str) -> Option<Arc<MemoryEntry>> {
        self.catch_up_shard(self.stripe_of(key) % SHARDS);
        self.cache.get(key)
    }

    /// Waits until the subscriptions hold every event up to `wanted`; false
    /// when the deadline (or [`MAX_CATCH_UP_WAIT`]) came first or the feed
    /// closed.
    async fn wait_for_feed(&self, wanted: u64, deadline: Option<Instant>) -> bool {
        if self.published.reached(wanted) {
            return true;
        }
        let limit = Instant::now() + MAX_CATCH_UP_WAIT;
        let until = deadline.map_or(limit, |deadline| deadline.min(limit));
        match self.published.wait_for(wanted, until).await {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, "the memory tier is behind the change feed; reading the store");
                false
            }
        }
    }

    /// A ticket for a fill of `key`; take it before reading what to fill.
    pub fn ticket(&self, key: &str) -> FillTicket {
        let index = self.stripe_of(key);
        let stripe = &self.stripes[index];
        FillTicket {
            stripe: index,
            epoch: self.epoch.load(Ordering::SeqCst),
            max_put_version: stripe.max_put_version.load(Ordering::SeqCst),
            deletes: stripe.deletes.load(Ordering::SeqCst),
        }
    }

    /// Installs `entry` for `key` unless a newer commit was applied since
    /// `ticket` (see the module docs); returns whether it was installed.
    pub fn fill(&self, key: &str, entry: MemoryEntry, ticket: FillTicket) -> bool {
        self.fill_shared(key, Arc::new(entry), ticket)
    }

    /// [`MemoryTier::fill`] with an entry the caller keeps a handle on.
    pub fn fill_shared(&self, key: &str, entry: Arc<MemoryEntry>, ticket: FillTicket) -> bool {
        if u64::from(entry.weight(key)) > self.max_entry_bytes() {
            return false;
        }
        // Checked and inserted under the lock the key's events are applied
        // under: an entry inserted first and removed after a failed check
        // would be visible in between, and a reader that caught up with the
        // newer event just before could return it.
        let _applying = self.lock_shard(ticket.stripe % SHARDS);
        let stripe = &self.stripes[ticket.stripe];
        let max_put_version = stripe.max_put_version.load(Ordering::SeqCst);
        let raced = self.epoch.load(Ordering::SeqCst) != ticket.epoch
            || stripe.deletes.load(Ordering::SeqCst) != ticket.deletes
            || (max_put_version != ticket.max_put_version && max_put_version > entry.version);
        if !raced {
            self.cache.insert(Arc::from(key), entry);
        }
        !raced
    }

    fn lock_shard(&self, shard: usize) -> std::sync::MutexGuard<'_, ChangeSubscription> {
        self.shards[shard]
            .lock()
            .unwrap_or_else(|error| error.into_inner())
    }

    /// Drops `key`'s entry.
    pub fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Drops every entry whose key starts with `prefix`.
    pub fn invalidate_prefix(&self, prefix: &str) {
        let prefix: Arc<str> = Arc::from(prefix);
        // Fails only without `support_invalidation_closures`, which is set.
        let _ = self
            .cache
            .invalidate_entries_if(move |key, _| key.starts_with(&*prefix));
    }

    /// Bytes held (as weighed) and entries, after pending evictions.
    pub fn size(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }

    /// Holds the lock `key`'s events are applied under, as applying a
    /// burst of them would.
    #[cfg(test)]
    fn hold_events_of(&self, key: &str) -> std::sync::MutexGuard<'_, ChangeSubscription> {
        self.lock_shard(self.stripe_of(key) % SHARDS)
    }

    /// Whether the events of `a` and `b` are applied under one lock.
    #[cfg(test)]
    fn same_lock(&self, a: &str, b: &str) -> bool {
        self.stripe_of(a) % SHARDS == self.stripe_of(b) % SHARDS
    }

    fn stripe_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// Applies every event up to `sequence` (a write's
    /// [`WriteReceipt::sequence`](crate::engine::WriteReceipt::sequence)), in
    /// every shard, waiting for the feed until `deadline` as a read does;
    /// returns whether it got there.
    pub async fn catch_up_to(&self, sequence: u64, deadline: Option<Instant>) -> bool {
        let caught_up = self.wait_for_feed(sequence, deadline).await;
        self.apply_published();
        caught_up
    }

    /// Applies every event already published, in every shard.
    fn apply_published(&self) {
        for shard in 0..SHARDS {
            self.catch_up_shard(shard);
        }
    }

    /// Applies every event of `shard`'s keys already published (every read
    /// does this for its key's shard first).
    fn catch_up_shard(&self, shard: usize) {
        let mut feed = self.lock_shard(shard);
        loop {
            match feed.try_recv() {
                Ok(Some(event)) => self.apply(shard, &event),
                Ok(None) => return,
                Err(RecvError::Lagged { missed }) => {
                    tracing::warn!(missed, "cache change feed lagged; clearing the memory tier");
                    self.clear();
                }
                // The engine is gone; nothing more will change.
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Applies `event` if it concerns `shard` (every shard sees every event).
    fn apply(&self, shard: usize, event: &ChangeEvent) {
        let key: &str = &event.key;
        let index = match event.change {
            // Not a key: the prefix of a whole namespace, every shard's.
            Change::NamespaceCleared => 0,
            Change::Put { .. } | Change::Delete => {
                let index = self.stripe_of(key);
                if index % SHARDS != shard {
                    return;
                }
                index
            }
        };
        let stripe = &self.stripes[index];
        match event.change {
            Change::Put { version, .. } => {
                stripe.max_put_version.fetch_max(version, Ordering::SeqCst);
                let current = self.cache.get(key);
                let keep = current
                    .is_some_and(|entry| entry.negative.is_none() && entry.version >= version);
                if !keep {
                    self.cache.invalidate(key);
                }
            }
            Change::Delete => {
                stripe.deletes.fetch_add(1, Ordering::SeqCst);
                self.cache.invalidate(key);
            }
            // A whole namespace was dropped (`key` is its prefix): every
            // ticket taken before fails, like after a clear, and every entry
            // under the prefix goes.
            Change::NamespaceCleared => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.invalidate_prefix(key);
            }
        }
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        (self.on_clear)();
    }
}

/// Applies events as they come, so the tier's subscription does not lag while
/// no one reads. `wake` is a second subscription used only to wait.
async fn keep_up(tier: Weak<MemoryTier>, mut wake: ChangeSubscription) {
    loop {
        let woken = wake.recv().await;
        let Some(tier) = tier.upgrade() else { return };
        if woken == Err(RecvError::Closed) {
            return;
        }
        // Drain the wake-up subscription too: one catch-up covers them all.
        while let Ok(Some(_)) = wake.try_recv() {}
        tier.apply_published();
    }
}

#[cfg(test)]
mod tests;
