//! The `[cache]` section of the server configuration: the memory tier's bound
//! and the HTTP origins keys read through.
//!
//! ```toml
//! [cache]
//! memory_mb = 64
//!
//! [[cache.origins]]
//! prefix = "cache:api:"
//! url = "https://api.example.com/{key}"
//! memory_ttl = "60s"
//! store_ttl = "5m"
//! ```
//!
//! Durations are strings with a unit (`"250ms"`, `"60s"`, `"5m"`, `"1h"`,
//! `"1d"`, or several: `"1m30s"`); a bare number is refused because it would
//! be ambiguous.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::url_template::UrlTemplate;
use crate::engine::namespace::DEFAULT_NAMESPACE;
use crate::engine::Namespaces;
use crate::records::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES, MIN_TTL};

mod durations;
pub use durations::{duration, format_duration, parse_duration};

/// Largest `memory_mb` accepted (1 TiB), so the byte bound cannot overflow.
pub const MEMORY_MB_CEILING: usize = 1024 * 1024;
/// Longest duration any cache setting accepts (3650 days), so deadlines and
/// expiry times computed from them stay far from overflow.
pub const DURATION_CEILING: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Largest `max_concurrent_fetches` accepted (the global one and each
/// origin's): far above what one server can usefully keep in flight, and
/// within what a semaphore holds.
pub const MAX_CONCURRENT_FETCHES: usize = 65_536;

/// Request headers an origin may not be configured with: they are set by the
/// client itself (`Host`, framing, conditionals) or would change what comes
/// back (`Range` would make partial bodies).
pub const REFUSED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
];

/// The `[cache]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound of the memory tier (L1), in MiB of keys and values.
    pub memory_mb: usize,
    /// Most origin requests in flight at once, all origins together (each
    /// origin has its own `max_concurrent_fetches` too). A read that would
    /// start one more is refused with RESOURCE_EXHAUSTED, so callers cannot
    /// turn cheap reads into unbounded origin traffic.
    pub max_concurrent_fetches: usize,
    /// The origins (`[[cache.origins]]`); a key under one of their prefixes
    /// reads through that origin.
    pub origins: Vec<OriginConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_mb: 64,
            max_concurrent_fetches: defaults::global_max_concurrent_fetches(),
            origins: Vec::new(),
        }
    }
}

/// One `[[cache.origins]]` entry: which keys read through which URL, and how
/// long what comes back is kept.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Keys starting with this prefix read through this origin. It must lie
    /// inside one configured namespace (not owned by another service), and no
    /// two origins may share it; the longest matching prefix wins.
    pub prefix: String,
    /// URL template, `http://` or `https://`, with exactly one `{key}` in its
    /// path. `{key}` becomes the key after the prefix as one percent-encoded
    /// path segment.
    pub url: String,
    /// How long a value stays in memory (L1); 0 keeps it out of memory. At
    /// most `store_ttl`, so memory never outlives the stored record.
    #[serde(default = "defaults::memory_ttl", with = "duration")]
    pub memory_ttl: Duration,
    /// How long a value is stored (L2); at least 1s, the KV TTL minimum.
    #[serde(default = "defaults::store_ttl", with = "duration")]
    pub store_ttl: Duration,
    /// Longest an origin request may take, connection, headers and body
    /// together; a caller's shorter deadline shortens it.
    #[serde(default = "defaults::timeout", with = "duration")]
    pub timeout: Duration,
    /// How long past expiry a value may still be served while one background
    /// request refreshes it (RFC 5861); 0 disables.
    #[serde(default, with = "duration")]
    pub stale_while_revalidate: Duration,
    /// How long past expiry a value may still be served when the origin fails
    /// or times out (RFC 5861); 0 disables.
    #[serde(default, with = "duration")]
    pub stale_if_error: Duration,
    /// How long a 404 or 410 is remembered; 0 asks the origin every time.
    /// Otherwise at least 1s.
    #[serde(default = "defaults::negative_ttl", with = "duration")]
    pub negative_ttl: Duration,
    /// Largest body accepted from the origin, in bytes; at most the KV value
    /// limit (25 MiB).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Whether the origin's `Cache-Control` (`no-store`, `private`,
    /// `no-cache`, `max-age`, `s-maxage`, stale extensions) is obeyed.
    #[serde(default = "defaults::honor_cache_control")]
    pub honor_cache_control: bool,
    /// Extra request headers (an API key, `Accept`). Names and values must be
    /// valid HTTP; `Host`, framing, `Range` and conditional headers are
    /// refused. Values are never logged nor put in error messages.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A PEM file of extra root certificates trusted for this origin, on top
    /// of the system's and the bundled webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Most requests to this origin in flight at once (background refreshes
    /// and fills whose callers gave up included: they run on, for the other
    /// callers, and hold their place until they end). Beyond it a read that
    /// needs the origin is refused with RESOURCE_EXHAUSTED and a retry delay.
    #[serde(default = "defaults::max_concurrent_fetches")]
    pub max_concurrent_fetches: usize,
    /// Most records the cache keeps stored (L2) from this origin's answers.
    /// Beyond it an answer is served but not stored (nothing is evicted);
    /// records written by clients under the prefix are not counted and never
    /// dropped.
    #[serde(default = "defaults::max_store_entries")]
    pub max_store_entries: u64,
    /// Most bytes (keys, values and cache metadata) of those records; beyond
    /// it, as for `max_store_entries`, answers are served unstored.
    #[serde(default = "defaults::max_store_bytes")]
    pub max_store_bytes: u64,
}

