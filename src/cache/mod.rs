//! The cache: a memory tier (L1) over the store (L2) over configured HTTP
//! origins (L3).
//!
//! - [`config`] — the `[cache]` section of the configuration: the L1 bound and
//!   the origins, validated at start.
//! - [`origin`] — the L3 client: key-to-URL mapping with escaping, pooled
//!   HTTP/1.1 and HTTP/2 requests over rustls, `Cache-Control` and validators.
//! - [`service`] — the Cache service's domain: the tiers, read-through,
//!   stale serving, negative caching, Put, Invalidate, Purge.
//! - [`memory`] — L1 and its coherence with the change feed.
//! - [`flight`] — request coalescing (one origin request per cold key).
//! - [`budget`] — bounds on origin requests in flight and on what is stored
//!   from each origin.
//! - [`fence`] — orders origin fills against Invalidate and Purge.
//! - [`entry`] — what is kept with a cached value, in the store and in memory.
//! - [`stats`] — the counters.

pub mod config;
pub mod origin;

pub mod budget;
pub mod entry;
pub mod fence;
pub mod flight;
pub mod memory;
pub mod service;
pub mod stats;

pub use service::{
    CacheError, CachePut, CachePutResult, CacheService, CachedValue, PurgeCommand, PurgeOutcome,
    Tier,
};
pub use stats::{CacheCounts, CacheStats};
