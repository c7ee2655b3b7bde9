//! CacheService read-through against a real local HTTP origin that records
//! what it receives: tiers on the injected clock, coalescing, stale serving,
//! negative caching, Cache-Control, revalidation, key escaping, HTTPS, and
//! coherence with KvService writes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::origin::{Reply, TestOrigin};
use common::TestServer;
use tierkv::cache::config::OriginConfig;
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use pb::cache_service_client::CacheServiceClient;

const PREFIX: &str = "cache:api:";

async fn cache_client(server: &TestServer) -> CacheServiceClient<Channel> {
    CacheServiceClient::connect(server.server.endpoint())
        .await
        .expect("connect")
}

/// A server whose `cache:api:` keys read through `origin` at `/items/{key}`,
/// with `configure` adjusting the origin's settings.
async fn start(origin: &TestOrigin, configure: impl FnOnce(&mut OriginConfig)) -> TestServer {
    let mut config = origin.origin_config(PREFIX, "/items/{key}");
    config.memory_ttl = Duration::from_secs(60);
    config.store_ttl = Duration::from_secs(300);
    configure(&mut config);
    common::start_with(|server| server.cache.origins = vec![config]).await
}

fn request(key: &str) -> pb::CacheGetRequest {
    pb::CacheGetRequest {
        key: key.to_string(),
        r#type: 0,
    }
}

async fn get(cache: &mut CacheServiceClient<Channel>, key: &str) -> pb::CacheGetResponse {
    cache.get(request(key)).await.expect("get").into_inner()
}

fn tier(response: &pb::CacheGetResponse) -> pb::CacheTier {
    pb::CacheTier::try_from(response.tier).expect("a known tier")
}

fn text_of(response: &pb::CacheGetResponse) -> String {
    match &response.value {
        Some(pb::cache_get_response::Value::Text(text)) => text.clone(),
        Some(pb::cache_get_response::Value::Bytes(bytes)) => {
            String::from_utf8(bytes.clone()).unwrap()
        }
        other => panic!("expected text, got {other:?}"),
    }
}

/// First get → ORIGIN, then MEMORY; after the memory TTL → STORE; after the
/// store TTL → ORIGIN again. The stored record is an ordinary record:
/// KvService.Get returns the origin's JSON body as JSON.
#[tokio::test]
async fn tiers_progress_and_backfill_on_the_clock() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/users",
        Reply::ok(r#"{"users":["alice","bob"]}"#)
            .content_type("application/json")
            .etag("\"v1\""),
    );
    let server = start(&origin, |_| {}).await;
    let mut cache = cache_client(&server).await;
    let key = "cache:api:users";
    let expected =
        tierkv::api::convert::json_to_proto(serde_json::json!({"users": ["alice", "bob"]}));

    let first = get(&mut cache, key).await;
    assert_eq!(tier(&first), pb::CacheTier::Origin);
    assert_eq!(
        first.value,
        Some(pb::cache_get_response::Value::Json(expected.clone()))
    );
    assert_eq!(first.content_type, "application/json");
    assert!(first.version > 0);

    let second = get(&mut cache, key).await;
    assert_eq!(tier(&second), pb::CacheTier::Memory);
    assert_eq!(second.version, first.version);

    let mut kv = server.client.clone();
    let through_kv = kv.get(common::get(key)).await.unwrap().into_inner();
    assert_eq!(
        through_kv.value,
        Some(pb::get_response::Value::Json(expected.clone()))
    );
    assert!(
        through_kv.metadata.is_some(),
        "content type and validators kept with the record"
    );

    server.clock.advance(Duration::from_secs(61));
    let third = get(&mut cache, key).await;
    assert_eq!(tier(&third), pb::CacheTier::Store);
    assert_eq!(third.age.unwrap().seconds, 61);
    assert_eq!(tier(&get(&mut cache, key).await), pb::CacheTier::Memory);

    server.clock.advance(Duration::from_secs(240));
    let fourth = get(&mut cache, key).await;
    assert_eq!(tier(&fourth), pb::CacheTier::Origin);
    assert!(fourth.version > first.version);
    assert_eq!(origin.count_path("/items/users"), 2);

    let counts = server.server.stats.cache();
    assert_eq!(counts.origin_requests, 2);
    assert_eq!(counts.origin_hits, 2);
    assert_eq!(counts.memory_hits, 2);
    assert_eq!(counts.store_hits, 1);
    server.stop().await;
}

