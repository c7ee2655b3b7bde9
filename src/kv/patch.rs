//! `Patch`: an RFC 7396 JSON merge patch applied atomically on the server.
//!
//! The patch is a read, a merge and a compare-and-set on the version read
//! (`Precondition::IfVersion`, or `IfAbsent` when it creates the key). When a
//! concurrent write wins the race, the patch is merged again into what that
//! write left and retried, so clients patching different fields of one record
//! at once all win. Only a caller's own `if_version` makes it fail with a
//! precondition error.

use serde_json::Value as Json;

use super::limits::{json_depth, MAX_JSON_DEPTH, MAX_JSON_PROTO_BYTES, MAX_VALUE_BYTES};
use super::validate::{resolve_expiration, serialize_json, too_deep, validate_key};
use super::{invalid, Expiration, FieldViolation, KvError, KvService};
use crate::engine::{EngineError, Precondition, PutOp, ValueKind};

/// Most read-merge-write rounds one patch makes before giving up. Each lost
/// round means another write of the key committed meanwhile, so this many
/// concurrent writers of one key can all patch it in one call each.
pub const MAX_PATCH_ATTEMPTS: usize = 1_000;

/// What a patch does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchTtl {
    /// Keep the record's expiry (a created record never expires).
    #[default]
    Keep,
    /// Replace it (`Expiration::Never` removes it).
    Replace(Expiration),
}

/// Patches one key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatchCommand {
    /// The key.
    pub key: String,
    /// The RFC 7396 merge patch.
    pub merge_patch: Json,
    /// Patch only if the key's version equals this.
    pub if_version: Option<u64>,
    /// What happens to the expiry.
    pub ttl: PatchTtl,
    /// Patch a missing key as if it held `{}`, creating it.
    pub create_if_missing: bool,
}

/// What a patch did.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchResult {
    /// The value after the patch.
    pub value: Json,
    /// The key's new version.
    pub version: u64,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// Whether the patch created the key.
    pub created: bool,
}

