//! Filling the tiers from an origin: one fetch per cold or stale key, its
//! answer stored (never over a newer commit, never after an invalidation
//! that began meanwhile) and put in memory.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{DeleteOp, Precondition, PutOp, Record, ValueKind, WriteOp};
use crate::kv::KvError;
use crate::records::limits::{MAX_JSON_DEPTH, MAX_VALUE_BYTES};

use super::budget;
use super::config::OriginConfig;
use super::entry::{kind_for_body, MemoryEntry, StoredMeta};
use super::error::FetchError;
use super::fence::FillFence;
use super::freshness::{millis, Lifetimes};
use super::memory::FillTicket;
use super::origin::{OriginResponse, Validators};
use super::service::{FetchResult, Fetched, Inner, Tier};
use super::stats::CacheStats;

impl Fetched {
    fn origin(entry: MemoryEntry) -> Self {
        Self {
            entry: Arc::new(entry),
            tier: Tier::Origin,
        }
    }
}

impl Inner {
    /// Asks the origin for `key` (conditionally when a stale copy has
    /// validators) and updates both tiers with the answer.
    pub(super) async fn fetch_from_origin(
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
                let meta = lifetimes.stored_meta(now, content_type, validators);
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
                let Some(expire_at) = lifetimes
                    .storable_until(now)
                    .filter(|_| value.len() <= MAX_VALUE_BYTES)
                else {
                    return Ok(Fetched::origin(entry));
                };
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
                let meta = lifetimes.stored_meta(
                    now,
                    old.content_type,
                    Validators {
                        etag: validators.etag.or(old.etag),
                        last_modified: validators.last_modified.or(old.last_modified),
                    },
                );
                let entry = MemoryEntry::from_record(
                    &record,
                    Some(&meta),
                    now.saturating_add(lifetimes.memory_ttl_ms),
                );
                let Some(expire_at) = lifetimes.storable_until(now) else {
                    // The stored copy, as it is.
                    return Ok(Fetched::origin(entry));
                };
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
                    let sequence = match self.records.write(vec![delete]).await {
                        Ok(receipt) => receipt.sequence,
                        Err(_) => self.engine.acknowledged_sequence(),
                    };
                    // Our own delete would fail the earlier ticket: take a new
                    // one once its event is applied (if the feed is late, the
                    // fill below just fails), and check the store is still empty.
                    self.memory.catch_up_to(sequence, None).await;
                    ticket = self.memory.ticket(&key);
                    if !matches!(self.records.get(&key).await, Ok(None)) {
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
        match self.records.put(put).await {
            Ok(version) => {
                entry.version = version;
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
            Err(KvError::PreconditionFailed { .. }) => {
                drop(admitted);
                CacheStats::count(&self.stats.discarded_fills);
                tracing::debug!("a newer commit came first; the origin's answer is not stored");
                // Read as any reader of the key would: migrated if due.
                match self.records.get(&key).await {
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
                tracing::warn!(error = %kv_log_summary(&error), "storing an origin response failed");
                Fetched::origin(entry)
            }
        }
    }
}

/// An error of the store for the log: engine errors summarised (they can be
/// long), others as they display.
fn kv_log_summary(error: &KvError) -> String {
    match error {
        KvError::Engine(error) => error.log_summary(),
        other => other.to_string(),
    }
}
