//! Accepting TCP connections within bounds.
//!
//! tonic's own accept loop has three gaps a public-facing server cannot live
//! with: a connection that never sends the HTTP/2 preface is held forever,
//! there is no limit on the number of connections, and when `accept` fails
//! (at the file-descriptor limit, say) it retries at once, forever, spinning a
//! core without a word in the log. [`incoming`] replaces it: connections over
//! the limit are closed at once, a connection gets a bounded time to send its
//! preface, accept failures back off and are logged, and every open
//! connection is registered so shutdown can close the stragglers.

mod stream;

pub use stream::Connection;
use stream::{Io, Registered};

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;

use super::tls::SharedAcceptor;

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0...`),
/// the first bytes every gRPC client sends.
const PREFACE_LEN: usize = 24;
/// First pause after a failed `accept`; it doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between `accept` attempts while they keep failing.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per this period for a repeating condition (accept
/// failures, connections refused at the limit), with a count of the rest.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How accepted connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Idle time before TCP keepalive probes start (`None`: no probes).
    pub tcp_keepalive: Option<Duration>,
}

/// A point-in-time copy of the connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: usize,
    /// Most connections open at once so far.
    pub peak_open: usize,
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed at once because the limit was reached.
    pub refused: u64,
    /// Connections closed because they sent no preface in time.
    pub handshake_timeouts: u64,
    /// Failed `accept` calls (descriptor limit, memory...).
    pub accept_errors: u64,
    /// Connections closed by force at the end of the shutdown grace period.
    pub forced_closed: u64,
    /// TLS handshakes that failed (bad certificate, wrong protocol...).
    pub tls_failures: u64,
}

/// The open connections and their counters, shared by the accept loop, every
/// connection and shutdown.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    /// Open connections by id, with their socket, for [`Connections::close_all`].
    /// A connection leaves this map before its socket is closed, under the
    /// lock, so a descriptor here is never one the kernel has reused.
    sockets: Mutex<HashMap<u64, RawFd>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    handshake_timeouts: AtomicU64,
    accept_errors: AtomicU64,
    forced_closed: AtomicU64,
    tls_failures: AtomicU64,
}

impl Connections {
    /// No connections yet, bounded by `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            peak_open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            forced_closed: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
        })
    }

    /// The counters now.
    pub fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open.load(Ordering::Relaxed),
            peak_open: self.peak_open.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            forced_closed: self.forced_closed.load(Ordering::Relaxed),
            tls_failures: self.tls_failures.load(Ordering::Relaxed),
        }
    }

    /// Shuts down the socket of every open connection, so their HTTP/2 tasks
    /// end and the calls on them are dropped; returns how many there were.
    pub fn close_all(&self) -> usize {
        let sockets = self.lock_sockets();
        for fd in sockets.values() {
            // SAFETY: the descriptor belongs to a connection still in the map,
            // and it cannot be closed (and reused) while we hold the lock,
            // because a connection removes itself under this lock before its
            // socket is closed. shutdown(2) does not invalidate it.
            unsafe {
                libc::shutdown(*fd, libc::SHUT_RDWR);
            }
        }
        self.forced_closed
            .fetch_add(sockets.len() as u64, Ordering::Relaxed);
        sockets.len()
    }

    fn lock_sockets(&self) -> MutexGuard<'_, HashMap<u64, RawFd>> {
        // A panic while holding this lock leaves the map consistent (every
        // update is a single insert or remove), so a poisoned lock is usable.
        self.sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `stream` if there is room under the connection limit.
    fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Registered> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock_sockets().insert(id, stream.as_raw_fd());
        Some(Registered {
            stream,
            id,
            connections: Arc::clone(self),
        })
    }
}

/// A warning that repeats at most once per [`WARN_EVERY`], counting the
/// occurrences in between.
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; if so, also how many occurrences were not logged.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Whether an `accept` error concerns one connection only (the next accept
/// may well succeed) rather than the process (descriptors, memory).
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

struct AcceptLoop {
    listener: TcpListener,
    connections: Arc<Connections>,
    backoff: Duration,
    accept_warning: Throttled,
    limit_warning: Throttled,
}

impl AcceptLoop {
    /// The next admitted connection, and when its handshake time is over.
    async fn next(&mut self) -> (Registered, Instant) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) if is_per_connection(&error) => continue,
                Err(error) => {
                    self.connections
                        .accept_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.accept_warning.due() {
                        tracing::warn!(
                            %error,
                            backoff_ms = self.backoff.as_millis() as u64,
                            open_connections = self.connections.open.load(Ordering::Relaxed),
                            failures_since_last_warning = suppressed,
                            "accepting a connection failed; backing off (is the descriptor limit reached?)"
                        );
                    }
                    // Retrying at once would fail again at once: the pending
                    // connection keeps the listener readable, so we would spin.
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            self.backoff = MIN_ACCEPT_BACKOFF;
            let handshake_deadline = Instant::now() + self.connections.limits.handshake_timeout;
            configure_socket(&stream, self.connections.limits.tcp_keepalive);
            match self.connections.admit(stream) {
                Some(registered) => return (registered, handshake_deadline),
                None => {
                    if let Some(suppressed) = self.limit_warning.due() {
                        tracing::warn!(
                            max_connections = self.connections.limits.max_connections,
                            refused_since_last_warning = suppressed,
                            "connection limit reached; closing new connections"
                        );
                    }
                }
            }
        }
    }
}

