//! The Cache service: reads through memory (L1), the store (L2) and, for keys
//! under a configured origin prefix, the origin (L3). No transport types.
//!
//! - **Keys without an origin** (cache-aside): memory over the key's record;
//!   a miss is `None`, and the caller fetches and calls [`CacheService::put`].
//! - **Keys under an origin prefix** (read-through): a miss asks the origin —
//!   once per key however many callers miss together ([`super::flight`]) — and
//!   fills both tiers. Stale copies are served within the configured (or the
//!   origin's `Cache-Control`) windows: at once while one background request
//!   refreshes them (stale-while-revalidate), or in place of a failed origin
//!   (stale-if-error). 404/410 are remembered in memory for the negative TTL;
//!   5xx and `no-store`/`private` responses are never stored. A stale copy with
//!   an `ETag` or `Last-Modified` is revalidated; a 304 refreshes both tiers
//!   without a body.
//!
//! A fill or refresh never replaces a newer commit: a cold fill stores only
//! while the key is still absent, a refresh or revalidation only while the
//! key still holds the version it refreshed, and no fill stores once an
//! `Invalidate` or `Purge` of its key began after its origin request went out
//! ([`super::fence`]). When a fill loses such a race its callers get the
//! newer committed record (tier STORE) if there is one, else the origin's
//! answer marked as not stored (version 0); nothing older enters either tier.
//!
//! Freshness is judged on the engine's clock (the injected one), so tests
//! move time instead of waiting.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Engine, Precondition, Record, ValueKind};
use crate::kv::{
    self, DeleteCommand, Expiration, KvError, PutCommand, ReadValue, RecordStore, Value, ValueType,
};

use super::budget::{self, FetchLimits, StoreLedgers};
use super::config::{CacheConfig, OriginConfig};
use super::entry::{MemoryEntry, StoredMeta, METADATA_FIELD};
use super::error::{invalid, store_ttl_violations, CacheError, FetchError};
use super::fence::Fences;
use super::flight::{self, Flights, Landing, LandingMark, Role};
use super::freshness::millis;
use super::memory::{FillTicket, MemoryTier};
use super::origin::{OriginClient, OriginError};
use super::stats::CacheStats;

/// How long memory answers for a key without an origin, unless its Put said
/// otherwise (the seed's one minute).
pub const DEFAULT_MEMORY_TTL: Duration = Duration::from_secs(60);
/// Longest content type a Put may set.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// What one origin fetch gives every caller that waited on it.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    /// The value to answer with.
    pub(super) entry: Arc<MemoryEntry>,
    /// [`Tier::Origin`], or [`Tier::Store`] when a newer committed record
    /// answers instead of the origin's (older) answer.
    pub(super) tier: Tier,
}

/// The outcome of one origin fetch, shared by every caller that waited on it.
pub(super) type FetchResult = Result<Fetched, FetchError>;

/// The tier a value was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Memory (L1).
    Memory,
    /// The store (L2).
    Store,
    /// The origin, just now.
    Origin,
    /// A stale copy, served while refreshing or because the origin failed.
    Stale,
}

/// A value as a cache read returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedValue {
    /// The value, in the requested representation.
    pub value: ReadValue,
    /// The origin's (or the writer's) content type.
    pub content_type: Option<String>,
    /// Where it came from.
    pub tier: Tier,
    /// Milliseconds since it was fetched from the origin (or written).
    pub age_ms: u64,
    /// When it stops being fresh (origin keys) or its record expires.
    pub expire_at_millis: Option<u64>,
    /// The record's version; 0 for a value that was not stored.
    pub version: u64,
    /// Whether the value is the stored record's (false: an origin answer
    /// that was not stored — `no-store`, too large, or it lost a race with a
    /// newer write or an invalidation; `version` is then 0).
    pub stored: bool,
}

/// Writes one key into both tiers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CachePut {
    /// The key.
    pub key: String,
    /// The value; required.
    pub value: Option<Value>,
    /// A content type to keep with it.
    pub content_type: Option<String>,
    /// How long memory may answer, in nanoseconds; default one minute (or
    /// the origin's memory TTL), never beyond the store TTL.
    pub memory_ttl_nanos: Option<i128>,
    /// The record's time to live in nanoseconds (at least a second); unset:
    /// the origin's store TTL under an origin prefix, otherwise never.
    pub store_ttl_nanos: Option<i128>,
}

