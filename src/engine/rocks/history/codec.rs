//! The encoding of one history entry (see the parent module): format,
//! commit time, event count, then per event its type, key, and for a put
//! its version, schema version and expiry, in varints.

use std::sync::Arc;

use crate::engine::changes::{Change, ChangeEvent};
use crate::engine::HistoryBatch;

const FORMAT: u8 = 1;
const PUT: u8 = 0;
const DELETE: u8 = 1;
const NAMESPACE_CLEARED: u8 = 2;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// One event of a batch to encode.
pub(in crate::engine::rocks) enum HistoryEvent<'a> {
    /// A put.
    Put {
        key: &'a str,
        version: u64,
        expire_at_millis: Option<u64>,
        schema_version: u32,
    },
    /// A delete.
    Delete { key: &'a str },
    /// A namespace emptied.
    NamespaceCleared { prefix: &'a str },
}

/// The history key of a batch.
pub(in crate::engine::rocks) fn history_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// Encodes a batch: format, commit time, event count, then per event its
/// type, key, and for a put its version, schema version and expiry.
pub(in crate::engine::rocks) fn encode_batch<'a>(
    committed_at_millis: u64,
    events: impl ExactSizeIterator<Item = HistoryEvent<'a>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + events.len() * 24);
    out.push(FORMAT);
    out.extend_from_slice(&committed_at_millis.to_le_bytes());
    put_varint(&mut out, events.len() as u64);
    for event in events {
        let (kind, key) = match &event {
            HistoryEvent::Put { key, .. } => (PUT, *key),
            HistoryEvent::Delete { key } => (DELETE, *key),
            HistoryEvent::NamespaceCleared { prefix } => (NAMESPACE_CLEARED, *prefix),
        };
        out.push(kind);
        put_varint(&mut out, key.len() as u64);
        out.extend_from_slice(key.as_bytes());
        if let HistoryEvent::Put {
            version,
            expire_at_millis,
            schema_version,
            ..
        } = event
        {
            put_varint(&mut out, version);
            put_varint(&mut out, u64::from(schema_version));
            // 0 for none: an expiry at the epoch itself is long past anyway.
            put_varint(
                &mut out,
                expire_at_millis.map_or(0, |at| at.saturating_add(1)),
            );
        }
    }
    out
}

/// Decodes the batch stored under `sequence`.
pub(in crate::engine::rocks) fn decode_batch(
    sequence: u64,
    bytes: &[u8],
) -> Result<HistoryBatch, String> {
    let corrupt = || format!("history batch {sequence} is corrupt");
    let (&format, mut rest) = bytes.split_first().ok_or_else(corrupt)?;
    if format != FORMAT {
        return Err(format!(
            "history batch {sequence} has unknown format {format}"
        ));
    }
    let (time, tail) = rest.split_at_checked(8).ok_or_else(corrupt)?;
    rest = tail;
    let committed_at_millis = u64::from_le_bytes(time.try_into().map_err(|_| corrupt())?);
    let count = take_varint(&mut rest).ok_or_else(corrupt)?;
    if count == 0 || count > sequence {
        return Err(corrupt());
    }
    let first = sequence - (count - 1);
    let mut events = Vec::with_capacity(count.min(1 << 16) as usize);
    for event_sequence in first..=sequence {
        let (&kind, tail) = rest.split_first().ok_or_else(corrupt)?;
        rest = tail;
        let len = take_varint(&mut rest).ok_or_else(corrupt)? as usize;
        let (key, tail) = rest.split_at_checked(len).ok_or_else(corrupt)?;
        rest = tail;
        let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
        let change = match kind {
            PUT => {
                let version = take_varint(&mut rest).ok_or_else(corrupt)?;
                let schema_version = take_varint(&mut rest).ok_or_else(corrupt)?;
                let expire = take_varint(&mut rest).ok_or_else(corrupt)?;
                Change::Put {
                    version,
                    expire_at_millis: expire.checked_sub(1),
                    schema_version: u32::try_from(schema_version).map_err(|_| corrupt())?,
                    payload: None,
                }
            }
            DELETE => Change::Delete,
            NAMESPACE_CLEARED => Change::NamespaceCleared,
            _ => return Err(corrupt()),
        };
        events.push(ChangeEvent {
            sequence: event_sequence,
            batch_sequence: sequence,
            key: Arc::from(key),
            change,
        });
    }
    Ok(HistoryBatch {
        sequence,
        committed_at_millis,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch round-trips: sequences counted back from the request's,
    /// expiry and schema version kept, no payload.
    #[test]
    fn batches_round_trip() {
        let encoded = encode_batch(
            77,
            [
                HistoryEvent::Put {
                    key: "user:a",
                    version: 300,
                    expire_at_millis: Some(0),
                    schema_version: 2,
                },
                HistoryEvent::Delete { key: "user:b" },
                HistoryEvent::Put {
                    key: "k",
                    version: u64::MAX,
                    expire_at_millis: None,
                    schema_version: 1,
                },
            ]
            .into_iter(),
        );
        let batch = decode_batch(12, &encoded).unwrap();
        assert_eq!(batch.sequence, 12);
        assert_eq!(batch.committed_at_millis, 77);
        let sequences: Vec<u64> = batch.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, vec![10, 11, 12]);
        assert!(batch.events.iter().all(|e| e.batch_sequence == 12));
        assert_eq!(
            batch.events[0].change,
            Change::Put {
                version: 300,
                expire_at_millis: Some(0),
                schema_version: 2,
                payload: None
            }
        );
        assert_eq!(batch.events[1].change, Change::Delete);
        assert_eq!(&*batch.events[2].key, "k");
        assert!(decode_batch(12, &encoded[..encoded.len() - 1]).is_err());
        assert!(
            decode_batch(1, &encoded).is_err(),
            "3 events cannot end at 1"
        );
    }
}
