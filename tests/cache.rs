//! CacheService through the real server and the generated client: tiers on
//! the injected clock, coherence with KvService writes, Put / Invalidate /
//! Purge.

mod common;

use std::time::Duration;

use common::{KvServiceClient, TestServer};
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use pb::cache_service_client::CacheServiceClient;

async fn cache_client(server: &TestServer) -> CacheServiceClient<Channel> {
    CacheServiceClient::connect(server.server.endpoint())
        .await
        .expect("connect")
}

fn cache_get(key: &str) -> pb::CacheGetRequest {
    pb::CacheGetRequest {
        key: key.to_string(),
        r#type: 0,
    }
}

fn cache_put_text(key: &str, text: &str) -> pb::CachePutRequest {
    pb::CachePutRequest {
        key: key.to_string(),
        value: Some(pb::cache_put_request::Value::Text(text.to_string())),
        ..Default::default()
    }
}

fn seconds(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn text_of(response: &pb::CacheGetResponse) -> &str {
    match &response.value {
        Some(pb::cache_get_response::Value::Text(text)) => text,
        other => panic!("expected text, got {other:?}"),
    }
}

fn tier(response: &pb::CacheGetResponse) -> pb::CacheTier {
    pb::CacheTier::try_from(response.tier).expect("a known tier")
}

async fn get(cache: &mut CacheServiceClient<Channel>, key: &str) -> pb::CacheGetResponse {
    cache.get(cache_get(key)).await.expect("get").into_inner()
}

/// A key without an origin is cache-aside: a miss is `found = false`; Put
/// fills both tiers; memory answers until its TTL, then the store answers
/// (and refills memory) until the store TTL, then it is gone.
#[tokio::test]
async fn cache_aside_tiers_follow_the_clock() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;

    let miss = get(&mut cache, "cache:users").await;
    assert!(!miss.found);
    assert_eq!(miss.key, "cache:users");

    let put = cache
        .put(pb::CachePutRequest {
            memory_ttl: seconds(60),
            store_ttl: seconds(300),
            content_type: "text/plain".into(),
            ..cache_put_text("cache:users", "alice,bob")
        })
        .await
        .expect("put")
        .into_inner();
    assert!(put.version > 0);

    let hit = get(&mut cache, "cache:users").await;
    assert!(hit.found);
    assert_eq!(text_of(&hit), "alice,bob");
    assert_eq!(tier(&hit), pb::CacheTier::Memory);
    assert_eq!(hit.content_type, "text/plain");
    assert_eq!(hit.version, put.version);
    assert_eq!(hit.expire_time, put.expire_time);

    server.clock.advance(Duration::from_secs(61));
    let from_store = get(&mut cache, "cache:users").await;
    assert_eq!(tier(&from_store), pb::CacheTier::Store);
    assert_eq!(text_of(&from_store), "alice,bob");
    assert_eq!(from_store.age.unwrap().seconds, 61);
    let again = get(&mut cache, "cache:users").await;
    assert_eq!(
        tier(&again),
        pb::CacheTier::Memory,
        "the store hit refilled memory"
    );

    server.clock.advance(Duration::from_secs(240));
    let gone = get(&mut cache, "cache:users").await;
    assert!(
        !gone.found,
        "past the store TTL, memory must not answer either"
    );

    let counts = server.server.stats.cache();
    assert_eq!(counts.memory_hits, 2);
    assert_eq!(counts.store_hits, 1);
    assert_eq!(counts.misses, 2);
    server.stop().await;
}

