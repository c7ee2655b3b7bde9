//! Server configuration: defaults, then a TOML file, then `TIERKV_*`
//! environment variables, then command-line flags. Unknown keys and invalid
//! values are rejected with a message naming them.

pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::auth::AuthConfig;
use crate::cache::config::CacheConfig;
use crate::engine::Namespaces;
use crate::kv::limits::{MAX_KEY_BYTES, MAX_MESSAGE_BYTES};
use crate::migrate::{MigrationStep, Migrations};
use crate::session::SessionConfig;
pub use tls::TlsSettings;

/// Environment variables read by the command-line client, not the server.
const CLIENT_ENV: &[&str] = &[
    "TIERKV_ENDPOINT",
    "TIERKV_CONFIG",
    "TIERKV_CA_FILE",
    "TIERKV_CLIENT_CERT_FILE",
    "TIERKV_CLIENT_KEY_FILE",
    "TIERKV_TOKEN",
];

/// Most configured namespaces. Each is a column family with its own
/// memtables and files, and `ListNamespaces` and `Stats` answer a few
/// hundred bytes per namespace: this keeps both replies well within the
/// 4 MiB standard clients decode by default, as a list without a bound
/// would not.
pub const MAX_NAMESPACES: usize = 256;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Everything the server can be told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve gRPC on.
    pub listen: SocketAddr,
    /// Serve without authentication (no `[[auth.tokens]]`, no mutual TLS) on
    /// an address other than loopback. Off, such a server refuses to start:
    /// anyone who can reach the port could otherwise drop every namespace.
    pub allow_unauthenticated: bool,
    /// Address of the metrics and probes HTTP listener; "off" or empty disables it.
    pub metrics_listen: String,
    /// Directory of the RocksDB store.
    pub data_dir: PathBuf,
    /// Where `AdminService.Backup` writes backups (one directory each); unset: backups are off.
    pub backup_dir: Option<PathBuf>,
    /// Key prefixes with a column family of their own.
    pub namespaces: Vec<String>,
    /// fsync the write-ahead log before acknowledging writes.
    pub sync_writes: bool,
    /// RocksDB block cache size, in MiB.
    pub block_cache_mb: usize,
    /// Compaction removes a record only once it has been expired this long,
    /// in seconds, so a clock stepped forward by less destroys nothing.
    pub expiry_grace_secs: u64,
    /// Most MiB of writes queued for the writer thread; writers wait beyond.
    pub write_queue_mb: usize,
    /// Longest a request may run, in milliseconds (0 = only the client's deadline).
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// How long shutdown keeps serving after health turns NOT_SERVING, so
    /// load balancers stop sending calls before new ones are refused, in
    /// milliseconds.
    pub shutdown_delay_ms: u64,
    /// Most client connections open at once; more are closed when accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface, in
    /// milliseconds.
    pub handshake_timeout_ms: u64,
    /// Most concurrent calls (HTTP/2 streams) per connection, advertised to
    /// clients in the HTTP/2 settings.
    pub max_concurrent_streams: u32,
    /// Most calls handled at once across all connections; more are refused
    /// at once with RESOURCE_EXHAUSTED (health checks are exempt); 0: no limit.
    pub max_calls_in_flight: usize,
    /// Most health `Watch` and reflection streams open at once on one
    /// connection; more are refused with RESOURCE_EXHAUSTED. Anyone may open
    /// them and keep them open, so past their first message (when they leave
    /// `max_calls_in_flight`) only this bounds them.
    pub max_watch_streams_per_connection: usize,
    /// Close a connection gracefully (GOAWAY) after this many seconds, so
    /// clients rebalance across pods; 0: never.
    pub max_connection_age_secs: u64,
    /// How long calls on a connection past `max_connection_age_secs` may run
    /// before it is closed.
    pub max_connection_age_grace_secs: u64,
    /// Bytes of request messages held at once across all calls, in MiB.
    pub request_memory_mb: usize,
    /// How long a request waits for room in `request_memory_mb` before it is
    /// refused with RESOURCE_EXHAUSTED, in milliseconds.
    pub request_memory_wait_ms: u64,
    /// Bytes of replies produced and not yet written to their clients, held
    /// at once across all calls, in MiB; while they fill it, new calls are
    /// refused with RESOURCE_EXHAUSTED.
    pub response_memory_mb: usize,
    /// How long a reply message may take to be written to its client once
    /// produced, in milliseconds; a slower one is dropped and its stream reset.
    pub response_send_timeout_ms: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax (`RUST_LOG` wins).
    pub log_level: String,
    /// The Session service (`[session]` in the file).
    pub session: SessionConfig,
    /// TLS and mutual TLS on the gRPC port (`[tls]` in the file).
    pub tls: TlsSettings,
    /// Bearer-token authentication (`[auth]`, `[[auth.tokens]]` in the file).
    pub auth: AuthConfig,
    /// Record migrations (`[[migrations]]` in the file): per key prefix,
    /// ordered RFC 6902 JSON Patch steps from one schema version to the next.
    #[serde(default)]
    pub migrations: Vec<MigrationStep>,
    /// The cache: memory bound and HTTP origins (`[cache]` in the file).
    #[serde(default)]
    pub cache: CacheConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            allow_unauthenticated: false,
            metrics_listen: "127.0.0.1:9090".to_string(),
            data_dir: PathBuf::from("./data"),
            backup_dir: None,
            namespaces: Namespaces::default_prefixes(),
            sync_writes: false,
            block_cache_mb: 128,
            expiry_grace_secs: 3600,
            write_queue_mb: 256,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            shutdown_delay_ms: 5_000,
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            max_concurrent_streams: 256,
            max_calls_in_flight: 2048,
            max_watch_streams_per_connection: 8,
            max_connection_age_secs: 0,
            max_connection_age_grace_secs: 30,
            request_memory_mb: 1024,
            request_memory_wait_ms: 1_000,
            response_memory_mb: 512,
            response_send_timeout_ms: 30_000,
            log_format: LogFormat::Human,
            log_level: "info".to_string(),
            session: SessionConfig::default(),
            tls: TlsSettings::default(),
            auth: AuthConfig::default(),
            migrations: Vec::new(),
            cache: CacheConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an environment variable has an unknown key or a bad value.
    #[error("invalid configuration{origin}: {message}")]
    Parse {
        /// Where the bad input came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Copy)]
enum EnvKind {
    Text,
    Bool,
    Integer,
    List,
}

/// `TIERKV_<NAME>` variables the server reads, with their config keys.
const SERVER_ENV: &[(&str, &str, EnvKind)] = &[
    ("TIERKV_LISTEN", "listen", EnvKind::Text),
    (
        "TIERKV_ALLOW_UNAUTHENTICATED",
        "allow_unauthenticated",
        EnvKind::Bool,
    ),
    ("TIERKV_METRICS_LISTEN", "metrics_listen", EnvKind::Text),
    ("TIERKV_DATA_DIR", "data_dir", EnvKind::Text),
    ("TIERKV_BACKUP_DIR", "backup_dir", EnvKind::Text),
    ("TIERKV_NAMESPACES", "namespaces", EnvKind::List),
    ("TIERKV_SYNC_WRITES", "sync_writes", EnvKind::Bool),
    ("TIERKV_BLOCK_CACHE_MB", "block_cache_mb", EnvKind::Integer),
    (
        "TIERKV_EXPIRY_GRACE_SECS",
        "expiry_grace_secs",
        EnvKind::Integer,
    ),
    ("TIERKV_WRITE_QUEUE_MB", "write_queue_mb", EnvKind::Integer),
    (
        "TIERKV_REQUEST_TIMEOUT_MS",
        "request_timeout_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SHUTDOWN_GRACE_MS",
        "shutdown_grace_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SHUTDOWN_DELAY_MS",
        "shutdown_delay_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_MAX_CONNECTIONS",
        "max_connections",
        EnvKind::Integer,
    ),
    (
        "TIERKV_HANDSHAKE_TIMEOUT_MS",
        "handshake_timeout_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_MAX_CONCURRENT_STREAMS",
        "max_concurrent_streams",
        EnvKind::Integer,
    ),
    (
        "TIERKV_REQUEST_MEMORY_MB",
        "request_memory_mb",
        EnvKind::Integer,
    ),
    (
        "TIERKV_REQUEST_MEMORY_WAIT_MS",
        "request_memory_wait_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_RESPONSE_MEMORY_MB",
        "response_memory_mb",
        EnvKind::Integer,
    ),
    (
        "TIERKV_RESPONSE_SEND_TIMEOUT_MS",
        "response_send_timeout_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_MAX_CALLS_IN_FLIGHT",
        "max_calls_in_flight",
        EnvKind::Integer,
    ),
    (
        "TIERKV_MAX_WATCH_STREAMS_PER_CONNECTION",
        "max_watch_streams_per_connection",
        EnvKind::Integer,
    ),
    (
        "TIERKV_MAX_CONNECTION_AGE_SECS",
        "max_connection_age_secs",
        EnvKind::Integer,
    ),
    (
        "TIERKV_MAX_CONNECTION_AGE_GRACE_SECS",
        "max_connection_age_grace_secs",
        EnvKind::Integer,
    ),
    ("TIERKV_LOG_FORMAT", "log_format", EnvKind::Text),
    ("TIERKV_LOG_LEVEL", "log_level", EnvKind::Text),
    ("TIERKV_SESSION_PREFIX", "session.prefix", EnvKind::Text),
    (
        "TIERKV_SESSION_DEFAULT_TTL_SECS",
        "session.default_ttl_secs",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SESSION_MAX_TTL_SECS",
        "session.max_ttl_secs",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SESSION_DEFAULT_IDLE_TIMEOUT_SECS",
        "session.default_idle_timeout_secs",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SESSION_TOUCH_INTERVAL_SECS",
        "session.touch_interval_secs",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SESSION_MAX_USER_ID_BYTES",
        "session.max_user_id_bytes",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SESSION_MAX_DATA_BYTES",
        "session.max_data_bytes",
        EnvKind::Integer,
    ),
    (
        "TIERKV_SESSION_MAX_METADATA_BYTES",
        "session.max_metadata_bytes",
        EnvKind::Integer,
    ),
    ("TIERKV_TLS_CERT_FILE", "tls.cert_file", EnvKind::Text),
    ("TIERKV_TLS_KEY_FILE", "tls.key_file", EnvKind::Text),
    (
        "TIERKV_TLS_CLIENT_CA_FILE",
        "tls.client_ca_file",
        EnvKind::Text,
    ),
    (
        "TIERKV_TLS_RELOAD_INTERVAL_SECS",
        "tls.reload_interval_secs",
        EnvKind::Integer,
    ),
    (
        "TIERKV_CACHE_MEMORY_MB",
        "cache.memory_mb",
        EnvKind::Integer,
    ),
    (
        "TIERKV_CACHE_MAX_CONCURRENT_FETCHES",
        "cache.max_concurrent_fetches",
        EnvKind::Integer,
    ),
];

impl Config {
    /// Loads the configuration from an optional TOML file and the given
    /// environment (pass `std::env::vars().collect()` in production).
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|error| ConfigError::Parse {
                        origin: format!(" in {}", path.display()),
                        message: error.message().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let (overrides, from_env) = env_overrides(env)?;
        for (key, value) in overrides {
            insert_dotted(&mut table, &key, value);
        }
        let config = Config::deserialize(table).map_err(|error| ConfigError::Parse {
            origin: match (file, from_env.is_empty()) {
                (Some(path), true) => format!(" in {}", path.display()),
                (Some(path), false) => format!(
                    " in {} or TIERKV_* variables ({})",
                    path.display(),
                    from_env.join(", ")
                ),
                (None, false) => format!(" in TIERKV_* variables ({})", from_env.join(", ")),
                (None, true) => String::new(),
            },
            message: error.message().to_string(),
        })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.namespaces.len() > MAX_NAMESPACES {
            return Err(ConfigError::Invalid(format!(
                "namespaces: {} prefixes are configured; the limit is {MAX_NAMESPACES} (each is a RocksDB column family)",
                self.namespaces.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for prefix in &self.namespaces {
            if prefix.is_empty() {
                return Err(ConfigError::Invalid(
                    "namespaces: a namespace prefix must not be empty (keys matching no prefix already go to the default namespace)".into(),
                ));
            }
            if prefix.len() > MAX_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "namespaces: prefix {prefix:?} is {} bytes; the limit is {MAX_KEY_BYTES}",
                    prefix.len()
                )));
            }
            if !seen.insert(prefix) {
                return Err(ConfigError::Invalid(format!(
                    "namespaces: prefix {prefix:?} is listed twice"
                )));
            }
        }
        if self.block_cache_mb == 0 {
            return Err(ConfigError::Invalid(
                "block_cache_mb must be at least 1".into(),
            ));
        }
        // A queue smaller than the largest batch would make that batch wait
        // for an empty queue every time.
        let min_queue_mb = crate::kv::limits::MAX_BATCH_WRITE_BYTES.div_ceil(1024 * 1024);
        if self.write_queue_mb < min_queue_mb {
            return Err(ConfigError::Invalid(format!(
                "write_queue_mb is {}; it must be at least {min_queue_mb} (the largest batch write)",
                self.write_queue_mb
            )));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_streams must be at least 1".into(),
            ));
        }
        if self.max_watch_streams_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "max_watch_streams_per_connection must be at least 1 (health Watch and reflection need one each)".into(),
            ));
        }
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "handshake_timeout_ms must be at least 1".into(),
            ));
        }
        if self.request_memory_bytes() < MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "request_memory_mb is {}; it must be at least {} so the largest request (a {MAX_MESSAGE_BYTES}-byte message) fits",
                self.request_memory_mb,
                MAX_MESSAGE_BYTES.div_ceil(1024 * 1024)
            )));
        }
        // A reply larger than the budget could never be sent.
        if self.response_memory_bytes() < MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "response_memory_mb is {}; it must be at least {} so the largest reply (a {MAX_MESSAGE_BYTES}-byte message) fits",
                self.response_memory_mb,
                MAX_MESSAGE_BYTES.div_ceil(1024 * 1024)
            )));
        }
        if self.response_send_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "response_send_timeout_ms must be at least 1".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir must not be empty".into()));
        }
        if let Some(backup_dir) = &self.backup_dir {
            if backup_dir.starts_with(&self.data_dir) {
                return Err(ConfigError::Invalid(format!(
                    "backup_dir {} is inside data_dir {}; put backups beside the data (same file system for hard links), not in it",
                    backup_dir.display(),
                    self.data_dir.display()
                )));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|error| {
            ConfigError::Invalid(format!("log_level {:?}: {error}", self.log_level))
        })?;
        self.session.validate().map_err(ConfigError::Invalid)?;
        self.tls.check_pairing().map_err(ConfigError::Invalid)?;
        crate::auth::Authenticator::new(&self.auth).map_err(ConfigError::Invalid)?;
        self.check_exposure()?;
        self.metrics_addr()?;
        let namespaces = self.namespaces().map_err(|error| {
            ConfigError::Invalid(format!("session.prefix {:?}: {error}", self.session.prefix))
        })?;
        self.migrations()?;
        self.cache
            .validate(&namespaces)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// Whether clients must authenticate: `[[auth.tokens]]` are configured,
    /// or mutual TLS makes every client present a certificate the CA signed.
    pub fn authenticates_clients(&self) -> bool {
        !self.auth.tokens.is_empty() || self.tls.client_ca_file.is_some()
    }

    /// Whether `listen` is a loopback address, which only local processes reach.
    pub fn listens_on_loopback_only(&self) -> bool {
        match self.listen.ip() {
            // An IPv4 address mapped into IPv6 (`::ffff:127.0.0.1`) counts as itself.
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            std::net::IpAddr::V4(v4) => v4.is_loopback(),
        }
    }

    /// Refuses to serve the network without authentication, unless
    /// `allow_unauthenticated` says so: anyone who can reach the port could
    /// otherwise read, write and drop everything. Loopback stays open for
    /// development.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.listens_on_loopback_only()
            || self.authenticates_clients()
            || self.allow_unauthenticated
        {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "listen is {}, which other hosts can reach, and no authentication is configured: \
             anyone who can connect could read, write and drop everything. Configure \
             [[auth.tokens]] (or mutual TLS with tls.client_ca_file), listen on 127.0.0.1, \
             or set allow_unauthenticated = true (TIERKV_ALLOW_UNAUTHENTICATED=true) if \
             something else guards the port",
            self.listen
        )))
    }

    /// The validated `[[migrations]]`.
    pub fn migrations(&self) -> Result<Migrations, ConfigError> {
        let namespaces = self.namespaces().map_err(ConfigError::Invalid)?;
        Migrations::new(&self.migrations, &namespaces)
            .map_err(|error| ConfigError::Invalid(error.to_string()))
    }

    /// Which service owns which namespace: each service that keeps internals
    /// in a namespace declares it here.
    pub fn namespace_owners(&self) -> Vec<(String, &'static str)> {
        vec![(self.session.prefix.clone(), crate::session::OWNER)]
    }

    /// The configured namespaces with their owners.
    pub fn namespaces(&self) -> Result<Namespaces, String> {
        Namespaces::new(self.namespaces.iter().cloned()).with_owners(self.namespace_owners())
    }

    /// Where metrics and probes are served, or `None` when `metrics_listen` is off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let value = self.metrics_listen.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics_listen {value:?} is not an address like 127.0.0.1:9090, or \"off\""
            ))
        })
    }

    /// The connection age after which a connection is closed gracefully, if any.
    pub fn max_connection_age(&self) -> Option<Duration> {
        (self.max_connection_age_secs > 0)
            .then(|| Duration::from_secs(self.max_connection_age_secs))
    }

    /// How long calls may run on a connection past its maximum age.
    pub fn max_connection_age_grace(&self) -> Duration {
        Duration::from_secs(self.max_connection_age_grace_secs)
    }

    /// The configured request timeout, if any.
    pub fn request_timeout(&self) -> Option<Duration> {
        (self.request_timeout_ms > 0).then(|| Duration::from_millis(self.request_timeout_ms))
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// How long shutdown keeps serving while reporting NOT_SERVING.
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    /// How long a new connection may take to send the HTTP/2 preface.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The request memory budget, in bytes.
    pub fn request_memory_bytes(&self) -> usize {
        self.request_memory_mb.saturating_mul(1024 * 1024)
    }

    /// How long a request waits for room in the request memory budget.
    pub fn request_memory_wait(&self) -> Duration {
        Duration::from_millis(self.request_memory_wait_ms)
    }

    /// The response memory budget, in bytes.
    pub fn response_memory_bytes(&self) -> usize {
        self.response_memory_mb.saturating_mul(1024 * 1024)
    }

    /// How long a reply message may take to be written once produced.
    pub fn response_send_timeout(&self) -> Duration {
        Duration::from_millis(self.response_send_timeout_ms)
    }
}

