//! The change history over etcd: the feed key's own etcd history.
//!
//! Every write transaction puts the feed record (`<root>f`), so each revision
//! of that key holds the [`HistoryBatch`]es of the requests committed in it
//! (several under group commit), each at its request's sequence, with the
//! request's events in order. Reading history is a `Watch` of the feed key
//! from the position's revision on, stopped at the feed key's current
//! revision (a known event, so no progress notification is needed).
//!
//! Retention: etcd keeps history until it is compacted (its
//! `--auto-compaction-*` flags or a `Compact` call), and the engine keeps a
//! floor of its own (`<root>meta/history_floor`), raised by
//! [`EtcdEngine::trim_history`] from `history_max_events` and
//! `history_max_age_millis`, so that retention is the same promise on both
//! engines. A position below either answers [`HistoryError::Compacted`].
//!
//! Identity: a random id created once under `<root>meta/history_id`. An
//! etcd restored from a snapshot goes back in revisions and reuses them:
//! after such a restore, delete that key so positions of the lost revisions
//! are refused as another history's (docs/replicas.md says so).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};

use super::feed;
use super::follow::MAX_WATCH_MESSAGE_BYTES;
use super::keys::{clock_mark, parse_clock_mark};
use super::{etcd_error, EtcdEngine};
use crate::clock::Clock;
use crate::engine::{EngineError, HistoryBatch, HistoryError, HistoryPage, HistoryPosition};

/// How often every replica trims the history to its retention.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(300);
/// Events read per page while trimming.
const TRIM_PAGE_EVENTS: usize = 10_000;

impl EtcdEngine {
    /// The retention floor and the latest sequence, read together: the end
    /// of etcd's current revision. Not the feed key's last revision: the
    /// feed also publishes revisions without a feed record (the clock mark,
    /// state, other prefixes), and a watcher started "from now" holds such
    /// a position; it must resume (and a walk up to it ends at the feed
    /// key's last record before it).
    pub(super) async fn history_state(&self) -> Result<(u64, u64), EngineError> {
        let (floor, latest, _) = self.history_marks().await?;
        Ok((floor, latest))
    }

    /// [`EtcdEngine::history_state`] and the end of the feed key's last
    /// revision, where a walk of the history ends.
    async fn history_marks(&self) -> Result<(u64, u64, u64), EngineError> {
        let keys = &self.inner.keys;
        let txn = Txn::new().and_then([
            TxnOp::get(keys.history_floor(), None),
            TxnOp::get(keys.feed(), Some(GetOptions::new().with_keys_only())),
        ]);
        let response = self.send_txn(txn, true).await?;
        let mut found = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let floor = found
            .next()
            .flatten()
            .map_or(0, |kv| parse_clock_mark(kv.value()));
        let record = found
            .next()
            .flatten()
            .map_or(0, |kv| feed::revision_end(kv.mod_revision()));
        let current = feed::revision_end(response.header().map_or(0, |header| header.revision()));
        // The read's own revision, never the live feed's position: the feed
        // may have published a commit this read began before, and a reader
        // told it is up to date with that commit would skip it for good
        // (seen: a watcher moved its cursor past a put it never sent). The
        // read is linearizable, so its revision is at least every position
        // the feed had published when it was sent.
        let latest = record.max(current);
        Ok((floor, latest, record))
    }

