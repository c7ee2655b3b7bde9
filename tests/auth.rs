//! Bearer-token authentication with per-prefix permissions, through the real
//! server: no token or a wrong one is UNAUTHENTICATED; a token touches only
//! its prefixes, with only its permissions, in single, batch and listing
//! calls alike (nothing outside the grant is returned or written); sessions
//! need a grant on the session prefix; AdminService calls need `stats`,
//! `migrate`, `backup` or `drop` (`admin`: all four); refusals say nothing
//! about the token; health and reflection stay open; the CLI sends a token;
//! tokens never reach the logs; SIGHUP reloads the tokens (the real binary).

mod common;

use std::process::Command;

use common::process::*;
use common::*;
use tierkv::auth::{hash_token, AuthConfig, Permission, TokenConfig};
use tierkv::proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

const WRITER: &str = "tkv_writer-secret-0123456789";
const READER: &str = "tkv_reader-secret-0123456789";
const OPS: &str = "tkv_ops-secret-0123456789";

fn auth_config() -> AuthConfig {
    let token =
        |name: &str, secret: &str, prefixes: &[&str], permissions: &[Permission]| TokenConfig {
            name: name.into(),
            token_sha256: hash_token(secret),
            token_sha256_file: None,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            permissions: permissions.to_vec(),
        };
    AuthConfig {
        tokens: vec![
            token(
                "orders-service",
                WRITER,
                &["orders:", "session:"],
                &[Permission::Read, Permission::Write],
            ),
            token("reporting", READER, &["orders:"], &[Permission::Read]),
            token("ops", OPS, &[], &[Permission::Admin]),
        ],
    }
}

type Authed = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

