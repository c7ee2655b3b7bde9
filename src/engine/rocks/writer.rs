//! The write path of the RocksDB engine: one writer thread that
//! group-commits every queued request.
//!
//! Callers encode their records on their own task (version 0) and queue them,
//! holding a share of the queue's byte budget. The writer takes the first
//! queued request and every one queued behind it (up to the group limits),
//! reads the current versions the group's preconditions need with one
//! multi-get per namespace, checks each request in queue order against the
//! store plus the requests before it, patches the versions into the encoded
//! records in place, and commits the whole group as one `WriteBatch` together
//! with the engine's counters. Right after the commit it publishes the group
//! to the change feed, then answers the callers.
//!
//! If the writer thread panics, or a write fails in a way that retrying will
//! not fix, the thread stops and the engine reports the failure
//! ([`crate::engine::Engine::failed`]): the server turns NOT_SERVING and exits,
//! so an orchestrator restarts it, instead of answering UNAVAILABLE forever.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rocksdb::WriteBatch;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{
    storage_error, CfHandle, Inner, CHANGE_SEQUENCE_KEY, CLOCK_MARK_KEY, VERSION_COUNTER_KEY,
};
use crate::clock::Clock;
use crate::engine::changes::{Change, ChangeEvent};
use crate::engine::namespace::NamespaceId;
use crate::engine::record::{self, RecordParts, StoredRecord};
use crate::engine::{EngineError, Precondition, WriteOp, WriteOutcome};

/// Most requests one group commit takes.
const MAX_GROUP_REQUESTS: usize = 256;
/// A group stops taking requests once its records reach this size.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Requests that may wait for the writer before callers wait to enqueue.
const WRITE_QUEUE_DEPTH: usize = 1024;
/// Requests whose values are larger than this are encoded on the blocking
/// pool rather than on an async worker, which must not stall for long.
const INLINE_ENCODE_BYTES: usize = 1024 * 1024;
/// How long the writer polls its queue after a group before it parks. Under
/// load the next request usually arrives within this window, and taking it
/// without parking saves a futex wait on this thread and a futex wake on the
/// caller's (together several times the cost of a small group). The poll
/// yields the core between tries, so on a busy machine it takes little CPU
/// from anyone; an idle server polls once per commit, then parks.
const WRITER_POLL: Duration = Duration::from_micros(50);
/// How often an idle writer persists the clock's high-water mark.
const CLOCK_MARK_INTERVAL: Duration = Duration::from_secs(1);

/// One mutation, ready for the writer.
struct PreparedOp {
    key: String,
    namespace: NamespaceId,
    precondition: Precondition,
    /// The encoded record with version 0, patched by the writer; `None` deletes.
    record: Option<StoredRecord>,
    expire_at_millis: Option<u64>,
}

impl PreparedOp {
    /// A put without a precondition: it needs no current version.
    fn is_blind_put(&self) -> bool {
        self.record.is_some() && self.precondition == Precondition::None
    }

    fn bytes(&self) -> usize {
        self.key.len() + self.record.as_ref().map_or(0, StoredRecord::len)
    }
}

type Reply = oneshot::Sender<Result<Vec<WriteOutcome>, EngineError>>;

/// A batch waiting for the writer thread. One without ops is a tick: it only
/// wakes the writer so it persists the clock's high-water mark.
struct WriteRequest {
    ops: Vec<PreparedOp>,
    /// Set for a request that empties a whole namespace; it has no ops and
    /// commits alone (see [`Inner::commit_clear`]).
    clear: Option<NamespaceId>,
    reply: Option<Reply>,
    bytes: usize,
    /// The request's share of the queue's byte budget, returned as it is answered.
    budget: Option<OwnedSemaphorePermit>,
}

impl WriteRequest {
    fn tick() -> Self {
        Self {
            ops: Vec::new(),
            clear: None,
            reply: None,
            bytes: 0,
            budget: None,
        }
    }

