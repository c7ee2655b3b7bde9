//! The `tierkv.v1.KvService` adapter.

mod rpc;
mod watch;
mod watch_codec;

pub use rpc::KvApi;
pub use watch_codec::KvServer;

use prost::Message as _;

use super::convert::{
    build_json_value, json_from_proto, json_to_proto, nanos_from_duration, nanos_from_timestamp,
    scan_json_text, timestamp_from_millis, JsonTextError,
};
use crate::engine::{EngineError, Precondition};
use crate::kv::limits::{MAX_JSON_DEPTH, MAX_JSON_PROTO_BYTES, MAX_RESPONSE_BYTES};
use crate::kv::{
    DeleteCommand, Entry, Expiration, FieldViolation, KvError, PutCommand, ReadValue, Value,
    ValueType,
};
use crate::kv::{FallbackReason, PatchCommand, PatchTtl};
use crate::proto::v1 as pb;

fn invalid(field: String, description: String) -> KvError {
    crate::kv::invalid(field, description)
}

pub(crate) fn value_type_from_proto(raw: i32) -> Result<ValueType, KvError> {
    match pb::ValueType::try_from(raw) {
        Ok(pb::ValueType::Unspecified) => Ok(ValueType::AsStored),
        Ok(pb::ValueType::Text) => Ok(ValueType::Text),
        Ok(pb::ValueType::Json) => Ok(ValueType::Json),
        Ok(pb::ValueType::Bytes) => Ok(ValueType::Bytes),
        Err(_) => Err(invalid(
            "type".into(),
            format!("unknown value type {raw}; use TEXT, JSON or BYTES"),
        )),
    }
}

/// Stored JSON above this size is converted on the blocking pool: two passes
/// over it and a tree of one node per JSON value take hundreds of
/// microseconds and more, long enough to stall the other requests of an async
/// worker; a smaller one costs about what the hop to the pool costs.
pub(crate) const INLINE_JSON_BYTES: usize = 64 * 1024;

/// Bytes of a length-delimited field of `body` bytes with a one-byte tag.
fn delimited_len(body: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(body as u64) + body
}

/// Builds the responses for `results`, converting JSON within the response
/// limit; large conversions run on the blocking pool.
pub(crate) async fn get_responses(
    results: Vec<(String, Option<Entry>)>,
) -> Result<Vec<pb::GetResponse>, KvError> {
    let json_bytes: usize = results
        .iter()
        .filter_map(
            |(_, entry)| match entry.as_ref().map(|entry| &entry.value) {
                Some(ReadValue::Json(text)) => Some(text.len()),
                _ => None,
            },
        )
        .sum();
    if json_bytes <= INLINE_JSON_BYTES {
        return build_responses(results);
    }
    tokio::task::spawn_blocking(move || build_responses(results))
        .await
        .unwrap_or_else(|error| {
            Err(KvError::Engine(EngineError::Storage(format!(
                "converting a response failed: {error}"
            ))))
        })
}

/// Builds one response per result; the encoded responses together stay
/// within [`MAX_RESPONSE_BYTES`]. Every JSON value is scanned against what is
/// left of the budget before any is built, so a refused response costs no
/// conversion at all.
fn build_responses(results: Vec<(String, Option<Entry>)>) -> Result<Vec<pb::GetResponse>, KvError> {
    let mut responses = Vec::with_capacity(results.len());
    let mut json_texts = Vec::new();
    let mut used = 0usize;
    for (key, entry) in results {
        let Some(entry) = entry else {
            let response = pb::GetResponse {
                key,
                ..Default::default()
            };
            used += delimited_len(response.encoded_len());
            responses.push(response);
            continue;
        };
        let mut response = pb::GetResponse {
            found: true,
            value: None,
            metadata: entry.metadata.map(json_to_proto),
            expire_time: entry.expire_at_millis.map(timestamp_from_millis),
            version: entry.version,
            schema_version: entry.schema_version,
            key,
            from_fallback: false,
        };
        let base = response.encoded_len();
        let size = match entry.value {
            ReadValue::Text(text) => {
                let size = base + delimited_len(text.len());
                response.value = Some(pb::get_response::Value::Text(text));
                size
            }
            ReadValue::Bytes(bytes) => {
                let size = base + delimited_len(bytes.len());
                response.value = Some(pb::get_response::Value::Bytes(bytes));
                size
            }
            ReadValue::Json(text) => {
                // The json field's tag and length take at most 6 bytes.
                let budget = MAX_RESPONSE_BYTES.saturating_sub(used + base + 6);
                let scanned = scan_json_text(&text, MAX_JSON_DEPTH, budget).map_err(|error| {
                    json_read_error(response.key.clone(), text.len(), budget, error)
                })?;
                let size = base + delimited_len(scanned.encoded_len);
                json_texts.push((responses.len(), text, scanned));
                size
            }
        };
        // As a `results` field of a BatchGetResponse; a Get pays a little less.
        used += delimited_len(size);
        responses.push(response);
    }
    for (index, text, scanned) in json_texts {
        let response = &mut responses[index];
        let value = build_json_value(&text, &scanned)
            .map_err(|error| json_read_error(response.key.clone(), text.len(), 0, error))?;
        response.value = Some(pb::get_response::Value::Json(value));
    }
    Ok(responses)
}

