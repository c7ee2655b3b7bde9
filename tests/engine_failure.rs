//! A server whose storage engine fails for good stops serving visibly:
//! health turns NOT_SERVING for every service and the server stops with an
//! error, so the binary exits non-zero and an orchestrator restarts it.
//! (`tests/process.rs` checks the exit code of the real binary.)

mod common;

use std::time::Duration;

use common::*;
use tierkv::server::ServerError;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The writer thread dies (a test hook makes it panic, as a bug would):
/// health watchers see NOT_SERVING for the server and for KvService, and the
/// server stops with `EngineFailed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_death_turns_health_not_serving_and_stops_the_server() {
    let server = start_with(|config| config.shutdown_grace_ms = 500).await;
    let channel = tonic::transport::Endpoint::from_shared(server.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watches = Vec::new();
    for service in ["", "tierkv.v1.KvService"] {
        let mut watch = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
        watches.push(watch);
    }

    server.rocks().crash_writer();
    for watch in &mut watches {
        let next = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("health changes")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(60), server.server.stop())
        .await
        .expect("the server stops by itself");
    match stopped {
        Err(ServerError::EngineFailed(reason)) => assert!(reason.contains("panicked"), "{reason}"),
        other => panic!("expected EngineFailed, got {other:?}"),
    }
}
