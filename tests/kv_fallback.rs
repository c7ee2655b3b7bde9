//! Fallback reads (`fallback` on Get and BatchGet): the caller's default comes
//! back with `from_fallback = true` and OK when the key is missing or
//! expired, or the read fails or runs out of time; never when the key is
//! there; and a request without a fallback behaves as before.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tierkv::api::convert::{json_from_proto, json_to_proto};
use tierkv::proto::v1 as pb;
use tonic::Code;

fn get_or(key: &str, fallback: serde_json::Value) -> pb::GetRequest {
    pb::GetRequest {
        key: key.into(),
        r#type: 0,
        fallback: Some(json_to_proto(fallback)),
    }
}

fn batch_get_or(keys: &[&str], fallback: serde_json::Value) -> pb::BatchGetRequest {
    pb::BatchGetRequest {
        keys: keys.iter().map(|key| key.to_string()).collect(),
        r#type: 0,
        fallback: Some(json_to_proto(fallback)),
    }
}

#[track_caller]
fn assert_fallback(response: &pb::GetResponse, expected: serde_json::Value) {
    assert!(!response.found, "{response:?}");
    assert!(response.from_fallback, "{response:?}");
    match &response.value {
        Some(pb::get_response::Value::Json(value)) => {
            assert_eq!(json_from_proto(value.clone()).unwrap(), expected)
        }
        other => panic!("expected the fallback as JSON, got {other:?}"),
    }
}

/// Missing and expired keys answer with the fallback; a live key answers
/// with its value and no fallback; each fallback is counted.
#[tokio::test]
async fn missing_and_expired_keys_fall_back() {
    let mut server = start().await;
    let fallback = json!({"theme": "light"});
    let client = &mut server.client;

    let missing = client
        .get(get_or("config:missing", fallback.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_fallback(&missing, fallback.clone());
    assert_eq!(missing.key, "config:missing");

    client.put(put_text("config:live", "dark")).await.unwrap();
    let live = client
        .get(get_or("config:live", fallback.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(live.found && !live.from_fallback, "{live:?}");
    assert_eq!(
        live.value,
        Some(pb::get_response::Value::Text("dark".into()))
    );

    let mut expiring = put_text("config:expiring", "dark");
    expiring.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds: 5,
        nanos: 0,
    }));
    client.put(expiring).await.unwrap();
    server.clock.advance(Duration::from_secs(6));
    let expired = server
        .client
        .get(get_or("config:expiring", fallback.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_fallback(&expired, fallback.clone());

    // Without a fallback, a missing key is the usual found = false.
    let plain = server
        .client
        .get(get("config:missing"))
        .await
        .unwrap()
        .into_inner();
    assert!(!plain.found && !plain.from_fallback && plain.value.is_none());

    let counts = server.server.stats.fallbacks();
    assert_eq!((counts.absent, counts.failed, counts.timed_out), (2, 0, 0));
}

crate::rocksdb_only! {
    "injects RocksDB read faults (a local-only test hook)";
    /// A read that fails answers with the fallback (and, without one, fails as
    /// before); requests that are wrong still fail with a fallback.
    #[tokio::test]
    async fn failed_reads_fall_back() {
        let mut server = start().await;
        server
            .client
            .put(put_text("config:live", "dark"))
            .await
            .unwrap();
        let fault = server.rocks().inject_read_fault(None);

        let response = server
            .client
            .get(get_or("config:live", json!("default")))
            .await
            .unwrap()
            .into_inner();
        assert_fallback(&response, json!("default"));

        let status = server.client.get(get("config:live")).await.unwrap_err();
        assert_ne!(status.code(), Code::Ok);

        let batch = server
            .client
            .batch_get(batch_get_or(&["config:live", "config:other"], json!(0)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.results.len(), 2);
        for result in &batch.results {
            assert_fallback(result, json!(0));
        }
        assert_eq!(batch.results[1].key, "config:other");

        let status = server.client.get(get_or("", json!(1))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let status = server
            .client
            .get(get_or("session:s/x", json!(1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

        drop(fault);
        let healed = server
            .client
            .get(get_or("config:live", json!("default")))
            .await
            .unwrap()
            .into_inner();
        assert!(healed.found && !healed.from_fallback);
        assert_eq!(server.server.stats.fallbacks().failed, 3);
    }
}

crate::rocksdb_only! {
    "injects slow RocksDB reads (a local-only test hook)";
    /// A read still running when the client's deadline nears answers with the
    /// fallback in time, not DEADLINE_EXCEEDED.
    #[tokio::test]
    async fn slow_reads_fall_back_before_the_deadline() {
        let mut server = start().await;
        server
            .client
            .put(put_text("config:live", "dark"))
            .await
            .unwrap();
        let _slow = server
            .rocks()
            .inject_read_fault(Some(Duration::from_secs(30)));

        let mut request = tonic::Request::new(get_or("config:live", json!({"cached": false})));
        request.set_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let response = server.client.get(request).await.unwrap().into_inner();
        assert_fallback(&response, json!({"cached": false}));
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut request = tonic::Request::new(batch_get_or(&["config:live"], json!(null)));
        request.set_timeout(Duration::from_millis(500));
        let batch = server.client.batch_get(request).await.unwrap().into_inner();
        assert_fallback(&batch.results[0], json!(null));

        // Without a fallback the same read fails on its deadline, as before
        // (the client's own timer may report it first, as CANCELLED).
        let mut request = tonic::Request::new(get("config:live"));
        request.set_timeout(Duration::from_millis(300));
        let status = server.client.get(request).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert_eq!(server.server.stats.fallbacks().timed_out, 2);
    }
}

/// BatchGet answers the fallback only for the keys that are missing.
#[tokio::test]
async fn batch_get_falls_back_per_key() {
    let mut server = start().await;
    server.client.put(put_text("config:a", "A")).await.unwrap();
    let batch = server
        .client
        .batch_get(batch_get_or(
            &["config:a", "config:b", "config:a"],
            json!([]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results[0].found && !batch.results[0].from_fallback);
    assert_fallback(&batch.results[1], json!([]));
    assert!(batch.results[2].found && !batch.results[2].from_fallback);
    assert_eq!(server.server.stats.fallbacks().absent, 1);
}
