//! Serves gRPC over HTTP/2 from our own connection loop, so admission happens
//! when a call is read off its connection.
//!
//! tonic's `Server` hands hyper a service whose work (every tower layer
//! included) only starts inside the task hyper spawns for each stream. A
//! limit checked in a layer therefore counts only calls that have already
//! waited their turn in the runtime's queue. On a saturated core that queue
//! is where the burst piles up: measured on one core with 256 BatchGet
//! streams outstanding, about 2 were ever in the layers at once, and
//! `max_calls_in_flight = 2` shed 0.3% of them while every call waited 11 ms.
//! hyper calls [`AdmitOnAccept`] synchronously as it accepts a stream, in
//! the connection's task, so a call counts from the moment it is read; the
//! decision travels to the [`LoadShedLayer`](super::load_shed::LoadShedLayer)
//! in the request's extensions, which answers it inside the usual stack
//! (metrics and in-flight tracking see shed calls as before).
//!
//! The rest is what tonic's server did for us: HTTP/2 settings, one task per
//! connection, graceful shutdown (stop accepting, GOAWAY, wait for every
//! connection to finish), and a maximum connection age.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tower::util::Oneshot;
use tracing::Instrument;

use super::coalesce::CoalescingIo;
use super::load_shed::{Accepted, CallLimit, ConnectionWatches};

/// HTTP/2 settings of every connection.
#[derive(Debug, Clone)]
pub struct Http2Settings {
    /// Interval between keepalive pings; `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection closes.
    pub keepalive_timeout: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub max_concurrent_streams: u32,
    /// Streams reset by the client before we accept them, at most, before
    /// GOAWAY (rapid-reset protection).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of the client's errors, at most, before
    /// GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// Largest header list accepted, in bytes.
    pub max_header_list_size: u32,
    /// Close a connection gracefully (GOAWAY) after this long; `None`: never.
    pub max_connection_age: Option<Duration>,
    /// After the GOAWAY of an aged connection, calls get this long to finish
    /// before the connection is closed.
    pub max_connection_age_grace: Duration,
}

/// Makes the tracing span a call runs in, from its headers.
pub type SpanMaker = fn(&Request<()>) -> tracing::Span;

/// The hyper service of one connection: admits or refuses each call as
/// hyper accepts its stream, then runs the tower stack in the stream's task.
#[derive(Clone)]
struct AdmitOnAccept<S> {
    stack: S,
    limit: Arc<CallLimit>,
    span: SpanMaker,
    /// This connection's open health Watch and reflection streams.
    watches: Arc<ConnectionWatches>,
}

/// The tower stack a call runs through: cloned per call, never failing (an
/// error is a gRPC status in the response).
pub trait CallStack<B>:
    tower::Service<
        Request<Body>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T, B> CallStack<B> for T where
    T: tower::Service<
            Request<Body>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body hyper can send. Its data is any buffer, so a body can
/// learn when HTTP/2 has written a piece (it drops the buffer then).
pub trait ResponseBody:
    http_body::Body<
        Data: bytes::Buf + Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Send
    + 'static
{
}

impl<T> ResponseBody for T where
    T: http_body::Body<
            Data: bytes::Buf + Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Send
        + 'static
{
}

type CallFuture<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for AdmitOnAccept<S>
where
    // Spelled out: `B` must be fixed by `S`'s response type.
    S: tower::Service<Request<Body>, Response = Response<B>> + CallStack<B>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = CallFuture<B>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        // Synchronous, in the connection's task: the call counts from now.
        let admission = self.limit.admit_on(parts.uri.path(), &self.watches);
        // A refusal logs nothing: no span to build (a tenth of its cost).
        let refused = admission.is_refused();
        parts.extensions.insert(Accepted {
            at: Instant::now(),
            admission: Some(admission),
        });
        let head = Request::from_parts(parts, ());
        let span = if refused {
            tracing::Span::none()
        } else {
            (self.span)(&head)
        };
        let (parts, ()) = head.into_parts();
        let request = Request::from_parts(parts, Body::new(body));
        Box::pin(Oneshot::new(self.stack.clone(), request).instrument(span))
    }
}

/// Serves `incoming` connections with `stack` until `shutdown` resolves,
/// then stops accepting, sends every connection a GOAWAY, and returns once
/// all of them have finished their calls and closed.
pub async fn serve<I, IO, S, B>(
    incoming: I,
    stack: S,
    limit: Arc<CallLimit>,
    span: SpanMaker,
    settings: Http2Settings,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: CallStack<B>,
    B: ResponseBody,
{
    let service = AdmitOnAccept {
        stack,
        limit,
        span,
        watches: Arc::default(),
    };
    let settings = Arc::new(settings);
    let (drain_sender, drain) = watch::channel(());
    // Boxed rather than pinned on the stack, so it can be dropped (closing
    // the listener) the moment shutdown starts.
    let mut incoming = Box::pin(incoming);
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break,
            next = incoming.next() => next,
        };
        match next {
            Some(Ok(io)) => {
                // Each connection counts its own Watch streams.
                let service = AdmitOnAccept {
                    watches: Arc::default(),
                    ..service.clone()
                };
                tokio::spawn(serve_connection(
                    io,
                    service,
                    Arc::clone(&settings),
                    drain.clone(),
                ));
            }
            // The accept loop handles its own failures; a connection that
            // failed before it was handed over concerns only itself.
            Some(Err(error)) => tracing::debug!(%error, "connection failed before serving"),
            None => break,
        }
    }
    // Closes the listener: new connections are refused from here on.
    drop(incoming);
    drop(drain);
    let _ = drain_sender.send(());
    // Every connection task holds a receiver until it has finished.
    drain_sender.closed().await;
}

async fn serve_connection<IO, S, B>(
    io: IO,
    service: AdmitOnAccept<S>,
    settings: Arc<Http2Settings>,
    mut drain: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: CallStack<B>,
    B: ResponseBody,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(settings.max_pending_accept_reset_streams))
        .max_local_error_reset_streams(Some(settings.max_local_error_reset_streams))
        .max_header_list_size(settings.max_header_list_size);
    let connection = builder.serve_connection(TokioIo::new(CoalescingIo::new(io)), service);
    tokio::pin!(connection);
    // Disabled below when there is no maximum age.
    let age = tokio::time::sleep(settings.max_connection_age.unwrap_or_default());
    tokio::pin!(age);
    let mut closing = false;
    let mut aged = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            // Shutdown (or the server gone): GOAWAY, then let calls finish.
            _ = drain.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = &mut age, if settings.max_connection_age.is_some() => {
                if aged {
                    tracing::debug!("connection still busy after its age grace; closing it");
                    break;
                }
                aged = true;
                if !closing {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                age.as_mut().reset(tokio::time::Instant::now() + settings.max_connection_age_grace);
            }
        }
    }
    drop(drain);
}