/// What a Put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePutResult {
    /// The record's new version.
    pub version: u64,
    /// When the record expires.
    pub expire_at_millis: Option<u64>,
}

/// The Cache service; cheap to clone.
#[derive(Clone)]
pub struct CacheService {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// The engine's clock and the store ledgers' scans.
    pub(super) engine: Arc<dyn Engine>,
    /// Every read and write of a record: validation, ownership, lazy
    /// migration and preconditions exactly as `KvService` applies them.
    pub(super) records: RecordStore,
    pub(super) config: CacheConfig,
    pub(super) origin: Option<OriginClient>,
    pub(super) memory: Arc<MemoryTier>,
    pub(super) flights: Arc<Flights<FetchResult>>,
    /// Fills in flight, so that Invalidate and Purge can bar them.
    pub(super) fences: Fences,
    /// Origin requests in flight, per origin and in all.
    pub(super) fetch_limits: FetchLimits,
    /// What the cache stored from each origin, against its store caps.
    pub(super) ledgers: Arc<StoreLedgers>,
    pub(super) stats: Arc<CacheStats>,
}

impl CacheService {
    /// A service over `records` (the path to records KV uses too: owner
    /// checks, lazy migration, version preconditions) with `config`'s
    /// origins and memory bound, counting into `stats`. Starts the memory
    /// tier's change-feed task, so it must be called within a Tokio runtime.
    pub fn new(
        records: RecordStore,
        config: CacheConfig,
        stats: Arc<CacheStats>,
    ) -> Result<Self, OriginError> {
        let engine = Arc::clone(records.engine());
        let origin = if config.origins.is_empty() {
            None
        } else {
            Some(OriginClient::new(&config)?)
        };
        let clear_stats = Arc::clone(&stats);
        let memory = MemoryTier::start(
            config.memory_bytes(),
            || engine.subscribe(),
            move || CacheStats::count(&clear_stats.memory_clears),
        );
        stats.attach_memory(Arc::clone(&memory));
        let ledgers = Arc::new(StoreLedgers::new(&config));
        budget::follow_deletes(&ledgers, engine.subscribe());
        Ok(Self {
            inner: Arc::new(Inner {
                records,
                engine,
                fetch_limits: FetchLimits::new(&config),
                ledgers,
                config,
                origin,
                memory,
                flights: Arc::default(),
                fences: Fences::default(),
                stats,
            }),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.inner.stats
    }

    /// Reads `key` through the tiers. `None`: a key without an origin is in
    /// neither tier. `deadline` bounds the wait for an origin (the fetch
    /// itself runs on, for the other callers, within the origin's timeout).
    pub async fn get(
        &self,
        key: &str,
        value_type: ValueType,
        deadline: Option<Instant>,
    ) -> Result<Option<CachedValue>, CacheError> {
        let inner = &self.inner;
        kv::validate_key("key", key)
            .map_err(|violation| CacheError::Kv(KvError::InvalidArgument(vec![violation])))?;
        inner.records.check_owner("key", key)?;
        let now = inner.engine.now_millis();
        let acknowledged = inner.engine.acknowledged_sequence();
        let in_memory = inner.memory.get(key, acknowledged, deadline).await;
        if let Some(entry) = &in_memory {
            if now < entry.memory_until() {
                if let Some(status) = entry.negative {
                    CacheStats::count(&inner.stats.negative_hits);
                    return Err(CacheError::NotFound { status });
                }
                CacheStats::count(&inner.stats.memory_hits);
                return answer(key, entry, Tier::Memory, value_type, now).map(Some);
            }
        }
        let origin = inner.config.origin_for(key);
        // Once: a flight of this key that landed while the store was read
        // sends the read back to the store, which then holds what it stored.
        // Only keys under an origin have flights to mark.
        let mut read_again_once = origin.is_some();
        loop {
            let ticket = inner.memory.ticket(key);
            let mark = read_again_once.then(|| inner.flights.mark(key));
            read_again_once = false;
            // Migrated if due, exactly as a KV read returns it.
            let record = inner.records.get(key).await?;
            let Some(origin) = origin else {
                let Some(record) = record else {
                    CacheStats::count(&inner.stats.misses);
                    return Ok(None);
                };
                let meta = StoredMeta::from_metadata(record.metadata.as_deref());
                let entry = inner.store_hit(
                    key,
                    &record,
                    meta.as_ref(),
                    DEFAULT_MEMORY_TTL,
                    now,
                    ticket,
                    in_memory,
                );
                return answer(key, &entry, Tier::Store, value_type, now).map(Some);
            };
            let Some(record) = record else {
                let Some((landing, role)) = self.fetch(key, origin, None, mark)? else {
                    continue;
                };
                return self
                    .await_fetch(key, value_type, landing, role, deadline, None)
                    .await
                    .map(Some);
            };
            let meta = StoredMeta::from_metadata(record.metadata.as_deref());
            let stale_meta = match meta {
                Some(meta) if !meta.is_fresh_at(now) => meta,
                // Fresh, or written by someone else than the cache (KvService):
                // fresh for as long as the record lives.
                meta => {
                    let entry = inner.store_hit(
                        key,
                        &record,
                        meta.as_ref(),
                        origin.memory_ttl,
                        now,
                        ticket,
                        in_memory,
                    );
                    return answer(key, &entry, Tier::Store, value_type, now).map(Some);
                }
            };
            let stale_entry = MemoryEntry::from_record(&record, Some(&stale_meta), now);
            if stale_meta.may_revalidate_behind_at(now) {
                // No room for a refresh now: the stale copy is served all the
                // same, and a later read refreshes it.
                match self.fetch(key, origin, Some((record, stale_meta)), mark) {
                    Ok(None) => continue,
                    Ok(Some((_, Role::Leader))) => {
                        CacheStats::count(&inner.stats.background_refreshes)
                    }
                    Ok(Some((_, Role::Waiter))) | Err(_) => {}
                }
                CacheStats::count(&inner.stats.stale_serves);
                return answer(key, &stale_entry, Tier::Stale, value_type, now).map(Some);
            }
            let fallback = stale_meta.may_serve_on_error_at(now).then_some(stale_entry);
            let (landing, role) = match self.fetch(key, origin, Some((record, stale_meta)), mark) {
                Ok(Some(flight)) => flight,
                Ok(None) => continue,
                Err(error) => {
                    return match fallback {
                        Some(stale) if error.allows_stale() => {
                            CacheStats::count(&inner.stats.stale_serves);
                            answer(key, &stale, Tier::Stale, value_type, now).map(Some)
                        }
                        _ => Err(error),
                    };
                }
            };
            return self
                .await_fetch(key, value_type, landing, role, deadline, fallback.as_ref())
                .await
                .map(Some);
        }
    }

    /// Joins the fetch of `key` in flight, or starts one (only then copying
    /// what the fetch needs: a waiter allocates nothing for it). Starting
    /// one takes a permit of the origin's and the global
    /// `max_concurrent_fetches`, held by the fetch until it ends, whether or
    /// not anyone still waits for it; without one, nothing is sent.
    ///
    /// With a `mark` taken before the store was read, `Ok(None)` when a
    /// flight of the key landed since: read the store again first.
    fn fetch(
        &self,
        key: &str,
        origin: &OriginConfig,
        stale: Option<(Record, StoredMeta)>,
        mark: Option<LandingMark>,
    ) -> Result<Option<(Landing<FetchResult>, Role)>, CacheError> {
        self.inner
            .flights
            .try_join_since(key, mark, || {
                let permit = self.inner.fetch_limits.try_acquire(origin)?;
                let inner = Arc::clone(&self.inner);
                let (key, origin) = (key.to_string(), origin.clone());
                Ok(async move {
                    let _permit = permit;
                    inner.fetch_from_origin(key, origin, stale).await
                })
            })
            .map_err(|limit| {
                CacheStats::count(&self.inner.stats.fetches_refused);
                CacheError::FetchesExhausted {
                    limit,
                    retry_after: budget::FETCH_RETRY_DELAY.min(origin.timeout),
                }
            })
    }

    /// Origin requests in flight now: to the origin with `prefix`, and to
    /// all origins together.
    pub fn fetches_in_flight(&self, prefix: &str) -> (usize, usize) {
        self.inner.fetch_limits.in_flight(prefix)
    }

    /// Records and bytes the cache has stored from the origin with `prefix`
    /// and counts against its `max_store_entries` / `max_store_bytes`.
    pub fn stored_from_origin(&self, prefix: &str) -> Option<(u64, u64)> {
        let now = self.inner.engine.now_millis();
        self.inner
            .ledgers
            .get(prefix)
            .map(|ledger| ledger.usage(now))
    }

    async fn await_fetch(
        &self,
        key: &str,
        value_type: ValueType,
        landing: Landing<FetchResult>,
        role: Role,
        deadline: Option<Instant>,
        fallback: Option<&MemoryEntry>,
    ) -> Result<CachedValue, CacheError> {
        let stats = &self.inner.stats;
        if role == Role::Waiter {
            CacheStats::count(&stats.coalesced_waiters);
        }
        let started = Instant::now();
        let landed = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), flight::wait(landing))
                .await
                .map_err(|_| CacheError::DeadlineExceeded {
                    waited: started.elapsed(),
                }),
            None => Ok(flight::wait(landing).await),
        };
        let now = self.inner.engine.now_millis();
        let result = match landed {
            Ok(Some(Ok(fetched))) => {
                CacheStats::count(if fetched.tier == Tier::Origin {
                    &stats.origin_hits
                } else {
                    &stats.store_hits
                });
                return answer(key, &fetched.entry, fetched.tier, value_type, now);
            }
            Ok(Some(Err(error))) => Err(CacheError::from(error)),
            Ok(None) => Err(CacheError::OriginUnavailable {
                reason: "the fetch ended without a result".into(),
            }),
            Err(error) => Err(error),
        };
        match (result, fallback) {
            (Err(error), Some(stale)) if error.allows_stale() => {
                tracing::debug!(error = %error, "origin failed; serving a stale copy");
                CacheStats::count(&stats.stale_serves);
                answer(key, stale, Tier::Stale, value_type, now)
            }
            (result, _) => result,
        }
    }

    /// Writes `key` to the store and to memory.
    pub async fn put(&self, command: CachePut) -> Result<CachePutResult, CacheError> {
        let inner = &self.inner;
        let origin = inner.config.origin_for(&command.key);
        if let Some(content_type) = &command.content_type {
            if content_type.len() > MAX_CONTENT_TYPE_BYTES {
                return Err(invalid(
                    "content_type",
                    format!(
                        "content_type is {} bytes; the limit is {MAX_CONTENT_TYPE_BYTES} bytes",
                        content_type.len()
                    ),
                ));
            }
        }
        let memory_ttl_ms = match command.memory_ttl_nanos {
            Some(nanos) if nanos <= 0 => {
                return Err(invalid(
                    "memory_ttl",
                    format!(
                        "memory_ttl is {}; it must be positive",
                        kv::format_seconds(nanos)
                    ),
                ))
            }
            Some(nanos) => u64::try_from((nanos + 999_999) / 1_000_000).unwrap_or(u64::MAX),
            None => origin.map_or(millis(DEFAULT_MEMORY_TTL), |origin| {
                millis(origin.memory_ttl)
            }),
        };
        let expiration = match (command.store_ttl_nanos, origin) {
            (Some(nanos), _) => Expiration::TtlNanos(nanos),
            (None, Some(origin)) => Expiration::TtlNanos(origin.store_ttl.as_nanos() as i128),
            (None, None) => Expiration::Never,
        };
        let now = inner.engine.now_millis();
        let meta = StoredMeta {
            content_type: command.content_type.clone(),
            fetched_at_ms: now,
            memory_ttl_ms: Some(memory_ttl_ms),
            ..StoredMeta::default()
        };
        // The bytes as the store will hold them, for memory; only when the
        // value is small enough to be kept there.
        let fits = |len: usize| len as u64 <= inner.memory.max_entry_bytes();
        let memory_copy = match &command.value {
            Some(Value::Text(text)) if fits(text.len()) => {
                Some((ValueKind::Text, text.as_bytes().to_vec()))
            }
            Some(Value::Bytes(bytes)) if fits(bytes.len()) => {
                Some((ValueKind::Bytes, bytes.clone()))
            }
            Some(Value::Json(json)) => Some((
                ValueKind::Json,
                serde_json::to_vec(json).unwrap_or_default(),
            ))
            .filter(|(_, bytes)| fits(bytes.len())),
            _ => None,
        };
        let ticket = inner.memory.ticket(&command.key);
        let key = command.key.clone();
        let op = inner
            .records
            .prepare_put(
                "",
                PutCommand {
                    key: command.key,
                    value: command.value,
                    metadata: Some(serde_json::json!({ METADATA_FIELD: meta })),
                    expiration,
                    precondition: Precondition::None,
                    schema_version: 0,
                },
            )
            .map_err(store_ttl_violations)?;
        let written = CachePutResult {
            expire_at_millis: op.expire_at_millis,
            version: inner.records.put(op).await?,
        };
        if let Some((kind, bytes)) = memory_copy {
            let memory_until = now.saturating_add(memory_ttl_ms);
            let entry = MemoryEntry {
                kind,
                value: Arc::from(bytes),
                content_type: meta.content_type.as_deref().map(Arc::from),
                version: written.version,
                fetched_at_ms: now,
                memory_until_ms: AtomicU64::new(
                    written
                        .expire_at_millis
                        .map_or(memory_until, |expire| expire.min(memory_until)),
                ),
                expire_at_ms: written.expire_at_millis,
                negative: None,
            };
            inner.memory.fill(&key, entry, ticket);
        }
        Ok(written)
    }

    /// Removes `key` from both tiers; whether a record was there. A fill of
    /// the key in flight (its origin request sent before) stores nothing.
    pub async fn invalidate(&self, key: &str) -> Result<bool, CacheError> {
        // Before the delete (which validates the key): a fill that stored before this is deleted by
        // it, one that had not yet stored will not (see `super::fence`).
        self.inner.fences.invalidate_key(key).await;
        let records = &self.inner.records;
        let op = records.prepare_delete(
            "",
            DeleteCommand {
                key: key.to_string(),
                if_version: None,
            },
        )?;
        let existed = records.delete(op).await?;
        // The delete's change event drops memory too; this also drops a
        // remembered 404, which has no record.
        self.inner.memory.invalidate(key);
        Ok(existed)
    }
}

