//! The serde visitors behind [`super::json_text_to_proto`]: a scan that
//! counts the encoded size and nesting without allocating, and a build with
//! exact capacities.

use std::collections::BTreeMap;
use std::fmt;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::JsonTextError;

/// Bytes of a varint holding `value`.
fn varint_len(value: usize) -> usize {
    prost::encoding::encoded_len_varint(value as u64)
}

/// A length-delimited field of `body` bytes: tag, length, body.
fn delimited_len(body: usize) -> usize {
    1 + varint_len(body) + body
}

/// Encoded sizes of `Value` bodies: `null_value` and `bool_value` are a
/// tag and a one-byte varint, `number_value` a tag and a fixed64.
const SCALAR_LEN: usize = 2;
const NUMBER_LEN: usize = 9;

pub(super) struct Scan {
    pub(super) max_depth: usize,
    pub(super) budget: usize,
    /// Encoded bytes counted so far; at the end, the whole value's.
    pub(super) counted: usize,
    /// The length of every array, in the order they open.
    pub(super) array_lengths: Vec<usize>,
    /// Why the scan stopped early, if it did.
    pub(super) stopped: Option<JsonTextError>,
}

impl Scan {
    fn count<E: de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        self.counted += bytes;
        if self.counted > self.budget {
            return Err(self.stop(JsonTextError::TooLarge {
                budget: self.budget,
            }));
        }
        Ok(())
    }

    fn stop<E: de::Error>(&mut self, reason: JsonTextError) -> E {
        self.stopped = Some(reason);
        E::custom("limit reached")
    }
}

/// Scans one JSON value; yields the encoded length of its `Value` body.
pub(super) struct ScanSeed<'a> {
    pub(super) scan: &'a mut Scan,
    pub(super) depth: usize,
}

impl<'de> DeserializeSeed<'de> for ScanSeed<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ScanSeed<'_> {
    fn leaf<E: de::Error>(self, len: usize) -> Result<usize, E> {
        self.scan.count(len)?;
        Ok(len)
    }

    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > self.scan.max_depth {
            return Err(self.scan.stop(JsonTextError::TooDeep {
                limit: self.scan.max_depth,
            }));
        }
        Ok(depth)
    }

    /// Counts the framing of a finished container whose body is `body`
    /// bytes: the `list_value` / `struct_value` field of its `Value`.
    fn close<E: de::Error>(self, body: usize) -> Result<usize, E> {
        let len = delimited_len(body);
        self.scan.count(len - body)?;
        Ok(len)
    }
}

impl<'de> Visitor<'de> for ScanSeed<'_> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        self.leaf(SCALAR_LEN)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<usize, E> {
        self.leaf(SCALAR_LEN)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<usize, E> {
        self.leaf(NUMBER_LEN)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<usize, E> {
        self.leaf(NUMBER_LEN)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<usize, E> {
        self.leaf(NUMBER_LEN)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<usize, E> {
        self.leaf(delimited_len(text.len()))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut items: A) -> Result<usize, A::Error> {
        let depth = self.enter()?;
        let slot = self.scan.array_lengths.len();
        self.scan.array_lengths.push(0);
        let (mut count, mut body) = (0, 0);
        while let Some(item) = items.next_element_seed(ScanSeed {
            scan: &mut *self.scan,
            depth,
        })? {
            // Each element is a `values` field of the ListValue.
            self.scan.count(delimited_len(item) - item)?;
            body += delimited_len(item);
            count += 1;
        }
        self.scan.array_lengths[slot] = count;
        self.close(body)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut fields: A) -> Result<usize, A::Error> {
        let depth = self.enter()?;
        let mut body = 0;
        while let Some(name_len) = fields.next_key_seed(KeyLen)? {
            let value = fields.next_value_seed(ScanSeed {
                scan: &mut *self.scan,
                depth,
            })?;
            // A map entry: key field (omitted when empty, as prost does),
            // value field; the entry itself is a `fields` field.
            let key = if name_len == 0 {
                0
            } else {
                delimited_len(name_len)
            };
            let entry = key + delimited_len(value);
            self.scan.count(delimited_len(entry) - value)?;
            body += delimited_len(entry);
        }
        self.close(body)
    }
}

/// Reads an object key without keeping it; yields its length.
struct KeyLen;

impl<'de> DeserializeSeed<'de> for KeyLen {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyLen {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<usize, E> {
        Ok(text.len())
    }
}

/// Builds the `Value` of a JSON value the scan accepted.
pub(super) struct BuildSeed<'a, I> {
    pub(super) array_lengths: &'a mut I,
}

impl<'de, I: Iterator<Item = usize>> DeserializeSeed<'de> for BuildSeed<'_, I> {
    type Value = prost_types::Value;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<prost_types::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn value(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

impl<'de, I: Iterator<Item = usize>> Visitor<'de> for BuildSeed<'_, I> {
    type Value = prost_types::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(value(Kind::NullValue(0)))
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Self::Value, E> {
        Ok(value(Kind::BoolValue(flag)))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Self::Value, E> {
        Ok(value(Kind::NumberValue(number as f64)))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Self::Value, E> {
        Ok(value(Kind::NumberValue(number as f64)))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Self::Value, E> {
        Ok(value(Kind::NumberValue(number)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(value(Kind::StringValue(text.to_string())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(value(Kind::StringValue(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let capacity = self.array_lengths.next().unwrap_or(0);
        let mut values = Vec::with_capacity(capacity);
        while let Some(item) = items.next_element_seed(BuildSeed {
            array_lengths: &mut *self.array_lengths,
        })? {
            values.push(item);
        }
        Ok(value(Kind::ListValue(ListValue { values })))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some(name) = entries.next_key::<String>()? {
            let field = entries.next_value_seed(BuildSeed {
                array_lengths: &mut *self.array_lengths,
            })?;
            fields.insert(name, field);
        }
        Ok(value(Kind::StructValue(Struct { fields })))
    }
}
