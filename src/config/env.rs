//! `TIERKV_*` environment variables: which the server reads, under which
//! configuration keys, and how they override the file.

use super::ConfigError;
use std::collections::{BTreeMap, HashMap};

/// Environment variables read by the command-line client, not the server.
const CLIENT_ENV: &[&str] = &[
    "TIERKV_ENDPOINT",
    "TIERKV_CONFIG",
    "TIERKV_CA_FILE",
    "TIERKV_CLIENT_CERT_FILE",
    "TIERKV_CLIENT_KEY_FILE",
    "TIERKV_TOKEN",
];

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
    (
        "TIERKV_WATCH_MAX_WATCHERS",
        "watch.max_watchers",
        EnvKind::Integer,
    ),
    (
        "TIERKV_WATCH_BUFFER_BYTES",
        "watch.buffer_bytes",
        EnvKind::Integer,
    ),
    (
        "TIERKV_WATCH_HISTORY_EVENTS",
        "watch.history_events",
        EnvKind::Integer,
    ),
    (
        "TIERKV_WATCH_HISTORY_AGE_SECS",
        "watch.history_age_secs",
        EnvKind::Integer,
    ),
    ("TIERKV_ENGINE_KIND", "engine.kind", EnvKind::Text),
    (
        "TIERKV_ENGINE_ETCD_ENDPOINTS",
        "engine.etcd.endpoints",
        EnvKind::List,
    ),
    (
        "TIERKV_ENGINE_ETCD_PREFIX",
        "engine.etcd.prefix",
        EnvKind::Text,
    ),
    (
        "TIERKV_ENGINE_ETCD_DIAL_TIMEOUT_MS",
        "engine.etcd.dial_timeout_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_ENGINE_ETCD_REQUEST_TIMEOUT_MS",
        "engine.etcd.request_timeout_ms",
        EnvKind::Integer,
    ),
    (
        "TIERKV_ENGINE_ETCD_CA_FILE",
        "engine.etcd.ca_file",
        EnvKind::Text,
    ),
    (
        "TIERKV_ENGINE_ETCD_CERT_FILE",
        "engine.etcd.cert_file",
        EnvKind::Text,
    ),
    (
        "TIERKV_ENGINE_ETCD_KEY_FILE",
        "engine.etcd.key_file",
        EnvKind::Text,
    ),
    ("TIERKV_ENGINE_ETCD_USER", "engine.etcd.user", EnvKind::Text),
    (
        "TIERKV_ENGINE_ETCD_PASSWORD",
        "engine.etcd.password",
        EnvKind::Text,
    ),
    (
        "TIERKV_ENGINE_ETCD_MAX_TXN_OPS",
        "engine.etcd.max_txn_ops",
        EnvKind::Integer,
    ),
    (
        "TIERKV_ENGINE_ETCD_MAX_REQUEST_BYTES",
        "engine.etcd.max_request_bytes",
        EnvKind::Integer,
    ),
];

/// Sets `key` in `table`; a dotted key (`session.prefix`) sets a member of a
/// sub-table, keeping the sub-table's other members from the file.
/// The `TIERKV_*` variable the server reads for a configuration key, if any.
pub(super) fn variable_for(key: &str) -> Option<&'static str> {
    SERVER_ENV
        .iter()
        .find(|(_, config_key, _)| *config_key == key)
        .map(|(variable, _, _)| *variable)
}

pub(super) fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
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
pub(super) type EnvOverrides = (BTreeMap<String, toml::Value>, Vec<String>);

pub(super) fn env_overrides(env: &HashMap<String, String>) -> Result<EnvOverrides, ConfigError> {
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
