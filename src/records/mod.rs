//! What every service shares about stored records, below all of them: the
//! limits of a record ([`limits`]) and reading the records under a prefix
//! page by page ([`pages`]).
//!
//! A bottom-level module: it imports only the engine, so the KV service, the
//! cache, the session service, the migrator and the server's message limits
//! can all use it without importing each other (kv ↔ migrate was a cycle
//! while the limits lived in `kv::limits`).

pub mod limits;
pub mod pages;