fn configure_socket(stream: &TcpStream, keepalive: Option<Duration>) {
    // Without TCP_NODELAY, Nagle's algorithm holds small responses ~40 ms.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(idle) = keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
        if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%error, "cannot set TCP keepalive");
        }
    }
}

/// The stream of admitted connections from `listener`, for tonic's
/// `serve_with_incoming_shutdown`. It never yields an error: failures are
/// handled (and logged) here, so tonic's loop never spins on them. Dropping
/// it closes the listener.
///
/// With `tls`, each connection's TLS handshake runs in a task of its own
/// (a slow client must not hold up the others), bounded by the handshake
/// timeout; only completed handshakes are yielded.
pub fn incoming(
    listener: TcpListener,
    connections: Arc<Connections>,
    tls: Option<SharedAcceptor>,
) -> Incoming {
    let accept_loop = AcceptLoop {
        listener,
        connections,
        backoff: MIN_ACCEPT_BACKOFF,
        accept_warning: Throttled::new(),
        limit_warning: Throttled::new(),
    };
    match tls {
        None => Incoming {
            idle: Some(accept_loop),
            accepting: None,
            handshaken: None,
        },
        Some(acceptor) => {
            // Room for a burst of handshakes finishing while tonic is busy.
            let (sender, receiver) = mpsc::channel(64);
            tokio::spawn(accept_tls(accept_loop, acceptor, sender));
            Incoming {
                idle: None,
                accepting: None,
                handshaken: Some(receiver),
            }
        }
    }
}

/// Accepts until the receiving [`Incoming`] is dropped, handing each
/// connection to a handshake task.
async fn accept_tls(
    mut accept_loop: AcceptLoop,
    acceptor: SharedAcceptor,
    sender: mpsc::Sender<Connection>,
) {
    loop {
        let (registered, deadline) = tokio::select! {
            next = accept_loop.next() => next,
            // Dropping the listener (with `accept_loop`) refuses new connections.
            () = sender.closed() => return,
        };
        // Read per connection: a reload (SIGHUP) applies to the next handshake.
        let acceptor = acceptor.current();
        let sender = sender.clone();
        tokio::spawn(async move {
            let connections = Arc::clone(&registered.connections);
            match tokio::time::timeout_at(deadline, acceptor.accept(registered)).await {
                Ok(Ok(tls)) => {
                    let connection = Connection::new(Io::Tls(Box::new(tls)), deadline);
                    // A closed channel means shutdown: the connection just closes.
                    let _ = sender.send(connection).await;
                }
                Ok(Err(error)) => {
                    connections.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "TLS handshake failed");
                }
                Err(_) => {
                    connections
                        .handshake_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "closing a connection that did not finish its TLS handshake in time"
                    );
                }
            }
        });
    }
}

type Accepting = Pin<Box<dyn Future<Output = (AcceptLoop, Connection)> + Send>>;

/// See [`incoming`].
pub struct Incoming {
    /// The loop, while no accept is under way (plain TCP).
    idle: Option<AcceptLoop>,
    /// The accept under way, which owns the loop until it yields (plain TCP).
    accepting: Option<Accepting>,
    /// Connections whose TLS handshake completed (TLS).
    handshaken: Option<mpsc::Receiver<Connection>>,
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(handshaken) = this.handshaken.as_mut() {
            return handshaken.poll_recv(cx).map(|next| next.map(Ok));
        }
        if this.accepting.is_none() {
            let Some(mut state) = this.idle.take() else {
                return Poll::Ready(None);
            };
            this.accepting = Some(Box::pin(async move {
                let (registered, deadline) = state.next().await;
                (state, Connection::new(Io::Plain(registered), deadline))
            }));
        }
        let Some(accepting) = this.accepting.as_mut() else {
            return Poll::Ready(None);
        };
        match accepting.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((state, connection)) => {
                this.accepting = None;
                this.idle = Some(state);
                Poll::Ready(Some(Ok(connection)))
            }
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit, so the
/// connection limit, not a low default soft limit (often 1024), decides how
/// many clients are served; returns the soft limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}
