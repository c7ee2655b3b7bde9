//! Follows the etcd watch of the feed record and record keys, and publishes
//! each revision it delivers as one commit on the engine's [`ChangeFeed`]
//! (the record format is [`super::feed`]'s).
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

use super::feed::{decode, events, revision_end, Entry};
use super::keys::Keys;
use crate::engine::record::{decode_head, value_of_entry, ValuePlace};
use crate::engine::{ChangeFeed, PutPayload};

/// The longest wait between two attempts to re-establish the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Largest watch response the client accepts: one revision's events come in
/// one response, and a batch may carry up to etcd's request size in values.
pub(crate) const MAX_WATCH_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

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
    use super::super::feed::{encode, sequence};
    use super::*;

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
