//! Versioned records and migrations against a real server: the seed's
//! `{name}` → `{name, userName}` scenario lazily and in batch, multi-step
//! chains, invalid configurations refused at start, concurrent writers
//! losing nothing, `kill -9` of the real binary in the middle of a batch
//! migration and its resumption, dry runs and records newer than the
//! server knows.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::process::*;
use common::*;
use tierkv::api::convert::{json_from_proto, json_to_proto};
use tierkv::config::Config;
use tierkv::engine::{Change, ChangeEvent, ChangeSubscription, Engine};
use tierkv::migrate::MigrationStep;
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use pb::cache_service_client::CacheServiceClient;

const COPY_NAME: &str = r#"[{"op": "copy", "from": "/name", "path": "/userName"}]"#;
const ADD_V3: &str = r#"[{"op": "add", "path": "/v3", "value": true}]"#;

fn step(prefix: &str, from: u32, to: u32, patch: &str) -> MigrationStep {
    MigrationStep {
        prefix: prefix.into(),
        from,
        to,
        patch: patch.into(),
    }
}

/// The seed's migration: v1 → v2 copies `name` to `userName`.
fn seed(config: &mut Config) {
    config.migrations = vec![step("user:", 1, 2, COPY_NAME)];
}

fn put_json(key: &str, json: serde_json::Value, schema_version: u32) -> pb::PutRequest {
    pb::PutRequest {
        key: key.to_string(),
        value: Some(pb::put_request::Value::Json(json_to_proto(json))),
        schema_version,
        ..Default::default()
    }
}

async fn read(client: &mut KvServiceClient<Channel>, key: &str) -> pb::GetResponse {
    client.get(get(key)).await.expect("get").into_inner()
}

fn json_of(response: &pb::GetResponse) -> serde_json::Value {
    match &response.value {
        Some(pb::get_response::Value::Json(json)) => json_from_proto(json.clone()).unwrap(),
        Some(pb::get_response::Value::Text(text)) => serde_json::Value::String(text.clone()),
        other => panic!("expected a JSON value, got {other:?}"),
    }
}

fn metadata_of(response: &pb::GetResponse) -> serde_json::Value {
    json_from_proto(response.metadata.clone().expect("metadata")).unwrap()
}

async fn next_event(changes: &mut ChangeSubscription) -> ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("an event within 10 s")
        .expect("an event")
}

/// Runs a migration to its end and returns every progress message.
async fn migrate(
    admin: &mut AdminServiceClient<Channel>,
    request: pb::MigrateRequest,
) -> Vec<pb::MigrateProgress> {
    let mut stream = admin.migrate(request).await.expect("migrate").into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.expect("progress") {
        messages.push(message);
    }
    messages
}

/// Starts the migration of `user:` in batches of `batch_size` at most
/// `rate` records a second, and returns its progress stream.
async fn paced_migration(
    admin: &mut AdminServiceClient<Channel>,
    batch_size: u32,
    rate: u32,
) -> tonic::Streaming<pb::MigrateProgress> {
    admin
        .migrate(pb::MigrateRequest {
            batch_size,
            max_records_per_second: Some(rate),
            ..migrate_request("user:")
        })
        .await
        .unwrap()
        .into_inner()
}

/// `GetMigration` of `prefix`.
async fn migration_state(
    admin: &mut AdminServiceClient<Channel>,
    prefix: &str,
) -> Result<tonic::Response<pb::MigrationState>, tonic::Status> {
    admin
        .get_migration(pb::GetMigrationRequest {
            prefix: prefix.into(),
        })
        .await
}

fn migrate_request(prefix: &str) -> pb::MigrateRequest {
    pb::MigrateRequest {
        prefix: prefix.to_string(),
        ..Default::default()
    }
}

fn last_state(messages: &[pb::MigrateProgress]) -> pb::MigrationState {
    messages
        .last()
        .and_then(|message| message.state.clone())
        .expect("a final state")
}

/// Writes `count` v1 users `user:NNNNN` = `{"name": "nN"}` in batches.
async fn write_users(client: &mut KvServiceClient<Channel>, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mutations = chunk
            .iter()
            .map(|n| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(put_json(
                    &format!("user:{n:05}"),
                    serde_json::json!({ "name": format!("n{n}") }),
                    0,
                ))),
            })
            .collect();
        client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await
            .expect("batch write");
    }
}

