//! The change feed: every committed mutation, in commit order, published by
//! the engine at the commit point.
//!
//! Services that must see every write (the cache's in-memory L1, the record
//! migrator, a `Watch` RPC) subscribe with [`crate::engine::Engine::subscribe`].
//! An engine publishes each commit once it is visible to reads, whatever
//! happened to the caller of the write: a write whose client gave up after it
//! was queued is published like any other.
//!
//! Guarantees:
//! - A subscription receives every commit that happens after
//!   [`crate::engine::Engine::subscribe`] returns, in commit order. Subscribing
//!   and then reading is therefore safe: a write the read did not see arrives
//!   on the subscription.
//! - Sequences are the positions of commits on the feed: strictly increasing
//!   in commit order across the store. They are **not** consecutive (a
//!   remote engine may use its store's revisions), and events of one commit
//!   may carry one sequence each (RocksDB) or share their commit's. A
//!   subscriber learns of a gap only from an explicit signal
//!   ([`RecvError::Lagged`]), never from arithmetic on sequences.
//! - [`ChangeSubscription::catch_up_to`] waits until the subscription holds
//!   every event up to a sequence (such as the one [`crate::engine::Engine::write`]
//!   returned, or [`crate::engine::Engine::acknowledged_sequence`]). No
//!   consumer may assume that an event is already in its subscription when
//!   `write` returns: an engine whose feed arrives later (a remote store's
//!   watch) keeps the contract through this wait. The RocksDB engine
//!   publishes before it answers the writer, so its waits end at once.
//! - A subscriber that falls too far behind is told, with
//!   [`RecvError::Lagged`], how many events the feed dropped for it (the
//!   feed counts them itself), and then continues with the oldest event
//!   still held. It must treat a lag as "anything may have changed" (a cache
//!   drops everything, for instance).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::{broadcast, Notify};

use super::record::ValueKind;

/// The value and metadata of a put, as written: what a watcher sends with a
/// live event. Shared by every subscriber (one allocation per put, made
/// from the put's own buffers without copying them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutPayload {
    /// How the value was written.
    pub kind: ValueKind,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Serialized JSON metadata.
    pub metadata: Option<Vec<u8>>,
}

impl PutPayload {
    /// Bytes it holds, counted in the feed's byte bound.
    pub fn bytes(&self) -> usize {
        self.value.len() + self.metadata.as_ref().map_or(0, Vec::len)
    }
}

/// What a committed mutation did to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key now holds a record with this version.
    Put {
        /// The version the write was given.
        version: u64,
        /// The record's expiry, in milliseconds since the Unix epoch. Expiry
        /// makes no event of its own: a watcher acts on this.
        expire_at_millis: Option<u64>,
        /// The record's schema version.
        schema_version: u32,
        /// The value and metadata as written: set on live events of the
        /// feed, `None` on events replayed from history (which keeps no
        /// values; the reader looks at the current record instead).
        payload: Option<Arc<PutPayload>>,
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
    /// The position of the event's commit on the feed: greater than the
    /// sequence of every event of earlier commits, and not greater than the
    /// sequence `write` returned for its commit. Not consecutive: compare
    /// sequences, never count with them.
    pub sequence: u64,
    /// The sequence of the client request (one `write` call or one
    /// `clear_namespace`) the event belongs to: the events of one request
    /// are published together and in order, and its last has
    /// `sequence == batch_sequence`. A watcher may resume only between
    /// requests, so it checkpoints at events where the two are equal.
    pub batch_sequence: u64,
    /// The key. Shared between subscribers, so fan-out does not copy it.
    pub key: Arc<str>,
    /// What happened to the key.
    pub change: Change,
}

/// Why [`ChangeSubscription::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were dropped for it;
    /// the next call continues with the oldest event still held. The feed
    /// counts dropped events itself: the count does not come from sequences.
    #[error("the change feed subscriber lagged behind and missed {missed} events")]
    Lagged {
        /// How many events it missed.
        missed: u64,
    },
    /// The engine is closed; no more events will come.
    #[error("the change feed is closed")]
    Closed,
}

