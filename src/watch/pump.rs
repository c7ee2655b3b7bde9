//! A watcher's task: replays the history, then follows the live feed, and
//! queues the events under the watcher's prefix for its stream, within its
//! byte bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::engine::{Change, ChangeEvent, ChangeSubscription, Engine, EngineError, RecvError};
use crate::kv::value::entry_from_record;
use crate::kv::ValueType;

use super::history::{self, Failure};
use super::{EventKind, Position, WatchError, WatchEvent};

/// Events read from the history per page.
const REPLAY_PAGE_EVENTS: usize = 1000;

/// The events of one write request under the prefix, queued for the stream.
#[derive(Debug)]
pub(super) struct Queued {
    /// The events (never empty).
    pub events: Vec<WatchEvent>,
    /// The request's sequence.
    pub sequence: u64,
    /// What they weigh against the buffer.
    pub bytes: usize,
}

/// What the task has queued for the stream.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Batches not yet taken by the stream.
    pub items: VecDeque<Queued>,
    /// Their weight.
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
}

/// Which keys a watcher sends.
#[derive(Debug, Clone)]
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

/// The task of one watcher.
pub(super) struct Pump {
    pub engine: Arc<dyn Engine>,
    pub filter: Filter,
    pub include_values: bool,
    pub history_id: u64,
    pub buffer_bytes: usize,
    pub shared: Arc<Shared>,
}

/// Whether a batch may be refused for want of room (live) or waits for it
/// (replay, which the history can repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replay,
    Live,
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
                // The feed dropped events for this watcher: back to the history.
                Ok(()) => continue,
                Err(error) => return error,
            }
        }
    }

    /// Queues the history's batches after `cursor` until it has caught up
    /// with the latest commit (which the subscription, taken before, covers
    /// from there on).
    async fn replay(&self, cursor: &mut u64) -> Result<(), WatchError> {
        loop {
            self.wait_for_room().await;
            let page = history::read(
                self.engine.as_ref(),
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
                let events = self.convert(&batch.events, false).await?;
                self.push(events, batch.sequence, Mode::Replay)?;
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

    /// Queues live batches until the feed lags (`Ok`, to replay) or fails.
    async fn live(
        &self,
        subscription: &mut ChangeSubscription,
        cursor: &mut u64,
    ) -> Result<(), WatchError> {
        let mut pending: Vec<ChangeEvent> = Vec::new();
        loop {
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
                        let events = self.convert(&batch, true).await?;
                        self.push(events, sequence, Mode::Live)?;
                        *cursor = sequence;
                    }
                }
                Err(RecvError::Lagged { .. }) => return Ok(()),
                Err(RecvError::Closed) => {
                    return Err(WatchError::Engine(EngineError::Unavailable(
                        "the change feed closed (the store is shutting down)".into(),
                    )))
                }
            }
        }
    }

    /// The events of one batch that go to this watcher, with values when
    /// asked for: from the feed when it carries them, otherwise read from
    /// the store (the value only when the key still holds that version).
    async fn convert(
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

    /// Queues one batch (or only moves the cursor when none of it is under
    /// the prefix). A live batch that does not fit beside what is queued
    /// ends the watcher and frees the queue: a client that does not read
    /// gets no more memory, and writers never wait for it.
    fn push(&self, events: Vec<WatchEvent>, sequence: u64, mode: Mode) -> Result<(), WatchError> {
        let mut queue = self.shared.lock();
        if !events.is_empty() {
            let bytes: usize = events.iter().map(WatchEvent::weight).sum();
            if mode == Mode::Live
                && queue.bytes > 0
                && queue.bytes.saturating_add(bytes) > self.buffer_bytes
            {
                queue.items.clear();
                queue.bytes = 0;
                return Err(WatchError::SlowConsumer {
                    buffer_bytes: self.buffer_bytes,
                    // The stream fills in the last position it sent.
                    last_sent: Position {
                        history_id: self.history_id,
                        sequence: 0,
                    },
                });
            }
            queue.bytes += bytes;
            queue.items.push_back(Queued {
                events,
                sequence,
                bytes,
            });
        }
        queue.cursor = sequence;
        drop(queue);
        self.shared.ready.notify_one();
        Ok(())
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
