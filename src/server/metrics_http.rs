//! The operations HTTP listener (`metrics_listen`): Prometheus metrics at
//! `/metrics`, and plain HTTP probes at `/healthz` (the process answers) and
//! `/readyz` (the server accepts calls: 503 while starting and draining), for
//! platforms whose probes cannot speak gRPC or TLS.
//!
//! It is separate from the gRPC port so scrapes and probes never compete with
//! calls for connection or stream limits, and so it can stay on a private
//! interface while gRPC is public.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, CONTENT_TYPE};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most scrape/probe connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;

/// Whether the gRPC server accepts calls; `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Sets the state `/readyz` reports.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// The state `/readyz` reports.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves the listener until the returned task is aborted.
pub fn spawn(listener: TcpListener, metrics: Metrics, readiness: Arc<Readiness>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let readiness = Arc::clone(&readiness);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    let readiness = Arc::clone(&readiness);
                    async move { Ok::<_, Infallible>(respond(&request, &metrics, &readiness).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "metrics listener: connection ended with an error");
                }
                drop(permit);
            });
        }
    })
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, metrics.scrape().await),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" if readiness.get() => text(StatusCode::OK, PLAIN, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}
