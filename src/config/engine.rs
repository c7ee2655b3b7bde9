//! `[engine]`: which storage engine the server runs, and `[engine.etcd]`,
//! how to reach an etcd cluster when it is etcd (several tierkv replicas
//! over one replicated store; see docs/replicas.md).

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use crate::engine::etcd::{ETCD_DEFAULT_MAX_REQUEST_BYTES, ETCD_DEFAULT_MAX_TXN_OPS};

/// The storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Embedded RocksDB in `data_dir`: one server, one disk.
    #[default]
    Rocksdb,
    /// An etcd v3 cluster (`[engine.etcd]`): several servers over one store.
    Etcd,
}

/// `[engine]` in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Which engine: `rocksdb` (default) or `etcd`.
    pub kind: EngineKind,
    /// The etcd cluster, when `kind = "etcd"`.
    pub etcd: EtcdConfig,
}

/// `[engine.etcd]` in the file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// The members' client URLs (`http://host:2379`, or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// The key prefix that isolates this tierkv cluster inside etcd.
    pub prefix: String,
    /// How long connecting to a member may take, in milliseconds.
    pub dial_timeout_ms: u64,
    /// How long one etcd request may take, in milliseconds; past it the call
    /// answers UNAVAILABLE.
    pub request_timeout_ms: u64,
    /// PEM file of the CA that signed etcd's certificates (TLS towards etcd).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// PEM key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// etcd user (etcd authentication).
    pub user: Option<String>,
    /// etcd password of `user`; never logged.
    pub password: Option<String>,
    /// The cluster's `--max-txn-ops`; batches needing more are refused.
    pub max_txn_ops: usize,
    /// The cluster's `--max-request-bytes`; larger batches are refused.
    pub max_request_bytes: usize,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "tierkv/".to_string(),
            dial_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            max_txn_ops: ETCD_DEFAULT_MAX_TXN_OPS,
            max_request_bytes: ETCD_DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret: its presence only.
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("dial_timeout_ms", &self.dial_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("max_txn_ops", &self.max_txn_ops)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish()
    }
}

impl EngineConfig {
    /// Checks `[engine.etcd]` when it is used.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind != EngineKind::Etcd {
            return Ok(());
        }
        let etcd = &self.etcd;
        let invalid = |message: String| Err(ConfigError::Invalid(format!("engine.etcd.{message}")));
        if etcd.endpoints.is_empty() {
            return invalid(
                "endpoints: list at least one member's client URL (http://host:2379)".into(),
            );
        }
        let tls = etcd.ca_file.is_some() || etcd.cert_file.is_some();
        for endpoint in &etcd.endpoints {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok {
                return invalid(format!(
                    "endpoints: {endpoint:?} is not an http:// or https:// URL"
                ));
            }
            if tls && endpoint.starts_with("http://") {
                return invalid(format!(
                    "endpoints: {endpoint:?} is plain http while ca_file or cert_file asks for TLS; use https://"
                ));
            }
        }
        if etcd.prefix.is_empty() {
            return invalid(
                "prefix: must not be empty (it isolates this tierkv cluster's keys in etcd)".into(),
            );
        }
        if etcd.cert_file.is_some() != etcd.key_file.is_some() {
            return invalid("cert_file and key_file: set both or neither".into());
        }
        if etcd.password.is_some() && etcd.user.is_none() {
            return invalid("password: set user too".into());
        }
        if etcd.dial_timeout_ms == 0 || etcd.request_timeout_ms == 0 {
            return invalid("dial_timeout_ms and request_timeout_ms must be at least 1".into());
        }
        if etcd.max_txn_ops < 2 {
            return invalid(
                "max_txn_ops: must be at least 2 (etcd's --max-txn-ops, default 128)".into(),
            );
        }
        if etcd.max_request_bytes < 64 * 1024 {
            return invalid(
                "max_request_bytes: must be at least 65536 (etcd's --max-request-bytes, default 1572864)".into(),
            );
        }
        Ok(())
    }
}
