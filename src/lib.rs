//! tierkv: a gRPC key-value store with TTLs, metadata and prefix listing, over
//! an embedded RocksDB.
//!
//! # Layout
//! - [`proto`] — the generated protobuf messages, server traits and **clients**
//!   (`tierkv::proto::v1::kv_service_client::KvServiceClient`), re-exported
//!   from the `tierkv-client` crate (`crates/tierkv-client`), which other Rust
//!   services depend on without building RocksDB; it also holds the JSON ⇄
//!   `Struct`/`Value`/`Timestamp` conversions the adapters use.
//! - [`clock`] — injectable wall-clock time, so expiry is testable.
//! - [`engine`] — the core [`engine::Engine`] trait (namespaces, point reads,
//!   ordered scans, atomic batches with preconditions, expiry by the engine's
//!   one clock, the commit-ordered change feed with commit sequences and
//!   `catch_up_to`), the optional [`engine::LocalStorage`] trait of a store on
//!   local disk (backups, storage figures, `failed()`), the RocksDB
//!   implementation (its writer thread in `engine/rocks/writer.rs`), the
//!   record format and the shared conformance suite (feature `testsuite`).
//! - [`records`] — what every service shares about records: their limits
//!   and JSON depth (`records::limits`) and the page-by-page prefix walk
//!   (`records::pages`).
//! - [`kv`] — the KV service's domain logic: validation, limits, value
//!   representations, compare-and-set, page tokens, and `kv::RecordStore`,
//!   the one path to records KV and the cache share (owner checks, lazy
//!   migration, version preconditions). No transport types.
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
//! - [`watch`] — `KvService.Watch`'s domain logic: resumable change streams
//!   by prefix over the change feed and the engine's history, positions,
//!   per-watcher byte bounds, `[watch]` settings. No transport types.
//! - [`auth`] — bearer tokens and their grants (`[auth]`). No transport types.
//! - [`config`] — the configuration file and environment, including `[tls]`.
//! - [`telemetry`], [`metrics`] — logging set-up; the figures `/metrics`
//!   exports.
//! - [`api`] — thin tonic adapters, the message conversions, the single
//!   error-to-status mapping, and the per-call facts the server's layers
//!   hand the adapters (`api::call`).
//! - [`server`] — wiring and graceful shutdown, and every tower layer:
//!   `server::connections` bounds connections (limit, handshake timeout,
//!   accept back-off); `server::request_limits` bounds request sizes per
//!   method and request memory across calls; `server::deadline`,
//!   `server::auth_layer`, `server::load_shed` and the others wrap each call.
//! - [`cli`] — the `tierkv` command line (server and `wrangler kv`-like client).
//!
//! # Layers
//! Modules import only from layers below their own, never from their own
//! layer or above, and never in a cycle (`tests/layering.rs` checks every
//! `crate::` path against its `LAYERS` table, which must match this list;
//! sub-modules of one module form no cycle either). Lowest first:
//! 1. foundation: [`clock`];
//! 2. [`engine`];
//! 3. [`records`] (record limits and JSON depth, the prefix page walk);
//! 4. domain, in the order its services build on each other:
//!    [`migrate`] and [`auth`]; then [`kv`] (applies migrations); then
//!    [`session`], [`cache`], [`admin`] and [`watch`] (use KV's validation and limits).
//!    No domain module uses `prost`, `prost_types` or `tonic` types;
//! 5. [`config`] (every service's settings);
//! 6. [`telemetry`], [`metrics`];
//! 7. [`proto`] (generated code);
//! 8. [`api`] (adapters: domain ⇄ protobuf, errors → `Status`);
//! 9. [`server`] (tower layers, connections, TLS, serving);
//! 10. [`cli`].

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
pub mod watch;

/// Generated protobuf code, from the `tierkv-client` crate (which builds
/// without RocksDB), re-exported so that `tierkv::proto` keeps its paths.
pub use tierkv_client::proto;
