//! A fill or refresh never replaces a newer commit (issue 14, section 1),
//! and a purge deletes only what it listed. Through the real server and the
//! generated client, against a real local HTTP origin whose answer the test
//! holds back with a gate, so each race happens in exactly the order written:
//! the origin request is in flight, the test commits a Put or an Invalidate,
//! then the origin answers.
//!
//! What the Get that lost the race answers: the newer committed record (tier
//! STORE, its version) when there is one; otherwise the origin's answer with
//! `stored = false` and `version = 0`. Either way neither tier holds the
//! older value afterwards.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::time::Duration;

use common::origin::{Reply, TestOrigin};
use common::{KvServiceClient, TestServer};
use tierkv::cache::config::OriginConfig;
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

use pb::cache_service_client::CacheServiceClient;

const PREFIX: &str = "cache:api:";

async fn cache_client(server: &TestServer) -> CacheServiceClient<Channel> {
    CacheServiceClient::connect(server.server.endpoint())
        .await
        .expect("connect")
}

/// A server whose `cache:api:` keys read through `origin` at `/items/{key}`.
async fn start(origin: &TestOrigin, configure: impl FnOnce(&mut OriginConfig)) -> TestServer {
    let mut config = origin.origin_config(PREFIX, "/items/{key}");
    config.memory_ttl = Duration::from_secs(60);
    config.store_ttl = Duration::from_secs(300);
    configure(&mut config);
    common::start_with(|server| server.cache.origins = vec![config]).await
}

async fn get(cache: &mut CacheServiceClient<Channel>, key: &str) -> pb::CacheGetResponse {
    cache
        .get(pb::CacheGetRequest {
            key: key.to_string(),
            r#type: 0,
        })
        .await
        .expect("get")
        .into_inner()
}

