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
//!
//! Values longer than [`INLINE_VALUE_MAX`] are stored out of line, so that a
//! scan of heads never reads them: the namespace's column family holds a
//! **head** (format 2: the same header and metadata, then the value's length
//! as a `u64`), and the values column family holds, under the same key, a
//! **value entry** (format 3: the same header, no metadata, then the value).
//! Both carry the version and the expiry, so reads can check that they belong
//! together and the compaction filter drops both at the same time.

use thiserror::Error;

/// The format of a record with its value inline.
pub const FORMAT_VERSION: u8 = 1;
/// The format of a head whose value is stored out of line.
pub const FORMAT_HEAD: u8 = 2;
/// The format of an out-of-line value entry.
pub const FORMAT_VALUE: u8 = 3;
/// Longest value stored inline with its head; longer ones go out of line.
/// About one metadata's worth, so a listing reads at most ~2.5 KiB per key.
pub const INLINE_VALUE_MAX: usize = 1024;
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

    /// The record as borrowed parts, for the encoders.
    pub fn parts(&self) -> RecordParts<'_> {
        RecordParts {
            kind: self.kind,
            value: &self.value,
            metadata: self.metadata.as_deref(),
            expire_at_millis: self.expire_at_millis,
            version: self.version,
            schema_version: self.schema_version,
        }
    }

    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(self.parts())
    }

    /// Deserializes a record; with `include_value = false` the value is left empty.
    /// A head whose value is out of line decodes only with `include_value = false`.
    pub fn decode(bytes: &[u8], include_value: bool) -> Result<Self, RecordError> {
        let (mut record, place) = decode_head(bytes)?;
        if include_value {
            match place {
                ValuePlace::Inline { start } => record.value = bytes[start..].to_vec(),
                ValuePlace::OutOfLine { .. } => return Err(RecordError::OutOfLine),
            }
        }
        Ok(record)
    }

    /// Deserializes a record that is already owned, reusing its buffer for the
    /// value instead of copying it (values can be 25 MiB).
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Self, RecordError> {
        let (mut record, place) = decode_head(&bytes)?;
        match place {
            ValuePlace::Inline { start } => {
                bytes.drain(..start);
                record.value = bytes;
                Ok(record)
            }
            ValuePlace::OutOfLine { .. } => Err(RecordError::OutOfLine),
        }
    }
}

/// Where a head's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValuePlace {
    /// In the head itself, from this offset to the end.
    Inline {
        /// Offset of the value in the head.
        start: usize,
    },
    /// In the values column family under the same key.
    OutOfLine {
        /// The value's length in bytes.
        len: u64,
    },
}

/// Decodes everything of a stored head (format 1 or 2) but the value, and
/// says where the value is.
pub fn decode_head(bytes: &[u8]) -> Result<(Record, ValuePlace), RecordError> {
    let (record, _, place) = decode_header(bytes, &[FORMAT_VERSION, FORMAT_HEAD])?;
    Ok((record, place))
}

/// The bytes a stored head's metadata and value take, read from the header
/// alone (the value itself may be out of line), to budget a response before
/// copying anything.
pub fn peek_payload_len(bytes: &[u8]) -> Result<u64, RecordError> {
    let (_, place) = decode_header_lengths(bytes, &[FORMAT_VERSION, FORMAT_HEAD])?;
    let metadata_len = u64::from(read_u32(bytes, 24));
    Ok(match place {
        ValuePlace::Inline { start } => metadata_len + (bytes.len() - start) as u64,
        ValuePlace::OutOfLine { len } => metadata_len + len,
    })
}

/// The value of an out-of-line value entry, checked against the head's version:
/// `None` when the entry belongs to another version of the key.
pub fn value_of_entry(bytes: &[u8], version: u64) -> Result<Option<&[u8]>, RecordError> {
    let (entry, value_start, _) = decode_header(bytes, &[FORMAT_VALUE])?;
    Ok((entry.version == version).then(|| &bytes[value_start..]))
}

