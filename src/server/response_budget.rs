//! A server-wide budget for the bytes of replies produced but not yet sent,
//! and a deadline for sending each of them.
//!
//! A reply leaves the call's own accounting (`max_calls_in_flight`, the
//! request memory budget) once its message is encoded; from then on it waits
//! for the client's HTTP/2 flow-control window. A client that advertises a
//! tiny window and never reads keeps it in memory for as long as it likes
//! (measured: 20 connections each holding a 96 MiB `BatchGet` reply took the
//! server from 124 MiB to 2.3 GiB and kept it there). This layer counts every
//! encoded reply message against a [`ResponseBudget`] from the moment it is
//! produced until HTTP/2 has written its last byte to the connection:
//! - a call arriving while the budget is spent is refused at once with
//!   RESOURCE_EXHAUSTED and a retry delay, before its reply is built;
//! - a reply that does not fit in what is left of the budget when it is
//!   produced is dropped at once and the call answered RESOURCE_EXHAUSTED
//!   (its headers are out already, so the status travels in the trailers);
//! - a reply message not written within the send timeout is dropped and its
//!   stream reset (RST_STREAM CANCEL), which releases its bytes; messages of
//!   at most [`SMALL_REPLY_BYTES`] are counted until written but not timed
//!   out (see there why).
//!
//! How the bytes are followed: the message is handed to hyper in chunks of
//! [`CHUNK_BYTES`], at most [`MAX_CHUNKS_OUT`] at a time, each a [`Chunk`]
//! that releases its bytes from the budget when HTTP/2 drops it, that is once
//! it is written. While chunks are out, hyper waits for the next one in
//! [`ChargedBody::poll_frame`], where the send deadline is checked; an error
//! returned there makes hyper reset the stream and drop everything queued for
//! it. hyper asks for the next chunk only while the stream has send window,
//! though: a chunk it already holds while the window is exhausted waits
//! outside this body. For that case a reply larger than the chunks out at once
//! gets a watchdog task that drops the unsent rest at the deadline; the chunks
//! hyper holds (at most [`MAX_CHUNKS_OUT`] × [`CHUNK_BYTES`] per stream) stay
//! counted until the client reads, resets the stream or closes the connection.
//!
//! Health checks and reflection are never refused (probes must see the
//! truth); their replies are counted all the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::api::status::ERROR_DOMAIN;

/// Most bytes of a reply handed to hyper as one piece: a memory bound per
/// stream on what may wait outside this body's control (see the module
/// documentation), and large enough that handing pieces over one at a time
/// costs little next to writing them.
pub const CHUNK_BYTES: usize = 128 * 1024;
/// Chunks of one reply handed to hyper and not yet written, at most. One:
/// hyper takes a second chunk while the first still waits for window, and
/// then holds it where no deadline reaches (it stops asking for frames until
/// the window opens), so a client that never reads could not be reset.
pub const MAX_CHUNKS_OUT: usize = 1;
/// Reply messages up to this size are counted until written like any other,
/// but their trailers follow at once instead of after the write, and no send
/// timeout applies to them. Waiting would cost every small call a second
/// round of writes (data, then trailers) for memory that does not matter:
/// one HTTP/2 frame per stream.
pub const SMALL_REPLY_BYTES: usize = 16 * 1024;
/// The retry delay suggested to a refused call: replies held by slow clients
/// are written or dropped on the scale of the send timeout, but most leave
/// within milliseconds.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// A point-in-time copy of the budget's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseBudgetCounts {
    /// The budget, in bytes.
    pub capacity: usize,
    /// Bytes of replies produced and not yet written now.
    pub unsent: usize,
    /// Most such bytes at once so far.
    pub peak_unsent: usize,
    /// Calls answered RESOURCE_EXHAUSTED because the budget was spent.
    pub refused: u64,
    /// Replies dropped, their streams reset, because they were not written
    /// within the send timeout.
    pub send_timeouts: u64,
}

/// The bytes of reply messages produced and not yet written, across all
/// connections, and how long one may wait.
#[derive(Debug)]
pub struct ResponseBudget {
    capacity: usize,
    send_timeout: Duration,
    unsent: AtomicUsize,
    peak_unsent: AtomicUsize,
    refused: AtomicU64,
    send_timeouts: AtomicU64,
}

