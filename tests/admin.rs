//! AdminService namespaces against a real server: estimated sizes, dropping
//! a namespace with a confirmed key count (and the single change event it
//! publishes), refusing at start a removed namespace that still holds data
//! (in-process and with the real binary),
//! and the `tierkv admin` command line.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tierkv::engine::Change;
use tierkv::proto::v1 as pb;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_tierkv");

fn with_namespaces<'a>(prefixes: &'a [&'a str]) -> impl FnOnce(&mut tierkv::config::Config) + 'a {
    move |config| {
        config.namespaces = prefixes.iter().map(|prefix| prefix.to_string()).collect();
    }
}

async fn namespaces(
    admin: &mut AdminServiceClient<tonic::transport::Channel>,
) -> Vec<pb::Namespace> {
    admin
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .expect("list namespaces")
        .into_inner()
        .namespaces
}

/// ListNamespaces shows every namespace, the default first, with its column
/// family, owner and estimates that grow with the data.
#[tokio::test]
async fn list_namespaces_shows_estimates() {
    let mut server = start().await;
    let keys: Vec<String> = (0..200).map(|n| format!("user:{n}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    put_all(&mut server.client, &refs).await;
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let listed = namespaces(&mut admin).await;
    let prefixes: Vec<&str> = listed.iter().map(|ns| ns.prefix.as_str()).collect();
    assert_eq!(
        prefixes,
        vec!["", "cache:", "feature:", "session:", "user:"]
    );
    let user = &listed[4];
    if ON_ETCD {
        // Namespaces are key ranges under the server's prefix, and counts
        // come from count-only ranges: exact.
        let root = &server.config.engine.etcd.prefix;
        assert_eq!(listed[0].column_family, format!("etcd range {root}k/"));
        assert_eq!(user.column_family, format!("etcd range {root}k/user:"));
        assert_eq!(user.estimated_keys, 200);
    } else {
        assert_eq!(listed[0].column_family, "default");
        assert_eq!(user.column_family, "kv/user:");
        assert!(
            (100..=400).contains(&user.estimated_keys),
            "estimate {}",
            user.estimated_keys
        );
    }
    assert_eq!(listed[3].owner, "tierkv.v1.SessionService");
    assert_eq!(user.owner, "");
    // Flushed, the live size is estimated too; over etcd it is exact: each
    // record's key and its one-byte value.
    server.server.engine.flush().await.unwrap();
    let user = &namespaces(&mut admin).await[4];
    if ON_ETCD {
        let expected: usize = keys.iter().map(|key| key.len() + 1).sum();
        assert_eq!(user.estimated_live_bytes, expected as u64, "{user:?}");
    } else {
        assert!(user.estimated_live_bytes > 0, "{user:?}");
    }
    server.stop().await;
}

/// DropNamespace needs the exact live key count: without it or with a wrong
/// one it is FAILED_PRECONDITION naming the count; with it, every key of the
/// namespace is gone (nested namespaces and others keep theirs, large values
/// included), one NamespaceCleared event is published, and the estimate
/// drops. Unknown prefixes are NOT_FOUND.
#[tokio::test]
async fn drop_namespace_needs_the_exact_count_and_publishes_one_event() {
    let mut server = start_with(with_namespaces(&[
        "user:",
        "user:admin:",
        "cache:",
        "session:",
    ]))
    .await;
    put_all(
        &mut server.client,
        &[
            "user:1",
            "user:2",
            "user:3",
            "user:admin:1",
            "cache:1",
            "other",
        ],
    )
    .await;
    // A value stored out of line, dropped with its head.
    server
        .client
        .put(put_text("user:big", &"x".repeat(4096)))
        .await
        .unwrap();
    let mut admin = connect_admin(&server.server.endpoint()).await;
    let drop = |expected_keys: Option<u64>| pb::DropNamespaceRequest {
        prefix: "user:".into(),
        expected_keys,
        ..Default::default()
    };
    let unconfirmed = admin.drop_namespace(drop(None)).await.unwrap_err();
    assert_eq!(unconfirmed.code(), Code::FailedPrecondition);
    assert!(
        unconfirmed.message().contains("holds 4 live keys"),
        "{unconfirmed:?}"
    );
    let wrong = admin.drop_namespace(drop(Some(3))).await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(wrong.message().contains("not the 3 expected"), "{wrong:?}");
    assert!(
        exists(&mut server.client, "user:1").await,
        "nothing dropped"
    );

    let mut changes = server.server.engine.subscribe();
    let dropped = admin
        .drop_namespace(drop(Some(4)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dropped.deleted_keys, 4);
    let event = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*event.key, "user:");
    assert_eq!(event.change, Change::NamespaceCleared);
    assert_eq!(
        changes.try_recv(),
        Ok(None),
        "one event for the whole namespace"
    );
    for key in ["user:1", "user:2", "user:3", "user:big"] {
        assert!(!exists(&mut server.client, key).await, "{key} dropped");
        assert!(
            !server.value_entry_present(key).await,
            "{key}'s value entry"
        );
    }
    for key in ["user:admin:1", "cache:1", "other"] {
        assert!(exists(&mut server.client, key).await, "{key} kept");
    }
    assert_eq!(
        list_all(&mut server.client, "user:", 100).await,
        vec!["user:admin:1"]
    );
    let user = namespaces(&mut admin)
        .await
        .into_iter()
        .find(|ns| ns.prefix == "user:")
        .unwrap();
    assert_eq!(user.estimated_keys, 0, "compacted away");
    // Writes after the drop work, versions keep increasing.
    server
        .client
        .put(put_text("user:1", "again"))
        .await
        .unwrap();
    assert!(exists(&mut server.client, "user:1").await);
    let unknown = admin
        .drop_namespace(pb::DropNamespaceRequest {
            prefix: "nope:".into(),
            expected_keys: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

/// Dropping the default namespace `""` or a namespace a service owns (the
/// session namespace; `cache:`, which holds a cache origin's keys) is
/// FAILED_PRECONDITION without `force`, even with the right count, and drops
/// nothing; other namespaces need no force.
#[tokio::test]
async fn dropping_the_default_or_an_owned_namespace_needs_force() {
    let mut server = start_with(|config| {
        config.cache.origins = vec![tierkv::cache::config::OriginConfig::new(
            "cache:api:",
            "http://127.0.0.1:9/{key}",
        )];
    })
    .await;
    put_all(
        &mut server.client,
        &["other", "more", "cache:api:1", "user:1"],
    )
    .await;
    let mut admin = connect_admin(&server.server.endpoint()).await;
    for (prefix, count, owner) in [
        ("", 2, "default namespace"),
        ("session:", 0, "tierkv.v1.SessionService"),
        ("cache:", 1, "tierkv.v1.CacheService"),
    ] {
        let refused = admin
            .drop_namespace(pb::DropNamespaceRequest {
                prefix: prefix.into(),
                expected_keys: Some(count),
                ..Default::default()
            })
            .await
            .expect_err(prefix);
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{prefix:?}: {refused:?}"
        );
        assert!(
            refused.message().contains("force") && refused.message().contains(owner),
            "{prefix:?}: {refused:?}"
        );
    }
    for key in ["other", "more", "cache:api:1"] {
        assert!(exists(&mut server.client, key).await, "{key} kept");
    }
    let dropped = admin
        .drop_namespace(pb::DropNamespaceRequest {
            prefix: "user:".into(),
            expected_keys: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dropped.deleted_keys, 1,
        "an unowned namespace needs no force"
    );
    // With force and the count, they are dropped like any other.
    for (prefix, count) in [("", 2), ("cache:", 1), ("session:", 0)] {
        let dropped = admin
            .drop_namespace(pb::DropNamespaceRequest {
                prefix: prefix.into(),
                expected_keys: Some(count),
                force: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dropped.deleted_keys, count, "{prefix:?}");
    }
    for key in ["other", "more", "cache:api:1"] {
        assert!(!exists(&mut server.client, key).await, "{key} dropped");
    }
    server.stop().await;
}

/// A namespace removed from the configuration while it holds data is refused
/// at start, naming the prefix, its key count and how to retire it; after
/// dropping its data (re-added), removing it succeeds (on RocksDB its empty
/// column family is dropped; over etcd, where a namespace is only a key
/// range, the engine remembers the namespaces of the last start).
#[tokio::test]
async fn removed_namespace_with_data_is_refused_at_start() {
    // The data dir outlives every server of the test.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    use_engine(&mut config);
    with_namespaces(&["user:", "old:", "session:"])(&mut config);
    let server = tierkv::server::RunningServer::start(
        config.clone(),
        tierkv::clock::ManualClock::starting_now(),
    )
    .await
    .unwrap();
    let mut client = connect(&server.endpoint()).await;
    put_all(&mut client, &["old:1", "old:2", "old:3", "user:1"]).await;
    server.stop().await.unwrap();

    let mut removed = config.clone();
    removed.namespaces = vec!["user:".into(), "session:".into()];
    let refused = tierkv::server::RunningServer::start(
        removed.clone(),
        tierkv::clock::ManualClock::starting_now(),
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(refused.contains("\"old:\""), "{refused}");
    assert!(refused.contains("3 live keys"), "{refused}");
    assert!(
        refused.contains("tierkv admin drop-namespace old: --expected-keys 3"),
        "{refused}"
    );

    // Re-add it, drop its data, remove it.
    let server =
        tierkv::server::RunningServer::start(config, tierkv::clock::ManualClock::starting_now())
            .await
            .unwrap();
    let mut admin = connect_admin(&server.endpoint()).await;
    admin
        .drop_namespace(pb::DropNamespaceRequest {
            prefix: "old:".into(),
            expected_keys: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    server.stop().await.unwrap();
    let server =
        tierkv::server::RunningServer::start(removed, tierkv::clock::ManualClock::starting_now())
            .await
            .expect("an empty leftover namespace is no obstacle");
    let mut client = connect(&server.endpoint()).await;
    assert!(exists(&mut client, "user:1").await);
    assert!(!exists(&mut client, "old:1").await);
    let mut admin = connect_admin(&server.endpoint()).await;
    assert!(namespaces(&mut admin)
        .await
        .iter()
        .all(|ns| ns.prefix != "old:"));
    server.stop().await.unwrap();
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tierkv admin ARGS…` against `endpoint`, off the async runtime.
async fn admin_cli(endpoint: &str, args: &[&str]) -> Outcome {
    let mut full = vec!["admin".to_string(), "--endpoint".into(), endpoint.into()];
    full.extend(args.iter().map(|arg| arg.to_string()));
    tokio::task::spawn_blocking(move || {
        let output = Command::new(BINARY)
            .args(&full)
            .output()
            .expect("run tierkv");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `tierkv admin migrate / migration / namespaces / drop-namespace` print
/// JSON; a drop without its confirmation fails showing the count.
#[tokio::test]
async fn cli_admin_commands() {
    let mut server = start_with(|config| {
        config.migrations = vec![tierkv::migrate::MigrationStep {
            prefix: "user:".into(),
            from: 1,
            to: 2,
            patch: r#"[{"op": "copy", "from": "/name", "path": "/userName"}]"#.into(),
        }]
    })
    .await;
    for n in 0..20 {
        server
            .client
            .put(pb::PutRequest {
                key: format!("user:{n}"),
                value: Some(pb::put_request::Value::Json(
                    tierkv::api::convert::json_to_proto(serde_json::json!({"name": n})),
                )),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    server
        .client
        .put(put_text("user:bad", "text"))
        .await
        .unwrap();
    let endpoint = server.server.endpoint();

    let dry = admin_cli(&endpoint, &["migrate", "user:", "--dry-run"]).await;
    // Exit code 6 (docs/cli.md): a record could not be migrated.
    assert_eq!(
        dry.code, 6,
        "a record could not be migrated: {}",
        dry.stderr
    );
    let state: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(state["dry_run"], true);
    assert_eq!(state["migrated"], 20);
    assert!(dry.stderr.contains("\"user:bad\""), "{}", dry.stderr);

    let run = admin_cli(
        &endpoint,
        &["migrate", "user:", "--batch-size", "7", "--rate", "1000"],
    )
    .await;
    let state: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (state["migrated"].as_u64(), state["done"].as_bool()),
        (Some(20), Some(true))
    );

    let got = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || {
            Command::new(BINARY)
                .args([
                    "kv",
                    "--endpoint",
                    &endpoint,
                    "get",
                    "user:3",
                    "--with-metadata",
                ])
                .output()
                .expect("run tierkv")
        }
    })
    .await
    .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["schema_version"], 2, "{got}");
    assert_eq!(got["value"]["userName"], 3, "{got}");

    let shown = admin_cli(&endpoint, &["migration", "user:"]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let state: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(state["scanned"], 21);
    assert_eq!(state["failed"], 1);

    let listed = admin_cli(&endpoint, &["namespaces"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let list: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(list[0]["prefix"], "");
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|ns| ns["prefix"] == "session:" && ns["owner"] == "tierkv.v1.SessionService"));

    let unconfirmed = admin_cli(&endpoint, &["drop-namespace", "user:"]).await;
    // FAILED_PRECONDITION: exit code 3 (docs/cli.md).
    assert_eq!(unconfirmed.code, 3, "{}", unconfirmed.stderr);
    assert!(
        unconfirmed.stderr.contains("holds 21 live keys"),
        "{}",
        unconfirmed.stderr
    );
    let dropped = admin_cli(
        &endpoint,
        &["drop-namespace", "user:", "--expected-keys", "21"],
    )
    .await;
    assert_eq!(dropped.code, 0, "{}", dropped.stderr);
    let result: serde_json::Value = serde_json::from_str(&dropped.stdout).unwrap();
    assert_eq!(result["deleted_keys"], 21);
    assert!(!exists(&mut server.client, "user:1").await);

    // The default namespace needs --force on top of the count.
    let unforced = admin_cli(&endpoint, &["drop-namespace", "", "--expected-keys", "0"]).await;
    assert_eq!(unforced.code, 3, "{}", unforced.stderr);
    assert!(unforced.stderr.contains("--force"), "{}", unforced.stderr);
    let forced = admin_cli(
        &endpoint,
        &["drop-namespace", "", "--expected-keys", "0", "--force"],
    )
    .await;
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    server.stop().await;
}

/// The real binary, as an operator meets it: started without a namespace
/// that still holds keys, it exits 1 with the prefix, the count and the way
/// to retire it; an invalid `[[migrations]]` file is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_removed_namespace_with_data_and_bad_migrations() {
    use common::process::{server_command, spawn_server};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = server_command(&data);
    command.env("TIERKV_NAMESPACES", "user:,session:,orders:");
    let mut server = spawn_server(command);
    let mut client = connect(&server.endpoint()).await;
    put_all(&mut client, &["orders:1", "orders:2"]).await;
    drop(client);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let run = |mut command: Command| async move {
        tokio::task::spawn_blocking(move || {
            let output = command.output().expect("run tierkv");
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    };
    let mut command = server_command(&data);
    command.env("TIERKV_NAMESPACES", "user:,session:");
    let (code, stderr) = run(command).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("\"orders:\" with 2 live keys")
            && stderr.contains("drop-namespace orders: --expected-keys 2"),
        "{stderr}"
    );

    let config = dir.path().join("tierkv.toml");
    std::fs::write(
        &config,
        "namespaces = [\"user:\", \"session:\", \"orders:\"]\n\
         [[migrations]]\nprefix = \"orders:\"\nfrom = 1\nto = 2\npatch = '[]'\n\
         [[migrations]]\nprefix = \"orders:\"\nfrom = 3\nto = 4\npatch = '[]'\n",
    )
    .unwrap();
    let mut command = server_command(&data);
    command.arg("--config").arg(&config);
    let (code, stderr) = run(command).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("migrations[1] (prefix \"orders:\", 3 -> 4)") && stderr.contains("gap"),
        "{stderr}"
    );
}
