//! Bounds on what reads can make the cache do to its origins and its disk.
//!
//! A `CacheService.Get` needs only read access, yet a miss under an origin
//! prefix starts an origin request (carrying the origin's configured
//! credentials) that outlives the caller, and stores what comes back. Two
//! budgets keep a reader looping over random keys from turning that into
//! unbounded origin traffic and disk use:
//!
//! - [`FetchLimits`]: permits for origin requests in flight, per origin
//!   (`max_concurrent_fetches`) and for all origins together
//!   (`cache.max_concurrent_fetches`). A fetch holds its permits until it
//!   ends — also when every caller waiting for it has given up — so a caller
//!   with a 1 ms deadline still occupies a permit for as long as its fetch
//!   runs (at most the origin's `timeout`). Without a permit nothing is sent:
//!   the read is refused (RESOURCE_EXHAUSTED with a retry delay), a stale copy
//!   is served instead where one may be, and a background refresh is skipped.
//! - [`StoreLedger`]: per origin, the records the cache stored from that
//!   origin's answers, with their sizes and expiry, against `max_store_entries`
//!   and `max_store_bytes`. An answer that does not fit is served but not
//!   stored: nothing is evicted, and records clients wrote under the prefix
//!   (KvService, CacheService.Put) are neither counted nor ever dropped. An
//!   entry leaves the ledger when its record expires, or when the change feed
//!   reports the key deleted (Invalidate, Purge, KvService.Delete, a dropped
//!   namespace). The ledger starts from a scan of the prefix the first time
//!   an answer is to be stored after start, so a restart does not reset the
//!   budget. When it cannot be sure (a failed store write, a lagging feed), it
//!   counts a record as present: the bound holds, at the cost of refusing a
//!   few stores early until those records expire.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{Change, ChangeSubscription, Engine, RecvError};
use crate::kv::limits::MAX_LIST_EXAMINED;
use crate::records::pages::PrefixPages;

use super::config::{CacheConfig, OriginConfig};
use super::entry::StoredMeta;

/// Longest retry delay a refused fetch suggests: permits come back as
/// fetches end, which takes at most the origin's timeout and usually far less.
pub const FETCH_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Records read per page while the ledger starts from the store.
const LEDGER_SCAN_PAGE: usize = 256;

/// Which limit refused a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchLimit {
    /// The origin's own `max_concurrent_fetches`.
    Origin {
        /// The origin's prefix (configuration, never a secret).
        prefix: String,
        /// The limit.
        limit: usize,
    },
    /// `cache.max_concurrent_fetches`, all origins together.
    Global {
        /// The limit.
        limit: usize,
    },
}

impl std::fmt::Display for FetchLimit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchLimit::Origin { prefix, limit } => write!(
                formatter,
                "the origin of prefix {prefix:?} has {limit} requests in flight, its max_concurrent_fetches"
            ),
            FetchLimit::Global { limit } => write!(
                formatter,
                "{limit} origin requests are in flight, the cache.max_concurrent_fetches of all origins together"
            ),
        }
    }
}

