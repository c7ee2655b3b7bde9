//! The typed client of the `tierkv-client` crate against the real server:
//! connecting over TLS with a bearer token, retrying UNAVAILABLE until the
//! server is up, retrying RESOURCE_EXHAUSTED after the server's RetryInfo
//! delay, never retrying INVALID_ARGUMENT, and deadlines that end in
//! DEADLINE_EXCEEDED whichever side notices.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pki::TestCa;
use common::*;
use tierkv::auth::{hash_token, AuthConfig, Permission, TokenConfig};
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::proto::v1 as pb;
use tierkv::server::RunningServer;
use tierkv_client::retry::{self, RetryPolicy};
use tierkv_client::{deadline, Client, ConnectOptions};
use tonic::Code;

const TOKEN: &str = "tkv_client-crate-secret-0123456789";

/// A policy whose waits are short but real.
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(1),
    }
}

/// An address nothing listens on (yet).
fn free_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Over TLS verified with the test CA and with a bearer token, calls work;
/// the same connection without the token is refused.
#[tokio::test]
async fn connects_over_tls_with_a_bearer_token() {
    let ca = TestCa::new("tierkv-client-test");
    let issued = ca.server("server");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.tls.cert_file = Some(issued.cert_file.clone());
    config.tls.key_file = Some(issued.key_file.clone());
    config.auth = AuthConfig {
        tokens: vec![TokenConfig {
            name: "client-crate".into(),
            token_sha256: hash_token(TOKEN),
            token_sha256_file: None,
            prefixes: vec!["user:".into()],
            permissions: vec![Permission::Read, Permission::Write],
        }],
    };
    let clock: SharedClock = ManualClock::starting_now();
    let server = RunningServer::start(config, clock).await.unwrap();
    let endpoint = format!("https://localhost:{}", server.addr.port());
    let ca_pem = std::fs::read(&ca.cert_file).unwrap();

    let options = ConnectOptions::new(&endpoint)
        .with_ca_pem(ca_pem.clone())
        .with_token(format!("{TOKEN}\n"));
    assert!(
        !format!("{options:?}").contains(TOKEN),
        "the token is never printed"
    );
    let client = Client::connect(options).await.unwrap();
    let version = client
        .kv()
        .put(put_text("user:tls", "v"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(version > 0);

    let anonymous = Client::connect(ConnectOptions::new(&endpoint).with_ca_pem(ca_pem))
        .await
        .unwrap();
    let refused = anonymous.kv().get(get("user:tls")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // TLS options on a plaintext endpoint are a mistake, not ignored.
    let plaintext =
        ConnectOptions::new(format!("http://{}", server.addr)).with_ca_pem(b"x".to_vec());
    assert!(Client::connect(plaintext).await.is_err());
    server.stop().await.unwrap();
}

/// A lazily connected client retries UNAVAILABLE (nothing listens yet) and
/// succeeds once the server is up.
#[tokio::test]
async fn retries_unavailable_until_the_server_is_up() {
    let addr = free_address();
    let client = Client::connect_lazy(ConnectOptions::new(format!("http://{addr}"))).unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let server: Arc<tokio::sync::Mutex<Option<RunningServer>>> = Arc::default();
    let codes = Arc::new(Mutex::new(Vec::new()));

    let result = quick_policy()
        .run(|attempt| {
            let (client, dir, server, codes) =
                (client.clone(), dir.clone(), server.clone(), codes.clone());
            async move {
                if attempt == 1 {
                    // The server comes up between the first attempt and the second.
                    let mut config = test_config(&dir);
                    config.listen = addr;
                    let clock: SharedClock = ManualClock::starting_now();
                    *server.lock().await = Some(RunningServer::start(config, clock).await.unwrap());
                }
                let result = client.kv().get(get("user:any")).await;
                codes.lock().unwrap().push(match &result {
                    Ok(_) => Code::Ok,
                    Err(status) => status.code(),
                });
                result
            }
        })
        .await;
    assert!(!result.unwrap().into_inner().found);
    assert_eq!(*codes.lock().unwrap(), [Code::Unavailable, Code::Ok]);
    let server = server.lock().await.take().unwrap();
    server.stop().await.unwrap();
}

/// A call shed with RESOURCE_EXHAUSTED and a RetryInfo is retried, no sooner
/// than the delay the server asked for; it succeeds once there is room.
#[tokio::test]
async fn retries_resource_exhausted_after_the_retry_info_delay() {
    let server = start_with(|config| config.max_calls_in_flight = 1).await;
    let pause = Arc::new(Mutex::new(Some(server.rocks().pause_writer())));
    // A put held by the paused writer takes the only slot.
    let mut holder = server.client.clone();
    let held = tokio::spawn(async move { holder.put(put_text("user:held", "v")).await });
    while server.server.stats.calls_in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let client = Client::from_channel(
        ConnectOptions::new(server.server.endpoint())
            .connect()
            .await
            .unwrap(),
    );
    let failures = Arc::new(Mutex::new(Vec::new()));
    let starts = Arc::new(Mutex::new(Vec::new()));
    let result = quick_policy()
        .run(|attempt| {
            starts.lock().unwrap().push(Instant::now());
            let (client, pause, failures) = (client.clone(), pause.clone(), failures.clone());
            let stats = server.server.stats.clone();
            async move {
                if attempt == 1 {
                    // Room again: the held put completes.
                    drop(pause.lock().unwrap().take());
                    while stats.calls_in_flight() > 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                let result = client.kv().get(get("user:held")).await;
                if let Err(status) = &result {
                    failures
                        .lock()
                        .unwrap()
                        .push((status.clone(), Instant::now()));
                }
                result
            }
        })
        .await;
    assert!(result.unwrap().into_inner().found);
    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (status, failed_at) = &failures[0];
    let retried_at = starts.lock().unwrap()[1];
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let asked = retry::retry_delay(status).expect("the server sends a RetryInfo");
    assert!(
        retried_at - *failed_at >= asked,
        "retried after {:?}, the server asked for {asked:?}",
        retried_at - *failed_at
    );
    held.await.unwrap().unwrap();
    server.stop().await;
}

/// INVALID_ARGUMENT is the answer: one attempt, no retry.
#[tokio::test]
async fn does_not_retry_invalid_argument() {
    let server = start().await;
    let client = Client::connect(ConnectOptions::new(server.server.endpoint()))
        .await
        .unwrap();
    let attempts = Arc::new(Mutex::new(0));
    let result = quick_policy()
        .run(|_| {
            let (client, attempts) = (client.clone(), attempts.clone());
            async move {
                *attempts.lock().unwrap() += 1;
                client.kv().put(put_text("", "v")).await
            }
        })
        .await;
    assert_eq!(result.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(*attempts.lock().unwrap(), 1);
    server.stop().await;
}

/// A call that cannot finish in time ends in DEADLINE_EXCEEDED, whether the
/// server answers so (a write held by the paused writer) or the server never
/// answers at all (a peer that accepts and stays silent: tonic alone would
/// say CANCELLED).
#[tokio::test]
async fn deadlines_end_in_deadline_exceeded() {
    let server = start().await;
    let client = Client::connect(ConnectOptions::new(server.server.endpoint()))
        .await
        .unwrap();
    let pause = server.rocks().pause_writer();
    let mut kv = client.kv();
    let started = Instant::now();
    let held = deadline::call(
        Duration::from_millis(200),
        put_text("user:late", "v"),
        |request| kv.put(request),
    )
    .await;
    assert_eq!(held.unwrap_err().code(), Code::DeadlineExceeded);
    assert!(started.elapsed() >= Duration::from_millis(150));
    drop(pause);

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_client = Client::connect(ConnectOptions::new(format!(
        "http://{}",
        silent.local_addr().unwrap()
    )))
    .await
    .unwrap();
    let mut kv = silent_client.kv();
    let unanswered = deadline::call(Duration::from_millis(200), get("user:any"), |request| {
        kv.get(request)
    })
    .await;
    assert_eq!(unanswered.unwrap_err().code(), Code::DeadlineExceeded);

    // Within the deadline, the answer is the call's own.
    let mut kv = client.kv();
    let found = deadline::call(
        Duration::from_secs(10),
        pb::GetRequest {
            key: "user:any".into(),
            ..Default::default()
        },
        |request| kv.get(request),
    )
    .await
    .unwrap();
    assert!(!found.into_inner().found);
    server.stop().await;
}