    fn answer(&mut self, result: Result<Vec<WriteOutcome>, EngineError>) {
        // Room first, so a caller that sees its answer sees the room too.
        self.budget.take();
        if let Some(reply) = self.reply.take() {
            // The caller may have given up (deadline, disconnect); the write
            // is decided and published regardless.
            let _ = reply.send(result);
        }
    }
}

/// What the writer thread carries from group to group.
pub(super) struct WriterState {
    /// The last version handed out.
    pub(super) last_version: u64,
    /// The clock's high-water mark last written to the store.
    pub(super) persisted_clock: u64,
}

/// Test hooks that hold or crash the writer thread. The writer reads one
/// atomic per group to learn that none is set.
#[derive(Default)]
pub(super) struct WriterHooks {
    active: AtomicBool,
    state: Mutex<HookState>,
    changed: Condvar,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum HookState {
    #[default]
    Run,
    Pause,
    Crash,
}

impl WriterHooks {
    fn set(&self, state: HookState) {
        let mut current = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *current = state;
        self.active.store(state != HookState::Run, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Called by the writer before each group: waits while paused, panics
    /// when told to crash.
    fn checkpoint(&self) {
        if !self.active.load(Ordering::SeqCst) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while *state == HookState::Pause {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if *state == HookState::Crash {
            drop(state);
            panic!("writer crash requested by a test hook");
        }
    }
}

/// Holds the writer thread before its next group until dropped (a test hook:
/// see [`super::RocksEngine::pause_writer`]).
#[must_use = "the writer resumes when this is dropped"]
pub struct WriterPause {
    hooks: Arc<WriterHooks>,
}

impl Drop for WriterPause {
    fn drop(&mut self) {
        self.hooks.set(HookState::Run);
    }
}

impl std::fmt::Debug for WriterPause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterPause").finish()
    }
}

/// The writer thread, its queue, its byte budget and its clock ticker.
/// Dropping the last engine handle closes the queue; the thread finishes what
/// is queued, persists the clock mark and exits, releasing the store.
pub(super) struct Writer {
    sender: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
    ticker_stop: Arc<AtomicBool>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    hooks: Arc<WriterHooks>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::SeqCst);
        if let Some(ticker) = self.ticker.take() {
            ticker.thread().unpark();
            let _ = ticker.join();
        }
        // A paused writer would never drain its queue.
        self.hooks.set(HookState::Run);
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread and its ticker over `inner`.
    pub(super) fn start(
        inner: Arc<Inner>,
        state: WriterState,
        queue_bytes: usize,
    ) -> Result<Self, EngineError> {
        let (sender, requests) = mpsc::channel(WRITE_QUEUE_DEPTH);
        let writer_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("tierkv-writer".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_writer(&writer_inner, requests, state)
                }));
                let reason = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(reason)) => reason,
                    Err(panic) => format!("the writer thread panicked: {}", panic_message(&panic)),
                };
                tracing::error!(%reason, "the writer stopped; the store can no longer be written");
                writer_inner.failure.send_replace(Some(reason));
            })
            .map_err(|error| {
                EngineError::Storage(format!("cannot start the writer thread: {error}"))
            })?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&ticker_stop);
        let ticks = sender.clone();
        let ticker = std::thread::Builder::new()
            .name("tierkv-clock".into())
            .spawn(move || loop {
                std::thread::park_timeout(CLOCK_MARK_INTERVAL);
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                // A full queue means groups are committing, and each persists the mark.
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    ticks.try_send(WriteRequest::tick())
                {
                    return;
                }
            })
            .map_err(|error| {
                EngineError::Storage(format!("cannot start the clock thread: {error}"))
            })?;

        let budget_bytes = queue_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            ticker: Some(ticker),
            ticker_stop,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            hooks: Arc::clone(&inner.hooks),
        })
    }

    /// Encodes `ops`, waits for room in the queue's byte budget, queues them
    /// and waits for the writer's answer.
    pub(super) async fn submit(
        &self,
        inner: &Arc<Inner>,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, EngineError> {
        let value_bytes: usize = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put(put) => put.value.len(),
                WriteOp::Delete(_) => 0,
            })
            .sum();
        let prepared = if value_bytes > INLINE_ENCODE_BYTES {
            let encoder = Arc::clone(inner);
            tokio::task::spawn_blocking(move || prepare(&encoder, ops))
                .await
                .map_err(|error| EngineError::Storage(format!("encoding task failed: {error}")))?
        } else {
            prepare(inner, ops)
        };
        let bytes: usize = prepared.iter().map(PreparedOp::bytes).sum();
        // A request larger than the whole budget waits for the queue to empty.
        let permits = bytes.clamp(1, self.budget_bytes) as u32;
        let budget = Arc::clone(&self.budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| self.closed(inner))?;
        let sender = self.sender.as_ref().ok_or_else(|| self.closed(inner))?;
        let (reply, response) = oneshot::channel();
        sender
            .send(WriteRequest {
                ops: prepared,
                clear: None,
                reply: Some(reply),
                bytes,
                budget: Some(budget),
            })
            .await
            .map_err(|_| self.closed(inner))?;
        response.await.map_err(|_| self.closed(inner))?
    }

    /// Queues the emptying of namespace `namespace` and waits for its commit.
    pub(super) async fn submit_clear(
        &self,
        inner: &Arc<Inner>,
        namespace: NamespaceId,
    ) -> Result<(), EngineError> {
        let sender = self.sender.as_ref().ok_or_else(|| self.closed(inner))?;
        let (reply, response) = oneshot::channel();
        sender
            .send(WriteRequest {
                ops: Vec::new(),
                clear: Some(namespace),
                reply: Some(reply),
                bytes: 0,
                budget: None,
            })
            .await
            .map_err(|_| self.closed(inner))?;
        response.await.map_err(|_| self.closed(inner))?.map(|_| ())
    }

    fn closed(&self, inner: &Inner) -> EngineError {
        match inner.failure.borrow().as_deref() {
            Some(reason) => {
                EngineError::Unavailable(format!("the store cannot be written: {reason}"))
            }
            None => EngineError::Unavailable("the engine is shutting down".into()),
        }
    }

    /// Bytes of encoded writes queued or being committed.
    pub(super) fn queued_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }

    /// Requests waiting in the queue, not yet taken by the writer.
    pub(super) fn queued_requests(&self) -> usize {
        self.sender
            .as_ref()
            .map_or(0, |sender| sender.max_capacity() - sender.capacity())
    }

    /// Holds the writer before its next group.
    pub(super) fn pause(&self) -> WriterPause {
        self.hooks.set(HookState::Pause);
        WriterPause {
            hooks: Arc::clone(&self.hooks),
        }
    }

    /// Makes the writer thread panic before its next group, and wakes it.
    pub(super) fn crash(&self) {
        self.hooks.set(HookState::Crash);
        if let Some(sender) = &self.sender {
            let _ = sender.try_send(WriteRequest::tick());
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Encodes every put's record (version 0) and routes every key, on the
/// caller's side of the queue. Each value is copied once, into its record;
/// the put's own buffer is freed here.
fn prepare(inner: &Inner, ops: Vec<WriteOp>) -> Vec<PreparedOp> {
    ops.into_iter()
        .map(|op| match op {
            WriteOp::Put(put) => {
                let record = record::encode_stored(RecordParts {
                    kind: put.kind,
                    value: &put.value,
                    metadata: put.metadata.as_deref(),
                    expire_at_millis: put.expire_at_millis,
                    version: 0,
                    schema_version: put.schema_version,
                });
                PreparedOp {
                    namespace: inner.namespaces.route(&put.key),
                    key: put.key,
                    precondition: put.precondition,
                    record: Some(record),
                    expire_at_millis: put.expire_at_millis,
                }
            }
            WriteOp::Delete(delete) => PreparedOp {
                namespace: inner.namespaces.route(&delete.key),
                key: delete.key,
                precondition: delete.precondition,
                record: None,
                expire_at_millis: None,
            },
        })
        .collect()
}

/// The writer thread: takes every request queued behind the first, up to the
/// group limits, and commits them together. Returns an error only when the
/// store can no longer be written.
fn run_writer(
    inner: &Inner,
    mut requests: mpsc::Receiver<WriteRequest>,
    mut state: WriterState,
) -> Result<(), String> {
    // A namespace clear taken while gathering a group waits for the next turn:
    // it commits alone, after the group queued before it.
    let mut held: Option<WriteRequest> = None;
    while let Some(first) = held.take().or_else(|| next_request(&mut requests)) {
        inner.hooks.checkpoint();
        if first.clear.is_some() {
            inner.commit_clear(first, &mut state)?;
            continue;
        }
        let mut group_bytes = first.bytes;
        let mut group = vec![first];
        while group.len() < MAX_GROUP_REQUESTS && group_bytes < MAX_GROUP_BYTES {
            match requests.try_recv() {
                Ok(request) if request.clear.is_some() => {
                    held = Some(request);
                    break;
                }
                Ok(request) => {
                    group_bytes += request.bytes;
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        inner.commit_group(group, &mut state)?;
    }
    // Closing: the last word on the clock.
    inner.commit_group(Vec::new(), &mut state)
}

/// The next queued request: polled for [`WRITER_POLL`], yielding the core
/// between tries, then waited for parked. `None` once the queue is closed and
/// empty.
fn next_request(requests: &mut mpsc::Receiver<WriteRequest>) -> Option<WriteRequest> {
    let start = Instant::now();
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(request),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if start.elapsed() >= WRITER_POLL {
            return requests.blocking_recv();
        }
        std::thread::yield_now();
    }
}

/// A key's live version as the store holds it before the group.
type CurrentVersion = Result<Option<u64>, EngineError>;

/// A request that passed its preconditions, with its outcomes.
struct Accepted {
    request: WriteRequest,
    outcomes: Vec<WriteOutcome>,
}

impl Inner {
    /// The live version of each key the group's preconditions need, one slot
    /// per op of the group in order (`None` where the op needs no read), read
    /// from the store with one multi-get per namespace touched. Blind puts
    /// need nothing, so a group of them reads nothing.
    fn read_current_versions(
        &self,
        group: &[WriteRequest],
        handles: &[CfHandle<'_>],
        now: u64,
    ) -> Vec<Option<CurrentVersion>> {
        let ops = || group.iter().flat_map(|request| &request.ops);
        // Each key is read once, however many ops of the group need it.
        let mut first_slot: HashMap<&str, usize> = HashMap::new();
        let mut wanted: Vec<Vec<(usize, &str)>> = vec![Vec::new(); handles.len()];
        let mut slots: Vec<Option<usize>> = Vec::new();
        for (slot, op) in ops().enumerate() {
            if op.is_blind_put() {
                slots.push(None);
                continue;
            }
            let first = *first_slot.entry(op.key.as_str()).or_insert_with(|| {
                wanted[op.namespace].push((slot, op.key.as_str()));
                slot
            });
            slots.push(Some(first));
        }
        let mut read: Vec<Option<CurrentVersion>> = (0..slots.len()).map(|_| None).collect();
        for (namespace, keys) in wanted.iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let results = self.db.batched_multi_get_cf(
                handles[namespace],
                keys.iter().map(|(_, key)| *key),
                false,
            );
            for ((slot, key), result) in keys.iter().zip(results) {
                read[*slot] = Some(match result {
                    Err(error) => Err(storage_error(error)),
                    Ok(None) => Ok(None),
                    Ok(Some(bytes)) => live_version_of(key, &bytes, now).inspect_err(|_| {
                        self.corrupt_records.found.fetch_add(1, Ordering::Relaxed);
                    }),
                });
            }
        }
        slots
            .iter()
            .map(|first| {
                first.and_then(|first| match &read[first] {
                    Some(Ok(version)) => Some(Ok(*version)),
                    Some(Err(error)) => Some(Err(error.duplicate())),
                    None => None,
                })
            })
            .collect()
    }

    /// Commits a group of requests in one `WriteBatch` (one WAL write, one
    /// fsync with `sync_writes`). Each request stays all-or-nothing: one whose
    /// precondition fails is answered with the failure and left out, and the
    /// rest are checked against the state the earlier ones leave. An empty
    /// group only persists the clock's high-water mark if it moved.
    ///
    /// Returns an error only when the store can no longer be written.
    fn commit_group(
        &self,
        mut group: Vec<WriteRequest>,
        state: &mut WriterState,
    ) -> Result<(), String> {
        let prepared = (0..self.namespaces.len())
            .map(|id| self.handle(id))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|handles| Ok((handles, self.values_handle()?, self.meta_handle()?)));
        let (handles, values, meta) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                for request in &mut group {
                    request.answer(Err(error.duplicate()));
                }
                return Err(format!("column families unavailable: {error}"));
            }
        };

        let now = self.clock.now_millis();
        // Only an op that is not a blind put looks at what earlier ops of the
        // group left; a group of blind puts (the common case) keeps no map.
        let track_pending = group
            .iter()
            .flat_map(|request| &request.ops)
            .any(|op| !op.is_blind_put());
        let current = self.read_current_versions(&group, &handles, now);
        let mut current_slots = current.into_iter();
        let mut next_version = state.last_version;
        let mut group_pending: HashMap<String, Option<u64>> = HashMap::new();
        let mut accepted: Vec<Accepted> = Vec::with_capacity(group.len());
        let mut batch_bytes = 0;
        let mut events = 0;
        let mut corrupt_removed = 0;
        for mut request in group {
            if request.ops.is_empty() {
                continue;
            }
            let request_current: Vec<Option<CurrentVersion>> =
                current_slots.by_ref().take(request.ops.len()).collect();
            match stage(
                &mut request.ops,
                &request_current,
                &group_pending,
                now,
                next_version,
                track_pending,
            ) {
                Ok(staged) => {
                    next_version = staged.last_version;
                    corrupt_removed += staged.corrupt_removed;
                    group_pending.extend(staged.pending);
                    // Room for the keys of values-column-family deletes, and framing.
                    batch_bytes += request.bytes
                        + request
                            .ops
                            .iter()
                            .map(|op| op.key.len() + 32)
                            .sum::<usize>();
                    events += request.ops.len();
                    accepted.push(Accepted {
                        request,
                        outcomes: staged.outcomes,
                    });
                }
                Err(error) => request.answer(Err(error)),
            }
        }
        let advance_clock = now > state.persisted_clock;
        if accepted.is_empty() && !advance_clock {
            return Ok(());
        }

        // Sized up front, so the batch never grows by copying what it holds.
        let mut batch = WriteBatch::with_capacity_bytes(batch_bytes + 256);
        for entry in &accepted {
            for op in &entry.request.ops {
                let cf = handles[op.namespace];
                let key = op.key.as_bytes();
                match &op.record {
                    Some(record) => Inner::batch_put(&mut batch, cf, values, key, record),
                    None => Inner::batch_delete(&mut batch, cf, values, key),
                }
            }
        }
        if next_version != state.last_version {
            batch.put_cf(meta, VERSION_COUNTER_KEY, next_version.to_le_bytes());
        }
        let next_sequence = self.feed.next_sequence() + events as u64;
        if events > 0 {
            batch.put_cf(meta, CHANGE_SEQUENCE_KEY, next_sequence.to_le_bytes());
        }
        if advance_clock {
            batch.put_cf(meta, CLOCK_MARK_KEY, now.to_le_bytes());
        }

        match self.db.write_opt(batch, &self.write_options) {
            Ok(()) => {
                state.last_version = next_version;
                state.persisted_clock = state.persisted_clock.max(now);
                self.groups_committed.fetch_add(1, Ordering::Relaxed);
                if corrupt_removed > 0 {
                    self.corrupt_records
                        .removed
                        .fetch_add(corrupt_removed, Ordering::Relaxed);
                }
                // Published before anyone is answered, so every commit is
                // published whatever happened to its caller.
                self.feed.publish(
                    events,
                    || change_key_bytes(&accepted),
                    |first| change_events(&accepted, first),
                );
                for mut entry in accepted {
                    entry.request.answer(Ok(entry.outcomes));
                }
                Ok(())
            }
            Err(error) => {
                let error = storage_error(error);
                for mut entry in accepted {
                    entry.request.answer(Err(error.duplicate()));
                }
                if error.is_retryable() {
                    Ok(())
                } else {
                    Err(format!("a write to the store failed: {error}"))
                }
            }
        }
    }
}

impl Inner {
    /// Empties one namespace in one `WriteBatch`: a range deletion over its
    /// column family, and over the out-of-line values of its key ranges
    /// (nested namespaces' ranges left out), with one change event. Alone in
    /// its commit, so the preconditions of every later write see the
    /// namespace empty.
    fn commit_clear(
        &self,
        mut request: WriteRequest,
        state: &mut WriterState,
    ) -> Result<(), String> {
        let Some(namespace) = request.clear else {
            return Ok(());
        };
        let handles = self
            .handle(namespace)
            .and_then(|cf| Ok((cf, self.values_handle()?, self.meta_handle()?)));
        let (cf, values, meta) = match handles {
            Ok(handles) => handles,
            Err(error) => {
                request.answer(Err(error.duplicate()));
                return Err(format!("column families unavailable: {error}"));
            }
        };
        let now = self.clock.now_millis();
        let prefix = self.namespaces.prefix(namespace).to_string();
        let mut batch = WriteBatch::default();
        for (start, end) in super::namespace_ranges(&self.namespaces, namespace) {
            batch.delete_range_cf(cf, &start, &end);
            batch.delete_range_cf(values, &start, &end);
        }
        let next_sequence = self.feed.next_sequence() + 1;
        batch.put_cf(meta, CHANGE_SEQUENCE_KEY, next_sequence.to_le_bytes());
        let advance_clock = now > state.persisted_clock;
        if advance_clock {
            batch.put_cf(meta, CLOCK_MARK_KEY, now.to_le_bytes());
        }
        match self.db.write_opt(batch, &self.write_options) {
            Ok(()) => {
                state.persisted_clock = state.persisted_clock.max(now);
                self.groups_committed.fetch_add(1, Ordering::Relaxed);
                self.feed.publish(
                    1,
                    || prefix.len(),
                    |first| {
                        vec![ChangeEvent {
                            sequence: first,
                            key: Arc::from(prefix.as_str()),
                            change: Change::NamespaceCleared,
                        }]
                    },
                );
                request.answer(Ok(Vec::new()));
                Ok(())
            }
            Err(error) => {
                let error = storage_error(error);
                request.answer(Err(error.duplicate()));
                if error.is_retryable() {
                    Ok(())
                } else {
                    Err(format!("a write to the store failed: {error}"))
                }
            }
        }
    }
}

/// One request's preconditions checked and versions assigned.
struct Staged {
    /// The live version each touched key is left with.
    pending: HashMap<String, Option<u64>>,
    outcomes: Vec<WriteOutcome>,
    /// The last version the request assigned.
    last_version: u64,
    /// Undecodable records its unconditional deletes remove.
    corrupt_removed: u64,
}

/// The version an undecodable record is taken to have: none, since versions
/// start at 1. Only an unconditional delete ever sees it.
const CORRUPT_RECORD_VERSION: u64 = 0;

/// Checks one request's preconditions against the store (`current`) plus what
/// earlier requests of the group wrote, and patches the versions into its
/// records.
fn stage(
    ops: &mut [PreparedOp],
    current: &[Option<CurrentVersion>],
    group_pending: &HashMap<String, Option<u64>>,
    now: u64,
    mut version: u64,
    track_pending: bool,
) -> Result<Staged, EngineError> {
    let mut pending: HashMap<String, Option<u64>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut corrupt_removed = 0;
    for (index, op) in ops.iter_mut().enumerate() {
        let key = op.key.as_str();
        let blind_put = op.is_blind_put();
        let live = match pending.get(key).or_else(|| group_pending.get(key)) {
            Some(version) => *version,
            None if blind_put => None,
            None => match current.get(index) {
                Some(Some(Ok(version))) => *version,
                // An unconditional delete needs no version, so an undecodable
                // record does not stop it: deleting is how it is cleared.
                Some(Some(Err(EngineError::Corrupt { .. })))
                    if op.record.is_none() && op.precondition == Precondition::None =>
                {
                    corrupt_removed += 1;
                    Some(CORRUPT_RECORD_VERSION)
                }
                Some(Some(Err(error))) => return Err(error.duplicate()),
                _ => {
                    return Err(EngineError::Storage(
                        "the writer did not read a key it needs".into(),
                    ))
                }
            },
        };
        if !op.precondition.holds(live) {
            return Err(EngineError::PreconditionFailed {
                index,
                key: key.to_string(),
                precondition: op.precondition,
                current_version: live,
            });
        }
        match &mut op.record {
            Some(record) => {
                version += 1;
                record.set_version(version);
                if track_pending {
                    let alive = op.expire_at_millis.is_none_or(|at| at > now);
                    pending.insert(key.to_string(), alive.then_some(version));
                }
                outcomes.push(WriteOutcome::Put { version });
            }
            None => {
                if track_pending {
                    pending.insert(key.to_string(), None);
                }
                outcomes.push(WriteOutcome::Delete {
                    existed: live.is_some(),
                });
            }
        }
    }
    Ok(Staged {
        pending,
        outcomes,
        last_version: version,
        corrupt_removed,
    })
}

/// The live version in an encoded record, `None` if it has expired.
fn live_version_of(key: &str, bytes: &[u8], now: u64) -> Result<Option<u64>, EngineError> {
    if record::peek_expire_at_millis(bytes).is_some_and(|at| at <= now) {
        return Ok(None);
    }
    record::peek_version(bytes)
        .map(Some)
        .ok_or_else(|| EngineError::Corrupt {
            key: key.to_string(),
            reason: "unreadable record header".into(),
        })
}

/// The change events of a committed group, numbered from `first`.
/// The length of the keys of a commit's change events together.
fn change_key_bytes(accepted: &[Accepted]) -> usize {
    accepted
        .iter()
        .flat_map(|entry| entry.request.ops.iter().take(entry.outcomes.len()))
        .map(|op| op.key.len())
        .sum()
}

fn change_events(accepted: &[Accepted], first: u64) -> Vec<ChangeEvent> {
    let ops = accepted
        .iter()
        .flat_map(|entry| entry.request.ops.iter().zip(&entry.outcomes));
    ops.zip(first..)
        .map(|((op, outcome), sequence)| ChangeEvent {
            sequence,
            key: Arc::from(op.key.as_str()),
            change: match outcome {
                WriteOutcome::Put { version } => Change::Put {
                    version: *version,
                    expire_at_millis: op.expire_at_millis,
                },
                WriteOutcome::Delete { .. } => Change::Delete,
            },
        })
        .collect()
}
