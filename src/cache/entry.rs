//! What the cache keeps about a value besides its bytes: in the store, in the
//! record's metadata under [`METADATA_FIELD`]; in memory, a [`MemoryEntry`].
//!
//! A cached record is an ordinary record, so `KvService.Get` returns the
//! origin's body. Its metadata is a JSON object with one member,
//! `tierkv_cache`, holding a [`StoredMeta`]:
//!
//! ```json
//! {"tierkv_cache": {"content_type": "application/json", "etag": "\"v3\"",
//!   "fetched_at_ms": 1764122400000, "fresh_until_ms": 1764122700000,
//!   "stale_while_revalidate_ms": 30000, "stale_if_error_ms": 600000}}
//! ```
//!
//! The record's own expiry (its TTL) is `fresh_until_ms` plus the longer stale
//! window, so a stale copy stays readable for stale serving; whether it is
//! fresh is decided by `fresh_until_ms`. A record without this member (written
//! by `KvService`, say) is fresh for as long as it lives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{Record, ValueKind};

/// The member of a cached record's metadata holding its [`StoredMeta`].
pub const METADATA_FIELD: &str = "tierkv_cache";

/// Longest validator (ETag or Last-Modified) kept; longer ones are dropped,
/// which costs a full fetch instead of a revalidation, so that the metadata
/// stays within the store's metadata limit.
const MAX_VALIDATOR_BYTES: usize = 256;

/// The cache's facts about a stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredMeta {
    /// The origin's (or the writer's) `Content-Type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The origin's `ETag`, for revalidation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The origin's `Last-Modified`, for revalidation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// When the value was fetched (or written), ms since the Unix epoch.
    pub fetched_at_ms: u64,
    /// Until when the value is fresh; `None`: as long as the record lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fresh_until_ms: Option<u64>,
    /// After `fresh_until_ms`, how long a stale copy is served at once while
    /// one background request refreshes it.
    #[serde(skip_serializing_if = "is_zero")]
    pub stale_while_revalidate_ms: u64,
    /// After `fresh_until_ms`, how long a stale copy is served when the origin fails.
    #[serde(skip_serializing_if = "is_zero")]
    pub stale_if_error_ms: u64,
    /// How long a copy stays in memory once read from the store; `None`
    /// for the origin's (or the server's) default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_ttl_ms: Option<u64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl StoredMeta {
    /// The metadata JSON of a record carrying this.
    pub fn to_metadata(&self) -> Vec<u8> {
        let mut meta = self.clone();
        for validator in [&mut meta.etag, &mut meta.last_modified] {
            if validator
                .as_ref()
                .is_some_and(|value| value.len() > MAX_VALIDATOR_BYTES)
            {
                *validator = None;
            }
        }
        serde_json::to_vec(&serde_json::json!({ METADATA_FIELD: meta })).unwrap_or_default()
    }

    /// The cache facts of a record's metadata, if it has them.
    pub fn from_metadata(metadata: Option<&[u8]>) -> Option<Self> {
        /// The record's metadata object, reduced to the cache's member: other
        /// members are skipped without being built (this runs on every
        /// store hit).
        #[derive(Deserialize)]
        struct Envelope {
            tierkv_cache: Option<StoredMeta>,
        }
        serde_json::from_slice::<Envelope>(metadata?)
            .ok()?
            .tierkv_cache
    }

    /// Whether the value is still fresh at `now_ms`.
    pub fn is_fresh_at(&self, now_ms: u64) -> bool {
        self.fresh_until_ms.is_none_or(|until| now_ms < until)
    }

    /// Whether a stale copy may be served at once, refreshed behind.
    pub fn may_revalidate_behind_at(&self, now_ms: u64) -> bool {
        self.fresh_until_ms
            .is_some_and(|until| now_ms < until.saturating_add(self.stale_while_revalidate_ms))
    }

    /// Whether a stale copy may stand in for a failed origin.
    pub fn may_serve_on_error_at(&self, now_ms: u64) -> bool {
        self.fresh_until_ms
            .is_some_and(|until| now_ms < until.saturating_add(self.stale_if_error_ms))
    }
}

/// One entry of the memory tier (L1): a value with what is needed to answer
/// from it, or a remembered 404/410.
#[derive(Debug)]
pub struct MemoryEntry {
    /// How the value was stored.
    pub kind: ValueKind,
    /// The value bytes.
    pub value: Arc<[u8]>,
    /// The value's content type.
    pub content_type: Option<Arc<str>>,
    /// The record's version (0 for entries not in the store).
    pub version: u64,
    /// When the value was fetched or written.
    pub fetched_at_ms: u64,
    /// Until when memory may answer. Atomic so that a store hit of the same
    /// version renews the entry in place instead of inserting a new one (see
    /// [`MemoryEntry::renew`]).
    pub memory_until_ms: AtomicU64,
    /// What `expire_time` a response reports: when the value stops being
    /// fresh, or the record's expiry.
    pub expire_at_ms: Option<u64>,
    /// `Some(status)` for a negatively cached 404/410: no value.
    pub negative: Option<u16>,
}

