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
