//! The change feed over etcd: every transaction that writes records also
//! puts one **feed record** (`<root>f`), listing what each mutation of each
//! write request in it did, in order, request by request (several requests
//! share a transaction under group commit, [`super::write`]). A `Watch` on
//! that one key from the revision current at open delivers the records in
//! commit order, and each becomes one commit on the engine's [`ChangeFeed`].
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
//! When etcd has compacted past the watch's position, subscribers are told
//! they lagged; while etcd is unreachable the watch retries, and
//! `catch_up_to` waits (up to its deadline).
//!
//! **Continuity.** Every transaction that writes records puts the feed key
//! once, so the key's etcd `version` grows by exactly one per feed record.
//! The feed checks that each record it receives is the one after the last
//! ([`Continuity`]), from the version read at open onwards, across
//! re-established watches. A record that skips versions means the watch
//! lost feed records: etcd releases before the fixes of etcd issues 17529
//! and 18089 (Debian's 3.4.23 among them) could drop watch events after a
//! compaction. The revision is then published as a lag, without events, so
//! every subscriber recovers from the history (the feed key's own etcd
//! history, which still holds what the watch dropped) instead of missing
//! them.
//!
//! Every sequence a caller can hold (a write's or a clear's revision, the
//! acknowledged one) is a revision that wrote the feed key, so its event
//! arrives on this watch: no progress request is needed. None is sent on
//! purpose: etcd releases before the fix of etcd issue 15220 (Debian's
//! 3.4.23 among them) may send a requested progress notification ahead of
//! events not delivered yet, and trusting one lost an event in this
//! engine's first test runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};

use super::keys::{version, Keys};
use crate::engine::record::{decode_head, value_of_entry, ValuePlace};
use crate::engine::{Change, ChangeEvent, ChangeFeed, PutPayload};

/// The longest wait between two attempts to re-establish the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Largest watch response the client accepts: one revision's events come in
/// one response, and a batch may carry up to etcd's request size in values.
pub(crate) const MAX_WATCH_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

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
    fn key(&self) -> &str {
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

/// The value and metadata a put of `index` left, from the head (and
/// out-of-line value) put in the same revision: only a key's last put of a
/// batch is stored, so an earlier put of the same key gets none.
fn payload_of(
    heads: &HashMap<&str, &[u8]>,
    values: &HashMap<&str, &[u8]>,
    key: &str,
    index: u16,
) -> Option<Arc<PutPayload>> {
    let head = heads.get(key)?;
    let (record, place) = decode_head(head).ok()?;
    if record.version != u64::from(index) {
        return None;
    }
    let value = match place {
        ValuePlace::Inline { start } => head[start..].to_vec(),
        ValuePlace::OutOfLine { .. } => value_of_entry(values.get(key)?, record.version)
            .ok()??
            .to_vec(),
    };
    Some(Arc::new(PutPayload {
        kind: record.kind,
        value,
        metadata: record.metadata,
    }))
}

/// Follows the feed key's etcd `version` from record to record: it grows by
/// one with every transaction that writes the feed key, so any other step
/// means feed records the watch did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Continuity {
    /// The version of the last feed record published; `None` when unknown
    /// (after a compaction the feed reported as a lag anyway).
    last_version: Option<i64>,
}

impl Continuity {
    /// Continuity from a feed key at `version` (0: the key does not exist
    /// yet, and its first put has version 1).
    pub(crate) fn from_version(version: i64) -> Self {
        Self {
            last_version: Some(version),
        }
    }

    /// Nothing known: the next record is taken as it comes.
    fn unknown() -> Self {
        Self { last_version: None }
    }

    /// Takes the feed record at `version`; returns how many feed records
    /// were skipped before it (at least 1 when the version did not grow,
    /// which happens only if the key was deleted and written again).
    fn follow(&mut self, version: i64) -> u64 {
        let skipped = match self.last_version {
            None => 0,
            Some(last) if version == last.saturating_add(1) => 0,
            Some(last) if version > last => u64::try_from(version - last - 1).unwrap_or(u64::MAX),
            Some(_) => 1,
        };
        self.last_version = Some(version);
        skipped
    }
}

