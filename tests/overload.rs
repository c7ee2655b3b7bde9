//! Load shedding: over `max_calls_in_flight`, calls are refused at once with
//! RESOURCE_EXHAUSTED (ErrorInfo OVERLOADED, a RetryInfo hint), across
//! connections; health checks still answer; the admitted calls complete; and
//! the shed calls are counted. Health Watch and reflection streams, open to
//! everyone, are shed like calls and bounded per connection while open.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

#[tokio::test]
async fn calls_over_the_limit_are_shed_at_once_and_admitted_ones_complete() {
    const LIMIT: usize = 4;
    let server = start_with(|config| config.max_calls_in_flight = LIMIT).await;
    let engine = server.rocks().clone();

    // Writes hang while the writer is paused: each holds a slot.
    let pause = engine.pause_writer();
    let mut admitted = Vec::new();
    for i in 0..LIMIT {
        // Separate connections: the limit is global, not per connection.
        let mut client = connect(&server.server.endpoint()).await;
        admitted.push(tokio::spawn(async move {
            client.put(put_text(&format!("user:slow{i}"), "v")).await
        }));
    }
    while server.server.stats.calls_in_flight() < LIMIT {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let mut extra = connect(&server.server.endpoint()).await;
    let started = Instant::now();
    let status = extra.get(get("user:any")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_calls_in_flight"),
        "{status:?}"
    );
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "OVERLOADED");
    assert!(details.retry_info().unwrap().retry_delay.is_some());
    // Generous for a debug build on a busy machine; the benchmark measures it.
    assert!(took < Duration::from_millis(500), "shedding took {took:?}");
    assert_eq!(server.server.stats.calls_shed(), 1);

    // Probes are never shed.
    let health = HealthClient::new(extra_channel(&server).await)
        .check(HealthCheckRequest {
            service: "tierkv.v1.KvService".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);

    drop(pause);
    for call in admitted {
        call.await.unwrap().expect("admitted calls complete");
    }
    // Room again once they are done.
    extra.get(get("user:slow0")).await.unwrap();
    server.stop().await;
}

async fn extra_channel(server: &TestServer) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(server.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A call counts against the limit from the moment the server reads it off
/// its connection, not from when its handler's task first runs. A burst
/// that arrives in one read is shed beyond the limit although every handler
/// here finishes at once: counted only when its task ran, each call would
/// find the previous one finished, all would be admitted, and the burst
/// would wait in the runtime's queue where no limit sees it.
#[tokio::test]
async fn a_burst_read_at_once_is_shed_beyond_the_limit() {
    const BURST: usize = 20;
    let server = start_with(|config| config.max_calls_in_flight = 1).await;
    let addr = server.server.addr;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    let message = prost::Message::encode_to_vec(&get("user:absent"));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let frame = bytes::Bytes::from(frame);
    // Queued without yielding: the client's connection task writes them all
    // at once when it next runs, and the server reads them together.
    let mut responses = Vec::new();
    for _ in 0..BURST {
        let request = http::Request::post(format!("http://{addr}/tierkv.v1.KvService/Get"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(frame.clone(), true).unwrap();
        responses.push(response);
    }
    let (mut admitted, mut shed) = (0, 0);
    for response in responses {
        let response = response.await.unwrap();
        let status = match response.headers().get("grpc-status") {
            // Trailers-only: the status is in the headers.
            Some(status) => status.clone(),
            None => {
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                body.trailers().await.unwrap().unwrap()["grpc-status"].clone()
            }
        };
        match status.to_str().unwrap() {
            "0" => admitted += 1,
            "8" => shed += 1,
            other => panic!("unexpected grpc-status {other}"),
        }
    }
    assert!(admitted >= 1, "admitted {admitted}, shed {shed}");
    assert!(
        shed >= 1,
        "admitted {admitted}, shed {shed}: the burst was not seen"
    );
    assert_eq!(server.server.stats.calls_shed(), shed as u64);
    server.stop().await;
}

/// Writes one HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK literal header field without indexing, with a new name.
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut field = vec![0u8, name.len() as u8];
    field.extend_from_slice(name.as_bytes());
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

/// Shed calls end their streams cleanly even when the request body arrives
/// after the refusal (a client writes headers and body separately): the
/// server reads and drops the body instead of resetting the stream. With
/// resets, the DATA frames already on their way arrive for streams the server
/// has forgotten (it remembers 50 resets); each is a protocol error, and
/// after 1024 of them the server closes the whole connection with GOAWAY,
/// failing the admitted calls on it too. Frames are written by hand so the
/// body reliably arrives after the refusal.
#[tokio::test]
async fn shed_calls_whose_body_comes_later_do_not_reset_or_break_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ROUNDS: u32 = 8;
    const STREAMS_PER_ROUND: u32 = 200;

    let server = start_with(|config| config.max_calls_in_flight = 1).await;
    let addr = server.server.addr;
    // One slow write holds the only slot.
    let pause = server.rocks().pause_writer();
    let mut holder = connect(&server.server.endpoint()).await;
    let held = tokio::spawn(async move { holder.put(put_text("user:held", "v")).await });
    while server.server.stats.calls_in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Counts the frames the server sends: [RST_STREAM, GOAWAY, PING ACK].
    let counts = Arc::new(Mutex::new([0usize; 3]));
    let counting = Arc::clone(&counts);
    tokio::spawn(async move {
        let mut header = [0u8; 9];
        while reader.read_exact(&mut header).await.is_ok() {
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                break;
            }
            let mut counts = counting.lock().unwrap();
            match (header[3], header[4]) {
                (0x3, _) => counts[0] += 1,
                (0x7, _) => counts[1] += 1,
                (0x6, 0x1) => counts[2] += 1,
                _ => {}
            }
        }
    });
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(h2_frame(0x4, 0, 0, &[]));
    // Acknowledges the server's SETTINGS (sent or not yet: an ACK is harmless).
    preface.extend(h2_frame(0x4, 0x1, 0, &[]));
    writer.write_all(&preface).await.unwrap();

    let message = prost::Message::encode_to_vec(&get("user:absent"));
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path, literal with an indexed name
    block.push("/tierkv.v1.KvService/Get".len() as u8);
    block.extend_from_slice(b"/tierkv.v1.KvService/Get");
    block.extend(hpack_literal("content-type", "application/grpc"));
    block.extend(hpack_literal("te", "trailers"));

    let mut next_stream = 1u32;
    for _ in 0..ROUNDS {
        let first = next_stream;
        let mut headers = Vec::new();
        for _ in 0..STREAMS_PER_ROUND {
            headers.extend(h2_frame(0x1, 0x4, next_stream, &block));
            next_stream += 2;
        }
        writer.write_all(&headers).await.unwrap();
        // Every one is refused before its body is sent.
        let refused = server.server.stats.calls_shed() + u64::from(STREAMS_PER_ROUND);
        let started = Instant::now();
        while server.server.stats.calls_shed() < refused {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "shed {} of {refused}",
                server.server.stats.calls_shed()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut bodies = Vec::new();
        for stream in (first..next_stream).step_by(2) {
            bodies.extend(h2_frame(0x0, 0x1, stream, &body));
        }
        writer.write_all(&bodies).await.unwrap();
    }
    // A PING round trip: every frame written before it has been processed.
    writer
        .write_all(&h2_frame(0x6, 0, 0, &[0u8; 8]))
        .await
        .unwrap();
    let started = Instant::now();
    while counts.lock().unwrap()[2] == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no PING ACK");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let [resets, goaways, _] = *counts.lock().unwrap();
    assert_eq!(resets, 0, "shed streams were reset");
    assert_eq!(goaways, 0, "the connection was closed");

    drop(pause);
    held.await.unwrap().expect("the admitted call completes");
    drop(writer);
    server.stop().await;
}

/// A streaming call stops counting once its first message is out: a long
/// migration, which mostly waits on its pace, must not hold a slot (here the
/// only one) for its whole life.
#[tokio::test]
async fn a_long_stream_does_not_hold_its_slot() {
    let server = start_with(|config| {
        config.max_calls_in_flight = 1;
        config.migrations = vec![tierkv::migrate::MigrationStep {
            prefix: "user:".into(),
            from: 1,
            to: 2,
            patch: r#"[{"op": "add", "path": "/v2", "value": true}]"#.into(),
        }];
    })
    .await;
    let mut client = server.client.clone();
    for n in 0..20 {
        let mut put = put_text(&format!("user:{n:02}"), "x");
        put.value = Some(tierkv::proto::v1::put_request::Value::Json(
            tierkv::api::convert::json_to_proto(serde_json::json!({ "n": n })),
        ));
        put.schema_version = 1;
        client.put(put).await.unwrap();
    }
    let mut admin = connect_admin(&server.server.endpoint()).await;
    // One record a second: about 20 s to finish.
    let mut progress = admin
        .migrate(tierkv::proto::v1::MigrateRequest {
            prefix: "user:".into(),
            batch_size: 1,
            max_records_per_second: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    progress
        .message()
        .await
        .unwrap()
        .expect("a first progress message");
    for _ in 0..5 {
        client
            .get(get("user:00"))
            .await
            .expect("admitted beside the stream");
    }
    assert_eq!(server.server.stats.calls_shed(), 0);
    drop(progress);
    server.stop().await;
}

/// A health Watch on `channel`, open once its first status (SERVING) is in.
async fn open_watch(
    channel: &tonic::transport::Channel,
    service: &str,
) -> Result<tonic::Streaming<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut stream = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    let first = stream.message().await?.expect("a first status");
    assert_eq!(first.status, 1, "SERVING");
    Ok(stream)
}

/// An open reflection stream: its request side and its responses.
type ReflectionStream = (
    tokio::sync::mpsc::Sender<tonic_reflection::pb::v1::ServerReflectionRequest>,
    tonic::Streaming<tonic_reflection::pb::v1::ServerReflectionResponse>,
);

/// A reflection stream on `channel` that listed the services and stays open
/// (its request stream too) until both returned halves are dropped.
async fn open_reflection(
    channel: &tonic::transport::Channel,
) -> Result<ReflectionStream, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    requests
        .send(tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .await
        .unwrap();
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let first = responses.message().await?.expect("a listing");
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => assert!(
            list.service
                .iter()
                .any(|service| service.name == "tierkv.v1.KvService"),
            "{list:?}"
        ),
        other => panic!("not a listing: {other:?}"),
    }
    Ok((requests, responses))
}

/// Health Watch and reflection streams need no token, so they must not
/// escape the call limit: over `max_calls_in_flight` they are shed like any
/// call (RESOURCE_EXHAUSTED, OVERLOADED), while health checks still answer;
/// once the limit has room, they open again.
#[tokio::test]
async fn watch_and_reflection_streams_are_shed_over_the_limit() {
    let server = start_with(|config| config.max_calls_in_flight = 1).await;
    let pause = server.rocks().pause_writer();
    let mut writer = server.client.clone();
    let held = tokio::spawn(async move { writer.put(put_text("user:held", "v")).await });
    while server.server.stats.calls_in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let channel = extra_channel(&server).await;
    let watch = open_watch(&channel, "").await.map(|_| ()).unwrap_err();
    assert_eq!(watch.code(), Code::ResourceExhausted, "{watch:?}");
    assert_eq!(
        watch.get_error_details().error_info().unwrap().reason,
        "OVERLOADED"
    );
    let reflection = open_reflection(&channel).await.map(|_| ()).unwrap_err();
    assert_eq!(reflection.code(), Code::ResourceExhausted, "{reflection:?}");
    assert_eq!(server.server.stats.calls_shed(), 2);
    // Probes are never shed.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "tierkv.v1.KvService".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);

    drop(pause);
    held.await.unwrap().expect("the admitted call completes");
    let _watch = open_watch(&channel, "").await.unwrap();
    let _reflection = open_reflection(&channel).await.unwrap();
    server.stop().await;
}

/// Past their first message, Watch and reflection streams leave
/// `max_calls_in_flight` (a stream that mostly waits must not hold a slot),
/// so `max_watch_streams_per_connection` bounds how many one connection keeps
/// open: more are refused (RESOURCE_EXHAUSTED, TOO_MANY_WATCH_STREAMS, the
/// limit named), other connections and ordinary calls are unaffected, and
/// a stream that ends frees its place.
#[tokio::test]
async fn watch_and_reflection_streams_are_bounded_per_connection() {
    const LIMIT: usize = 3;
    let mut server = start_with(|config| config.max_watch_streams_per_connection = LIMIT).await;
    let stats = server.server.stats.clone();
    let first = extra_channel(&server).await;
    let mut watches = Vec::new();
    for service in ["", "tierkv.v1.KvService"] {
        watches.push(open_watch(&first, service).await.unwrap());
    }
    let reflection = open_reflection(&first).await.unwrap();
    assert_eq!(stats.watch_streams_open(), LIMIT);

    for refused in [
        open_watch(&first, "tierkv.v1.SessionService")
            .await
            .map(|_| ())
            .unwrap_err(),
        open_reflection(&first).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("max_watch_streams_per_connection"),
            "{refused:?}"
        );
        let details = refused.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "TOO_MANY_WATCH_STREAMS");
        assert_eq!(
            info.metadata["max_watch_streams_per_connection"],
            LIMIT.to_string()
        );
    }
    assert_eq!(stats.watch_streams_refused(), 2);
    assert_eq!(stats.calls_shed(), 0, "not the call limit");

    // The same connection still serves checks and calls; another connection
    // has places of its own.
    let check = HealthClient::new(first.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(check.into_inner().status, 1);
    let mut kv = KvServiceClient::new(first.clone());
    kv.put(put_text("user:1", "v")).await.unwrap();
    let second = extra_channel(&server).await;
    let other = open_watch(&second, "").await.unwrap();
    assert_eq!(stats.watch_streams_open(), LIMIT + 1);

    // A stream that ends gives its place back.
    drop(watches.pop());
    let mut freed = false;
    for _ in 0..500 {
        if stats.watch_streams_open() == LIMIT {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "{} open", stats.watch_streams_open());
    let again = open_watch(&first, "tierkv.v1.SessionService")
        .await
        .unwrap();
    drop((watches, reflection, other, again));
    server.client.get(get("user:1")).await.unwrap();
    server.stop().await;
}
