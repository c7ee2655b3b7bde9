//! The change feed over etcd: every transaction that writes records also
//! puts one **feed record** (`<root>f`), listing what each mutation of each
//! write request in it did, in order, request by request (several requests
//! share a transaction under group commit, [`super::write`]). A `Watch` on
//! that one key from the revision current at open delivers the records in
//! commit order, and each becomes one commit on the engine's [`ChangeFeed`](crate::engine::ChangeFeed).
//!
//! Sequences: a mutation's sequence is its version, `revision << 16 |
//! index` (indices are unique within a transaction), and a request's
//! sequence is its last mutation's. So requests sharing a revision still
//! have sequences of their own, and a watcher can resume between them. The
//! feed has published revision `r` whole at [`revision_end`]`(r)`.
//!
//! Why a record of its own rather than the record keys' own watch events:
//! etcd publishes no event for deleting a key that is not there, and a
//! transaction names each key once, while the contract publishes every
//! mutation (a delete of an absent key, two puts of one key in one batch).
//! A namespace clear is one `NamespaceCleared` entry instead of a delete per
//! key. The watch covers the record heads and values too: a live put event
//! carries the value and metadata written beside the feed record in the same
//! revision (etcd delivers one revision's events in one response).
//!
//! The feed key's own etcd history is the engine's change history
//! ([`super::history`]).
//!
//! [`super::follow`] watches the feed and publishes what it delivers.

use std::sync::Arc;

use super::keys::version;
use crate::engine::{Change, ChangeEvent, PutPayload};

/// The feed record format: 3 lists requests (the kind's high bit ends one);
/// 2 (before group commit) held one request, its entries indexed by position.
const FORMAT: u8 = 3;
const FORMAT_ONE_REQUEST: u8 = 2;
/// Set on the kind of the last entry of a request.
const ENDS_REQUEST: u8 = 0x80;
/// The low bits of [`revision_end`]: above every index of a transaction.
const REVISION_END_INDEX: u64 = 0xffff;
/// Most mutations one transaction's requests may hold together, so that
/// their indices stay below [`REVISION_END_INDEX`].
pub(crate) const MAX_INDICES_PER_REVISION: usize = REVISION_END_INDEX as usize;
const HEADER_LEN: usize = 13;
const ENTRY_LEN: usize = 19;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_CLEARED: u8 = 3;

/// One entry of a feed record: what one mutation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A put, with its index in the batch (its version's low bits).
    Put {
        /// The key.
        key: String,
        /// Index of the mutation in its batch.
        index: u16,
        /// The record's expiry.
        expire_at_millis: Option<u64>,
        /// The record's schema version.
        schema_version: u32,
    },
    /// A delete (whether or not a live record was there).
    Delete {
        /// The key.
        key: String,
        /// Index of the mutation in its transaction.
        index: u16,
    },
    /// A namespace cleared, named by its prefix.
    Cleared {
        /// The namespace's prefix.
        prefix: String,
    },
}

impl Entry {
    /// The key (for a clear, the namespace's prefix).
    pub(crate) fn key(&self) -> &str {
        match self {
            Entry::Put { key, .. } | Entry::Delete { key, .. } => key,
            Entry::Cleared { prefix } => prefix,
        }
    }

    /// The mutation's index in its transaction. A clear is alone in its
    /// own and takes the revision's end, so that its sequence and the next
    /// revision's first are consecutive, as after a clear on every engine.
    pub(crate) fn index(&self) -> u16 {
        match self {
            Entry::Put { index, .. } | Entry::Delete { index, .. } => *index,
            Entry::Cleared { .. } => REVISION_END_INDEX as u16,
        }
    }

    /// The same entry `offset` indices further into a shared transaction.
    pub(crate) fn shifted(mut self, offset: u16) -> Self {
        match &mut self {
            Entry::Put { index, .. } | Entry::Delete { index, .. } => *index += offset,
            Entry::Cleared { .. } => {}
        }
        self
    }
}

