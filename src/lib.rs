//! tierkv: a gRPC key-value store with TTLs, metadata and prefix listing, over
//! an embedded RocksDB.
//!
//! # Layout
//! - [`proto`] — the generated protobuf messages, server traits and **clients**
//!   (`tierkv::proto::v1::kv_service_client::KvServiceClient`), for other Rust
//!   services to depend on.
//! - [`clock`] — injectable wall-clock time, so expiry is testable.
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
//! 1. foundation: [`clock`], `limits` (record limits and JSON depth, shared
//!    by every layer);
//! 2. [`engine`];
//! 3. domain, in the order its services build on each other:
//!    [`migrate`] and [`auth`]; then [`kv`] (applies migrations); then
//!    [`session`], [`cache`] and [`admin`] (use KV's validation and limits).
//!    No domain module uses `prost`, `prost_types` or `tonic` types;
//! 4. [`config`] (every service's settings);
//! 5. [`telemetry`], [`metrics`];
//! 6. [`proto`] (generated code);
//! 7. [`api`] (adapters: domain ⇄ protobuf, errors → `Status`);
//! 8. [`server`] (tower layers, connections, TLS, serving);
//! 9. [`cli`].

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
pub mod server;
pub mod session;
pub mod telemetry;

/// Generated protobuf code.
pub mod proto {
    /// The `tierkv.v1` package.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("tierkv.v1");
    }

    /// The encoded descriptor set of every tierkv proto file (with imports),
    /// served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tierkv_descriptor.bin"));
}
