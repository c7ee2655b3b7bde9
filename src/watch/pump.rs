//! A watcher's task: replays the history, then follows the live feed on
//! its own until it can join its fan-out group ([`super::fanout`]), and
//! queues the events under the watcher's prefix for its stream, within its
//! byte bound. While in the group it only waits to be handed back (the
//! group's feed lagged or closed, or the client fell behind).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::engine::{Change, ChangeEvent, ChangeSubscription, Engine, EngineError, RecvError};
use crate::kv::value::entry_from_record;
use crate::kv::ValueType;

use super::fanout::{Groups, Handback, Joined};
use super::history::{self, Failure};
use super::{Batch, EventKind, Position, WatchError, WatchEvent};

/// Events read from the history per page.
const REPLAY_PAGE_EVENTS: usize = 1000;

/// What the task has queued for the stream.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Batches not yet taken by the stream (shared with the other watchers
    /// of a fan-out group).
    pub items: VecDeque<Arc<Batch>>,
    /// Their weight: a shared batch counts in full against every watcher
    /// that holds it.
    pub bytes: usize,
    /// Every write request up to this sequence is queued or had nothing
    /// under the prefix: once `items` is empty, a heartbeat may carry it.
    pub cursor: u64,
    /// Why the task stopped; the stream ends with it once `items` is empty.
    pub end: Option<WatchError>,
}

/// The queue and the two wake-ups between the task and the stream.
#[derive(Debug, Default)]
pub(super) struct Shared {
    queue: Mutex<Queue>,
    /// Woken when something is queued or the task ends.
    pub ready: Notify,
    /// Woken when the stream took something.
    pub room: Notify,
}

impl Shared {
    /// The queue; a std mutex, held for a few instructions and never across an await.
    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|error| error.into_inner())
    }

    /// Queues live batches in order (see [`Self::push`]) with one wake-up
    /// for all of them.
    pub fn push_all<'a>(
        &self,
        batches: impl Iterator<Item = &'a (Option<Arc<Batch>>, u64)>,
        buffer_bytes: usize,
        history_id: u64,
    ) -> Result<(), WatchError> {
        let mut queue = self.lock();
        let mut queued = false;
        for (batch, sequence) in batches {
            queue.cursor = *sequence;
            let Some(batch) = batch else {
                continue;
            };
            if queue.bytes > 0 && queue.bytes.saturating_add(batch.weight) > buffer_bytes {
                queue.items.clear();
                queue.bytes = 0;
                return Err(fell_behind(buffer_bytes, history_id));
            }
            queue.bytes += batch.weight;
            queue.items.push_back(Arc::clone(batch));
            queued = true;
        }
        drop(queue);
        if queued {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues one batch (or, with `None`, only moves the cursor past a
    /// request with nothing under the prefix). A live batch that does not
    /// fit beside what is queued ends the watcher and frees the queue: a
    /// client that does not read gets no more memory, and writers never
    /// wait for it.
    pub fn push(
        &self,
        batch: Option<&Arc<Batch>>,
        sequence: u64,
        mode: Mode,
        buffer_bytes: usize,
        history_id: u64,
    ) -> Result<(), WatchError> {
        let mut queue = self.lock();
        queue.cursor = sequence;
        let Some(batch) = batch else {
            // A heartbeat reads the cursor when it is due: no wake-up.
            return Ok(());
        };
        if mode == Mode::Live
            && queue.bytes > 0
            && queue.bytes.saturating_add(batch.weight) > buffer_bytes
        {
            queue.items.clear();
            queue.bytes = 0;
            return Err(fell_behind(buffer_bytes, history_id));
        }
        queue.bytes += batch.weight;
        queue.items.push_back(Arc::clone(batch));
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }
}

/// Which keys a watcher sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Filter {
    /// The watched prefix.
    pub prefix: String,
}

impl Filter {
    /// Whether an event of `key` goes to this watcher: under the prefix (a
    /// dropped namespace when it holds keys under the prefix), and outside
    /// every namespace another service owns (as List leaves them out).
    fn admits(&self, engine: &dyn Engine, key: &str, kind: EventKind) -> bool {
        let under = match kind {
            EventKind::NamespaceCleared => {
                key.starts_with(&self.prefix) || self.prefix.starts_with(key)
            }
            _ => key.starts_with(&self.prefix),
        };
        under && engine.namespaces().owner_of(key).is_none()
    }
}

/// Turns the engine's events of one batch into a watcher's events: the
/// same for every watcher of a (prefix, include_values) group.
#[derive(Clone)]
pub(super) struct Converter {
    pub engine: Arc<dyn Engine>,
    pub filter: Filter,
    pub include_values: bool,
}

impl Converter {
    /// The events of one batch that go to this watcher, with values when
    /// asked for: from the feed when it carries them, otherwise read from
    /// the store (the value only when the key still holds that version).
    pub async fn convert(
        &self,
        batch: &[ChangeEvent],
        live: bool,
    ) -> Result<Vec<WatchEvent>, WatchError> {
        let mut events = Vec::new();
        let mut to_read = Vec::new();
        for event in batch {
            let (kind, version, expire_at_millis) = match &event.change {
                Change::Put {
                    version,
                    expire_at_millis,
                    ..
                } => (EventKind::Put, *version, *expire_at_millis),
                Change::Delete => (EventKind::Delete, 0, None),
                Change::NamespaceCleared => (EventKind::NamespaceCleared, 0, None),
            };
            if !self.filter.admits(self.engine.as_ref(), &event.key, kind) {
                continue;
            }
            let (schema_version, written) = history::put_details(event);
            let mut out = WatchEvent {
                key: Arc::clone(&event.key),
                kind,
                version,
                expire_at_millis,
                schema_version: if kind == EventKind::Put {
                    schema_version
                } else {
                    0
                },
                value: None,
                value_superseded: false,
            };
            if self.include_values && kind == EventKind::Put {
                match written.filter(|_| live) {
                    Some(record) => {
                        out.value =
                            Some(entry_from_record(&event.key, record, ValueType::AsStored)?)
                    }
                    None => to_read.push(events.len()),
                }
            }
            events.push(out);
        }
        if !to_read.is_empty() {
            let keys: Vec<String> = to_read
                .iter()
                .map(|index| events[*index].key.to_string())
                .collect();
            let records = self.engine.get_many(keys).await?;
            for (index, record) in to_read.into_iter().zip(records) {
                let event = &mut events[index];
                match record {
                    Some(record) if record.version == event.version => {
                        if event.schema_version == 0 {
                            event.schema_version = record.schema_version;
                        }
                        event.value =
                            Some(entry_from_record(&event.key, record, ValueType::AsStored)?);
                    }
                    _ => event.value_superseded = true,
                }
            }
        }
        Ok(events)
    }

    /// [`Self::convert`] as a shared batch, or `None` when nothing of it is
    /// under the prefix.
    pub async fn batch(
        &self,
        batch: &[ChangeEvent],
        sequence: u64,
        live: bool,
    ) -> Result<Option<Arc<Batch>>, WatchError> {
        let events = self.convert(batch, live).await?;
        Ok((!events.is_empty()).then(|| Arc::new(Batch::new(events, sequence))))
    }
}

/// The task of one watcher.
pub(super) struct Pump {
    pub converter: Converter,
    pub history_id: u64,
    pub buffer_bytes: usize,
    pub shared: Arc<Shared>,
    pub groups: Arc<Groups>,
}

/// Whether a batch may be refused for want of room (live) or waits for it
/// (replay, which the history can repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Replay,
    Live,
}

