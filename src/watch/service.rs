//! The watch service: admits watchers (limits, access to owned namespaces,
//! start positions), starts their tasks, and hands out their streams.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::kv::{validate_prefix, KvError, RecordStore};

use super::convert::{Converter, Filter};
use super::fanout::Groups;
use super::history;
use super::pump::{failure_error, Pump};
use super::queue::Shared;
use super::{Position, WatchConfig, WatchError, WatchItem, WatchRequest, MIN_PROGRESS_INTERVAL};

/// Most events one response carries when several batches are queued (one
/// batch is never split, whatever its size).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Most bytes one response carries when several batches are queued.
const MAX_BYTES_PER_RESPONSE: usize = 1024 * 1024;

/// Figures for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchCounts {
    /// Watch streams open now.
    pub watchers: usize,
    /// Events sent to clients since start.
    pub events_sent: u64,
    /// Streams ended since start, by reason (`client` for a client that
    /// went away; the others as [`WatchError::reason`]).
    pub ended: Vec<(&'static str, u64)>,
    /// How far the slowest open watcher is behind the latest commit, in
    /// sequences (0 with none).
    pub max_lag: u64,
}

/// The reasons a stream ends, in the order [`WatchCounts::ended`] lists them.
const END_REASONS: [&str; 8] = [
    "client",
    "invalid",
    "compacted",
    "other_history",
    "too_many_watchers",
    "slow_consumer",
    "shutdown",
    "engine",
];

struct Inner {
    store: RecordStore,
    config: WatchConfig,
    open: AtomicUsize,
    events_sent: AtomicU64,
    ended: [AtomicU64; END_REASONS.len()],
    /// The last sequence each open watcher sent, for the lag figure.
    sent: Mutex<Vec<Weak<AtomicU64>>>,
    shutdown: watch::Sender<bool>,
    /// The fan-out groups of caught-up watchers.
    groups: Arc<Groups>,
}

impl Inner {
    fn count_end(&self, reason: &str) {
        if let Some(index) = END_REASONS.iter().position(|known| *known == reason) {
            self.ended[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves watches over one store.
#[derive(Clone)]
pub struct WatchService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WatchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchService")
            .field("config", &self.inner.config)
            .field("open", &self.inner.open)
            .finish_non_exhaustive()
    }
}

impl WatchService {
    /// A service over `store` with the `[watch]` settings.
    pub fn new(store: RecordStore, config: WatchConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                open: AtomicUsize::new(0),
                events_sent: AtomicU64::new(0),
                ended: Default::default(),
                sent: Mutex::new(Vec::new()),
                shutdown: watch::channel(false).0,
                groups: Arc::default(),
            }),
        }
    }

    /// Ends every open stream with [`WatchError::ShuttingDown`] and refuses
    /// new ones, for a drain: clients resume on another server.
    pub fn shut_down(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// The fan-out groups (for tests).
    #[cfg(test)]
    pub(super) fn groups(&self) -> Arc<Groups> {
        Arc::clone(&self.inner.groups)
    }

    /// The figures of `/metrics`.
    pub fn counts(&self) -> WatchCounts {
        let latest = self.inner.store.engine().acknowledged_sequence();
        let mut sent = self.inner.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.retain(|watcher| watcher.strong_count() > 0);
        let max_lag = sent
            .iter()
            .filter_map(Weak::upgrade)
            .map(|last| latest.saturating_sub(last.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0);
        WatchCounts {
            watchers: self.inner.open.load(Ordering::Relaxed),
            events_sent: self.inner.events_sent.load(Ordering::Relaxed),
            ended: END_REASONS
                .iter()
                .zip(&self.inner.ended)
                .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
                .collect(),
            max_lag,
        }
    }

    /// Starts a watch: checks the request, takes a watcher's place,
    /// subscribes to the feed and then checks the start position against
    /// the history, so that no commit falls between the two.
    pub async fn watch(&self, request: WatchRequest) -> Result<Watcher, WatchError> {
        let result = self.start(request).await;
        if let Err(error) = &result {
            self.inner.count_end(error.reason());
        }
        result
    }

    async fn start(&self, request: WatchRequest) -> Result<Watcher, WatchError> {
        validate_prefix("prefix", &request.prefix)
            .map_err(|violation| KvError::InvalidArgument(vec![violation]))?;
        // A prefix inside an owned namespace is refused; one spanning owned
        // namespaces (the empty prefix) gets none of their events.
        self.inner.store.check_owner("prefix", &request.prefix)?;
        let start = request
            .start_after
            .as_deref()
            .map(|text| {
                Position::parse(text)
                    .ok_or_else(|| WatchError::MalformedPosition(text.chars().take(64).collect()))
            })
            .transpose()?;
        if *self.inner.shutdown.borrow() {
            // Nothing was sent: resume where the client asked to start, or
            // from now.
            let engine = self.inner.store.engine();
            return Err(WatchError::ShuttingDown {
                last_sent: start.unwrap_or(Position {
                    history_id: engine.history_id(),
                    sequence: engine.acknowledged_sequence(),
                }),
            });
        }
        let slot = Slot::take(&self.inner)?;
        let engine = Arc::clone(self.inner.store.engine());
        let history_id = history::history_id(engine.as_ref());
        // Subscribe first: every commit after this arrives on it.
        let subscription = engine.subscribe();
        let cursor = match start {
            Some(position) => {
                // Fails now (before any response) for a position the history
                // cannot serve; the task reads from it again.
                history::read(engine.as_ref(), position.history_id, position.sequence, 1)
                    .await
                    .map_err(|failure| {
                        failure_error(position.history_id, position.sequence, failure)
                    })?;
                position.sequence
            }
            None => history::latest(engine.as_ref())
                .await?
                .max(subscription.feed_position().published()),
        };
        let shared = Arc::new(Shared::default());
        shared.lock().cursor = cursor;
        let pump = Pump {
            converter: Converter {
                engine,
                filter: Filter {
                    prefix: request.prefix,
                },
                include_values: request.include_values,
            },
            history_id,
            buffer_bytes: self.inner.config.buffer_bytes,
            shared: Arc::clone(&shared),
            groups: Arc::clone(&self.inner.groups),
        };
        let task = tokio::spawn(pump.run(subscription, cursor));
        let sent = Arc::new(AtomicU64::new(cursor));
        self.inner
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&sent));
        let interval = request
            .progress_interval
            .map(|interval| interval.max(MIN_PROGRESS_INTERVAL));
        Ok(Watcher {
            inner: Arc::clone(&self.inner),
            shared,
            task,
            last_sent: Position {
                history_id,
                sequence: cursor,
            },
            sent,
            interval,
            next_beat: interval.map(|interval| Instant::now() + interval),
            shutdown: self.inner.shutdown.subscribe(),
            ended: false,
            _slot: slot,
        })
    }
}