/// Why [`ChangeSubscription::catch_up_to`] gave up. Distinct from a lag or a
/// cancellation: callers map a deadline to DEADLINE_EXCEEDED (or
/// UNAVAILABLE), never to CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CatchUpError {
    /// The deadline came before the feed published the sequence.
    #[error(
        "the change feed had not reached sequence {wanted} by the deadline (it is at {published})"
    )]
    DeadlineExceeded {
        /// The sequence waited for.
        wanted: u64,
        /// The highest sequence published when the wait gave up.
        published: u64,
    },
    /// The feed closed (the engine is gone) before publishing the sequence.
    #[error("the change feed closed before reaching sequence {wanted}")]
    Closed {
        /// The sequence waited for.
        wanted: u64,
    },
}

/// The events of one commit (one group commit of the RocksDB engine).
#[derive(Debug)]
struct Commit {
    /// How many events the feed published before this commit: the feed's
    /// own count, so that a lag is measured in events without arithmetic on
    /// the engine's sequences.
    ordinal: u64,
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

/// How far the feed has published, shared by the feed and every
/// subscription, so that waiting for a sequence needs no subscription lock.
#[derive(Debug, Default)]
struct Published {
    /// The highest sequence published.
    sequence: AtomicU64,
    /// Set when the feed is dropped.
    closed: AtomicBool,
    /// Woken on every publication and on close.
    changed: Notify,
}

/// The publishing side of a change feed, held by an engine. The engine
/// gives the sequences; the feed counts the events, so that counting and
/// subscribing are ordered by one lock.
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
    /// Events published so far. A std mutex: it is held for a few
    /// instructions and never across an await.
    published_events: Mutex<u64>,
    published: Arc<Published>,
    /// Bytes of events held now by commits some subscriber has not read.
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.published.closed.store(true, Ordering::SeqCst);
        self.published.changed.notify_waiters();
    }
}

impl ChangeFeed {
    /// A feed holding up to `capacity` unread commits per subscriber (at
    /// least one), and events of at most `max_bytes` in all, that has
    /// published everything up to sequence `published` (0 for nothing).
    pub fn new(capacity: usize, max_bytes: usize, published: u64) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            published_events: Mutex::new(0),
            published: Arc::new(Published {
                sequence: AtomicU64::new(published),
                ..Published::default()
            }),
            held: Arc::default(),
            max_bytes,
        }
    }

    /// Publishes one commit of `count` events, the last of which has
    /// sequence `last` (greater than every sequence published before). Call
    /// it once the commit is visible to reads, for every commit, subscribers
    /// or not; waits in [`ChangeSubscription::catch_up_to`] for sequences up
    /// to `last` end when it returns. `events` builds the events and
    /// `key_bytes` tells the length of their keys and payloads together
    /// ([`PutPayload::bytes`]); both are called
    /// only when someone listens, so an unwatched store does not pay for
    /// them. A commit whose events would take the feed past its byte bound is
    /// published without them (not even built): every subscriber is told it
    /// lagged by that many events. Never blocks: a slow subscriber lags
    /// instead.
    pub fn publish(
        &self,
        last: u64,
        count: usize,
        key_bytes: impl FnOnce() -> usize,
        events: impl FnOnce() -> Vec<ChangeEvent>,
    ) {
        let mut published_events = self
            .published_events
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ordinal = *published_events;
        *published_events = ordinal + count as u64;
        if count > 0 && self.sender.receiver_count() > 0 {
            let bytes = key_bytes().saturating_add(count.saturating_mul(EVENT_OVERHEAD_BYTES));
            // Publishing is serialised by the lock: only releases race this.
            let fits = self.held.load(Ordering::Acquire).saturating_add(bytes) <= self.max_bytes;
            let commit = if fits {
                self.held.fetch_add(bytes, Ordering::AcqRel);
                Commit {
                    ordinal,
                    count: count as u64,
                    events: events(),
                    held: Some((bytes, Arc::clone(&self.held))),
                }
            } else {
                Commit {
                    ordinal,
                    count: count as u64,
                    events: Vec::new(),
                    held: None,
                }
            };
            // A receiver may have gone meanwhile; that is fine.
            let _ = self.sender.send(Arc::new(commit));
        }
        // After the send: a waiter that sees the sequence finds the commit
        // in its subscription.
        self.published.sequence.fetch_max(last, Ordering::AcqRel);
        self.published.changed.notify_waiters();
    }

    /// Bytes of events the feed holds now for subscribers that have not
    /// read them.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The highest sequence published (0 before the first commit).
    pub fn published_sequence(&self) -> u64 {
        self.published.sequence.load(Ordering::Acquire)
    }

    /// How far the feed has published, to wait on without a subscription.
    pub fn position(&self) -> FeedPosition {
        FeedPosition(Arc::clone(&self.published))
    }

    /// A subscription to every commit published after this returns.
    ///
    /// Returns only once a publication under way has finished (publishing
    /// and subscribing take one lock): a commit any subscriber has received,
    /// as events or as a lag, is then counted as published, so history
    /// reads see it. The watch service relies on this after a lag
    /// (`watch::pump`), and every engine gets it by publishing through this
    /// feed.
    pub fn subscribe(&self) -> ChangeSubscription {
        let published_events = self
            .published_events
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ChangeSubscription {
            receiver: self.sender.subscribe(),
            current: None,
            position: 0,
            next_ordinal: *published_events,
            published: FeedPosition(Arc::clone(&self.published)),
        }
    }
}