/// 1,000 concurrent gets of a cold key make exactly one origin request;
/// every caller gets the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_key_under_1000_readers_costs_one_origin_request() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/hot",
        Reply::ok("hot body")
            .content_type("text/plain")
            .delay(Duration::from_millis(300)),
    );
    let server = start(&origin, |_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(cache_client(&server).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut readers = Vec::new();
    for index in 0..1000 {
        let mut client = clients[index % clients.len()].clone();
        let barrier = Arc::clone(&barrier);
        readers.push(tokio::spawn(async move {
            barrier.wait().await;
            get(&mut client, "cache:api:hot").await
        }));
    }
    let mut tiers = std::collections::HashMap::new();
    for reader in readers {
        let response = reader.await.unwrap();
        assert_eq!(text_of(&response), "hot body");
        *tiers.entry(tier(&response)).or_insert(0) += 1;
    }
    assert_eq!(origin.count(), 1, "tiers seen: {tiers:?}");
    let counts = server.server.stats.cache();
    assert_eq!(counts.origin_requests, 1);
    assert_eq!(
        counts.origin_hits + counts.memory_hits + counts.store_hits,
        1000
    );
    assert!(counts.coalesced_waiters > 0, "{counts:?}");
    server.stop().await;
}

/// The first caller going away (its call cancelled) does not cancel the
/// fetch, and a caller whose own deadline is short gets DEADLINE_EXCEEDED
/// from the server (never CANCELLED) without failing the others: a caller
/// with a longer deadline gets the value of the same single origin request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_cancellation_does_not_fail_the_waiters() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/slow",
        Reply::ok("worth the wait").delay(Duration::from_millis(600)),
    );
    let server = start(&origin, |_| {}).await;
    let mut leader = cache_client(&server).await;
    let leader_call = tokio::spawn(async move { leader.get(request("cache:api:slow")).await });
    // Once the origin has the leader's request, the leader goes away.
    while origin.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader_call.abort();

    let addr = server.server.addr;
    let short = tokio::spawn(async move {
        common::raw::raw_unary_status(
            addr,
            "/tierkv.v1.CacheService/Get",
            &request("cache:api:slow"),
            "150m",
        )
        .await
    });
    let mut waiter = cache_client(&server).await;
    let mut long = tonic::Request::new(request("cache:api:slow"));
    long.set_timeout(Duration::from_secs(10));
    let waited = waiter
        .get(long)
        .await
        .expect("the waiter gets the value")
        .into_inner();
    assert_eq!(text_of(&waited), "worth the wait");
    assert_eq!(tier(&waited), pb::CacheTier::Origin);
    assert_eq!(
        short.await.unwrap(),
        (Code::DeadlineExceeded as i32).to_string()
    );
    assert_eq!(origin.count(), 1);
    assert_eq!(server.server.stats.cache().coalesced_waiters, 2);
    server.stop().await;
}

/// Origin down: within the stale-if-error window the stale copy is served,
/// marked STALE; after it, UNAVAILABLE.
#[tokio::test]
async fn origin_down_serves_stale_within_the_window_then_unavailable() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/k", Reply::ok("v1"));
    let server = start(&origin, |config| {
        config.store_ttl = Duration::from_secs(60);
        config.memory_ttl = Duration::from_secs(10);
        config.stale_if_error = Duration::from_secs(300);
    })
    .await;
    let mut cache = cache_client(&server).await;
    assert_eq!(
        tier(&get(&mut cache, "cache:api:k").await),
        pb::CacheTier::Origin
    );
    origin.stop().await;

    server.clock.advance(Duration::from_secs(61));
    let stale = get(&mut cache, "cache:api:k").await;
    assert_eq!(tier(&stale), pb::CacheTier::Stale);
    assert_eq!(text_of(&stale), "v1");

    server.clock.advance(Duration::from_secs(300));
    let error = cache.get(request("cache:api:k")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");

    let counts = server.server.stats.cache();
    assert_eq!(counts.stale_serves, 1);
    assert_eq!(counts.origin_errors, 2);
    server.stop().await;
}

