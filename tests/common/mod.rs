//! Shared test set-up: a real server on 127.0.0.1:0 over a temporary RocksDB
//! directory, with a manual clock, reached through the generated client.
#![allow(dead_code)]

pub mod etcd;
pub mod origin;
pub mod pki;
pub mod process;
pub mod raw;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::config::Config;
use tierkv::proto::v1 as pb;
use tierkv::server::message_limits::MAX_MESSAGE_BYTES;
use tierkv::server::RunningServer;
use tonic::transport::Channel;

pub use pb::admin_service_client::AdminServiceClient;
pub use pb::kv_service_client::KvServiceClient;
pub use pb::session_service_client::SessionServiceClient;

/// A running server, its clock and a connected client.
pub struct TestServer {
    /// The server.
    pub server: RunningServer,
    /// The clock the server reads; advance it instead of sleeping.
    pub clock: Arc<ManualClock>,
    /// A client connected to the server.
    pub client: KvServiceClient<Channel>,
    /// The configuration it was started with.
    pub config: Config,
    /// Keeps the data directory alive while the server runs.
    pub dir: Arc<TempDir>,
}

/// The configuration tests start from: port 0, a data dir, default namespaces.
pub fn test_config(dir: &TempDir) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Tests run in parallel: every server gets its own metrics port.
        metrics_listen: "127.0.0.1:0".to_string(),
        data_dir: dir.path().join("data"),
        shutdown_grace_ms: 2_000,
        shutdown_delay_ms: 0,
        ..Config::default()
    }
}

/// Starts a server with the default test configuration.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Starts a server after `configure` adjusts the test configuration.
pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = test_config(&dir);
    configure(&mut config);
    launch(config, ManualClock::starting_now(), dir).await
}

async fn launch(config: Config, clock: Arc<ManualClock>, dir: Arc<TempDir>) -> TestServer {
    let shared: SharedClock = clock.clone();
    let server = RunningServer::start(config.clone(), shared)
        .await
        .expect("server starts");
    let client = connect(&server.endpoint()).await;
    TestServer {
        server,
        clock,
        client,
        config,
        dir,
    }
}

/// A client for `endpoint` that accepts the largest messages the server sends.
pub async fn connect(endpoint: &str) -> KvServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    KvServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An Admin service client for `endpoint`.
pub async fn connect_admin(endpoint: &str) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(endpoint.to_string())
        .await
        .expect("connect")
}

/// A Session service client for `endpoint`.
pub async fn connect_sessions(endpoint: &str) -> SessionServiceClient<Channel> {
    SessionServiceClient::connect(endpoint.to_string())
        .await
        .expect("connect")
}

impl TestServer {
    /// Stops the server gracefully and starts a new one on the same data
    /// directory and clock.
    pub async fn restart(self) -> TestServer {
        let TestServer {
            server,
            clock,
            config,
            dir,
            client,
        } = self;
        drop(client);
        server.stop().await.expect("clean stop");
        launch(config, clock, dir).await
    }

    /// Stops the server gracefully.
    pub async fn stop(self) {
        self.server.stop().await.expect("clean stop");
    }

    /// The data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.config.data_dir.clone()
    }
}

/// A text put request.
pub fn put_text(key: &str, text: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.to_string(),
        value: Some(pb::put_request::Value::Text(text.to_string())),
        ..Default::default()
    }
}

/// A get request for the stored representation.
pub fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        key: key.to_string(),
        r#type: 0,
        fallback: None,
    }
}

/// Whether a live key exists.
pub async fn exists(client: &mut KvServiceClient<Channel>, key: &str) -> bool {
    client.get(get(key)).await.expect("get").into_inner().found
}

/// Every key of a listing, paging with `page_size`.
pub async fn list_all(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
    page_size: i32,
) -> Vec<String> {
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(
            !page.keys.is_empty() || page.next_page_token.is_empty(),
            "a page is empty only when the listing is complete"
        );
        names.extend(page.keys.into_iter().map(|key| key.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        page_token = page.next_page_token;
    }
}

/// Writes `keys` with text values in one batch.
pub async fn put_all(client: &mut KvServiceClient<Channel>, keys: &[&str]) {
    let mutations = keys
        .iter()
        .map(|key| pb::Mutation {
            operation: Some(pb::mutation::Operation::Put(put_text(key, "v"))),
        })
        .collect();
    client
        .batch_write(pb::BatchWriteRequest { mutations })
        .await
        .expect("batch write");
}

/// The Prometheus text a server's metrics listener answers at `/metrics`.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of one series (name and labels, exactly as exposed) in a
/// scrape, `None` when the scrape lacks it.
pub fn metric_sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}