/// Checks the fixed header and the metadata length; returns where the part
/// after the metadata starts and, for heads, where the value is.
fn decode_header_lengths(bytes: &[u8], formats: &[u8]) -> Result<(usize, ValuePlace), RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Truncated { len: bytes.len() });
    }
    if !formats.contains(&bytes[0]) {
        return Err(RecordError::UnknownFormat { version: bytes[0] });
    }
    let metadata_len = read_u32(bytes, 24) as usize;
    let rest = HEADER_LEN
        .checked_add(metadata_len)
        .filter(|end| *end <= bytes.len())
        .ok_or(RecordError::Truncated { len: bytes.len() })?;
    let place = if bytes[0] == FORMAT_HEAD {
        if bytes.len() != rest + 8 {
            return Err(RecordError::Truncated { len: bytes.len() });
        }
        ValuePlace::OutOfLine {
            len: read_u64(bytes, rest),
        }
    } else {
        ValuePlace::Inline { start: rest }
    };
    Ok((rest, place))
}

/// Everything but the value, where the part after the metadata starts, and
/// where the value is.
fn decode_header(bytes: &[u8], formats: &[u8]) -> Result<(Record, usize, ValuePlace), RecordError> {
    let (rest, place) = decode_header_lengths(bytes, formats)?;
    let kind = ValueKind::from_byte(bytes[1]).ok_or(RecordError::UnknownKind { kind: bytes[1] })?;
    let version = read_u64(bytes, 4);
    let schema_version = read_u32(bytes, 12);
    let expire_at = read_u64(bytes, EXPIRE_AT_OFFSET);
    let metadata = (rest > HEADER_LEN).then(|| bytes[HEADER_LEN..rest].to_vec());
    let record = Record {
        kind,
        value: Vec::new(),
        metadata,
        expire_at_millis: (expire_at != 0).then_some(expire_at),
        version,
        schema_version,
    };
    Ok((record, rest, place))
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

/// A record encoded for storage: the head for the namespace's column family
/// and, for a value longer than [`INLINE_VALUE_MAX`], the value entry for the
/// values column family. Writing a head without a value entry must delete the
/// key's value entry in the same batch (an older version may have left one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Format 1 (value inline) or 2 (value out of line).
    pub head: Vec<u8>,
    /// Format 3, when the value is out of line.
    pub value_entry: Option<Vec<u8>>,
}

impl StoredRecord {
    /// Sets the version in the head and the value entry, for a writer that
    /// encodes before it knows the version.
    pub fn set_version(&mut self, version: u64) {
        self.head[4..12].copy_from_slice(&version.to_le_bytes());
        if let Some(entry) = &mut self.value_entry {
            entry[4..12].copy_from_slice(&version.to_le_bytes());
        }
    }

    /// Bytes the record adds to a write batch.
    pub fn len(&self) -> usize {
        self.head.len() + self.value_entry.as_ref().map_or(0, Vec::len)
    }

