//! The transport's bounds, each driven past its limit through raw HTTP/2 or
//! TCP so no client library can soften it: request size limits per method,
//! the request memory budget under stalled uploads, streams per connection,
//! the handshake timeout, the connection limit, accept failures at the
//! descriptor limit, memory after a burst, deadlines that fire mid-request,
//! and the shutdown drain.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::*;
use common::*;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tierkv::proto::v1 as pb;
use tierkv::records::limits::MAX_VALUE_BYTES;
use tierkv::server::message_limits::MAX_GET_REQUEST_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

type RawBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
type RawSender = hyper::client::conn::http2::SendRequest<RawBody>;

/// An HTTP/2 connection that no gRPC library manages.
async fn raw_connection(addr: SocketAddr) -> RawSender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// The gRPC frame header declaring a message of `len` bytes.
fn frame_header(len: u32) -> Bytes {
    let mut header = vec![0u8];
    header.extend_from_slice(&len.to_be_bytes());
    Bytes::from(header)
}

/// The grpc-status and grpc-message a call ended with.
#[derive(Debug)]
struct Outcome {
    code: Code,
    message: String,
}

/// A unary call whose request body the test writes piece by piece.
struct RawCall {
    body: Option<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
    response: tokio::task::JoinHandle<Outcome>,
}

