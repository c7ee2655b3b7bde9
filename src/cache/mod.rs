//! The cache: a memory tier (L1) over the store (L2) over configured HTTP
//! origins (L3).
//!
//! - [`config`] — the `[cache]` section of the configuration: the L1 bound and
//!   the origins, validated at start.
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
