//! The on-disk record format (see `docs/record-format.md`).
//!
//! A record is a fixed 28-byte little-endian header followed by the metadata
//! JSON and the value bytes:
//!
//! ```text
//! offset size field
//!      0    1 format version (1)
//!      1    1 value kind (1 text, 2 json, 3 bytes)
//!      2    2 reserved, zero
//!      4    8 version (u64)
//!     12    4 schema version (u32)
//!     16    8 expire_at, milliseconds since the Unix epoch (u64, 0 = never)
//!     24    4 metadata length in bytes (u32, 0 = no metadata)
//!     28    m metadata, serialized JSON
//!   28+m    * value
//! ```
//!
//! The expiry sits at a fixed offset so the compaction filter and the read path
//! can decide liveness without decoding the rest.

use thiserror::Error;

/// The format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 28;
const EXPIRE_AT_OFFSET: usize = 16;

/// How a value was written, so it can be returned the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// A UTF-8 string.
    Text,
    /// Serialized JSON.
    Json,
    /// Arbitrary bytes.
    Bytes,
}

impl ValueKind {
    fn to_byte(self) -> u8 {
        match self {
            ValueKind::Text => 1,
            ValueKind::Json => 2,
            ValueKind::Bytes => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(ValueKind::Text),
            2 => Some(ValueKind::Json),
            3 => Some(ValueKind::Bytes),
            _ => None,
        }
    }
}

/// A stored value with everything kept beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// How the value was written.
    pub kind: ValueKind,
    /// The value bytes: UTF-8 for text, serialized JSON for json. Empty when a
    /// scan asked for metadata only.
    pub value: Vec<u8>,
    /// Serialized JSON metadata, if any.
    pub metadata: Option<Vec<u8>>,
    /// Expiry in milliseconds since the Unix epoch; `None` never expires.
    pub expire_at_millis: Option<u64>,
    /// Increases on every write of the key; unique across the store.
    pub version: u64,
    /// The record's schema version, for the record migrator (default 1).
    pub schema_version: u32,
}

impl Record {
    /// Whether the record has expired at `now_millis`.
    pub fn is_expired_at(&self, now_millis: u64) -> bool {
        self.expire_at_millis
            .is_some_and(|expire_at| expire_at <= now_millis)
    }

    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(RecordParts {
            kind: self.kind,
            value: &self.value,
            metadata: self.metadata.as_deref(),
            expire_at_millis: self.expire_at_millis,
            version: self.version,
            schema_version: self.schema_version,
        })
    }

    /// Deserializes a record; with `include_value = false` the value is left empty.
    pub fn decode(bytes: &[u8], include_value: bool) -> Result<Self, RecordError> {
        let (mut record, value_start) = Self::decode_header(bytes)?;
        if include_value {
            record.value = bytes[value_start..].to_vec();
        }
        Ok(record)
    }

    /// Deserializes a record that is already owned, reusing its buffer for the
    /// value instead of copying it (values can be 25 MiB).
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Self, RecordError> {
        let (mut record, value_start) = Self::decode_header(&bytes)?;
        bytes.drain(..value_start);
        record.value = bytes;
        Ok(record)
    }

    /// Everything but the value, and where the value starts.
    fn decode_header(bytes: &[u8]) -> Result<(Self, usize), RecordError> {
        if bytes.len() < HEADER_LEN {
            return Err(RecordError::Truncated { len: bytes.len() });
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(RecordError::UnknownFormat { version: bytes[0] });
        }
        let kind =
            ValueKind::from_byte(bytes[1]).ok_or(RecordError::UnknownKind { kind: bytes[1] })?;
        let version = read_u64(bytes, 4);
        let schema_version = read_u32(bytes, 12);
        let expire_at = read_u64(bytes, EXPIRE_AT_OFFSET);
        let metadata_len = read_u32(bytes, 24) as usize;
        let value_start = HEADER_LEN
            .checked_add(metadata_len)
            .filter(|end| *end <= bytes.len())
            .ok_or(RecordError::Truncated { len: bytes.len() })?;
        let metadata = (metadata_len > 0).then(|| bytes[HEADER_LEN..value_start].to_vec());
        let record = Record {
            kind,
            value: Vec::new(),
            metadata,
            expire_at_millis: (expire_at != 0).then_some(expire_at),
            version,
            schema_version,
        };
        Ok((record, value_start))
    }
}