impl MemoryEntry {
    /// The entry for `record`, answering from memory until `memory_until_ms`.
    pub fn from_record(record: &Record, meta: Option<&StoredMeta>, memory_until_ms: u64) -> Self {
        let fresh_until = meta.and_then(|meta| meta.fresh_until_ms);
        Self {
            kind: record.kind,
            value: Arc::from(record.value.as_slice()),
            content_type: meta
                .and_then(|meta| meta.content_type.as_deref())
                .map(Arc::from),
            version: record.version,
            fetched_at_ms: meta.map_or(0, |meta| meta.fetched_at_ms),
            memory_until_ms: AtomicU64::new(memory_until_ms),
            expire_at_ms: fresh_until.or(record.expire_at_millis),
            negative: None,
        }
    }

    /// Until when memory may answer.
    pub fn memory_until(&self) -> u64 {
        self.memory_until_ms.load(Ordering::Relaxed)
    }

    /// Lets memory answer until `memory_until_ms` again. Only for an entry
    /// holding the version just read from the store: the same version is the
    /// same record, so this is the fill that read would do, without an insert.
    /// It never puts anything back into the tier, so it cannot undo an
    /// invalidation: an entry dropped meanwhile stays dropped.
    pub fn renew(&self, memory_until_ms: u64) {
        self.memory_until_ms
            .store(memory_until_ms, Ordering::Relaxed);
    }

    /// Bytes the entry costs the memory tier, key included: what its weigher
    /// counts against `cache.memory_mb`. The constant covers the entry's
    /// struct, its `Arc`s and moka's own bookkeeping per entry.
    pub fn weight(&self, key: &str) -> u32 {
        const OVERHEAD: usize = 192;
        let bytes = key.len()
            + self.value.len()
            + self.content_type.as_ref().map_or(0, |kind| kind.len())
            + OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The value kind for an origin body: JSON for a JSON media type whose body
/// parses (and nests within `max_depth`), text for `text/*` and other UTF-8
/// bodies of JSON/XML/JavaScript types, bytes otherwise.
pub fn kind_for_body(content_type: Option<&str>, body: &[u8], max_depth: usize) -> ValueKind {
    let media = content_type
        .and_then(|value| value.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json_type = media == "application/json" || media.ends_with("+json");
    if json_type {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            if crate::kv::json_depth(&value) <= max_depth {
                return ValueKind::Json;
            }
        }
    }
    let textual = media.starts_with("text/")
        || json_type
        || media.ends_with("+xml")
        || media == "application/xml"
        || media == "application/javascript";
    if textual && std::str::from_utf8(body).is_ok() {
        return ValueKind::Text;
    }
    ValueKind::Bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata round-trips, drops oversized validators, and ignores
    /// metadata written by someone else.
    #[test]
    fn metadata_round_trips() {
        let meta = StoredMeta {
            content_type: Some("application/json".into()),
            etag: Some("\"v1\"".into()),
            last_modified: Some("x".repeat(300)),
            fetched_at_ms: 5,
            fresh_until_ms: Some(10),
            stale_while_revalidate_ms: 3,
            stale_if_error_ms: 0,
            memory_ttl_ms: None,
        };
        let back = StoredMeta::from_metadata(Some(&meta.to_metadata())).unwrap();
        assert_eq!(back.etag, meta.etag);
        assert_eq!(back.last_modified, None, "too long to keep");
        assert_eq!(back.fresh_until_ms, Some(10));
        assert!(back.is_fresh_at(9) && !back.is_fresh_at(10));
        assert!(back.may_revalidate_behind_at(12) && !back.may_revalidate_behind_at(13));
        assert!(!back.may_serve_on_error_at(10));
        assert_eq!(StoredMeta::from_metadata(Some(b"{\"owner\":1}")), None);
        assert_eq!(StoredMeta::from_metadata(None), None);
    }

    /// JSON media types become JSON only when the body is JSON.
    #[test]
    fn body_kinds() {
        let json = Some("application/json; charset=utf-8");
        assert_eq!(kind_for_body(json, b"{\"a\":1}", 32), ValueKind::Json);
        assert_eq!(kind_for_body(json, b"{oops", 32), ValueKind::Text);
        assert_eq!(
            kind_for_body(Some("application/problem+json"), b"[]", 32),
            ValueKind::Json
        );
        assert_eq!(kind_for_body(json, b"[[1]]", 1), ValueKind::Text);
        assert_eq!(
            kind_for_body(Some("text/plain"), b"hi", 32),
            ValueKind::Text
        );
        assert_eq!(
            kind_for_body(Some("text/plain"), b"\xff", 32),
            ValueKind::Bytes
        );
        assert_eq!(kind_for_body(None, b"hi", 32), ValueKind::Bytes);
        assert_eq!(
            kind_for_body(Some("image/png"), b"hi", 32),
            ValueKind::Bytes
        );
    }
}
