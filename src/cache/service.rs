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

use thiserror::Error;

use crate::engine::{
    DeleteOp, Engine, EngineError, Precondition, PutOp, Record, ScanRequest, ValueKind, WriteOp,
    WriteOutcome,
};
use crate::kv::limits::{MAX_JSON_DEPTH, MAX_LIST_EXAMINED, MAX_VALUE_BYTES};
use crate::kv::{
    self, DeleteCommand, Expiration, FieldViolation, KvError, KvService, PutCommand, ReadValue,
    Value, ValueType,
};

use super::budget::{self, FetchLimit, FetchLimits, StoreLedgers};
use super::config::{CacheConfig, OriginConfig};
use super::entry::{kind_for_body, MemoryEntry, StoredMeta, METADATA_FIELD};
use super::fence::{Fences, FillFence};
use super::flight::{self, Flights, Landing, Role};
use super::memory::{FillTicket, MemoryTier};
use super::origin::{Freshness, OriginClient, OriginError, OriginResponse, Validators};
use super::stats::CacheStats;

/// How long memory answers for a key without an origin, unless its Put said
/// otherwise (the seed's one minute).
pub const DEFAULT_MEMORY_TTL: Duration = Duration::from_secs(60);
/// Keys deleted per batch by a purge: one bounded write at a time.
pub const PURGE_BATCH_KEYS: usize = 1000;
/// Most keys one purge lists and deletes: its listing (keys and versions) is
/// held in memory, and its confirmation counts it. A prefix holding more is
/// purged by calling again (the response says `more`).
pub const MAX_PURGE_KEYS: usize = 10_000;
/// Longest content type a Put may set.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;

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

/// A purge of the keys under a prefix, guarded like `DropNamespace`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurgeCommand {
    /// Every live key starting with this (not empty) is listed.
    pub prefix: String,
    /// The number of keys the purge lists, as a confirmation: nothing is
    /// deleted unless it matches.
    pub expected_keys: Option<u64>,
    /// List and count only; delete nothing.
    pub dry_run: bool,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeOutcome {
    /// Records deleted (0 for a dry run).
    pub purged: u64,
    /// Live keys listed under the prefix, at most [`MAX_PURGE_KEYS`].
    pub listed: u64,
    /// Listed keys left as they are because they were rewritten or deleted
    /// after the listing.
    pub skipped: u64,
    /// The prefix holds more keys than one purge lists: call again.
    pub more: bool,
}

/// What a Put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePutResult {
    /// The record's new version.
    pub version: u64,
    /// When the record expires.
    pub expire_at_millis: Option<u64>,
}

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
    fn allows_stale(&self) -> bool {
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
        format!(
            "prefix {prefix:?} holds more than {actual} live keys{expected}; a purge deletes at \
             most {MAX_PURGE_KEYS}: pass expected_keys = {actual} to purge the first {actual}, \
             then call again"
        )
    } else {
        format!(
            "prefix {prefix:?} holds {actual} live keys{expected}; pass expected_keys = {actual} \
             to purge them"
        )
    }
}

/// What one origin fetch gives every caller that waited on it.
#[derive(Debug, Clone)]
struct Fetched {
    /// The value to answer with.
    entry: Arc<MemoryEntry>,
    /// [`Tier::Origin`], or [`Tier::Store`] when a newer committed record
    /// answers instead of the origin's (older) answer.
    tier: Tier,
}

impl Fetched {
    fn origin(entry: MemoryEntry) -> Self {
        Self {
            entry: Arc::new(entry),
            tier: Tier::Origin,
        }
    }
}

/// The outcome of one origin fetch, shared by every caller that waited on it.
type FetchResult = Result<Fetched, FetchError>;

