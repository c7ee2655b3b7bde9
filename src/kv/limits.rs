//! The limits the KV service checks requests and responses against. The
//! limits of a record itself live in [`crate::records::limits`] (re-exported
//! here); the transport's message sizes in `crate::server::message_limits`.

pub use crate::records::limits::{
    json_depth, MAX_BATCH_WRITE_BYTES, MAX_EXPIRE_AT_MILLIS, MAX_JSON_DEPTH, MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES, MAX_METADATA_BYTES, MAX_SCHEMA_VERSION, MAX_VALUE_BYTES, MIN_TTL,
};

/// Most keys in one `BatchGet`.
pub const MAX_BATCH_GET_KEYS: usize = 100;
/// Most mutations in one `BatchWrite`.
pub const MAX_BATCH_WRITE_MUTATIONS: usize = 10_000;
/// Largest page of a listing.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most stored records one `List` call examines, live or expired: a long run
/// of expired records ends a call early with a short page and a token.
pub const MAX_LIST_EXAMINED: usize = 10_000;
/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Largest response the server builds (values and metadata of a `BatchGet`).
pub const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;
/// Largest JSON value a write accepts as `google.protobuf.Value`, measured
/// encoded: the response limit less room for the key, the metadata and the
/// rest of a `GetResponse`, so that every JSON value written can be read back
/// as JSON. (The encoding of small numbers is 5.5 times their JSON text, so
/// this can bind before [`MAX_VALUE_BYTES`] does.)
pub const MAX_JSON_PROTO_BYTES: usize = MAX_RESPONSE_BYTES - 64 * 1024;

/// The page size a listing request asks for: `requested` of 0 means
/// `default`; anything negative or above `max` is refused with a description
/// naming the range and the value.
pub fn resolve_page_size(requested: i32, default: usize, max: usize) -> Result<usize, String> {
    match requested {
        0 => Ok(default),
        size if size < 0 || size as usize > max => Err(format!(
            "page_size is {size}; it must be between 0 and {max}"
        )),
        size => Ok(size as usize),
    }
}