/// Sets `key` in `table`; a dotted key (`session.prefix`) sets a member of a
/// sub-table, keeping the sub-table's other members from the file.
fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            // Not a table in the file: deserialization reports it.
            if let toml::Value::Table(inner) = entry {
                insert_dotted(inner, rest, value);
            }
        }
    }
}

/// Whether `name=value` is one of the variables Kubernetes injects into every pod for each
/// Service in the namespace (`enableServiceLinks`, on by default): a Service named `tierkv`
/// yields `TIERKV_SERVICE_HOST`, `TIERKV_SERVICE_PORT[_<port name>]`, `TIERKV_PORT=tcp://…` and
/// `TIERKV_PORT_<n>_<proto>[_ADDR|_PORT|_PROTO]`, and `tierkv-metrics` the same under
/// `TIERKV_METRICS_`. They share our prefix by accident; refusing them would crash-loop a
/// StatefulSet named `tierkv`, while a misspelling of one of our own settings never has these
/// shapes, so it is still refused.
fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
    const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
    if name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
    {
        return true;
    }
    // `<SERVICE>_PORT_<number>_<PROTO>` with an optional `_ADDR`, `_PORT` or `_PROTO`.
    let parts: Vec<&str> = name.split('_').collect();
    let numbered_port = parts.windows(3).enumerate().any(|(index, window)| {
        let rest = &parts[index + 3..];
        window[0] == "PORT"
            && !window[1].is_empty()
            && window[1].bytes().all(|byte| byte.is_ascii_digit())
            && PROTOCOLS.contains(&window[2])
            && match rest {
                [] => true,
                [suffix] => ["ADDR", "PORT", "PROTO"].contains(suffix),
                _ => false,
            }
    });
    if numbered_port {
        return true;
    }
    // `<SERVICE>_PORT` holds the service's first port as a URL.
    let value = value.to_ascii_lowercase();
    name.ends_with("_PORT")
        && ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|scheme| value.starts_with(scheme))
}