/// One key a revision put, as the watch delivered it.
#[derive(Debug, Clone, Copy)]
struct WatchedPut<'a> {
    key: &'a [u8],
    value: &'a [u8],
    /// The key's etcd `version` after this put.
    version: i64,
}

/// Publishes the events of one revision: a feed record's, with payloads
/// from the records written beside it, or none (a revision that wrote only
/// state, the clock mark or the sweeper's deletes) to move the feed on. A
/// feed record that does not follow the last one ([`Continuity`]), or does
/// not decode, is published as a lag.
fn publish_revision(
    feed: &ChangeFeed,
    keys: &Keys,
    continuity: &mut Continuity,
    revision: i64,
    puts: &[WatchedPut<'_>],
) {
    let mut record = None;
    let mut heads: HashMap<&str, &[u8]> = HashMap::new();
    let mut values: HashMap<&str, &[u8]> = HashMap::new();
    let feed_key = keys.feed();
    for put in puts {
        if put.key == feed_key.as_slice() {
            record = Some((decode(put.value), put.version));
        } else if let Some(key) = keys.record_key(put.key) {
            heads.insert(key, put.value);
        } else if let Some(key) = keys.value_key(put.key) {
            values.insert(key, put.value);
        }
    }
    let end = revision_end(revision);
    let Some((record, version)) = record else {
        feed.publish(end, 0, || 0, Vec::new);
        return;
    };
    let skipped = continuity.follow(version);
    if skipped > 0 {
        tracing::warn!(
            revision,
            version,
            skipped,
            "the etcd watch skipped feed records; reported as a lag, subscribers recover from the history"
        );
        let count = record.map_or(1, |record| record.requests.iter().map(Vec::len).sum());
        let missed = usize::try_from(skipped).unwrap_or(usize::MAX);
        feed.publish(end, count.max(1).saturating_add(missed), || 0, Vec::new);
        return;
    }
    let Some(record) = record else {
        // Something else wrote our feed key: subscribers must assume
        // anything changed.
        tracing::warn!(
            revision,
            "the etcd feed record does not decode; reported as a lag"
        );
        feed.publish(end, 1, || 0, Vec::new);
        return;
    };
    let count = record.requests.iter().map(Vec::len).sum();
    let bytes: usize = record
        .requests
        .iter()
        .flatten()
        .map(|entry| {
            entry.key().len()
                + match entry {
                    Entry::Put { key, .. } => {
                        heads.get(key.as_str()).map_or(0, |head| head.len())
                            + values.get(key.as_str()).map_or(0, |value| value.len())
                    }
                    _ => 0,
                }
        })
        .sum();
    feed.publish(
        end,
        count,
        || bytes,
        || {
            record
                .requests
                .into_iter()
                .flat_map(|entries| {
                    events(revision, entries, |key, index| {
                        payload_of(&heads, &values, key, index)
                    })
                })
                .collect()
        },
    );
}

/// Publishes the revisions of one watch response, in order; returns the
/// revision the watch continues after.
fn publish_response(
    feed: &ChangeFeed,
    keys: &Keys,
    continuity: &mut Continuity,
    response: &WatchResponse,
    mut last: i64,
) -> i64 {
    let mut group: Vec<WatchedPut<'_>> = Vec::new();
    let mut group_revision = 0;
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let revision = kv.mod_revision();
        if revision <= last {
            continue;
        }
        if revision != group_revision && group_revision > last {
            publish_revision(feed, keys, continuity, group_revision, &group);
            last = group_revision;
            group.clear();
        }
        group_revision = revision;
        if event.event_type() == EventType::Put {
            group.push(WatchedPut {
                key: kv.key(),
                value: kv.value(),
                version: kv.version(),
            });
        }
    }
    if group_revision > last {
        publish_revision(feed, keys, continuity, group_revision, &group);
        last = group_revision;
    }
    last
}

/// The range the feed watches: the feed record, record heads and
/// out-of-line values (state and the clock mark lie between and are skipped).
pub(crate) fn watched_range(keys: &Keys) -> (Vec<u8>, Vec<u8>) {
    (keys.feed(), keys.value_range("").1)
}

