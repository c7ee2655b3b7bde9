//! The persisted change history: what a watcher resumes from.
//!
//! The change feed ([`super::changes`]) is live only: it forgets everything
//! at restart. An engine also keeps a history of its commits, one
//! [`HistoryBatch`] per client write request (one [`super::Engine::write`] or
//! one [`super::Engine::clear_namespace`]), so a watcher that disconnects,
//! or outlives a server restart, resumes from the last position it
//! processed and gets every later event exactly once.
//!
//! A position names a history ([`HistoryPosition::history_id`]) and a
//! commit sequence. The id changes whenever the history could no longer
//! answer an old position truthfully (the store was lost, restored from a
//! backup, or its history column family is gone), so such a position gets
//! [`HistoryError::OtherHistory`] instead of somebody else's events.
//!
//! History keeps no values: a replayed put says which version was written,
//! and the reader looks at the current record (same version: its value;
//! otherwise the value was superseded). Expiry makes no events: a record
//! hides itself when its `expire_at` passes (every put event carries it).

use thiserror::Error;

use super::changes::ChangeEvent;
use super::EngineError;

/// Where a history stands: which history (changes when it is lost, rewound
/// or restored) and a commit sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HistoryPosition {
    /// The history the sequence belongs to ([`super::Engine::history_id`]).
    pub history_id: u64,
    /// A batch's sequence: everything up to it has been processed.
    pub sequence: u64,
}

/// The persisted events of one client write request (one `Engine::write`
/// call or one `clear_namespace`), never split: a client may resume only
/// between batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryBatch {
    /// The request's `WriteReceipt::sequence`, which is also its last event's.
    pub sequence: u64,
    /// When the batch was committed, by the engine's clock (milliseconds
    /// since the Unix epoch).
    pub committed_at_millis: u64,
    /// Its events in order, with `batch_sequence == sequence`; puts carry no
    /// payload (history keeps no values).
    pub events: Vec<ChangeEvent>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// Whole batches in commit order; at least one when any exists after the
    /// position asked for, even if it alone exceeds the page's bound.
    pub batches: Vec<HistoryBatch>,
    /// The last committed (and published) sequence when the page was read.
    /// When `batches` is empty the reader is up to date with it.
    pub latest: u64,
}

/// Why a history read cannot answer a position.
#[derive(Debug, Error)]
pub enum HistoryError {
    /// The position is older than the oldest one still resumable: the
    /// batches after it were trimmed by retention.
    #[error("the history was trimmed; the oldest resumable position is sequence {oldest}")]
    Compacted {
        /// The oldest sequence still resumable (positions at or above it work).
        oldest: u64,
    },
    /// The position belongs to another history (the store was lost,
    /// restored or its history dropped).
    #[error("the position belongs to another history; the current history is {current:016x}")]
    OtherHistory {
        /// The current history id.
        current: u64,
    },
    /// The position lies in a range of sequences a crash may have lost (an
    /// unclean stop with `sync_writes = false` can drop the last writes of
    /// the write-ahead log, whose sequences are then never reused): the
    /// events a client saw there may not exist any more.
    #[error("sequences after {lost_after} up to {lost_to} may have been lost in a crash; a position among them cannot be resumed")]
    Rewound {
        /// The lost range starts after this sequence…
        lost_after: u64,
        /// …and ends with this one.
        lost_to: u64,
    },
    /// The position is past the latest committed sequence.
    #[error("the position is ahead of the latest committed sequence {latest}")]
    Ahead {
        /// The latest committed sequence.
        latest: u64,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}