/// A watcher's place under `max_watchers`, given back when dropped.
struct Slot(Arc<Inner>);

impl Slot {
    fn take(inner: &Arc<Inner>) -> Result<Slot, WatchError> {
        let limit = inner.config.max_watchers;
        let open = inner.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > limit {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            return Err(WatchError::TooManyWatchers { limit });
        }
        Ok(Slot(Arc::clone(inner)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open watch: its responses, in order, until it ends.
pub struct Watcher {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    last_sent: Position,
    sent: Arc<AtomicU64>,
    interval: Option<Duration>,
    next_beat: Option<Instant>,
    shutdown: watch::Receiver<bool>,
    ended: bool,
    _slot: Slot,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("last_sent", &self.last_sent)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
        if !self.ended {
            self.inner.count_end("client");
        }
    }
}

impl Watcher {
    /// The position of the last response sent (the start position before any).
    pub fn position(&self) -> Position {
        self.last_sent
    }

    /// The next response: queued events (whole write requests, several
    /// together when they are waiting), a heartbeat when the interval passed
    /// with nothing to send, or the error that ends the stream; `None` after it.
    pub async fn next(&mut self) -> Option<Result<WatchItem, WatchError>> {
        if self.ended {
            return None;
        }
        loop {
            if *self.shutdown.borrow() {
                return Some(Err(self.end(WatchError::ShuttingDown {
                    last_sent: self.last_sent,
                })));
            }
            let shared = Arc::clone(&self.shared);
            let ready = shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let cursor = {
                let mut queue = shared.lock();
                if !queue.items.is_empty() {
                    // Whole batches, as many as the caps allow (at least one).
                    let mut batches = Vec::new();
                    let mut events = 0usize;
                    let mut bytes = 0usize;
                    let mut sequence = self.last_sent.sequence;
                    while let Some(front) = queue.items.front() {
                        if !batches.is_empty()
                            && (events + front.events.len() > MAX_EVENTS_PER_RESPONSE
                                || bytes + front.weight > MAX_BYTES_PER_RESPONSE)
                        {
                            break;
                        }
                        let Some(batch) = queue.items.pop_front() else {
                            break;
                        };
                        bytes += batch.weight;
                        events += batch.events.len();
                        sequence = batch.sequence;
                        batches.push(batch);
                    }
                    queue.bytes -= bytes;
                    drop(queue);
                    shared.room.notify_one();
                    let position = self.sent_up_to(sequence);
                    self.inner
                        .events_sent
                        .fetch_add(events as u64, Ordering::Relaxed);
                    return Some(Ok(WatchItem::Events { batches, position }));
                }
                if let Some(mut error) = queue.end.take() {
                    drop(queue);
                    if let WatchError::SlowConsumer { last_sent, .. } = &mut error {
                        *last_sent = self.last_sent;
                    }
                    return Some(Err(self.end(error)));
                }
                queue.cursor
            };
            let beat = async {
                match self.next_beat {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => continue,
                () = &mut ready => continue,
                () = beat => {
                    let sequence = cursor.max(self.last_sent.sequence);
                    let position = self.sent_up_to(sequence);
                    return Some(Ok(WatchItem::Progress { position }));
                }
            }
        }
    }

    /// Records a response sent up to `sequence` and returns its position.
    fn sent_up_to(&mut self, sequence: u64) -> Position {
        self.last_sent.sequence = sequence;
        self.sent.store(sequence, Ordering::Relaxed);
        if let Some(interval) = self.interval {
            self.next_beat = Some(Instant::now() + interval);
        }
        self.last_sent
    }

    fn end(&mut self, error: WatchError) -> WatchError {
        self.ended = true;
        self.inner.count_end(error.reason());
        self.task.abort();
        error
    }
}
