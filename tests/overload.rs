//! Load shedding: over `max_calls_in_flight`, calls are refused at once with
//! RESOURCE_EXHAUSTED (ErrorInfo OVERLOADED, a RetryInfo hint), across
//! connections; health checks still answer; the admitted calls complete; and
//! the shed calls are counted.

mod common;

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
    let engine = server.server.engine.clone();

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
