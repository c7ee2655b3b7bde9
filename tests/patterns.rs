//! The Workers KV patterns of `docs/patterns.md`, run against a real server
//! with the generated client: the Rust snippets of that page come from here.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::time::Duration;

use common::*;
use tierkv::api::convert::{json_from_proto, json_to_proto};
use tierkv::clock::Clock;
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

type Client = KvServiceClient<Channel>;

/// Reads `key` as JSON: `Ok(None)` when absent, with its version.
async fn get_json(
    client: &mut Client,
    key: &str,
) -> Result<Option<(serde_json::Value, u64)>, tonic::Status> {
    let response = client
        .get(pb::GetRequest {
            key: key.into(),
            r#type: pb::ValueType::Json as i32,
            fallback: None,
        })
        .await?
        .into_inner();
    match response.value {
        Some(pb::get_response::Value::Json(json)) if response.found => {
            let json = json_from_proto(json).map_err(tonic::Status::internal)?;
            Ok(Some((json, response.version)))
        }
        _ => Ok(None),
    }
}

/// A JSON put, with a ttl in seconds if given.
fn put_json(key: &str, json: serde_json::Value, ttl_seconds: Option<i64>) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: Some(pb::put_request::Value::Json(json_to_proto(json))),
        expiration: ttl_seconds.map(|seconds| {
            pb::put_request::Expiration::Ttl(prost_types::Duration { seconds, nanos: 0 })
        }),
        ..Default::default()
    }
}

type Cache = pb::cache_service_client::CacheServiceClient<Channel>;

/// Memory → store → origin, in the server: the caller only reads. NOT_FOUND
/// when the origin has no such resource (404/410, remembered for a while).
async fn get_cached(cache: &mut Cache, key: &str) -> Result<serde_json::Value, tonic::Status> {
    let response = cache
        .get(pb::CacheGetRequest {
            key: key.into(),
            r#type: pb::ValueType::Json as i32,
        })
        .await?
        .into_inner();
    match response.value {
        Some(pb::cache_get_response::Value::Json(json)) => {
            json_from_proto(json).map_err(tonic::Status::internal)
        }
        _ => Err(tonic::Status::not_found(key.to_string())),
    }
}

/// Multi-tier caching with the origin configured for `cache:api:` (60 s in
/// memory, 5 min stored): the origin is asked once per 5 minutes, by 50
/// concurrent readers of a cold key too; the stored copy is JSON for
/// KvService.
#[tokio::test]
async fn multi_tier_caching() {
    use common::origin::{Reply, TestOrigin};
    let origin = TestOrigin::start().await;
    origin.respond(
        "/users",
        Reply::ok(r#"{"users":["ada","linus"]}"#).content_type("application/json"),
    );
    let mut server = start_with(|config| {
        let mut api = origin.origin_config("cache:api:", "/{key}");
        api.memory_ttl = Duration::from_secs(60);
        api.store_ttl = Duration::from_secs(300);
        config.cache.origins = vec![api];
    })
    .await;
    let cache = Cache::connect(server.server.endpoint()).await.unwrap();
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let mut cache = cache.clone();
            tokio::spawn(async move { get_cached(&mut cache, "cache:api:users").await })
        })
        .collect();
    for reader in readers {
        assert_eq!(
            reader.await.unwrap().unwrap(),
            serde_json::json!({"users": ["ada", "linus"]})
        );
    }
    assert_eq!(origin.count(), 1, "one origin request for 50 cold readers");
    server.clock.advance(Duration::from_secs(61));
    get_cached(&mut cache.clone(), "cache:api:users")
        .await
        .unwrap();
    assert_eq!(origin.count(), 1, "served by the store");
    let (stored, _) = get_json(&mut server.client, "cache:api:users")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, serde_json::json!({"users": ["ada", "linus"]}));
    server.clock.advance(Duration::from_secs(300));
    get_cached(&mut cache.clone(), "cache:api:users")
        .await
        .unwrap();
    assert_eq!(origin.count(), 2, "the stored copy expired after 5 minutes");
    server.stop().await;
}