impl ResponseBudget {
    /// A budget of `capacity` bytes whose replies must be written within
    /// `send_timeout` of being produced.
    pub fn new(capacity: usize, send_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            send_timeout,
            unsent: AtomicUsize::new(0),
            peak_unsent: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            send_timeouts: AtomicU64::new(0),
        })
    }

    /// The counters now.
    pub fn counts(&self) -> ResponseBudgetCounts {
        ResponseBudgetCounts {
            capacity: self.capacity,
            unsent: self.unsent.load(Ordering::Acquire),
            peak_unsent: self.peak_unsent.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            send_timeouts: self.send_timeouts.load(Ordering::Relaxed),
        }
    }

    /// Whether nothing is left: new calls are refused before they run.
    fn spent(&self) -> bool {
        self.unsent.load(Ordering::Acquire) >= self.capacity
    }

    /// Counts `bytes` if they fit; `force` counts them even if not (probes).
    fn charge(&self, bytes: usize, force: bool) -> bool {
        let mut current = self.unsent.load(Ordering::Acquire);
        loop {
            let next = current.saturating_add(bytes);
            if next > self.capacity && !force {
                return false;
            }
            match self.unsent.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.peak_unsent.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.unsent.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// The RESOURCE_EXHAUSTED status of a refused call.
    fn refusal(&self, what: &str) -> Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut details = ErrorDetails::with_retry_info(Some(RETRY_DELAY));
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(
            "response_memory_bytes".to_string(),
            self.capacity.to_string(),
        );
        details.set_error_info("RESPONSE_MEMORY_FULL", ERROR_DOMAIN, metadata);
        Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "server busy: {what}; {} of the {} bytes for replies not yet sent to their clients are in use (response_memory_mb); retry after {} ms",
                self.unsent.load(Ordering::Acquire),
                self.capacity,
                RETRY_DELAY.as_millis()
            ),
            details,
        )
    }
}

/// Applies a [`ResponseBudget`] to every call.
#[derive(Debug, Clone)]
pub struct ResponseBudgetLayer {
    budget: Arc<ResponseBudget>,
}

impl ResponseBudgetLayer {
    /// A layer counting into `budget`.
    pub fn new(budget: Arc<ResponseBudget>) -> Self {
        Self { budget }
    }
}

impl<S> Layer<S> for ResponseBudgetLayer {
    type Service = ResponseBudgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseBudgeted {
            inner,
            budget: Arc::clone(&self.budget),
        }
    }
}

/// The service [`ResponseBudgetLayer`] produces.
#[derive(Debug, Clone)]
pub struct ResponseBudgeted<S> {
    inner: S,
    budget: Arc<ResponseBudget>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ResponseBudgeted<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ChargedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let exempt = super::probe_or_tooling(request.uri().path());
        if !exempt && self.budget.spent() {
            let status = self
                .budget
                .refusal("no room is left for the reply of a new call");
            tracing::debug!("call refused: response memory budget spent");
            let response = status.into_http::<ChargedBody<ResBody>>();
            let body = request.into_body();
            return Box::pin(async move {
                super::load_shed::consume_unread(body).await;
                Ok(response)
            });
        }
        let budget = Arc::clone(&self.budget);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| ChargedBody::new(inner, budget, exempt)))
        })
    }
}

/// What is left of one reply message, shared by the body, the chunks out and
/// the watchdog.
#[derive(Debug)]
struct Outgoing {
    budget: Arc<ResponseBudget>,
    /// The message's size.
    size: usize,
    deadline: Instant,
    state: Mutex<OutgoingState>,
}

#[derive(Debug, Default)]
struct OutgoingState {
    /// Not yet handed to hyper (counted in the budget).
    rest: Bytes,
    /// Chunks handed to hyper and not yet dropped.
    chunks_out: usize,
    /// The send deadline passed; the rest was dropped.
    expired: bool,
    /// The body's task, woken when a chunk is dropped or the deadline passes.
    waker: Option<Waker>,
    /// The watchdog of a large reply, stopped once the reply is done.
    watchdog: Option<tokio::task::AbortHandle>,
}

impl Outgoing {
    fn lock(&self) -> MutexGuard<'_, OutgoingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the unsent rest at the deadline and counts one timeout, unless
    /// that happened already or the reply was written meanwhile.
    fn expire(&self) {
        let mut state = self.lock();
        if state.expired || (state.rest.is_empty() && state.chunks_out == 0) {
            return;
        }
        state.expired = true;
        let rest = std::mem::take(&mut state.rest);
        let waker = state.waker.take();
        drop(state);
        self.budget.release(rest.len());
        self.budget.send_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            dropped = rest.len(),
            "reply not written within the send timeout; dropping it and resetting its stream"
        );
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.release(state.rest.len());
        if let Some(watchdog) = state.watchdog.take() {
            watchdog.abort();
        }
    }
}

/// A piece of a reply handed to hyper; its bytes leave the budget when HTTP/2
/// drops it, after writing its last byte or resetting the stream.
#[derive(Debug)]
pub struct Chunk {
    bytes: Bytes,
    /// `None` for a piece counted nowhere (an empty frame).
    outgoing: Option<Arc<Outgoing>>,
    charged: usize,
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, count: usize) {
        self.bytes.advance(count);
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let Some(outgoing) = self.outgoing.take() else {
            return;
        };
        outgoing.budget.release(self.charged);
        let mut state = outgoing.lock();
        state.chunks_out -= 1;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The error that makes hyper reset a stream whose reply was not written in
/// time: RST_STREAM with CANCEL, which gRPC clients report as CANCELLED.
fn send_timed_out() -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(h2::Error::from(h2::Reason::CANCEL))
}

