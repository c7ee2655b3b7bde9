//! Conversions between JSON (`serde_json`) and the protobuf well-known types
//! tierkv's messages carry (`google.protobuf.Value`/`Struct`, `Timestamp`,
//! `Duration`). The one place they live: the server's adapters and the
//! clients call them, the domain never sees protobuf types.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp};

/// Largest integer an f64 holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Converts a `google.protobuf.Value` to JSON. Fails on NaN and infinities,
/// which JSON cannot represent. An empty `Value` reads as `null`.
pub fn json_from_proto(value: prost_types::Value) -> Result<serde_json::Value, String> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(flag),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text),
        Some(Kind::NumberValue(number)) => number_to_json(number)?,
        Some(Kind::StructValue(object)) => serde_json::Value::Object(
            object
                .fields
                .into_iter()
                .map(|(name, field)| Ok((name, json_from_proto(field)?)))
                .collect::<Result<_, String>>()?,
        ),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .into_iter()
                .map(json_from_proto)
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn number_to_json(number: f64) -> Result<serde_json::Value, String> {
    if !number.is_finite() {
        return Err(format!("{number} is not a JSON number"));
    }
    // protobuf carries every number as a double; integral ones go back to
    // integers so that `1` is stored and serialized as `1`, not `1.0`.
    if number.fract() == 0.0 && number.abs() <= MAX_EXACT_INTEGER {
        return Ok(serde_json::Value::from(number as i64));
    }
    serde_json::Number::from_f64(number)
        .map(serde_json::Value::Number)
        .ok_or_else(|| format!("{number} is not a JSON number"))
}

