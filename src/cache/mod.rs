//! The cache: a memory tier (L1) over the store (L2) over configured HTTP
//! origins (L3).
//!
//! - [`config`] — the `[cache]` section of the configuration: the L1 bound and
//!   the origins, validated at start.
//! - [`origin`] — the L3 client: key-to-URL mapping with escaping, pooled
//!   HTTP/1.1 and HTTP/2 requests over rustls, `Cache-Control` and validators.

pub mod config;
pub mod origin;
