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

use crate::cache::origin::UrlTemplate;
use crate::engine::namespace::DEFAULT_NAMESPACE;
use crate::engine::Namespaces;
use crate::kv::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES, MIN_TTL};

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
        if let Some(path) = &self.ca_file {
            load_ca_file(path).map_err(|error| format!("{field}.ca_file: {error}"))?;
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

/// Reads a PEM bundle of root certificates; fails when it cannot be read or
/// holds no certificate.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| format!("{} is not a PEM certificate bundle", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Writes a duration the way the configuration accepts it (`"1m30s"`).
pub fn format_duration(value: Duration) -> String {
    if value.is_zero() {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut millis = value.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    if out.is_empty() {
        // Below a millisecond.
        out = format!("{}us", value.as_micros());
    }
    out
}

/// Parses `"250ms"`, `"60s"`, `"5m"`, `"1h"`, `"2d"` and sums of them
/// (`"1m30s"`); `"0"` is zero. Whitespace around the text is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        format!("{text:?} is not a duration; write a number with a unit: ms, s, m, h or d (like \"60s\" or \"1m30s\")")
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let millis = number.checked_mul(millis_per_unit).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// `#[serde(with = "duration")]`: durations as strings with units.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes a duration written with a unit (see
    /// [`parse_duration`](super::parse_duration)).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => super::parse_duration(&text).map_err(serde::de::Error::custom),
            Raw::Number(0) => Ok(Duration::ZERO),
            Raw::Number(number) => Err(serde::de::Error::custom(format!(
                "{number} has no unit; write a string like \"{number}s\" or \"{number}ms\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> Namespaces {
        Namespaces::new(["cache:", "cache:nested:", "user:", "session:"])
            .with_owners([("session:", "tierkv.v1.SessionService")])
            .unwrap()
    }

    fn with_origin(origin: OriginConfig) -> CacheConfig {
        CacheConfig {
            origins: vec![origin],
            ..CacheConfig::default()
        }
    }

    fn origin() -> OriginConfig {
        OriginConfig::new("cache:api:", "https://api.example.com/{key}")
    }

    fn error_of(config: CacheConfig) -> String {
        config.validate(&namespaces()).unwrap_err()
    }

    /// The section parses from TOML with defaults filled in and durations
    /// with units.
    #[test]
    fn parses_with_defaults_and_units() {
        let config: CacheConfig = toml::from_str(
            r#"
            memory_mb = 8
            [[origins]]
            prefix = "cache:api:"
            url = "https://api.example.com/{key}"
            memory_ttl = "250ms"
            store_ttl = "1h"
            stale_if_error = "1m30s"
            headers = { Authorization = "Bearer secret" }
            "#,
        )
        .unwrap();
        assert_eq!(config.memory_mb, 8);
        let origin = &config.origins[0];
        assert_eq!(origin.memory_ttl, Duration::from_millis(250));
        assert_eq!(origin.store_ttl, Duration::from_secs(3600));
        assert_eq!(origin.stale_if_error, Duration::from_secs(90));
        assert_eq!(origin.timeout, Duration::from_secs(10));
        assert_eq!(origin.negative_ttl, Duration::from_secs(30));
        assert_eq!(origin.stale_while_revalidate, Duration::ZERO);
        assert_eq!(origin.max_body_bytes, MAX_VALUE_BYTES);
        assert!(origin.honor_cache_control);
        assert_eq!(origin.headers["Authorization"], "Bearer secret");
        assert_eq!(origin.max_concurrent_fetches, 32);
        assert_eq!(origin.max_store_entries, 100_000);
        assert_eq!(origin.max_store_bytes, 1 << 30);
        assert_eq!(config.max_concurrent_fetches, 256);
        config.validate(&namespaces()).unwrap();
        let capped: CacheConfig = toml::from_str(
            r#"
            max_concurrent_fetches = 8
            [[origins]]
            prefix = "cache:api:"
            url = "https://api.example.com/{key}"
            max_concurrent_fetches = 2
            max_store_entries = 10
            max_store_bytes = 4096
            "#,
        )
        .unwrap();
        assert_eq!(capped.max_concurrent_fetches, 8);
        let origin = &capped.origins[0];
        assert_eq!(
            (
                origin.max_concurrent_fetches,
                origin.max_store_entries,
                origin.max_store_bytes
            ),
            (2, 10, 4096)
        );
        assert_eq!(CacheConfig::default().memory_mb, 64);
        CacheConfig::default().validate(&namespaces()).unwrap();
    }

    /// Unknown keys, missing required keys and unitless durations are refused
    /// by name.
    #[test]
    fn refuses_unknown_keys_and_bad_durations() {
        let error = toml::from_str::<CacheConfig>("memory_bytes = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("memory_bytes"), "{error}");
        let error = toml::from_str::<CacheConfig>(
            "[[origins]]\nprefix = \"cache:\"\nurl = \"http://h/{key}\"\nttl = \"1s\"",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("ttl"), "{error}");
        let error = toml::from_str::<CacheConfig>("[[origins]]\nprefix = \"cache:\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("url"), "{error}");
        let error = toml::from_str::<CacheConfig>(
            "[[origins]]\nprefix = \"cache:\"\nurl = \"http://h/{key}\"\nstore_ttl = 60",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("has no unit"), "{error}");
        let zero: CacheConfig = toml::from_str(
            "[[origins]]\nprefix = \"cache:\"\nurl = \"http://h/{key}\"\nnegative_ttl = 0",
        )
        .unwrap();
        assert_eq!(zero.origins[0].negative_ttl, Duration::ZERO);
    }

    /// The duration syntax: units, sums, and everything else refused.
    #[test]
    fn duration_syntax() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration(" 60s ").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(
            parse_duration("1h2m3s4ms").unwrap(),
            Duration::from_millis(3_723_004)
        );
        for bad in [
            "",
            "60",
            "s",
            "1x",
            "1.5s",
            "-1s",
            "1 s",
            "1S",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("not a duration"), "{bad}: {error}");
        }
        assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    /// Longest prefix wins; keys under no prefix have no origin.
    #[test]
    fn origin_for_picks_longest_prefix() {
        let config = CacheConfig {
            origins: vec![
                OriginConfig::new("cache:", "http://a/{key}"),
                OriginConfig::new("cache:api:", "http://b/{key}"),
            ],
            ..CacheConfig::default()
        };
        assert_eq!(
            config.origin_for("cache:api:x").unwrap().url,
            "http://b/{key}"
        );
        assert_eq!(
            config.origin_for("cache:apx").unwrap().url,
            "http://a/{key}"
        );
        assert!(config.origin_for("user:1").is_none());
    }

    /// `memory_mb` has a floor and a ceiling.
    #[test]
    fn memory_bound_range() {
        let error = error_of(CacheConfig {
            memory_mb: 0,
            ..CacheConfig::default()
        });
        assert!(error.contains("cache.memory_mb is 0"), "{error}");
        let error = error_of(CacheConfig {
            memory_mb: MEMORY_MB_CEILING + 1,
            ..CacheConfig::default()
        });
        assert!(error.contains("cache.memory_mb"), "{error}");
        assert_eq!(CacheConfig::default().memory_bytes(), 64 * 1024 * 1024);
        let error = error_of(CacheConfig {
            max_concurrent_fetches: 0,
            ..CacheConfig::default()
        });
        assert!(
            error.contains("cache.max_concurrent_fetches is 0"),
            "{error}"
        );
    }

    /// Prefixes: not empty, not too long, in one unowned namespace, unique.
    #[test]
    fn prefix_errors() {
        let cases: Vec<(OriginConfig, &str)> = vec![
            (
                OriginConfig {
                    prefix: String::new(),
                    ..origin()
                },
                "cache.origins[0].prefix must not be empty",
            ),
            (
                OriginConfig {
                    prefix: format!("cache:{}", "x".repeat(600)),
                    ..origin()
                },
                "the limit is 512",
            ),
            (
                OriginConfig {
                    prefix: "api:".into(),
                    ..origin()
                },
                "not inside a configured namespace",
            ),
            (
                OriginConfig {
                    prefix: "session:x".into(),
                    ..origin()
                },
                "which tierkv.v1.SessionService owns",
            ),
            (
                OriginConfig {
                    prefix: "cache:".into(),
                    ..origin()
                },
                "spans namespaces",
            ),
        ];
        for (origin, expected) in cases {
            let error = error_of(with_origin(origin));
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let error = error_of(CacheConfig {
            origins: vec![
                origin(),
                OriginConfig::new("user:x", "http://h/{key}"),
                origin(),
            ],
            ..CacheConfig::default()
        });
        assert!(
            error.contains(
                "cache.origins[2].prefix \"cache:api:\" is also the prefix of cache.origins[0]"
            ),
            "{error}"
        );
        // A prefix equal to a namespace, with nothing nested, is fine.
        with_origin(OriginConfig {
            prefix: "user:".into(),
            ..origin()
        })
        .validate(&namespaces())
        .unwrap();
    }

    /// URL templates: scheme, host, one `{key}`, only in the path.
    #[test]
    fn url_errors() {
        let cases = [
            ("", "exactly one {key} (it has 0)"),
            ("api.example.com/{key}", "not a valid URL"),
            ("ftp://h/{key}", "http:// or https://"),
            ("file:///tmp/{key}", "http:// or https://"),
            ("http://h/items", "exactly one {key}"),
            ("http://h/{key}/{key}", "exactly one {key}"),
            ("http://{key}.example.com/", "only in the path"),
            ("http://h:{key}/", "invalid port number"),
            ("http://h/x?id={key}", "only in the path"),
            ("http://h/x#{key}", "only in the path"),
            ("http://h/{key}#top", "fragment"),
            ("{key}://h/", "only in the path"),
            ("http://user:pw@h/{key}", "credentials"),
            ("http://h/{KEY}", "exactly one {key}"),
        ];
        for (url, expected) in cases {
            let error = error_of(with_origin(OriginConfig {
                url: url.into(),
                ..origin()
            }));
            assert!(
                error.starts_with("cache.origins[0].url: "),
                "{url}: {error}"
            );
            assert!(error.contains(expected), "{url}: {expected}: {error}");
            // The credentials never show.
            assert!(!error.contains("pw"), "{error}");
        }
        for good in [
            "http://127.0.0.1:8080/{key}",
            "https://api.example.com/v1/items/{key}.json?format=full",
            "https://[::1]:8443/a{key}b",
        ] {
            with_origin(OriginConfig {
                url: good.into(),
                ..origin()
            })
            .validate(&namespaces())
            .unwrap();
        }
    }

    /// TTLs, timeout, negative TTL and body limit ranges, each named.
    #[test]
    fn duration_and_size_errors() {
        let cases: Vec<(OriginConfig, &str)> = vec![
            (
                OriginConfig { store_ttl: Duration::from_millis(500), ..origin() },
                "cache.origins[0].store_ttl is 500ms; it must be at least 1s",
            ),
            (
                OriginConfig { memory_ttl: Duration::from_secs(600), ..origin() },
                "cache.origins[0].memory_ttl is 10m; it must be at most cache.origins[0].store_ttl (5m)",
            ),
            (
                OriginConfig { timeout: Duration::ZERO, ..origin() },
                "cache.origins[0].timeout must be more than 0",
            ),
            (
                OriginConfig { negative_ttl: Duration::from_millis(10), ..origin() },
                "cache.origins[0].negative_ttl is 10ms",
            ),
            (
                OriginConfig { stale_if_error: DURATION_CEILING + Duration::from_secs(1), ..origin() },
                "cache.origins[0].stale_if_error is 3650d1s; the most is 3650d",
            ),
            (
                OriginConfig { max_body_bytes: 0, ..origin() },
                "cache.origins[0].max_body_bytes is 0",
            ),
            (
                OriginConfig { max_body_bytes: MAX_VALUE_BYTES + 1, ..origin() },
                "between 1 and 26214400",
            ),
            (
                OriginConfig { max_concurrent_fetches: 0, ..origin() },
                "cache.origins[0].max_concurrent_fetches is 0; it must be between 1 and 65536",
            ),
            (
                OriginConfig { max_store_entries: 0, ..origin() },
                "cache.origins[0].max_store_entries is 0",
            ),
            (
                OriginConfig { max_store_bytes: 0, ..origin() },
                "cache.origins[0].max_store_bytes is 0",
            ),
        ];
        for (origin, expected) in cases {
            let error = error_of(with_origin(origin));
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let fine = OriginConfig {
            memory_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            store_ttl: Duration::from_secs(1),
            ..origin()
        };
        with_origin(fine).validate(&namespaces()).unwrap();
    }

    /// Header names and values must be valid HTTP; some names are refused;
    /// a bad value is never echoed.
    #[test]
    fn header_errors() {
        let with_header = |name: &str, value: &str| {
            let mut origin = origin();
            origin.headers.insert(name.into(), value.into());
            with_origin(origin)
        };
        let error = error_of(with_header("bad name", "x"));
        assert!(
            error.contains("\"bad name\" is not a valid HTTP header name"),
            "{error}"
        );
        for refused in [
            "Host",
            "content-length",
            "If-None-Match",
            "Range",
            "Connection",
        ] {
            let error = error_of(with_header(refused, "x"));
            assert!(error.contains("cannot be configured"), "{refused}: {error}");
        }
        let error = error_of(with_header("Authorization", "Bearer top\nsecret"));
        assert!(
            error.contains("cache.origins[0].headers.Authorization"),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
        with_header("Authorization", "Bearer ok")
            .validate(&namespaces())
            .unwrap();
    }

    /// The CA file must exist and hold a PEM certificate.
    #[test]
    fn ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = error_of(with_origin(OriginConfig {
            ca_file: Some(missing),
            ..origin()
        }));
        assert!(
            error.contains("cache.origins[0].ca_file: cannot read"),
            "{error}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = error_of(with_origin(OriginConfig {
            ca_file: Some(empty),
            ..origin()
        }));
        assert!(error.contains("cache.origins[0].ca_file"), "{error}");
        assert!(
            error.contains("no PEM certificate") || error.contains("not a PEM"),
            "{error}"
        );
    }
}
