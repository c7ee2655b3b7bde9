//! The record codec, the merge patch, the checks of durations.

use super::model::varint_len;
use super::*;
use crate::engine::Record;
use serde_json::json;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

/// The RFC 7396 examples that apply to objects.
#[test]
fn merge_patch_follows_rfc_7396() {
    let data = merge_patch(
        object(json!({"a": "b", "c": {"d": "e", "f": "g"}, "k": 1})),
        &json!({"a": "z", "c": {"f": null, "x": {"y": 1}}, "k": {"n": 2}}),
    );
    assert_eq!(
        Value::Object(data),
        json!({"a": "z", "c": {"d": "e", "x": {"y": 1}}, "k": {"n": 2}})
    );
}

fn record(kind: ValueKind, value: Vec<u8>) -> Record {
    Record {
        kind,
        value,
        metadata: None,
        expire_at_millis: Some(5000),
        version: 7,
        schema_version: 1,
    }
}

/// A codec for the tests: JSON text (the server's is protobuf's
/// `Struct`, tested beside it in `crate::api::session`).
struct JsonCodec;

impl DataCodec for JsonCodec {
    fn encode(&self, object: Map<String, Value>) -> Vec<u8> {
        serde_json::to_vec(&object).unwrap()
    }
    fn decode(&self, bytes: &[u8]) -> Result<Map<String, Value>, String> {
        serde_json::from_slice(bytes).map_err(|error| error.to_string())
    }
}

/// The protobuf record round-trips; a JSON record of the earlier layout
/// reads as the same session; garbage is corrupt, not a panic.
#[test]
fn records_decode_in_both_layouts() {
    let codec = JsonCodec;
    let hash = [7u8; 32];
    let stored = Stored {
        user_id: "alice".into(),
        secret_hash: hash.to_vec(),
        create_ms: 1000,
        expire_ms: 5000,
        idle_timeout_ms: Some(2000),
        idle_expire_ms: Some(3000),
        last_seen_ms: 1000,
        data: Some(codec.encode(object(json!({"role": "admin", "n": 3})))),
        metadata: Some(codec.encode(object(json!({"ip": "10.0.0.1"})))),
    };
    let decoded = decode(&codec, "id", record(ValueKind::Bytes, stored.to_bytes())).unwrap();
    assert_eq!(decoded, stored);

    let legacy = json!({
        "user_id": "alice",
        "secret_hash": token::encode_hash(&hash),
        "create_ms": 1000,
        "expire_ms": 5000,
        "idle_timeout_ms": 2000,
        "idle_expire_ms": 3000,
        "last_seen_ms": 1000,
        "data": {"role": "admin", "n": 3},
        "metadata": {"ip": "10.0.0.1"},
    });
    let value = serde_json::to_vec(&legacy).unwrap();
    let decoded = decode(&codec, "id", record(ValueKind::Json, value)).unwrap();
    assert_eq!(decoded, stored);
    let session = into_session(decoded, "id".into(), 7, None);
    assert_eq!(
        session.data.to_json(&codec).unwrap(),
        object(json!({"role": "admin", "n": 3}))
    );
    assert_eq!(
        session
            .metadata
            .map(|metadata| metadata.to_json(&codec).unwrap()),
        Some(object(json!({"ip": "10.0.0.1"})))
    );

    for (kind, garbage) in [
        (ValueKind::Bytes, vec![0xff, 0xff, 0xff]),
        (ValueKind::Json, b"{".to_vec()),
    ] {
        let error = decode(&codec, "id", record(kind, garbage)).unwrap_err();
        assert!(
            matches!(error, SessionError::Engine(EngineError::Corrupt { .. })),
            "{error:?}"
        );
    }
    // Data its codec cannot read does not decode (the adapter answers
    // DATA_LOSS for it: `api::session` tests).
    let unreadable = Stored {
        data: Some(b"not json".to_vec()),
        ..stored
    };
    let session = into_session(unreadable, "id".into(), 7, None);
    assert!(session.data.to_json(&codec).is_err());
}

/// The varint length matches protobuf's at every boundary.
#[test]
fn varint_lengths() {
    for (value, len) in [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (u64::MAX, 10),
    ] {
        assert_eq!(varint_len(value), len, "{value}");
    }
}

/// Duration limits name the field, the limit and the actual value.
#[test]
fn durations_are_checked() {
    assert_eq!(check_duration("ttl", 1_000_000_000, 10_000).unwrap(), 1000);
    assert_eq!(check_duration("ttl", 1_000_000_001, 10_000).unwrap(), 1001);
    let low = check_duration("ttl", 999_999_999, 10_000).unwrap_err();
    assert_eq!(low.description, "ttl is 0.999999999s; the minimum is 1s");
    let negative = check_duration("idle_timeout", -5_500_000_000, 10_000).unwrap_err();
    assert_eq!(
        negative.description,
        "idle_timeout is -5.5s; the minimum is 1s"
    );
    let high = check_duration("ttl", 11_000_000_000, 10_000).unwrap_err();
    assert!(
        high.description.contains("11s") && high.description.contains("10s"),
        "{}",
        high.description
    );
}

/// A record as the previous release wrote it (data and metadata as
/// `google.protobuf.Struct` messages, encoded by hand here; the adapter's
/// `struct_codec_reads_the_golden_structs` checks the structs against
/// prost's encoding) reads with the new `Stored`, whose fields 8 and 9 are
/// bytes, and writes back byte for byte: the storage layout did not change.
#[test]
fn records_of_the_previous_release_round_trip_byte_for_byte() {
    let golden = hex(GOLDEN_RECORD);
    let stored = decode(&JsonCodec, "id", record(ValueKind::Bytes, golden.clone())).unwrap();
    assert_eq!(stored.user_id, "alice");
    assert_eq!(stored.secret_hash, vec![7u8; 32]);
    assert_eq!(
        (stored.create_ms, stored.expire_ms, stored.last_seen_ms),
        (1000, 5000, 1000)
    );
    assert_eq!(
        (stored.idle_timeout_ms, stored.idle_expire_ms),
        (Some(2000), Some(3000))
    );
    assert_eq!(stored.data, Some(hex(GOLDEN_DATA)));
    assert_eq!(stored.metadata, Some(hex(GOLDEN_METADATA)));
    assert_eq!(stored.to_bytes(), golden);
}

/// `{"n": 3, "role": "admin"}` as a `google.protobuf.Struct`.
pub(crate) const GOLDEN_DATA: &str =
    "0a0e0a016e12091100000000000008400a0f0a04726f6c6512071a0561646d696e";
/// `{"ip": "10.0.0.1"}` as a `google.protobuf.Struct`.
pub(crate) const GOLDEN_METADATA: &str = "0a100a026970120a1a0831302e302e302e31";
/// A whole session record of the protobuf layout holding the two above.
const GOLDEN_RECORD: &str = concat!(
    "0a05616c696365",
    "12200707070707070707070707070707070707070707070707070707070707070707",
    "18e80720882728d00f30b81738e807",
    "42210a0e0a016e12091100000000000008400a0f0a04726f6c6512071a0561646d696e",
    "4a120a100a026970120a1a0831302e302e302e31",
);

pub(crate) fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}