/// How following the feed on its own ended.
enum Followed {
    /// The feed dropped events for this watcher: replay from the history.
    Lagged,
    /// Joined the group; wait for it to hand the watcher back.
    Joined(tokio::sync::oneshot::Receiver<Handback>),
}

impl Pump {
    /// Runs until the feed closes, the history fails or the client falls
    /// behind, and leaves the reason for the stream.
    pub async fn run(self, subscription: ChangeSubscription, cursor: u64) {
        let error = self.follow(subscription, cursor).await;
        self.shared.lock().end = Some(error);
        self.shared.ready.notify_one();
    }

    async fn follow(&self, mut subscription: ChangeSubscription, mut cursor: u64) -> WatchError {
        loop {
            if let Err(error) = self.replay(&mut cursor).await {
                return error;
            }
            match self.live(&mut subscription, &mut cursor).await {
                // The feed dropped events for this watcher: back to the
                // history. A subscriber hears of a commit (here, of its loss)
                // as the feed sends it, a moment before the feed counts it
                // as published, and a history read goes no further than
                // published: read now, the lost commit could be missed for
                // good (measured: the last of 200 lagged commits was, now
                // and then). Subscribing waits for a publication under way
                // to finish (the feed publishes and subscribes under one
                // lock), so the history read after it sees the lost commit.
                Ok(Followed::Lagged) => drop(self.converter.engine.subscribe()),
                Ok(Followed::Joined(handback)) => {
                    // Nothing needs this watcher's own feed while the group
                    // serves it: dropped, so the feed keeps nothing for it.
                    drop(subscription);
                    match handback.await {
                        // Subscribe first, then replay from where the group
                        // stopped: the same start as a new watcher's.
                        Ok(Handback::Resume(after)) => {
                            subscription = self.converter.engine.subscribe();
                            cursor = after;
                        }
                        Ok(Handback::End(error)) => return error,
                        Err(_) => {
                            return WatchError::Engine(EngineError::Unavailable(
                                "the watch fan-out stopped (the store is shutting down)".into(),
                            ))
                        }
                    }
                }
                Err(error) => return error,
            }
        }
    }