mod defaults {
    use std::time::Duration;

    pub fn memory_ttl() -> Duration {
        Duration::from_secs(60)
    }
    pub fn store_ttl() -> Duration {
        Duration::from_secs(300)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn negative_ttl() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_body_bytes() -> usize {
        super::MAX_VALUE_BYTES
    }
    pub fn honor_cache_control() -> bool {
        true
    }
    pub fn max_concurrent_fetches() -> usize {
        32
    }
    pub fn global_max_concurrent_fetches() -> usize {
        256
    }
    pub fn max_store_entries() -> u64 {
        100_000
    }
    pub fn max_store_bytes() -> u64 {
        1024 * 1024 * 1024
    }
}

impl OriginConfig {
    /// An origin with every optional setting at its default.
    pub fn new(prefix: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            url: url.into(),
            memory_ttl: defaults::memory_ttl(),
            store_ttl: defaults::store_ttl(),
            timeout: defaults::timeout(),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            negative_ttl: defaults::negative_ttl(),
            max_body_bytes: defaults::max_body_bytes(),
            honor_cache_control: defaults::honor_cache_control(),
            headers: BTreeMap::new(),
            ca_file: None,
            max_concurrent_fetches: defaults::max_concurrent_fetches(),
            max_store_entries: defaults::max_store_entries(),
            max_store_bytes: defaults::max_store_bytes(),
        }
    }

    /// Checks this origin alone; `field` is its place in the file
    /// (`cache.origins[1]`), which every message starts with.
    fn validate(&self, field: &str) -> Result<(), String> {
        if self.prefix.is_empty() {
            return Err(format!(
                "{field}.prefix must not be empty (an origin for every key would shadow the whole store)"
            ));
        }
        if self.prefix.len() > MAX_KEY_BYTES {
            return Err(format!(
                "{field}.prefix is {} bytes; the limit is {MAX_KEY_BYTES}",
                self.prefix.len()
            ));
        }
        UrlTemplate::parse(&self.url).map_err(|error| format!("{field}.url: {error}"))?;
        for (name, value) in [
            ("memory_ttl", self.memory_ttl),
            ("store_ttl", self.store_ttl),
            ("timeout", self.timeout),
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
            ("negative_ttl", self.negative_ttl),
        ] {
            if value > DURATION_CEILING {
                return Err(format!(
                    "{field}.{name} is {}; the most is 3650d",
                    format_duration(value)
                ));
            }
        }
        if self.store_ttl < MIN_TTL {
            return Err(format!(
                "{field}.store_ttl is {}; it must be at least {} (the shortest TTL a stored record can have)",
                format_duration(self.store_ttl),
                format_duration(MIN_TTL)
            ));
        }
        if self.memory_ttl > self.store_ttl {
            return Err(format!(
                "{field}.memory_ttl is {}; it must be at most {field}.store_ttl ({}), so memory never serves a record the store has expired",
                format_duration(self.memory_ttl),
                format_duration(self.store_ttl)
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!("{field}.timeout must be more than 0"));
        }
        if !self.negative_ttl.is_zero() && self.negative_ttl < MIN_TTL {
            return Err(format!(
                "{field}.negative_ttl is {}; it must be 0 (do not remember misses) or at least {}",
                format_duration(self.negative_ttl),
                format_duration(MIN_TTL)
            ));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_VALUE_BYTES {
            return Err(format!(
                "{field}.max_body_bytes is {}; it must be between 1 and {MAX_VALUE_BYTES} (the largest value the store keeps)",
                self.max_body_bytes
            ));
        }
        if self.max_concurrent_fetches == 0 || self.max_concurrent_fetches > MAX_CONCURRENT_FETCHES
        {
            return Err(format!(
                "{field}.max_concurrent_fetches is {}; it must be between 1 and {MAX_CONCURRENT_FETCHES}",
                self.max_concurrent_fetches
            ));
        }
        if self.max_store_entries == 0 {
            return Err(format!(
                "{field}.max_store_entries is 0; it must be at least 1"
            ));
        }
        if self.max_store_bytes == 0 {
            return Err(format!(
                "{field}.max_store_bytes is 0; it must be at least 1"
            ));
        }
        for (name, value) in &self.headers {
            let parsed = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("{field}.headers: {name:?} is not a valid HTTP header name")
            })?;
            if REFUSED_HEADERS.contains(&parsed.as_str()) {
                return Err(format!(
                    "{field}.headers: {name:?} cannot be configured; the client sets it itself or it would change what the origin returns"
                ));
            }
            // The value may be a secret: say what is wrong, never what it is.
            http::HeaderValue::from_str(value).map_err(|_| {
                format!(
                    "{field}.headers.{name}: the value is not a valid HTTP header value (visible ASCII, spaces and tabs only; the value is not shown)"
                )
            })?;
        }
        Ok(())
    }
}