/// A slow origin ends in DEADLINE_EXCEEDED: at the origin's timeout, or at
/// the caller's deadline when that comes first.
#[tokio::test]
async fn slow_origin_is_deadline_exceeded() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/slow",
        Reply::ok("late").delay(Duration::from_secs(3)),
    );
    let server = start(&origin, |config| {
        config.timeout = Duration::from_millis(200)
    })
    .await;
    let mut cache = cache_client(&server).await;
    let error = cache.get(request("cache:api:slow")).await.unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert!(error.message().contains("200 ms"), "{}", error.message());
    server.stop().await;

    let server = start(&origin, |config| config.timeout = Duration::from_secs(10)).await;
    let status = common::raw::raw_unary_status(
        server.server.addr,
        "/tierkv.v1.CacheService/Get",
        &request("cache:api:slow"),
        "300m",
    )
    .await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    server.stop().await;
}

/// A 404 is NOT_FOUND and remembered for the negative TTL (no second
/// request); after it, the origin is asked again. A KvService write of the
/// key replaces the remembered 404 at once.
#[tokio::test]
async fn not_found_is_negatively_cached() {
    let origin = TestOrigin::start().await;
    let server = start(&origin, |config| {
        config.negative_ttl = Duration::from_secs(30)
    })
    .await;
    let mut cache = cache_client(&server).await;
    for _ in 0..3 {
        let error = cache.get(request("cache:api:missing")).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound);
    }
    assert_eq!(origin.count(), 1);
    assert_eq!(server.server.stats.cache().negative_hits, 2);

    server.clock.advance(Duration::from_secs(31));
    let error = cache.get(request("cache:api:missing")).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(origin.count(), 2);

    let mut kv = server.client.clone();
    kv.put(common::put_text("cache:api:missing", "written"))
        .await
        .unwrap();
    let found = get(&mut cache, "cache:api:missing").await;
    assert_eq!(text_of(&found), "written");

    origin.respond("/items/gone", Reply::status(410));
    let gone = cache.get(request("cache:api:gone")).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await;
}

/// 5xx is UNAVAILABLE and never stored; `no-store` and `private` bodies are
/// served but not stored; `max-age` caps the store TTL.
#[tokio::test]
async fn errors_and_cache_control_are_not_stored() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/broken", Reply::status(500));
    origin.respond(
        "/items/nostore",
        Reply::ok("secret").cache_control("no-store"),
    );
    origin.respond(
        "/items/private",
        Reply::ok("mine").cache_control("private, max-age=600"),
    );
    origin.respond(
        "/items/short",
        Reply::ok("brief").cache_control("max-age=10"),
    );
    let server = start(&origin, |_| {}).await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();

    for _ in 0..2 {
        let error = cache.get(request("cache:api:broken")).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
    }
    assert_eq!(
        origin.count_path("/items/broken"),
        2,
        "a 500 is never cached"
    );
    assert!(!common::exists(&mut kv, "cache:api:broken").await);

    for path in ["nostore", "private"] {
        let key = format!("cache:api:{path}");
        for _ in 0..2 {
            let response = get(&mut cache, &key).await;
            assert_eq!(tier(&response), pb::CacheTier::Origin);
            assert_eq!(response.version, 0, "not stored");
        }
        assert_eq!(origin.count_path(&format!("/items/{path}")), 2);
        assert!(!common::exists(&mut kv, &key).await);
    }

    assert_eq!(
        tier(&get(&mut cache, "cache:api:short").await),
        pb::CacheTier::Origin
    );
    server.clock.advance(Duration::from_secs(9));
    assert_eq!(
        tier(&get(&mut cache, "cache:api:short").await),
        pb::CacheTier::Memory
    );
    server.clock.advance(Duration::from_secs(2));
    assert_eq!(
        tier(&get(&mut cache, "cache:api:short").await),
        pb::CacheTier::Origin
    );
    assert_eq!(origin.count_path("/items/short"), 2);
    server.stop().await;
}

