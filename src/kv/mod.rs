//! The key-value service's domain logic: validation, value representations,
//! expiry, compare-and-set and paging. No transport types live here; the gRPC
//! adapter in `crate::api::kv` converts to and from these.
//!
//! Files: [`types`] (requests and answers), [`error`] (the one error enum),
//! [`validate`] (limits, expiry, the write operations requests become),
//! [`value`] (stored values as reads return them), [`store`] (the one path to
//! records, shared with the cache: owner checks, lazy migration, writes),
//! [`service`] (the KV operations), [`patch`] (merge patches) and
//! [`fallback`] (reads served from a fallback store).

pub mod error;
pub mod fallback;
pub mod limits;
mod page_token;
pub mod patch;
pub mod service;
pub mod store;
pub mod types;
pub mod validate;
pub mod value;

pub use crate::records::limits::json_depth;
pub use error::{describe_violations, invalid, FieldViolation, KvError};
pub use fallback::{FallbackCounts, FallbackReason};
pub use page_token::PageTokenError;
pub use patch::{PatchCommand, PatchResult, PatchTtl};
pub use service::KvService;
pub use store::RecordStore;
pub use types::*;
pub use validate::{format_seconds, validate_key, validate_prefix};
pub use value::convert_value;