    /// Raises the retention floor to `floor` (never lowers it: another
    /// replica may have raised it further).
    async fn raise_floor(&self, floor: u64) -> Result<(), EngineError> {
        let key = self.inner.keys.history_floor();
        let mark = clock_mark(floor);
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Less, mark.clone())])
            .and_then([TxnOp::put(key.clone(), mark.clone(), None)])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, mark, None)]),
            )]);
        self.send_txn(txn, true).await?;
        Ok(())
    }

    /// Batches after sequence `after` up to sequence `until`, whole,
    /// stopping once they hold `max_events` events (at least one batch).
    async fn walk(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
        floor: u64,
    ) -> Result<Vec<HistoryBatch>, HistoryError> {
        let mut batches = Vec::new();
        if after >= until {
            return Ok(batches);
        }
        let mut watch = self
            .inner
            .client
            .watch_client()
            .max_decoding_message_size(MAX_WATCH_MESSAGE_BYTES);
        // The position's revision may hold requests after it (group commit).
        let start = feed::first_revision_after(after);
        let last_revision = feed::revision_of(until);
        let options = WatchOptions::new().with_start_revision(start);
        let mut stream = watch
            .watch(self.inner.keys.feed(), Some(options))
            .await
            .map_err(etcd_error)?;
        let timeout = self.inner.options.request_timeout;
        let mut events = 0usize;
        loop {
            let message = tokio::time::timeout(timeout, stream.message())
                .await
                .map_err(|_| {
                    EngineError::Unavailable(format!(
                        "etcd sent no history within {} ms",
                        timeout.as_millis()
                    ))
                })?
                .map_err(etcd_error)?;
            let Some(response) = message else {
                return Err(EngineError::Unavailable("etcd ended the history watch".into()).into());
            };
            if response.canceled() {
                let compacted = response.compact_revision();
                if compacted > 0 {
                    let oldest = floor.max(feed::revision_end(compacted - 1));
                    // Later readers learn it without asking etcd again.
                    self.raise_floor(oldest).await?;
                    return Err(HistoryError::Compacted { oldest });
                }
                return Err(EngineError::Unavailable(format!(
                    "etcd cancelled the history watch: {}",
                    response.cancel_reason()
                ))
                .into());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                if revision < start || revision > last_revision {
                    continue;
                }
                let record = feed::decode(kv.value()).ok_or_else(|| {
                    EngineError::Storage(format!(
                        "the feed record of revision {revision} does not decode"
                    ))
                })?;
                for entries in record.requests {
                    let batch_events = feed::events(revision, entries, |_, _| None);
                    let Some(sequence) = batch_events.last().map(|event| event.batch_sequence)
                    else {
                        continue;
                    };
                    if sequence <= after || sequence > until {
                        continue;
                    }
                    events += batch_events.len();
                    batches.push(HistoryBatch {
                        sequence,
                        committed_at_millis: record.committed_at_millis,
                        events: batch_events,
                    });
                    if events >= max_events {
                        return Ok(batches);
                    }
                }
                if revision >= last_revision {
                    return Ok(batches);
                }
            }
        }
    }

    /// See [`crate::engine::Engine::read_history`].
    pub(super) async fn history_page(
        &self,
        after: HistoryPosition,
        max_events: usize,
    ) -> Result<HistoryPage, HistoryError> {
        if after.history_id != self.inner.history_id {
            return Err(HistoryError::OtherHistory {
                current: self.inner.history_id,
            });
        }
        let (floor, latest, record) = self.history_marks().await?;
        if after.sequence < floor {
            return Err(HistoryError::Compacted { oldest: floor });
        }
        if after.sequence > latest {
            return Err(HistoryError::Ahead { latest });
        }
        let batches = self
            .walk(after.sequence, record, max_events.max(1), floor)
            .await?;
        Ok(HistoryPage { batches, latest })
    }

    /// Raises the history's floor to its retention (`history_max_events`
    /// events kept, batches older than `history_max_age_millis` by the
    /// engine's clock dropped), walking the history kept so far; returns the
    /// new floor. Every replica runs it every [`TRIM_INTERVAL`]; the floor
    /// only rises, so they never undo each other.
    pub async fn trim_history(&self) -> Result<u64, EngineError> {
        let options = &self.inner.options;
        let (floor, _, latest) = self.history_marks().await?;
        if options.history_max_events == 0 && options.history_max_age_millis == 0 {
            return Ok(floor);
        }
        let mut summaries: Vec<(u64, usize, u64)> = Vec::new();
        let mut position = floor;
        while position < latest {
            let page = match self.walk(position, latest, TRIM_PAGE_EVENTS, floor).await {
                Ok(page) => page,
                Err(HistoryError::Compacted { oldest }) => return Ok(oldest),
                Err(HistoryError::Engine(error)) => return Err(error),
                Err(other) => return Err(EngineError::Storage(other.to_string())),
            };
            let Some(last) = page.last() else { break };
            position = last.sequence;
            summaries.extend(page.iter().map(|batch| {
                (
                    batch.sequence,
                    batch.events.len(),
                    batch.committed_at_millis,
                )
            }));
        }
        let mut new_floor = floor;
        if options.history_max_events > 0 {
            let mut kept = 0u64;
            for (sequence, events, _) in summaries.iter().rev() {
                kept += *events as u64;
                if kept > options.history_max_events {
                    new_floor = new_floor.max(*sequence);
                    break;
                }
            }
        }
        if options.history_max_age_millis > 0 {
            let cutoff = self
                .inner
                .clock
                .now_millis()
                .saturating_sub(options.history_max_age_millis);
            if let Some((sequence, _, _)) = summaries
                .iter()
                .rev()
                .find(|(_, _, committed_at)| *committed_at < cutoff)
            {
                new_floor = new_floor.max(*sequence);
            }
        }
        if new_floor > floor {
            self.raise_floor(new_floor).await?;
        }
        Ok(new_floor)
    }
}

/// Trims the history of `engine` every [`TRIM_INTERVAL`].
pub(super) async fn keep_trimmed(engine: std::sync::Weak<super::Inner>) {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = EtcdEngine { inner };
        if let Err(error) = engine.trim_history().await {
            tracing::warn!(error = %error.log_summary(), "trimming the etcd change history failed; retrying later");
        }
    }
}
