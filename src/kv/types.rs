//! The KV service's request and answer types, free of transport types.

use crate::engine::Precondition;

/// A value as clients write it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A UTF-8 string.
    Text(String),
    /// A JSON value.
    Json(serde_json::Value),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// A value as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadValue {
    /// A UTF-8 string.
    Text(String),
    /// Serialized JSON, still to be parsed. It stays serialized so that the
    /// transport builds its own representation in one pass, within its
    /// nesting limit ([`MAX_JSON_DEPTH`](crate::records::limits::MAX_JSON_DEPTH)) and response budget, instead of
    /// holding a parsed tree and a converted one at once. Text read as JSON
    /// may turn out not to be JSON then ([`super::KvError::NotConvertible`]).
    Json(Vec<u8>),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// The representation a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueType {
    /// The representation the value was written in.
    #[default]
    AsStored,
    /// Text.
    Text,
    /// JSON.
    Json,
    /// Bytes.
    Bytes,
}

/// When a written key expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiration {
    /// Never.
    #[default]
    Never,
    /// After this many nanoseconds (at least [`MIN_TTL`](crate::records::limits::MIN_TTL)). Signed, so that
    /// a negative time to live is refused with its value like any other.
    TtlNanos(i128),
    /// At this instant, in nanoseconds since the Unix epoch (at least
    /// [`MIN_TTL`](crate::records::limits::MIN_TTL) after now). Kept in nanoseconds so that the check against
    /// the minimum is exact; the stored expiry is rounded up to the
    /// millisecond, so it never comes early.
    AtNanos(i128),
}

/// Writes one key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PutCommand {
    /// The key.
    pub key: String,
    /// The value; required.
    pub value: Option<Value>,
    /// Metadata to store with the value.
    pub metadata: Option<serde_json::Value>,
    /// When the key expires.
    pub expiration: Expiration,
    /// A condition checked atomically with the write.
    pub precondition: Precondition,
    /// The schema version of the value's format; 0 means 1.
    pub schema_version: u32,
}

/// Deletes one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteCommand {
    /// The key.
    pub key: String,
    /// Delete only if the key's version equals this.
    pub if_version: Option<u64>,
}

/// One mutation of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// A put.
    Put(PutCommand),
    /// A delete.
    Delete(DeleteCommand),
}

/// A live key with its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The value, in the requested representation.
    pub value: ReadValue,
    /// The metadata, if any.
    pub metadata: Option<serde_json::Value>,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// The key's version.
    pub version: u64,
    /// The record's schema version.
    pub schema_version: u32,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    /// The key's new version.
    pub version: u64,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
}

/// What one mutation of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationResult {
    /// A put.
    Put(PutResult),
    /// A delete, and whether the key existed.
    Delete {
        /// Whether a live key was deleted.
        existed: bool,
    },
}

/// A key in a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedKey {
    /// The key.
    pub name: String,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// The metadata, if any.
    pub metadata: Option<serde_json::Value>,
    /// The key's version.
    pub version: u64,
    /// The record's schema version as stored.
    pub schema_version: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListPage {
    /// Keys in byte order.
    pub keys: Vec<ListedKey>,
    /// The token for the next page; empty when the listing is complete.
    pub next_page_token: String,
    /// The commit sequence of the listing's first page's snapshot: every
    /// change up to it is reflected, so watching after it misses nothing.
    pub position: u64,
}