/// Values are represented as KvService represents them: a JSON Put reads
/// back as JSON through both services, and as text when asked.
#[tokio::test]
async fn json_values_read_like_kv_values() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;
    let mut kv: KvServiceClient<Channel> = server.client.clone();
    let json = tierkv::api::convert::json_to_proto(serde_json::json!({"users": ["a", "b"]}));
    cache
        .put(pb::CachePutRequest {
            key: "cache:api:list".into(),
            value: Some(pb::cache_put_request::Value::Json(json.clone())),
            ..Default::default()
        })
        .await
        .expect("put");
    let read = get(&mut cache, "cache:api:list").await;
    assert_eq!(
        read.value,
        Some(pb::cache_get_response::Value::Json(json.clone()))
    );
    let as_text = cache
        .get(pb::CacheGetRequest {
            key: "cache:api:list".into(),
            r#type: pb::ValueType::Text as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(text_of(&as_text), r#"{"users":["a","b"]}"#);
    let through_kv = kv
        .get(common::get("cache:api:list"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(through_kv.value, Some(pb::get_response::Value::Json(json)));
    server.stop().await;
}

/// A KvService Put, Delete or BatchWrite of a key held in memory is seen by
/// the very next CacheService.Get.
#[tokio::test]
async fn kv_writes_are_seen_by_the_next_cache_get() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    cache.put(cache_put_text("cache:k", "one")).await.unwrap();
    assert_eq!(
        tier(&get(&mut cache, "cache:k").await),
        pb::CacheTier::Memory
    );

    for round in 0..50 {
        let text = format!("kv-{round}");
        kv.put(common::put_text("cache:k", &text)).await.unwrap();
        let read = get(&mut cache, "cache:k").await;
        assert_eq!(text_of(&read), text, "round {round}");
        // Read twice: the second comes from memory, refilled by the first.
        let again = get(&mut cache, "cache:k").await;
        assert_eq!(text_of(&again), text);
        assert_eq!(tier(&again), pb::CacheTier::Memory);
    }

    kv.delete(pb::DeleteRequest {
        key: "cache:k".into(),
        if_version: None,
    })
    .await
    .unwrap();
    assert!(!get(&mut cache, "cache:k").await.found);

    cache.put(cache_put_text("cache:k", "two")).await.unwrap();
    assert_eq!(text_of(&get(&mut cache, "cache:k").await), "two");
    kv.batch_write(pb::BatchWriteRequest {
        mutations: vec![pb::Mutation {
            operation: Some(pb::mutation::Operation::Put(common::put_text(
                "cache:k", "batch",
            ))),
        }],
    })
    .await
    .unwrap();
    assert_eq!(text_of(&get(&mut cache, "cache:k").await), "batch");
    server.stop().await;
}

/// Under concurrent CacheService reads, KvService writes are never undone by
/// a racing fill: once a Put has returned, no Get that starts afterwards
/// sees an older version, and the last value is what memory ends up with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_fills_never_resurrect_older_values() {
    let server = common::start().await;
    let mut kv = server.client.clone();
    let key = "cache:race";
    kv.put(common::put_text(key, "0")).await.unwrap();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut cache = cache_client(&server).await;
        let acknowledged = std::sync::Arc::clone(&acknowledged);
        let stop = std::sync::Arc::clone(&stop);
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let floor = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
                let read = get(&mut cache, key).await;
                let seen: u64 = text_of(&read).parse().unwrap();
                assert!(
                    seen >= floor,
                    "read {seen} from {:?} after write {floor} was acknowledged",
                    tier(&read)
                );
                reads += 1;
            }
            reads
        }));
    }
    for round in 1..=300u64 {
        kv.put(common::put_text(key, &round.to_string()))
            .await
            .unwrap();
        acknowledged.store(round, std::sync::atomic::Ordering::SeqCst);
        if round % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for reader in readers {
        total += reader.await.expect("reader");
    }
    assert!(
        total > 300,
        "the readers ran alongside the writes ({total} reads)"
    );
    let mut cache = cache_client(&server).await;
    for _ in 0..3 {
        assert_eq!(text_of(&get(&mut cache, key).await), "300");
    }
    assert_eq!(tier(&get(&mut cache, key).await), pb::CacheTier::Memory);
    server.stop().await;
}