/// The right to have one origin request in flight; released when dropped.
#[derive(Debug)]
pub struct FetchPermit {
    _origin: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// Concurrency permits for origin requests.
#[derive(Debug)]
pub struct FetchLimits {
    global: Arc<Semaphore>,
    global_limit: usize,
    /// By origin prefix.
    per_origin: HashMap<String, (Arc<Semaphore>, usize)>,
}

impl FetchLimits {
    /// Permits as `config` sets them.
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            global: Arc::new(Semaphore::new(config.max_concurrent_fetches)),
            global_limit: config.max_concurrent_fetches,
            per_origin: config
                .origins
                .iter()
                .map(|origin| {
                    (
                        origin.prefix.clone(),
                        (
                            Arc::new(Semaphore::new(origin.max_concurrent_fetches)),
                            origin.max_concurrent_fetches,
                        ),
                    )
                })
                .collect(),
        }
    }

    /// A permit for one more request to `origin`, or the limit that is
    /// reached. Never waits: a caller is better told at once to come back.
    pub fn try_acquire(&self, origin: &OriginConfig) -> Result<FetchPermit, FetchLimit> {
        let Some((semaphore, limit)) = self.per_origin.get(&origin.prefix) else {
            // Not configured at start: cannot happen, and nothing to bound by.
            return Err(FetchLimit::Origin {
                prefix: origin.prefix.clone(),
                limit: 0,
            });
        };
        let origin_permit =
            Arc::clone(semaphore)
                .try_acquire_owned()
                .map_err(|_| FetchLimit::Origin {
                    prefix: origin.prefix.clone(),
                    limit: *limit,
                })?;
        let global_permit =
            Arc::clone(&self.global)
                .try_acquire_owned()
                .map_err(|_| FetchLimit::Global {
                    limit: self.global_limit,
                })?;
        Ok(FetchPermit {
            _origin: origin_permit,
            _global: global_permit,
        })
    }

    /// Requests in flight to the origin with `prefix`, and to all origins.
    pub fn in_flight(&self, prefix: &str) -> (usize, usize) {
        let origin = self.per_origin.get(prefix).map_or(0, |(semaphore, limit)| {
            limit - semaphore.available_permits()
        });
        (origin, self.global_limit - self.global.available_permits())
    }
}

/// What the ledger knows of one stored record.
#[derive(Debug, Clone, Copy)]
struct Held {
    bytes: u64,
    expire_at_ms: u64,
}

#[derive(Debug, Default)]
struct LedgerState {
    held: HashMap<Arc<str>, Held>,
    /// The same records by expiry, to drop the expired ones first.
    by_expiry: BTreeSet<(u64, Arc<str>)>,
    bytes: u64,
}

impl LedgerState {
    fn insert(&mut self, key: Arc<str>, held: Held) {
        self.remove(&key);
        self.bytes = self.bytes.saturating_add(held.bytes);
        self.by_expiry.insert((held.expire_at_ms, Arc::clone(&key)));
        self.held.insert(key, held);
    }

    fn remove(&mut self, key: &str) {
        if let Some((key, held)) = self.held.remove_entry(key) {
            self.bytes = self.bytes.saturating_sub(held.bytes);
            self.by_expiry.remove(&(held.expire_at_ms, key));
        }
    }

    fn drop_expired(&mut self, now_ms: u64) {
        while let Some((expire_at_ms, _)) = self.by_expiry.first() {
            if *expire_at_ms > now_ms {
                return;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                if let Some(held) = self.held.remove(&key) {
                    self.bytes = self.bytes.saturating_sub(held.bytes);
                }
            }
        }
    }
}

/// One origin's stored records, against its store caps.
#[derive(Debug)]
pub struct StoreLedger {
    prefix: String,
    max_entries: u64,
    max_bytes: u64,
    /// Set once the ledger has been filled from the store.
    loaded: tokio::sync::OnceCell<()>,
    state: Mutex<LedgerState>,
}

/// The bytes a stored record is counted for: key, value and metadata.
pub fn record_bytes(key: &str, value_len: usize, metadata_len: usize) -> u64 {
    (key.len() + value_len + metadata_len) as u64
}

