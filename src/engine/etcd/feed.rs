//! The change feed over etcd: every write request also puts one **feed
//! record** (`<root>f`) in its transaction, listing what each of its
//! mutations did, in order. A `Watch` on that one key from the revision
//! current at open delivers the records in commit order, and each becomes
//! one commit on the engine's [`ChangeFeed`], at the transaction's revision.
//!
//! Why a record of its own rather than the record keys' own watch events:
//! etcd publishes no event for deleting a key that is not there, and a
//! transaction names each key once, while the contract publishes every
//! mutation (a delete of an absent key, two puts of one key in one batch).
//! A namespace clear is one `NamespaceCleared` entry instead of a delete per
//! key. The watch carries no values, so a replica's feed costs little.
//!
//! When etcd has compacted past the watch's position, subscribers are told
//! they lagged; while etcd is unreachable the watch retries, and
//! `catch_up_to` waits (up to its deadline).
//!
//! Every sequence a caller can hold (a write's or a clear's revision, the
//! acknowledged one) is a revision that wrote the feed key, so its event
//! arrives on this watch: no progress request is needed. None is sent on
//! purpose: etcd releases before the fix of etcd issue 15220 (Debian's
//! 3.4.23 among them) may send a requested progress notification ahead of
//! events not delivered yet, and trusting one lost an event in this
//! engine's first test runs.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};

use super::keys::version;
use crate::engine::{Change, ChangeEvent, ChangeFeed};

/// The longest wait between two attempts to re-establish the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

const FORMAT: u8 = 1;
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
    },
    /// A delete (whether or not a live record was there).
    Delete {
        /// The key.
        key: String,
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
            Entry::Put { key, .. } | Entry::Delete { key } => key,
            Entry::Cleared { prefix } => prefix,
        }
    }
}

/// Bytes a feed record of `entries` takes, to check a request's size before
/// sending it.
pub(crate) fn encoded_len<'a>(keys: impl Iterator<Item = &'a str>) -> usize {
    5 + keys.map(|key| 15 + key.len()).sum::<usize>()
}

/// Encodes a feed record.
pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(entries.iter().map(Entry::key)));
    out.push(FORMAT);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        let (kind, index, expire_at) = match entry {
            Entry::Put {
                index,
                expire_at_millis,
                ..
            } => (KIND_PUT, *index, expire_at_millis.unwrap_or(0)),
            Entry::Delete { .. } => (KIND_DELETE, 0, 0),
            Entry::Cleared { .. } => (KIND_CLEARED, 0, 0),
        };
        out.push(kind);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&expire_at.to_le_bytes());
        out.extend_from_slice(&(entry.key().len() as u32).to_le_bytes());
        out.extend_from_slice(entry.key().as_bytes());
    }
    out
}

/// Decodes a feed record; `None` when it is not one.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
    let mut entries = Vec::with_capacity(count.min(rest.len() / 15));
    for _ in 0..count {
        let kind = take(&mut rest, 1)?[0];
        let index = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
        let expire_at = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(take(&mut rest, len)?).ok()?.to_string();
        entries.push(match kind {
            KIND_PUT => Entry::Put {
                key,
                index,
                expire_at_millis: (expire_at != 0).then_some(expire_at),
            },
            KIND_DELETE => Entry::Delete { key },
            KIND_CLEARED => Entry::Cleared { prefix: key },
            _ => return None,
        });
    }
    rest.is_empty().then_some(entries)
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if rest.len() < len {
        return None;
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Some(head)
}

/// The change events of a feed record committed at `revision`.
fn events(revision: i64, entries: Vec<Entry>) -> Vec<ChangeEvent> {
    let sequence = revision as u64;
    entries
        .into_iter()
        .map(|entry| {
            let (key, change) = match entry {
                Entry::Put {
                    key,
                    index,
                    expire_at_millis,
                } => (
                    key,
                    Change::Put {
                        version: version(revision, u64::from(index)),
                        expire_at_millis,
                    },
                ),
                Entry::Delete { key } => (key, Change::Delete),
                Entry::Cleared { prefix } => (prefix, Change::NamespaceCleared),
            };
            ChangeEvent {
                sequence,
                key: Arc::from(key),
                change,
            }
        })
        .collect()
}

/// Publishes the commits of one watch response; returns the revision the
/// watch continues after.
fn publish_response(feed: &ChangeFeed, response: &WatchResponse, mut last: i64) -> i64 {
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let revision = kv.mod_revision();
        if revision <= last {
            continue;
        }
        last = revision;
        if event.event_type() != EventType::Put {
            feed.publish(revision as u64, 0, || 0, Vec::new);
            continue;
        }
        match decode(kv.value()) {
            Some(entries) => {
                let count = entries.len();
                let key_bytes: usize = entries.iter().map(|entry| entry.key().len()).sum();
                feed.publish(
                    revision as u64,
                    count,
                    || key_bytes,
                    || events(revision, entries),
                );
            }
            None => {
                // Something else wrote our feed key: subscribers must assume
                // anything changed.
                tracing::warn!(
                    revision,
                    "the etcd feed record does not decode; reported as a lag"
                );
                feed.publish(revision as u64, 1, || 0, Vec::new);
            }
        }
    }
    last
}

/// Watches the feed key from after revision `last` until the feed's engine
/// is dropped (the task is aborted then), re-establishing the watch after
/// every failure.
pub(crate) async fn run(
    client: etcd_client::Client,
    feed_key: Vec<u8>,
    feed: Arc<ChangeFeed>,
    mut last: i64,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut watch = client
            .watch_client()
            .max_decoding_message_size(64 * 1024 * 1024);
        let options = WatchOptions::new().with_start_revision(last + 1);
        match watch.watch(feed_key.clone(), Some(options)).await {
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
                                feed.publish((compacted - 1) as u64, missed, || 0, Vec::new);
                                last = compacted - 1;
                            }
                            break;
                        }
                        last = publish_response(&feed, &response, last);
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

    /// A feed record round-trips; anything else does not decode.
    #[test]
    fn feed_records_round_trip() {
        let entries = vec![
            Entry::Put {
                key: "user:1".into(),
                index: 3,
                expire_at_millis: Some(5),
            },
            Entry::Delete { key: "é".into() },
            Entry::Cleared {
                prefix: "cache:".into(),
            },
        ];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), encoded_len(entries.iter().map(Entry::key)));
        assert_eq!(decode(&bytes), Some(entries));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b"garbage"), None);
    }
}
