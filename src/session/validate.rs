//! Checks of what callers send: durations, JSON sizes; and the RFC 7396
//! merge that `update` applies.

use super::error::violation;
use crate::kv::{format_seconds, FieldViolation};
use serde_json::{Map, Value};

/// Checks a duration in nanoseconds against 1 s..=`max_ms`; returns whole
/// milliseconds, rounded up so that a session never ends early.
pub(super) fn check_duration(field: &str, nanos: i128, max_ms: u64) -> Result<u64, FieldViolation> {
    let seconds = format_seconds(nanos);
    let max_secs = max_ms / 1000;
    if nanos < 1_000_000_000 {
        return Err(violation(
            field,
            format!("{field} is {seconds}; the minimum is 1s"),
        ));
    }
    let millis = (nanos + 999_999) / 1_000_000;
    if millis > i128::from(max_ms) {
        return Err(violation(
            field,
            format!("{field} is {seconds}; the maximum is {max_secs}s (session.max_ttl_secs)"),
        ));
    }
    Ok(millis as u64)
}

pub(super) fn check_json_size(
    field: &str,
    object: &Map<String, Value>,
    limit: usize,
) -> Result<(), FieldViolation> {
    let size = serde_json::to_vec(object).map_or(usize::MAX, |bytes| bytes.len());
    if size > limit {
        return Err(violation(
            field,
            format!("{field} is {size} bytes serialized; the limit is {limit} bytes (session.max_{field}_bytes)"),
        ));
    }
    Ok(())
}

/// Applies an RFC 7396 merge patch (an object) to the session's data (the
/// same merge `KvService.Patch` uses).
pub(super) fn merge_patch(data: Map<String, Value>, patch: &Value) -> Map<String, Value> {
    let mut merged = Value::Object(data);
    json_patch::merge(&mut merged, patch);
    match merged {
        Value::Object(data) => data,
        // An object patch merged into an object leaves an object.
        _ => Map::new(),
    }
}