/// A stale copy with an ETag is revalidated: the origin's 304 carries no
/// body, and both tiers are fresh again with the stored body.
#[tokio::test]
async fn not_modified_refreshes_both_tiers_without_a_body() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/doc",
        Reply::ok("the document")
            .etag("\"v1\"")
            .content_type("text/plain")
            .conditional(),
    );
    let server = start(&origin, |config| {
        config.store_ttl = Duration::from_secs(60);
        config.memory_ttl = Duration::from_secs(10);
        config.stale_if_error = Duration::from_secs(600);
    })
    .await;
    let mut cache = cache_client(&server).await;
    let first = get(&mut cache, "cache:api:doc").await;
    assert_eq!(tier(&first), pb::CacheTier::Origin);

    server.clock.advance(Duration::from_secs(61));
    let revalidated = get(&mut cache, "cache:api:doc").await;
    assert_eq!(tier(&revalidated), pb::CacheTier::Origin);
    assert_eq!(text_of(&revalidated), "the document");
    assert_eq!(revalidated.content_type, "text/plain");
    assert!(
        revalidated.version > first.version,
        "the store was refreshed"
    );
    assert_eq!(revalidated.age.unwrap().seconds, 0);
    let requests = origin.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].header("if-none-match"), None);
    assert_eq!(requests[1].header("if-none-match"), Some("\"v1\""));

    // Fresh again in both tiers: memory now, the store once memory expires.
    assert_eq!(
        tier(&get(&mut cache, "cache:api:doc").await),
        pb::CacheTier::Memory
    );
    server.clock.advance(Duration::from_secs(11));
    assert_eq!(
        tier(&get(&mut cache, "cache:api:doc").await),
        pb::CacheTier::Store
    );
    assert_eq!(origin.count(), 2);
    server.stop().await;
}

/// Within stale-while-revalidate, the stale copy is served at once and one
/// background request refreshes it.
#[tokio::test]
async fn stale_while_revalidate_refreshes_in_the_background_once() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/feed", Reply::ok("old"));
    let server = start(&origin, |config| {
        config.store_ttl = Duration::from_secs(60);
        config.stale_while_revalidate = Duration::from_secs(30);
    })
    .await;
    let mut cache = cache_client(&server).await;
    assert_eq!(text_of(&get(&mut cache, "cache:api:feed").await), "old");
    origin.respond(
        "/items/feed",
        Reply::ok("new").delay(Duration::from_millis(200)),
    );

    server.clock.advance(Duration::from_secs(61));
    for _ in 0..5 {
        let stale = get(&mut cache, "cache:api:feed").await;
        assert_eq!(tier(&stale), pb::CacheTier::Stale);
        assert_eq!(text_of(&stale), "old");
    }
    let mut fresh = None;
    for _ in 0..200 {
        let response = get(&mut cache, "cache:api:feed").await;
        if text_of(&response) == "new" {
            fresh = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fresh = fresh.expect("the background refresh landed");
    // The refresh writes the store, then memory: a read in between finds
    // the new value in the store (and fills memory itself).
    assert!(
        matches!(tier(&fresh), pb::CacheTier::Memory | pb::CacheTier::Store),
        "{:?}",
        tier(&fresh)
    );
    assert_eq!(
        tier(&get(&mut cache, "cache:api:feed").await),
        pb::CacheTier::Memory
    );
    assert_eq!(
        origin.count_path("/items/feed"),
        2,
        "one refresh for all stale reads"
    );
    assert_eq!(server.server.stats.cache().background_refreshes, 1);
    server.stop().await;
}

/// Keys can never leave their origin's path segment: `../`, `?`, `#`,
/// `%2F`, a URL, a slash — each reaches `/items/<one segment>` on this
/// origin (recorded exactly as received) or is refused; another origin
/// listening next door receives nothing.
#[tokio::test]
async fn escaping_keys_stay_in_one_path_segment() {
    let origin = TestOrigin::start().await;
    let neighbour = TestOrigin::start().await;
    origin.respond_with(|_| Reply::ok("item"));
    neighbour.respond_with(|_| Reply::ok("wrong place"));
    let server = start(&origin, |_| {}).await;
    let mut cache = cache_client(&server).await;
    let escapes = [
        "../admin".to_string(),
        "../../etc/passwd".into(),
        "a?x=1".into(),
        "a#fragment".into(),
        "a%2Fb".into(),
        "a/b".into(),
        format!("http://{}/steal", neighbour.addr()),
        format!("//{}/steal", neighbour.addr()),
        "@evil.example".into(),
        "..".into(),
        "%2e%2e".into(),
        "a\\b".into(),
    ];
    for suffix in &escapes {
        let key = format!("{PREFIX}{suffix}");
        match cache.get(request(&key)).await {
            Ok(response) => assert_eq!(text_of(&response.into_inner()), "item", "{key}"),
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{key}: {status:?}"),
        }
    }
    assert!(origin.count() > 0);
    for seen in origin.requests() {
        let segment = seen
            .target
            .strip_prefix("/items/")
            .unwrap_or_else(|| panic!("left /items/: {}", seen.target));
        assert!(
            !segment.contains('/') && !segment.contains('?') && !segment.contains('#'),
            "{}",
            seen.target
        );
        assert!(segment != ".." && segment != ".", "{}", seen.target);
    }
    assert_eq!(neighbour.count(), 0);
    server.stop().await;
}

/// An HTTPS origin with a test CA is read over HTTP/2.
#[tokio::test]
async fn https_origin_with_a_test_ca() {
    let origin = TestOrigin::start_tls().await;
    origin.respond(
        "/items/secure",
        Reply::ok("over tls").content_type("text/plain"),
    );
    let server = start(&origin, |_| {}).await;
    let mut cache = cache_client(&server).await;
    let response = get(&mut cache, "cache:api:secure").await;
    assert_eq!(tier(&response), pb::CacheTier::Origin);
    assert_eq!(text_of(&response), "over tls");
    assert_eq!(origin.requests()[0].version, http::Version::HTTP_2);
    server.stop().await;
}

/// A KvService Put or Delete of an origin key held in memory is seen by the
/// next CacheService.Get; after a delete the origin is asked again.
#[tokio::test]
async fn kv_writes_of_origin_keys_are_seen_at_once() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/profile", Reply::ok("from origin"));
    let server = start(&origin, |_| {}).await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    assert_eq!(
        text_of(&get(&mut cache, "cache:api:profile").await),
        "from origin"
    );
    assert_eq!(
        tier(&get(&mut cache, "cache:api:profile").await),
        pb::CacheTier::Memory
    );

    kv.put(common::put_text("cache:api:profile", "from kv"))
        .await
        .unwrap();
    let read = get(&mut cache, "cache:api:profile").await;
    assert_eq!(text_of(&read), "from kv");
    assert_eq!(tier(&read), pb::CacheTier::Store);

    kv.delete(pb::DeleteRequest {
        key: "cache:api:profile".into(),
        if_version: None,
    })
    .await
    .unwrap();
    let refetched = get(&mut cache, "cache:api:profile").await;
    assert_eq!(text_of(&refetched), "from origin");
    assert_eq!(tier(&refetched), pb::CacheTier::Origin);
    assert_eq!(origin.count(), 2);
    server.stop().await;
}

