//! tierkv: a gRPC key-value store with TTLs, metadata and prefix listing, over
//! an embedded RocksDB.
//!
//! # Layout
//! - [`proto`] — the generated protobuf messages, server traits and **clients**
//!   (`tierkv::proto::v1::kv_service_client::KvServiceClient`), for other Rust
//!   services to depend on.
//! - [`engine`] — the [`engine::Engine`] trait (namespaces, point reads,
//!   ordered scans, atomic batches with preconditions, expiry, the
//!   commit-ordered change feed), the RocksDB implementation (its writer
//!   thread in `engine/rocks/writer.rs`), the record format and the shared
//!   conformance suite.
//! - [`kv`] — the KV service's domain logic: validation, limits, value
//!   representations, compare-and-set, page tokens. No transport types.
//! - [`session`] — the Session service's domain logic: tokens, expiry,
//!   the per-user index, rotation and revocation. No transport types.
//! - [`migrate`] — versioned records: the `[[migrations]]` chains of JSON
//!   Patch steps, lazy migration on read and the resumable batch migrator
//!   behind `AdminService.Migrate`. No transport types.
//! - [`admin`] — namespace administration: estimated sizes, and retiring a
//!   namespace by dropping its data with a confirmed key count.
//! - [`cache`] — the Cache service's domain logic: the memory tier (L1, kept
//!   coherent by the change feed) over the store (L2) over configured HTTP
//!   origins (L3), request coalescing, stale serving, counters; its
//!   configuration (`[cache]`) and its origin client (key-to-URL escaping,
//!   pooled HTTP/1.1 and HTTP/2 over rustls, `Cache-Control` and validators).
//!   No transport types.
//! - [`api`] — thin tonic adapters and the single error-to-status mapping.
//! - [`config`], [`server`], [`telemetry`] — configuration, wiring and
//!   graceful shutdown, logging. `server::connections` bounds connections
//!   (limit, handshake timeout, accept back-off); `api::request_limits`
//!   bounds request sizes per method and request memory across calls.
//! - [`cli`] — the `tierkv` command line (server and `wrangler kv`-like client).
//! - [`clock`] — injectable wall-clock time, so expiry is testable.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod kv;
pub mod metrics;
pub mod migrate;
pub mod records;
pub mod server;
pub mod session;
pub mod telemetry;

/// Generated protobuf code, from the `tierkv-client` crate (which builds
/// without RocksDB), re-exported so that `tierkv::proto` keeps its paths.
pub use tierkv_client::proto;