impl KvService {
    /// Applies `command.merge_patch` to the key's JSON value atomically; see
    /// the module documentation.
    pub async fn patch(&self, command: PatchCommand) -> Result<PatchResult, KvError> {
        let mut violations = Vec::new();
        if let Err(violation) = validate_key("key", &command.key) {
            violations.push(violation);
        }
        let depth = json_depth(&command.merge_patch);
        if depth > MAX_JSON_DEPTH {
            violations.push(FieldViolation::new("merge_patch", too_deep(depth)));
        }
        let patch_bytes = serialize_json(&command.merge_patch).len();
        if patch_bytes > MAX_VALUE_BYTES {
            violations.push(FieldViolation::new(
                "merge_patch",
                format!(
                    "merge_patch is {patch_bytes} bytes serialized; the limit is \
                     {MAX_VALUE_BYTES} bytes (25 MiB), as for a value"
                ),
            ));
        }
        // Checked once up front so a bad TTL is refused before any read.
        if let PatchTtl::Replace(expiration) = command.ttl {
            if let Err(violation) = resolve_expiration("", expiration, self.store.now_millis()) {
                violations.push(violation);
            }
        }
        if !violations.is_empty() {
            return Err(KvError::InvalidArgument(violations));
        }
        self.store.check_owner("key", &command.key)?;

        for _ in 0..MAX_PATCH_ATTEMPTS {
            // A record of an older schema is migrated first, so the patch
            // applies to (and stores) the current schema.
            let current = self.store.get(&command.key).await?;
            let (base, precondition, kept) = match &current {
                None => {
                    if let Some(expected) = command.if_version {
                        return Err(KvError::PreconditionFailed {
                            key: command.key.clone(),
                            index: None,
                            precondition: Precondition::IfVersion(expected),
                            current_version: None,
                        });
                    }
                    if !command.create_if_missing {
                        return Err(KvError::NotFound {
                            key: command.key.clone(),
                        });
                    }
                    (
                        Json::Object(Default::default()),
                        Precondition::IfAbsent,
                        None,
                    )
                }
                Some(record) => {
                    if let Some(expected) = command.if_version {
                        if expected != record.version {
                            return Err(KvError::PreconditionFailed {
                                key: command.key.clone(),
                                index: None,
                                precondition: Precondition::IfVersion(expected),
                                current_version: Some(record.version),
                            });
                        }
                    }
                    if record.kind != ValueKind::Json {
                        return Err(KvError::NotJson {
                            key: command.key.clone(),
                            reason: format!(
                                "the value was written as {}; a merge patch applies to JSON values",
                                match record.kind {
                                    ValueKind::Text => "text",
                                    ValueKind::Bytes => "bytes",
                                    ValueKind::Json => "json",
                                }
                            ),
                        });
                    }
                    let value: Json = serde_json::from_slice(&record.value).map_err(|error| {
                        KvError::NotJson {
                            key: command.key.clone(),
                            reason: format!("the stored JSON does not parse ({error})"),
                        }
                    })?;
                    (value, Precondition::IfVersion(record.version), Some(record))
                }
            };
            if command.merge_patch.is_object() && !base.is_object() {
                return Err(KvError::NotJson {
                    key: command.key.clone(),
                    reason: "the value is not a JSON object; an object merge patch would replace \
                             it whole (send a non-object patch to replace a value)"
                        .into(),
                });
            }
            let mut merged = base;
            json_patch::merge(&mut merged, &command.merge_patch);
            let depth = json_depth(&merged);
            if depth > MAX_JSON_DEPTH {
                return Err(invalid(
                    "merge_patch",
                    format!("the patched value would be too deep: {}", too_deep(depth)),
                ));
            }
            let proto_bytes = json_proto_len(&merged);
            if proto_bytes > MAX_JSON_PROTO_BYTES {
                return Err(invalid(
                    "merge_patch",
                    format!(
                        "the patched value would be {proto_bytes} bytes as google.protobuf.Value; \
                         the limit is {MAX_JSON_PROTO_BYTES} bytes, so that it can be read back as JSON"
                    ),
                ));
            }
            let value = serialize_json(&merged);
            if value.len() > MAX_VALUE_BYTES {
                return Err(invalid(
                    "merge_patch",
                    format!(
                        "the patched value would be {} bytes; the limit is {MAX_VALUE_BYTES} \
                         bytes (25 MiB)",
                        value.len()
                    ),
                ));
            }
            let expire_at_millis = match command.ttl {
                PatchTtl::Keep => kept.and_then(|record| record.expire_at_millis),
                PatchTtl::Replace(expiration) => {
                    resolve_expiration("", expiration, self.store.now_millis())
                        .map_err(|violation| KvError::InvalidArgument(vec![violation]))?
                }
            };
            let op = PutOp {
                key: command.key.clone(),
                kind: ValueKind::Json,
                value,
                metadata: kept.and_then(|record| record.metadata.clone()),
                expire_at_millis,
                schema_version: kept.map_or(1, |record| record.schema_version),
                precondition,
            };
            match self.store.put(op).await {
                Ok(version) => {
                    return Ok(PatchResult {
                        value: merged,
                        version,
                        expire_at_millis,
                        created: kept.is_none(),
                    })
                }
                // Another write got there first. With the caller's own
                // if_version that is the caller's conflict; otherwise merge
                // into what the winner left and try again.
                Err(KvError::PreconditionFailed { .. }) if command.if_version.is_none() => {
                    tokio::task::yield_now().await;
                }
                Err(error) => return Err(error),
            }
        }
        Err(KvError::Engine(EngineError::Unavailable(format!(
            "the patch lost {MAX_PATCH_ATTEMPTS} races against concurrent writes of the key; retry"
        ))))
    }
}

/// Bytes of `value` encoded as a `google.protobuf.Value`, without building
/// it: what a read of the value as JSON (and the patch's answer) will send.
/// Computed here from the wire format, so the domain needs no protobuf
/// library; `tests/kv_patch.rs` checks it against the encoder byte for byte.
pub fn json_proto_len(value: &Json) -> usize {
    fn delimited(body: usize) -> usize {
        1 + varint_len(body as u64) + body
    }
    match value {
        Json::Null | Json::Bool(_) => 2,
        Json::Number(_) => 9,
        Json::String(text) => delimited(text.len()),
        Json::Array(items) => delimited(
            items
                .iter()
                .map(|item| delimited(json_proto_len(item)))
                .sum(),
        ),
        Json::Object(members) => delimited(
            members
                .iter()
                .map(|(key, item)| {
                    // prost leaves a map entry's empty (default) key out.
                    let key_len = if key.is_empty() {
                        0
                    } else {
                        delimited(key.len())
                    };
                    delimited(key_len + delimited(json_proto_len(item)))
                })
                .sum(),
        ),
    }
}

/// Bytes of `value` as a protobuf varint: 7 bits a byte.
fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Varint lengths change at every seventh bit.
    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(u64::MAX), 10);
    }
}