    /// Queues the history's batches after `cursor` until it has caught up
    /// with the latest commit (which the subscription, taken before, covers
    /// from there on).
    async fn replay(&self, cursor: &mut u64) -> Result<(), WatchError> {
        let engine = Arc::clone(&self.converter.engine);
        loop {
            let page = history::read(
                engine.as_ref(),
                self.history_id,
                *cursor,
                REPLAY_PAGE_EVENTS,
            )
            .await
            .map_err(|failure| self.failure(*cursor, failure))?;
            let caught_up = page.batches.is_empty();
            for batch in page.batches {
                if batch.sequence <= *cursor {
                    continue;
                }
                // Per batch, not per page: with values, one page could hold
                // far more than the buffer (a batch is bounded by the size
                // of the one request that wrote it).
                self.wait_for_room().await;
                let shared = self
                    .converter
                    .batch(&batch.events, batch.sequence, false)
                    .await?;
                self.push(shared.as_ref(), batch.sequence, Mode::Replay)?;
                *cursor = batch.sequence;
            }
            if caught_up || *cursor >= page.latest {
                // Nothing after the cursor up to `latest`: sequences without
                // events of their own are passed too.
                if caught_up && page.latest > *cursor {
                    *cursor = page.latest;
                    self.shared.lock().cursor = *cursor;
                }
                return Ok(());
            }
        }
    }

    /// Queues live batches from the watcher's own subscription, trying at
    /// every batch boundary to join the group, until it joins, the feed
    /// lags or it fails.
    async fn live(
        &self,
        subscription: &mut ChangeSubscription,
        cursor: &mut u64,
    ) -> Result<Followed, WatchError> {
        let mut pending: Vec<ChangeEvent> = Vec::new();
        let mut tried_at = None;
        loop {
            // At a batch boundary everything up to the cursor is queued;
            // tried once per cursor (the group's state only lets a later
            // cursor in, not a later look).
            if pending.is_empty() && tried_at != Some(*cursor) {
                tried_at = Some(*cursor);
                let joined = self.groups.join(
                    &self.converter,
                    &self.shared,
                    *cursor,
                    self.buffer_bytes,
                    self.history_id,
                )?;
                if let Joined::Yes(handback) = joined {
                    return Ok(Followed::Joined(handback));
                }
            }
            match subscription.recv().await {
                Ok(event) => {
                    // Already queued by the replay.
                    if event.sequence <= *cursor {
                        continue;
                    }
                    let last = history::ends_batch(&event);
                    let sequence = event.sequence;
                    pending.push(event);
                    if last {
                        let batch = std::mem::take(&mut pending);
                        let shared = self.converter.batch(&batch, sequence, true).await?;
                        self.push(shared.as_ref(), sequence, Mode::Live)?;
                        *cursor = sequence;
                    }
                }
                Err(RecvError::Lagged { .. }) => return Ok(Followed::Lagged),
                Err(RecvError::Closed) => return Err(feed_closed()),
            }
        }
    }

    fn push(
        &self,
        batch: Option<&Arc<Batch>>,
        sequence: u64,
        mode: Mode,
    ) -> Result<(), WatchError> {
        self.shared
            .push(batch, sequence, mode, self.buffer_bytes, self.history_id)
    }

    /// Waits until at most half the buffer is taken, so a replay reads the
    /// history no faster than the client takes it.
    async fn wait_for_room(&self) {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.shared.lock().bytes <= self.buffer_bytes / 2 {
                return;
            }
            room.await;
        }
    }

    fn failure(&self, after: u64, failure: Failure) -> WatchError {
        failure_error(self.history_id, after, failure)
    }
}

/// The error of a live watcher whose queue is full.
fn fell_behind(buffer_bytes: usize, history_id: u64) -> WatchError {
    WatchError::SlowConsumer {
        buffer_bytes,
        // The stream fills in the last position it sent.
        last_sent: Position {
            history_id,
            sequence: 0,
        },
    }
}

/// The error of a feed that closed: the store is shutting down.
pub(super) fn feed_closed() -> WatchError {
    WatchError::Engine(EngineError::Unavailable(
        "the change feed closed (the store is shutting down)".into(),
    ))
}

/// The error for a history that cannot be read after `after`.
pub(super) fn failure_error(history_id: u64, after: u64, failure: Failure) -> WatchError {
    let after = Position {
        history_id,
        sequence: after,
    };
    match failure {
        Failure::Compacted { oldest } => WatchError::Compacted {
            after,
            oldest: Position {
                history_id,
                sequence: oldest,
            },
        },
        Failure::OtherHistory { current } => WatchError::OtherHistory { after, current },
        Failure::Ahead { latest } => WatchError::Rewound {
            after,
            latest: Position {
                history_id,
                sequence: latest,
            },
        },
        Failure::Engine(error) => WatchError::Engine(error),
    }
}
