//! A global bound on calls in flight, with load shedding.
//!
//! A limit per connection is not enough behind a sidecar that multiplexes
//! every client onto a few connections, and queueing without bound turns a
//! burst into latency for everyone. Over the limit, a call is refused at once
//! with RESOURCE_EXHAUSTED (and a retry hint), so it costs almost nothing and
//! the calls admitted keep their latency. Health checks and reflection are
//! never shed: probes must see the truth even under overload.
//!
//! A call counts from the moment it is read off its connection: the server's
//! HTTP/2 loop calls [`CallLimit::admit`] as it accepts the stream and puts
//! the [`Admission`] in the request's extensions, where [`LoadShed`] finds it
//! (see `super::http2` for why counting later misses the queue). A request
//! that arrives without one (the layer used in another server) is admitted
//! when the layer sees it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
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
    /// The headers of the refusal, encoded once: a shed call must cost
    /// almost nothing, and its status, message and details never change.
    overloaded: HeaderMap,
}

impl CallLimit {
    /// A bound of `limit` calls in flight; 0 means no bound.
    pub fn new(limit: usize) -> Arc<Self> {
        let overloaded = overloaded_status(limit)
            .into_http::<()>()
            .into_parts()
            .0
            .headers;
        Arc::new(Self {
            limit,
            admitted: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            overloaded,
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

    /// Decides a call to `path` now: exempt (a probe or tooling), admitted
    /// (counted until the returned ticket is dropped), or refused.
    pub fn admit(self: &Arc<Self>, path: &str) -> Admission {
        if super::probe_or_tooling(path) {
            return Admission::Exempt;
        }
        match self.try_admit() {
            Some(admitted) => Admission::Admitted(Arc::new(admitted)),
            None => Admission::Refused,
        }
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

    /// The RESOURCE_EXHAUSTED answer to a shed call.
    fn overloaded<ResBody: Default>(&self) -> http::Response<ResBody> {
        let mut response = http::Response::new(ResBody::default());
        *response.headers_mut() = self.overloaded.clone();
        response
    }
}

/// What [`CallLimit::admit`] decided about a call; it rides in the request's
/// extensions to the [`LoadShed`] layer.
#[derive(Debug, Clone)]
pub enum Admission {
    /// A health check or reflection call: never counted, never shed.
    Exempt,
    /// Counted in flight until the last clone of the ticket is dropped.
    Admitted(Arc<Admitted>),
    /// Over the limit: answered RESOURCE_EXHAUSTED.
    Refused,
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
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let admission = match request.extensions_mut().remove::<Admission>() {
            Some(admission) => admission,
            None => self.limit.admit(request.uri().path()),
        };
        let ticket = match admission {
            Admission::Exempt => return Box::pin(self.inner.call(request)),
            Admission::Admitted(ticket) => ticket,
            Admission::Refused => {
                let response = self.limit.overloaded();
                return Box::pin(async move { Ok(response) });
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            drop(ticket);
            result
        })
    }
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
