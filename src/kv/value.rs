//! Stored values as reads return them: the representation asked for, and
//! metadata parsed within the JSON depth limit.

use crate::engine::{EngineError, Record, ValueKind};
use crate::records::limits::{json_depth, MAX_JSON_DEPTH};

use super::{Entry, KvError, ReadValue, ValueType};

/// Stored metadata as JSON; refused when it nests deeper than a response
/// may carry.
pub fn parse_metadata(
    key: &str,
    metadata: Option<&[u8]>,
) -> Result<Option<serde_json::Value>, KvError> {
    let Some(bytes) = metadata else {
        return Ok(None);
    };
    let metadata: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
        KvError::Engine(EngineError::Corrupt {
            key: key.to_string(),
            reason: format!("metadata is not JSON: {error}"),
        })
    })?;
    // Writes refuse deeper metadata; older records may still hold some, and
    // sending it would produce a response standard clients cannot decode.
    if json_depth(&metadata) > MAX_JSON_DEPTH {
        return Err(KvError::MetadataTooDeep {
            key: key.to_string(),
        });
    }
    Ok(Some(metadata))
}

/// A stored record as a KV read returns it.
pub fn entry_from_record(
    key: &str,
    record: Record,
    value_type: ValueType,
) -> Result<Entry, KvError> {
    let metadata = parse_metadata(key, record.metadata.as_deref())?;
    let value = convert_value(key, record.kind, record.value, value_type)?;
    Ok(Entry {
        value,
        metadata,
        expire_at_millis: record.expire_at_millis,
        version: record.version,
        schema_version: record.schema_version,
    })
}

/// Converts a stored value to the requested representation. JSON stays
/// serialized (see [`ReadValue::Json`]).
pub fn convert_value(
    key: &str,
    kind: ValueKind,
    bytes: Vec<u8>,
    value_type: ValueType,
) -> Result<ReadValue, KvError> {
    let target = match value_type {
        ValueType::AsStored => match kind {
            ValueKind::Text => ValueType::Text,
            ValueKind::Json => ValueType::Json,
            ValueKind::Bytes => ValueType::Bytes,
        },
        other => other,
    };
    match target {
        ValueType::Bytes | ValueType::AsStored => Ok(ReadValue::Bytes(bytes)),
        ValueType::Text => {
            String::from_utf8(bytes)
                .map(ReadValue::Text)
                .map_err(|_| KvError::NotConvertible {
                    key: key.to_string(),
                    requested: "text",
                    reason: "the bytes are not valid UTF-8".into(),
                })
        }
        ValueType::Json => Ok(ReadValue::Json(bytes)),
    }
}
