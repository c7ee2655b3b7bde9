//! A global bound on calls in flight, with load shedding.
//!
//! A limit per connection is not enough behind a sidecar that multiplexes
//! every client onto a few connections, and queueing without bound turns a
//! burst into latency for everyone. Over the limit, a call is refused at once
//! with RESOURCE_EXHAUSTED (and a retry hint), so it costs almost nothing and
//! the calls admitted keep their latency. Health checks and reflection are
//! never shed: probes must see the truth even under overload.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::api::status::ERROR_DOMAIN;

/// The retry delay suggested to a shed call.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// Calls admitted now, the limit, and calls shed so far.
#[derive(Debug)]
pub struct CallLimit {
    limit: usize,
    admitted: AtomicUsize,
    shed: AtomicU64,
}

impl CallLimit {
    /// A bound of `limit` calls in flight; 0 means no bound.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            admitted: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
        })
    }

    /// The configured bound (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Calls shed since start.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
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

/// One admitted call; it leaves the count when its future is done or dropped.
struct Admitted(Arc<CallLimit>);

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
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if super::probe_or_tooling(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Some(admitted) = self.limit.try_admit() else {
            let limit = self.limit.limit;
            return Box::pin(async move { Ok(overloaded(limit)) });
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            drop(admitted);
            result
        })
    }
}

fn overloaded<ResBody: Default>(limit: usize) -> http::Response<ResBody> {
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
    .into_http()
}
