//! TLS and mutual TLS on the gRPC port, with certificates from a throwaway CA:
//! calls over TLS work and plaintext does not; with a client CA, only clients
//! holding a certificate it signed get in; a rotated certificate is served
//! without a restart; a stalled TLS handshake is cut off; bad files stop the
//! server at start; the CLI speaks TLS too.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::{Issued, TestCa};
use common::process::BINARY;
use common::{put_text, test_config, KvServiceClient};
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::config::Config;
use tierkv::config::TlsSettings;
use tierkv::server::RunningServer;
use tokio::io::AsyncWriteExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct TlsServer {
    server: RunningServer,
    _dir: tempfile::TempDir,
}

async fn start_tls(tls: TlsSettings, adjust: impl FnOnce(&mut Config)) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.tls = tls;
    adjust(&mut config);
    let clock: SharedClock = ManualClock::starting_now();
    let server = RunningServer::start(config, clock)
        .await
        .expect("server starts");
    TlsServer { server, _dir: dir }
}

fn settings(server: &Issued, client_ca: Option<&Path>) -> TlsSettings {
    TlsSettings {
        cert_file: Some(server.cert_file.clone()),
        key_file: Some(server.key_file.clone()),
        client_ca_file: client_ca.map(Path::to_path_buf),
        ..TlsSettings::default()
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&identity.cert_file).unwrap(),
            std::fs::read(&identity.key_file).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

/// One put through `channel`, as the test's unit of "a call works".
async fn put_works(channel: Channel, key: &str) -> Result<u64, tonic::Status> {
    KvServiceClient::new(channel)
        .put(put_text(key, "v"))
        .await
        .map(|response| response.into_inner().version)
}

/// With a certificate configured, calls and health checks work over TLS, and
/// a plaintext client gets nothing.
#[tokio::test]
async fn serves_tls_and_refuses_plaintext() {
    let ca = TestCa::new("tierkv-test");
    let server_cert = ca.server("server");
    let running = start_tls(settings(&server_cert, None), |_| {}).await;
    let addr = running.server.addr;

    let channel = tls_channel(addr, &ca.cert_file, None).await.unwrap();
    assert!(put_works(channel.clone(), "user:tls").await.unwrap() > 0);
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "tierkv.v1.KvService".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);

    // Plaintext HTTP/2 against the TLS port: the call fails, nothing is written.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Ok(channel) => put_works(channel, "user:plaintext").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a plaintext call succeeded on the TLS port");

    // A client that trusts another CA refuses the server.
    let stranger = TestCa::new("stranger");
    let untrusted = match tls_channel(addr, &stranger.cert_file, None).await {
        Ok(channel) => put_works(channel, "user:untrusted").await.is_err(),
        Err(_) => true,
    };
    assert!(untrusted);
    running.server.stop().await.unwrap();
}