/// Every listed key under `prefix` with its stored schema version and version.
async fn listed(client: &mut KvServiceClient<Channel>, prefix: &str) -> Vec<pb::ListedKey> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size: 1000,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        keys.extend(page.keys);
        if page.next_page_token.is_empty() {
            return keys;
        }
        page_token = page.next_page_token;
    }
}

/// The seed, lazily: a v1 record reads back migrated (userName, schema 2,
/// migratedAt in its metadata, expiry kept), and the write-back lands as a
/// compare-and-set through the change feed, after which the stored record
/// is v2 with a new version.
#[tokio::test]
async fn seed_scenario_migrates_lazily_on_read() {
    let mut server = start_with(seed).await;
    let put = server
        .client
        .put(pb::PutRequest {
            metadata: Some(json_to_proto(serde_json::json!({"owner": "crm"}))),
            expiration: Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            })),
            ..put_json("user:123", serde_json::json!({"name": "John"}), 0)
        })
        .await
        .unwrap()
        .into_inner();
    let stored = read(&mut server.client, "user:123").await;
    assert_eq!(stored.schema_version, 2, "the read is migrated");

    // A fresh key, read with the change feed watching.
    server
        .client
        .put(put_json("user:124", serde_json::json!({"name": "Ann"}), 1))
        .await
        .unwrap();
    let mut changes = server.server.engine.subscribe();
    let first = read(&mut server.client, "user:124").await;
    assert_eq!(
        json_of(&first),
        serde_json::json!({"name": "Ann", "userName": "Ann"})
    );
    assert_eq!(first.schema_version, 2);
    // user:123's write-back may land first.
    let written = loop {
        let event = next_event(&mut changes).await;
        if &*event.key == "user:124" {
            break event;
        }
    };
    let Change::Put { version, .. } = written.change else {
        panic!("expected a put, got {written:?}");
    };
    assert!(version > first.version, "the write-back is a new version");
    let second = read(&mut server.client, "user:124").await;
    assert_eq!(second.version, version);
    assert_eq!(second.schema_version, 2);
    assert_eq!(json_of(&second), json_of(&first));

    // Expiry and metadata are kept; migratedAt comes from the server's clock.
    let john = read(&mut server.client, "user:123").await;
    assert_eq!(
        json_of(&john),
        serde_json::json!({"name": "John", "userName": "John"})
    );
    assert_eq!(john.expire_time, put.expire_time);
    let metadata = metadata_of(&john);
    assert_eq!(metadata["owner"], "crm");
    let migrated_at = metadata["migratedAt"].as_str().expect("migratedAt");
    let now = tierkv::migrate::rfc3339(
        tierkv::clock::Clock::now_millis(&*server.clock).max(server.server.engine.now_millis()),
    );
    assert_eq!(&migrated_at[..16], &now[..16], "{migrated_at} vs {now}");
    server.stop().await;
}

