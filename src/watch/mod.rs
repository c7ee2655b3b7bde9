//! `KvService.Watch`'s domain logic: a resumable stream of the changes under
//! a prefix, in commit order, built on the engine's change feed (live) and
//! its persisted history (resuming). No transport types.
//!
//! A watcher subscribes to the feed **first**, then replays the history after
//! its start position until it has caught up with what the subscription
//! holds, then follows the subscription, skipping by sequence what the
//! replay already queued. A lag of the feed (its bounded buffer dropped
//! events for this watcher) sends the watcher back to the history instead of
//! failing it: the history is persisted, the feed is not.
//!
//! Each watcher has a task of its own ([`pump`]) that fills a queue bounded
//! in bytes (`[watch] buffer_bytes`), and the stream the client reads takes
//! from it ([`Watcher::next`]). Once a watcher has caught up with the feed it
//! joins the **fan-out group** ([`fanout`]) of the watchers with the same
//! prefix and `include_values`: one task per group takes each batch from the
//! feed once, filters and converts it once into one shared [`Batch`] (whose
//! wire form the first stream to send it encodes, once, for all) and hands
//! the same `Arc` to every member's queue. A watcher's cost per batch is then
//! a reference count, a queue entry and a wake-up, nothing per event. The
//! hand-over happens at a batch boundary, so nothing is missed or repeated.
//! Writers never wait for a watcher: a live watcher whose client does not
//! read is ended with [`WatchError::SlowConsumer`] (and the last position it
//! sent) and its queue freed. While replaying history the task waits for
//! room instead, since the history does not go away.
//!
//! Positions ([`Position`]) are `<history id>-<sequence>`: a response's
//! position is the sequence of the last write request it covers (the events
//! of one request always travel together), and a heartbeat's is the point up
//! to which everything under the prefix was sent.
//!
//! Expiry produces no events: the engine hides expired records lazily, with
//! no commit to order an event by. Every PUT event carries its expiry.

pub mod config;
mod convert;
mod error;
mod fanout;
mod history;
mod position;
mod pump;
mod queue;
mod service;
#[cfg(test)]
mod tests;

pub use config::WatchConfig;
pub use error::WatchError;
pub use position::Position;
pub use service::{WatchCounts, WatchService, Watcher};

use std::sync::Arc;
use std::time::Duration;

use crate::kv::Entry;

/// Shortest heartbeat interval: more often would cost more than it tells.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// What a client asks to watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRequest {
    /// Keys starting with this; empty for every namespace the caller may read.
    pub prefix: String,
    /// Resume after this position (its text form); `None` starts now.
    pub start_after: Option<String>,
    /// Send values and metadata with PUT events.
    pub include_values: bool,
    /// Send a heartbeat this often while nothing else is sent (raised to
    /// [`MIN_PROGRESS_INTERVAL`]); `None` for none.
    pub progress_interval: Option<Duration>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Written.
    Put,
    /// Deleted.
    Delete,
    /// A whole namespace was dropped; the event's key is its prefix.
    NamespaceCleared,
}

/// One change of one key, as a watcher sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// The key (for [`EventKind::NamespaceCleared`], the namespace's prefix).
    pub key: Arc<str>,
    /// What happened.
    pub kind: EventKind,
    /// A put's version; 0 otherwise.
    pub version: u64,
    /// A put's expiry, in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// A put's schema version; 0 otherwise.
    pub schema_version: u32,
    /// A put's value and metadata, as Get returns them (with
    /// `include_values`, when still known).
    pub value: Option<Entry>,
    /// A replayed put whose key no longer holds its version: its value is
    /// gone, and none is sent.
    pub value_superseded: bool,
}

impl WatchEvent {
    /// Bytes the event holds, for the watcher's buffer bound.
    fn weight(&self) -> usize {
        const OVERHEAD: usize = 96;
        let value = self.value.as_ref().map_or(0, |entry| {
            let value = match &entry.value {
                crate::kv::ReadValue::Text(text) => text.len(),
                crate::kv::ReadValue::Json(bytes) | crate::kv::ReadValue::Bytes(bytes) => {
                    bytes.len()
                }
            };
            // Parsed metadata is bounded at 1 KiB serialized; count it so.
            value + entry.metadata.as_ref().map_or(0, |_| 1024)
        });
        OVERHEAD + self.key.len() + value
    }
}

/// The events of one write request under a prefix: built once per fan-out
/// group (or per replaying watcher) and shared by every watcher that sends it.
#[derive(Debug)]
pub struct Batch {
    /// The events (never empty), in commit order.
    pub events: Vec<WatchEvent>,
    /// The write request's sequence.
    pub sequence: u64,
    /// What the batch weighs against each watcher's buffer that holds it.
    weight: usize,
    /// The events' wire form, built by the first stream that sends the batch
    /// and reused by every other (the transport's business; the domain only
    /// keeps it beside the events so that it is built once).
    pub encoded: tokio::sync::OnceCell<bytes::Bytes>,
}

impl Batch {
    /// A batch of `events` (not empty) of the request at `sequence`.
    pub fn new(events: Vec<WatchEvent>, sequence: u64) -> Self {
        let weight = events.iter().map(WatchEvent::weight).sum();
        Self {
            events,
            sequence,
            weight,
            encoded: tokio::sync::OnceCell::new(),
        }
    }
}

/// One message of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// The events of one or more whole write requests; `position` is after them.
    Events {
        /// The batches, in commit order (each shared with other watchers).
        batches: Vec<Arc<Batch>>,
        /// Resume after this to get what follows.
        position: Position,
    },
    /// Nothing more under the prefix up to `position`.
    Progress {
        /// Resume after this to get what follows.
        position: Position,
    },
}
