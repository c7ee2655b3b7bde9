//! Server configuration: defaults, then a TOML file, then `TIERKV_*`
//! environment variables, then command-line flags. Unknown keys and invalid
//! values are rejected with a message naming them.

pub mod check;
pub mod engine;
mod env;
pub mod reference;
pub mod tls;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::auth::AuthConfig;
use crate::cache::config::CacheConfig;
use crate::engine::Namespaces;
use crate::migrate::{MigrationStep, Migrations};
use crate::session::SessionConfig;
use crate::watch::WatchConfig;
pub use engine::{EngineConfig, EngineKind, EtcdConfig};
pub use tls::TlsSettings;

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

/// The default metrics and probes address: loopback, and the gRPC port's
/// neighbour rather than Prometheus's own 9090 (or any of the 9090–9999 its
/// exporters are allocated), so tierkv and a local Prometheus both start.
/// Left at this value, a taken port turns metrics off with a warning instead
/// of stopping the server ([`Config::metrics_listen_is_default`]).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:50052";

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
    /// Most health `Watch`, reflection and `KvService.Watch` streams open at
    /// once on one connection; more are refused with RESOURCE_EXHAUSTED. They
    /// stay open as long as their clients like, and once they leave
    /// `max_calls_in_flight` only this (and `watch.max_watchers`) bounds them.
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
    /// `KvService.Watch`: watcher limits and history retention (`[watch]`
    /// in the file).
    #[serde(default)]
    pub watch: WatchConfig,
    /// The storage engine (`[engine]`, `[engine.etcd]` in the file):
    /// embedded RocksDB by default, or an etcd cluster.
    #[serde(default)]
    pub engine: EngineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            allow_unauthenticated: false,
            metrics_listen: DEFAULT_METRICS_LISTEN.to_string(),
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
            watch: WatchConfig::default(),
            engine: EngineConfig::default(),
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
        let (overrides, from_env) = env::env_overrides(env)?;
        for (key, value) in overrides {
            env::insert_dotted(&mut table, &key, value);
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
                "metrics_listen {value:?} is not an address like {DEFAULT_METRICS_LISTEN}, or \"off\""
            ))
        })
    }

    /// Whether `metrics_listen` is the default address, which only a server
    /// nobody configured metrics for uses: when it is taken the server runs
    /// without metrics, while an address someone chose must bind.
    pub fn metrics_listen_is_default(&self) -> bool {
        self.metrics_listen.trim() == DEFAULT_METRICS_LISTEN
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

#[cfg(test)]
mod tests;