/// Starts a CacheService.Get of `key` on its own task.
fn spawn_get(
    cache: &CacheServiceClient<Channel>,
    key: &str,
) -> tokio::task::JoinHandle<pb::CacheGetResponse> {
    let mut cache = cache.clone();
    let key = key.to_string();
    tokio::spawn(async move { get(&mut cache, &key).await })
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

fn kv_text(response: &pb::GetResponse) -> String {
    match &response.value {
        Some(pb::get_response::Value::Text(text)) => text.clone(),
        Some(pb::get_response::Value::Bytes(bytes)) => String::from_utf8(bytes.clone()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn kv_get(kv: &mut KvServiceClient<Channel>, key: &str) -> pb::GetResponse {
    kv.get(common::get(key)).await.expect("kv get").into_inner()
}

async fn kv_put(kv: &mut KvServiceClient<Channel>, key: &str, text: &str) -> u64 {
    kv.put(common::put_text(key, text))
        .await
        .expect("kv put")
        .into_inner()
        .version
}

async fn invalidate(cache: &mut CacheServiceClient<Channel>, key: &str) -> bool {
    cache
        .invalidate(pb::InvalidateRequest {
            key: key.to_string(),
        })
        .await
        .expect("invalidate")
        .into_inner()
        .existed
}

/// Waits until a background refresh of `key` is over: it either gave up
/// (counted as a discarded fill) or wrote something other than `version`.
async fn refresh_settled(server: &TestServer, key: &str, version: Option<u64>) {
    let mut kv = server.client.clone();
    for _ in 0..2000 {
        if server.server.stats.cache().discarded_fills > 0 {
            return;
        }
        let now = kv_get(&mut kv, key).await;
        if (now.found, now.version) != (version.is_some(), version.unwrap_or(0)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the background refresh of {key} never ended");
}

/// The reproduction: a KvService.Put of a cold key while its origin
/// request is in flight. The Put (acknowledged at version v) stays; the Get
/// answers it from the store; the origin's older body is in neither tier.
#[tokio::test]
async fn a_cold_fill_never_replaces_a_racing_put() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/k",
        Reply::ok("from origin").content_type("text/plain"),
    );
    let server = start(&origin, |_| {}).await;
    let cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    let key = "cache:api:k";

    let gate = origin.gate("/items/k");
    let filling = spawn_get(&cache, key);
    origin.wait_for_requests("/items/k", 1).await;
    let put_version = kv_put(&mut kv, key, "from kv").await;
    gate.open();

    let answered = filling.await.unwrap();
    assert_eq!(
        (
            text_of(&answered).as_str(),
            answered.version,
            tier(&answered)
        ),
        ("from kv", put_version, pb::CacheTier::Store),
        "the Get that lost the race answers the newer commit"
    );
    assert!(answered.stored);
    let mut cache = cache;
    for _ in 0..2 {
        let again = get(&mut cache, key).await;
        assert_eq!(
            (text_of(&again), again.version),
            ("from kv".into(), put_version)
        );
    }
    let stored = kv_get(&mut kv, key).await;
    assert_eq!(
        (kv_text(&stored), stored.version),
        ("from kv".into(), put_version)
    );
    assert_eq!(stored.expire_time, None, "not the cache's expiry");
    assert_eq!(server.server.stats.cache().discarded_fills, 1);
    assert_eq!(origin.count(), 1);
    server.stop().await;
}

/// A cold fill in flight while the key is written and then invalidated
/// stores nothing: its answer may predate the Invalidate. The Get answers
/// the origin's body marked as not stored; the next Get asks the origin
/// again and stores that answer.
#[tokio::test]
async fn a_cold_fill_racing_an_invalidate_stores_nothing() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/k", Reply::ok("before").content_type("text/plain"));
    let server = start(&origin, |_| {}).await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    let key = "cache:api:k";

    let gate = origin.gate("/items/k");
    let filling = spawn_get(&cache, key);
    origin.wait_for_requests("/items/k", 1).await;
    kv_put(&mut kv, key, "from kv").await;
    assert!(invalidate(&mut cache, key).await);
    gate.open();

    let answered = filling.await.unwrap();
    assert_eq!(text_of(&answered), "before");
    assert_eq!(
        (answered.version, answered.stored, tier(&answered)),
        (0, false, pb::CacheTier::Origin),
        "the origin's answer, not stored"
    );
    assert!(
        !kv_get(&mut kv, key).await.found,
        "nothing was re-installed"
    );
    assert_eq!(server.server.stats.cache().discarded_fills, 1);

    origin.respond("/items/k", Reply::ok("after").content_type("text/plain"));
    let refetched = get(&mut cache, key).await;
    assert_eq!(text_of(&refetched), "after");
    assert!(refetched.stored && refetched.version > 0);
    assert_eq!(tier(&get(&mut cache, key).await), pb::CacheTier::Memory);
    assert_eq!(origin.count(), 2);
    server.stop().await;
}

/// A key cached with stale-while-revalidate, read once it is stale: the
/// read answered the stale copy (STALE) and started a background refresh,
/// whose origin answer ("refreshed") waits behind `gate`.
struct RefreshInFlight {
    origin: TestOrigin,
    server: TestServer,
    cache: CacheServiceClient<Channel>,
    kv: KvServiceClient<Channel>,
    key: &'static str,
    gate: common::origin::Gate,
}

async fn refresh_in_flight() -> RefreshInFlight {
    let origin = TestOrigin::start().await;
    origin.respond("/items/feed", Reply::ok("old"));
    let server = start(&origin, |config| {
        config.store_ttl = Duration::from_secs(60);
        config.stale_while_revalidate = Duration::from_secs(30);
    })
    .await;
    let mut cache = cache_client(&server).await;
    let kv = server.client.clone();
    let key = "cache:api:feed";
    assert_eq!(text_of(&get(&mut cache, key).await), "old");

    origin.respond("/items/feed", Reply::ok("refreshed"));
    let gate = origin.gate("/items/feed");
    server.clock.advance(Duration::from_secs(61));
    let stale = get(&mut cache, key).await;
    assert_eq!(
        (tier(&stale), text_of(&stale)),
        (pb::CacheTier::Stale, "old".into())
    );
    origin.wait_for_requests("/items/feed", 2).await;
    RefreshInFlight {
        origin,
        server,
        cache,
        kv,
        key,
        gate,
    }
}

/// A stale-while-revalidate refresh in flight while the key is Put: the
/// refresh stores nothing, and both tiers answer the Put.
#[tokio::test]
async fn a_background_refresh_never_replaces_a_racing_put() {
    let RefreshInFlight {
        origin: _origin,
        server,
        mut cache,
        mut kv,
        key,
        gate,
    } = refresh_in_flight().await;
    let put_version = kv_put(&mut kv, key, "from kv").await;
    gate.open();
    refresh_settled(&server, key, Some(put_version)).await;

    let stored = kv_get(&mut kv, key).await;
    assert_eq!(
        (kv_text(&stored), stored.version),
        ("from kv".into(), put_version),
        "the refresh replaced the Put"
    );
    assert_eq!(stored.expire_time, None);
    for _ in 0..2 {
        let read = get(&mut cache, key).await;
        assert_eq!(
            (text_of(&read), read.version),
            ("from kv".into(), put_version)
        );
    }
    assert_eq!(server.server.stats.cache().discarded_fills, 1);
    assert_eq!(server.server.stats.cache().background_refreshes, 1);
    server.stop().await;
}

/// A stale-while-revalidate refresh in flight while the key is invalidated
/// re-installs nothing; the next Get asks the origin.
#[tokio::test]
async fn a_background_refresh_racing_an_invalidate_stores_nothing() {
    let RefreshInFlight {
        origin,
        server,
        mut cache,
        mut kv,
        key,
        gate,
    } = refresh_in_flight().await;
    assert!(invalidate(&mut cache, key).await);
    gate.open();
    refresh_settled(&server, key, None).await;

    assert!(
        !kv_get(&mut kv, key).await.found,
        "the refresh re-installed it"
    );
    assert_eq!(server.server.stats.cache().discarded_fills, 1);
    origin.respond("/items/feed", Reply::ok("after"));
    let refetched = get(&mut cache, key).await;
    assert_eq!(
        (text_of(&refetched), tier(&refetched)),
        ("after".into(), pb::CacheTier::Origin)
    );
    assert_eq!(origin.count_path("/items/feed"), 3);
    server.stop().await;
}

/// A server whose origin answers `/items/doc` with an ETag, 304 to a
/// matching conditional request; no stale-while-revalidate, so a Get after
/// the store TTL waits for the revalidation. Returns the first version.
async fn revalidation_set_up() -> (TestOrigin, TestServer, u64) {
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
    (origin, server, first.version)
}

/// A 304 revalidation in flight while the key is Put: the 304 does not
/// re-install the revalidated copy over the Put, and the waiting Get answers
/// the Put (not the old copy under its old version).
#[tokio::test]
async fn a_revalidation_never_replaces_a_racing_put() {
    let (origin, server, _) = revalidation_set_up().await;
    let cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    let key = "cache:api:doc";

    let gate = origin.gate("/items/doc");
    let revalidating = spawn_get(&cache, key);
    origin.wait_for_requests("/items/doc", 2).await;
    let put_version = kv_put(&mut kv, key, "from kv").await;
    gate.open();

    let answered = revalidating.await.unwrap();
    assert_eq!(
        (
            text_of(&answered).as_str(),
            answered.version,
            tier(&answered)
        ),
        ("from kv", put_version, pb::CacheTier::Store),
        "the Get that lost the race answers the newer commit"
    );
    assert_eq!(origin.requests()[1].header("if-none-match"), Some("\"v1\""));
    let stored = kv_get(&mut kv, key).await;
    assert_eq!(
        (kv_text(&stored), stored.version),
        ("from kv".into(), put_version)
    );
    let mut cache = cache;
    let read = get(&mut cache, key).await;
    assert_eq!(
        (text_of(&read), read.version),
        ("from kv".into(), put_version)
    );
    assert_eq!(server.server.stats.cache().discarded_fills, 1);
    server.stop().await;
}

/// A 304 revalidation in flight while the key is invalidated re-installs
/// nothing; the waiting Get answers the revalidated body marked as not
/// stored (version 0: the version it had is gone), and the next Get fetches
/// the whole body again.
#[tokio::test]
async fn a_revalidation_racing_an_invalidate_stores_nothing() {
    let (origin, server, first_version) = revalidation_set_up().await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    let key = "cache:api:doc";

    let gate = origin.gate("/items/doc");
    let revalidating = spawn_get(&cache, key);
    origin.wait_for_requests("/items/doc", 2).await;
    assert!(invalidate(&mut cache, key).await);
    gate.open();

    let answered = revalidating.await.unwrap();
    assert_eq!(text_of(&answered), "the document");
    assert_eq!(
        (answered.version, answered.stored, tier(&answered)),
        (0, false, pb::CacheTier::Origin),
        "not the version {first_version} the Invalidate deleted"
    );
    assert!(
        !kv_get(&mut kv, key).await.found,
        "nothing was re-installed"
    );
    assert_eq!(server.server.stats.cache().discarded_fills, 1);

    let refetched = get(&mut cache, key).await;
    assert_eq!(tier(&refetched), pb::CacheTier::Origin);
    assert!(refetched.stored && refetched.version > first_version);
    assert_eq!(origin.requests()[2].header("if-none-match"), None);
    server.stop().await;
}

fn purge(prefix: &str, expected_keys: Option<u64>) -> pb::PurgeRequest {
    pb::PurgeRequest {
        prefix: prefix.to_string(),
        expected_keys,
        dry_run: false,
    }
}

/// Waits until the paused writer holds more than `bytes` of queued writes
/// (every write, a delete too, takes some); returns how many it holds.
async fn queued_beyond(server: &TestServer, bytes: usize) -> usize {
    for _ in 0..2000 {
        let queued = server.rocks().queued_write_bytes();
        if queued > bytes {
            return queued;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no write queued beyond {bytes} bytes");
}

crate::rocksdb_only! {
    "pauses the RocksDB writer thread to order the race (a local-only test hook)";
    /// A purge deletes each key only at the version it listed. Its listing sees
    /// `b` and `c` at their first versions; a KvService.Put of `b` and an
    /// Invalidate of `c` commit after the listing and before the purge's
    /// deletes (the writer is paused while all three queue, in that order).
    /// The Put survives; `c` is not counted as purged; `a` is purged.
    #[tokio::test]
    async fn a_purge_deletes_only_the_versions_it_listed() {
        let server = common::start().await;
        let mut cache = cache_client(&server).await;
        let mut kv = server.client.clone();
        for key in ["cache:p:a", "cache:p:b", "cache:p:c", "cache:q"] {
            kv_put(&mut kv, key, "first").await;
        }
        assert_eq!(text_of(&get(&mut cache, "cache:p:b").await), "first");

        let pause = server.rocks().pause_writer();
        let rewrite = {
            let mut kv = kv.clone();
            tokio::spawn(async move { kv_put(&mut kv, "cache:p:b", "rewritten").await })
        };
        let queued = queued_beyond(&server, 0).await;
        let invalidating = {
            let mut cache = cache.clone();
            tokio::spawn(async move { invalidate(&mut cache, "cache:p:c").await })
        };
        let queued = queued_beyond(&server, queued).await;
        let purging = {
            let mut cache = cache.clone();
            tokio::spawn(async move { cache.purge(purge("cache:p:", Some(3))).await })
        };
        queued_beyond(&server, queued).await;
        drop(pause);

        let rewritten = rewrite.await.unwrap();
        assert!(invalidating.await.unwrap());
        let purged = purging.await.unwrap().expect("purge").into_inner();
        let b = kv_get(&mut kv, "cache:p:b").await;
        assert!(b.found, "the purge deleted a Put made after its listing");
        assert_eq!((kv_text(&b), b.version), ("rewritten".into(), rewritten));
        let through_cache = get(&mut cache, "cache:p:b").await;
        assert_eq!(
            (text_of(&through_cache), through_cache.version),
            ("rewritten".into(), rewritten)
        );
        assert_eq!(
            (purged.listed, purged.purged, purged.skipped, purged.more),
            (3, 1, 2, false)
        );
        assert!(!kv_get(&mut kv, "cache:p:a").await.found);
        assert!(!kv_get(&mut kv, "cache:p:c").await.found);
        assert!(kv_get(&mut kv, "cache:q").await.found);
        server.stop().await;
    }
}

/// Purge has DropNamespace's guard: a dry run counts; without the count, or
/// with another, FAILED_PRECONDITION (EXPECTED_KEYS_MISMATCH with the
/// count) and nothing is deleted. One call lists at most 10,000 keys and
/// says when there are more.
#[tokio::test]
async fn purge_is_guarded_and_bounded() {
    let server = common::start().await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();
    let keys: Vec<String> = (0..10_001).map(|i| format!("cache:p:{i:05}")).collect();
    for chunk in keys.chunks(5000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        common::put_all(&mut kv, &refs).await;
    }

    let dry = cache
        .purge(pb::PurgeRequest {
            dry_run: true,
            ..purge("cache:p:", None)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.listed, dry.purged, dry.more), (10_000, 0, true));

    for expected in [None, Some(10_001), Some(3)] {
        let refused = cache
            .purge(purge("cache:p:", expected))
            .await
            .expect_err("refused without the right count");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("expected_keys = 10000"),
            "{}",
            refused.message()
        );
        let details = refused.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "EXPECTED_KEYS_MISMATCH");
        assert_eq!(info.metadata["actual_keys"], "10000");
        assert_eq!(details.precondition_failure().unwrap().violations.len(), 1);
    }
    assert_eq!(
        common::list_all(&mut kv, "cache:p:", 1000).await.len(),
        10_001
    );

    let first = cache
        .purge(purge("cache:p:", Some(10_000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (first.listed, first.purged, first.skipped, first.more),
        (10_000, 10_000, 0, true)
    );
    let rest = cache
        .purge(pb::PurgeRequest {
            dry_run: true,
            ..purge("cache:p:", None)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rest.listed, rest.more), (1, false));
    let last = cache
        .purge(purge("cache:p:", Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((last.purged, last.more), (1, false));
    assert!(common::list_all(&mut kv, "cache:p:", 1000).await.is_empty());
    server.stop().await;
}