/// The config values `TIERKV_*` variables set, and the names of those variables.
type EnvOverrides = (BTreeMap<String, toml::Value>, Vec<String>);

fn env_overrides(env: &HashMap<String, String>) -> Result<EnvOverrides, ConfigError> {
    let mut overrides = BTreeMap::new();
    let mut used = Vec::new();
    let mut names: Vec<&String> = env
        .keys()
        .filter(|name| name.starts_with("TIERKV_"))
        .collect();
    names.sort();
    for name in names {
        if CLIENT_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some((_, key, kind)) = SERVER_ENV.iter().find(|(env_name, _, _)| env_name == name)
        else {
            if is_kubernetes_service_link(name, &env[name]) {
                continue;
            }
            let known: Vec<&str> = SERVER_ENV
                .iter()
                .map(|(env_name, _, _)| *env_name)
                .collect();
            return Err(ConfigError::Parse {
                origin: format!(" in environment variable {name}"),
                message: format!("unknown variable; known ones are {}", known.join(", ")),
            });
        };
        let raw = env[name].trim();
        let bad = |expected: &str| ConfigError::Parse {
            origin: format!(" in environment variable {name}"),
            message: format!("{raw:?} is not {expected}"),
        };
        let value = match kind {
            EnvKind::Text => toml::Value::String(raw.to_string()),
            EnvKind::Bool => toml::Value::Boolean(match raw {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(bad("a boolean (true or false)")),
            }),
            EnvKind::Integer => toml::Value::Integer(
                raw.parse::<u32>()
                    .map(i64::from)
                    .map_err(|_| bad("a non-negative integer"))?,
            ),
            EnvKind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_string()))
                    .collect(),
            ),
        };
        overrides.insert(key.to_string(), value);
        used.push(name.clone());
    }
    Ok((overrides, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    /// No file and no variables gives the documented defaults.
    #[test]
    fn defaults_need_no_file() {
        let config = Config::load(None, &env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        config.validate().unwrap();
    }

    /// Variables override the file, and lists split on commas.
    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tierkv.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:7000\"\nsync_writes = false\n").unwrap();
        let config = Config::load(
            Some(&path),
            &env(&[
                ("TIERKV_SYNC_WRITES", "true"),
                ("TIERKV_NAMESPACES", "a:, b:"),
                ("TIERKV_ENDPOINT", "http://x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 7000);
        assert!(config.sync_writes);
        assert_eq!(config.namespaces, vec!["a:", "b:"]);
    }

    /// The variables Kubernetes injects for Services named `tierkv` and `tierkv-metrics` are
    /// ignored; misspellings of our own settings, even ones ending in `_PORT`, are not.
    #[test]
    fn ignores_kubernetes_service_links_only() {
        let links = [
            ("TIERKV_PORT", "tcp://10.0.0.1:50051"),
            ("TIERKV_SERVICE_HOST", "10.0.0.1"),
            ("TIERKV_SERVICE_PORT", "50051"),
            ("TIERKV_SERVICE_PORT_GRPC", "50051"),
            ("TIERKV_PORT_50051_TCP", "tcp://10.0.0.1:50051"),
            ("TIERKV_PORT_50051_TCP_ADDR", "10.0.0.1"),
            ("TIERKV_PORT_50051_TCP_PORT", "50051"),
            ("TIERKV_PORT_50051_TCP_PROTO", "tcp"),
            ("TIERKV_METRICS_PORT", "tcp://10.0.0.2:9090"),
            ("TIERKV_METRICS_SERVICE_HOST", "10.0.0.2"),
            ("TIERKV_METRICS_PORT_9090_TCP_ADDR", "10.0.0.2"),
        ];
        let config = Config::load(None, &env(&links)).unwrap();
        assert_eq!(config, Config::default());

        for (name, value) in [
            ("TIERKV_PORT", "50051"),
            ("TIERKV_LISTEN_PORT", "50051"),
            ("TIERKV_PORT_50051_TCP_HOST", "10.0.0.1"),
            ("TIERKV_PORT_X_TCP", "tcp://10.0.0.1:1"),
            ("TIERKV_SYNC_WRITE", "true"),
        ] {
            let error = Config::load(None, &env(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(name), "{name}: {error}");
            assert!(error.contains("unknown variable"), "{name}: {error}");
        }
    }

    /// Unknown keys and bad values are named in the error.
    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tierkv.toml");
        std::fs::write(&path, "listn = \"127.0.0.1:7000\"\n").unwrap();
        let error = Config::load(Some(&path), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("listn"), "{error}");

        let error = Config::load(None, &env(&[("TIERKV_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("TIERKV_LISTEN"), "{error}");

        let error = Config::load(None, &env(&[("TIERKV_SYNC_WRITE", "true")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("TIERKV_SYNC_WRITE"), "{error}");

        let error = Config::load(None, &env(&[("TIERKV_BLOCK_CACHE_MB", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("non-negative integer"), "{error}");

        let config = Config {
            namespaces: vec!["a:".into(), "a:".into()],
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("twice"));

        let config = Config {
            write_queue_mb: 10,
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("write_queue_mb is 10"), "{error}");
        let config = Config::load(None, &env(&[("TIERKV_EXPIRY_GRACE_SECS", "60")])).unwrap();
        assert_eq!(config.expiry_grace_secs, 60);
    }

    /// The session section reads from the file and from `TIERKV_SESSION_*`,
    /// and its prefix must be a configured namespace.
    #[test]
    fn session_section_and_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tierkv.toml");
        std::fs::write(
            &path,
            "namespaces = [\"sess:\"]\n[session]\nprefix = \"sess:\"\nmax_data_bytes = 100\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            &env(&[("TIERKV_SESSION_TOUCH_INTERVAL_SECS", "5")]),
        )
        .unwrap();
        assert_eq!(config.session.prefix, "sess:");
        assert_eq!(config.session.max_data_bytes, 100);
        assert_eq!(config.session.touch_interval_secs, 5);
        config.validate().unwrap();
        let namespaces = config.namespaces().unwrap();
        assert_eq!(
            namespaces.owner_of("sess:s/x"),
            Some(("sess:", crate::session::OWNER))
        );

        let config = Config {
            namespaces: vec!["user:".into()],
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("session.prefix") && error.contains("add it to namespaces"),
            "{error}"
        );
        let config = Config {
            session: SessionConfig {
                default_ttl_secs: 0,
                ..SessionConfig::default()
            },
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("session.default_ttl_secs"), "{error}");
    }

    /// The `[cache]` section reads from the file, its memory bound from
    /// `TIERKV_CACHE_MEMORY_MB`, and its errors name the origin and setting.
    #[test]
    fn cache_section_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tierkv.toml");
        std::fs::write(
            &path,
            "[cache]\nmemory_mb = 16\n\n[[cache.origins]]\nprefix = \"cache:api:\"\nurl = \"https://api.example.com/{key}\"\nstore_ttl = \"5m\"\n\n[[cache.origins]]\nprefix = \"cache:img:\"\nurl = \"http://img.example.com/{key}\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), &HashMap::new()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.cache.memory_mb, 16);
        assert_eq!(config.cache.origins.len(), 2);
        assert_eq!(config.cache.origins[0].store_ttl, Duration::from_secs(300));

        let config = Config::load(
            Some(&path),
            &env(&[
                ("TIERKV_CACHE_MEMORY_MB", "32"),
                ("TIERKV_CACHE_MAX_CONCURRENT_FETCHES", "12"),
            ]),
        )
        .unwrap();
        assert_eq!(config.cache.memory_mb, 32);
        assert_eq!(config.cache.max_concurrent_fetches, 12);
        assert_eq!(config.cache.origins.len(), 2, "the file's origins stay");
        let config = Config::load(None, &env(&[("TIERKV_CACHE_MEMORY_MB", "0")])).unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("cache.memory_mb is 0"), "{error}");

        std::fs::write(
            &path,
            "[[cache.origins]]\nprefix = \"cache:a:\"\nurl = \"http://a/{key}\"\n\n[[cache.origins]]\nprefix = \"cache:b:\"\nurl = \"http://b/x?k={key}\"\n",
        )
        .unwrap();
        let error = Config::load(Some(&path), &HashMap::new())
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("invalid configuration: cache.origins[1].url: "),
            "{error}"
        );

        std::fs::write(&path, "[cache]\nmemory = 1\n").unwrap();
        let error = Config::load(Some(&path), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("memory"), "{error}");
    }

    /// The namespace count has a ceiling, so listings of namespaces stay small.
    #[test]
    fn namespace_count_is_bounded() {
        let config = Config {
            namespaces: (0..=MAX_NAMESPACES).map(|i| format!("ns{i}:")).collect(),
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("257 prefixes"), "{error}");
        assert!(error.contains("limit is 256"), "{error}");
    }

    /// A listen address other hosts can reach needs authentication (tokens or
    /// mutual TLS) or an explicit `allow_unauthenticated`; loopback needs neither.
    #[test]
    fn refuses_the_network_without_authentication() {
        for listen in ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"] {
            let config = Config::load(None, &env(&[("TIERKV_LISTEN", listen)])).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.contains(listen) && error.contains("allow_unauthenticated = true"),
                "{error}"
            );
            let config = Config::load(
                None,
                &env(&[
                    ("TIERKV_LISTEN", listen),
                    ("TIERKV_ALLOW_UNAUTHENTICATED", "true"),
                ]),
            )
            .unwrap();
            assert!(config.allow_unauthenticated);
            config.validate().unwrap();
        }
        for listen in [
            "127.0.0.1:50051",
            "127.3.2.1:0",
            "[::1]:50051",
            "[::ffff:127.0.0.1]:50051",
        ] {
            let config = Config::load(None, &env(&[("TIERKV_LISTEN", listen)])).unwrap();
            config.validate().unwrap();
        }

        let exposed = Config {
            listen: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        let with_token = Config {
            auth: AuthConfig {
                tokens: vec![crate::auth::TokenConfig {
                    name: "app".into(),
                    token_sha256: crate::auth::hash_token("a long random token"),
                    token_sha256_file: None,
                    prefixes: vec![String::new()],
                    permissions: vec![crate::auth::Permission::Read],
                }],
            },
            ..exposed.clone()
        };
        assert!(with_token.check_exposure().is_ok());
        let with_mutual_tls = Config {
            tls: TlsSettings {
                client_ca_file: Some("ca.pem".into()),
                ..TlsSettings::default()
            },
            ..exposed.clone()
        };
        assert!(with_mutual_tls.check_exposure().is_ok());
        assert!(exposed.check_exposure().is_err());
    }

    /// The request memory budget has a floor.
    #[test]
    fn request_memory_floor() {
        let config = Config {
            request_memory_mb: 10,
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("request_memory_mb is 10"), "{error}");
        assert!(error.contains("at least 104"), "{error}");
    }

    /// The response memory budget has the same floor, the send timeout is
    /// at least 1 ms, and both are read from TIERKV_* variables.
    #[test]
    fn response_memory_bounds() {
        let config = Config {
            response_memory_mb: 100,
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("response_memory_mb is 100"), "{error}");
        assert!(error.contains("at least 104"), "{error}");
        let config = Config {
            response_send_timeout_ms: 0,
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("response_send_timeout_ms"), "{error}");

        let config = Config::load(
            None,
            &env(&[
                ("TIERKV_RESPONSE_MEMORY_MB", "200"),
                ("TIERKV_RESPONSE_SEND_TIMEOUT_MS", "1500"),
            ]),
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.response_memory_bytes(), 200 * 1024 * 1024);
        assert_eq!(config.response_send_timeout(), Duration::from_millis(1500));
    }

    /// The transport bounds are read from TIERKV_* variables too.
    #[test]
    fn transport_bounds_from_environment() {
        let config = Config::load(
            None,
            &env(&[
                ("TIERKV_MAX_CONNECTIONS", "7"),
                ("TIERKV_MAX_CONCURRENT_STREAMS", "9"),
                ("TIERKV_HANDSHAKE_TIMEOUT_MS", "250"),
                ("TIERKV_REQUEST_MEMORY_MB", "200"),
                ("TIERKV_REQUEST_MEMORY_WAIT_MS", "30"),
                ("TIERKV_SHUTDOWN_DELAY_MS", "0"),
            ]),
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.max_concurrent_streams, 9);
        assert_eq!(config.handshake_timeout(), Duration::from_millis(250));
        assert_eq!(config.request_memory_bytes(), 200 * 1024 * 1024);
        assert_eq!(config.request_memory_wait(), Duration::from_millis(30));
        assert_eq!(config.shutdown_delay(), Duration::ZERO);
    }
}
