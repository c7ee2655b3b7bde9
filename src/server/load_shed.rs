//! A global bound on calls in flight, with load shedding.
//!
//! A limit per connection is not enough behind a sidecar that multiplexes
//! every client onto a few connections, and queueing without bound turns a
//! burst into latency for everyone. Over the limit, a call is refused at once
//! with RESOURCE_EXHAUSTED (and a retry hint), so it costs almost nothing and
//! the calls admitted keep their latency. Health checks (`Health/Check`) are
//! never shed: probes must see the truth even under overload.
//!
//! Health `Watch`, reflection and `KvService.Watch` streams may stay open
//! for as long as the client likes (the first two need no token). They count against the limit like any call
//! (until their first message, like any stream), and while open against
//! their connection's `max_watch_streams_per_connection`, so their number is
//! bounded by the connection limit rather than by nothing.
//!
//! A call counts from the moment it is read off its connection: the server's
//! HTTP/2 loop calls [`CallLimit::admit_on`] as it accepts the stream and puts
//! the [`Admission`] in the request's extensions, where [`LoadShed`] finds it
//! (see `super::http2` for why counting later misses the queue). A request
//! that arrives without one (the layer used in another server) is admitted
//! when the layer sees it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::api::status::ERROR_DOMAIN;

/// What the server decided when it read a call's headers off its
/// connection, in the request's extensions: one entry (one allocation) for
/// both. Latency metrics and deadlines count from `at`, so the time a call
/// waited for its turn in the server is part of both; the load-shedding
/// layer takes `admission`.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// When the headers were read.
    pub at: Instant,
    /// Whether the call was admitted; `None` once the shedding layer took it.
    pub admission: Option<Admission>,
}

impl Accepted {
    /// The accept time of `request`, or now for a request that did not come
    /// through [`serve`](super::http2::serve).
    pub fn time_of<B>(request: &Request<B>) -> Instant {
        request
            .extensions()
            .get::<Accepted>()
            .map_or_else(Instant::now, |accepted| accepted.at)
    }
}

/// The retry delay suggested to a shed call.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// Calls admitted now, the limit, and calls shed so far.
#[derive(Debug)]
pub struct CallLimit {
    limit: usize,
    admitted: AtomicUsize,
    shed: AtomicU64,
    /// The headers of the refusal, encoded once: a shed call must cost
    /// almost nothing, and its status, message and details never change.
    overloaded: HeaderMap,
    /// Most health Watch and reflection streams open on one connection.
    watch_limit: usize,
    watch_open: AtomicUsize,
    watch_refused: AtomicU64,
    /// The refusal of a Watch or reflection stream over `watch_limit`.
    too_many_watches: HeaderMap,
}

/// `KvService.Watch`: a long stream that holds a place on its connection
/// like health Watch, and leaves `max_calls_in_flight` once its handler has
/// answered (it may wait long for its first event).
const KV_WATCH_PATH: &str = "/tierkv.v1.KvService/Watch";

/// How a call is admitted, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// A health check: never counted, never shed.
    Probe,
    /// A health Watch or reflection stream: open to everyone, long-lived.
    Watch,
    /// Everything else.
    Call,
}

fn call_kind(path: &str) -> CallKind {
    if path == "/grpc.health.v1.Health/Watch"
        || path == KV_WATCH_PATH
        || path.starts_with("/grpc.reflection.")
    {
        CallKind::Watch
    } else if path.starts_with("/grpc.health.") {
        CallKind::Probe
    } else {
        CallKind::Call
    }
}

/// The health Watch and reflection streams open on one connection.
#[derive(Debug, Default)]
pub struct ConnectionWatches {
    open: AtomicUsize,
}

impl CallLimit {
    /// A bound of `limit` calls in flight (0 means no bound), and of
    /// `watches_per_connection` health Watch and reflection streams open on
    /// one connection.
    pub fn new(limit: usize, watches_per_connection: usize) -> Arc<Self> {
        let headers = |status: Status| status.into_http::<()>().into_parts().0.headers;
        Arc::new(Self {
            limit,
            admitted: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            overloaded: headers(overloaded_status(limit)),
            watch_limit: watches_per_connection,
            watch_open: AtomicUsize::new(0),
            watch_refused: AtomicU64::new(0),
            too_many_watches: headers(too_many_watches_status(watches_per_connection)),
        })
    }

    /// Health Watch and reflection streams open now, on every connection.
    pub fn watch_streams_open(&self) -> usize {
        self.watch_open.load(Ordering::Relaxed)
    }

    /// Health Watch and reflection streams refused since start because
    /// their connection had `max_watch_streams_per_connection` open.
    pub fn watch_streams_refused(&self) -> u64 {
        self.watch_refused.load(Ordering::Relaxed)
    }

