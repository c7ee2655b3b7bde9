//! Request size limits per method and a server-wide budget for the bytes of
//! request messages in flight.
//!
//! tonic checks one decoding limit for every method of a service, and only
//! once it decodes; it buffers a whole message first, and nothing bounds how
//! many large messages are buffered at once. This layer reads just the 5-byte
//! gRPC frame header of each request, which declares the message's length,
//! and before any more of the body is read:
//! - refuses a message larger than its method's limit
//!   ([`request_limit`]) with `RESOURCE_EXHAUSTED` naming both sizes;
//! - reserves the declared length from the [`RequestBudget`], waiting at most
//!   the budget's wait time when it is spent, then refusing with
//!   `RESOURCE_EXHAUSTED` and a retry delay. The reservation is held until the
//!   call has answered, since the decoded request lives that long.
//!
//! Until the reservation is granted, the rest of the body stays in the
//! client's HTTP/2 flow-control window, not in server memory.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::proto::v1::cache_service_server::SERVICE_NAME as CACHE_SERVICE;
use crate::proto::v1::kv_service_server::SERVICE_NAME as KV_SERVICE;
use crate::proto::v1::session_service_server::SERVICE_NAME as SESSION_SERVICE;
use crate::server::message_limits::{
    MAX_BATCH_GET_REQUEST_BYTES, MAX_BATCH_WRITE_REQUEST_BYTES, MAX_DELETE_REQUEST_BYTES,
    MAX_GET_REQUEST_BYTES, MAX_LIST_REQUEST_BYTES, MAX_OTHER_REQUEST_BYTES, MAX_PUT_REQUEST_BYTES,
    MAX_SESSION_WRITE_REQUEST_BYTES,
};

/// Length of the gRPC message frame header: a compression flag and a
/// big-endian `u32` length.
const FRAME_HEADER_LEN: usize = 5;
/// The retry delay suggested to a client refused because the budget is spent.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// The largest request message `path` (`/package.Service/Method`) accepts.
pub fn request_limit(path: &str) -> usize {
    let session_method = path
        .strip_prefix('/')
        .and_then(|path| path.strip_prefix(SESSION_SERVICE))
        .and_then(|path| path.strip_prefix('/'));
    if let Some(method) = session_method {
        return match method {
            "Create" | "Update" => MAX_SESSION_WRITE_REQUEST_BYTES,
            _ => MAX_OTHER_REQUEST_BYTES,
        };
    }
    let cache_method = path
        .strip_prefix('/')
        .and_then(|path| path.strip_prefix(CACHE_SERVICE))
        .and_then(|path| path.strip_prefix('/'));
    if let Some(method) = cache_method {
        return match method {
            "Put" => MAX_PUT_REQUEST_BYTES,
            _ => MAX_GET_REQUEST_BYTES,
        };
    }
    let Some(method) = path
        .strip_prefix('/')
        .and_then(|path| path.strip_prefix(KV_SERVICE))
        .and_then(|path| path.strip_prefix('/'))
    else {
        return MAX_OTHER_REQUEST_BYTES;
    };
    match method {
        "Get" => MAX_GET_REQUEST_BYTES,
        "Delete" => MAX_DELETE_REQUEST_BYTES,
        "List" => MAX_LIST_REQUEST_BYTES,
        "BatchGet" => MAX_BATCH_GET_REQUEST_BYTES,
        "Put" | "Patch" => MAX_PUT_REQUEST_BYTES,
        "BatchWrite" => MAX_BATCH_WRITE_REQUEST_BYTES,
        _ => MAX_OTHER_REQUEST_BYTES,
    }
}

/// A point-in-time copy of the budget's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetCounts {
    /// The budget, in bytes.
    pub capacity: usize,
    /// Bytes reserved now.
    pub in_flight: usize,
    /// Most bytes reserved at once so far.
    pub peak_in_flight: usize,
    /// Requests refused because their message was over their method's limit.
    pub refused_too_large: u64,
    /// Requests refused because the budget stayed spent for the whole wait.
    pub refused_busy: u64,
}

/// The bytes of request messages the server holds at once, across all
/// connections.
#[derive(Debug)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
    wait: Duration,
    peak_in_flight: AtomicUsize,
    refused_too_large: AtomicU64,
    refused_busy: AtomicU64,
}

impl RequestBudget {
    /// A budget of `capacity` bytes; a request waits at most `wait` for room.
    pub fn new(capacity: usize, wait: Duration) -> Arc<Self> {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            wait,
            peak_in_flight: AtomicUsize::new(0),
            refused_too_large: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
        })
    }

    /// The counters now.
    pub fn counts(&self) -> BudgetCounts {
        BudgetCounts {
            capacity: self.capacity,
            in_flight: self.in_flight(),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
            refused_too_large: self.refused_too_large.load(Ordering::Relaxed),
            refused_busy: self.refused_busy.load(Ordering::Relaxed),
        }
    }

    fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Reserves `bytes`, waiting at most the configured time.
    async fn reserve(&self, bytes: u32) -> Result<Option<OwnedSemaphorePermit>, Status> {
        if bytes == 0 {
            return Ok(None);
        }
        let permit = match Arc::clone(&self.permits).try_acquire_many_owned(bytes) {
            Ok(permit) => permit,
            Err(_) if bytes as usize > self.capacity => {
                self.refused_busy.fetch_add(1, Ordering::Relaxed);
                return Err(Status::resource_exhausted(format!(
                    "request message is {bytes} bytes; the server's request memory budget is {} bytes",
                    self.capacity
                )));
            }
            Err(_) => {
                let waiting = Arc::clone(&self.permits).acquire_many_owned(bytes);
                match tokio::time::timeout(self.wait, waiting).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; treat it as busy anyway.
                    Ok(Err(_)) | Err(_) => {
                        self.refused_busy.fetch_add(1, Ordering::Relaxed);
                        return Err(Status::with_error_details(
                            Code::ResourceExhausted,
                            format!(
                                "the server is busy: {} of its {} bytes for request messages are in use and a {bytes}-byte request waited {} ms for room; retry later",
                                self.in_flight(),
                                self.capacity,
                                self.wait.as_millis()
                            ),
                            ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
                        ));
                    }
                }
            }
        };
        self.peak_in_flight
            .fetch_max(self.in_flight(), Ordering::Relaxed);
        Ok(Some(permit))
    }
}