/// With a client CA, a client without a certificate, or with one from
/// another CA, is refused during the handshake; a client with a certificate
/// the CA signed gets in.
#[tokio::test]
async fn mutual_tls_admits_only_clients_the_ca_signed() {
    let ca = TestCa::new("tierkv-test");
    let server_cert = ca.server("server");
    let client_ca = TestCa::new("clients");
    let running = start_tls(settings(&server_cert, Some(&client_ca.cert_file)), |_| {}).await;
    let addr = running.server.addr;

    let anonymous = match tls_channel(addr, &ca.cert_file, None).await {
        Ok(channel) => put_works(channel, "user:anonymous").await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate got in");

    let forger = TestCa::new("forger");
    let forged = forger.client("forged");
    let forged_in = match tls_channel(addr, &ca.cert_file, Some(&forged)).await {
        Ok(channel) => put_works(channel, "user:forged").await.is_err(),
        Err(_) => true,
    };
    assert!(forged_in, "a client certificate from another CA got in");
    assert!(running.server.stats.connections().tls_failures >= 2);

    let good = client_ca.client("good");
    let channel = tls_channel(addr, &ca.cert_file, Some(&good)).await.unwrap();
    assert!(put_works(channel, "user:mtls").await.unwrap() > 0);
    running.server.stop().await.unwrap();
}

/// Replacing the certificate files (as cert-manager or a Secret update does)
/// changes the certificate new connections get, with no restart. The new
/// certificate comes from another CA, so which one is served is observable.
#[tokio::test]
async fn rotated_certificate_is_served_without_restart() {
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let live = tempfile::tempdir().unwrap();
    let live_cert = Issued {
        cert_file: live.path().join("tls.crt"),
        key_file: live.path().join("tls.key"),
    };
    let install = |issued: &Issued| {
        std::fs::copy(&issued.cert_file, &live_cert.cert_file).unwrap();
        std::fs::copy(&issued.key_file, &live_cert.key_file).unwrap();
    };
    install(&old_ca.server("old-server"));
    let mut tls = settings(&live_cert, None);
    tls.reload_interval_secs = 0;
    let running = start_tls(tls, |_| {}).await;
    let addr = running.server.addr;
    let old_client = tls_channel(addr, &old_ca.cert_file, None).await.unwrap();
    put_works(old_client.clone(), "user:before").await.unwrap();

    // A new modification time, whatever the file system's time granularity.
    std::thread::sleep(Duration::from_millis(20));
    install(&new_ca.server("new-server"));
    let new_file_time = std::time::SystemTime::now() + Duration::from_secs(5);
    for path in [&live_cert.cert_file, &live_cert.key_file] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(new_file_time)
            .unwrap();
    }

    let rotated = tls_channel(addr, &new_ca.cert_file, None).await.unwrap();
    put_works(rotated, "user:after").await.unwrap();
    let stale = match tls_channel(addr, &old_ca.cert_file, None).await {
        Ok(channel) => put_works(channel, "user:stale").await.is_err(),
        Err(_) => true,
    };
    assert!(stale, "new connections still get the old certificate");
    // A connection made before the rotation keeps working.
    put_works(old_client, "user:kept").await.unwrap();

    // Files that stop loading keep the last good certificate in service.
    std::fs::write(&live_cert.cert_file, "not a certificate").unwrap();
    let still = tls_channel(addr, &new_ca.cert_file, None).await.unwrap();
    put_works(still, "user:still").await.unwrap();
    running.server.stop().await.unwrap();
}

/// A client that opens a connection and stalls inside the TLS handshake is
/// closed after the handshake timeout and counted, like one that never sends
/// the HTTP/2 preface.
#[tokio::test]
async fn stalled_tls_handshake_is_cut_off() {
    let ca = TestCa::new("tierkv-test");
    let running = start_tls(settings(&ca.server("server"), None), |config| {
        config.handshake_timeout_ms = 200;
    })
    .await;
    let mut stalled = tokio::net::TcpStream::connect(running.server.addr)
        .await
        .unwrap();
    // The first bytes of a TLS record header, and then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        loop {
            match stalled.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was never closed");
    assert_eq!(running.server.stats.connections().handshake_timeouts, 1);
    assert_eq!(running.server.stats.connections().open, 0);
    running.server.stop().await.unwrap();
}

/// Unusable TLS settings stop the server at start with a message naming the problem.
#[tokio::test]
async fn bad_tls_settings_are_refused_at_start() {
    let ca = TestCa::new("tierkv-test");
    let one = ca.server("one");
    let two = ca.server("two");
    let cases = [
        (
            TlsSettings {
                cert_file: Some(one.cert_file.clone()),
                ..TlsSettings::default()
            },
            "must be set together",
        ),
        (
            TlsSettings {
                client_ca_file: Some(ca.cert_file.clone()),
                ..TlsSettings::default()
            },
            "tls.client_ca_file needs",
        ),
        (
            TlsSettings {
                cert_file: Some(one.cert_file.clone()),
                key_file: Some(two.key_file.clone()),
                ..TlsSettings::default()
            },
            "does not match",
        ),
        (
            TlsSettings {
                cert_file: Some(one.key_file.clone()),
                key_file: Some(one.key_file.clone()),
                ..TlsSettings::default()
            },
            "no PEM certificate",
        ),
        (
            TlsSettings {
                cert_file: Some("/nonexistent/tls.crt".into()),
                key_file: Some(one.key_file.clone()),
                ..TlsSettings::default()
            },
            "/nonexistent/tls.crt",
        ),
    ];
    for (tls, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&dir);
        config.tls = tls;
        let error = tierkv::server::validate(&config).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
}

