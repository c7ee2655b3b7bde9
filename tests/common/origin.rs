//! A real HTTP origin for tests: a hyper server on 127.0.0.1:0 speaking
//! HTTP/1.1 and HTTP/2 (the auto builder: h2 by ALPN over TLS, or by prior
//! knowledge over plain TCP), optionally over TLS with a test CA
//! ([`TestCa`](super::pki::TestCa)).
//!
//! It records every request (method, path and query exactly as they arrived,
//! headers, HTTP version) and answers with programmed [`Reply`]s, per path or
//! from a closure.
//!
//! ```ignore
//! let origin = TestOrigin::start().await;               // or start_tls()
//! origin.respond("/items/a", Reply::ok("hello").cache_control("max-age=60"));
//! let config = origin.origin_config("cache:api:", "/items/{key}");
//! // ... fetch through the server or the client ...
//! assert_eq!(origin.count(), 1);
//! assert_eq!(origin.requests()[0].target, "/items/a");
//! origin.stop().await;                                   // "origin down"
//! origin.restart().await;                                // same port again
//! ```
//!
//! A [`Gate`] holds the answers to a path until the test opens it, so a test
//! can act while an origin request is in flight, without sleeping:
//!
//! ```ignore
//! let gate = origin.gate("/items/a");
//! // ... start a fetch ...
//! origin.wait_for_requests("/items/a", 1).await;         // it arrived
//! // ... race it ...
//! gate.open();                                           // now it answers
//! ```
//!
//! Paths are matched exactly as received, percent-encoding included (a key
//! `a/b` arrives as `/items/a%2Fb`), without the query. A request to a path
//! with no reply and no handler gets 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tierkv::cache::config::OriginConfig;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;

use super::pki::TestCa;

/// What the origin answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// Wait this long before answering at all.
    pub delay: Duration,
    /// Send the headers and the first half of the body, then wait this long
    /// before the rest (the body is streamed, without Content-Length).
    pub body_delay: Duration,
    /// Stream the body (no Content-Length; chunked on HTTP/1.1).
    pub streamed: bool,
    /// Answer 304 Not Modified when the request's `If-None-Match` matches
    /// this reply's `ETag` (or is `*`), or, without `If-None-Match`, its
    /// `If-Modified-Since` equals this reply's `Last-Modified` string.
    pub conditional: bool,
}

impl Reply {
    /// 200 with a body.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            body_delay: Duration::ZERO,
            streamed: false,
            conditional: false,
        }
    }

    /// A status with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::ok(Bytes::new())
        }
    }

    /// Replaces the status code.
    pub fn status_code(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a response header (call again for a second header of the same
    /// name).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `Cache-Control`.
    pub fn cache_control(self, value: &str) -> Self {
        self.header("cache-control", value)
    }

    /// Adds `ETag` (give the quotes: `"\"v1\""`).
    pub fn etag(self, value: &str) -> Self {
        self.header("etag", value)
    }

    /// Adds `Last-Modified`.
    pub fn last_modified(self, value: &str) -> Self {
        self.header("last-modified", value)
    }

    /// Adds `Content-Type`.
    pub fn content_type(self, value: &str) -> Self {
        self.header("content-type", value)
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Waits before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sends half the body, waits, then the rest (streamed).
    pub fn body_delay(mut self, delay: Duration) -> Self {
        self.body_delay = delay;
        self.streamed = true;
        self
    }

    /// Streams the body without Content-Length.
    pub fn streamed(mut self) -> Self {
        self.streamed = true;
        self
    }

    /// Answers 304 to a matching conditional request.
    pub fn conditional(mut self) -> Self {
        self.conditional = true;
        self
    }

    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether a conditional request is answered 304.
    fn not_modified(&self, request: &SeenRequest) -> bool {
        if !self.conditional {
            return false;
        }
        if let Some(if_none_match) = request.header("if-none-match") {
            let Some(etag) = self.header_value("etag") else {
                return false;
            };
            let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
            return if_none_match
                .split(',')
                .any(|tag| tag.trim() == "*" || strip(tag) == strip(etag));
        }
        match (
            request.header("if-modified-since"),
            self.header_value("last-modified"),
        ) {
            (Some(since), Some(modified)) => since.trim() == modified.trim(),
            _ => false,
        }
    }
}

/// One request the origin received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path and query exactly as received (`/items/a%2Fb?x=1`).
    pub target: String,
    /// The path alone, as received.
    pub path: String,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// HTTP/1.1 or HTTP/2.
    pub version: http::Version,
}

impl SeenRequest {
    /// A request header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

type Handler = Arc<dyn Fn(&SeenRequest) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Reply>>,
    handler: Mutex<Option<Handler>>,
    seen: Mutex<Vec<SeenRequest>>,
    /// Woken on every request that arrives.
    arrived: tokio::sync::Notify,
    /// Closed gates, by path: answers wait until the sender says open.
    gates: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    connections: std::sync::atomic::AtomicUsize,
}

/// Holds the answers to one path (requests are recorded at once) until
/// [`open`](Gate::open) or drop.
pub struct Gate {
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    /// Lets every held and later request to the path be answered.
    pub fn open(self) {}
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.open.send(true);
    }
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_file: PathBuf,
    /// Keeps the CA's directory (and so `ca_file`) alive.
    _ca: TestCa,
}

/// A running test origin; stops when dropped.
pub struct TestOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    tls: Option<Arc<Tls>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl TestOrigin {
    /// A plain-HTTP origin (HTTP/1.1, and h2 by prior knowledge).
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// An HTTPS origin offering h2 and HTTP/1.1 by ALPN, its certificate
    /// (for `127.0.0.1` and `localhost`) signed by a fresh test CA whose PEM
    /// is at [`ca_file`](Self::ca_file).
    pub async fn start_tls() -> Self {
        Self::launch(Some(tls(&[b"h2", b"http/1.1"]))).await
    }

