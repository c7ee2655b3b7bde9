//! Durations as the configuration writes them (`"1m30s"`, `"500ms"`), and
//! their serde form.

use std::time::Duration;

/// Writes a duration the way the configuration accepts it (`"1m30s"`).
pub fn format_duration(value: Duration) -> String {
    if value.is_zero() {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut millis = value.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    if out.is_empty() {
        // Below a millisecond.
        out = format!("{}us", value.as_micros());
    }
    out
}

/// Parses `"250ms"`, `"60s"`, `"5m"`, `"1h"`, `"2d"` and sums of them
/// (`"1m30s"`); `"0"` is zero. Whitespace around the text is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        format!("{text:?} is not a duration; write a number with a unit: ms, s, m, h or d (like \"60s\" or \"1m30s\")")
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let millis = number.checked_mul(millis_per_unit).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// `#[serde(with = "duration")]`: durations as strings with units.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes a duration written with a unit (see
    /// [`parse_duration`](super::parse_duration)).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => super::parse_duration(&text).map_err(serde::de::Error::custom),
            Raw::Number(0) => Ok(Duration::ZERO),
            Raw::Number(number) => Err(serde::de::Error::custom(format!(
                "{number} has no unit; write a string like \"{number}s\" or \"{number}ms\""
            ))),
        }
    }
}