/// The CLI reaches a mutual-TLS server with `--ca-file` and a client
/// certificate, and fails clearly without one.
#[tokio::test]
async fn cli_speaks_mutual_tls() {
    let ca = TestCa::new("tierkv-test");
    let client_ca = TestCa::new("clients");
    let client = client_ca.client("cli");
    let running = start_tls(
        settings(&ca.server("server"), Some(&client_ca.cert_file)),
        |_| {},
    )
    .await;
    let endpoint = format!("https://localhost:{}", running.server.addr.port());
    let ca_file = ca.cert_file.clone();
    let identity_files = client.clone();
    let cli = move |args: &[&str], identity: bool| {
        let mut command = Command::new(BINARY);
        command
            .arg("kv")
            .args(args)
            .env("TIERKV_ENDPOINT", &endpoint)
            .env("TIERKV_CA_FILE", &ca_file);
        if identity {
            command
                .env("TIERKV_CLIENT_CERT_FILE", &identity_files.cert_file)
                .env("TIERKV_CLIENT_KEY_FILE", &identity_files.key_file);
        }
        command.output().unwrap()
    };
    let put = tokio::task::spawn_blocking(move || {
        let put = cli(&["put", "user:cli-tls", "hello"], true);
        let get = cli(&["get", "user:cli-tls"], true);
        let anonymous = cli(&["get", "user:cli-tls"], false);
        (put, get, anonymous)
    })
    .await
    .unwrap();
    let (put, get, anonymous) = put;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");
    assert!(!anonymous.status.success());
    running.server.stop().await.unwrap();
}

/// SIGHUP re-reads `[tls]`: after the client CA file is replaced, new
/// connections admit the new CA's clients and refuse the old CA's, while a
/// connection opened before keeps working; the process is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_client_ca() {
    use common::process::{server_command, spawn_server};
    let ca = TestCa::new("tierkv-test");
    let server_cert = ca.server("server");
    let old_clients = TestCa::new("old-clients");
    let new_clients = TestCa::new("new-clients");
    let old_client = old_clients.client("old");
    let new_client = new_clients.client("new");
    let dir = tempfile::tempdir().unwrap();
    let live_ca = dir.path().join("client-ca.pem");
    std::fs::copy(&old_clients.cert_file, &live_ca).unwrap();
    let config_file = dir.path().join("tierkv.toml");
    std::fs::write(
        &config_file,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
            server_cert.cert_file, server_cert.key_file, live_ca
        ),
    )
    .unwrap();
    let mut command = server_command(&dir.path().join("data"));
    command.arg("--config").arg(&config_file);
    let mut server = spawn_server(command);
    let addr = server.addr;
    let gets_in = |identity: Issued| {
        let ca_file = ca.cert_file.clone();
        async move {
            match tls_channel(addr, &ca_file, Some(&identity)).await {
                Ok(channel) => put_works(channel, "user:reload").await.is_ok(),
                Err(_) => false,
            }
        }
    };

    let open = tls_channel(addr, &ca.cert_file, Some(&old_client))
        .await
        .unwrap();
    assert!(put_works(open.clone(), "user:open").await.is_ok());
    assert!(!gets_in(new_client.clone()).await, "not yet trusted");

    std::fs::copy(&new_clients.cert_file, &live_ca).unwrap();
    // SAFETY: kill(2) with a valid pid and signal has no memory effects.
    assert_eq!(
        unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let mut waits = 0;
    while !gets_in(new_client.clone()).await {
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the server exited on SIGHUP: {}",
            server.logs()
        );
        waits += 1;
        assert!(
            waits < 300,
            "the new client CA is not trusted 30 s after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !gets_in(old_client).await,
        "the old client CA is still trusted"
    );
    assert!(
        put_works(open, "user:still-open").await.is_ok(),
        "the connection opened before the reload keeps working"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