/// The cached value of `key`, or `fetch` it and cache it: 300 s stored, 60 s in memory.
async fn get_cached_data(
    cache: &mut Cache,
    key: &str,
    fetch: impl std::future::Future<Output = serde_json::Value>,
) -> Result<serde_json::Value, tonic::Status> {
    let response = cache
        .get(pb::CacheGetRequest {
            key: key.into(),
            r#type: pb::ValueType::Json as i32,
        })
        .await?
        .into_inner();
    if let Some(pb::cache_get_response::Value::Json(json)) = response.value {
        return json_from_proto(json).map_err(tonic::Status::internal);
    }
    let data = fetch.await;
    cache
        .put(pb::CachePutRequest {
            key: key.into(),
            value: Some(pb::cache_put_request::Value::Json(json_to_proto(
                data.clone(),
            ))),
            store_ttl: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            memory_ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?;
    Ok(data)
}

/// API response caching: the fetcher runs on a miss only; the value comes
/// from memory, then the store, and is gone after 300 s.
#[tokio::test]
async fn api_response_caching() {
    let server = start().await;
    let mut cache = Cache::connect(server.server.endpoint()).await.unwrap();
    let first = get_cached_data(&mut cache, "cache:users", async {
        serde_json::json!({"v": 1})
    })
    .await
    .unwrap();
    server.clock.advance(Duration::from_secs(120));
    let cached = get_cached_data(&mut cache, "cache:users", async {
        panic!("a hit does not fetch")
    })
    .await
    .unwrap();
    assert_eq!((&first, &cached), (&serde_json::json!({"v": 1}), &first));
    server.clock.advance(Duration::from_secs(181));
    let refetched = get_cached_data(&mut cache, "cache:users", async {
        serde_json::json!({"v": 2})
    })
    .await
    .unwrap();
    assert_eq!(
        refetched,
        serde_json::json!({"v": 2}),
        "expired after 300 s"
    );
    server.stop().await;
}

/// Creates a session for `user_id`: 24 h, with its creation time as metadata.
async fn create_session(
    client: &mut Client,
    user_id: &str,
    now_millis: u64,
) -> Result<String, tonic::Status> {
    let session_id = format!("{:032x}", rand_u128());
    let mut put = put_json(
        &format!("sess:{session_id}"),
        serde_json::json!({"userId": user_id}),
        Some(86_400),
    );
    put.metadata = Some(json_to_proto(serde_json::json!({"createdAt": now_millis})));
    // Never overwrite an existing session, however unlikely the collision.
    put.precondition = Some(pb::put_request::Precondition::IfAbsent(true));
    client.put(put).await?;
    Ok(session_id)
}

/// The session's data, `None` once it expired: expiry is exact, no
/// `expiresAt` check needed.
async fn get_session(
    client: &mut Client,
    session_id: &str,
) -> Result<Option<serde_json::Value>, tonic::Status> {
    Ok(get_json(client, &format!("sess:{session_id}"))
        .await?
        .map(|(data, _)| data))
}

fn rand_u128() -> u128 {
    // Tests only: real session ids need a CSPRNG (SessionService will do it).
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Session management: a session reads back until its 24 h ttl passes, then
/// is gone at once.
#[tokio::test]
async fn session_management() {
    let mut server = start().await;
    let now = server.clock.now_millis();
    let id = create_session(&mut server.client, "u-123", now)
        .await
        .unwrap();
    let data = get_session(&mut server.client, &id).await.unwrap();
    assert_eq!(data, Some(serde_json::json!({"userId": "u-123"})));
    server.clock.advance(Duration::from_secs(86_399));
    assert!(get_session(&mut server.client, &id)
        .await
        .unwrap()
        .is_some());
    server.clock.advance(Duration::from_secs(1));
    assert_eq!(get_session(&mut server.client, &id).await.unwrap(), None);
    server.stop().await;
}

type Sessions = SessionServiceClient<Channel>;

/// Creates a 24 h session for `user_id`; returns its token (the server
/// cannot show it again).
async fn create_user_session(
    sessions: &mut Sessions,
    user_id: &str,
) -> Result<String, tonic::Status> {
    let session = sessions
        .create(pb::CreateSessionRequest {
            user_id: user_id.into(),
            ttl: Some(prost_types::Duration {
                seconds: 86_400,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(session.token)
}

/// The session a request's token belongs to, `None` when it has none: any
/// NOT_FOUND means "log in again".
async fn current_session(
    sessions: &mut Sessions,
    token: &str,
) -> Result<Option<pb::Session>, tonic::Status> {
    match sessions
        .get(pb::GetSessionRequest {
            token: token.into(),
            touch: true,
        })
        .await
    {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status), // UNAVAILABLE / DEADLINE_EXCEEDED: retry later
    }
}

/// Session management with the SessionService: create, get on every
/// request, gone once the 24 h are over.
#[tokio::test]
async fn session_management_with_the_session_service() {
    let server = start().await;
    let mut sessions = connect_sessions(&server.server.endpoint()).await;
    let token = create_user_session(&mut sessions, "u-123").await.unwrap();
    let session = current_session(&mut sessions, &token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.user_id, "u-123");
    server.clock.advance(Duration::from_secs(86_399));
    assert!(current_session(&mut sessions, &token)
        .await
        .unwrap()
        .is_some());
    server.clock.advance(Duration::from_secs(1));
    assert!(current_session(&mut sessions, &token)
        .await
        .unwrap()
        .is_none());
    server.stop().await;
}

/// Sets one field of a coalesced JSON object without losing concurrent
/// updates of other fields: read, modify, write back with `if_version`,
/// retry on ABORTED.
async fn set_field(
    client: &mut Client,
    key: &str,
    field: &str,
    value: serde_json::Value,
) -> Result<u64, tonic::Status> {
    loop {
        let (mut object, version) = get_json(client, key)
            .await?
            .ok_or_else(|| tonic::Status::not_found(key.to_string()))?;
        object[field] = value.clone();
        let put = pb::PutRequest {
            key: key.into(),
            value: Some(pb::put_request::Value::Json(json_to_proto(object))),
            precondition: Some(pb::put_request::Precondition::IfVersion(version)),
            ..Default::default()
        };
        match client.put(put).await {
            Ok(response) => return Ok(response.into_inner().version),
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => return Err(status),
        }
    }
}

/// Coalesced keys: one JSON object per entity, fields updated safely.
#[tokio::test]
async fn coalesce_cold_keys() {
    let mut server = start().await;
    let client = &mut server.client;
    let profile = serde_json::json!({"name": "John", "email": "john@example.com", "role": "admin"});
    let put = put_json("user:123:profile", profile, None);
    client.put(put).await.unwrap();

    // Another writer changes the object between our read and our write.
    let (_, seen) = get_json(client, "user:123:profile").await.unwrap().unwrap();
    set_field(client, "user:123:profile", "role", "owner".into())
        .await
        .unwrap();
    let stale = pb::PutRequest {
        key: "user:123:profile".into(),
        value: Some(pb::put_request::Value::Text("stale".into())),
        precondition: Some(pb::put_request::Precondition::IfVersion(seen)),
        ..Default::default()
    };
    assert_eq!(client.put(stale).await.unwrap_err().code(), Code::Aborted);
    set_field(client, "user:123:profile", "email", "j@example.com".into())
        .await
        .unwrap();
    let (profile, _) = get_json(client, "user:123:profile").await.unwrap().unwrap();
    assert_eq!(
        profile,
        serde_json::json!({"name": "John", "email": "j@example.com", "role": "owner"})
    );
    server.stop().await;
}

/// Every id under `prefix`, paging through the listing.
async fn list_ids(client: &mut Client, prefix: &str) -> Result<Vec<String>, tonic::Status> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.into(),
                page_size: 2,
                page_token,
            })
            .await?
            .into_inner();
        ids.extend(
            page.keys
                .into_iter()
                .filter_map(|key| key.name.strip_prefix(prefix).map(str::to_string)),
        );
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// Prefix namespacing: a listing by prefix sees exactly its keys, in order.
#[tokio::test]
async fn prefix_namespacing() {
    let mut server = start().await;
    put_all(
        &mut server.client,
        &[
            "user:123:profile",
            "user:123:settings",
            "user:456:profile",
            "api:users",
            "feature:flags:beta",
        ],
    )
    .await;
    assert_eq!(
        list_ids(&mut server.client, "user:").await.unwrap(),
        vec!["123:profile", "123:settings", "456:profile"]
    );
    assert_eq!(
        list_ids(&mut server.client, "user:123:").await.unwrap(),
        vec!["profile", "settings"]
    );
    server.stop().await;
}

/// Metadata versioning: the server migrates old records. A `[[migrations]]`
/// step declares v1 → v2 for `user:`; a v1 record reads back migrated (and
/// is written back), and `AdminService.Migrate` migrates the rest in batch.
#[tokio::test]
async fn metadata_versioning() {
    let mut server = start_with(|config| {
        config.migrations = vec![tierkv::migrate::MigrationStep {
            prefix: "user:".into(),
            from: 1,
            to: 2,
            patch: r#"[{"op": "copy", "from": "/name", "path": "/userName"}]"#.into(),
        }]
    })
    .await;
    let client = &mut server.client;
    // Old writers keep writing v1 (schema_version unset means 1)...
    for id in ["123", "124", "125"] {
        client
            .put(put_json(
                &format!("user:{id}"),
                serde_json::json!({"name": "John"}),
                None,
            ))
            .await
            .unwrap();
    }
    // ...new ones declare the format they write.
    let mut v2 = put_json("user:126", serde_json::json!({"userName": "Ann"}), None);
    v2.schema_version = 2;
    client.put(v2).await.unwrap();

    // migrateIfNeeded is a plain Get now.
    let (user, _) = get_json(client, "user:123").await.unwrap().unwrap();
    assert_eq!(
        user,
        serde_json::json!({"name": "John", "userName": "John"})
    );
    let response = client.get(get("user:123")).await.unwrap().into_inner();
    assert_eq!(response.schema_version, 2);
    let metadata = json_from_proto(response.metadata.unwrap()).unwrap();
    assert!(metadata["migratedAt"].is_string(), "{metadata}");

    // The rest in batch, instead of waiting for reads.
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let mut progress = admin
        .migrate(pb::MigrateRequest {
            prefix: "user:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut state = None;
    while let Some(message) = progress.message().await.unwrap() {
        state = message.state;
    }
    let state = state.unwrap();
    assert!(state.done);
    assert_eq!(state.scanned, 4);
    // 124 and 125 needed it; 126 was written as v2; 123 may or may not have
    // been written back yet by its read.
    assert_eq!(state.migrated + state.already_current, 4);
    assert!(state.migrated >= 2);
    let listed = client
        .list(pb::ListRequest {
            prefix: "user:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.keys.iter().all(|key| key.schema_version == 2));
    server.stop().await;
}

/// Reads `key` as JSON, answering `fallback` when it is missing or tierkv
/// cannot answer within 200 ms. Retryable failures are logged differently
/// from the others.
async fn resilient_get(
    client: &mut Client,
    key: &str,
    fallback: serde_json::Value,
) -> serde_json::Value {
    let mut request = tonic::Request::new(pb::GetRequest {
        key: key.into(),
        r#type: pb::ValueType::Json as i32,
        fallback: None,
    });
    request.set_timeout(Duration::from_millis(200));
    match client.get(request).await {
        Ok(response) => match response.into_inner().value {
            Some(pb::get_response::Value::Json(json)) => json_from_proto(json).unwrap_or(fallback),
            _ => fallback,
        },
        Err(status) => {
            let retryable = matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded);
            eprintln!("tierkv error (retryable: {retryable}): {:?}", status.code());
            fallback
        }
    }
}

/// Error boundary: a hit, a miss, a value that is not JSON and a server
/// that is gone all answer something usable.
#[tokio::test]
async fn error_boundary() {
    let server = start().await;
    let mut client = server.client.clone();
    let defaults = serde_json::json!({"theme": "light", "maxItems": 10});
    let put = put_json("config:app", serde_json::json!({"theme": "dark"}), None);
    client.put(put).await.unwrap();
    client.put(put_text("config:broken", "{")).await.unwrap();

    assert_eq!(
        resilient_get(&mut client, "config:app", defaults.clone()).await,
        serde_json::json!({"theme": "dark"})
    );
    assert_eq!(
        resilient_get(&mut client, "config:none", defaults.clone()).await,
        defaults
    );
    assert_eq!(
        resilient_get(&mut client, "config:broken", defaults.clone()).await,
        defaults,
        "FAILED_PRECONDITION falls back"
    );
    server.stop().await;
    assert_eq!(
        resilient_get(&mut client, "config:app", defaults.clone()).await,
        defaults,
        "UNAVAILABLE falls back"
    );
}

/// Sets fields of a coalesced JSON object with one `Patch`: the server
/// merges and retries on conflict, so concurrent writers of different fields
/// never lose each other's change. `null` removes a field.
async fn update_profile(
    client: &mut Client,
    key: &str,
    changes: serde_json::Value,
) -> Result<(serde_json::Value, u64), tonic::Status> {
    let response = client
        .patch(pb::PatchRequest {
            key: key.into(),
            merge_patch: Some(json_to_proto(changes)),
            ..Default::default()
        })
        .await?
        .into_inner();
    let value = response.value.map(json_from_proto).transpose();
    let value = value.map_err(tonic::Status::internal)?.unwrap_or_default();
    Ok((value, response.version))
}

/// Coalesced keys with `Patch`: two writers of different fields at once,
/// then a field removed; no read-modify-write loop in the client.
#[tokio::test]
async fn coalesce_cold_keys_with_patch() {
    let mut server = start().await;
    let profile = serde_json::json!({"name": "John", "email": "john@example.com", "role": "admin"});
    server
        .client
        .put(put_json("user:123:profile", profile, None))
        .await
        .unwrap();
    let (mut a, mut b) = (server.client.clone(), server.client.clone());
    let (role, email) = tokio::join!(
        update_profile(
            &mut a,
            "user:123:profile",
            serde_json::json!({"role": "owner"})
        ),
        update_profile(
            &mut b,
            "user:123:profile",
            serde_json::json!({"email": "j@example.com"})
        ),
    );
    role.unwrap();
    email.unwrap();
    let (profile, _) = update_profile(
        &mut server.client,
        "user:123:profile",
        serde_json::json!({"name": null, "displayName": "John"}),
    )
    .await
    .unwrap();
    assert_eq!(
        profile,
        serde_json::json!({"displayName": "John", "email": "j@example.com", "role": "owner"})
    );
    server.stop().await;
}

/// Reads `key` as JSON with the server's fallback: a missing or expired key,
/// a failed read, or one that would miss the 200 ms deadline answers
/// `fallback` with OK. Only an unreachable server is left to the client.
async fn resilient_get_with_fallback(
    client: &mut Client,
    key: &str,
    fallback: serde_json::Value,
) -> serde_json::Value {
    let mut request = tonic::Request::new(pb::GetRequest {
        key: key.into(),
        r#type: pb::ValueType::Json as i32,
        fallback: Some(json_to_proto(fallback.clone())),
    });
    request.set_timeout(Duration::from_millis(200));
    match client.get(request).await {
        Ok(response) => match response.into_inner().value {
            Some(pb::get_response::Value::Json(json)) => json_from_proto(json).unwrap_or(fallback),
            _ => fallback,
        },
        Err(status) => {
            eprintln!("tierkv error: {:?}", status.code());
            fallback
        }
    }
}

crate::rocksdb_only! {
    "injects RocksDB read faults (a local-only test hook)";
    /// Error boundary with the server's fallback: a hit, a miss, a storage
    /// failure and a server that is gone all answer something usable.
    #[tokio::test]
    async fn error_boundary_with_server_fallback() {
        let server = start().await;
        let mut client = server.client.clone();
        let defaults = serde_json::json!({"theme": "light", "maxItems": 10});
        let put = put_json("config:app", serde_json::json!({"theme": "dark"}), None);
        client.put(put).await.unwrap();
        assert_eq!(
            resilient_get_with_fallback(&mut client, "config:app", defaults.clone()).await,
            serde_json::json!({"theme": "dark"})
        );
        assert_eq!(
            resilient_get_with_fallback(&mut client, "config:none", defaults.clone()).await,
            defaults
        );
        let fault = server.rocks().inject_read_fault(None);
        assert_eq!(
            resilient_get_with_fallback(&mut client, "config:app", defaults.clone()).await,
            defaults,
            "a failed read answers the fallback"
        );
        drop(fault);
        assert_eq!(server.server.stats.fallbacks().total(), 2);
        server.stop().await;
        assert_eq!(
            resilient_get_with_fallback(&mut client, "config:app", defaults.clone()).await,
            defaults,
            "UNAVAILABLE falls back"
        );
    }
}
