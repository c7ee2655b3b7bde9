//! What a read-only caller can make the cache do to its origins and its
//! disk: a reader looping over random keys with tiny deadlines, measured at
//! a real local origin (the requests it receives) and in the real server's
//! store (the records and bytes under the origin's prefix, listed).

mod common;

use std::time::Duration;

use common::origin::{Reply, TestOrigin};
use common::TestServer;
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

fn request(key: &str, timeout: Option<Duration>) -> tonic::Request<pb::CacheGetRequest> {
    let mut request = tonic::Request::new(pb::CacheGetRequest {
        key: key.to_string(),
        r#type: 0,
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Waits until every origin request the server started has reached the
/// origin (they are sent from detached tasks), so counts compare whole.
async fn settle(server: &TestServer, origins: &[&TestOrigin]) {
    for _ in 0..500 {
        let started = server.server.stats.cache().origin_requests as usize;
        let arrived: usize = origins.iter().map(|origin| origin.count()).sum();
        if arrived >= started {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (a bounded while) until `origin` has received `count` requests.
async fn until(origin: &TestOrigin, count: usize) {
    for _ in 0..500 {
        if origin.count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `count` random keys under `prefix`, each read with a 100 ms deadline (far
/// shorter than the origin takes), all at once; the codes they ended with.
async fn burst(server: &TestServer, prefix: &str, count: usize) -> Vec<Code> {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..count {
        let mut cache = cache_client(server).await;
        let key = format!("{prefix}random-{i}-{}", rand_suffix(i));
        calls.spawn(async move {
            match cache
                .get(request(&key, Some(Duration::from_millis(100))))
                .await
            {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            }
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = calls.join_next().await {
        codes.push(code.unwrap());
    }
    codes
}

fn rand_suffix(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20
}

/// The attack of the issue: a read-only caller sends 100 reads of random
/// keys at once, each giving up after 100 ms, against an origin that hangs.
/// Every read starts a detached fetch that outlives it; with the caps only
/// `max_concurrent_fetches` of them reach the origin, the rest are refused
/// RESOURCE_EXHAUSTED with a retry delay, and the permits come back when the
/// fetches end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_keys_with_tiny_deadlines_stay_within_the_fetch_cap() {
    let origin = TestOrigin::start().await;
    origin.respond_with(|_| Reply::ok("slow").delay(Duration::from_secs(60)));
    let mut config = origin.origin_config(PREFIX, "/items/{key}");
    config.timeout = Duration::from_secs(30);
    config.max_concurrent_fetches = 4;
    let server = common::start_with(|server| server.cache.origins = vec![config]).await;

    let codes = burst(&server, PREFIX, 100).await;
    settle(&server, &[&origin]).await;
    let sent = server.server.stats.cache().origin_requests;
    assert!(
        origin.count() <= 4 && sent <= 4,
        "the origin received {} requests ({sent} started) from 100 reads; the cap is 4",
        origin.count()
    );
    let refused = codes
        .iter()
        .filter(|code| **code == Code::ResourceExhausted)
        .count();
    // Refused, or gave up waiting for a fetch (or, on a busy machine, for
    // the refusal); never answered.
    assert!(refused > 0, "{codes:?}");
    assert!(
        codes.iter().all(|code| matches!(
            code,
            Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled
        )),
        "{codes:?}"
    );
    assert!(
        server.server.stats.cache().fetches_refused >= refused as u64,
        "every refusal is counted"
    );

    // While the fetches hang, a read that needs the origin is told why and
    // when to come back.
    let mut cache = cache_client(&server).await;
    let status = cache
        .get(request("cache:api:one-more", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_concurrent_fetches") && status.message().contains('4'),
        "{status:?}"
    );
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().unwrap().reason,
        "ORIGIN_FETCHES_EXHAUSTED"
    );
    let delay = details.retry_info().unwrap().retry_delay.unwrap();
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );

    // The origin drops its connections: the fetches end and give their
    // permits back; reads reach the origin again.
    origin.stop().await;
    origin.respond_with(|_| Reply::ok("fast"));
    origin.restart().await;
    let mut answered = None;
    for _ in 0..500 {
        match cache.get(request("cache:api:after", None)).await {
            Ok(response) => {
                answered = Some(response.into_inner());
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let answered = answered.expect("the permits came back");
    assert_eq!(answered.tier, pb::CacheTier::Origin as i32);
    server.stop().await;
}

/// `cache.max_concurrent_fetches` bounds all origins together: with two
/// origins of 2 each and a global 3, the second origin gets one request while
/// the first holds two, and the next read is refused naming the global limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_cap_bounds_all_origins_together() {
    let first = TestOrigin::start().await;
    let second = TestOrigin::start().await;
    for origin in [&first, &second] {
        origin.respond_with(|_| Reply::ok("slow").delay(Duration::from_secs(60)));
    }
    let mut a = first.origin_config("cache:a:", "/items/{key}");
    let mut b = second.origin_config("cache:b:", "/items/{key}");
    for config in [&mut a, &mut b] {
        config.timeout = Duration::from_secs(30);
        config.max_concurrent_fetches = 2;
    }
    let server = common::start_with(|server| {
        server.cache.max_concurrent_fetches = 3;
        server.cache.origins = vec![a, b];
    })
    .await;

    // Reads that give up after a second; their fetches run on.
    let spawn_reads = |prefix: &'static str, count: usize| {
        let endpoint = server.server.endpoint();
        tokio::spawn(async move {
            let mut cache = CacheServiceClient::connect(endpoint).await.unwrap();
            for i in 0..count {
                let key = format!("{prefix}key-{i}");
                let _ = cache.get(request(&key, Some(Duration::from_secs(1)))).await;
            }
        })
    };
    let reads = spawn_reads("cache:a:", 10);
    until(&first, 2).await;
    reads.await.unwrap();
    spawn_reads("cache:b:", 1).await.unwrap();
    until(&second, 1).await;
    let mut cache = cache_client(&server).await;
    let status = cache
        .get(request("cache:b:refused", Some(Duration::from_secs(1))))
        .await
        .unwrap_err();
    settle(&server, &[&first, &second]).await;
    assert_eq!((first.count(), second.count()), (2, 1));
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("cache.max_concurrent_fetches"),
        "{status:?}"
    );
    server.stop().await;
}

/// Every key's record under `prefix`, and the bytes of their keys and values.
async fn stored(server: &TestServer, prefix: &str) -> (Vec<String>, u64) {
    let mut kv = server.client.clone();
    let keys = common::list_all(&mut kv, prefix, 1000).await;
    let mut bytes = 0u64;
    for key in &keys {
        let response = kv.get(common::get(key)).await.unwrap().into_inner();
        let value = match response.value {
            Some(pb::get_response::Value::Text(text)) => text.len(),
            Some(pb::get_response::Value::Bytes(bytes)) => bytes.len(),
            other => panic!("{other:?}"),
        };
        bytes += (key.len() + value) as u64;
    }
    (keys, bytes)
}

/// A reader of random keys fills the store only up to the origin's
/// `max_store_entries`: beyond it answers are served (from the origin) but
/// not stored, a client's own record under the prefix is written and never
/// evicted, the budget survives a restart, and it frees up as the cache's
/// records expire.
#[tokio::test]
async fn random_keys_fill_the_store_only_up_to_the_entry_cap() {
    let origin = TestOrigin::start().await;
    origin.respond_with(|request| Reply::ok(format!("{:<1000}", request.path)));
    let mut config = origin.origin_config(PREFIX, "/items/{key}");
    config.store_ttl = Duration::from_secs(300);
    config.memory_ttl = Duration::ZERO;
    config.max_store_entries = 10;
    let server = common::start_with(|server| server.cache.origins = vec![config]).await;
    let mut cache = cache_client(&server).await;
    let mut kv = server.client.clone();

    for i in 0..30 {
        let key = format!("{PREFIX}k{i:03}");
        let response = cache.get(request(&key, None)).await.unwrap().into_inner();
        assert_eq!(response.tier, pb::CacheTier::Origin as i32, "{key}");
        assert!(response.found);
    }
    assert_eq!(origin.count(), 30);
    let (keys, _) = stored(&server, PREFIX).await;
    assert_eq!(
        keys.len(),
        10,
        "30 origin answers stored {} records; the cap is 10",
        keys.len()
    );
    assert_eq!(server.server.stats.cache().stores_refused, 20);

    // A client's write under the prefix is not the cache's to refuse or evict.
    kv.put(common::put_text("cache:api:mine", "client data"))
        .await
        .unwrap();
    for i in 30..40 {
        cache
            .get(request(&format!("{PREFIX}k{i:03}"), None))
            .await
            .unwrap();
    }
    let (keys, _) = stored(&server, PREFIX).await;
    assert_eq!(keys.len(), 11);
    assert!(keys.contains(&"cache:api:mine".to_string()));

    // A restart does not reset the budget: it is read back from the store.
    let server = server.restart().await;
    let mut cache = cache_client(&server).await;
    for i in 40..45 {
        cache
            .get(request(&format!("{PREFIX}k{i:03}"), None))
            .await
            .unwrap();
    }
    assert_eq!(stored(&server, PREFIX).await.0.len(), 11);

    // The cache's records expire (fresh 5 min, no stale window): room again.
    server.clock.advance(Duration::from_secs(301));
    for i in 45..60 {
        cache
            .get(request(&format!("{PREFIX}k{i:03}"), None))
            .await
            .unwrap();
    }
    let (keys, _) = stored(&server, PREFIX).await;
    assert_eq!(keys.len(), 11, "{keys:?}");
    assert!(keys.contains(&"cache:api:mine".to_string()));
    assert!(keys.contains(&"cache:api:k045".to_string()));
    server.stop().await;
}

/// The byte cap: 1000-byte answers against `max_store_bytes` of 5000 store
/// four records; invalidating one makes room for one more.
#[tokio::test]
async fn random_keys_fill_the_store_only_up_to_the_byte_cap() {
    let origin = TestOrigin::start().await;
    origin.respond_with(|request| Reply::ok(format!("{:<1000}", request.path)));
    let mut config = origin.origin_config(PREFIX, "/items/{key}");
    config.memory_ttl = Duration::ZERO;
    config.max_store_bytes = 5000;
    let server = common::start_with(|server| server.cache.origins = vec![config]).await;
    let mut cache = cache_client(&server).await;

    for i in 0..20 {
        let response = cache
            .get(request(&format!("{PREFIX}k{i:03}"), None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.tier, pb::CacheTier::Origin as i32);
    }
    let (keys, bytes) = stored(&server, PREFIX).await;
    assert!(
        bytes <= 5000,
        "{bytes} bytes stored in {} records; the cap is 5000",
        keys.len()
    );
    assert_eq!(keys.len(), 4, "{keys:?}");

    // A deleted record leaves the budget (through the change feed).
    cache
        .invalidate(pb::InvalidateRequest {
            key: keys[0].clone(),
        })
        .await
        .unwrap();
    let mut refilled = false;
    for i in 20..220 {
        cache
            .get(request(&format!("{PREFIX}k{i:03}"), None))
            .await
            .unwrap();
        if stored(&server, PREFIX).await.0.len() == 4 {
            refilled = true;
            break;
        }
    }
    assert!(refilled, "the invalidated record's room was never reused");
    assert_eq!(stored(&server, PREFIX).await.0.len(), 4);
    server.stop().await;
}