    /// Never true: a head has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Encodes a record for storage, its value out of line when it is longer
/// than [`INLINE_VALUE_MAX`].
pub fn encode_stored(parts: RecordParts<'_>) -> StoredRecord {
    if parts.value.len() <= INLINE_VALUE_MAX {
        return StoredRecord {
            head: encode_parts(parts),
            value_entry: None,
        };
    }
    let value_len = parts.value.len() as u64;
    let mut head = encode_parts(RecordParts {
        value: &[],
        ..parts
    });
    head[0] = FORMAT_HEAD;
    head.extend_from_slice(&value_len.to_le_bytes());
    let mut value_entry = encode_parts(RecordParts {
        metadata: None,
        ..parts
    });
    value_entry[0] = FORMAT_VALUE;
    StoredRecord {
        head,
        value_entry: Some(value_entry),
    }
}

/// Reads only the expiry of an encoded record, for the compaction filter and
/// liveness checks. `None` for records that never expire or cannot be read.
///
/// Works on heads and value entries alike, so one compaction filter serves
/// both column families.
pub fn peek_expire_at_millis(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || !(FORMAT_VERSION..=FORMAT_VALUE).contains(&bytes[0]) {
        return None;
    }
    let expire_at = read_u64(bytes, EXPIRE_AT_OFFSET);
    (expire_at != 0).then_some(expire_at)
}

/// Reads only the version of an encoded record.
pub fn peek_version(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || !(FORMAT_VERSION..=FORMAT_VALUE).contains(&bytes[0]) {
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
    /// A head whose value is stored out of line, decoded as a whole record.
    #[error("record's value is stored out of line")]
    OutOfLine,
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

    /// Pins the out-of-line layout: a head (format 2) with the value's length
    /// in place of the value, and a value entry (format 3) with the same
    /// header, no metadata, and the value.
    #[test]
    fn out_of_line_encoding_is_pinned() {
        let value = vec![7u8; INLINE_VALUE_MAX + 1];
        let mut record = sample();
        record.value = value.clone();
        let stored = encode_stored(record.parts());
        let mut head = vec![2u8, 2, 0, 0];
        head.extend_from_slice(&42u64.to_le_bytes());
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&1_700_000_000_123u64.to_le_bytes());
        head.extend_from_slice(&10u32.to_le_bytes());
        head.extend_from_slice(br#"{"m":true}"#);
        head.extend_from_slice(&(value.len() as u64).to_le_bytes());
        assert_eq!(stored.head, head);
        let mut entry = vec![3u8, 2, 0, 0];
        entry.extend_from_slice(&42u64.to_le_bytes());
        entry.extend_from_slice(&3u32.to_le_bytes());
        entry.extend_from_slice(&1_700_000_000_123u64.to_le_bytes());
        entry.extend_from_slice(&0u32.to_le_bytes());
        entry.extend_from_slice(&value);
        assert_eq!(stored.value_entry.as_deref(), Some(entry.as_slice()));

        // Both halves carry the expiry for the compaction filter.
        assert_eq!(peek_expire_at_millis(&stored.head), Some(1_700_000_000_123));
        let entry = stored.value_entry.as_ref().unwrap();
        assert_eq!(peek_expire_at_millis(entry), Some(1_700_000_000_123));
        // The head decodes without its value and says where it is.
        let (decoded, place) = decode_head(&stored.head).unwrap();
        assert_eq!(
            place,
            ValuePlace::OutOfLine {
                len: value.len() as u64
            }
        );
        assert_eq!(decoded.metadata, record.metadata);
        assert_eq!(decoded.version, 42);
        assert_eq!(
            peek_payload_len(&stored.head).unwrap(),
            10 + value.len() as u64
        );
        assert_eq!(value_of_entry(entry, 42).unwrap(), Some(value.as_slice()));
        // An entry of another version does not belong to this head.
        assert_eq!(value_of_entry(entry, 41).unwrap(), None);
        assert_eq!(
            Record::decode(&stored.head, true),
            Err(RecordError::OutOfLine)
        );
    }

    /// Values up to the threshold stay inline in format 1, so records written
    /// before the out-of-line layout existed and new small ones read alike.
    #[test]
    fn short_values_stay_inline() {
        let record = sample();
        let stored = encode_stored(record.parts());
        assert_eq!(stored.head, record.encode());
        assert_eq!(stored.value_entry, None);
        assert_eq!(peek_payload_len(&stored.head).unwrap(), 10 + 7);
        let (_, place) = decode_head(&stored.head).unwrap();
        assert_eq!(
            place,
            ValuePlace::Inline {
                start: HEADER_LEN + 10
            }
        );
    }

    /// A writer that encodes before it knows the version patches both halves.
    #[test]
    fn set_version_patches_head_and_entry() {
        let value = vec![1u8; INLINE_VALUE_MAX * 2];
        let mut stored = encode_stored(RecordParts {
            kind: ValueKind::Bytes,
            value: &value,
            metadata: None,
            expire_at_millis: None,
            version: 0,
            schema_version: 1,
        });
        stored.set_version(99);
        assert_eq!(peek_version(&stored.head), Some(99));
        let entry = stored.value_entry.as_ref().unwrap();
        assert_eq!(value_of_entry(entry, 99).unwrap(), Some(value.as_slice()));
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