impl StoreLedger {
    fn new(origin: &OriginConfig) -> Self {
        Self {
            prefix: origin.prefix.clone(),
            max_entries: origin.max_store_entries,
            max_bytes: origin.max_store_bytes,
            loaded: tokio::sync::OnceCell::new(),
            state: Mutex::new(LedgerState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(|error| error.into_inner())
    }

    /// Fills the ledger from the records under the prefix that the cache
    /// stored from the origin (their metadata says when they stop being
    /// fresh; a client's CacheService.Put does not set that). Once per
    /// start; concurrent callers wait for the one scan.
    async fn load(&self, engine: &dyn Engine) {
        self.loaded
            .get_or_init(|| async {
                let mut pages =
                    PrefixPages::new(self.prefix.clone(), None, true, MAX_LIST_EXAMINED);
                loop {
                    let page = match pages.next(engine, LEDGER_SCAN_PAGE).await {
                        Ok(Some(page)) => page,
                        Ok(None) => return,
                        Err(error) => {
                            // Counted from what was read so far; the records
                            // not read expire within the origin's windows.
                            tracing::warn!(
                                error = %error.log_summary(),
                                "reading the cache's stored records for its store budget failed"
                            );
                            return;
                        }
                    };
                    {
                        let mut state = self.lock();
                        for (key, record) in &page {
                            let from_origin = StoredMeta::from_metadata(record.metadata.as_deref())
                                .is_some_and(|meta| meta.fresh_until_ms.is_some());
                            if !from_origin {
                                continue;
                            }
                            let bytes = record_bytes(
                                key,
                                record.value.len(),
                                record.metadata.as_ref().map_or(0, Vec::len),
                            );
                            // Already in the ledger: stored since the start,
                            // counted then.
                            if !state.held.contains_key(key.as_str()) {
                                state.insert(
                                    Arc::from(key.as_str()),
                                    Held {
                                        bytes,
                                        expire_at_ms: record.expire_at_millis.unwrap_or(u64::MAX),
                                    },
                                );
                            }
                        }
                    }
                }
            })
            .await;
    }

    /// Reserves room for `key`'s record of `bytes` expiring at
    /// `expire_at_ms` (replacing what `key` held); false, reserving nothing,
    /// when it would go beyond a cap.
    pub async fn admit(
        &self,
        engine: &dyn Engine,
        key: &str,
        bytes: u64,
        expire_at_ms: u64,
    ) -> bool {
        self.load(engine).await;
        let now = engine.now_millis();
        let mut state = self.lock();
        state.drop_expired(now);
        let (entries, held_bytes) = match state.held.get(key) {
            Some(old) => (
                state.held.len() as u64,
                state.bytes.saturating_sub(old.bytes),
            ),
            None => (state.held.len() as u64 + 1, state.bytes),
        };
        if entries > self.max_entries || held_bytes.saturating_add(bytes) > self.max_bytes {
            return false;
        }
        state.insert(
            Arc::from(key),
            Held {
                bytes,
                expire_at_ms,
            },
        );
        true
    }

    /// Updates the expiry of `key`'s record, if counted (a revalidation
    /// rewrote it with the same value).
    pub fn renew(&self, key: &str, expire_at_ms: u64) {
        let mut state = self.lock();
        if let Some(held) = state.held.get(key).copied() {
            state.insert(
                Arc::from(key),
                Held {
                    bytes: held.bytes,
                    expire_at_ms,
                },
            );
        }
    }

    /// Records and bytes counted now (expired ones dropped first).
    pub fn usage(&self, now_ms: u64) -> (u64, u64) {
        let mut state = self.lock();
        state.drop_expired(now_ms);
        (state.held.len() as u64, state.bytes)
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    fn forget_prefix(&self, prefix: &str) {
        let mut state = self.lock();
        let keys: Vec<Arc<str>> = state
            .held
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect();
        for key in keys {
            state.remove(&key);
        }
    }
}

/// Every origin's ledger.
#[derive(Debug, Default)]
pub struct StoreLedgers {
    by_prefix: HashMap<String, Arc<StoreLedger>>,
}

impl StoreLedgers {
    /// A ledger per configured origin.
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            by_prefix: config
                .origins
                .iter()
                .map(|origin| (origin.prefix.clone(), Arc::new(StoreLedger::new(origin))))
                .collect(),
        }
    }

    /// The ledger of the origin with `prefix`.
    pub fn get(&self, prefix: &str) -> Option<&Arc<StoreLedger>> {
        self.by_prefix.get(prefix)
    }

    /// The ledger a deleted key belongs to: the origin with the longest
    /// prefix of it, as keys are routed.
    fn for_key(&self, key: &str) -> Option<&Arc<StoreLedger>> {
        self.by_prefix
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, ledger)| ledger)
    }

    fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// Keeps the ledgers in step with deletes from any service: a deleted
