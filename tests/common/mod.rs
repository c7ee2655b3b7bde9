//! Shared test set-up: a real server on 127.0.0.1:0 over a temporary RocksDB
//! directory, with a manual clock, reached through the generated client.
//!
//! The engine is the test binary's, fixed at compile time: a suite file
//! (`tests/kv_api.rs`) starts its servers over RocksDB, and its etcd twin
//! (`tests/kv_api_etcd.rs`, which includes the same file as a module) over
//! the shared three-member etcd cluster of [`etcd`], every server under a
//! key prefix of its own. A test binary whose name ends in `_etcd` is an
//! etcd run ([`ON_ETCD`]). Tests that need the RocksDB engine's local-only
//! operations are wrapped in `rocksdb_only! { "reason"; ... }`: the suite
//! file takes the macro that keeps them from [`rocksdb_run`], the twin
//! declares one that leaves them out. See `docs/development.md`.
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

/// Whether this binary's servers run over etcd: its name (Cargo's crate
/// name of the test target) ends in `_etcd`, as every etcd twin's does.
pub const ON_ETCD: bool = ends_with(env!("CARGO_CRATE_NAME").as_bytes(), b"_etcd");

const fn ends_with(name: &[u8], suffix: &[u8]) -> bool {
    if name.len() < suffix.len() {
        return false;
    }
    let start = name.len() - suffix.len();
    let mut i = 0;
    while i < suffix.len() {
        if name[start + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// What a suite file whose tests include local-only ones declares at its
/// root: `use common::rocksdb_run::rocksdb_only;`. Its etcd twin declares a
/// `rocksdb_only` of its own, which leaves those tests out.
#[allow(unused_macros, unused_imports)] // most suites have no such test
pub mod rocksdb_run {
    /// Tests that need the RocksDB engine's local-only operations (writer
    /// pauses, fault injection, value-entry checks, data-dir inspection),
    /// with the reason: kept in the RocksDB run.
    macro_rules! rocksdb_only {
        ($reason:literal; $($item:item)*) => { $($item)* };
    }
    pub(crate) use rocksdb_only;
}

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

/// Points `config` at this binary's engine: nothing to change for
/// RocksDB; over etcd, the shared test cluster (started on first use) with
/// a key prefix no other server of the run uses, and the limits its members
/// were started with.
pub fn use_engine(config: &mut Config) {
    if !ON_ETCD {
        return;
    }
    let cluster = etcd::shared();
    config.engine.kind = tierkv::config::EngineKind::Etcd;
    config.engine.etcd.endpoints = cluster.endpoints();
    config.engine.etcd.prefix = etcd::unique_prefix("suite");
    config.engine.etcd.max_txn_ops = etcd::TEST_MAX_TXN_OPS;
    config.engine.etcd.max_request_bytes = etcd::TEST_MAX_REQUEST_BYTES;
}

/// This binary's engine opened in-process, without a server, for tests of
/// a service over an engine: RocksDB in `dir`, or a fresh prefix of the
/// etcd test cluster; `clock` drives either.
pub async fn open_engine(dir: &TempDir, clock: SharedClock) -> Arc<dyn tierkv::engine::Engine> {
    let mut config = test_config(dir);
    use_engine(&mut config);
    tierkv::server::store::open_store(&config, clock)
        .await
        .expect("the engine opens")
}

/// Starts a server after `configure` adjusts the test configuration, over
/// this binary's engine ([`use_engine`]).
pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = test_config(&dir);
    use_engine(&mut config);
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

    /// The RocksDB engine's handle, for the local-only operations a test
    /// uses (writer pauses, fault injection, value-entry checks). Such tests
    /// are `rocksdb_only!` and never run over etcd.
    pub fn rocks(&self) -> &tierkv::engine::RocksEngine {
        self.server
            .rocks()
            .expect("a local-only operation of the RocksDB engine in an etcd run: mark the test rocksdb_only!")
    }

    /// Whether the store holds an out-of-line value entry for `key` (large
    /// values live apart from their record on both engines): RocksDB's
    /// value column family, or the etcd engine's `<prefix>v/<key>` (its key
    /// layout, `src/engine/etcd/keys.rs`), read directly from etcd.
    pub async fn value_entry_present(&self, key: &str) -> bool {
        if let Some(rocks) = self.server.rocks() {
            return rocks
                .value_entry_present(key)
                .expect("read the value entry");
        }
        let etcd = &self.config.engine.etcd;
        let mut client = etcd_client::Client::connect(&etcd.endpoints, None)
            .await
            .expect("connect to etcd");
        let reply = client
            .get(
                format!("{}v/{key}", etcd.prefix),
                Some(etcd_client::GetOptions::new().with_count_only()),
            )
            .await
            .expect("read etcd");
        reply.count() > 0
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
