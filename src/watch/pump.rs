//! A watcher's task: replays the history, then follows the live feed on
//! its own until it can join its fan-out group ([`super::fanout`]), and
//! queues the events under the watcher's prefix for its stream, within its
//! byte bound. While in the group it only waits to be handed back (the
//! group's feed lagged or closed, or the client fell behind).

use std::sync::Arc;

use crate::engine::{ChangeEvent, ChangeSubscription, EngineError, RecvError};

use super::convert::{feed_closed, Converter};
use super::fanout::{Groups, Handback, Joined};
use super::history::{self, Failure};
use super::queue::{Mode, Shared};
use super::{Batch, Position, WatchError};

/// Events read from the history per page.
const REPLAY_PAGE_EVENTS: usize = 1000;

/// The task of one watcher.
pub(super) struct Pump {
    pub converter: Converter,
    pub history_id: u64,
    pub buffer_bytes: usize,
    pub shared: Arc<Shared>,
    pub groups: Arc<Groups>,
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