pub(crate) fn json_read_error(
    key: String,
    stored: usize,
    budget: usize,
    error: JsonTextError,
) -> KvError {
    let reason = match error {
        JsonTextError::TooLarge { .. } => {
            return KvError::JsonResponseTooLarge {
                key,
                stored,
                available: budget,
                limit: MAX_RESPONSE_BYTES,
            }
        }
        JsonTextError::TooDeep { limit } => format!(
            "it nests more than {limit} levels of arrays and objects, the limit for JSON in \
             responses (deeper messages are refused by standard protobuf decoders); read it \
             with type TEXT or BYTES"
        ),
        JsonTextError::Invalid(error) => format!("it is not valid JSON ({error})"),
    };
    KvError::NotConvertible {
        key,
        requested: "json",
        reason,
    }
}

pub(crate) fn put_command(
    field_prefix: &str,
    request: pb::PutRequest,
) -> Result<PutCommand, KvError> {
    let mut violations = Vec::new();
    let value = match request.value {
        None => None,
        Some(pb::put_request::Value::Text(text)) => Some(Value::Text(text)),
        Some(pb::put_request::Value::Bytes(bytes)) => Some(Value::Bytes(bytes)),
        Some(pb::put_request::Value::Json(json)) if json.encoded_len() > MAX_JSON_PROTO_BYTES => {
            violations.push(FieldViolation {
                field: format!("{field_prefix}json"),
                description: format!(
                    "json is {} bytes as google.protobuf.Value; the limit is {MAX_JSON_PROTO_BYTES} \
                     bytes, so that it can be read back as JSON (write large JSON as text or bytes)",
                    json.encoded_len()
                ),
            });
            None
        }
        Some(pb::put_request::Value::Json(json)) => match json_from_proto(json) {
            Ok(json) => Some(Value::Json(json)),
            Err(reason) => {
                violations.push(FieldViolation {
                    field: format!("{field_prefix}json"),
                    description: reason,
                });
                None
            }
        },
    };
    let metadata = match request.metadata.map(json_from_proto).transpose() {
        Ok(metadata) => metadata,
        Err(reason) => {
            violations.push(FieldViolation {
                field: format!("{field_prefix}metadata"),
                description: reason,
            });
            None
        }
    };
    let expiration = match request.expiration {
        None => Ok(Expiration::Never),
        Some(pb::put_request::Expiration::Ttl(ttl)) => nanos_from_duration(&ttl)
            .map(Expiration::TtlNanos)
            .map_err(|reason| (format!("{field_prefix}ttl"), reason)),
        Some(pb::put_request::Expiration::ExpireTime(at)) => nanos_from_timestamp(&at)
            .map(Expiration::AtNanos)
            .map_err(|reason| (format!("{field_prefix}expire_time"), reason)),
    };
    let expiration = expiration.unwrap_or_else(|(field, description)| {
        violations.push(FieldViolation { field, description });
        Expiration::Never
    });
    let precondition = match request.precondition {
        None | Some(pb::put_request::Precondition::IfAbsent(false)) => Precondition::None,
        Some(pb::put_request::Precondition::IfAbsent(true)) => Precondition::IfAbsent,
        Some(pb::put_request::Precondition::IfVersion(version)) => Precondition::IfVersion(version),
    };
    if !violations.is_empty() {
        return Err(KvError::InvalidArgument(violations));
    }
    Ok(PutCommand {
        key: request.key,
        value,
        metadata,
        expiration,
        precondition,
        schema_version: request.schema_version,
    })
}

fn delete_command(request: pb::DeleteRequest) -> DeleteCommand {
    DeleteCommand {
        key: request.key,
        if_version: request.if_version,
    }
}

/// Checks a request's fallback like a JSON value of a put.
fn fallback_value(fallback: prost_types::Value) -> Result<prost_types::Value, KvError> {
    let json =
        json_from_proto(fallback.clone()).map_err(|reason| invalid("fallback".into(), reason))?;
    let depth = crate::kv::json_depth(&json);
    if depth > MAX_JSON_DEPTH {
        return Err(invalid(
            "fallback".into(),
            format!("fallback nests {depth} levels of arrays and objects; the limit is {MAX_JSON_DEPTH}"),
        ));
    }
    Ok(fallback)
}

