//! Replies waiting for slow clients are bounded in memory: the real binary,
//! clients that advertise a 1-byte HTTP/2 window and never read, and the
//! server process's peak memory (`VmHWM`) read from `/proc`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::process::*;
use common::*;
use tierkv::proto::v1 as pb;

/// Values per `BatchGet`, and their size: each reply is about 32 MiB.
const VALUES: usize = 4;
const VALUE_BYTES: usize = 8 * 1024 * 1024;
/// Connections that each send one `BatchGet` and never read the reply.
const CLIENTS: usize = 20;
/// The response memory budget the server runs with (the smallest accepted).
const RESPONSE_MEMORY_MB: u64 = 104;
/// The send timeout the server runs with.
const SEND_TIMEOUT_MS: u64 = 5_000;

/// One gRPC message frame.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    Bytes::from(frame)
}

/// A call on its own connection whose client advertises a 1-byte stream
/// window and reads nothing; kept alive by holding it.
struct Unread {
    _connection: tokio::task::JoinHandle<()>,
    _client: h2::client::SendRequest<Bytes>,
    /// The response, once its headers came.
    response: http::Response<h2::RecvStream>,
}

async fn unread_batch_get(addr: std::net::SocketAddr, keys: &[String]) -> Unread {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/tierkv.v1.KvService/BatchGet"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(
        grpc_frame(&pb::BatchGetRequest {
            keys: keys.to_vec(),
            ..Default::default()
        }),
        true,
    )
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("response headers in time")
        .unwrap();
    Unread {
        _connection: connection,
        _client: client,
        response,
    }
}

/// The value of an unlabelled metric in a Prometheus scrape.
fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

async fn scrape(metrics: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The metrics address the server logged when it started serving.
fn metrics_addr(server: &ServerProcess) -> std::net::SocketAddr {
    let logs = server.logs();
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|json| json["message"] == "serving")
        .and_then(|json| json["metrics_addr"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {logs}"))
}

/// Twenty connections each ask for a 32 MiB `BatchGet` reply with a 1-byte
/// window and never read it. Without a bound the server keeps every reply
/// (measured before the fix: +757 MiB of peak memory here, and it stays for
/// as long as the clients wait); with `response_memory_mb = 104` it keeps at
/// most three (the rest are answered RESOURCE_EXHAUSTED), so its peak grows
/// by no more than the budget plus the reply being built. Unsent replies
/// are dropped after `response_send_timeout_ms` with their streams reset
/// (RST_STREAM CANCEL), which releases the budget, and the server answers
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_clients_that_never_read_are_bounded_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    command
        .env("TIERKV_RESPONSE_MEMORY_MB", RESPONSE_MEMORY_MB.to_string())
        .env(
            "TIERKV_RESPONSE_SEND_TIMEOUT_MS",
            SEND_TIMEOUT_MS.to_string(),
        );
    let mut server = spawn_server(command);
    let pid = server.pid();
    let mut client = connect(&server.endpoint()).await;
    let keys: Vec<String> = (0..VALUES).map(|i| format!("big:{i}")).collect();
    for key in &keys {
        client
            .put(pb::PutRequest {
                key: key.clone(),
                value: Some(pb::put_request::Value::Bytes(vec![b'v'; VALUE_BYTES])),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // One reply read normally first, so building one is in the baseline.
    let read = client
        .batch_get(pb::BatchGetRequest {
            keys: keys.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.results.len(), VALUES);
    drop(read);
    let baseline_kb = status_kb(pid, "VmHWM");

    // One after the other: each reply is built and waiting before the next
    // call comes, so what the server holds is what it keeps, not a burst.
    let mut unread = Vec::new();
    let mut refused_at_once = 0;
    for _ in 0..CLIENTS {
        let call = unread_batch_get(server.addr, &keys).await;
        if call.response.headers().get("grpc-status").is_some() {
            // Trailers-only: refused before the reply was built.
            assert_eq!(call.response.headers()["grpc-status"], "8");
            refused_at_once += 1;
        }
        unread.push(call);
        // Give the server the moment it takes to hand the reply to HTTP/2.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let growth_mib = status_kb(pid, "VmHWM").saturating_sub(baseline_kb) / 1024;
    let reply_mib = (VALUES * VALUE_BYTES) as u64 >> 20;
    // The budget, plus a reply being built (its values read, then encoded:
    // twice its size) and as much again for the allocator's slack.
    let bound_mib = RESPONSE_MEMORY_MB + 4 * reply_mib;
    eprintln!(
        "peak memory grew by {growth_mib} MiB for {CLIENTS} unread {reply_mib} MiB replies \
         (bound {bound_mib} MiB; {refused_at_once} refused before being built)"
    );
    assert!(
        growth_mib < bound_mib,
        "peak memory grew by {growth_mib} MiB; the budget allows {bound_mib} MiB"
    );

    // Every call not refused at once either holds its reply (and gets its
    // first byte) or was refused in its trailers when the reply did not fit;
    // the held ones are reset once the send timeout passes.
    let mut reset = 0;
    let mut refused_late = 0;
    for call in &mut unread {
        if call.response.headers().get("grpc-status").is_some() {
            continue;
        }
        let body = call.response.body_mut();
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match body.data().await {
                    // Not released: the window stays shut.
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error),
                    None => return Ok(body.trailers().await),
                }
            }
        })
        .await
        .expect("the server ends every unread call within the send timeout");
        match outcome {
            Err(error) => {
                assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error}");
                reset += 1;
            }
            Ok(trailers) => {
                let trailers = trailers.unwrap().expect("trailers");
                assert_eq!(trailers["grpc-status"], "8", "{trailers:?}");
                refused_late += 1;
            }
        }
    }
    eprintln!("{reset} replies reset after the send timeout, {refused_late} refused in trailers");
    assert!(reset >= 1, "no reply was held and reset");
    assert!(
        refused_at_once + refused_late >= 1,
        "no call was refused for lack of response memory"
    );

    let metrics = metrics_addr(&server);
    let scrape = scrape(metrics).await;
    assert_eq!(
        metric(&scrape, "tierkv_response_memory_unsent_bytes"),
        Some(0.0),
        "{scrape}"
    );
    assert!(metric(&scrape, "tierkv_responses_send_timeouts_total").unwrap() >= reset as f64);
    assert!(
        metric(&scrape, "tierkv_responses_refused_memory_total").unwrap()
            >= (refused_at_once + refused_late) as f64
    );
    // The budget is free again: a reply is built and read.
    let read = client
        .batch_get(pb::BatchGetRequest {
            keys: keys.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.results.len(), VALUES);
    drop(unread);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
