//! Two real `tierkv serve` processes over one real etcd cluster: what
//! "several replicas" promises. A write acknowledged by replica A is read
//! by replica B at once; B's cache memory tier drops a copy a write through
//! A replaced (through the change feed), and a read following its own
//! caller's write is never stale; sessions created on A work on B and a
//! revocation on A is refused by B at once; page tokens of A work on B.

mod common;

use std::time::{Duration, Instant};

use common::etcd;
use common::{connect, connect_sessions, get, put_text};
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use pb::cache_service_client::CacheServiceClient;

/// Two replicas over the shared cluster, one key prefix.
fn replicas(name: &str) -> (etcd::Served, etcd::Served, Vec<tempfile::TempDir>) {
    let cluster = etcd::shared();
    let prefix = etcd::unique_prefix(name);
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = etcd::spawn(etcd::server_command(
        &cluster.endpoints(),
        &prefix,
        dirs[0].path(),
    ));
    let b = etcd::spawn(etcd::server_command(
        &cluster.endpoints(),
        &prefix,
        dirs[1].path(),
    ));
    (a, b, dirs)
}

fn stop(server: etcd::Served) {
    drop(server);
}

fn text_of(reply: &pb::GetResponse) -> Option<&str> {
    match &reply.value {
        Some(pb::get_response::Value::Text(text)) => Some(text),
        _ => None,
    }
}

async fn cache_client(server: &etcd::Served) -> CacheServiceClient<Channel> {
    CacheServiceClient::connect(server.endpoint())
        .await
        .unwrap()
}