/// How far a feed has published: a cheap handle that waits for a sequence
/// without holding a subscription (the memory tier waits with it before it
/// locks a shard's subscription). Every subscription of a feed shares it.
#[derive(Debug, Clone)]
pub struct FeedPosition(Arc<Published>);

impl FeedPosition {
    /// Whether the feed has published every event up to `sequence`: a
    /// subscription then holds (or has handed out) all of them.
    pub fn reached(&self, sequence: u64) -> bool {
        self.0.sequence.load(Ordering::Acquire) >= sequence
    }

    /// The highest sequence published.
    pub fn published(&self) -> u64 {
        self.0.sequence.load(Ordering::Acquire)
    }

    /// Waits until [`FeedPosition::reached`] holds for `sequence`; fails at
    /// `deadline`, or when the feed closes first.
    pub async fn wait_for(&self, sequence: u64, deadline: Instant) -> Result<(), CatchUpError> {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a publication in between wakes it.
            changed.as_mut().enable();
            if self.reached(sequence) {
                return Ok(());
            }
            if self.0.closed.load(Ordering::SeqCst) {
                return Err(CatchUpError::Closed { wanted: sequence });
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return Err(CatchUpError::DeadlineExceeded {
                    wanted: sequence,
                    published: self.published(),
                });
            }
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
    /// The feed's count of events before the next one this subscriber
    /// should get, to measure a lag in events.
    next_ordinal: u64,
    published: FeedPosition,
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
                // The count is in commits; the next commit's ordinal tells
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

    /// Returns once this subscription holds (or has handed out) every event
    /// with a sequence up to `sequence`, so that the following
    /// [`ChangeSubscription::try_recv`] calls return them without waiting.
    /// Fails with [`CatchUpError::DeadlineExceeded`] at `deadline`, or with
    /// [`CatchUpError::Closed`] when the feed closes first.
    pub async fn catch_up_to(&self, sequence: u64, deadline: Instant) -> Result<(), CatchUpError> {
        self.published.wait_for(sequence, deadline).await
    }

    /// How far the feed has published, to wait on without this subscription.
    pub fn feed_position(&self) -> FeedPosition {
        self.published.clone()
    }

    fn next_buffered(&mut self) -> Option<ChangeEvent> {
        let commit = self.current.as_ref()?;
        let event = commit.events.get(self.position)?.clone();
        self.position += 1;
        if self.position == commit.events.len() {
            self.current = None;
            self.position = 0;
        }
        Some(event)
    }

    /// Starts handing out `commit`; reports a lag first if events were
    /// skipped, or if the commit came without its events.
    fn take_commit(&mut self, commit: Arc<Commit>) -> Option<RecvError> {
        let mut missed = commit.ordinal.saturating_sub(self.next_ordinal);
        self.next_ordinal = commit.ordinal + commit.count;
        if commit.events.is_empty() {
            missed += commit.count;
        } else {
            self.current = Some(commit);
            self.position = 0;
        }
        (missed > 0).then_some(RecvError::Lagged { missed })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(sequence: u64) -> ChangeEvent {
        ChangeEvent {
            sequence,
            batch_sequence: sequence,
            key: Arc::from("k"),
            change: Change::Delete,
        }
    }

    /// Publishes one commit of `count` events at sequences `first`,
    /// `first + 10`, …: far from consecutive, as a remote engine's may be.
    fn publish(feed: &ChangeFeed, first: u64, count: usize) {
        let sequences: Vec<u64> = (0..count as u64).map(|n| first + 10 * n).collect();
        feed.publish(
            *sequences.last().unwrap_or(&first),
            count,
            || count,
            || sequences.iter().copied().map(event).collect(),
        );
    }

    /// A subscriber sees only commits after it subscribed, event by event; a
    /// lag is reported in events, not commits (counted by the feed, though
    /// the sequences are not consecutive), and reading resumes after it.
    #[tokio::test]
    async fn lag_is_counted_in_events() {
        let feed = ChangeFeed::new(2, usize::MAX, 0);
        publish(&feed, 10, 1);
        let mut subscription = feed.subscribe();
        assert_eq!(subscription.try_recv(), Ok(None));
        publish(&feed, 110, 3); // 110, 120, 130
        publish(&feed, 200, 2); // 200, 210
        publish(&feed, 300, 1); // 300: the first commit is dropped for the subscriber
        assert_eq!(
            subscription.recv().await,
            Err(RecvError::Lagged { missed: 3 })
        );
        assert_eq!(subscription.recv().await.unwrap().sequence, 200);
        assert_eq!(subscription.recv().await.unwrap().sequence, 210);
        assert_eq!(subscription.try_recv().unwrap().unwrap().sequence, 300);
        assert_eq!(subscription.try_recv(), Ok(None));
        assert_eq!(feed.published_sequence(), 300);
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
        publish(&feed, 1, 4); // 1..=31
        publish(&feed, 100, 4); // 100..=130
        publish(&feed, 200, 4); // past the bound, not kept
        publish(&feed, 300, 2); // 300, 310
        assert_eq!(feed.held_bytes(), 10 * one);
        for sequence in [1, 11, 21, 31, 100, 110, 120, 130] {
            assert_eq!(subscription.recv().await.unwrap().sequence, sequence);
        }
        assert_eq!(
            subscription.recv().await,
            Err(RecvError::Lagged { missed: 4 })
        );
        assert_eq!(subscription.recv().await.unwrap().sequence, 300);
        assert_eq!(subscription.recv().await.unwrap().sequence, 310);
        assert_eq!(subscription.try_recv(), Ok(None));
        assert_eq!(feed.held_bytes(), 0);
        publish(&feed, 400, 3);
        assert_eq!(subscription.recv().await.unwrap().sequence, 400);
    }

    /// `catch_up_to` waits for a publication it has not seen (here, one
    /// that comes later, as a remote engine's feed does), returns at once
    /// for one it has, and then `try_recv` hands the events out without
    /// waiting.
    #[tokio::test]
    async fn catch_up_waits_for_a_later_publication() {
        let feed = Arc::new(ChangeFeed::new(16, usize::MAX, 5));
        let mut subscription = feed.subscribe();
        let deadline = Instant::now() + Duration::from_secs(10);
        subscription.catch_up_to(5, deadline).await.unwrap();
        let publisher = Arc::clone(&feed);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            publish(&publisher, 40, 2); // 40, 50
        });
        subscription.catch_up_to(50, deadline).await.unwrap();
        assert_eq!(subscription.try_recv().unwrap().unwrap().sequence, 40);
        assert_eq!(subscription.try_recv().unwrap().unwrap().sequence, 50);
        late.await.unwrap();
    }

    /// `catch_up_to` a sequence never published fails with the deadline's
    /// own error, and with `Closed` once the feed is gone.
    #[tokio::test]
    async fn catch_up_fails_at_the_deadline_or_on_close() {
        let feed = ChangeFeed::new(16, usize::MAX, 0);
        publish(&feed, 7, 1);
        let subscription = feed.subscribe();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            subscription.catch_up_to(8, soon).await,
            Err(CatchUpError::DeadlineExceeded {
                wanted: 8,
                published: 7
            })
        );
        let position = subscription.feed_position();
        let waiting = tokio::spawn(async move {
            position
                .wait_for(8, Instant::now() + Duration::from_secs(10))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(feed);
        assert_eq!(
            waiting.await.unwrap(),
            Err(CatchUpError::Closed { wanted: 8 })
        );
    }
}
