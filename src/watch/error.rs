//! The Watch service's error: one enum, mapped to a gRPC status in one place
//! (`crate::api::status::watch_status`).

use thiserror::Error;

use crate::engine::EngineError;
use crate::kv::KvError;

use super::Position;

/// Why a watch was refused or ended.
#[derive(Debug, Error)]
pub enum WatchError {
    /// The request is invalid (the prefix, or what KV refuses for it, such
    /// as a prefix inside another service's namespace).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// `start_after` is not a position this server hands out.
    #[error("start_after {0:?} is not a position (pass back a position a Watch or List response returned, unchanged)")]
    MalformedPosition(String),
    /// The history no longer holds the changes after the position (trimmed
    /// by retention); `oldest` is the oldest position still resumable.
    #[error("the history no longer holds the changes after {after}; the oldest position still available is {oldest}: List, then Watch from the position the List reports")]
    Compacted {
        /// The position asked for.
        after: Position,
        /// The oldest position still resumable.
        oldest: Position,
    },
    /// The position belongs to another history (the store was lost,
    /// restored from a backup or replaced).
    #[error("position {after} is of another history than this store's ({current:016x}); List, then Watch from the position the List reports")]
    OtherHistory {
        /// The position asked for.
        after: Position,
        /// This store's history id.
        current: u64,
    },
    /// The position is in a range the store lost (a crash with
    /// `sync_writes = false`), or after the latest commit.
    #[error("position {after} is ahead of this store's history (latest {latest}): the commits after {latest} were lost or never made; List, then Watch from the position the List reports")]
    Rewound {
        /// The position asked for.
        after: Position,
        /// The latest position of this store.
        latest: Position,
    },
    /// The server already has `max_watchers` watch streams open.
    #[error("{limit} Watch streams are open on this server (watch.max_watchers); retry later or on another server")]
    TooManyWatchers {
        /// The configured maximum.
        limit: usize,
    },
    /// The client did not read its events fast enough and more than
    /// `buffer_bytes` piled up for it.
    #[error("the client fell behind: more than {buffer_bytes} bytes of events waited for it (watch.buffer_bytes); resume with start_after = {last_sent}")]
    SlowConsumer {
        /// The configured per-watcher buffer.
        buffer_bytes: usize,
        /// The last position the stream sent: resume after it.
        last_sent: Position,
    },
    /// The server is shutting down; `last_sent` is where to resume on another.
    #[error(
        "the server is shutting down; resume on another server with start_after = {last_sent}"
    )]
    ShuttingDown {
        /// The last position the stream sent.
        last_sent: Position,
    },
    /// The storage engine failed or closed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl WatchError {
    /// The reason that ends a stream, for the `watch_streams_ended` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            WatchError::Kv(_) | WatchError::MalformedPosition(_) => "invalid",
            WatchError::Compacted { .. } => "compacted",
            WatchError::OtherHistory { .. } | WatchError::Rewound { .. } => "other_history",
            WatchError::TooManyWatchers { .. } => "too_many_watchers",
            WatchError::SlowConsumer { .. } => "slow_consumer",
            WatchError::ShuttingDown { .. } => "shutdown",
            WatchError::Engine(_) => "engine",
        }
    }
}