/// A response body whose messages count against a [`ResponseBudget`] until
/// they are written, and are dropped with their stream reset when that takes
/// longer than the send timeout.
#[derive(Debug, Default)]
pub struct ChargedBody<B> {
    inner: B,
    /// `None` only for a default body, which counts nothing.
    budget: Option<Arc<ResponseBudget>>,
    exempt: bool,
    /// The message being handed out.
    outgoing: Option<Arc<Outgoing>>,
    /// The send deadline of `outgoing`, armed the first time the body waits.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The trailers of a refused reply, to send instead of it.
    refusal: Option<HeaderMap>,
    done: bool,
}

impl<B> ChargedBody<B> {
    fn new(inner: B, budget: Arc<ResponseBudget>, exempt: bool) -> Self {
        Self {
            inner,
            budget: Some(budget),
            exempt,
            outgoing: None,
            sleep: None,
            refusal: None,
            done: false,
        }
    }

    /// Starts handing out `message`, or prepares its refusal when it does not fit.
    fn produce(&mut self, budget: &Arc<ResponseBudget>, message: Bytes) {
        let size = message.len();
        if !budget.charge(size, self.exempt) {
            let status = budget.refusal(&format!("the reply is {size} bytes, more than is left"));
            tracing::debug!(size, "reply refused: response memory budget spent");
            let mut trailers = HeaderMap::new();
            // A status always converts; an empty map would read as OK.
            if status.add_header(&mut trailers).is_err() {
                trailers.insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            self.refusal = Some(trailers);
            return;
        }
        let deadline = Instant::now()
            .checked_add(budget.send_timeout)
            .unwrap_or_else(far_future);
        let outgoing = Arc::new(Outgoing {
            budget: Arc::clone(budget),
            size,
            deadline,
            state: Mutex::new(OutgoingState {
                rest: message,
                ..OutgoingState::default()
            }),
        });
        if size > CHUNK_BYTES * MAX_CHUNKS_OUT {
            // hyper may stop asking for chunks while it holds one (see the
            // module documentation): the rest is dropped without it.
            let watched: Weak<Outgoing> = Arc::downgrade(&outgoing);
            let watchdog = tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                if let Some(outgoing) = watched.upgrade() {
                    outgoing.expire();
                }
            });
            outgoing.lock().watchdog = Some(watchdog.abort_handle());
        }
        self.sleep = None;
        self.outgoing = Some(outgoing);
    }
}

/// A deadline no reply reaches (a send timeout too large to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl<B> Drop for ChargedBody<B> {
    fn drop(&mut self) {
        // The rest is freed now, not when the chunks hyper still holds are.
        if let Some(outgoing) = self.outgoing.take() {
            let rest = std::mem::take(&mut outgoing.lock().rest);
            outgoing.budget.release(rest.len());
        }
    }
}

impl<B> http_body::Body for ChargedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Chunk;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(trailers) = this.refusal.take() {
                this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if let Some(outgoing) = &this.outgoing {
                let mut state = outgoing.lock();
                if state.expired {
                    drop(state);
                    this.done = true;
                    return Poll::Ready(Some(Err(send_timed_out())));
                }
                if !state.rest.is_empty() && state.chunks_out < MAX_CHUNKS_OUT {
                    let take = state.rest.len().min(CHUNK_BYTES);
                    let bytes = state.rest.split_to(take);
                    state.chunks_out += 1;
                    drop(state);
                    return Poll::Ready(Some(Ok(Frame::data(Chunk {
                        bytes,
                        outgoing: Some(Arc::clone(outgoing)),
                        charged: take,
                    }))));
                }
                if state.rest.is_empty()
                    && (state.chunks_out == 0 || outgoing.size <= SMALL_REPLY_BYTES)
                {
                    // Written (or small): the next message, or the trailers.
                    drop(state);
                    this.outgoing = None;
                    this.sleep = None;
                    continue;
                }
                state.waker = Some(cx.waker().clone());
                drop(state);
                let deadline = outgoing.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    // Expired now, or written just in time: the loop tells.
                    outgoing.expire();
                    continue;
                }
                return Poll::Pending;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(Chunk {
                            bytes: data,
                            outgoing: None,
                            charged: 0,
                        }))));
                    }
                    Ok(data) => match this.budget.clone() {
                        Some(budget) => this.produce(&budget, data),
                        // A default body counts nothing.
                        None => {
                            return Poll::Ready(Some(Ok(Frame::data(Chunk {
                                bytes: data,
                                outgoing: None,
                                charged: 0,
                            }))));
                        }
                    },
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        // Another kind of frame: nothing hyper sends.
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            || (self.outgoing.is_none() && self.refusal.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.outgoing.is_none() && self.refusal.is_none() {
            self.inner.size_hint()
        } else {
            http_body::SizeHint::default()
        }
    }
}