/// Watches the feed from after revision `last` until the feed's engine is
/// dropped (the task is aborted then), re-establishing the watch after every
/// failure.
pub(crate) async fn run(
    client: etcd_client::Client,
    keys: Keys,
    feed: Arc<ChangeFeed>,
    mut last: i64,
    mut continuity: Continuity,
) {
    let mut backoff = Duration::from_millis(50);
    let (start, end) = watched_range(&keys);
    loop {
        let mut watch = client
            .watch_client()
            .max_decoding_message_size(MAX_WATCH_MESSAGE_BYTES);
        let options = WatchOptions::new()
            .with_range(end.clone())
            .with_start_revision(last + 1);
        match watch.watch(start.clone(), Some(options)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        backoff = Duration::from_millis(50);
                        if response.canceled() {
                            let compacted = response.compact_revision();
                            if compacted > last + 1 {
                                let missed = (compacted - last - 1) as usize;
                                tracing::warn!(
                                    compacted,
                                    missed,
                                    "etcd compacted past the change feed's position; subscribers lag"
                                );
                                feed.publish(revision_end(compacted - 1), missed, || 0, Vec::new);
                                last = compacted - 1;
                                // The skipped records were reported just now.
                                continuity = Continuity::unknown();
                            }
                            break;
                        }
                        last = publish_response(&feed, &keys, &mut continuity, &response, last);
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "the etcd change feed watch failed; retrying");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot watch etcd for the change feed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
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

    /// The feed key's version must grow by one per record: any other step
    /// counts the records skipped, and nothing is known before the first
    /// record after a reset.
    #[test]
    fn continuity_counts_skipped_feed_records() {
        let mut continuity = Continuity::from_version(0);
        assert_eq!(continuity.follow(1), 0);
        assert_eq!(continuity.follow(2), 0);
        assert_eq!(continuity.follow(5), 2);
        assert_eq!(continuity.follow(6), 0);
        // Deleted and written again: the version starts over.
        assert_eq!(continuity.follow(1), 1);
        assert_eq!(continuity.follow(1), 1);
        let mut unknown = Continuity::unknown();
        assert_eq!(unknown.follow(40), 0);
        assert_eq!(unknown.follow(42), 1);
    }

    /// A feed record the watch delivers after skipping one is published as
    /// a lag without events, so subscribers go back to the history; the
    /// records around it are published as events.
    #[test]
    fn a_skipped_feed_record_is_published_as_a_lag() {
        let keys = Keys::new("t/");
        let feed = ChangeFeed::new(64, 1 << 20, revision_end(9));
        let mut subscription = feed.subscribe();
        let mut continuity = Continuity::from_version(3);
        let record = |key: &str| {
            encode(
                1,
                &[vec![Entry::Delete {
                    key: key.into(),
                    index: 0,
                }]],
            )
        };
        let feed_key = keys.feed();
        let (first, next, last) = (record("user:a"), record("user:c"), record("user:d"));
        fn put<'a>(key: &'a [u8], value: &'a [u8], version: i64) -> [WatchedPut<'a>; 1] {
            [WatchedPut {
                key,
                value,
                version,
            }]
        }
        publish_revision(
            &feed,
            &keys,
            &mut continuity,
            10,
            &put(&feed_key, &first, 4),
        );
        // The record of version 5 (revision 11) never arrives.
        publish_revision(&feed, &keys, &mut continuity, 12, &put(&feed_key, &next, 6));
        publish_revision(&feed, &keys, &mut continuity, 13, &put(&feed_key, &last, 7));

        let event = subscription
            .try_recv()
            .unwrap()
            .expect("revision 10's event");
        assert_eq!(event.sequence, sequence(10, 0));
        assert!(matches!(
            subscription.try_recv(),
            Err(crate::engine::RecvError::Lagged { missed: 2 })
        ));
        let event = subscription
            .try_recv()
            .unwrap()
            .expect("revision 13's event");
        assert_eq!(event.sequence, sequence(13, 0));
        assert_eq!(feed.published_sequence(), revision_end(13));
    }
}
