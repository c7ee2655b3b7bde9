//! A watcher's queue between its producers (its own task while it
//! replays or follows the feed alone, then its fan-out group) and its
//! stream, bounded in bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Batch, Position, WatchError};

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

/// Whether a batch may be refused for want of room (live) or waits for it
/// (replay, which the history can repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Replay,
    Live,
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