/// Applies [`request_limit`] and a [`RequestBudget`] to every request.
#[derive(Debug, Clone)]
pub struct RequestLimitLayer {
    budget: Arc<RequestBudget>,
}

impl RequestLimitLayer {
    /// A layer reserving from `budget`.
    pub fn new(budget: Arc<RequestBudget>) -> Self {
        Self { budget }
    }
}

impl<S> Layer<S> for RequestLimitLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            budget: Arc::clone(&self.budget),
        }
    }
}

/// The service [`RequestLimitLayer`] produces.
#[derive(Debug, Clone)]
pub struct RequestLimits<S> {
    inner: S,
    budget: Arc<RequestBudget>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ResBody> Service<http::Request<Body>> for RequestLimits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The ready service must serve this call; keep a fresh clone for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let budget = Arc::clone(&self.budget);
        Box::pin(async move {
            let limit = request_limit(request.uri().path());
            let (parts, body) = request.into_parts();
            let mut body = ReplayBody::new(body);
            let declared = body.read_frame_header().await;
            let permit = match declared {
                Some(declared) if declared as usize > limit => {
                    budget.refused_too_large.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(declared, limit, "request over its method's size limit");
                    return Ok(Status::resource_exhausted(format!(
                        "request message is {declared} bytes; the limit for {} is {limit} bytes",
                        parts.uri.path()
                    ))
                    .into_http());
                }
                Some(declared) => match budget.reserve(declared).await {
                    Ok(permit) => {
                        body.allowed = FRAME_HEADER_LEN + declared as usize;
                        permit
                    }
                    Err(status) => {
                        tracing::debug!(declared, "request refused: request memory budget spent");
                        return Ok(status.into_http());
                    }
                },
                // A body too short for a frame header; tonic reports it.
                None => None,
            };
            let response = inner
                .call(http::Request::from_parts(parts, Body::new(body)))
                .await;
            drop(permit);
            response
        })
    }
}

/// A request body whose first frames were read ahead (to see the gRPC frame
/// header) and are replayed, which refuses to carry more than one message.
struct ReplayBody {
    read_ahead: VecDeque<Result<Frame<Bytes>, Status>>,
    inner: Body,
    ended: bool,
    /// Most data bytes the body may carry: one frame of the declared length.
    allowed: usize,
    seen: usize,
}

impl ReplayBody {
    fn new(inner: Body) -> Self {
        Self {
            read_ahead: VecDeque::new(),
            inner,
            ended: false,
            allowed: usize::MAX,
            seen: 0,
        }
    }

    /// Reads frames until the gRPC frame header is in; returns the message
    /// length it declares, or `None` if the body ends (or fails) first.
    async fn read_frame_header(&mut self) -> Option<u32> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let mut have = 0;
        while have < FRAME_HEADER_LEN {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_frame(cx)).await;
            let Some(frame) = frame else {
                self.ended = true;
                return None;
            };
            let failed = frame.is_err();
            if let Some(data) = frame.as_ref().ok().and_then(Frame::data_ref) {
                let take = (FRAME_HEADER_LEN - have).min(data.len());
                header[have..have + take].copy_from_slice(&data[..take]);
                have += take;
            }
            let trailers = frame.as_ref().is_ok_and(Frame::is_trailers);
            self.read_ahead.push_back(frame);
            if failed || trailers {
                return None;
            }
        }
        let [_compressed, length @ ..] = header;
        Some(u32::from_be_bytes(length))
    }

    fn check(&mut self, frame: Result<Frame<Bytes>, Status>) -> Result<Frame<Bytes>, Status> {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            self.seen += data.len();
            if self.seen > self.allowed {
                return Err(Status::invalid_argument(
                    "a unary request carries exactly one message; this one has more data",
                ));
            }
        }
        Ok(frame)
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read_ahead.pop_front() {
            return Poll::Ready(Some(this.check(frame)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(this.check(frame))),
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read_ahead.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.read_ahead.is_empty() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small methods get small limits; writes keep the message limit.
    #[test]
    fn limits_per_method() {
        assert_eq!(
            request_limit("/tierkv.v1.KvService/Get"),
            MAX_GET_REQUEST_BYTES
        );
        assert_eq!(
            request_limit("/tierkv.v1.KvService/BatchWrite"),
            MAX_BATCH_WRITE_REQUEST_BYTES
        );
        assert_eq!(
            request_limit("/grpc.health.v1.Health/Check"),
            MAX_OTHER_REQUEST_BYTES
        );
        assert_eq!(
            request_limit("/tierkv.v1.KvServiceX/Put"),
            MAX_OTHER_REQUEST_BYTES
        );
        const { assert!(MAX_GET_REQUEST_BYTES < MAX_PUT_REQUEST_BYTES) };
    }
}
