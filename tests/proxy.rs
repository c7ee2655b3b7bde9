//! tierkv behind a real HTTP/2 proxy, as a sidecar or gateway would sit: Debian's
//! nginx with `grpc_pass` in front of the real binary. Status codes, `google.rpc`
//! details, the `tierkv-current-version` trailer, deadlines and health checks
//! survive the hop, and a SIGTERM drain behind the proxy fails no call.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::*;
use common::raw::raw_unary_status;
use common::{put_text, KvServiceClient, SessionServiceClient};
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tonic_types::StatusExt;

/// nginx in the foreground, proxying gRPC from its own port to one tierkv.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: std::net::SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        // A free port for nginx: bound and released just before nginx binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = dir.path().display();
        let config = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    # gRPC messages up to tierkv's own limits pass; tierkv enforces them.
    client_max_body_size 0;
    upstream tierkv {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://tierkv;
            grpc_read_timeout 60s;
            grpc_send_timeout 60s;
        }}
    }}
}}
"#
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "nginx is needed (`bash scripts/setup.sh --with-test-tools` installs nginx-light)",
            );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn health_check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(result, 0);
}

/// Codes, `google.rpc` details and tierkv's trailer arrive intact through
/// nginx, and so do large values and health checks.
#[tokio::test]
async fn statuses_details_and_trailers_survive_the_proxy() {
    let data = tempfile::tempdir().unwrap();
    let mut server = spawn_server(server_command(data.path()));
    let nginx = Nginx::start(server.addr);
    let channel = nginx.channel().await;
    let mut kv = KvServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut health = HealthClient::new(channel.clone());

    for service in ["", "tierkv.v1.KvService", "tierkv.v1.SessionService"] {
        let status = health
            .check(health_check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(health_check("no.such.Service"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let version = kv
        .put(put_text("user:proxied", "v1"))
        .await
        .unwrap()
        .into_inner()
        .version;

    // ABORTED with ErrorInfo, PreconditionFailure and the current version trailer.
    let mut stale = put_text("user:proxied", "v2");
    stale.precondition = Some(pb::put_request::Precondition::IfVersion(version + 7));
    let status = kv.put(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo survives the proxy");
    assert_eq!(info.reason, "VERSION_MISMATCH");
    assert_eq!(info.metadata["current_version"], version.to_string());
    assert!(details.precondition_failure().is_some());
    assert_eq!(
        status
            .metadata()
            .get("tierkv-current-version")
            .expect("trailer survives the proxy")
            .to_str()
            .unwrap(),
        version.to_string()
    );

    // INVALID_ARGUMENT with a BadRequest naming the field and the limit.
    let status = kv
        .put(put_text(&format!("user:{}", "k".repeat(600)), "v"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("512"), "{}", status.message());
    let violations = status.get_error_details().bad_request().unwrap().clone();
    assert_eq!(violations.field_violations[0].field, "key");

    // PERMISSION_DENIED for another service's namespace; NOT_FOUND for a bad token.
    let status = kv.get(common::get("session:s/x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "NAMESPACE_OWNED"
    );
    let status = SessionServiceClient::new(channel.clone())
        .get(pb::GetSessionRequest {
            token: "forged.token".into(),
            touch: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // A 20 MiB value goes through and comes back byte for byte.
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    kv.put(pb::PutRequest {
        key: "user:big".into(),
        value: Some(pb::put_request::Value::Bytes(big.clone())),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = kv.get(common::get("user:big")).await.unwrap().into_inner();
    assert_eq!(got.value, Some(pb::get_response::Value::Bytes(big)));

    drop(nginx);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// The caller's `grpc-timeout` crosses the proxy and bounds the work on the
/// server, which answers DEADLINE_EXCEEDED itself. The call goes over a bare
/// HTTP/2 connection, because tonic's client would enforce the deadline
/// locally and answer CANCELLED in the server's place.
#[tokio::test]
async fn deadlines_survive_the_proxy() {
    let data = tempfile::tempdir().unwrap();
    let mut server = spawn_server(server_command(data.path()));
    let nginx = Nginx::start(server.addr);
    let proxy: std::net::SocketAddr = ([127, 0, 0, 1], nginx.port).into();

    // A 24 MiB body cannot cross two loopback hops and be committed in 1 ms.
    let late = pb::PutRequest {
        key: "user:late".into(),
        value: Some(pb::put_request::Value::Bytes(vec![7; 24 << 20])),
        ..Default::default()
    };
    let status = raw_unary_status(proxy, "/tierkv.v1.KvService/Put", &late, "1m").await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());

    // A generous deadline is not cut short by the hop.
    let on_time = put_text("user:on-time", "v");
    let status = raw_unary_status(proxy, "/tierkv.v1.KvService/Put", &on_time, "30S").await;
    assert_eq!(status, "0");

    let mut kv = KvServiceClient::new(nginx.channel().await);
    let late = kv.get(common::get("user:late")).await.unwrap().into_inner();
    assert!(!late.found, "a write past its deadline was applied");
    let on_time = kv
        .get(common::get("user:on-time"))
        .await
        .unwrap()
        .into_inner();
    assert!(on_time.found);

    drop(nginx);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// SIGTERM behind the proxy: health through nginx turns NOT_SERVING at once,
/// clients that stop sending new calls when they see it (as a load balancer
/// does within the shutdown delay) lose no call, and every write they were
/// told succeeded is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_behind_the_proxy_fails_no_call() {
    let data = tempfile::tempdir().unwrap();
    let mut command = server_command(data.path());
    command.env("TIERKV_SHUTDOWN_DELAY_MS", "1500");
    let mut server = spawn_server(command);
    let nginx = Nginx::start(server.addr);
    let channel = nginx.channel().await;

    let draining = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..8 {
        // Separate connections to nginx, as separate client pods would have.
        let mut kv = KvServiceClient::new(nginx.channel().await);
        let draining = Arc::clone(&draining);
        let succeeded = Arc::clone(&succeeded);
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0u64.. {
                if draining.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("user:drain:{writer}:{n}");
                match kv.put(put_text(&key, "v")).await {
                    Ok(_) => {
                        succeeded.fetch_add(1, Ordering::Relaxed);
                        acknowledged.push(key);
                    }
                    Err(status) => return Err(format!("{key}: {status:?}")),
                }
            }
            Ok(acknowledged)
        }));
    }
    while succeeded.load(Ordering::Relaxed) < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    sigterm(&server.child);
    // The load balancer's view: health through the proxy, polled often.
    let mut health = HealthClient::new(channel.clone());
    let noticed = Instant::now();
    loop {
        let status = health
            .check(health_check("tierkv.v1.KvService"))
            .await
            .expect("health answers through the proxy during the delay")
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            noticed.elapsed() < Duration::from_secs(1),
            "never NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_drain = succeeded.load(Ordering::Relaxed);
    draining.store(true, Ordering::SeqCst);

    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(
            writer
                .await
                .unwrap()
                .expect("no call fails during the drain"),
        );
    }
    assert!(acknowledged.len() >= before_drain);
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    let mut restarted = spawn_server(server_command(data.path()));
    let mut kv = common::connect(&restarted.endpoint()).await;
    let mut missing = 0;
    for chunk in acknowledged.chunks(100) {
        let results = kv
            .batch_get(pb::BatchGetRequest {
                keys: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        missing += results.iter().filter(|result| !result.found).count();
    }
    assert_eq!(missing, 0, "acknowledged writes lost across the drain");
    drop(nginx);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}
