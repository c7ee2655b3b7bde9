//! Bearer-token authentication with per-prefix permissions, through the real
//! server: no token or a wrong one is UNAUTHENTICATED; a token touches only
//! its prefixes, with only its permissions, in single, batch and listing
//! calls alike (nothing outside the grant is returned or written); sessions
//! need a grant on the session prefix; AdminService needs `admin`; health and
//! reflection stay open; the CLI sends a token; tokens never reach the logs.

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
    assert!(status.message().contains("orders-service"), "{status:?}");
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
    assert!(status.message().contains("admin"), "{status:?}");
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