/// The sequence of the mutation of `index` committed at `revision` (its
/// version).
pub(crate) fn sequence(revision: i64, index: u16) -> u64 {
    version(revision, u64::from(index))
}

/// The sequence at which the feed has published all of `revision`: above
/// every request's sequence in it, below every later revision's.
pub(crate) fn revision_end(revision: i64) -> u64 {
    if revision <= 0 {
        return 0;
    }
    version(revision, REVISION_END_INDEX)
}

/// The revision a sequence belongs to.
pub(crate) fn revision_of(sequence: u64) -> i64 {
    (sequence >> 16) as i64
}

/// The first revision that may hold requests after `sequence`: its own,
/// unless it is a revision's end (at least 1: etcd reads 0 as "now").
pub(crate) fn first_revision_after(sequence: u64) -> i64 {
    let revision = revision_of(sequence);
    if sequence & REVISION_END_INDEX == REVISION_END_INDEX {
        revision + 1
    } else {
        revision.max(1)
    }
}

/// A decoded feed record: the write requests of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeedRecord {
    /// When the transaction was committed, by the engine's clock.
    pub(crate) committed_at_millis: u64,
    /// Each request's mutations, in order; none is empty.
    pub(crate) requests: Vec<Vec<Entry>>,
}

/// Bytes a feed record of entries with these keys takes, to check a
/// request's size before sending it.
pub(crate) fn encoded_len<'a>(keys: impl Iterator<Item = &'a str>) -> usize {
    HEADER_LEN + keys.map(|key| ENTRY_LEN + key.len()).sum::<usize>()
}

/// Encodes a feed record of the non-empty `requests` of one transaction.
pub(crate) fn encode(committed_at_millis: u64, requests: &[Vec<Entry>]) -> Vec<u8> {
    let entries = requests.iter().flatten();
    let count = requests.iter().map(Vec::len).sum::<usize>();
    let mut out = Vec::with_capacity(encoded_len(entries.clone().map(Entry::key)));
    out.push(FORMAT);
    out.extend_from_slice(&committed_at_millis.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let ends: Vec<bool> = requests
        .iter()
        .flat_map(|request| (0..request.len()).map(move |at| at + 1 == request.len()))
        .collect();
    for (entry, ends) in entries.zip(ends) {
        let (kind, index, expire_at, schema_version) = match entry {
            Entry::Put {
                index,
                expire_at_millis,
                schema_version,
                ..
            } => (
                KIND_PUT,
                *index,
                expire_at_millis.unwrap_or(0),
                *schema_version,
            ),
            Entry::Delete { index, .. } => (KIND_DELETE, *index, 0, 0),
            Entry::Cleared { .. } => (KIND_CLEARED, 0, 0, 0),
        };
        out.push(if ends { kind | ENDS_REQUEST } else { kind });
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&expire_at.to_le_bytes());
        out.extend_from_slice(&schema_version.to_le_bytes());
        out.extend_from_slice(&(entry.key().len() as u32).to_le_bytes());
        out.extend_from_slice(entry.key().as_bytes());
    }
    out
}

/// Decodes a feed record; `None` when it is not one.
pub(crate) fn decode(bytes: &[u8]) -> Option<FeedRecord> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != FORMAT && format != FORMAT_ONE_REQUEST {
        return None;
    }
    let committed_at_millis = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
    let mut requests = Vec::new();
    let mut entries = Vec::with_capacity(count.min(rest.len() / ENTRY_LEN));
    for position in 0..count {
        let mut kind = take(&mut rest, 1)?[0];
        let mut index = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
        let ends = if format == FORMAT_ONE_REQUEST {
            index = u16::try_from(position).ok()?;
            position + 1 == count
        } else {
            let ends = kind & ENDS_REQUEST != 0;
            kind &= !ENDS_REQUEST;
            ends
        };
        let expire_at = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let schema_version = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(take(&mut rest, len)?).ok()?.to_string();
        entries.push(match kind {
            KIND_PUT => Entry::Put {
                key,
                index,
                expire_at_millis: (expire_at != 0).then_some(expire_at),
                schema_version,
            },
            KIND_DELETE => Entry::Delete { key, index },
            KIND_CLEARED => Entry::Cleared { prefix: key },
            _ => return None,
        });
        if ends {
            requests.push(std::mem::take(&mut entries));
        }
    }
    (rest.is_empty() && entries.is_empty()).then_some(FeedRecord {
        committed_at_millis,
        requests,
    })
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if rest.len() < len {
        return None;
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Some(head)
}