/// A record's fields by reference, to encode without building a [`Record`].
#[derive(Debug, Clone, Copy)]
pub struct RecordParts<'a> {
    /// How the value was written.
    pub kind: ValueKind,
    /// The value bytes.
    pub value: &'a [u8],
    /// Serialized JSON metadata.
    pub metadata: Option<&'a [u8]>,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// The record's version.
    pub version: u64,
    /// The record's schema version.
    pub schema_version: u32,
}

/// Serializes a record from its parts.
pub fn encode_parts(parts: RecordParts<'_>) -> Vec<u8> {
    let metadata = parts.metadata.unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + metadata.len() + parts.value.len());
    out.push(FORMAT_VERSION);
    out.push(parts.kind.to_byte());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&parts.version.to_le_bytes());
    out.extend_from_slice(&parts.schema_version.to_le_bytes());
    out.extend_from_slice(&parts.expire_at_millis.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(metadata);
    out.extend_from_slice(parts.value);
    out
}

/// Reads only the expiry of an encoded record, for the compaction filter and
/// liveness checks. `None` for records that never expire or cannot be read.
pub fn peek_expire_at_millis(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || bytes[0] != FORMAT_VERSION {
        return None;
    }
    let expire_at = read_u64(bytes, EXPIRE_AT_OFFSET);
    (expire_at != 0).then_some(expire_at)
}

/// Reads only the version of an encoded record.
pub fn peek_version(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || bytes[0] != FORMAT_VERSION {
        return None;
    }
    Some(read_u64(bytes, 4))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(buf)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(buf)
}

/// A record that cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its header says.
    #[error("record is truncated ({len} bytes)")]
    Truncated {
        /// The length found.
        len: usize,
    },
    /// Written by a newer or unknown format.
    #[error("record has unknown format version {version}")]
    UnknownFormat {
        /// The format byte found.
        version: u8,
    },
    /// Has an unknown value kind.
    #[error("record has unknown value kind {kind}")]
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            kind: ValueKind::Json,
            value: br#"{"a":1}"#.to_vec(),
            metadata: Some(br#"{"m":true}"#.to_vec()),
            expire_at_millis: Some(1_700_000_000_123),
            version: 42,
            schema_version: 3,
        }
    }

    /// Pins the byte layout: a change here is a format change and needs a new version.
    #[test]
    fn encoding_is_pinned() {
        let encoded = sample().encode();
        let mut expected = vec![1u8, 2, 0, 0];
        expected.extend_from_slice(&42u64.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&1_700_000_000_123u64.to_le_bytes());
        expected.extend_from_slice(&10u32.to_le_bytes());
        expected.extend_from_slice(br#"{"m":true}"#);
        expected.extend_from_slice(br#"{"a":1}"#);
        assert_eq!(encoded, expected);
    }

    /// Encoding then decoding gives the record back, and header peeks agree.
    #[test]
    fn round_trips() {
        let record = sample();
        let encoded = record.encode();
        assert_eq!(Record::decode(&encoded, true).unwrap(), record);
        assert_eq!(Record::decode_owned(encoded.clone()).unwrap(), record);
        assert_eq!(peek_expire_at_millis(&encoded), Some(1_700_000_000_123));
        assert_eq!(peek_version(&encoded), Some(42));
        let without_value = Record::decode(&encoded, false).unwrap();
        assert!(without_value.value.is_empty());
        assert_eq!(without_value.metadata, record.metadata);
    }

    /// Garbage is an error, never a panic.
    #[test]
    fn rejects_garbage() {
        assert!(Record::decode(&[], true).is_err());
        assert!(Record::decode(&[9; 40], true).is_err());
        let mut bad_len = sample().encode();
        bad_len[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Record::decode(&bad_len, true).is_err());
        assert!(Record::decode_owned(bad_len).is_err());
        assert_eq!(peek_expire_at_millis(&[1, 2, 3]), None);
    }
}
