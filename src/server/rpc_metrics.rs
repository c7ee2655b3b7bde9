//! Counting every call by status code and timing it, as a tower layer around
//! all services, so the figures include calls answered by the transport
//! layers (deadline, request limits, shedding) as well as by handlers.
//!
//! The status of a call is in the response headers when it failed before a
//! message (a "trailers-only" response) and in the trailers otherwise, so the
//! response body is wrapped to see them. A body dropped before its trailers
//! (the client went away) is recorded as CANCELLED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use tower::{Layer, Service};

use crate::metrics::{code_name, MethodLabels, RpcMetrics};

/// Records every call into [`RpcMetrics`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: RpcMetrics,
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: RpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Recorded {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] produces.
#[derive(Debug, Clone)]
pub struct Recorded<S> {
    inner: S,
    metrics: RpcMetrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Recorded<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let pending = Pending {
            metrics: self.metrics.clone(),
            labels: Some(self.metrics.labels(request.uri().path())),
            started: super::load_shed::Accepted::time_of(&request),
            span: tracing::Span::none(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut pending = pending;
            // tonic runs the call's future inside its `rpc` span (not `call`).
            pending.span = tracing::Span::current();
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                pending.finish(code);
            }
            Ok(response.map(|inner| RecordedBody { inner, pending }))
        })
    }
}

/// A call not yet recorded.
struct Pending {
    metrics: RpcMetrics,
    /// `None` once recorded.
    labels: Option<MethodLabels>,
    started: Instant,
    /// The call's `rpc` span, which gets its code and latency.
    span: tracing::Span,
}

impl Pending {
    fn finish(&mut self, code: i32) {
        if let Some(labels) = self.labels.take() {
            let elapsed = self.started.elapsed();
            let code = code_name(code);
            self.metrics.record(labels, code, elapsed);
            let latency_us = elapsed.as_micros() as u64;
            self.span.record("code", code);
            self.span.record("latency_us", latency_us);
            // One line per call, off by default: RUST_LOG=tierkv::rpc=debug.
            tracing::debug!(target: "tierkv::rpc", parent: &self.span, code, latency_us, "rpc finished");
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped without a status: the call's future or body was dropped
        // (client gone, connection closed), which gRPC reports as CANCELLED.
        self.finish(1);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// A response body that records its call when the trailers go out.
pub struct RecordedBody<B> {
    inner: B,
    pending: Pending,
}

impl<B: Body + Unpin> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.pending.finish(code);
                }
            }
            // A body that ends without trailers carries no status: UNKNOWN.
            Poll::Ready(None) => this.pending.finish(2),
            Poll::Ready(Some(Err(_))) => this.pending.finish(13),
            Poll::Pending => {}
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
