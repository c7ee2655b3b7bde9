//! Request size limits of the gRPC transport, per method, in bytes of the
//! encoded request message, read by the tower layer in
//! `server::request_limits`. The largest message at all
//! ([`MAX_MESSAGE_BYTES`]) is defined beside the record limits it derives
//! from (`records::limits`), so that the adapters and the configuration's
//! memory floors, below the server, can read it; the largest session write
//! beside the session data ceiling. Both are re-exported here, so this file
//! lists every request size.
//!
//! Each per-method limit leaves room for the largest legal request many times
//! over, so a field over its own limit (a 600-byte key, 101 keys) is refused
//! by validation, whose message names that field's limit; only absurd
//! requests hit these.

pub use crate::records::limits::MAX_MESSAGE_BYTES;
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
pub use crate::session::config::MAX_SESSION_WRITE_REQUEST_BYTES;
/// Largest request of any other method (health checks, reflection).
pub const MAX_OTHER_REQUEST_BYTES: usize = 64 * 1024;
