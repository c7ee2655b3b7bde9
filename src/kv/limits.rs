//! The limits every request is checked against.

use std::time::Duration;

/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value: 25 MiB.
pub const MAX_VALUE_BYTES: usize = 25 * 1024 * 1024;
/// Largest metadata, serialized as JSON.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Shortest time to live; an absolute `expire_time` must be at least this far
/// ahead too.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Deepest nesting of arrays and objects in a JSON value or metadata.
///
/// JSON travels as `google.protobuf.Value`, where each array costs two
/// protobuf message levels and each object three (`Value`, `Struct`, map
/// entry). Standard protobuf decoders (prost, upb in Python, C++, Go) refuse
/// messages nested more than 100 levels; 32 objects inside the deepest
/// envelope (`BatchWriteRequest` → `Mutation` → `PutRequest`) reach level 99,
/// so anything within this limit is readable by every standard client.
pub const MAX_JSON_DEPTH: usize = 32;
/// Highest schema version a write may set: versions count format changes,
/// so anything near this is a bug in the client, not a real format.
pub const MAX_SCHEMA_VERSION: u32 = 1_000_000;
/// Most keys in one `BatchGet`.
pub const MAX_BATCH_GET_KEYS: usize = 100;
/// Most mutations in one `BatchWrite`.
pub const MAX_BATCH_WRITE_MUTATIONS: usize = 10_000;
/// Largest `BatchWrite`, counting keys, values and metadata: 100 MiB.
pub const MAX_BATCH_WRITE_BYTES: usize = 100 * 1024 * 1024;
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
/// Largest gRPC message the server accepts or sends: the largest batch plus
/// room for framing.
pub const MAX_MESSAGE_BYTES: usize = MAX_BATCH_WRITE_BYTES + 4 * 1024 * 1024;
/// The latest expiry a `google.protobuf.Timestamp` can express
/// (9999-12-31T23:59:59.999Z), in milliseconds since the Unix epoch.
pub const MAX_EXPIRE_AT_MILLIS: u64 = 253_402_300_799_999;

// Request size limits per method, in bytes of the encoded request message.
// Each leaves room for the largest legal request many times over, so a field
// over its own limit (a 600-byte key, 101 keys) is refused by validation,
// whose message names that field's limit; only absurd requests hit these.

/// Largest `Get` request: a key is at most 512 bytes.
pub const MAX_GET_REQUEST_BYTES: usize = 16 * 1024;
/// Largest `Delete` request: a key and a precondition.
pub const MAX_DELETE_REQUEST_BYTES: usize = 16 * 1024;
/// Largest `List` request: a prefix and a page token.
pub const MAX_LIST_REQUEST_BYTES: usize = 16 * 1024;
/// Largest `BatchGet` request: at most 100 keys of at most 512 bytes.
pub const MAX_BATCH_GET_REQUEST_BYTES: usize = 256 * 1024;
/// Largest `Put` request. A value is at most 25 MiB, but a JSON value arrives
/// as a `google.protobuf.Value`, whose encoding can be several times its JSON
/// text, so a put gets the whole message limit.
pub const MAX_PUT_REQUEST_BYTES: usize = MAX_MESSAGE_BYTES;
/// Largest `BatchWrite` request: the largest batch plus framing.
pub const MAX_BATCH_WRITE_REQUEST_BYTES: usize = MAX_MESSAGE_BYTES;
/// Largest SessionService `Create` or `Update` request: `data` may be
/// configured up to 1 MiB of JSON, which a `google.protobuf.Struct` can
/// encode in several times that.
pub const MAX_SESSION_WRITE_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest request of any other method (health checks, reflection).
pub const MAX_OTHER_REQUEST_BYTES: usize = 64 * 1024;

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