fn cache_put(key: &str, text: &str) -> pb::CachePutRequest {
    pb::CachePutRequest {
        key: key.into(),
        value: Some(pb::cache_put_request::Value::Text(text.into())),
        // Far longer than the test waits: only the feed can drop the copy.
        memory_ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

async fn cache_get(cache: &mut CacheServiceClient<Channel>, key: &str) -> (Option<String>, i32) {
    let reply = cache
        .get(pb::CacheGetRequest {
            key: key.into(),
            r#type: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let text = match reply.value {
        Some(pb::cache_get_response::Value::Text(text)) => Some(text),
        _ => None,
    };
    (text, reply.tier)
}

/// Writes through A are read by B at once, 50 times in a row, with
/// versions that only grow; a delete through A is seen by B at once too.
#[tokio::test]
async fn reads_are_strong_across_replicas() {
    let (a, b, _dirs) = replicas("strong");
    let mut on_a = connect(&a.endpoint()).await;
    let mut on_b = connect(&b.endpoint()).await;
    let mut last_version = 0;
    for n in 0..50 {
        let written = on_a
            .put(put_text("user:strong", &n.to_string()))
            .await
            .unwrap()
            .into_inner();
        let read = on_b.get(get("user:strong")).await.unwrap().into_inner();
        assert_eq!(
            text_of(&read),
            Some(n.to_string().as_str()),
            "read {n} on B"
        );
        assert_eq!(read.version, written.version);
        assert!(read.version > last_version);
        last_version = read.version;
    }
    on_a.delete(pb::DeleteRequest {
        key: "user:strong".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !on_b
            .get(get("user:strong"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    stop(a);
    stop(b);
}

/// B's memory tier holds a value (read from MEMORY); a cache write of the
/// key through A replaces it on B through the feed, well before its hour of
/// memory TTL; a read on B after its own caller's write returns that write.
#[tokio::test]
async fn cache_memory_tiers_stay_coherent() {
    let (a, b, _dirs) = replicas("cache");
    let mut cache_a = cache_client(&a).await;
    let mut cache_b = cache_client(&b).await;
    cache_b.put(cache_put("cache:k", "one")).await.unwrap();
    assert_eq!(
        cache_get(&mut cache_b, "cache:k").await,
        (Some("one".into()), pb::CacheTier::Memory as i32)
    );
    cache_a.put(cache_put("cache:k", "two")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (text, _) = cache_get(&mut cache_b, "cache:k").await;
        if text.as_deref() == Some("two") {
            break;
        }
        assert_eq!(text.as_deref(), Some("one"));
        assert!(
            Instant::now() < deadline,
            "B still serves the replaced value"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..20 {
        let value = format!("own-{n}");
        cache_b.put(cache_put("cache:k", &value)).await.unwrap();
        let (text, _) = cache_get(&mut cache_b, "cache:k").await;
        assert_eq!(text, Some(value), "a read after its own write");
        cache_a
            .put(cache_put("cache:k", &format!("other-{n}")))
            .await
            .unwrap();
    }
    stop(a);
    stop(b);
}

/// A session created on A is read, touched and rotated on B; revoked on A,
/// its token is refused by B at once.
#[tokio::test]
async fn sessions_work_on_every_replica() {
    let (a, b, _dirs) = replicas("sessions");
    let mut on_a = connect_sessions(&a.endpoint()).await;
    let mut on_b = connect_sessions(&b.endpoint()).await;
    let created = on_a
        .create(pb::CreateSessionRequest {
            user_id: "u-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = on_b
        .get(pb::GetSessionRequest {
            token: created.token.clone(),
            touch: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.session_id, created.session_id);
    let rotated = on_b
        .rotate(pb::RotateSessionRequest {
            token: created.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let old = on_a
        .get(pb::GetSessionRequest {
            token: created.token.clone(),
            touch: false,
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::NotFound, "the rotated-out token, on A");
    on_a.revoke(pb::RevokeSessionRequest {
        session: Some(pb::revoke_session_request::Session::Token(
            rotated.token.clone(),
        )),
    })
    .await
    .unwrap();
    let refused = on_b
        .get(pb::GetSessionRequest {
            token: rotated.token,
            touch: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "revoked on A, refused by B");
    stop(a);
    stop(b);
}

/// A page token A handed out continues the listing on B, and the pages
/// together list every key once.
#[tokio::test]
async fn page_tokens_work_on_every_replica() {
    let (a, b, _dirs) = replicas("pages");
    let mut on_a = connect(&a.endpoint()).await;
    let mut on_b = connect(&b.endpoint()).await;
    for n in 0..25 {
        on_a.put(put_text(&format!("user:p{n:02}"), "v"))
            .await
            .unwrap();
    }
    let list = |token: String| pb::ListRequest {
        prefix: "user:p".into(),
        page_size: 10,
        page_token: token,
    };
    let mut keys = Vec::new();
    let first = on_a.list(list(String::new())).await.unwrap().into_inner();
    keys.extend(first.keys.iter().map(|key| key.name.clone()));
    let second = on_b
        .list(list(first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    keys.extend(second.keys.iter().map(|key| key.name.clone()));
    let third = on_a
        .list(list(second.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    keys.extend(third.keys.iter().map(|key| key.name.clone()));
    assert!(third.next_page_token.is_empty());
    let expected: Vec<String> = (0..25).map(|n| format!("user:p{n:02}")).collect();
    assert_eq!(keys, expected);
    stop(a);
    stop(b);
}

/// Two Migrate calls of one prefix, on A and on B: one runs, the other is
/// refused with ABORTED naming the server that runs it (the replicas share
/// one etcd lock per prefix); once the run ends, B may run it.
#[tokio::test]
async fn one_migration_at_a_time_across_replicas() {
    let cluster = etcd::shared();
    let prefix = etcd::unique_prefix("migrate");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tierkv.toml");
    std::fs::write(
        &config,
        "[[migrations]]\nprefix = \"user:m\"\nfrom = 1\nto = 2\npatch = '[{\"op\": \"add\", \"path\": \"/v2\", \"value\": true}]'\n",
    )
    .unwrap();
    let start = |data: &std::path::Path| {
        let mut command = etcd::server_command(&cluster.endpoints(), &prefix, data);
        command.arg("--config").arg(&config);
        etcd::spawn(command)
    };
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = start(&data_a);
    let b = start(&data_b);
    let mut kv = connect(&a.endpoint()).await;
    for n in 0..30 {
        kv.put(pb::PutRequest {
            key: format!("user:m{n:02}"),
            value: Some(pb::put_request::Value::Json(
                tierkv::api::convert::json_to_proto(serde_json::json!({"n": n})),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let migrate = |max: Option<u32>| pb::MigrateRequest {
        prefix: "user:m".into(),
        dry_run: false,
        batch_size: 1,
        max_records_per_second: max,
    };
    let mut admin_a = common::connect_admin(&a.endpoint()).await;
    let mut admin_b = common::connect_admin(&b.endpoint()).await;
    // 30 records at 5 a second: the run on A lasts about 6 seconds.
    let mut running = admin_a
        .migrate(migrate(Some(5)))
        .await
        .unwrap()
        .into_inner();
    running
        .message()
        .await
        .unwrap()
        .expect("a first progress report");
    let refused = admin_b.migrate(migrate(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    let holder = format!("pid {}", a.pid());
    assert!(
        refused.message().contains(&holder),
        "the refusal names the running server ({holder}): {}",
        refused.message()
    );
    while running.message().await.unwrap().is_some() {}
    let mut again = admin_b.migrate(migrate(None)).await.unwrap().into_inner();
    while again.message().await.unwrap().is_some() {}
    stop(a);
    stop(b);
}
