//! Validation of KV requests against the limits: keys, prefixes, values,
//! metadata, expiry and schema versions, and the write operations they
//! become.

use crate::engine::{DeleteOp, Precondition, PutOp, ValueKind, WriteOp};
use crate::records::limits::*;

use super::{invalid, DeleteCommand, Expiration, FieldViolation, KvError, PutCommand, Value};

/// Checks a put against the limits and turns it into the write operation it
/// stores, its expiry counted from `now_millis`. Every violation is reported
/// at once, each field named after `field_prefix` (`mutations[3].put.`).
/// The namespace owner check is the caller's (see
/// [`super::RecordStore::prepare_put`]).
pub fn put_op(field_prefix: &str, command: PutCommand, now_millis: u64) -> Result<PutOp, KvError> {
    let mut violations = Vec::new();
    if let Err(violation) = validate_key(&format!("{field_prefix}key"), &command.key) {
        violations.push(violation);
    }
    let (kind, value) = match command.value {
        None => {
            violations.push(FieldViolation::new(
                format!("{field_prefix}value"),
                "a value is required: set text, json or bytes",
            ));
            (ValueKind::Bytes, Vec::new())
        }
        Some(Value::Text(text)) => (ValueKind::Text, text.into_bytes()),
        Some(Value::Bytes(bytes)) => (ValueKind::Bytes, bytes),
        Some(Value::Json(json)) => {
            let depth = json_depth(&json);
            if depth > MAX_JSON_DEPTH {
                violations.push(FieldViolation::new(
                    format!("{field_prefix}json"),
                    too_deep(depth),
                ));
            }
            (ValueKind::Json, serialize_json(&json))
        }
    };
    if value.len() > MAX_VALUE_BYTES {
        violations.push(FieldViolation::new(
            format!("{field_prefix}value"),
            format!(
                "value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (25 MiB)",
                value.len()
            ),
        ));
    }
    if let Some(metadata) = &command.metadata {
        let depth = json_depth(metadata);
        if depth > MAX_JSON_DEPTH {
            violations.push(FieldViolation::new(
                format!("{field_prefix}metadata"),
                too_deep(depth),
            ));
        }
    }
    let metadata = command.metadata.as_ref().map(serialize_json);
    if let Some(metadata) = &metadata {
        if metadata.len() > MAX_METADATA_BYTES {
            violations.push(FieldViolation::new(
                format!("{field_prefix}metadata"),
                format!(
                    "metadata is {} bytes serialized; the limit is {MAX_METADATA_BYTES} bytes",
                    metadata.len()
                ),
            ));
        }
    }
    let expire_at_millis = match resolve_expiration(field_prefix, command.expiration, now_millis) {
        Ok(expire_at) => expire_at,
        Err(violation) => {
            violations.push(violation);
            None
        }
    };
    if !violations.is_empty() {
        return Err(KvError::InvalidArgument(violations));
    }
    let schema_version = resolve_schema_version(field_prefix, command.schema_version)?;
    Ok(PutOp {
        key: command.key,
        kind,
        value,
        metadata,
        expire_at_millis,
        schema_version,
        precondition: command.precondition,
    })
}

/// The schema version a put stores: 0 (unset) means 1; more than
/// [`MAX_SCHEMA_VERSION`] is refused.
pub(crate) fn resolve_schema_version(field_prefix: &str, requested: u32) -> Result<u32, KvError> {
    match requested {
        0 => Ok(1),
        version if version > MAX_SCHEMA_VERSION => Err(invalid(
            format!("{field_prefix}schema_version"),
            format!("schema_version is {version}; the limit is {MAX_SCHEMA_VERSION}"),
        )),
        version => Ok(version),
    }
}

/// Checks a delete and turns it into its write operation (the owner check is
/// the caller's).
pub fn prepare_delete(field_prefix: &str, command: DeleteCommand) -> Result<DeleteOp, KvError> {
    validate_key(&format!("{field_prefix}key"), &command.key)
        .map_err(|violation| KvError::InvalidArgument(vec![violation]))?;
    Ok(DeleteOp {
        key: command.key,
        precondition: command
            .if_version
            .map_or(Precondition::None, Precondition::IfVersion),
    })
}

/// The bytes a write operation counts against [`MAX_BATCH_WRITE_BYTES`].
pub fn op_size(op: &WriteOp) -> usize {
    match op {
        WriteOp::Put(put) => {
            put.key.len() + put.value.len() + put.metadata.as_ref().map_or(0, Vec::len)
        }
        WriteOp::Delete(delete) => delete.key.len(),
    }
}

