//! The watcher's view of the engine's history and of the live feed's
//! batches: the one place that speaks the engine's history contract.

use crate::engine::{
    Change, ChangeEvent, Engine, EngineError, HistoryError, HistoryPosition, Record,
};

/// The events of one write request, in commit order.
#[derive(Debug)]
pub(super) struct Batch {
    /// The request's sequence (its last event's).
    pub sequence: u64,
    /// Its events.
    pub events: Vec<ChangeEvent>,
}

/// Whole batches after a position, and how far the history went when read.
#[derive(Debug)]
pub(super) struct Page {
    /// Whole batches, in commit order.
    pub batches: Vec<Batch>,
    /// The latest committed sequence when the page was read.
    pub latest: u64,
}

/// Why the history cannot be read after a position.
#[derive(Debug)]
pub(super) enum Failure {
    /// Trimmed: the oldest resumable sequence is `oldest`.
    Compacted { oldest: u64 },
    /// Another history (lost, restored or replaced store).
    OtherHistory { current: u64 },
    /// Ahead of the latest commit, or in a range the store may have lost
    /// in a crash.
    Ahead { latest: u64 },
    /// The engine failed.
    Engine(EngineError),
}

/// This store's history id.
pub(super) fn history_id(engine: &dyn Engine) -> u64 {
    engine.history_id()
}

/// The latest committed sequence.
pub(super) async fn latest(engine: &dyn Engine) -> Result<u64, EngineError> {
    Ok(engine.history_bounds().await?.1)
}

/// Whole batches with sequence above `after`, about `max_events` events.
pub(super) async fn read(
    engine: &dyn Engine,
    history_id: u64,
    after: u64,
    max_events: usize,
) -> Result<Page, Failure> {
    let page = engine
        .read_history(
            HistoryPosition {
                history_id,
                sequence: after,
            },
            max_events,
        )
        .await;
    match page {
        Ok(page) => Ok(Page {
            latest: page.latest,
            batches: page
                .batches
                .into_iter()
                .map(|batch| Batch {
                    sequence: batch.sequence,
                    events: batch.events,
                })
                .collect(),
        }),
        Err(HistoryError::Compacted { oldest }) => Err(Failure::Compacted { oldest }),
        Err(HistoryError::OtherHistory { current }) => Err(Failure::OtherHistory { current }),
        Err(HistoryError::Rewound { lost_after, .. }) => Err(Failure::Ahead { latest: lost_after }),
        Err(HistoryError::Ahead { latest }) => Err(Failure::Ahead { latest }),
        Err(HistoryError::Engine(error)) => Err(Failure::Engine(error)),
    }
}

/// Whether a live event is the last of its write request.
pub(super) fn ends_batch(event: &ChangeEvent) -> bool {
    event.sequence == event.batch_sequence
}

/// A put's schema version, and its value and metadata as written (`None`
/// when the event does not carry them: replayed from history, or dropped
/// from the feed's byte bound).
pub(super) fn put_details(event: &ChangeEvent) -> (u32, Option<Record>) {
    match &event.change {
        Change::Put {
            version,
            expire_at_millis,
            schema_version,
            payload,
        } => (
            *schema_version,
            payload.as_ref().map(|payload| Record {
                kind: payload.kind,
                value: payload.value.clone(),
                metadata: payload.metadata.clone(),
                expire_at_millis: *expire_at_millis,
                version: *version,
                schema_version: *schema_version,
            }),
        ),
        _ => (0, None),
    }
}