impl Inner {
    /// Counts a store hit and fills memory from `record`: renews the
    /// expired memory entry in place when it holds the record's version (no
    /// insert, no copy), inserts a new one otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_hit(
        &self,
        key: &str,
        record: &Record,
        meta: Option<&StoredMeta>,
        default_memory_ttl: Duration,
        now: u64,
        ticket: FillTicket,
        in_memory: Option<Arc<MemoryEntry>>,
    ) -> Arc<MemoryEntry> {
        CacheStats::count(&self.stats.store_hits);
        // The memory TTL the entry was stored with, else the default.
        let memory_ttl_ms = meta
            .and_then(|meta| meta.memory_ttl_ms)
            .unwrap_or(millis(default_memory_ttl));
        let mut memory_until = now.saturating_add(memory_ttl_ms);
        if let Some(until) = meta.and_then(|meta| meta.fresh_until_ms) {
            memory_until = memory_until.min(until);
        }
        if let Some(expire_at) = record.expire_at_millis {
            memory_until = memory_until.min(expire_at);
        }
        if let Some(entry) = in_memory {
            if entry.version == record.version && entry.negative.is_none() {
                entry.renew(memory_until);
                return entry;
            }
        }
        let entry = Arc::new(MemoryEntry::from_record(record, meta, memory_until));
        // A memory TTL of 0 keeps the key out of memory.
        if memory_until > now {
            self.memory.fill_shared(key, Arc::clone(&entry), ticket);
        }
        entry
    }
}

/// The response for `entry`, converted to the representation asked for.
fn answer(
    key: &str,
    entry: &MemoryEntry,
    tier: Tier,
    value_type: ValueType,
    now: u64,
) -> Result<CachedValue, CacheError> {
    let value = kv::convert_value(key, entry.kind, entry.value.to_vec(), value_type)?;
    Ok(CachedValue {
        value,
        content_type: entry.content_type.as_deref().map(str::to_string),
        tier,
        age_ms: if entry.fetched_at_ms == 0 {
            0
        } else {
            now.saturating_sub(entry.fetched_at_ms)
        },
        expire_at_millis: entry.expire_at_ms,
        version: entry.version,
        stored: entry.version != 0,
    })
}
