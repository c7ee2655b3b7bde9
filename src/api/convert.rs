//! Conversions between protobuf well-known types and the domain's types.

use std::collections::BTreeMap;
use std::time::Duration;

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

/// A timestamp for milliseconds since the Unix epoch.
pub fn timestamp_from_millis(millis: u64) -> Timestamp {
    Timestamp {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

/// Milliseconds since the Unix epoch for a timestamp, rounded up so an
/// expiry never comes early.
pub fn millis_from_timestamp(timestamp: &Timestamp) -> Result<i128, String> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(format!(
            "nanos is {}; it must be between 0 and 999,999,999",
            timestamp.nanos
        ));
    }
    let nanos = i128::from(timestamp.nanos);
    Ok(i128::from(timestamp.seconds) * 1000 + (nanos + 999_999) / 1_000_000)
}

/// A std duration for a protobuf duration; negative durations are rejected.
pub fn duration_from_proto(duration: &prost_types::Duration) -> Result<Duration, String> {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(format!(
            "ttl is negative ({}s {}ns)",
            duration.seconds, duration.nanos
        ));
    }
    if duration.nanos >= 1_000_000_000 {
        return Err(format!(
            "nanos is {}; it must be below 1,000,000,000",
            duration.nanos
        ));
    }
    Ok(Duration::new(
        duration.seconds as u64,
        duration.nanos as u32,
    ))
}

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

    /// Timestamps round up to the millisecond and reject invalid nanos.
    #[test]
    fn timestamps_convert() {
        let at = Timestamp {
            seconds: 10,
            nanos: 1,
        };
        assert_eq!(millis_from_timestamp(&at).unwrap(), 10_001);
        assert_eq!(
            timestamp_from_millis(10_001),
            Timestamp {
                seconds: 10,
                nanos: 1_000_000
            }
        );
        assert!(millis_from_timestamp(&Timestamp {
            seconds: 1,
            nanos: -1
        })
        .is_err());
    }
}