    /// An HTTPS origin that offers only HTTP/1.1 by ALPN.
    pub async fn start_tls_http1() -> Self {
        Self::launch(Some(tls(&[b"http/1.1"]))).await
    }

    async fn launch(tls: Option<Tls>) -> Self {
        let listener = bind("127.0.0.1:0".parse().unwrap());
        let origin = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            tls: tls.map(Arc::new),
            task: Mutex::new(None),
        };
        origin.serve(listener);
        origin
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let tls = self.tls.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection, which is what "origin down" means.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                state
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let state = state.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.acceptor.accept(stream).await {
                                serve_connection(TokioIo::new(stream), state).await;
                            }
                        }
                        None => serve_connection(TokioIo::new(stream), state).await,
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://...` followed by `path` (which may
    /// hold `{key}`).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// The test CA's PEM file, for an origin's `ca_file` (HTTPS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.ca_file.clone())
    }

    /// An origin configuration for keys under `prefix` reading
    /// `path_template` (like `/items/{key}`) here, trusting the test CA.
    pub fn origin_config(&self, prefix: &str, path_template: &str) -> OriginConfig {
        OriginConfig {
            ca_file: self.ca_file(),
            ..OriginConfig::new(prefix, self.url(path_template))
        }
    }

    /// Answers requests to `path` (as received, without the query) with
    /// `reply` from now on.
    pub fn respond(&self, path: &str, reply: Reply) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), reply);
    }

    /// Answers requests to paths without a [`respond`](Self::respond) reply
    /// by calling `handler`.
    pub fn respond_with(&self, handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) {
        *self.state.handler.lock().unwrap() = Some(Arc::new(handler));
    }

    /// Holds the answers to requests for `path` until the returned gate is
    /// opened (or dropped).
    pub fn gate(&self, path: &str) -> Gate {
        let (open, opened) = tokio::sync::watch::channel(false);
        self.state
            .gates
            .lock()
            .unwrap()
            .insert(path.to_string(), opened);
        Gate { open }
    }

    /// Returns once `count` requests for `path` have arrived.
    pub async fn wait_for_requests(&self, path: &str, count: usize) {
        loop {
            // Registered before the check, so an arrival in between wakes it.
            let arrived = self.state.arrived.notified();
            if self.count_path(path) >= count {
                return;
            }
            arrived.await;
        }
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// How many requests arrived for `path` (as received, without query).
    pub fn count_path(&self, path: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.path == path)
            .count()
    }

    /// How many TCP connections were accepted (pooling shows as few).
    pub fn connections(&self) -> usize {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the requests recorded so far (replies stay).
    pub fn clear_requests(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    /// Stops listening and drops every open connection: connecting is
    /// refused until [`restart`](Self::restart). Recorded requests and
    /// replies are kept.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port, with the same replies and CA.
    pub async fn restart(&self) {
        self.stop().await;
        self.serve(bind(self.addr));
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so a restart gets the same port back at once.
fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind the test origin");
    socket.listen(1024).expect("listen")
}

async fn serve_connection<I>(io: TokioIo<I>, state: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(answer(request, &state).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(request: Request<hyper::body::Incoming>, state: &State) -> Response<Body> {
    let seen = SeenRequest {
        method: request.method().to_string(),
        target: request
            .uri()
            .path_and_query()
            .map(|target| target.as_str().to_string())
            .unwrap_or_default(),
        path: request.uri().path().to_string(),
        headers: request.headers().clone(),
        version: request.version(),
    };
    state.seen.lock().unwrap().push(seen.clone());
    state.arrived.notify_waiters();
    let gate = state.gates.lock().unwrap().get(&seen.path).cloned();
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    let routed = state.routes.lock().unwrap().get(&seen.path).cloned();
    let reply = match routed {
        Some(reply) => reply,
        None => {
            let handler = state.handler.lock().unwrap().clone();
            match handler {
                Some(handler) => handler(&seen),
                None => Reply::status(404).body("no reply programmed for this path"),
            }
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let not_modified = reply.not_modified(&seen);
    let mut response = Response::builder().status(if not_modified { 304 } else { reply.status });
    for (name, value) in &reply.headers {
        if not_modified && name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        response = response.header(name.as_str(), value.as_str());
    }
    let body: Body = if not_modified || seen.method == "HEAD" {
        Full::new(Bytes::new()).boxed()
    } else if reply.streamed {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        let body = reply.body.clone();
        let pause = reply.body_delay;
        tokio::spawn(async move {
            let half = body.len() / 2;
            let _ = sender.send(Ok(Frame::data(body.slice(..half)))).await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let _ = sender.send(Ok(Frame::data(body.slice(half..)))).await;
        });
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).boxed()
    } else {
        Full::new(reply.body.clone()).boxed()
    };
    response.body(body).expect("a valid programmed reply")
}

/// A test CA ([`TestCa`]), a server certificate for 127.0.0.1 and localhost
/// signed by it, and the CA's PEM in its temporary directory.
fn tls(alpn: &[&[u8]]) -> Tls {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let ca = TestCa::new("origin");
    let issued = ca.server("origin");
    let chain = CertificateDer::pem_file_iter(&issued.cert_file)
        .expect("the origin certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("the origin certificate");
    let key = PrivateKeyDer::from_pem_file(&issued.key_file).expect("the origin key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_file: ca.cert_file.clone(),
        _ca: ca,
    }
}