/// [`CacheError`]s a fetch can end with, cloneable for its waiters.
#[derive(Debug, Clone)]
enum FetchError {
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

/// The Cache service; cheap to clone.
#[derive(Clone)]
pub struct CacheService {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    /// Validation, ownership and writes of Put and Invalidate, exactly as
    /// `KvService` does them.
    kv: KvService,
    config: CacheConfig,
    origin: Option<OriginClient>,
    memory: Arc<MemoryTier>,
    flights: Arc<Flights<FetchResult>>,
    /// Fills in flight, so that Invalidate and Purge can bar them.
    fences: Fences,
    /// Origin requests in flight, per origin and in all.
    fetch_limits: FetchLimits,
    /// What the cache stored from each origin, against its store caps.
    ledgers: Arc<StoreLedgers>,
    stats: Arc<CacheStats>,
}

/// How long a fetched response may be kept, from the origin's configuration
/// and (when honoured) its `Cache-Control`.
#[derive(Debug, Clone, Copy)]
struct Lifetimes {
    store: bool,
    store_ttl_ms: u64,
    memory_ttl_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
}

impl Lifetimes {
    fn new(origin: &OriginConfig, freshness: &Freshness) -> Self {
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
    fn record_expire_at(&self, now: u64) -> u64 {
        now.saturating_add(self.store_ttl_ms)
            .saturating_add(self.stale_while_revalidate_ms.max(self.stale_if_error_ms))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn invalid(field: &str, description: String) -> CacheError {
    CacheError::Kv(KvError::InvalidArgument(vec![FieldViolation {
        field: field.to_string(),
        description,
    }]))
}

impl CacheService {
    /// A service over `engine` with `config`'s origins and memory bound,
    /// counting into `stats`. Starts the memory tier's change-feed task, so it
    /// must be called within a Tokio runtime.
    pub fn new(
        engine: Arc<dyn Engine>,
        config: CacheConfig,
        stats: Arc<CacheStats>,
    ) -> Result<Self, OriginError> {
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
                kv: KvService::new(Arc::clone(&engine)),
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
        inner.check_owner("key", key)?;
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
        let ticket = inner.memory.ticket(key);
        let record = inner
            .engine
            .get(key.to_string())
            .await
            .map_err(KvError::from)?;
        let Some(origin) = inner.config.origin_for(key) else {
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
            let (landing, role) = self.fetch(key, origin, None)?;
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
            if let Ok((_, Role::Leader)) = self.fetch(key, origin, Some((record, stale_meta))) {
                CacheStats::count(&inner.stats.background_refreshes);
            }
            CacheStats::count(&inner.stats.stale_serves);
            return answer(key, &stale_entry, Tier::Stale, value_type, now).map(Some);
        }
        let fallback = stale_meta.may_serve_on_error_at(now).then_some(stale_entry);
        let (landing, role) = match self.fetch(key, origin, Some((record, stale_meta))) {
            Ok(flight) => flight,
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
        self.await_fetch(key, value_type, landing, role, deadline, fallback.as_ref())
            .await
            .map(Some)
    }

    /// Joins the fetch of `key` in flight, or starts one (only then copying
    /// what the fetch needs: a waiter allocates nothing for it). Starting
    /// one takes a permit of the origin's and the global
    /// `max_concurrent_fetches`, held by the fetch until it ends, whether or
    /// not anyone still waits for it; without one, nothing is sent.
    fn fetch(
        &self,
        key: &str,
        origin: &OriginConfig,
        stale: Option<(Record, StoredMeta)>,
    ) -> Result<(Landing<FetchResult>, Role), CacheError> {
        self.inner
            .flights
            .try_join(key, || {
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
        let written = inner
            .kv
            .put(PutCommand {
                key: command.key,
                value: command.value,
                metadata: Some(serde_json::json!({ METADATA_FIELD: meta })),
                expiration,
                precondition: Precondition::None,
                schema_version: 0,
            })
            .await
            .map_err(store_ttl_violations)?;
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
        Ok(CachePutResult {
            version: written.version,
            expire_at_millis: written.expire_at_millis,
        })
    }

    /// Removes `key` from both tiers; whether a record was there. A fill of
    /// the key in flight (its origin request sent before) stores nothing.
    pub async fn invalidate(&self, key: &str) -> Result<bool, CacheError> {
        // Before the delete (which validates the key): a fill that stored before this is deleted by
        // it, one that had not yet stored will not (see `super::fence`).
        self.inner.fences.invalidate_key(key).await;
        let existed = self
            .inner
            .kv
            .delete(DeleteCommand {
                key: key.to_string(),
                if_version: None,
            })
            .await?;
        // The delete's change event drops memory too; this also drops a
        // remembered 404, which has no record.
        self.inner.memory.invalidate(key);
        Ok(existed)
    }

    /// Removes the live keys under `command.prefix` — at most
    /// [`MAX_PURGE_KEYS`] of them, listed first — from both tiers, once
    /// `expected_keys` equals the number listed (the guard of
    /// `DropNamespace`); a dry run only lists.
    ///
    /// It deletes only what it listed, each key only at the version it
    /// listed: a key rewritten or deleted after the listing is left as it is
    /// (`skipped`), so a Put racing a purge survives it. Fills of keys under
    /// the prefix whose origin requests went out before the purge store
    /// nothing. Deletes go in batches of [`PURGE_BATCH_KEYS`]; a deadline
    /// reached in between answers [`CacheError::PurgeIncomplete`].
    pub async fn purge(
        &self,
        command: PurgeCommand,
        deadline: Option<Instant>,
    ) -> Result<PurgeOutcome, CacheError> {
        let inner = &self.inner;
        let prefix = command.prefix.as_str();
        if prefix.is_empty() {
            return Err(invalid(
                "prefix",
                "prefix must not be empty: a purge removes the keys under a prefix, and the \
                 empty prefix would remove every key of the store"
                    .into(),
            ));
        }
        kv::validate_prefix("prefix", prefix)
            .map_err(|violation| CacheError::Kv(KvError::InvalidArgument(vec![violation])))?;
        inner.check_owner("prefix", prefix)?;
        if !command.dry_run {
            // Before the listing: a fill that stored before this is listed
            // and deleted, one that had not yet stored will not.
            inner.fences.invalidate_prefix(prefix).await;
        }
        let (listing, more) = inner.list_for_purge(prefix, deadline).await?;
        let mut outcome = PurgeOutcome {
            listed: listing.len() as u64,
            more,
            ..PurgeOutcome::default()
        };
        if command.dry_run {
            return Ok(outcome);
        }
        if command.expected_keys != Some(outcome.listed) {
            return Err(CacheError::PurgeExpectedKeysMismatch {
                prefix: prefix.to_string(),
                expected: command.expected_keys,
                actual: outcome.listed,
                more,
            });
        }
        for batch in listing.chunks(PURGE_BATCH_KEYS) {
            let (purged, skipped) = inner.delete_listed(batch, deadline, outcome.purged).await?;
            outcome.purged += purged;
            outcome.skipped += skipped;
        }
        // Remembered 404s have no record to delete.
        inner.memory.invalidate_prefix(prefix);
        tracing::info!(
            prefix,
            purged = outcome.purged,
            skipped = outcome.skipped,
            "cache prefix purged"
        );
        Ok(outcome)
    }
}

impl Inner {
    /// Refuses a key in a namespace another service owns (`session:`).
    fn check_owner(&self, field: &str, key: &str) -> Result<(), CacheError> {
        let namespaces = self.engine.namespaces();
        if !namespaces.has_owners() {
            return Ok(());
        }
        match namespaces.owner_of(key) {
            None => Ok(()),
            Some((namespace, owner)) => Err(CacheError::Kv(KvError::PermissionDenied {
                field: field.to_string(),
                namespace: namespace.to_string(),
                owner: owner.to_string(),
            })),
        }
    }

    /// The live keys under `prefix` with their versions, in key order: at
    /// most [`MAX_PURGE_KEYS`], and whether there are more.
    async fn list_for_purge(
        &self,
        prefix: &str,
        deadline: Option<Instant>,
    ) -> Result<(Vec<(String, u64)>, bool), CacheError> {
        let mut listing = Vec::new();
        let mut start_after = None;
        loop {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(CacheError::PurgeIncomplete { purged: 0 });
            }
            // One key beyond the bound tells whether there are more.
            let limit = (MAX_PURGE_KEYS + 1 - listing.len()).min(PURGE_BATCH_KEYS);
            // Scans leave out namespaces other services own (session:).
            let page = self
                .engine
                .scan(ScanRequest {
                    prefix: prefix.to_string(),
                    start_after: start_after.take(),
                    limit,
                    include_values: false,
                    max_examined: MAX_LIST_EXAMINED,
                })
                .await
                .map_err(KvError::from)?;
            let complete = page.entries.len() < limit && page.resume_after.is_none();
            let next = page
                .resume_after
                .clone()
                .or_else(|| page.entries.last().map(|(key, _)| key.clone()));
            listing.extend(
                page.entries
                    .into_iter()
                    .map(|(key, record)| (key, record.version)),
            );
            if listing.len() > MAX_PURGE_KEYS {
                listing.truncate(MAX_PURGE_KEYS);
                return Ok((listing, true));
            }
            match next {
                Some(next) if !complete => start_after = Some(next),
                _ => return Ok((listing, false)),
            }
        }
    }

    /// Deletes each listed key at its listed version, in one atomic batch
    /// per attempt: a key whose version changed since fails the batch, is
    /// left out and the rest is tried again. Returns (deleted, skipped).
    /// `purged` (deleted by earlier batches) is for the deadline's error.
    async fn delete_listed(
        &self,
        batch: &[(String, u64)],
        deadline: Option<Instant>,
        purged: u64,
    ) -> Result<(u64, u64), CacheError> {
        let mut pending = batch.to_vec();
        let mut skipped = 0u64;
        while !pending.is_empty() {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(CacheError::PurgeIncomplete { purged });
            }
            let deletes = pending
                .iter()
                .map(|(key, version)| {
                    WriteOp::Delete(DeleteOp {
                        key: key.clone(),
                        precondition: Precondition::IfVersion(*version),
                    })
                })
                .collect();
            match self.engine.write(deletes).await {
                Ok(outcomes) => {
                    let deleted = outcomes
                        .iter()
                        .filter(|outcome| matches!(outcome, WriteOutcome::Delete { existed: true }))
                        .count() as u64;
                    return Ok((deleted, skipped + pending.len() as u64 - deleted));
                }
                Err(EngineError::PreconditionFailed { index, .. }) if index < pending.len() => {
                    // Rewritten or deleted since the listing: not ours to delete.
                    pending.remove(index);
                    skipped += 1;
                }
                Err(error) => return Err(CacheError::Kv(KvError::from(error))),
            }
        }
        Ok((0, skipped))
    }

    /// Counts a store hit and fills memory from `record`: renews the
    /// expired memory entry in place when it holds the record's version (no
    /// insert, no copy), inserts a new one otherwise.
    #[allow(clippy::too_many_arguments)]
    fn store_hit(
        &self,
        key: &str,
        record: &Record,
        meta: Option<&StoredMeta>,
        default_memory_ttl: Duration,
        now: u64,
        ticket: super::memory::FillTicket,
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

    /// Asks the origin for `key` (conditionally when a stale copy has
    /// validators) and updates both tiers with the answer.
    async fn fetch_from_origin(
        self: Arc<Self>,
        key: String,
        origin: OriginConfig,
        stale: Option<(Record, StoredMeta)>,
    ) -> FetchResult {
        let Some(client) = &self.origin else {
            return Err(FetchError::Unavailable("no origin client".into()));
        };
        CacheStats::count(&self.stats.origin_requests);
        // Before the origin request: an Invalidate or Purge from now on bars
        // this fill from storing.
        let fence = self.fences.begin(&key);
        let ticket = self.memory.ticket(&key);
        let validators = stale.as_ref().map(|(_, meta)| Validators {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified.clone(),
        });
        let response = client
            .fetch(&key, validators.as_ref(), origin.timeout)
            .await
            .map_err(|error| {
                CacheStats::count(&self.stats.origin_errors);
                tracing::debug!(error = %error, "origin request failed");
                FetchError::from(error)
            })?;
        let now = self.engine.now_millis();
        match response {
            OriginResponse::Fresh {
                body,
                content_type,
                validators,
                freshness,
                ..
            } => {
                let lifetimes = Lifetimes::new(&origin, &freshness);
                let kind = kind_for_body(content_type.as_deref(), &body, MAX_JSON_DEPTH);
                let value: Vec<u8> = body.into();
                let meta = StoredMeta {
                    content_type,
                    etag: validators.etag,
                    last_modified: validators.last_modified,
                    fetched_at_ms: now,
                    fresh_until_ms: Some(now.saturating_add(lifetimes.store_ttl_ms)),
                    stale_while_revalidate_ms: lifetimes.stale_while_revalidate_ms,
                    stale_if_error_ms: lifetimes.stale_if_error_ms,
                    memory_ttl_ms: Some(lifetimes.memory_ttl_ms),
                };
                let entry = MemoryEntry {
                    kind,
                    value: Arc::from(value.as_slice()),
                    content_type: meta.content_type.as_deref().map(Arc::from),
                    version: 0,
                    fetched_at_ms: now,
                    memory_until_ms: AtomicU64::new(now.saturating_add(lifetimes.memory_ttl_ms)),
                    expire_at_ms: meta.fresh_until_ms,
                    negative: None,
                };
                let expire_at = lifetimes.record_expire_at(now);
                if !lifetimes.store || expire_at <= now || value.len() > MAX_VALUE_BYTES {
                    return Ok(Fetched::origin(entry));
                }
                // Never over a newer commit: a cold fill only while the key
                // is absent, a refresh only over the copy it refreshed.
                let precondition = match &stale {
                    // The copy expired meanwhile: the key is cold again.
                    Some((record, _))
                        if record.expire_at_millis.is_some_and(|expire| expire <= now) =>
                    {
                        Precondition::IfAbsent
                    }
                    Some((record, _)) => Precondition::IfVersion(record.version),
                    None => Precondition::IfAbsent,
                };
                let put = PutOp {
                    key: key.clone(),
                    kind,
                    metadata: Some(meta.to_metadata()),
                    value,
                    expire_at_millis: Some(expire_at),
                    schema_version: 1,
                    precondition,
                };
                // Beyond the origin's store caps: served, not stored.
                if !self.admit_store(&origin, &put).await {
                    return Ok(Fetched::origin(entry));
                }
                Ok(self
                    .store_fetched(&fence, ticket, put, entry, lifetimes.memory_ttl_ms, now)
                    .await)
            }
            OriginResponse::NotModified {
                validators,
                freshness,
            } => {
                let Some((record, old)) = stale else {
                    CacheStats::count(&self.stats.origin_errors);
                    return Err(FetchError::Unavailable(
                        "the origin answered 304 Not Modified to an unconditional request".into(),
                    ));
                };
                let lifetimes = Lifetimes::new(&origin, &freshness);
                let meta = StoredMeta {
                    etag: validators.etag.or(old.etag),
                    last_modified: validators.last_modified.or(old.last_modified),
                    fetched_at_ms: now,
                    fresh_until_ms: Some(now.saturating_add(lifetimes.store_ttl_ms)),
                    stale_while_revalidate_ms: lifetimes.stale_while_revalidate_ms,
                    stale_if_error_ms: lifetimes.stale_if_error_ms,
                    memory_ttl_ms: Some(lifetimes.memory_ttl_ms),
                    content_type: old.content_type,
                };
                let entry = MemoryEntry::from_record(
                    &record,
                    Some(&meta),
                    now.saturating_add(lifetimes.memory_ttl_ms),
                );
                let expire_at = lifetimes.record_expire_at(now);
                if !lifetimes.store || expire_at <= now {
                    // The stored copy, as it is.
                    return Ok(Fetched::origin(entry));
                }
                // Only over the copy that was revalidated: a newer write wins.
                let put = PutOp {
                    key: key.clone(),
                    kind: record.kind,
                    value: record.value,
                    metadata: Some(meta.to_metadata()),
                    expire_at_millis: Some(expire_at),
                    schema_version: record.schema_version,
                    precondition: Precondition::IfVersion(record.version),
                };
                let fetched = self
                    .store_fetched(&fence, ticket, put, entry, lifetimes.memory_ttl_ms, now)
                    .await;
                // The revalidated copy stays counted, now until its new expiry.
                if fetched.tier == Tier::Origin && fetched.entry.version > 0 {
                    if let Some(ledger) = self.ledgers.get(&origin.prefix) {
                        ledger.renew(&key, expire_at);
                    }
                }
                Ok(fetched)
            }
            OriginResponse::Missing { status, freshness } => {
                let mut negative_ttl = origin.negative_ttl;
                if origin.honor_cache_control {
                    if !freshness.store {
                        negative_ttl = Duration::ZERO;
                    }
                    if let Some(max_age) = freshness.max_age {
                        negative_ttl = negative_ttl.min(max_age);
                    }
                }
                let mut ticket = ticket;
                if let Some((record, _)) = stale {
                    // The resource is gone: so is its copy (unless rewritten meanwhile).
                    let delete = WriteOp::Delete(DeleteOp {
                        key: key.clone(),
                        precondition: Precondition::IfVersion(record.version),
                    });
                    let sequence = match self.engine.write(vec![delete]).await {
                        Ok(receipt) => receipt.sequence,
                        Err(_) => self.engine.acknowledged_sequence(),
                    };
                    // Our own delete would fail the earlier ticket: take a new
                    // one once its event is applied (if the feed is late, the
                    // fill below just fails), and check the store is still empty.
                    self.memory.catch_up_to(sequence, None).await;
                    ticket = self.memory.ticket(&key);
                    if !matches!(self.engine.get(key.clone()).await, Ok(None)) {
                        return Err(FetchError::NotFound(status));
                    }
                }
                if !negative_ttl.is_zero() {
                    let entry = MemoryEntry {
                        kind: ValueKind::Bytes,
                        value: Arc::from(Vec::new()),
                        content_type: None,
                        version: 0,
                        fetched_at_ms: now,
                        memory_until_ms: AtomicU64::new(now.saturating_add(millis(negative_ttl))),
                        expire_at_ms: None,
                        negative: Some(status),
                    };
                    // Not after an Invalidate or Purge that began meanwhile:
                    // the resource may exist again.
                    if let Some(_admitted) = fence.admit().await {
                        self.memory.fill(&key, entry, ticket);
                    }
                }
                Err(FetchError::NotFound(status))
            }
        }
    }

    /// Reserves room in the origin's store budget for `put`; false (counted)
    /// when it does not fit.
    async fn admit_store(&self, origin: &OriginConfig, put: &PutOp) -> bool {
        let Some(ledger) = self.ledgers.get(&origin.prefix) else {
            return true;
        };
        let bytes = budget::record_bytes(
            &put.key,
            put.value.len(),
            put.metadata.as_ref().map_or(0, Vec::len),
        );
        let expire_at = put.expire_at_millis.unwrap_or(u64::MAX);
        let admitted = ledger
            .admit(self.engine.as_ref(), &put.key, bytes, expire_at)
            .await;
        if !admitted {
            CacheStats::count(&self.stats.stores_refused);
        }
        admitted
    }

    /// Stores a fetched answer with `put` (whose precondition says what it
    /// may replace) and puts `entry` in memory — unless the key was
    /// invalidated since `fence` was taken or the precondition fails. The
    /// callers get the stored entry; else the newer committed record (tier
    /// STORE) if a newer write won; else `entry` unstored (version 0).
    async fn store_fetched(
        &self,
        fence: &FillFence<'_>,
        ticket: FillTicket,
        put: PutOp,
        mut entry: MemoryEntry,
        memory_ttl_ms: u64,
        now: u64,
    ) -> Fetched {
        entry.version = 0;
        let key = put.key.clone();
        let Some(admitted) = fence.admit().await else {
            CacheStats::count(&self.stats.discarded_fills);
            tracing::debug!("an invalidation came first; the origin's answer is not stored");
            return Fetched::origin(entry);
        };
        match self.engine.write(vec![WriteOp::Put(put)]).await {
            Ok(outcomes) => {
                if let Some(WriteOutcome::Put { version }) = outcomes.first() {
                    entry.version = *version;
                }
                let entry = Arc::new(entry);
                if entry.version > 0 && memory_ttl_ms > 0 {
                    self.memory.fill_shared(&key, Arc::clone(&entry), ticket);
                }
                drop(admitted);
                Fetched {
                    entry,
                    tier: Tier::Origin,
                }
            }
            Err(EngineError::PreconditionFailed { .. }) => {
                drop(admitted);
                CacheStats::count(&self.stats.discarded_fills);
                tracing::debug!("a newer commit came first; the origin's answer is not stored");
                match self.engine.get(key).await {
                    Ok(Some(record)) => {
                        let meta = StoredMeta::from_metadata(record.metadata.as_deref());
                        Fetched {
                            entry: Arc::new(MemoryEntry::from_record(&record, meta.as_ref(), now)),
                            tier: Tier::Store,
                        }
                    }
                    // Deleted (or unreadable): the answer, not stored.
                    _ => Fetched::origin(entry),
                }
            }
            Err(error) => {
                tracing::warn!(error = %error.log_summary(), "storing an origin response failed");
                Fetched::origin(entry)
            }
        }
    }
}

/// The KV service names the record's TTL `ttl`; here it is `store_ttl`.
fn store_ttl_violations(error: KvError) -> CacheError {
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