    /// The configured bound (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Calls shed since start.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Decides a call to `path` that arrived outside a connection this
    /// server tracks: like [`CallLimit::admit_on`] with a connection of its own.
    pub fn admit(self: &Arc<Self>, path: &str) -> Admission {
        self.admit_on(path, &Arc::default())
    }

    /// Decides a call to `path` on `connection` now: exempt (a health
    /// check), admitted (counted until the returned ticket is dropped; a
    /// Watch or reflection stream also holds a place on `connection` until it
    /// ends), or refused.
    pub fn admit_on(
        self: &Arc<Self>,
        path: &str,
        connection: &Arc<ConnectionWatches>,
    ) -> Admission {
        let kind = call_kind(path);
        if kind == CallKind::Probe {
            return Admission::Exempt;
        }
        let watch = match kind {
            CallKind::Watch => match self.open_watch(connection) {
                Some(watch) => Some(Arc::new(watch)),
                None => return Admission::TooManyWatches,
            },
            _ => None,
        };
        // A refused call drops its Watch place here.
        match self.try_admit() {
            Some(admitted) => Admission::Admitted(Arc::new(admitted), watch),
            None => Admission::Refused,
        }
    }

    fn open_watch(self: &Arc<Self>, connection: &Arc<ConnectionWatches>) -> Option<WatchStream> {
        let open = connection.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.watch_limit {
            connection.open.fetch_sub(1, Ordering::AcqRel);
            self.watch_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.watch_open.fetch_add(1, Ordering::AcqRel);
        Some(WatchStream {
            limit: Arc::clone(self),
            connection: Arc::clone(connection),
        })
    }

    fn try_admit(self: &Arc<Self>) -> Option<Admitted> {
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel) + 1;
        if self.limit > 0 && admitted > self.limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(Arc::clone(self)))
    }
}

/// Answers a refused call with the encoded status in `headers`, once what
/// has arrived of its request body is read (see [`consume_unread`]).
fn refuse<ReqBody, ResBody>(
    headers: &HeaderMap,
    request: http::Request<ReqBody>,
) -> impl Future<Output = http::Response<ResBody>> + Send + 'static
where
    ReqBody: http_body::Body + Send + 'static,
    ResBody: Default + Send + 'static,
{
    let mut response = http::Response::new(ResBody::default());
    *response.headers_mut() = headers.clone();
    let body = request.into_body();
    async move {
        consume_unread(body).await;
        response
    }
}

/// What [`CallLimit::admit_on`] decided about a call; it rides in the
/// request's extensions to the [`LoadShed`] layer.
#[derive(Debug, Clone)]
pub enum Admission {
    /// A health check: never counted, never shed.
    Exempt,
    /// Counted in flight until the last clone of the ticket is dropped; a
    /// health Watch or reflection stream also holds its place on its
    /// connection until the stream ends.
    Admitted(Arc<Admitted>, Option<Arc<WatchStream>>),
    /// Over `max_calls_in_flight`: answered RESOURCE_EXHAUSTED.
    Refused,
    /// A Watch or reflection stream over its connection's
    /// `max_watch_streams_per_connection`: answered RESOURCE_EXHAUSTED.
    TooManyWatches,
}

impl Admission {
    /// Whether the call is refused (and answered at once).
    pub fn is_refused(&self) -> bool {
        matches!(self, Admission::Refused | Admission::TooManyWatches)
    }
}

/// One open health Watch or reflection stream; it leaves its connection's
/// count when dropped, with the stream's response body.
#[derive(Debug)]
pub struct WatchStream {
    limit: Arc<CallLimit>,
    connection: Arc<ConnectionWatches>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.connection.open.fetch_sub(1, Ordering::AcqRel);
        self.limit.watch_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted call; it leaves the count when its future is done or dropped.
#[derive(Debug)]
pub struct Admitted(Arc<CallLimit>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sheds calls over a [`CallLimit`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    limit: Arc<CallLimit>,
}

impl LoadShedLayer {
    /// A layer enforcing `limit`.
    pub fn new(limit: Arc<CallLimit>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            limit: Arc::clone(&self.limit),
        }
    }
}

/// The service [`LoadShedLayer`] produces.
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    limit: Arc<CallLimit>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LoadShed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<AdmittedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let admission = match request
            .extensions_mut()
            .get_mut::<Accepted>()
            .and_then(|accepted| accepted.admission.take())
        {
            Some(admission) => admission,
            None => self.limit.admit(request.uri().path()),
        };
        let (ticket, watch) = match admission {
            Admission::Exempt => {
                let response = self.inner.call(request);
                return Box::pin(async move {
                    Ok(response.await?.map(|inner| AdmittedBody {
                        inner,
                        ticket: None,
                        _watch: None,
                    }))
                });
            }
            Admission::Admitted(ticket, watch) => (ticket, watch),
            Admission::Refused | Admission::TooManyWatches => {
                let refusal = refuse(
                    match admission {
                        Admission::Refused => &self.limit.overloaded,
                        _ => &self.limit.too_many_watches,
                    },
                    request,
                );
                return Box::pin(async move { Ok(refusal.await) });
            }
        };
        // A KvService.Watch stream may wait long for its first event (no
        // heartbeats asked for): its work is done when the handler answers.
        let release_at_headers = request.uri().path() == KV_WATCH_PATH;
        let response = self.inner.call(request);
        Box::pin(async move {
            // An error or a dropped future drops the ticket here; a response
            // carries it until its body has been sent.
            let response = response.await?;
            Ok(response.map(|inner| AdmittedBody {
                inner,
                ticket: (!release_at_headers).then_some(ticket),
                _watch: watch,
            }))
        })
    }
}