/// record no longer counts. Puts are not followed: the ledger counts the
/// cache's own stores, when it makes them. Ends when the ledgers are
/// dropped or the feed closes.
pub fn follow_deletes(ledgers: &Arc<StoreLedgers>, mut feed: ChangeSubscription) {
    if ledgers.is_empty() {
        return;
    }
    let ledgers = Arc::downgrade(ledgers);
    tokio::spawn(async move {
        loop {
            let event = feed.recv().await;
            let Some(ledgers) = ledgers.upgrade() else {
                return;
            };
            match event {
                Ok(event) => match event.change {
                    Change::Delete => {
                        if let Some(ledger) = ledgers.for_key(&event.key) {
                            ledger.forget(&event.key);
                        }
                    }
                    Change::NamespaceCleared => {
                        for ledger in ledgers.by_prefix.values() {
                            ledger.forget_prefix(&event.key);
                        }
                    }
                    Change::Put { .. } => {}
                },
                // Deletes were missed: their records stay counted until they
                // expire, which keeps the bound.
                Err(RecvError::Lagged { missed }) => {
                    tracing::warn!(missed, "the cache's store budget missed change events");
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(entries: u64, bytes: u64) -> OriginConfig {
        OriginConfig {
            max_store_entries: entries,
            max_store_bytes: bytes,
            max_concurrent_fetches: 2,
            ..OriginConfig::new("cache:api:", "http://h/{key}")
        }
    }

    /// Permits run out at the origin's limit, then at the global one, and
    /// come back when dropped.
    #[test]
    fn fetch_permits_are_bounded_per_origin_and_globally() {
        let config = CacheConfig {
            max_concurrent_fetches: 3,
            origins: vec![
                origin(1, 1),
                OriginConfig {
                    max_concurrent_fetches: 5,
                    ..OriginConfig::new("cache:img:", "http://h/{key}")
                },
            ],
            ..CacheConfig::default()
        };
        let limits = FetchLimits::new(&config);
        let (api, img) = (&config.origins[0], &config.origins[1]);
        let first = limits.try_acquire(api).unwrap();
        let _second = limits.try_acquire(api).unwrap();
        assert_eq!(
            limits.try_acquire(api).unwrap_err(),
            FetchLimit::Origin {
                prefix: "cache:api:".into(),
                limit: 2
            }
        );
        let _third = limits.try_acquire(img).unwrap();
        assert_eq!(
            limits.try_acquire(img).unwrap_err(),
            FetchLimit::Global { limit: 3 }
        );
        assert_eq!(limits.in_flight("cache:api:"), (2, 3));
        drop(first);
        assert!(limits.try_acquire(img).is_ok());
    }

    /// The state's counts follow inserts, replacements, removals and expiry.
    #[test]
    fn ledger_state_counts() {
        let mut state = LedgerState::default();
        let held = |bytes, expire_at_ms| Held {
            bytes,
            expire_at_ms,
        };
        state.insert(Arc::from("a"), held(10, 100));
        state.insert(Arc::from("b"), held(20, 200));
        state.insert(Arc::from("a"), held(5, 300));
        assert_eq!((state.held.len(), state.bytes), (2, 25));
        state.drop_expired(200);
        assert_eq!((state.held.len(), state.bytes), (1, 5));
        state.remove("a");
        assert_eq!(
            (state.held.len(), state.bytes, state.by_expiry.len()),
            (0, 0, 0)
        );
    }
}