/// Invalidate removes a key from both tiers; Purge removes every key under a
/// prefix, across several delete batches, and nothing else.
#[tokio::test]
async fn invalidate_and_purge_clear_both_tiers() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    cache.put(cache_put_text("cache:a", "1")).await.unwrap();
    let invalidated = cache
        .invalidate(pb::InvalidateRequest {
            key: "cache:a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(invalidated.existed);
    assert!(!get(&mut cache, "cache:a").await.found);
    assert!(!common::exists(&mut kv, "cache:a").await);

    let keys: Vec<String> = (0..2500).map(|i| format!("cache:p:{i:05}")).collect();
    for chunk in keys.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        common::put_all(&mut kv, &refs).await;
    }
    cache
        .put(cache_put_text("cache:p:00001", "memory"))
        .await
        .unwrap();
    cache.put(cache_put_text("cache:q", "other")).await.unwrap();
    assert_eq!(
        tier(&get(&mut cache, "cache:p:00001").await),
        pb::CacheTier::Memory
    );

    let purged = cache
        .purge(pb::PurgeRequest {
            prefix: "cache:p:".into(),
            expected_keys: Some(2500),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (purged.purged, purged.listed, purged.more),
        (2500, 2500, false)
    );
    assert!(!get(&mut cache, "cache:p:00001").await.found);
    assert!(common::list_all(&mut kv, "cache:p:", 1000).await.is_empty());
    assert_eq!(text_of(&get(&mut cache, "cache:q").await), "other");
    server.stop().await;
}

/// The session namespace belongs to SessionService: the cache refuses its
/// keys and prefixes like KvService does; an empty purge prefix and bad
/// TTLs are refused with the field and the value.
#[tokio::test]
async fn refuses_owned_namespaces_and_bad_input() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;
    let denied = cache.get(cache_get("session:s/x")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("tierkv.v1.SessionService"));
    let denied = cache
        .purge(pb::PurgeRequest {
            prefix: "session:".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = cache
        .put(cache_put_text("session:s/x", "v"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let empty = cache
        .purge(pb::PurgeRequest {
            prefix: "".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("prefix"));

    let short = cache
        .put(pb::CachePutRequest {
            store_ttl: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            ..cache_put_text("cache:t", "v")
        })
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(
        short
            .message()
            .contains("store_ttl is 0.5s; the minimum is 1s"),
        "{}",
        short.message()
    );
    let negative = cache
        .put(pb::CachePutRequest {
            memory_ttl: seconds(-1),
            ..cache_put_text("cache:t", "v")
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(
        negative.message().contains("memory_ttl is -1s"),
        "{}",
        negative.message()
    );
    let no_value = cache
        .put(pb::CachePutRequest {
            key: "cache:t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_value.code(), Code::InvalidArgument);
    let empty_key = cache.get(cache_get("")).await.unwrap_err();
    assert_eq!(empty_key.code(), Code::InvalidArgument);
    server.stop().await;
}

/// The cache's counters reach the metrics listener: hits by tier, misses,
/// and the memory tier's size.
#[tokio::test]
async fn cache_counters_are_scraped() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;
    cache.put(cache_put_text("cache:m", "v")).await.unwrap();
    get(&mut cache, "cache:m").await;
    get(&mut cache, "cache:absent").await;
    let metrics = server.server.metrics_addr.expect("metrics listener");
    let scrape = common::scrape_metrics(metrics).await;
    let sample = |series: &str| common::metric_sample(&scrape, series);
    assert_eq!(
        sample(r#"tierkv_cache_hits_total{tier="memory"}"#),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        sample(r#"tierkv_cache_hits_total{tier="store"}"#),
        Some(0.0)
    );
    assert_eq!(sample("tierkv_cache_misses_total"), Some(1.0));
    assert!(sample("tierkv_cache_memory_bytes").unwrap() > 0.0);
    assert_eq!(sample("tierkv_cache_memory_entries"), Some(1.0));
    server.stop().await;
}

/// With authentication on, the cache checks grants like KvService: reading
/// needs read on the key, Put and Invalidate need write on it, Purge needs
/// write on every key under its prefix.
#[tokio::test]
async fn grants_are_checked() {
    use tierkv::auth::{hash_token, AuthConfig, Permission, TokenConfig};
    const READER: &str = "tkv_cache-reader-0123456789";
    const WRITER: &str = "tkv_cache-writer-0123456789";
    let token = |name: &str, secret: &str, permissions: &[Permission]| TokenConfig {
        name: name.into(),
        token_sha256: hash_token(secret),
        token_sha256_file: None,
        prefixes: vec!["cache:a:".into()],
        permissions: permissions.to_vec(),
    };
    let server = common::start_with(|config| {
        config.auth = AuthConfig {
            tokens: vec![
                token("reader", READER, &[Permission::Read]),
                token("writer", WRITER, &[Permission::Read, Permission::Write]),
            ],
        }
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |secret: &'static str| {
        CacheServiceClient::with_interceptor(
            channel.clone(),
            move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {secret}").parse().unwrap());
                Ok(request)
            },
        )
    };
    let mut writer = client(WRITER);
    let mut reader = client(READER);
    writer.put(cache_put_text("cache:a:1", "v")).await.unwrap();
    let read = reader
        .get(cache_get("cache:a:1"))
        .await
        .unwrap()
        .into_inner();
    assert!(read.found);
    let denied = [
        reader
            .put(cache_put_text("cache:a:1", "w"))
            .await
            .unwrap_err(),
        reader
            .invalidate(pb::InvalidateRequest {
                key: "cache:a:1".into(),
            })
            .await
            .unwrap_err(),
        reader.get(cache_get("cache:b:1")).await.unwrap_err(),
        writer
            .purge(pb::PurgeRequest {
                prefix: "cache:".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ];
    for status in denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let purged = writer
        .purge(pb::PurgeRequest {
            prefix: "cache:a:".into(),
            expected_keys: Some(1),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, 1);
    server.stop().await;
}