/// Under a flood of distinct keys, memory stays within `cache.memory_mb`
/// (the weigher counts key, value and per-entry overhead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_its_bound_under_a_flood_of_keys() {
    let origin = TestOrigin::start().await;
    let body = "x".repeat(4096);
    let reply_body = body.clone();
    origin.respond_with(move |_| Reply::ok(reply_body.clone()).content_type("text/plain"));
    let server = common::start_with(|config| {
        config.cache.memory_mb = 1;
        let mut origin_config = origin.origin_config(PREFIX, "/items/{key}");
        origin_config.memory_ttl = Duration::from_secs(600);
        origin_config.store_ttl = Duration::from_secs(600);
        // 200 cold keys at once: all may be fetched together.
        origin_config.max_concurrent_fetches = 200;
        config.cache.origins = vec![origin_config];
    })
    .await;
    let mut cache = cache_client(&server).await;
    let bound = 1024 * 1024;
    let mut largest = 0;
    for round in 0..10 {
        let mut calls = Vec::new();
        for index in 0..200 {
            let mut client = cache.clone();
            let key = format!("cache:api:flood-{round}-{index}");
            calls.push(tokio::spawn(async move { get(&mut client, &key).await }));
        }
        for call in calls {
            assert_eq!(text_of(&call.await.unwrap()), body);
        }
        let counts = server.server.stats.cache();
        largest = largest.max(counts.memory_bytes);
        assert!(counts.memory_bytes <= bound, "round {round}: {counts:?}");
    }
    let counts = server.server.stats.cache();
    assert!(
        counts.memory_entries < 2000,
        "entries were evicted: {counts:?}"
    );
    assert!(
        largest > bound / 2,
        "the tier was used: {largest} bytes at most"
    );
    // Whatever memory let go (moka admits by frequency, not recency) is
    // still answered by the store, not the origin.
    let requests = origin.count();
    for index in [0, 100, 199] {
        let early = get(&mut cache, &format!("cache:api:flood-0-{index}")).await;
        assert_ne!(tier(&early), pb::CacheTier::Origin);
    }
    assert_eq!(origin.count(), requests);
    server.stop().await;
}