async fn channel(server: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(server.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn kv(
    server: &TestServer,
    token: Option<&'static str>,
) -> pb::kv_service_client::KvServiceClient<Authed> {
    pb::kv_service_client::KvServiceClient::with_interceptor(channel(server).await, Bearer(token))
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let server = start_with(|config| config.auth = auth_config()).await;
    for token in [None, Some("wrong-token")] {
        let status = kv(&server, token)
            .await
            .get(get("orders:1"))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    // Probes and tooling need no token.
    let health = HealthClient::new(channel(&server).await)
        .check(HealthCheckRequest {
            service: "tierkv.v1.KvService".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);
    server.stop().await;
}

#[tokio::test]
async fn tokens_reach_only_their_prefixes_with_their_permissions() {
    let server = start_with(|config| config.auth = auth_config()).await;
    let mut writer = kv(&server, Some(WRITER)).await;
    let mut reader = kv(&server, Some(READER)).await;
    let mut ops = kv(&server, Some(OPS)).await;

    writer.put(put_text("orders:1", "a")).await.unwrap();
    writer.put(put_text("orders:2", "b")).await.unwrap();
    assert_eq!(
        reader
            .get(get("orders:1"))
            .await
            .unwrap()
            .into_inner()
            .value,
        Some(pb::get_response::Value::Text("a".into()))
    );

    // Outside the grant, or without the permission: PERMISSION_DENIED, nothing written.
    let status = writer.put(put_text("user:1", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "NOT_GRANTED");
    let status = reader.put(put_text("orders:3", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = reader
        .delete(pb::DeleteRequest {
            key: "orders:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = ops.get(get("orders:1")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A batch with one key outside the grant fails whole, naming the index.
    let status = reader
        .batch_get(pb::BatchGetRequest {
            keys: vec!["orders:1".into(), "user:1".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.get_error_details().error_info().unwrap().metadata["index"],
        "1"
    );
    let mutations = ["orders:9", "user:9"]
        .iter()
        .map(|key| pb::Mutation {
            operation: Some(pb::mutation::Operation::Put(put_text(key, "v"))),
        })
        .collect();
    let status = writer
        .batch_write(pb::BatchWriteRequest { mutations })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        !reader
            .get(get("orders:9"))
            .await
            .unwrap()
            .into_inner()
            .found,
        "nothing of a refused batch is written"
    );

    // Listings: only under a granted prefix; a wider one is refused, never filtered silently.
    let listed = reader
        .list(pb::ListRequest {
            prefix: "orders:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 2);
    for prefix in ["", "ord", "user:"] {
        let status = reader
            .list(pb::ListRequest {
                prefix: prefix.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{prefix:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_mutation_without_an_operation_is_invalid_not_denied() {
    let server = start_with(|config| config.auth = auth_config()).await;
    let mut writer = kv(&server, Some(WRITER)).await;
    let status = writer
        .batch_write(pb::BatchWriteRequest {
            mutations: vec![
                pb::Mutation {
                    operation: Some(pb::mutation::Operation::Put(put_text("orders:1", "v"))),
                },
                pb::Mutation { operation: None },
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violations = details.bad_request().expect("bad request details");
    assert_eq!(violations.field_violations[0].field, "mutations[1]");
}

#[tokio::test]
async fn sessions_need_the_session_prefix_and_admin_needs_admin() {
    let server = start_with(|config| config.auth = auth_config()).await;
    let mut writer_sessions = pb::session_service_client::SessionServiceClient::with_interceptor(
        channel(&server).await,
        Bearer(Some(WRITER)),
    );
    let created = writer_sessions
        .create(pb::CreateSessionRequest {
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut reader_sessions = pb::session_service_client::SessionServiceClient::with_interceptor(
        channel(&server).await,
        Bearer(Some(READER)),
    );
    let status = reader_sessions
        .get(pb::GetSessionRequest {
            token: created.token.clone(),
            touch: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let admin = |token| {
        let channel = channel(&server);
        async move {
            pb::admin_service_client::AdminServiceClient::with_interceptor(
                channel.await,
                Bearer(Some(token)),
            )
        }
    };
    let status = admin(WRITER)
        .await
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("AdminService"), "{status:?}");
    admin(OPS)
        .await
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap();
    server.stop().await;
}

/// The CLI sends `TIERKV_TOKEN`; bad token configurations stop the server at
/// start; and no token, right or wrong, appears in the server's log.
#[tokio::test]
async fn cli_token_config_errors_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("tierkv.toml");
    std::fs::write(
        &config_file,
        format!(
            "[[auth.tokens]]\nname = \"orders-service\"\ntoken_sha256 = \"{}\"\nprefixes = [\"orders:\"]\npermissions = [\"read\", \"write\"]\n",
            hash_token(WRITER)
        ),
    )
    .unwrap();
    let mut command = server_command(&dir.path().join("data"));
    command
        .arg("--config")
        .arg(&config_file)
        .env("RUST_LOG", "trace");
    let mut server = spawn_server(command);
    let endpoint = server.endpoint();
    let cli = move |token: &str, args: &[&str]| {
        Command::new(BINARY)
            .arg("kv")
            .args(args)
            .env("TIERKV_ENDPOINT", &endpoint)
            .env("TIERKV_TOKEN", token)
            .output()
            .unwrap()
    };
    let (put, get, wrong) = tokio::task::spawn_blocking(move || {
        (
            cli(WRITER, &["put", "orders:cli", "hello"]),
            cli(WRITER, &["get", "orders:cli"]),
            cli("not-the-token-987", &["get", "orders:cli"]),
        )
    })
    .await
    .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr)
        .to_lowercase()
        .contains("token"));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let logs = server.logs();
    assert!(!logs.is_empty());
    for secret in [WRITER, "not-the-token-987"] {
        assert!(!logs.contains(secret), "a token reached the log");
    }

    // A configuration with a token in clear instead of its hash is refused.
    std::fs::write(
        &config_file,
        "[[auth.tokens]]\nname = \"x\"\ntoken_sha256 = \"tkv_in_clear\"\nprefixes = [\"orders:\"]\npermissions = [\"read\"]\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--config",
        ])
        .arg(&config_file)
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("auth.tokens[0]") && stderr.contains("64 hex"),
        "{stderr}"
    );
}

/// `Patch` writes the key and answers with its value, so it needs both the
/// read and the write grant on the key.
#[tokio::test]
async fn patch_needs_read_and_write() {
    let server = start_with(|config| config.auth = auth_config()).await;
    let merge_patch = Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
            fields: [(
                "state".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("paid".into())),
                },
            )]
            .into(),
        })),
    });
    let request = |key: &str| pb::PatchRequest {
        key: key.into(),
        merge_patch: merge_patch.clone(),
        create_if_missing: true,
        ..Default::default()
    };
    let mut writer = kv(&server, Some(WRITER)).await;
    let created = writer
        .patch(request("orders:1"))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let denied = writer.patch(request("invoices:1")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let mut reader = kv(&server, Some(READER)).await;
    let denied = reader.patch(request("orders:1")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let unauthenticated = kv(&server, None)
        .await
        .patch(request("orders:1"))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    server.stop().await;
}

/// PERMISSION_DENIED says what was refused (the access and the key, prefix
/// or method) and nothing about the token: neither its name nor its grant.
#[tokio::test]
async fn permission_denied_says_only_what_was_refused() {
    let server = start_with(|config| config.auth = auth_config()).await;
    let mut writer = kv(&server, Some(WRITER)).await;
    let mut reader = kv(&server, Some(READER)).await;
    let mut writer_admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        channel(&server).await,
        Bearer(Some(WRITER)),
    );
    let refused_put = writer.put(put_text("user:1", "x")).await.unwrap_err();
    assert!(
        refused_put.message().contains("write") && refused_put.message().contains("\"user:1\""),
        "it says what was refused: {refused_put:?}"
    );
    let refused = [
        refused_put,
        reader.put(put_text("orders:3", "x")).await.unwrap_err(),
        reader
            .list(pb::ListRequest {
                prefix: "user:".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        reader
            .batch_get(pb::BatchGetRequest {
                keys: vec!["orders:1".into(), "user:1".into()],
                ..Default::default()
            })
            .await
            .unwrap_err(),
        writer_admin
            .list_namespaces(pb::ListNamespacesRequest {})
            .await
            .unwrap_err(),
    ];
    for status in refused {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.reason, "NOT_GRANTED");
        assert!(!info.metadata.contains_key("token"), "{info:?}");
        // The tokens' names and granted prefixes ("orders:" for both, "session:" for the writer).
        for told in ["orders-service", "reporting", "\"orders:\"", "session:"] {
            assert!(
                !status.message().contains(told),
                "{told} in {:?}",
                status.message()
            );
            assert!(
                info.metadata.values().all(|value| !value.contains(told)),
                "{told} in {info:?}"
            );
        }
    }
    server.stop().await;
}

const MONITOR: &str = "tkv_monitor-secret-0123456789";
const MIGRATOR: &str = "tkv_migrator-secret-0123456789";
const BACKUPS: &str = "tkv_backups-secret-0123456789";
const DROPPER: &str = "tkv_dropper-secret-0123456789";

/// An `[auth]` section as an operator writes it, one token per line of
/// `(name, secret, permissions)`.
fn auth_section(tokens: &[(&str, &str, &str)]) -> AuthConfig {
    let text: String = tokens
        .iter()
        .map(|(name, secret, permissions)| {
            format!(
                "[[tokens]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nprefixes = [\"user:\"]\npermissions = {permissions}\n",
                hash_token(secret)
            )
        })
        .collect();
    toml::from_str(&text).unwrap_or_else(|error| panic!("[auth] does not parse: {error}"))
}

/// Calls one AdminService method with harmless arguments; only whether the
/// call got past authorization matters.
async fn call_admin(
    client: &mut pb::admin_service_client::AdminServiceClient<Authed>,
    method: &str,
    backup_name: &str,
) -> Result<(), tonic::Status> {
    match method {
        "Stats" => client.stats(pb::StatsRequest::default()).await.map(|_| ()),
        "ListNamespaces" => client
            .list_namespaces(pb::ListNamespacesRequest {})
            .await
            .map(|_| ()),
        "GetMigration" => client
            .get_migration(pb::GetMigrationRequest {
                prefix: "user:".into(),
            })
            .await
            .map(|_| ()),
        "Migrate" => client
            .migrate(pb::MigrateRequest {
                prefix: "user:".into(),
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "Backup" => client
            .backup(pb::BackupRequest {
                name: backup_name.into(),
            })
            .await
            .map(|_| ()),
        "DropNamespace" => client
            .drop_namespace(pb::DropNamespaceRequest {
                prefix: "user:".into(),
                expected_keys: Some(0),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other => panic!("no method {other}"),
    }
}

/// `admin` is split: `stats` reads figures (Stats, ListNamespaces,
/// GetMigration) and nothing else; `migrate`, `backup` and `drop` each allow
/// only their calls; `admin`, kept for existing configurations, means all four.
#[tokio::test]
async fn admin_is_split_into_stats_migrate_backup_and_drop() {
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().to_path_buf();
    let server = start_with(|config| {
        config.backup_dir = Some(backup_dir);
        config.auth = auth_section(&[
            ("monitoring", MONITOR, "[\"stats\"]"),
            ("migrator", MIGRATOR, "[\"migrate\"]"),
            ("backups", BACKUPS, "[\"backup\"]"),
            ("dropper", DROPPER, "[\"drop\"]"),
            ("legacy-ops", OPS, "[\"admin\"]"),
        ]);
    })
    .await;
    let methods = [
        "Stats",
        "ListNamespaces",
        "GetMigration",
        "Migrate",
        "Backup",
        "DropNamespace",
    ];
    let grants: [(&'static str, &[&str]); 5] = [
        (MONITOR, &["Stats", "ListNamespaces", "GetMigration"]),
        (MIGRATOR, &["Migrate", "GetMigration"]),
        (BACKUPS, &["Backup"]),
        (DROPPER, &["DropNamespace"]),
        (OPS, &methods),
    ];
    for (index, (token, allowed)) in grants.into_iter().enumerate() {
        let mut client = pb::admin_service_client::AdminServiceClient::with_interceptor(
            channel(&server).await,
            Bearer(Some(token)),
        );
        for method in methods {
            let result = call_admin(&mut client, method, &format!("b{index}")).await;
            if allowed.contains(&method) {
                if let Err(status) = &result {
                    assert_ne!(
                        status.code(),
                        Code::PermissionDenied,
                        "token {index} may call {method}: {status:?}"
                    );
                }
            } else {
                let status = result.expect_err(method);
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "token {index} may not call {method}: {status:?}"
                );
                assert!(
                    status.message().contains(method),
                    "the refusal names the call: {status:?}"
                );
            }
        }
    }
    server.stop().await;
}

/// A `[[auth.tokens]]` entry of a configuration file.
fn token_entry(name: &str, secret: &str, permissions: &str) -> String {
    format!(
        "[[auth.tokens]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nprefixes = [\"orders:\"]\npermissions = {permissions}\n\n",
        hash_token(secret)
    )
}

const NEWCOMER: &str = "tkv_newcomer-secret-0123456789";

/// The value of the first sample named `name` in AdminService.Stats.
async fn stat(admin: &mut pb::admin_service_client::AdminServiceClient<Authed>, name: &str) -> f64 {
    admin
        .stats(pb::StatsRequest {
            name_prefix: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .samples
        .first()
        .unwrap_or_else(|| panic!("no sample {name}"))
        .value
}

/// Waits (a bounded time) until the server logged a line containing `text`
/// after its first `seen` such lines.
async fn wait_for_log(server: &ServerProcess, text: &str, seen: usize) {
    for _ in 0..600 {
        if server.logs().matches(text).count() > seen {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no log line with {text:?}: {}", server.logs());
}

/// SIGHUP re-reads `[auth]` from the configuration file: a revoked token is
/// refused on its next call on an already-open connection, while another
/// token keeps working on that same connection and a new one works at once;
/// an invalid file, or one that would turn authentication off, is logged
/// and the tokens in force are kept. No connection is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_revokes_a_token_on_an_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("tierkv.toml");
    let writer_entry = token_entry("orders-service", WRITER, "[\"read\", \"write\"]");
    let reader_entry = token_entry("reporting", READER, "[\"read\"]");
    let ops_entry = token_entry("ops", OPS, "[\"admin\"]");
    let newcomer_entry = token_entry("newcomer", NEWCOMER, "[\"read\", \"write\"]");
    std::fs::write(
        &config_file,
        format!("{writer_entry}{reader_entry}{ops_entry}"),
    )
    .unwrap();
    let mut command = server_command(&dir.path().join("data"));
    command.arg("--config").arg(&config_file);
    let mut server = spawn_server(command);
    let hangup = |server: &ServerProcess| {
        // SAFETY: kill(2) with a valid pid and signal has no memory effects.
        let sent = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(sent, 0, "kill -HUP");
    };

    // One connection for every client below.
    let connection = tonic::transport::Endpoint::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |token: &'static str| {
        pb::kv_service_client::KvServiceClient::with_interceptor(
            connection.clone(),
            Bearer(Some(token)),
        )
    };
    let mut writer = client(WRITER);
    let mut reader = client(READER);
    let mut newcomer = client(NEWCOMER);
    let mut ops = pb::admin_service_client::AdminServiceClient::with_interceptor(
        connection.clone(),
        Bearer(Some(OPS)),
    );
    writer.put(put_text("orders:1", "a")).await.unwrap();
    reader.get(get("orders:1")).await.unwrap();
    assert_eq!(
        newcomer.get(get("orders:1")).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Revoke the writer, add the newcomer.
    std::fs::write(
        &config_file,
        format!("{reader_entry}{ops_entry}{newcomer_entry}"),
    )
    .unwrap();
    hangup(&server);
    let mut waits = 0;
    loop {
        match writer.put(put_text("orders:2", "b")).await {
            Ok(_) => {
                waits += 1;
                assert!(
                    waits < 600,
                    "the revoked token still works 30 s after SIGHUP"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) if status.code() == Code::Unauthenticated => break,
            Err(status) => panic!("the revoked token's call failed otherwise: {status:?}"),
        }
    }
    reader.get(get("orders:1")).await.unwrap();
    newcomer.put(put_text("orders:3", "c")).await.unwrap();

    // An invalid file is logged; the tokens in force stay.
    let failures = server.logs().matches("keeping the current").count();
    std::fs::write(&config_file, "[[auth.tokens]]\nname = \"broken\"\n").unwrap();
    hangup(&server);
    wait_for_log(&server, "keeping the current", failures).await;
    reader.get(get("orders:1")).await.unwrap();
    assert_eq!(
        writer.get(get("orders:1")).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // So is a file without tokens: a reload never turns authentication off.
    std::fs::write(&config_file, "").unwrap();
    hangup(&server);
    wait_for_log(&server, "keeping the current", failures + 1).await;
    let anonymous =
        pb::kv_service_client::KvServiceClient::with_interceptor(connection.clone(), Bearer(None))
            .get(get("orders:1"))
            .await
            .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    newcomer.get(get("orders:3")).await.unwrap();

    assert_eq!(
        stat(&mut ops, "tierkv_connections_accepted").await,
        1.0,
        "every call went over the first connection"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for secret in [WRITER, READER, NEWCOMER, OPS] {
        assert!(!server.logs().contains(secret), "a token reached the log");
    }
}