impl Default for OriginConfig {
    /// Defaults with an empty prefix and URL, which validation refuses: a
    /// base for `OriginConfig { prefix, url, ..Default::default() }`.
    fn default() -> Self {
        Self::new("", "")
    }
}

impl CacheConfig {
    /// The origin whose prefix is the longest one `key` starts with.
    pub fn origin_for(&self, key: &str) -> Option<&OriginConfig> {
        self.origins
            .iter()
            .filter(|origin| key.starts_with(origin.prefix.as_str()))
            .max_by_key(|origin| origin.prefix.len())
    }

    /// The L1 bound in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_mb as u64).saturating_mul(1024 * 1024)
    }

    /// Checks values that parse but make no sense; each message names the
    /// setting (`cache.origins[1].url: ...`). `namespaces` are the configured
    /// ones, with their owners.
    pub fn validate(&self, namespaces: &Namespaces) -> Result<(), String> {
        if self.memory_mb == 0 || self.memory_mb > MEMORY_MB_CEILING {
            return Err(format!(
                "cache.memory_mb is {}; it must be between 1 and {MEMORY_MB_CEILING}",
                self.memory_mb
            ));
        }
        if self.max_concurrent_fetches == 0 || self.max_concurrent_fetches > MAX_CONCURRENT_FETCHES
        {
            return Err(format!(
                "cache.max_concurrent_fetches is {}; it must be between 1 and {MAX_CONCURRENT_FETCHES}",
                self.max_concurrent_fetches
            ));
        }
        for (index, origin) in self.origins.iter().enumerate() {
            let field = format!("cache.origins[{index}]");
            origin.validate(&field)?;
            if let Some(first) = self.origins[..index]
                .iter()
                .position(|other| other.prefix == origin.prefix)
            {
                return Err(format!(
                    "{field}.prefix {:?} is also the prefix of cache.origins[{first}]; each prefix reads through one origin",
                    origin.prefix
                ));
            }
            check_namespace(&field, &origin.prefix, namespaces)?;
        }
        Ok(())
    }
}

/// An origin's keys are stored as ordinary records, so they must all land in
/// one namespace, and not in one a service keeps its internals in.
fn check_namespace(field: &str, prefix: &str, namespaces: &Namespaces) -> Result<(), String> {
    let id = namespaces.route(prefix);
    if id == DEFAULT_NAMESPACE {
        return Err(format!(
            "{field}.prefix {prefix:?} is not inside a configured namespace; add a namespace it starts with (like \"cache:\") to namespaces"
        ));
    }
    if let Some(owner) = namespaces.owner(id) {
        return Err(format!(
            "{field}.prefix {prefix:?} is inside namespace {:?}, which {owner} owns",
            namespaces.prefix(id)
        ));
    }
    if let Some(nested) = namespaces
        .configured_prefixes()
        .find(|other| other.len() > prefix.len() && other.starts_with(prefix))
    {
        return Err(format!(
            "{field}.prefix {prefix:?} spans namespaces {:?} and {nested:?}; an origin's keys must all be in one namespace",
            namespaces.prefix(id)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
