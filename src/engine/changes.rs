//! The change feed: every committed mutation, in commit order, published by
//! the engine at the commit point.
//!
//! Services that must see every write (the cache's in-memory L1, the record
//! migrator, a `Watch` RPC) subscribe with [`crate::engine::Engine::subscribe`].
//! The feed is published by the engine itself right after a commit is durable
//! as configured, and before any caller is answered, so it does not depend on
//! what happened to the caller: a write whose client gave up after it was
//! queued is published like any other.
//!
//! Guarantees:
//! - A subscription receives every commit that happens after
//!   [`crate::engine::Engine::subscribe`] returns, in commit order. Subscribing
//!   and then reading is therefore safe: a write the read did not see arrives
//!   on the subscription.
//! - Sequence numbers are consecutive: each event's is one more than the one
//!   committed before it, so a gap is never silent.
//! - A subscriber that falls too far behind is told, with
//!   [`RecvError::Lagged`], how many events it missed, and then continues with
//!   the oldest event still held. It must treat a lag as "anything may have
//!   changed" (a cache drops everything, for instance).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::broadcast;

/// What a committed mutation did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key now holds a record with this version.
    Put {
        /// The version the write was given.
        version: u64,
        /// The record's expiry, in milliseconds since the Unix epoch.
        expire_at_millis: Option<u64>,
    },
    /// The key was deleted (whether or not a live record was there).
    Delete,
    /// A whole namespace was emptied (`AdminService.DropNamespace`): the
    /// event's `key` is the namespace's prefix, and every key starting with
    /// it is gone, except keys of more specific namespaces nested under it
    /// (a subscriber may drop those too: over-invalidating is safe). One
    /// event stands for all the keys, so subscribers must handle it; the
    /// deleted keys get no events of their own.
    NamespaceCleared,
}

/// One committed mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The commit sequence number: consecutive across the store, in commit order.
    pub sequence: u64,
    /// The key. Shared between subscribers, so fan-out does not copy it.
    pub key: Arc<str>,
    /// What happened to the key.
    pub change: Change,
}

/// Why [`ChangeSubscription::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were dropped for it;
    /// the next call continues with the oldest event still held.
    #[error("the change feed subscriber lagged behind and missed {missed} events")]
    Lagged {
        /// How many events it missed.
        missed: u64,
    },
    /// The engine is closed; no more events will come.
    #[error("the change feed is closed")]
    Closed,
}

/// The events of one commit (one group commit of the RocksDB engine).
#[derive(Debug)]
struct Commit {
    /// The sequence of the commit's first event.
    first: u64,
    /// How many events the commit made.
    count: u64,
    /// The events; empty when they did not fit in the feed's byte bound,
    /// which subscribers report as a lag of `count` events.
    events: Vec<ChangeEvent>,
    /// What `events` hold, counted in the feed's bytes until dropped.
    held: Option<(usize, Arc<AtomicUsize>)>,
}