/// Checks a listing or purge prefix against the key size limit (a prefix
/// longer than any key matches nothing, and is a mistake).
pub fn validate_prefix(field: &str, prefix: &str) -> Result<(), FieldViolation> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(FieldViolation::new(
            field,
            format!(
                "prefix is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                prefix.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a key against the limits.
pub fn validate_key(field: &str, key: &str) -> Result<(), FieldViolation> {
    if key.is_empty() {
        return Err(FieldViolation::new(field, "key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(FieldViolation::new(
            field,
            format!(
                "key is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        ));
    }
    if key == "." || key == ".." {
        return Err(FieldViolation::new(
            field,
            format!("key must not be {key:?} (reserved, as in Workers KV)"),
        ));
    }
    Ok(())
}

/// The expiry `expiration` asks for, in milliseconds since the Unix epoch,
/// counted from `now_millis`; the one parser of a write's expiry (Put,
/// BatchWrite, Patch and the cache's store TTL).
pub fn resolve_expiration(
    field_prefix: &str,
    expiration: Expiration,
    now_millis: u64,
) -> Result<Option<u64>, FieldViolation> {
    const NANOS_PER_MILLI: i128 = 1_000_000;
    let min_nanos = MIN_TTL.as_nanos() as i128;
    let min = format_seconds(min_nanos);
    match expiration {
        Expiration::Never => Ok(None),
        Expiration::TtlNanos(ttl_nanos) => {
            let field = format!("{field_prefix}ttl");
            if ttl_nanos < min_nanos {
                return Err(FieldViolation::new(
                    field,
                    format!("ttl is {}; the minimum is {min}", format_seconds(ttl_nanos)),
                ));
            }
            // Round up so that an expiry never comes early.
            // Positive here: at least a second.
            let ttl_millis =
                u64::try_from(ttl_nanos.saturating_add(NANOS_PER_MILLI - 1) / NANOS_PER_MILLI)
                    .unwrap_or(u64::MAX);
            let expire_at = now_millis.saturating_add(ttl_millis);
            if expire_at > MAX_EXPIRE_AT_MILLIS {
                return Err(FieldViolation::new(
                    field,
                    format!(
                        "ttl is {}; it reaches past 9999-12-31T23:59:59.999Z, the latest expire_time",
                        format_seconds(ttl_nanos)
                    ),
                ));
            }
            Ok(Some(expire_at))
        }
        Expiration::AtNanos(at) => {
            let field = format!("{field_prefix}expire_time");
            let ahead = at.saturating_sub(i128::from(now_millis) * NANOS_PER_MILLI);
            if ahead < min_nanos {
                let actual = if ahead < 0 {
                    format!("{} in the past", format_seconds(-ahead))
                } else {
                    format!("{} from now", format_seconds(ahead))
                };
                return Err(FieldViolation::new(
                    field,
                    format!("expire_time is {actual}; it must be at least {min} in the future"),
                ));
            }
            // `at` is positive here: at least a second after now.
            let at_millis = at.saturating_add(NANOS_PER_MILLI - 1) / NANOS_PER_MILLI;
            if at_millis > i128::from(MAX_EXPIRE_AT_MILLIS) {
                return Err(FieldViolation::new(
                    field,
                    format!(
                        "expire_time is {} after the Unix epoch; the latest is \
                         9999-12-31T23:59:59.999Z",
                        format_seconds(at)
                    ),
                ));
            }
            Ok(Some(at_millis as u64))
        }
    }
}

/// A signed duration in nanoseconds as exact seconds, e.g. `0.999999999s`,
/// `-5s`, `1.5s`: error messages must never round a value across a limit.
pub fn format_seconds(nanos: i128) -> String {
    const NANOS_PER_SECOND: u128 = 1_000_000_000;
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    let (seconds, fraction) = (magnitude / NANOS_PER_SECOND, magnitude % NANOS_PER_SECOND);
    if fraction == 0 {
        return format!("{sign}{seconds}s");
    }
    let fraction = format!("{fraction:09}");
    format!("{sign}{seconds}.{}s", fraction.trim_end_matches('0'))
}

/// Why a JSON value nesting `depth` levels is refused.
pub fn too_deep(depth: usize) -> String {
    format!("JSON nests {depth} levels deep; the limit is {MAX_JSON_DEPTH} levels of arrays and objects")
}

/// `value` as JSON text.
pub fn serialize_json(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a serde_json::Value cannot fail: its keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds print exactly, never rounded across a limit.
    #[test]
    fn seconds_format_exactly() {
        assert_eq!(format_seconds(999_999_999), "0.999999999s");
        assert_eq!(format_seconds(1_000_000_000), "1s");
        assert_eq!(format_seconds(1_500_000_000), "1.5s");
        assert_eq!(format_seconds(0), "0s");
        assert_eq!(format_seconds(-5_000_000_000), "-5s");
        assert_eq!(format_seconds(-1), "-0.000000001s");
        assert_eq!(
            format_seconds(i128::MIN),
            "-170141183460469231731687303715.884105728s"
        );
    }

    /// A ttl under the minimum by a nanosecond is refused with its exact
    /// value; an expire_time is measured from now to the nanosecond.
    #[test]
    fn expirations_resolve_exactly() {
        let ttl = |nanos| resolve_expiration("", Expiration::TtlNanos(nanos), 0);
        assert_eq!(
            ttl(999_999_999).unwrap_err().description,
            "ttl is 0.999999999s; the minimum is 1s"
        );
        assert_eq!(ttl(1_000_000_000).unwrap(), Some(1000));
        assert_eq!(ttl(1_000_000_001).unwrap(), Some(1001), "rounded up");
        assert_eq!(
            ttl(-1).unwrap_err().description,
            "ttl is -0.000000001s; the minimum is 1s"
        );
        assert_eq!(ttl(i128::MAX).unwrap_err().field, "ttl", "too far");
        let at = |nanos| resolve_expiration("p.", Expiration::AtNanos(nanos), 5_000);
        let error = at(5_999_999_999).unwrap_err();
        assert_eq!(error.field, "p.expire_time");
        assert_eq!(
            error.description,
            "expire_time is 0.999999999s from now; it must be at least 1s in the future"
        );
        assert_eq!(at(6_000_000_000).unwrap(), Some(6000));
        assert_eq!(at(6_000_000_001).unwrap(), Some(6001), "rounded up");
    }
}