/// Responses for reads that may have answered with the fallback: found
/// entries as usual, the rest as `from_fallback` with the fallback in `json`.
async fn answer_with_fallbacks(
    outcomes: Vec<(String, Result<Entry, FallbackReason>)>,
    fallback: &prost_types::Value,
) -> Result<Vec<pb::GetResponse>, KvError> {
    let mut from_fallback = Vec::with_capacity(outcomes.len());
    let results = outcomes
        .into_iter()
        .map(|(key, outcome)| {
            from_fallback.push(outcome.is_err());
            (key, outcome.ok())
        })
        .collect();
    let mut responses = get_responses(results).await?;
    let mut total = 0usize;
    for (response, from_fallback) in responses.iter_mut().zip(from_fallback) {
        if from_fallback {
            response.found = false;
            response.from_fallback = true;
            response.value = Some(pb::get_response::Value::Json(fallback.clone()));
        }
        total += delimited_len(response.encoded_len());
    }
    // The stored values were counted against the limit; the fallback's
    // copies are counted here.
    if total > MAX_RESPONSE_BYTES {
        return Err(KvError::ResponseTooLarge {
            what: "the response with its fallbacks",
            limit: MAX_RESPONSE_BYTES,
            actual: total,
        });
    }
    Ok(responses)
}

fn patch_command(request: pb::PatchRequest) -> Result<PatchCommand, KvError> {
    let mut violations = Vec::new();
    let merge_patch = match request.merge_patch {
        None => {
            violations.push(FieldViolation {
                field: "merge_patch".into(),
                description: "a merge patch is required (a JSON value; an object merges)".into(),
            });
            serde_json::Value::Null
        }
        Some(json) if json.encoded_len() > MAX_JSON_PROTO_BYTES => {
            violations.push(FieldViolation {
                field: "merge_patch".into(),
                description: format!(
                    "merge_patch is {} bytes as google.protobuf.Value; the limit is \
                     {MAX_JSON_PROTO_BYTES} bytes, as for a put's json value",
                    json.encoded_len()
                ),
            });
            serde_json::Value::Null
        }
        Some(json) => json_from_proto(json).unwrap_or_else(|reason| {
            violations.push(FieldViolation {
                field: "merge_patch".into(),
                description: reason,
            });
            serde_json::Value::Null
        }),
    };
    let expiration = match request.expiration {
        None => Ok(Expiration::Never),
        Some(pb::patch_request::Expiration::Ttl(ttl)) => nanos_from_duration(&ttl)
            .map(Expiration::TtlNanos)
            .map_err(|reason| ("ttl".to_string(), reason)),
        Some(pb::patch_request::Expiration::ExpireTime(at)) => nanos_from_timestamp(&at)
            .map(Expiration::AtNanos)
            .map_err(|reason| ("expire_time".to_string(), reason)),
    };
    let expiration = expiration.unwrap_or_else(|(field, description)| {
        violations.push(FieldViolation { field, description });
        Expiration::Never
    });
    let ttl = match pb::TtlMode::try_from(request.ttl_mode) {
        Ok(pb::TtlMode::Unspecified | pb::TtlMode::Keep) => {
            if request.expiration.is_some() {
                violations.push(FieldViolation {
                    field: "ttl_mode".into(),
                    description: "ttl or expire_time is set but ttl_mode is KEEP; set \
                                  TTL_MODE_REPLACE to change the expiry"
                        .into(),
                });
            }
            PatchTtl::Keep
        }
        Ok(pb::TtlMode::Replace) => PatchTtl::Replace(expiration),
        Err(_) => {
            violations.push(FieldViolation {
                field: "ttl_mode".into(),
                description: format!(
                    "unknown ttl_mode {}; use TTL_MODE_KEEP or TTL_MODE_REPLACE",
                    request.ttl_mode
                ),
            });
            PatchTtl::Keep
        }
    };
    if !violations.is_empty() {
        return Err(KvError::InvalidArgument(violations));
    }
    Ok(PatchCommand {
        key: request.key,
        merge_patch,
        if_version: request.if_version,
        ttl,
        create_if_missing: request.create_if_missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON value whose protobuf form exceeds what a Get can return is
    /// refused at write time, so that everything written as JSON reads back
    /// as JSON; one under the limit is accepted.
    #[test]
    fn json_writes_must_be_readable_as_json() {
        // A string costs its length plus a tag and a length prefix.
        let text = |len: usize| prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("x".repeat(len))),
        };
        let put = |json| pb::PutRequest {
            key: "k".into(),
            value: Some(pb::put_request::Value::Json(json)),
            ..Default::default()
        };
        let Err(KvError::InvalidArgument(violations)) =
            put_command("", put(text(MAX_JSON_PROTO_BYTES)))
        else {
            panic!("expected INVALID_ARGUMENT");
        };
        assert_eq!(violations[0].field, "json");
        assert!(
            violations[0].description.contains("read back as JSON"),
            "{violations:?}"
        );
        assert!(put_command("", put(text(MAX_JSON_PROTO_BYTES - 10))).is_ok());
    }
}