/// A response body that keeps its call counted in flight until its first
/// message has been produced. A unary response is encoded as the server polls
/// its body, after the handler has returned: that work belongs to the call,
/// and counting it keeps `max_calls_in_flight` a bound on the work in progress
/// (measured: with a limit of 1, releasing at the handler's return let the
/// next call's handler run while 100 KB responses were still being encoded).
/// A stream (migration progress) is released at its first message, so a long
/// stream that mostly waits does not hold a slot for its whole life.
#[derive(Debug, Default)]
pub struct AdmittedBody<B> {
    inner: B,
    ticket: Option<Arc<Admitted>>,
    /// A Watch or reflection stream's place on its connection, held until
    /// the body is dropped (the stream ended or was reset).
    _watch: Option<Arc<WatchStream>>,
}

impl<B: http_body::Body + Unpin> http_body::Body for AdmittedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            // A message, the end, or an error: the call's own work is done.
            if frame.as_ref().is_none_or(|frame| match frame {
                Ok(frame) => frame.is_data(),
                Err(_) => true,
            }) {
                this.ticket = None;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Most request bytes read and dropped after a call is shed, so the stream
/// ends cleanly; a larger upload is reset instead.
const SHED_BODY_DRAIN_BYTES: usize = 64 * 1024;
/// How long a shed call's remaining request body is waited for.
const SHED_BODY_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads and drops what is left of a shed call's request body.
///
/// Answering without it would drop the body unread, and HTTP/2 then resets
/// the stream. The client's DATA frames already on their way arrive for a
/// stream the server has forgotten (it remembers 50 resets for a second), and
/// each counts as a protocol error, until the connection is closed with
/// GOAWAY after `max_local_error_reset_streams` of them: under a burst, the
/// refusals would take down the admitted calls sharing the connection
/// (measured: 113k calls failed on 4 connections in 3 s). The rest of a
/// small body has almost always arrived with its headers, so this usually
/// finishes at once; what has not is drained by a task of its own, so the
/// refusal is not held up.
pub(super) async fn consume_unread<B>(body: B)
where
    B: http_body::Body + Send + 'static,
{
    use http_body_util::BodyExt;

    let mut body = Box::pin(body);
    let mut read = 0usize;
    // What is here already, without waiting.
    let waiting = std::future::poll_fn(|cx| loop {
        if body.is_end_stream() {
            return Poll::Ready(false);
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Ready(true),
            Poll::Ready(None | Some(Err(_))) => return Poll::Ready(false),
            Poll::Ready(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                if read > SHED_BODY_DRAIN_BYTES {
                    return Poll::Ready(false);
                }
            }
        }
    })
    .await;
    if waiting {
        tokio::spawn(async move {
            let drain = async {
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                    if read > SHED_BODY_DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(SHED_BODY_DRAIN_TIME, drain).await;
        });
    }
}

fn too_many_watches_status(limit: usize) -> Status {
    let mut details = ErrorDetails::new();
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(
        "max_watch_streams_per_connection".to_string(),
        limit.to_string(),
    );
    details.set_error_info("TOO_MANY_WATCH_STREAMS", ERROR_DOMAIN, metadata);
    // No RetryInfo: only this client can free a place, by ending one of its streams.
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "{limit} Watch and reflection streams are open on this connection \
             (max_watch_streams_per_connection); end one, or use another connection"
        ),
        details,
    )
}

fn overloaded_status(limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RETRY_DELAY));
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("max_calls_in_flight".to_string(), limit.to_string());
    details.set_error_info("OVERLOADED", ERROR_DOMAIN, metadata);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "server overloaded: {limit} calls are in flight (max_calls_in_flight); retry after {} ms",
            RETRY_DELAY.as_millis()
        ),
        details,
    )
}