impl Drop for Commit {
    fn drop(&mut self) {
        if let Some((bytes, held)) = self.held.take() {
            held.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Bytes an event holds besides its key: the event and the key's reference
/// count and length.
const EVENT_OVERHEAD_BYTES: usize = std::mem::size_of::<ChangeEvent>() + 16;

/// The publishing side of a change feed, held by an engine. It numbers the
/// events, so that numbering and subscribing are ordered by one lock.
///
/// Engines call [`ChangeFeed::publish`] once per commit, in commit order, and
/// hand out [`ChangeFeed::subscribe`] from [`crate::engine::Engine::subscribe`].
///
/// What the feed holds for subscribers that have not read it yet is bounded
/// twice: in commits (`capacity`, beyond which the oldest is overwritten) and
/// in bytes (`max_bytes`, beyond which a new commit's events are not kept at
/// all). A commit may carry 256 requests of 10,000 operations each, so a
/// bound in commits alone let one lagging subscriber keep gigabytes alive.
#[derive(Debug)]
pub struct ChangeFeed {
    sender: broadcast::Sender<Arc<Commit>>,
    /// The sequence of the next event. A std mutex: it is held for a few
    /// instructions and never across an await.
    next_sequence: Mutex<u64>,
    /// Bytes of events held now by commits some subscriber has not read.
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl ChangeFeed {
    /// A feed holding up to `capacity` unread commits per subscriber (at
    /// least one), and events of at most `max_bytes` in all, whose first
    /// event gets `next_sequence`.
    pub fn new(capacity: usize, max_bytes: usize, next_sequence: u64) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            next_sequence: Mutex::new(next_sequence),
            held: Arc::default(),
            max_bytes,
        }
    }

    /// Publishes one commit of `count` events and returns the sequence after
    /// the last one. Call it after the commit is visible to reads and before
    /// its callers are answered, for every commit, subscribers or not.
    /// `events` builds the events from the first one's sequence, and
    /// `key_bytes` tells the length of their keys together; both are called
    /// only when someone listens, so an unwatched store does not pay for
    /// them. A commit whose events would take the feed past its byte bound is
    /// published without them (not even built): every subscriber is told it
    /// lagged by that many events. Never blocks: a slow subscriber lags
    /// instead.
    pub fn publish(
        &self,
        count: usize,
        key_bytes: impl FnOnce() -> usize,
        events: impl FnOnce(u64) -> Vec<ChangeEvent>,
    ) -> u64 {
        let mut next = self.next_sequence.lock().unwrap_or_else(|e| e.into_inner());
        let first = *next;
        *next = first + count as u64;
        if count > 0 && self.sender.receiver_count() > 0 {
            let bytes = key_bytes().saturating_add(count.saturating_mul(EVENT_OVERHEAD_BYTES));
            // Publishing is serialised by `next`: only releases race this.
            let fits = self.held.load(Ordering::Acquire).saturating_add(bytes) <= self.max_bytes;
            let commit = if fits {
                self.held.fetch_add(bytes, Ordering::AcqRel);
                Commit {
                    first,
                    count: count as u64,
                    events: events(first),
                    held: Some((bytes, Arc::clone(&self.held))),
                }
            } else {
                Commit {
                    first,
                    count: count as u64,
                    events: Vec::new(),
                    held: None,
                }
            };
            // A receiver may have gone meanwhile; that is fine.
            let _ = self.sender.send(Arc::new(commit));
        }
        *next
    }

    /// Bytes of events the feed holds now for subscribers that have not
    /// read them.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The sequence the next event will get.
    pub fn next_sequence(&self) -> u64 {
        *self.next_sequence.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription to every commit published after this returns.
    pub fn subscribe(&self) -> ChangeSubscription {
        let next = self.next_sequence.lock().unwrap_or_else(|e| e.into_inner());
        ChangeSubscription {
            receiver: self.sender.subscribe(),
            current: None,
            position: 0,
            next_sequence: *next,
        }
    }
}

/// A subscriber's view of the change feed. Dropping it unsubscribes.
#[derive(Debug)]
pub struct ChangeSubscription {
    receiver: broadcast::Receiver<Arc<Commit>>,
    /// The commit being handed out event by event.
    current: Option<Arc<Commit>>,
    position: usize,
    /// The sequence the next event should have, to measure a lag in events.
    next_sequence: u64,
}

impl ChangeSubscription {
    /// The next event, waiting for one if needed.
    pub async fn recv(&mut self) -> Result<ChangeEvent, RecvError> {
        loop {
            if let Some(event) = self.next_buffered() {
                return Ok(event);
            }
            match self.receiver.recv().await {
                Ok(commit) => {
                    if let Some(lag) = self.take_commit(commit) {
                        return Err(lag);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Err(RecvError::Closed),
                // The count is in commits; the next commit's sequence tells
                // how many events were missed.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    }

    /// The next event if one is already here, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<ChangeEvent>, RecvError> {
        loop {
            if let Some(event) = self.next_buffered() {
                return Ok(Some(event));
            }
            match self.receiver.try_recv() {
                Ok(commit) => {
                    if let Some(lag) = self.take_commit(commit) {
                        return Err(lag);
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            }
        }
    }

    fn next_buffered(&mut self) -> Option<ChangeEvent> {
        let commit = self.current.as_ref()?;
        let event = commit.events.get(self.position)?.clone();
        self.position += 1;
        if self.position == commit.events.len() {
            self.current = None;
            self.position = 0;
        }
        self.next_sequence = event.sequence + 1;
        Some(event)
    }

    /// Starts handing out `commit`; reports a lag first if events were
    /// skipped, or if the commit came without its events.
    fn take_commit(&mut self, commit: Arc<Commit>) -> Option<RecvError> {
        let mut missed = commit.first.saturating_sub(self.next_sequence);
        if commit.events.is_empty() {
            missed += commit.count;
            self.next_sequence = commit.first + commit.count;
        } else {
            self.next_sequence = commit.first;
            self.current = Some(commit);
            self.position = 0;
        }
        (missed > 0).then_some(RecvError::Lagged { missed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64) -> ChangeEvent {
        ChangeEvent {
            sequence,
            key: Arc::from("k"),
            change: Change::Delete,
        }
    }

    fn publish(feed: &ChangeFeed, count: usize) {
        feed.publish(
            count,
            || count,
            |first| (first..first + count as u64).map(event).collect(),
        );
    }

    /// A subscriber sees only commits after it subscribed, event by event; a
    /// lag is reported in events, not commits, and reading resumes after it.
    #[tokio::test]
    async fn lag_is_counted_in_events() {
        let feed = ChangeFeed::new(2, usize::MAX, 10);
        publish(&feed, 1);
        let mut subscription = feed.subscribe();
        assert_eq!(subscription.try_recv(), Ok(None));
        publish(&feed, 3); // 11, 12, 13
        publish(&feed, 2); // 14, 15
        publish(&feed, 1); // 16: the first commit is dropped for the subscriber
        assert_eq!(
            subscription.recv().await,
            Err(RecvError::Lagged { missed: 3 })
        );
        assert_eq!(subscription.recv().await.unwrap().sequence, 14);
        assert_eq!(subscription.recv().await.unwrap().sequence, 15);
        assert_eq!(subscription.try_recv().unwrap().unwrap().sequence, 16);
        assert_eq!(subscription.try_recv(), Ok(None));
        assert_eq!(feed.next_sequence(), 17);
        drop(feed);
        assert_eq!(subscription.recv().await, Err(RecvError::Closed));
    }

    /// Events past the byte bound are not kept for a subscriber that does
    /// not read: their commits arrive as a lag, and reading frees the rest.
    #[tokio::test]
    async fn held_events_are_bounded_in_bytes() {
        let one = 1 + EVENT_OVERHEAD_BYTES;
        let feed = ChangeFeed::new(4096, 10 * one, 0);
        let mut subscription = feed.subscribe();
        publish(&feed, 4); // 0..4
        publish(&feed, 4); // 4..8
        publish(&feed, 4); // 8..12: past the bound, not kept
        publish(&feed, 2); // 12..14
        assert_eq!(feed.held_bytes(), 10 * one);
        for sequence in 0..8 {
            assert_eq!(subscription.recv().await.unwrap().sequence, sequence);
        }
        assert_eq!(
            subscription.recv().await,
            Err(RecvError::Lagged { missed: 4 })
        );
        assert_eq!(subscription.recv().await.unwrap().sequence, 12);
        assert_eq!(subscription.recv().await.unwrap().sequence, 13);
        assert_eq!(subscription.try_recv(), Ok(None));
        assert_eq!(feed.held_bytes(), 0);
        publish(&feed, 3);
        assert_eq!(subscription.recv().await.unwrap().sequence, 14);
    }
}
