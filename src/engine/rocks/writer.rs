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
//! to the change feed, then answers the callers (`commit`).
//!
//! This file holds the queue, its byte budget, the thread and its clock
//! ticker; `commit` holds what the thread does with a group.
//!
//! If the writer thread panics, or a write fails in a way that retrying will
//! not fix, the thread stops and the engine reports the failure
//! ([`crate::engine::LocalStorage::failed`]): the server turns NOT_SERVING and
//! exits, so an orchestrator restarts it, instead of answering UNAVAILABLE
//! forever.

mod commit;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

#[cfg(feature = "test-hooks")]
use super::hooks::{HookState, WriterHooks, WriterPause};
use super::Inner;
use crate::engine::namespace::NamespaceId;
use crate::engine::record::{self, RecordParts, StoredRecord};
use crate::engine::{EngineError, Precondition, PutPayload, WriteOp, WriteReceipt};

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
/// The history is trimmed to its retention every this many clock ticks.
const HISTORY_TRIM_TICKS: u32 = 5;

/// One mutation, ready for the writer.
struct PreparedOp {
    key: String,
    namespace: NamespaceId,
    precondition: Precondition,
    /// The encoded record with version 0, patched by the writer; `None` deletes.
    record: Option<StoredRecord>,
    expire_at_millis: Option<u64>,
    schema_version: u32,
    /// A put's value and metadata as written, for live change events: the
    /// put's own buffers, moved here after the record was encoded from them
    /// (no copy), freed once every subscriber has the event.
    payload: Option<Arc<PutPayload>>,
}

impl PreparedOp {
    /// A put without a precondition: it needs no current version.
    fn is_blind_put(&self) -> bool {
        self.record.is_some() && self.precondition == Precondition::None
    }

    /// What the op holds while queued: its key, its encoded record and the
    /// payload kept for the change feed.
    fn bytes(&self) -> usize {
        self.key.len()
            + self.record.as_ref().map_or(0, StoredRecord::len)
            + self.payload.as_ref().map_or(0, |payload| payload.bytes())
    }
}

type Reply = oneshot::Sender<Result<WriteReceipt, EngineError>>;

/// A batch waiting for the writer thread. One without ops is a tick: it only
/// wakes the writer so it persists the clock's high-water mark.
struct WriteRequest {
    ops: Vec<PreparedOp>,
    /// Set for a request that has no ops and commits alone.
    solo: Option<Solo>,
    reply: Option<Reply>,
    bytes: usize,
    /// The request's share of the queue's byte budget, returned as it is answered.
    budget: Option<OwnedSemaphorePermit>,
}

/// What a request that commits alone, outside every group, does.
#[derive(Debug, Clone, Copy)]
pub(super) enum Solo {
    /// Empties a whole namespace (see [`Inner::commit_clear`]).
    Clear(NamespaceId),
    /// Marks a clean stop (see [`Inner::commit_seal`]).
    Seal,
}

impl WriteRequest {
    fn tick() -> Self {
        Self {
            ops: Vec::new(),
            solo: None,
            reply: None,
            bytes: 0,
            budget: None,
        }
    }

    fn answer(&mut self, result: Result<WriteReceipt, EngineError>) {
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
    /// The sequence of the last change event published.
    pub(super) last_sequence: u64,
    /// The clock's high-water mark last written to the store.
    pub(super) persisted_clock: u64,
    /// The durable sequence ceiling: no sequence above it is used before it
    /// is raised (see `history`).
    pub(super) ceiling: u64,
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
    #[cfg(feature = "test-hooks")]
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
        #[cfg(feature = "test-hooks")]
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
        let trimmed = Arc::clone(&inner);
        let mut tick: u32 = 0;
        let ticker = std::thread::Builder::new()
            .name("tierkv-clock".into())
            .spawn(move || loop {
                std::thread::park_timeout(CLOCK_MARK_INTERVAL);
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                // History retention, off the writer's thread: one small
                // range deletion now and then, which writers do not wait on.
                tick = tick.wrapping_add(1);
                if tick % HISTORY_TRIM_TICKS == 0 {
                    if let Err(error) = trimmed.trim_history() {
                        tracing::warn!(error = %error.log_summary(), "trimming the change history failed");
                    }
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
            #[cfg(feature = "test-hooks")]
            hooks: Arc::clone(&inner.hooks),
        })
    }

    /// Encodes `ops`, waits for room in the queue's byte budget, queues them
    /// and waits for the writer's answer.
    pub(super) async fn submit(
        &self,
        inner: &Arc<Inner>,
        ops: Vec<WriteOp>,
    ) -> Result<WriteReceipt, EngineError> {
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
                solo: None,
                reply: Some(reply),
                bytes,
                budget: Some(budget),
            })
            .await
            .map_err(|_| self.closed(inner))?;
        response.await.map_err(|_| self.closed(inner))?
    }

    /// Queues a request that commits alone (a namespace's emptying, or the
    /// mark of a clean stop) and waits for its commit.
    pub(super) async fn submit_solo(
        &self,
        inner: &Arc<Inner>,
        solo: Solo,
    ) -> Result<(), EngineError> {
        let sender = self.sender.as_ref().ok_or_else(|| self.closed(inner))?;
        let (reply, response) = oneshot::channel();
        sender
            .send(WriteRequest {
                ops: Vec::new(),
                solo: Some(solo),
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
    #[cfg(feature = "test-hooks")]
    pub(super) fn pause(&self) -> WriterPause {
        self.hooks.set(HookState::Pause);
        WriterPause {
            hooks: Arc::clone(&self.hooks),
        }
    }

    /// Makes the writer thread panic before its next group, and wakes it.
    #[cfg(feature = "test-hooks")]
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
/// the put's own buffer becomes the change event's payload.
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
                    schema_version: put.schema_version,
                    payload: Some(Arc::new(PutPayload {
                        kind: put.kind,
                        value: put.value,
                        metadata: put.metadata,
                    })),
                }
            }
            WriteOp::Delete(delete) => PreparedOp {
                namespace: inner.namespaces.route(&delete.key),
                key: delete.key,
                precondition: delete.precondition,
                record: None,
                expire_at_millis: None,
                schema_version: 0,
                payload: None,
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
    // A namespace clear (or a seal) taken while gathering a group waits for
    // the next turn: it commits alone, after the group queued before it.
    let mut held: Option<WriteRequest> = None;
    while let Some(first) = held.take().or_else(|| next_request(&mut requests)) {
        #[cfg(feature = "test-hooks")]
        inner.hooks.checkpoint();
        match first.solo {
            Some(Solo::Clear(namespace)) => {
                inner.commit_clear(first, namespace, &mut state)?;
                continue;
            }
            Some(Solo::Seal) => {
                inner.commit_seal(first, &mut state)?;
                continue;
            }
            None => {}
        }
        let mut group_bytes = first.bytes;
        let mut group = vec![first];
        while group.len() < MAX_GROUP_REQUESTS && group_bytes < MAX_GROUP_BYTES {
            match requests.try_recv() {
                Ok(request) if request.solo.is_some() => {
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
    // Closing: the last word on the clock, then the ceiling lowered to the
    // last sequence used, which marks the stop as clean.
    inner.commit_group(Vec::new(), &mut state)?;
    inner
        .close_ceiling(&mut state)
        .map_err(|error| format!("cannot record a clean stop: {error}"))
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