/// The seed in batch: `Migrate` migrates every v1 user once, reports
/// progress per batch, and a second run finds everything current.
/// GetMigration shows the finished run. Keys outside the prefix are untouched.
#[tokio::test]
async fn seed_scenario_migrates_in_batch() {
    let mut server = start_with(seed).await;
    write_users(&mut server.client, 250).await;
    server
        .client
        .put(put_json("cache:x", serde_json::json!({"name": "C"}), 1))
        .await
        .unwrap();
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let messages = migrate(
        &mut admin,
        pb::MigrateRequest {
            batch_size: 100,
            ..migrate_request("user:")
        },
    )
    .await;
    assert_eq!(messages.len(), 3, "one message per batch of 100");
    let state = last_state(&messages);
    assert!(state.done && !state.running);
    assert_eq!(
        (
            state.scanned,
            state.migrated,
            state.already_current,
            state.failed
        ),
        (250, 250, 0, 0)
    );
    assert_eq!(state.checkpoint, "user:00249");
    for key in listed(&mut server.client, "user:").await {
        assert_eq!(key.schema_version, 2, "{} stored migrated", key.name);
    }
    let user = read(&mut server.client, "user:00007").await;
    assert_eq!(
        json_of(&user),
        serde_json::json!({"name": "n7", "userName": "n7"})
    );
    assert!(metadata_of(&user)["migratedAt"].is_string());
    let other = listed(&mut server.client, "cache:").await;
    assert_eq!(other[0].schema_version, 1, "outside the prefix");

    let again = last_state(&migrate(&mut admin, migrate_request("user:")).await);
    assert_eq!((again.migrated, again.already_current), (0, 250));
    let shown = migration_state(&mut admin, "user:")
        .await
        .unwrap()
        .into_inner();
    assert!(shown.done && !shown.running && shown.finish_time.is_some());
    assert_eq!(shown.already_current, 250);
    let missing = migration_state(&mut admin, "user:none").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let uncovered = admin
        .migrate(migrate_request("cache:"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(uncovered.code(), Code::InvalidArgument);
    assert!(
        uncovered.message().contains("no migration"),
        "{uncovered:?}"
    );
    server.stop().await;
}

/// A chain 1 → 2 → 3 applies its steps in order, from each record's own
/// version; the longest migration prefix wins.
#[tokio::test]
async fn multi_step_chains_apply_in_order() {
    let mut server = start_with(|config| {
        config.migrations = vec![
            step(
                "user:",
                2,
                3,
                r#"[{"op": "move", "from": "/userName", "path": "/login"}]"#,
            ),
            step("user:", 1, 2, COPY_NAME),
            step("user:vip:", 1, 2, ADD_V3),
        ]
    })
    .await;
    let client = &mut server.client;
    client
        .put(put_json("user:1", serde_json::json!({"name": "a"}), 1))
        .await
        .unwrap();
    client
        .put(put_json(
            "user:2",
            serde_json::json!({"name": "b", "userName": "bee"}),
            2,
        ))
        .await
        .unwrap();
    client
        .put(put_json("user:vip:1", serde_json::json!({"name": "v"}), 1))
        .await
        .unwrap();
    let one = read(client, "user:1").await;
    assert_eq!(
        json_of(&one),
        serde_json::json!({"name": "a", "login": "a"})
    );
    assert_eq!(one.schema_version, 3);
    let two = read(client, "user:2").await;
    assert_eq!(
        json_of(&two),
        serde_json::json!({"name": "b", "login": "bee"})
    );
    let vip = read(client, "user:vip:1").await;
    assert_eq!(json_of(&vip), serde_json::json!({"name": "v", "v3": true}));
    assert_eq!(vip.schema_version, 2);
    // BatchGet migrates the same way.
    let batch = client
        .batch_get(pb::BatchGetRequest {
            keys: vec!["user:1".into(), "user:vip:1".into(), "user:none".into()],
            r#type: 0,
            fallback: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(batch[0].schema_version, 3);
    assert_eq!(batch[1].schema_version, 2);
    assert!(!batch[2].found);
    server.stop().await;
}

/// Invalid `[[migrations]]` are refused at start, naming the step; a valid
/// file with the seed's example parses.
#[tokio::test]
async fn invalid_migration_configs_are_refused_at_start() {
    let cases: Vec<(Vec<MigrationStep>, &str)> = vec![
        (
            vec![step("user:", 1, 2, COPY_NAME), step("user:", 3, 4, ADD_V3)],
            "migrations[1]",
        ),
        (
            vec![step("user:", 1, 2, COPY_NAME), step("user:", 1, 2, ADD_V3)],
            "already configured",
        ),
        (vec![step("user:", 1, 3, COPY_NAME)], "from + 1"),
        (
            vec![step("user:", 1, 2, "[{\"op\": \"jump\"}]")],
            "RFC 6902",
        ),
        (vec![step("user:", 1, 2, "not json")], "RFC 6902"),
        (
            vec![step("nowhere:", 1, 2, COPY_NAME)],
            "not inside a configured namespace",
        ),
        (vec![step("session:", 1, 2, COPY_NAME)], "owned by"),
    ];
    for (steps, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&dir);
        use_engine(&mut config);
        config.migrations = steps.clone();
        let error = match tierkv::server::RunningServer::start(
            config,
            tierkv::clock::ManualClock::starting_now(),
        )
        .await
        {
            Ok(server) => {
                server.stop().await.unwrap();
                panic!("{steps:?} was accepted");
            }
            Err(error) => error.to_string(),
        };
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tierkv.toml");
    std::fs::write(
        &file,
        "[[migrations]]\nprefix = \"user:\"\nfrom = 1\nto = 2\npatch = '[{\"op\": \"copy\", \"from\": \"/name\", \"path\": \"/userName\"}]'\n",
    )
    .unwrap();
    let config = Config::load(Some(&file), &HashMap::new()).unwrap();
    assert_eq!(config.migrations, vec![step("user:", 1, 2, COPY_NAME)]);
    config.validate().unwrap();
    std::fs::write(
        &file,
        "[[migrations]]\nprefix = \"user:\"\nfrom = 1\nto = 2\npatch = '[]'\nextra = 1\n",
    )
    .unwrap();
    let error = Config::load(Some(&file), &HashMap::new()).unwrap_err();
    assert!(error.to_string().contains("extra"), "{error}");
}

crate::rocksdb_only! {
    "pauses the RocksDB writer thread to order the race (a local-only test hook)";
    /// A writer that commits between a lazy read and its write-back wins: the
    /// write-back's compare-and-set fails and is dropped, the writer's value
    /// stays, and no further write follows.
    #[tokio::test]
    async fn concurrent_writer_wins_over_a_lazy_write_back() {
        let mut server = start_with(seed).await;
        let mut reader = server.client.clone();
        writer_wins_over_a_write_back(&mut server, "user:9", || async move {
            json_of(&read(&mut reader, "user:9").await)
        })
        .await;
        server.stop().await;
    }
}

/// The race of a lazy read against a writer: `key` holds `{"name": "old"}`
/// at schema version 1; a writer's put of `{"userName": "new"}` is queued
/// behind a paused writer thread, then `read_old` reads the key (it must
/// answer the old record migrated, and queue the write-back), then the
/// writer runs. The writer's put must be the only commit: the write-back's
/// compare-and-set fails and is dropped. Returns the writer's answer.
async fn writer_wins_over_a_write_back<F, Fut>(
    server: &mut TestServer,
    key: &str,
    read_old: F,
) -> pb::PutResponse
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    server
        .client
        .put(put_json(key, serde_json::json!({"name": "old"}), 1))
        .await
        .unwrap();
    let engine = server.rocks().clone();
    let mut changes = engine.subscribe();
    let pause = engine.pause_writer();
    // The writer's put is queued first...
    let mut writer = server.client.clone();
    let written_key = key.to_string();
    let write = tokio::spawn(async move {
        writer
            .put(put_json(
                &written_key,
                serde_json::json!({"userName": "new"}),
                2,
            ))
            .await
            .unwrap()
            .into_inner()
    });
    while engine.queued_write_bytes() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let queued = engine.queued_write_bytes();
    // ...then a read migrates the old record and queues its write-back.
    assert_eq!(
        read_old().await,
        serde_json::json!({"name": "old", "userName": "old"}),
        "the reader still gets a correct (migrated) answer"
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.queued_write_bytes() == queued {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the read queues a write-back");
    drop(pause);
    let written = write.await.unwrap();
    let event = next_event(&mut changes).await;
    assert!(
        matches!(
            event.change,
            Change::Put { version, expire_at_millis: None, .. } if version == written.version
        ),
        "{event:?}"
    );
    // A marker write: if the write-back had landed, its event would come first.
    server.client.put(put_text("marker", "m")).await.unwrap();
    assert_eq!(&*next_event(&mut changes).await.key, "marker");
    let now = read(&mut server.client, key).await;
    assert_eq!(json_of(&now), serde_json::json!({"userName": "new"}));
    assert_eq!(now.version, written.version);
    written
}

/// Writers rewriting keys while a batch migration runs lose nothing: every
/// writer's last value is there at the end (migrated if the writer wrote an
/// old version), and every record reads at the target version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_nothing_during_a_batch_migration() {
    let mut server = start_with(seed).await;
    write_users(&mut server.client, 2000).await;
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let last_written: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..2u64 {
        let mut client = server.client.clone();
        let last_written = Arc::clone(&last_written);
        writers.push(tokio::spawn(async move {
            for round in 0..300u64 {
                let n = (round * 7 + writer * 1000) % 2000;
                let key = format!("user:{n:05}");
                let stamp = writer * 1_000_000 + round;
                // Odd rounds write the new format, even ones the old one.
                let request = if round % 2 == 1 {
                    put_json(
                        &key,
                        serde_json::json!({"userName": "w", "stamp": stamp}),
                        2,
                    )
                } else {
                    put_json(&key, serde_json::json!({"name": "w", "stamp": stamp}), 1)
                };
                client.put(request).await.unwrap();
                last_written.lock().unwrap().insert(key, stamp);
            }
        }));
    }
    let state = last_state(
        &migrate(
            &mut admin,
            pb::MigrateRequest {
                batch_size: 50,
                ..migrate_request("user:")
            },
        )
        .await,
    );
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(state.done);
    assert_eq!(state.failed, 0);
    assert!(state.scanned >= 2000);
    let last_written = last_written.lock().unwrap().clone();
    assert!(!last_written.is_empty());
    for n in 0..2000 {
        let key = format!("user:{n:05}");
        let record = read(&mut server.client, &key).await;
        assert_eq!(record.schema_version, 2, "{key}");
        let value = json_of(&record);
        match last_written.get(&key) {
            Some(stamp) => {
                assert_eq!(value["stamp"], *stamp, "{key}: the writer's last value");
                assert_eq!(value["userName"], "w", "{key}");
            }
            None => assert_eq!(value["userName"], format!("n{n}"), "{key}"),
        }
    }
    server.stop().await;
}

/// A dry run counts what it would migrate and reports failures, but writes
/// nothing (no change event, versions unchanged) and saves no state.
#[tokio::test]
async fn dry_run_changes_nothing() {
    let mut server = start_with(seed).await;
    write_users(&mut server.client, 30).await;
    server
        .client
        .put(put_json("user:bad", serde_json::json!({"nick": "x"}), 1))
        .await
        .unwrap();
    let before = listed(&mut server.client, "user:").await;
    let mut changes = server.server.engine.subscribe();
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let messages = migrate(
        &mut admin,
        pb::MigrateRequest {
            dry_run: true,
            ..migrate_request("user:")
        },
    )
    .await;
    let state = last_state(&messages);
    assert!(state.dry_run && state.done);
    assert_eq!((state.migrated, state.failed), (30, 1));
    let failures: Vec<&pb::MigrationFailure> = messages
        .iter()
        .flat_map(|message| &message.failures)
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].key, "user:bad");
    assert!(
        failures[0].reason.contains("from version 1 to 2"),
        "{failures:?}"
    );
    assert_eq!(changes.try_recv(), Ok(None), "nothing was written");
    assert_eq!(listed(&mut server.client, "user:").await, before);
    let saved = migration_state(&mut admin, "user:").await.unwrap_err();
    assert_eq!(saved.code(), Code::NotFound, "a dry run saves no state");
    server.stop().await;
}

/// A record newer than the server's target, or one no patch applies to
/// (a failing op, a value that is not JSON), is returned as stored and
/// never written, lazily or in batch.
#[tokio::test]
async fn newer_and_unmigratable_records_are_left_alone() {
    let mut server = start_with(seed).await;
    let client = &mut server.client;
    client
        .put(put_json("user:new", serde_json::json!({"handle": "n"}), 5))
        .await
        .unwrap();
    client
        .put(put_json("user:odd", serde_json::json!({"nick": "o"}), 1))
        .await
        .unwrap();
    client.put(put_text("user:text", "not json")).await.unwrap();
    let before = listed(client, "user:").await;
    let mut changes = server.server.engine.subscribe();
    let newer = read(client, "user:new").await;
    assert_eq!(newer.schema_version, 5);
    assert_eq!(json_of(&newer), serde_json::json!({"handle": "n"}));
    let odd = read(client, "user:odd").await;
    assert_eq!(
        (odd.schema_version, json_of(&odd)),
        (1, serde_json::json!({"nick": "o"}))
    );
    let text = read(client, "user:text").await;
    assert_eq!(text.schema_version, 1);

    let mut admin = connect_admin(&server.server.endpoint()).await;
    let messages = migrate(&mut admin, migrate_request("user:")).await;
    let state = last_state(&messages);
    assert_eq!(
        (state.migrated, state.newer_than_known, state.failed),
        (0, 1, 2)
    );
    let mut failed: Vec<String> = messages
        .iter()
        .flat_map(|message| message.failures.iter().map(|failure| failure.key.clone()))
        .collect();
    failed.sort();
    assert_eq!(failed, vec!["user:odd", "user:text"]);
    assert_eq!(changes.try_recv(), Ok(None), "nothing was written");
    assert_eq!(listed(&mut server.client, "user:").await, before);

    // The reads were counted (the batch run's are not lazy reads).
    let scrape =
        common::scrape_metrics(server.server.metrics_addr.expect("metrics listener")).await;
    assert!(
        scrape.contains("tierkv_lazy_migration_failed_total 2\n"),
        "{scrape}"
    );
    assert!(scrape.contains("tierkv_lazy_migration_newer_than_known_total 1\n"));
    assert!(scrape.contains("tierkv_lazy_migration_written_back_total 0\n"));

    // Writes refuse absurd schema versions, naming the limit.
    let refused = server
        .client
        .put(put_json("user:x", serde_json::json!({}), 1_000_001))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("limit is 1000000"),
        "{refused:?}"
    );
    server.stop().await;
}

/// Only one migration of a prefix runs at a time: a second call is ABORTED.
/// Dropping the call stops the run, which keeps its checkpoint; a new call
/// resumes from it.
#[tokio::test]
async fn one_run_per_prefix_and_a_dropped_call_resumes() {
    let mut server = start_with(seed).await;
    write_users(&mut server.client, 400).await;
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let mut stream = paced_migration(&mut admin, 50, 200).await;
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.state.unwrap().scanned, 50);
    let busy = admin
        .migrate(migrate_request("user:"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(busy.code(), Code::Aborted);
    let running = migration_state(&mut admin, "user:")
        .await
        .unwrap()
        .into_inner();
    assert!(running.running && !running.done);
    drop(stream);
    // The run notices at its next batch and stops, keeping its checkpoint.
    let stopped = loop {
        let state = migration_state(&mut admin, "user:")
            .await
            .unwrap()
            .into_inner();
        if !state.running {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!stopped.done && stopped.scanned < 400, "{stopped:?}");
    assert!(!stopped.checkpoint.is_empty());
    let resumed = last_state(&migrate(&mut admin, migrate_request("user:")).await);
    assert!(resumed.done);
    assert_eq!(resumed.scanned, 400, "resumed, not restarted");
    assert_eq!(resumed.migrated, 400);
    assert_eq!(resumed.start_time, stopped.start_time);
    server.stop().await;
}

crate::rocksdb_only! {
    "kill -9 of a tierkv binary over its embedded store";
    /// `kill -9` of the real binary in the middle of a batch migration; after a
    /// restart the migration resumes from its checkpoint and every record is
    /// migrated exactly once: the store's version counter advanced by exactly
    /// one write per record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_during_a_batch_migration_then_resume_migrates_each_record_once() {
        const USERS: usize = 3000;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let file = dir.path().join("tierkv.toml");
        std::fs::write(
            &file,
            format!("[[migrations]]\nprefix = \"user:\"\nfrom = 1\nto = 2\npatch = '{COPY_NAME}'\n"),
        )
        .unwrap();
        let command = || {
            let mut command = server_command(&data);
            command.arg("--config").arg(&file);
            command
        };
        let mut server = spawn_server(command());
        let mut client = connect(&server.endpoint()).await;
        write_users(&mut client, USERS).await;
        let before = client
            .put(put_text("probe", "1"))
            .await
            .unwrap()
            .into_inner()
            .version;

        let mut admin = connect_admin(&server.endpoint()).await;
        let mut stream = paced_migration(&mut admin, 100, 1000).await;
        loop {
            let message = stream.message().await.unwrap().expect("progress");
            if message.state.unwrap().scanned >= 1000 {
                break;
            }
        }
        server.child.kill().expect("SIGKILL");
        server.child.wait().unwrap();
        drop(stream);

        let mut server = spawn_server(command());
        let mut client = connect(&server.endpoint()).await;
        let mut admin = connect_admin(&server.endpoint()).await;
        let saved = migration_state(&mut admin, "user:")
            .await
            .unwrap()
            .into_inner();
        assert!(!saved.done && !saved.running, "{saved:?}");
        assert!(
            saved.scanned >= 1000 && saved.scanned < USERS as u64,
            "{saved:?}"
        );
        let state = last_state(&migrate(&mut admin, migrate_request("user:")).await);
        assert!(state.done);
        assert_eq!(state.scanned, USERS as u64, "resumed from the checkpoint");
        assert_eq!(state.migrated + state.already_current, USERS as u64);
        let keys = listed(&mut client, "user:").await;
        assert_eq!(keys.len(), USERS);
        assert!(keys.iter().all(|key| key.schema_version == 2));
        let after = client
            .put(put_text("probe", "2"))
            .await
            .unwrap()
            .into_inner()
            .version;
        assert_eq!(
            after,
            before + USERS as u64 + 1,
            "exactly one write per record between the two probes"
        );
        let user = read(&mut client, "user:02999").await;
        assert_eq!(
            json_of(&user),
            serde_json::json!({"name": "n2999", "userName": "n2999"})
        );
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
}

/// A large record (migrated off the async workers) reads back migrated too,
/// and its write-back keeps the value out of line.
#[tokio::test]
async fn large_records_migrate_on_read() {
    let mut server = start_with(seed).await;
    let bio = "b".repeat(200_000);
    server
        .client
        .put(put_json(
            "user:big",
            serde_json::json!({"name": "Big", "bio": bio}),
            1,
        ))
        .await
        .unwrap();
    let mut changes = server.server.engine.subscribe();
    let read_big = read(&mut server.client, "user:big").await;
    assert_eq!(read_big.schema_version, 2);
    let value = json_of(&read_big);
    assert_eq!(value["userName"], "Big");
    assert_eq!(value["bio"].as_str().unwrap().len(), 200_000);
    assert_eq!(&*next_event(&mut changes).await.key, "user:big");
    let again = read(&mut server.client, "user:big").await;
    assert_eq!(json_of(&again), value);
    assert!(server.value_entry_present("user:big").await);
    server.stop().await;
}

/// A graceful shutdown stops a running batch migration after its batch:
/// the caller gets UNAVAILABLE saying so, the drain is not held, and after
/// the restart `Migrate` resumes from the checkpoint.
#[tokio::test]
async fn shutdown_stops_a_migration_which_resumes_after_restart() {
    let mut server = start_with(seed).await;
    write_users(&mut server.client, 300).await;
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let mut stream = paced_migration(&mut admin, 20, 100).await;
    stream.message().await.unwrap().expect("a first batch");
    let restarting = tokio::spawn(server.restart());
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    let mut server = restarting.await.unwrap();
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let saved = migration_state(&mut admin, "user:")
        .await
        .unwrap()
        .into_inner();
    assert!(
        !saved.done && saved.scanned >= 20 && saved.scanned < 300,
        "{saved:?}"
    );
    let state = last_state(&migrate(&mut admin, migrate_request("user:")).await);
    assert!(state.done);
    assert_eq!((state.scanned, state.migrated), (300, 300));
    assert!(listed(&mut server.client, "user:")
        .await
        .iter()
        .all(|key| key.schema_version == 2));
    server.stop().await;
}

/// A batch of 10,000 records that all fail, with 500-byte keys, lists
/// failures up to 1 MiB per progress message and counts the rest: before,
/// its one message was about 6 MB, which a client with gRPC's default 4 MiB
/// decode limit (this one) cannot read.
#[tokio::test]
async fn a_batch_of_failures_is_listed_within_a_bound() {
    const RECORDS: usize = 10_000;
    let mut server = start_with(seed).await;
    let padding = "p".repeat(480);
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(1000) {
        let mutations = chunk
            .iter()
            .map(|n| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(put_json(
                    &format!("user:{padding}{n:05}"),
                    serde_json::json!({"nick": "no name to copy"}),
                    1,
                ))),
            })
            .collect();
        server
            .client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await
            .unwrap();
    }
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let messages = migrate(
        &mut admin,
        pb::MigrateRequest {
            dry_run: true,
            batch_size: RECORDS as u32,
            ..migrate_request("user:")
        },
    )
    .await;
    let state = last_state(&messages);
    assert_eq!(state.failed, RECORDS as u64);
    let mut listed = 0u64;
    let mut not_listed = 0u64;
    for message in &messages {
        let bytes: usize = message
            .failures
            .iter()
            .map(|failure| failure.key.len() + failure.reason.len())
            .sum();
        assert!(
            bytes <= tierkv::migrate::batch::MAX_LISTED_FAILURE_BYTES,
            "{bytes}"
        );
        listed += message.failures.len() as u64;
        not_listed += message.failures_not_listed;
    }
    assert!(
        listed > 0 && not_listed > 0,
        "{listed} listed, {not_listed} not"
    );
    assert_eq!(listed + not_listed, RECORDS as u64);
    server.stop().await;
}

async fn cache_client(server: &common::TestServer) -> CacheServiceClient<Channel> {
    CacheServiceClient::connect(server.server.endpoint())
        .await
        .expect("connect")
}

async fn cache_read(cache: &mut CacheServiceClient<Channel>, key: &str) -> pb::CacheGetResponse {
    cache
        .get(pb::CacheGetRequest {
            key: key.to_string(),
            r#type: pb::ValueType::Json as i32,
        })
        .await
        .expect("cache get")
        .into_inner()
}

fn cached_json(response: &pb::CacheGetResponse) -> serde_json::Value {
    match &response.value {
        Some(pb::cache_get_response::Value::Json(json)) => json_from_proto(json.clone()).unwrap(),
        other => panic!("expected a JSON value, got {other:?}"),
    }
}

/// A record stored at an old schema version reads back migrated through the
/// cache too (CacheService.Get goes the same path to records as KV reads),
/// and the lazy write-back stores the migrated record, so KV then reads it
/// at the target version with the same answer.
#[tokio::test]
async fn cache_reads_migrate_lazily() {
    let mut server = start_with(seed).await;
    server
        .client
        .put(put_json("user:7", serde_json::json!({"name": "Ann"}), 1))
        .await
        .unwrap();
    let mut changes = server.server.engine.subscribe();
    let mut cache = cache_client(&server).await;
    let cached = cache_read(&mut cache, "user:7").await;
    assert!(cached.found);
    assert_eq!(
        cached_json(&cached),
        serde_json::json!({"name": "Ann", "userName": "Ann"}),
        "a cache read migrates like a KV read"
    );
    // The write-back commits the migrated record.
    let event = next_event(&mut changes).await;
    assert_eq!(&*event.key, "user:7");
    let stored = read(&mut server.client, "user:7").await;
    assert_eq!(stored.schema_version, 2);
    assert_eq!(json_of(&stored), cached_json(&cached));
    // And the cache's next answer is the stored, migrated record.
    let again = cache_read(&mut cache, "user:7").await;
    assert_eq!(cached_json(&again), cached_json(&cached));
    assert_eq!(again.version, stored.version);
    server.stop().await;
}

crate::rocksdb_only! {
    "pauses the RocksDB writer thread to order the race (a local-only test hook)";
    /// Race what you cache: a client write that commits between a cache read's
    /// lazy migration and its write-back wins. The write-back's compare-and-set
    /// fails and is dropped, the client's value stays in the store, and the
    /// cache's next answer is the client's value, not the migrated old one.
    #[tokio::test]
    async fn client_write_wins_over_a_cache_read_write_back() {
        let mut server = start_with(seed).await;
        let mut cache = cache_client(&server).await;
        let mut reader = cache.clone();
        let written = writer_wins_over_a_write_back(&mut server, "user:9", || async move {
            cached_json(&cache_read(&mut reader, "user:9").await)
        })
        .await;
        let cached = cache_read(&mut cache, "user:9").await;
        assert_eq!(cached_json(&cached), serde_json::json!({"userName": "new"}));
        assert_eq!(cached.version, written.version);
        server.stop().await;
    }
}

/// `migratedAt` prints exactly as `google.protobuf.Timestamp` does (the
/// migrator formats it without protobuf types).
#[test]
fn migrated_at_prints_like_a_protobuf_timestamp() {
    let mut millis = 0u64;
    while millis < 253_402_300_799_999 {
        let timestamp = prost_types::Timestamp {
            seconds: (millis / 1000) as i64,
            nanos: ((millis % 1000) * 1_000_000) as i32,
        };
        assert_eq!(tierkv::migrate::rfc3339(millis), timestamp.to_string());
        millis = millis * 3 + 86_399_001;
    }
}