/// Converts JSON to a `google.protobuf.Value`.
pub fn json_to_proto(value: serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(text) => Kind::StringValue(text),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_proto).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(Struct {
            fields: fields
                .into_iter()
                .map(|(name, field)| (name, json_to_proto(field)))
                .collect::<BTreeMap<_, _>>(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn struct_from_json(object: serde_json::Map<String, serde_json::Value>) -> Struct {
    match json_to_proto(serde_json::Value::Object(object)).kind {
        Some(Kind::StructValue(value)) => value,
        // An object converts to a struct; nothing else is reachable.
        _ => Struct::default(),
    }
}

/// A `google.protobuf.Struct` as a JSON object; fails on NaN and infinities.
pub fn json_from_struct(
    value: Struct,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match json_from_proto(prost_types::Value {
        kind: Some(Kind::StructValue(value)),
    })? {
        serde_json::Value::Object(object) => Ok(object),
        // A struct converts to an object; nothing else is reachable.
        _ => Ok(serde_json::Map::new()),
    }
}

/// A timestamp for milliseconds since the Unix epoch.
pub fn timestamp_from_millis(millis: u64) -> Timestamp {
    Timestamp {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

/// Nanoseconds since the Unix epoch for a timestamp.
pub fn nanos_from_timestamp(timestamp: &Timestamp) -> Result<i128, String> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(format!(
            "expire_time has nanos {}; it must be between 0 and 999,999,999",
            timestamp.nanos
        ));
    }
    Ok(i128::from(timestamp.seconds) * 1_000_000_000 + i128::from(timestamp.nanos))
}

/// Nanoseconds of a protobuf duration, negative ones included (the domain
/// refuses those with the minimum); malformed durations are refused here.
pub fn nanos_from_duration(duration: &prost_types::Duration) -> Result<i128, String> {
    let (seconds, nanos) = (duration.seconds, duration.nanos);
    if !(-999_999_999..=999_999_999).contains(&nanos) {
        return Err(format!(
            "ttl has nanos {nanos}; it must be between -999,999,999 and 999,999,999"
        ));
    }
    if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
        return Err(format!(
            "ttl has seconds {seconds} and nanos {nanos}; a google.protobuf.Duration needs both of the same sign"
        ));
    }
    Ok(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
}

/// Why stored JSON could not become a `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonTextError {
    /// The text is not JSON (or holds a number JSON cannot carry).
    Invalid(String),
    /// Arrays and objects nest deeper than the limit given.
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The encoded `Value` would exceed the budget given.
    TooLarge {
        /// The budget.
        budget: usize,
    },
}

/// What the first pass over serialized JSON learnt: enough to build its
/// `google.protobuf.Value` with exact capacities, and its encoded size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedJson {
    /// The length of the `Value`'s protobuf encoding (the message body,
    /// without tag and length prefix).
    pub encoded_len: usize,
    /// The length of every array, in the order they open.
    array_lengths: Vec<usize>,
}

/// The first pass of [`json_text_to_proto`]: checks that `text` is JSON
/// nested at most `max_depth` levels whose `google.protobuf.Value` encodes to
/// at most `budget` bytes. Allocates nothing but one length per array, and
/// stops as soon as a limit is crossed.
pub fn scan_json_text(
    text: &[u8],
    max_depth: usize,
    budget: usize,
) -> Result<ScannedJson, JsonTextError> {
    let mut scan = json_scan::Scan {
        max_depth,
        budget,
        counted: 0,
        array_lengths: Vec::new(),
        stopped: None,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let scanned = serde::de::DeserializeSeed::deserialize(
        json_scan::ScanSeed {
            scan: &mut scan,
            depth: 0,
        },
        &mut deserializer,
    )
    .and_then(|encoded_len| deserializer.end().map(|()| encoded_len));
    match (scanned, scan.stopped) {
        (_, Some(stop)) => Err(stop),
        (Err(error), None) => Err(JsonTextError::Invalid(error.to_string())),
        (Ok(encoded_len), None) => Ok(ScannedJson {
            encoded_len,
            array_lengths: scan.array_lengths,
        }),
    }
}

/// The second pass of [`json_text_to_proto`]: builds the `Value` of text
/// that [`scan_json_text`] accepted, with exact capacities.
pub fn build_json_value(
    text: &[u8],
    scanned: &ScannedJson,
) -> Result<prost_types::Value, JsonTextError> {
    let mut lengths = scanned.array_lengths.iter().copied();
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    serde::de::DeserializeSeed::deserialize(
        json_scan::BuildSeed {
            array_lengths: &mut lengths,
        },
        &mut deserializer,
    )
    .map_err(|error| JsonTextError::Invalid(error.to_string()))
}

/// Parses serialized JSON straight into a `google.protobuf.Value`, refusing
/// nesting deeper than `max_depth` and values whose protobuf encoding would
/// exceed `budget` bytes; returns the value and its encoded length.
///
/// Two passes over the text: the first ([`scan_json_text`]) allocates
/// nothing and stops as soon as a limit is crossed; the second
/// ([`build_json_value`]) builds the tree with exact capacities. So a refused
/// value costs no memory, and an accepted one costs its tree and nothing more
/// (no intermediate `serde_json::Value`, no over-allocated vectors).
pub fn json_text_to_proto(
    text: &[u8],
    max_depth: usize,
    budget: usize,
) -> Result<(prost_types::Value, usize), JsonTextError> {
    let scanned = scan_json_text(text, max_depth, budget)?;
    let value = build_json_value(text, &scanned)?;
    Ok((value, scanned.encoded_len))
}

mod json_scan;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every JSON type survives a trip through google.protobuf.Value.
    #[test]
    fn json_round_trips_through_proto() {
        let json = serde_json::json!({
            "null": null, "bool": true, "int": 42, "negative": -7, "float": 1.5,
            "text": "hé", "list": [1, "two", [3]], "object": {"nested": {"deep": false}}
        });
        let back = json_from_proto(json_to_proto(json.clone())).unwrap();
        assert_eq!(back, json);
        assert_eq!(serde_json::to_string(&back["int"]).unwrap(), "42");
    }

    /// NaN and infinity are rejected, not stored as garbage.
    #[test]
    fn rejects_non_finite_numbers() {
        let nan = prost_types::Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert!(json_from_proto(nan).is_err());
    }

    /// Timestamps convert to nanoseconds exactly and reject invalid nanos.
    #[test]
    fn timestamps_convert() {
        let at = Timestamp {
            seconds: 10,
            nanos: 1,
        };
        assert_eq!(nanos_from_timestamp(&at).unwrap(), 10_000_000_001);
        assert_eq!(
            timestamp_from_millis(10_001),
            Timestamp {
                seconds: 10,
                nanos: 1_000_000
            }
        );
        assert!(nanos_from_timestamp(&Timestamp {
            seconds: 1,
            nanos: -1
        })
        .is_err());
    }

    fn ttl(seconds: i64, nanos: i32) -> Result<i128, String> {
        nanos_from_duration(&prost_types::Duration { seconds, nanos })
    }

    /// Durations convert exactly, negative ones included; malformed ones are
    /// refused.
    #[test]
    fn durations_convert_exactly() {
        assert_eq!(ttl(0, 999_999_999), Ok(999_999_999));
        assert_eq!(ttl(-1, -500_000_000), Ok(-1_500_000_000));
        assert_eq!(
            ttl(i64::MIN, -999_999_999),
            Ok(i128::from(i64::MIN) * 1_000_000_000 - 999_999_999)
        );
        assert!(ttl(1, -1).unwrap_err().contains("same sign"));
        assert!(ttl(0, 1_000_000_000)
            .unwrap_err()
            .contains("between -999,999,999 and 999,999,999"));
    }

    fn convert(text: &str) -> Result<(prost_types::Value, usize), JsonTextError> {
        json_text_to_proto(text.as_bytes(), 32, usize::MAX)
    }

    /// The tree equals the one built through serde_json, and the counted
    /// size is exactly what prost encodes, for every JSON type.
    #[test]
    fn json_text_converts_with_exact_encoded_size() {
        let long = "x".repeat(300);
        let cases = [
            "null".to_string(),
            "true".into(),
            "false".into(),
            "0".into(),
            "-7".into(),
            "1.5e300".into(),
            "18446744073709551615".into(),
            "\"\"".into(),
            "\"h\\u00e9\\n\"".into(),
            format!("\"{long}\""),
            "[]".into(),
            "{}".into(),
            "{\"\": 1}".into(),
            format!("{{\"{long}\": [{{}}, [], null, \"{long}\"]}}"),
            "[1, \"two\", [3, [4, {\"five\": false}]], {\"a\": {\"b\": null}}]".into(),
            format!("[{}]", vec!["1"; 1000].join(",")),
        ];
        for text in cases {
            let (value, encoded_len) =
                convert(&text).unwrap_or_else(|error| panic!("{text}: {error:?}"));
            let expected = json_to_proto(serde_json::from_str(&text).unwrap());
            assert_eq!(value, expected, "{text}");
            assert_eq!(
                encoded_len,
                prost::Message::encoded_len(&expected),
                "{text}"
            );
        }
    }

    /// Arrays and objects nested up to the limit convert; one level more is
    /// refused, whatever mix of arrays and objects.
    #[test]
    fn json_text_nesting_is_limited() {
        let nested = |depth: usize, open: &str, close: &str| {
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        };
        assert!(convert(&nested(32, "[", "]")).is_ok());
        assert!(convert(&nested(32, "{\"a\":", "}")).is_ok());
        assert_eq!(
            convert(&nested(33, "[", "]")).unwrap_err(),
            JsonTextError::TooDeep { limit: 32 }
        );
        assert_eq!(
            convert(&nested(33, "{\"a\":", "}")).unwrap_err(),
            JsonTextError::TooDeep { limit: 32 }
        );
        assert_eq!(
            convert(&nested(127, "[", "]")).unwrap_err(),
            JsonTextError::TooDeep { limit: 32 }
        );
        assert_eq!(
            convert(&nested(100_000, "[", "]")).unwrap_err(),
            JsonTextError::TooDeep { limit: 32 },
            "no stack overflow, however deep"
        );
    }

    /// The scan stops at the budget: a value whose encoding is one byte over
    /// is refused, one that fits exactly is accepted.
    #[test]
    fn json_text_size_is_budgeted() {
        let text = format!("[{}]", vec!["1"; 1000].join(","));
        let size = convert(&text).unwrap().1;
        assert_eq!(
            size,
            3 + 1000 * 11,
            "a small number costs 11 bytes in a list"
        );
        assert!(json_text_to_proto(text.as_bytes(), 32, size).is_ok());
        assert_eq!(
            json_text_to_proto(text.as_bytes(), 32, size - 1).unwrap_err(),
            JsonTextError::TooLarge { budget: size - 1 }
        );
        assert_eq!(
            json_text_to_proto(b"[1, 2, oops", 32, 5).unwrap_err(),
            JsonTextError::TooLarge { budget: 5 },
            "the budget stops the scan before it reads further"
        );
    }

    /// Text that is not JSON is reported as such.
    #[test]
    fn json_text_must_be_json() {
        for text in ["", "{", "[1,]", "nope", "1 2", "\"\\ud800\""] {
            assert!(
                matches!(convert(text), Err(JsonTextError::Invalid(_))),
                "{text:?}"
            );
        }
        assert!(matches!(
            json_text_to_proto(b"\"\xff\"", 32, usize::MAX),
            Err(JsonTextError::Invalid(_))
        ));
    }
}
