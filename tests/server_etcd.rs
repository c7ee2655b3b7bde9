//! `tierkv serve` over a real etcd cluster: configuration by environment,
//! limits refused with INVALID_ARGUMENT naming etcd's flag, Backup refused
//! with how to back etcd up, and an etcd outage that turns health
//! NOT_SERVING and calls UNAVAILABLE without stopping the server, which
//! recovers by itself.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{self, EtcdCluster};
use common::{connect, connect_admin, get, put_text};
use tierkv::proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn text_of(reply: pb::GetResponse) -> Option<String> {
    match reply.value {
        Some(pb::get_response::Value::Text(text)) => Some(text),
        _ => None,
    }
}

async fn health(server: &etcd::Served) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .ok()?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    Some(reply.into_inner().status)
}

/// Waits (generously: a loaded machine) until `condition` holds.
async fn eventually<F, Fut>(what: &str, server: &etcd::Served, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "{what} within 90 s; server log:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server over etcd stores and reads back; a value over the configured
/// `max_request_bytes` is refused with INVALID_ARGUMENT naming etcd's
/// `--max-request-bytes`, before anything reaches etcd; Backup answers
/// FAILED_PRECONDITION naming `etcdctl snapshot save`.
#[tokio::test]
async fn a_server_over_etcd_serves_and_refuses_what_etcd_cannot_take() {
    let cluster = etcd::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut command = etcd::server_command(
        &cluster.endpoints(),
        &etcd::unique_prefix("serve"),
        dir.path(),
    );
    command.env("TIERKV_ENGINE_ETCD_MAX_REQUEST_BYTES", "1572864");
    let mut server = etcd::spawn(command);
    let mut client = connect(&server.endpoint()).await;
    client.put(put_text("user:a", "one")).await.unwrap();
    let reply = client.get(get("user:a")).await.unwrap().into_inner();
    assert_eq!(text_of(reply).as_deref(), Some("one"));

    let big = pb::PutRequest {
        key: "user:big".into(),
        value: Some(pb::put_request::Value::Bytes(vec![7; 2 * 1024 * 1024])),
        ..Default::default()
    };
    let refused = client.put(big).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("--max-request-bytes"),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains("internal"),
        "{}",
        refused.message()
    );
    let missing = client.get(get("user:big")).await.unwrap().into_inner();
    assert!(!missing.found, "nothing of the refused put was written");

    let mut admin = connect_admin(&server.endpoint()).await;
    let backup = admin
        .backup(pb::BackupRequest { name: "b".into() })
        .await
        .unwrap_err();
    assert_eq!(backup.code(), Code::FailedPrecondition, "{backup:?}");
    assert!(
        backup.message().contains("etcdctl snapshot save"),
        "{}",
        backup.message()
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// With every etcd member killed, calls answer UNAVAILABLE and health turns
/// NOT_SERVING while the process keeps running; once the members are back,
/// health is SERVING again and the data written before is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_answers_unavailable_and_recovers() {
    let mut cluster = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let mut command = etcd::server_command(&cluster.endpoints(), "outage/", dir.path());
    command
        .env("TIERKV_ENGINE_ETCD_REQUEST_TIMEOUT_MS", "1000")
        .env("TIERKV_ENGINE_ETCD_DIAL_TIMEOUT_MS", "500");
    let mut server = etcd::spawn(command);
    let mut client = connect(&server.endpoint()).await;
    client.put(put_text("user:kept", "v")).await.unwrap();
    assert_eq!(health(&server).await, Some(ServingStatus::Serving as i32));

    for member in 0..cluster.size() {
        cluster.kill(member);
    }
    eventually("a get answers UNAVAILABLE", &server, || {
        let mut client = client.clone();
        async move {
            matches!(client.get(get("user:kept")).await, Err(status) if status.code() == Code::Unavailable)
        }
    })
    .await;
    eventually("health turns NOT_SERVING", &server, || async {
        health(&server).await == Some(ServingStatus::NotServing as i32)
    })
    .await;
    let refused = client.put(put_text("user:new", "v")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server keeps running"
    );

    for member in 0..cluster.size() {
        cluster.restart(member);
    }
    eventually("health is SERVING again", &server, || async {
        health(&server).await == Some(ServingStatus::Serving as i32)
    })
    .await;
    eventually("the data written before is read back", &server, || {
        let mut client = client.clone();
        async move {
            client
                .get(get("user:kept"))
                .await
                .is_ok_and(|reply| text_of(reply.into_inner()).as_deref() == Some("v"))
        }
    })
    .await;
    client.put(put_text("user:after", "w")).await.unwrap();
    assert!(server.child.try_wait().unwrap().is_none());
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

async fn listed_namespaces(
    admin: &mut common::AdminServiceClient<tonic::transport::Channel>,
) -> Vec<pb::Namespace> {
    admin
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces
}

fn figures(listed: &[pb::Namespace], prefix: &str) -> (u64, u64) {
    let namespace = listed
        .iter()
        .find(|namespace| namespace.prefix == prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not listed: {listed:?}"));
    (namespace.estimated_keys, namespace.estimated_live_bytes)
}

/// ListNamespaces over etcd counts each namespace's live records and their
/// bytes (key, value and metadata; an out-of-line value by its length, a
/// nested namespace's records in its own figures): exact for these small
/// namespaces, and an expired record, not yet reclaimed, leaves both figures
/// as soon as the engine's clock passes its expiry.
#[tokio::test]
async fn list_namespaces_over_etcd_counts_live_records_and_their_bytes() {
    let mut server = common::start_with(|config| {
        config.namespaces = vec!["user:".into(), "user:admin:".into(), "session:".into()];
        // Only the clock decides here, not the sweeper.
        config.expiry_grace_secs = 3600;
    })
    .await;
    let big = vec![7u8; 5000];
    let mut puts = vec![
        put_text("user:a", "xyz"),
        put_text("user:admin:1", "v"),
        put_text("other", "12"),
        pb::PutRequest {
            key: "user:big".into(),
            value: Some(pb::put_request::Value::Bytes(big.clone())),
            ..Default::default()
        },
    ];
    let mut expiring = put_text("user:ttl", "abcd");
    expiring.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds: 10,
        nanos: 0,
    }));
    puts.push(expiring);
    for put in puts {
        server.client.put(put).await.unwrap();
    }
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let listed = listed_namespaces(&mut admin).await;
    assert_eq!(figures(&listed, ""), (1, 5 + 2));
    assert_eq!(figures(&listed, "user:admin:"), (1, 12 + 1));
    assert_eq!(
        figures(&listed, "user:"),
        (3, (6 + 3) + (8 + 5000) + (8 + 4))
    );

    server.clock.advance(Duration::from_secs(11));
    let listed = listed_namespaces(&mut admin).await;
    assert_eq!(figures(&listed, "user:"), (2, (6 + 3) + (8 + 5000)));
    assert_eq!(figures(&listed, "user:admin:"), (1, 13));
    server.stop().await;
}

/// A namespace larger than one listing walks (10,000 heads) is estimated
/// from the heads walked, scaled to its stored count: here every record is
/// alike, so the estimate is exact.
#[tokio::test]
async fn list_namespaces_over_etcd_scales_a_partial_walk() {
    const KEYS: usize = 12_000;
    let mut server = common::start().await;
    let keys: Vec<String> = (0..KEYS).map(|n| format!("user:{n:05}")).collect();
    for chunk in keys.chunks(2_000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        common::put_all(&mut server.client, &refs).await;
    }
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let listed = listed_namespaces(&mut admin).await;
    assert_eq!(
        figures(&listed, "user:"),
        (KEYS as u64, (KEYS * (10 + 1)) as u64)
    );
    server.stop().await;
}