impl RawCall {
    fn start(sender: &mut RawSender, path: &str, grpc_timeout: Option<&str>) -> RawCall {
        let (body_tx, body_rx) = mpsc::channel(4);
        let mut request = http::Request::post(format!("http://tierkv{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let request = request
            .body(StreamBody::new(ReceiverStream::new(body_rx)))
            .unwrap();
        let sent = sender.send_request(request);
        let response = tokio::spawn(async move {
            use http_body_util::BodyExt;
            let response = match sent.await {
                Ok(response) => response,
                // The test dropped the connection of a call it gave up on.
                Err(error) => {
                    return Outcome {
                        code: Code::Unavailable,
                        message: error.to_string(),
                    }
                }
            };
            let (parts, body) = response.into_parts();
            let headers = if parts.headers.contains_key("grpc-status") {
                parts.headers
            } else {
                let collected = body.collect().await.expect("a body");
                collected.trailers().cloned().unwrap_or_default()
            };
            let field = |name: &str| {
                headers
                    .get(name)
                    .map(|value| value.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            Outcome {
                code: Code::from(field("grpc-status").parse::<i32>().expect("grpc-status")),
                message: field("grpc-message"),
            }
        });
        RawCall {
            body: Some(body_tx),
            response,
        }
    }

    /// Sends `data` (false if the server no longer reads the body).
    async fn send(&mut self, data: Bytes) -> bool {
        match &self.body {
            Some(body) => body.send(Ok(Frame::data(data))).await.is_ok(),
            None => false,
        }
    }

    /// Ends the request body.
    fn finish(&mut self) {
        self.body = None;
    }

    /// Waits for the outcome.
    async fn outcome(self) -> Outcome {
        self.response.await.unwrap()
    }
}

/// An encoded put of `key` with a bytes value of `len` bytes.
fn encoded_put(key: &str, len: usize) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::PutRequest {
        key: key.to_string(),
        value: Some(pb::put_request::Value::Bytes(vec![7u8; len])),
        ..Default::default()
    })
}

/// Polls `condition` every 10 ms, up to `tries` times.
async fn eventually(tries: usize, mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// A Get, Delete, List or BatchGet request has a small limit, checked on the
/// frame header before the body is read: a declared 20 KiB Get is refused
/// while its body is still open, naming the limit and the size.
#[tokio::test]
async fn small_methods_have_small_request_limits() {
    let mut server = start().await;
    let mut sender = raw_connection(server.server.addr).await;
    let declared = MAX_GET_REQUEST_BYTES as u32 + 4096;
    let mut call = RawCall::start(&mut sender, "/tierkv.v1.KvService/Get", None);
    assert!(call.send(frame_header(declared)).await);
    // The body stays open: the answer must not wait for it.
    let outcome = call.outcome().await;
    assert_eq!(outcome.code, Code::ResourceExhausted, "{outcome:?}");
    assert!(
        outcome.message.contains(&declared.to_string())
            && outcome.message.contains(&MAX_GET_REQUEST_BYTES.to_string()),
        "{outcome:?}"
    );
    assert_eq!(server.server.stats.request_memory().refused_too_large, 1);

    // Through the generated client: a 20 KiB key, refused by size.
    let error = server
        .client
        .get(get(&"k".repeat(20 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    // A key just over the key limit still gets validation's precise message.
    let error = server.client.get(get(&"k".repeat(600))).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    for (path, limit) in [
        (
            "Delete",
            tierkv::server::message_limits::MAX_DELETE_REQUEST_BYTES,
        ),
        (
            "List",
            tierkv::server::message_limits::MAX_LIST_REQUEST_BYTES,
        ),
        (
            "BatchGet",
            tierkv::server::message_limits::MAX_BATCH_GET_REQUEST_BYTES,
        ),
    ] {
        let mut call = RawCall::start(&mut sender, &format!("/tierkv.v1.KvService/{path}"), None);
        assert!(call.send(frame_header(limit as u32 + 1)).await);
        let outcome = call.outcome().await;
        assert_eq!(outcome.code, Code::ResourceExhausted, "{path}: {outcome:?}");
        assert!(outcome.message.contains(&limit.to_string()), "{outcome:?}");
    }
    // Writes keep room for the largest value.
    server
        .client
        .put(pb::PutRequest {
            key: "big".into(),
            value: Some(pb::put_request::Value::Bytes(vec![1; MAX_VALUE_BYTES])),
            ..Default::default()
        })
        .await
        .unwrap();
    server.stop().await;
}

/// Stalled uploads hold at most the request memory budget: with a 104 MiB
/// budget, two 50 MiB uploads that stall get their reservations, the other
/// four wait briefly and get RESOURCE_EXHAUSTED; when the stalled ones go
/// away, the budget is free again.
#[tokio::test]
async fn stalled_uploads_are_bounded_by_the_request_budget() {
    let server = start_with(|config| {
        config.request_memory_mb = 104;
        config.request_memory_wait_ms = 200;
    })
    .await;
    let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
    let declared = 50 * 1024 * 1024;
    let mut uploads = Vec::new();
    for _ in 0..6 {
        let mut sender = raw_connection(server.server.addr).await;
        let mut call = RawCall::start(&mut sender, "/tierkv.v1.KvService/Put", None);
        call.send(frame_header(declared)).await;
        call.send(chunk.clone()).await;
        uploads.push((sender, call));
    }
    let stats = server.server.stats.clone();
    assert!(
        eventually(1000, || stats.request_memory().refused_busy == 4).await,
        "{:?}",
        stats.request_memory()
    );
    let memory = stats.request_memory();
    assert_eq!(memory.in_flight, 2 * declared as usize, "{memory:?}");
    assert!(memory.peak_in_flight <= memory.capacity, "{memory:?}");
    // The server counts a refusal before its answer reaches the client.
    let answered = |uploads: &[(_, RawCall)]| {
        uploads
            .iter()
            .filter(|(_, call)| call.response.is_finished())
            .count()
    };
    assert!(eventually(1000, || answered(&uploads) == 4).await);
    let mut refused = 0;
    let mut stalled = Vec::new();
    for (sender, call) in uploads {
        if call.response.is_finished() {
            let outcome = call.outcome().await;
            assert_eq!(outcome.code, Code::ResourceExhausted, "{outcome:?}");
            assert!(outcome.message.contains("busy"), "{outcome:?}");
            refused += 1;
        } else {
            stalled.push((sender, call));
        }
    }
    assert_eq!((refused, stalled.len()), (4, 2));

    // Clients that give up release their reservations.
    for (sender, call) in stalled {
        call.response.abort();
        drop(sender);
    }
    assert!(
        eventually(1000, || stats.request_memory().in_flight == 0).await,
        "{:?}",
        stats.request_memory()
    );
    let mut client = server.client.clone();
    client.put(put_text("after", "v")).await.unwrap();
    server.stop().await;
}

/// The server advertises its stream limit in its HTTP/2 settings.
#[tokio::test]
async fn streams_per_connection_are_bounded_and_advertised() {
    let server = start_with(|config| config.max_concurrent_streams = 7).await;
    let stream = TcpStream::connect(server.server.addr).await.unwrap();
    let (_client, mut connection) = h2::client::handshake(stream).await.unwrap();
    let mut advertised = usize::MAX;
    for _ in 0..500 {
        // Drive the connection until the server's SETTINGS are processed.
        let _ = tokio::time::timeout(Duration::from_millis(10), &mut connection).await;
        advertised = connection.max_concurrent_send_streams();
        if advertised != usize::MAX {
            break;
        }
    }
    assert_eq!(advertised, 7);
    server.stop().await;
}

/// Connections that never complete the HTTP/2 preface are closed after the
/// handshake timeout; a client that did is not affected by it.
#[tokio::test]
async fn connections_without_a_preface_are_closed() {
    let mut server = start_with(|config| config.handshake_timeout_ms = 300).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(server.server.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(server.server.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0").await.unwrap();
    silent.push(partial);
    let started = Instant::now();
    for mut stream in silent {
        let mut buf = [0u8; 256];
        // The server may have sent its SETTINGS; read until it closes.
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                .await
                .expect("the server closes the connection")
            {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    let stats = server.server.stats.clone();
    assert!(eventually(500, || stats.connections().handshake_timeouts == 5).await);
    // The test client connected before and idled past the timeout: still fine.
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.client.put(put_text("still", "here")).await.unwrap();
    assert!(
        eventually(500, || stats.connections().open == 1).await,
        "{:?}",
        stats.connections()
    );
    server.stop().await;
}

/// At the connection limit, new connections are closed at once and counted;
/// when one closes, there is room again.
#[tokio::test]
async fn the_connection_limit_holds() {
    let server = start_with(|config| config.max_connections = 4).await;
    let stats = server.server.stats.clone();
    // The test server's own client holds one connection.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = connect(&server.server.endpoint()).await;
        client.put(put_text("k", "v")).await.unwrap();
        clients.push(client);
    }
    assert_eq!(stats.connections().open, 4);
    for _ in 0..3 {
        let mut extra = TcpStream::connect(server.server.addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), extra.read(&mut buf))
            .await
            .expect("an over-limit connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let counts = stats.connections();
    assert_eq!(
        (counts.open, counts.peak_open, counts.refused),
        (4, 4, 3),
        "{counts:?}"
    );

    drop(clients.pop());
    assert!(eventually(500, || stats.connections().open == 3).await);
    let mut late = connect(&server.server.endpoint()).await;
    late.put(put_text("late", "v")).await.unwrap();
    assert_eq!(stats.connections().peak_open, 4);
    server.stop().await;
}

/// A deadline that fires while the request body is still arriving answers
/// DEADLINE_EXCEEDED (not CANCELLED) and applies nothing; so does the
/// server's own request timeout.
#[tokio::test]
async fn a_deadline_firing_mid_request_is_deadline_exceeded() {
    let mut server = start_with(|config| config.request_timeout_ms = 400).await;
    let message = encoded_put("slow", 1024 * 1024);
    for (grpc_timeout, key_wait) in [(Some("300m"), 300), (None, 400)] {
        let mut sender = raw_connection(server.server.addr).await;
        let mut call = RawCall::start(&mut sender, "/tierkv.v1.KvService/Put", grpc_timeout);
        let started = Instant::now();
        assert!(call.send(frame_header(message.len() as u32)).await);
        assert!(
            call.send(Bytes::copy_from_slice(&message[..64 * 1024]))
                .await
        );
        let outcome = call.outcome().await;
        assert_eq!(outcome.code, Code::DeadlineExceeded, "{outcome:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(key_wait - 50),
            "answered after {:?}",
            started.elapsed()
        );
    }
    assert!(!exists(&mut server.client, "slow").await);
    server.stop().await;
}

/// Shutdown: health turns NOT_SERVING at once, calls are still served during
/// the delay, then new connections are refused while a call in flight (an
/// upload still arriving) completes and is durable.
#[tokio::test]
async fn an_in_flight_call_completes_during_the_drain() {
    let test = start_with(|config| {
        config.shutdown_delay_ms = 1_000;
        config.shutdown_grace_ms = 30_000;
    })
    .await;
    let TestServer {
        server,
        clock,
        config,
        mut client,
        ..
    } = test;
    let addr = server.addr;
    let stats = server.stats.clone();
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "tierkv.v1.KvService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let message = encoded_put("drained", 256 * 1024);
    let mut sender = raw_connection(addr).await;
    let mut upload = RawCall::start(&mut sender, "/tierkv.v1.KvService/Put", None);
    assert!(upload.send(frame_header(message.len() as u32)).await);
    assert!(upload.send(Bytes::copy_from_slice(&message[..1024])).await);
    // (The health watch answered already: its stream is not a call in flight.)
    assert!(eventually(500, || stats.calls_in_flight() == 1).await);

    let stopping = tokio::spawn(server.stop());
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // During the delay, calls are still served.
    client.put(put_text("during-delay", "v")).await.unwrap();

    // After the delay the listener closes: new connections are refused.
    let mut refused = false;
    for _ in 0..3000 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "new connections are refused once the drain starts");
    assert!(
        !stopping.is_finished(),
        "the in-flight upload holds the drain"
    );

    assert!(upload.send(Bytes::copy_from_slice(&message[1024..])).await);
    upload.finish();
    let outcome = upload.outcome().await;
    assert_eq!(outcome.code, Code::Ok, "{outcome:?}");
    drop(watch);
    drop(health);
    drop(client);
    drop(sender);
    stopping.await.unwrap().expect("clean stop");

    // Flushed and durable: a new server on the same directory has both.
    let clock: tierkv::clock::SharedClock = clock;
    let restarted = tierkv::server::RunningServer::start(config, clock)
        .await
        .unwrap();
    let mut client = connect(&restarted.endpoint()).await;
    assert!(exists(&mut client, "drained").await);
    assert!(exists(&mut client, "during-delay").await);
    drop(client);
    restarted.stop().await.unwrap();
}

/// At the descriptor limit, accept fails; the server backs off and says so
/// instead of spinning, and serves again once descriptors are free.
#[tokio::test]
async fn accept_failure_at_the_descriptor_limit_does_not_spin() {
    use std::os::unix::process::CommandExt;
    const DESCRIPTORS: libc::rlim_t = 128;
    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    command
        .env("TIERKV_MAX_CONNECTIONS", "1000")
        .env("TIERKV_HANDSHAKE_TIMEOUT_MS", "600000");
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: DESCRIPTORS,
                rlim_max: DESCRIPTORS,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = spawn_server(command);
    let pid = server.pid();
    let before = open_descriptors(pid);
    assert!(
        before < DESCRIPTORS as usize / 2,
        "{before} descriptors at start"
    );
    // Fill every free descriptor, plus a few connections left in the backlog.
    let mut held = Vec::new();
    for _ in 0..(DESCRIPTORS as usize - before + 8) {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let logged = |server: &ServerProcess| server.logs().contains("accepting a connection failed");
    for _ in 0..1000 {
        if logged(&server) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(logged(&server), "{}", server.logs());
    let ticks_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    // Spinning would burn ~200 ticks (100 per second); back-off burns ~none.
    assert!(
        ticks < 40,
        "{ticks} CPU ticks in 2 s at the descriptor limit"
    );
    // Every descriptor number under the limit was in use while we measured
    // (descriptors inherited above it, like a jobserver pipe, do not count).
    let under_limit = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|fd| *fd < DESCRIPTORS)
        .count();
    assert_eq!(under_limit, DESCRIPTORS as usize);

    drop(held);
    let mut client = None;
    for _ in 0..500 {
        if let Ok(Ok(channel)) = tokio::time::timeout(
            Duration::from_secs(2),
            tonic::transport::Endpoint::from_shared(server.endpoint())
                .unwrap()
                .connect(),
        )
        .await
        {
            client = Some(KvServiceClient::new(channel));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = client.expect("the server accepts again");
    client.put(put_text("recovered", "v")).await.unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// After a burst of concurrent 25 MiB puts, the real binary's resident
/// memory returns near where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_near_baseline_after_a_burst() {
    const PUTS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(server_command(dir.path()));
    let pid = server.pid();
    let client = connect(&server.endpoint()).await;
    let mut warm = client.clone();
    warm.put(put_text("warm", "v")).await.unwrap();
    let baseline = status_kb(pid, "VmRSS");

    let value = vec![42u8; MAX_VALUE_BYTES];
    let mut puts = Vec::new();
    for n in 0..PUTS {
        let mut client = client.clone();
        let request = pb::PutRequest {
            key: format!("burst:{n}"),
            value: Some(pb::put_request::Value::Bytes(value.clone())),
            ..Default::default()
        };
        puts.push(tokio::spawn(async move { client.put(request).await }));
    }
    drop(value);
    for put in puts {
        put.await.unwrap().unwrap();
    }
    let peak = status_kb(pid, "VmHWM");
    let mut samples = Vec::new();
    let mut settled = status_kb(pid, "VmRSS");
    for _ in 0..60 {
        samples.push(settled / 1024);
        if settled <= baseline + 128 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        settled = status_kb(pid, "VmRSS");
    }
    let summary = format!(
        "baseline {} MiB, peak {} MiB, after {} MiB (samples {samples:?} MiB)",
        baseline / 1024,
        peak / 1024,
        settled / 1024
    );
    eprintln!("{summary}");
    assert!(
        peak > baseline + 200 * 1024,
        "the burst was felt: {summary}"
    );
    assert!(settled <= baseline + 128 * 1024, "{summary}");
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Twenty clients each upload 50 MiB and stall one byte before the end. With
/// a 104 MiB request budget, the real binary's peak memory stays near two
/// uploads' worth; without the budget it held all of them (over 1 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_bounded_memory_in_the_binary() {
    const UPLOADS: usize = 20;
    const DECLARED: usize = 50 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    command
        .env("TIERKV_REQUEST_MEMORY_MB", "104")
        .env("TIERKV_REQUEST_MEMORY_WAIT_MS", "100");
    let mut server = spawn_server(command);
    let pid = server.pid();
    let mut warm = connect(&server.endpoint()).await;
    warm.put(put_text("warm", "v")).await.unwrap();
    let baseline = status_kb(pid, "VmHWM");

    let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
    let mut uploads = Vec::new();
    for _ in 0..UPLOADS {
        let mut sender = raw_connection(server.addr).await;
        let mut call = RawCall::start(&mut sender, "/tierkv.v1.KvService/Put", None);
        let chunk = chunk.clone();
        uploads.push(tokio::spawn(async move {
            let mut sent = 0;
            let mut open = call.send(frame_header(DECLARED as u32)).await;
            while open && sent + chunk.len() < DECLARED {
                open = call.send(chunk.clone()).await;
                sent += chunk.len();
            }
            if open {
                call.send(chunk.slice(..DECLARED - sent - 1)).await;
            }
            // Stalled: the last byte never comes; keep the connection.
            (sender, call)
        }));
    }
    let mut sent = Vec::new();
    for upload in uploads {
        sent.push(upload.await.unwrap());
    }
    // Refusals are counted by the server before their answers reach us: wait
    // (a bounded time) until all but the two that fit have been answered.
    let started = std::time::Instant::now();
    while sent
        .iter()
        .filter(|(_, call)| call.response.is_finished())
        .count()
        < UPLOADS - 2
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut stalled = Vec::new();
    let mut refused = 0;
    for (sender, call) in sent {
        if call.response.is_finished() {
            let outcome = call.outcome().await;
            assert_eq!(outcome.code, Code::ResourceExhausted, "{outcome:?}");
            refused += 1;
        } else {
            stalled.push((sender, call));
        }
    }
    let peak = status_kb(pid, "VmHWM");
    let summary = format!(
        "{UPLOADS} stalled 50 MiB uploads: {refused} refused, {} held; peak {} MiB over a baseline peak of {} MiB",
        stalled.len(),
        peak / 1024,
        baseline / 1024
    );
    eprintln!("{summary}");
    assert!(stalled.len() <= 2, "{summary}");
    assert!(peak <= baseline + 320 * 1024, "{summary}");
    drop(stalled);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// With `max_connection_age_secs`, the server ends a connection gracefully
/// (GOAWAY) once it is that old, so long-lived clients reconnect and spread
/// over new pods; without it, an idle connection stays open.
#[tokio::test]
async fn connections_are_closed_gracefully_at_their_maximum_age() {
    async fn connection_lifetime(addr: SocketAddr) -> Option<Duration> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (_sender, connection) =
            hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
        let opened = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), connection)
            .await
            .ok()
            .map(|_| opened.elapsed())
    }

    let aged = start_with(|config| {
        config.max_connection_age_secs = 1;
        config.max_connection_age_grace_secs = 1;
    })
    .await;
    let lifetime = connection_lifetime(aged.server.addr)
        .await
        .expect("the server closed the connection");
    assert!(lifetime >= Duration::from_millis(900), "{lifetime:?}");
    aged.stop().await;

    let unaged = start().await;
    assert_eq!(connection_lifetime(unaged.server.addr).await, None);
    unaged.stop().await;
}

/// A connection past its maximum age whose call is still running gets the
/// grace period after its GOAWAY, then is closed: a call that never ends
/// cannot keep an aged connection open for ever.
#[tokio::test]
async fn an_aged_connection_still_busy_after_its_grace_is_closed() {
    let server = start_with(|config| {
        config.max_connection_age_secs = 1;
        config.max_connection_age_grace_secs = 1;
    })
    .await;
    // The write waits on the paused writer for as long as the test likes.
    let pause = server.rocks().pause_writer();
    let mut client = connect(&server.server.endpoint()).await;
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        client.put(put_text("user:stuck", "v")),
    )
    .await
    .expect("the connection was closed within 10 s")
    .expect_err("the connection closes under the call");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_secs(10),
        "closed after {took:?}: {status:?}"
    );
    drop(pause);
    server.stop().await;
}

/// What is not HTTP/2 gets its connection closed at once, whatever it is (an
/// HTTP/1.1 request, a preface followed by garbage, a frame far over the
/// size limit), and the server goes on serving everyone else.
#[tokio::test]
async fn connections_speaking_something_else_are_closed_and_the_server_serves_on() {
    let mut server = start().await;
    let mut huge_frame = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // A HEADERS frame declaring 16 MiB - 1 bytes, over the 16 KiB frame limit.
    huge_frame.extend_from_slice(&[0xff, 0xff, 0xff, 0x1, 0x4, 0, 0, 0, 1]);
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: tierkv\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage!".to_vec(),
        (0..4096u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        huge_frame,
    ];
    for input in inputs {
        let mut stream = TcpStream::connect(server.server.addr).await.unwrap();
        stream.write_all(&input).await.unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("the server closes the connection")
            {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    server
        .client
        .put(put_text("still", "serving"))
        .await
        .unwrap();
    assert!(exists(&mut server.client, "still").await);
    server.stop().await;
}