/// The change events of one request of a feed record committed at
/// `revision`, with the payloads `payload` finds (history has none); its
/// sequence is its last event's.
pub(crate) fn events(
    revision: i64,
    entries: Vec<Entry>,
    mut payload: impl FnMut(&str, u16) -> Option<Arc<PutPayload>>,
) -> Vec<ChangeEvent> {
    let batch_sequence = entries
        .last()
        .map_or(0, |entry| sequence(revision, entry.index()));
    entries
        .into_iter()
        .map(|entry| {
            let sequence = sequence(revision, entry.index());
            let (key, change) = match entry {
                Entry::Put {
                    key,
                    index,
                    expire_at_millis,
                    schema_version,
                } => {
                    let payload = payload(&key, index);
                    (
                        key,
                        Change::Put {
                            version: version(revision, u64::from(index)),
                            expire_at_millis,
                            schema_version,
                            payload,
                        },
                    )
                }
                Entry::Delete { key, .. } => (key, Change::Delete),
                Entry::Cleared { prefix } => (prefix, Change::NamespaceCleared),
            };
            ChangeEvent {
                sequence,
                batch_sequence,
                key: Arc::from(key),
                change,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed record of two requests round-trips, with its request
    /// boundaries; a truncated one or anything else does not decode.
    #[test]
    fn feed_records_round_trip() {
        let requests = vec![
            vec![
                Entry::Put {
                    key: "user:1".into(),
                    index: 0,
                    expire_at_millis: Some(5),
                    schema_version: 2,
                },
                Entry::Delete {
                    key: "é".into(),
                    index: 1,
                },
            ],
            vec![Entry::Delete {
                key: "user:2".into(),
                index: 2,
            }],
        ];
        let bytes = encode(7, &requests);
        assert_eq!(
            bytes.len(),
            encoded_len(requests.iter().flatten().map(Entry::key))
        );
        assert_eq!(
            decode(&bytes),
            Some(FeedRecord {
                committed_at_millis: 7,
                requests: requests.clone()
            })
        );
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b"garbage"), None);
        let cleared = vec![vec![Entry::Cleared {
            prefix: "cache:".into(),
        }]];
        assert_eq!(decode(&encode(9, &cleared)).unwrap().requests, cleared);
    }

    /// Requests sharing a revision get sequences of their own: each event's
    /// is its version, each request's batch sequence its last event's, and
    /// all lie below the revision's end and above the previous revision's.
    #[test]
    fn requests_sharing_a_revision_have_their_own_sequences() {
        let put = |key: &str, index| Entry::Put {
            key: key.into(),
            index,
            expire_at_millis: None,
            schema_version: 1,
        };
        let first = events(5, vec![put("a", 0), put("b", 1)], |_, _| None);
        let second = events(5, vec![put("c", 2)], |_, _| None);
        let sequences: Vec<(u64, u64)> = first
            .iter()
            .chain(&second)
            .map(|event| (event.sequence, event.batch_sequence))
            .collect();
        let at = |index| version(5, index);
        assert_eq!(sequences, [(at(0), at(1)), (at(1), at(1)), (at(2), at(2))]);
        assert!(revision_end(4) < at(0) && at(2) < revision_end(5));
        assert_eq!(revision_of(revision_end(5)), 5);
        assert_eq!(revision_of(at(2)), 5);
    }
}
