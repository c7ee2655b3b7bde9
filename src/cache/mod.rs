//! The cache: a memory tier (L1) over the store (L2) over configured HTTP
//! origins (L3).
//!
//! - [`config`] — the `[cache]` section of the configuration: the L1 bound and
//!   the origins, validated at start.
//! - [`url_template`] — key-to-URL mapping with escaping, shared by the
//!   configuration's validation and the origin client.
//! - [`origin`] — the L3 client: key-to-URL mapping with escaping, pooled
//!   HTTP/1.1 and HTTP/2 requests over rustls, `Cache-Control` and validators.
//! - [`service`] — the Cache service's domain: the tiers, read-through,
//!   stale serving, negative caching, Put, Invalidate; `fill` (origin
//!   answers stored and put in memory), `freshness` (how long an answer is
//!   kept) and [`purge`] beside it; [`error`] its one error enum. Every
//!   record is read and written through [`crate::kv::RecordStore`], the path
//!   KV takes too (owner checks, lazy migration, version preconditions).
//! - [`memory`] — L1 and its coherence with the change feed.
//! - [`flight`] — request coalescing (one origin request per cold key).
//! - [`budget`] — bounds on origin requests in flight and on what is stored
//!   from each origin.
//! - [`fence`] — orders origin fills against Invalidate and Purge.
//! - [`entry`] — what is kept with a cached value, in the store and in memory.
//! - [`stats`] — the counters.

pub mod config;
pub mod origin;
pub mod url_template;

pub mod budget;
pub mod entry;
pub mod error;
pub mod fence;
mod fill;
pub mod flight;
mod freshness;
pub mod memory;
pub mod purge;
pub mod service;
pub mod stats;

pub use error::CacheError;
pub use purge::{PurgeCommand, PurgeOutcome};
pub use service::{CachePut, CachePutResult, CacheService, CachedValue, Tier};
pub use stats::{CacheCounts, CacheStats};

/// Validates the `[cache]` section against the configured `namespaces`:
/// its settings ([`config::CacheConfig::validate`]) and the files the origin
/// client reads at start ([`origin::check_files`]). Errors name the setting
/// (`cache.origins[1].url: ...`).
pub fn validate_config(
    config: &config::CacheConfig,
    namespaces: &crate::engine::Namespaces,
) -> Result<(), String> {
    config.validate(namespaces)?;
    origin::check_files(config)
}

#[cfg(test)]
mod tests {
    use super::config::{CacheConfig, OriginConfig};
    use super::*;

    fn error_of(config: CacheConfig) -> String {
        let namespaces = crate::engine::Namespaces::new(["cache:"]);
        validate_config(&config, &namespaces).unwrap_err()
    }

    fn origin() -> OriginConfig {
        OriginConfig::new("cache:api:", "https://api.example.com/{key}")
    }

    /// The CA file must exist and hold a PEM certificate.
    #[test]
    fn ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = error_of(CacheConfig {
            origins: vec![OriginConfig {
                ca_file: Some(missing),
                ..origin()
            }],
            ..CacheConfig::default()
        });
        assert!(
            error.contains("cache.origins[0].ca_file: cannot read"),
            "{error}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = error_of(CacheConfig {
            origins: vec![OriginConfig {
                ca_file: Some(empty),
                ..origin()
            }],
            ..CacheConfig::default()
        });
        assert!(error.contains("cache.origins[0].ca_file"), "{error}");
        assert!(
            error.contains("no PEM certificate") || error.contains("not a PEM"),
            "{error}"
        );
    }
}
