//! The watcher's view of the engine's history and of the live feed's
//! batches: the one place that speaks the engine's history contract.

use crate::engine::{ChangeEvent, Engine, EngineError, Record};

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
    /// Ahead of the latest commit, or in a range the store lost.
    Ahead { latest: u64 },
    /// The engine failed.
    Engine(EngineError),
}

/// This store's history id.
pub(super) fn history_id(_engine: &dyn Engine) -> u64 {
    0
}

/// The latest committed sequence (everything published up to it).
pub(super) async fn latest(engine: &dyn Engine) -> Result<u64, EngineError> {
    Ok(engine.acknowledged_sequence())
}

/// Whole batches with sequence above `after`, about `max_events` events.
pub(super) async fn read(
    engine: &dyn Engine,
    history_id: u64,
    after: u64,
    _max_events: usize,
) -> Result<Page, Failure> {
    if history_id != self::history_id(engine) {
        return Err(Failure::OtherHistory {
            current: self::history_id(engine),
        });
    }
    let latest = latest(engine).await.map_err(Failure::Engine)?;
    if after > latest {
        return Err(Failure::Ahead { latest });
    }
    if after < latest {
        // No history in this engine yet: nothing before now can be replayed.
        return Err(Failure::Compacted { oldest: latest });
    }
    Ok(Page {
        batches: Vec::new(),
        latest,
    })
}

/// Whether a live event is the last of its write request.
pub(super) fn ends_batch(_event: &ChangeEvent) -> bool {
    true
}

/// A live put's schema version, and its value and metadata as written
/// (`None` when the feed does not carry them).
pub(super) fn put_details(_event: &ChangeEvent) -> (u32, Option<Record>) {
    (0, None)
}
