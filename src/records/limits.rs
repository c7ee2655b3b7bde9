//! The limits of a stored record, and the JSON nesting measure they use.

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
/// Largest `BatchWrite`, counting keys, values and metadata: 100 MiB. Here
/// because the server's message limit is derived from it.
pub const MAX_BATCH_WRITE_BYTES: usize = 100 * 1024 * 1024;
/// Largest gRPC message the server accepts or sends: the largest batch plus
/// room for framing. Kept beside the record limits it derives from, so that
/// the adapters and the configuration's memory floors (below the server)
/// can read it; the server's per-method request sizes are in
/// `server::message_limits`.
pub const MAX_MESSAGE_BYTES: usize = MAX_BATCH_WRITE_BYTES + 4 * 1024 * 1024;
/// The latest expiry a `google.protobuf.Timestamp` can express
/// (9999-12-31T23:59:59.999Z), in milliseconds since the Unix epoch.
pub const MAX_EXPIRE_AT_MILLIS: u64 = 253_402_300_799_999;

/// How deeply arrays and objects nest in `value`: 0 for a scalar, 1 for
/// `[1]`, 2 for `{"a": [1]}`.
pub fn json_depth(value: &serde_json::Value) -> usize {
    // Recursion is bounded: values come from protobuf messages, which standard
    // decoders refuse beyond 100 levels, or from serde_json, which stops at 128.
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Depth counts nested arrays and objects.
    #[test]
    fn json_depth_counts_containers() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!([])), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, [2]], "b": 3})), 3);
    }
}
