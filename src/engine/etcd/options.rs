//! How the etcd engine reaches its cluster, and what one request may carry.

use std::time::Duration;

/// etcd's default `--max-txn-ops`.
pub const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// TLS towards etcd: PEM bytes, read by the configuration.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates; the system roots
    /// when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and key, for etcd's `--client-cert-auth`.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach the etcd cluster and how much it accepts.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `http://host:port` (or `https://` with [`EtcdOptions::tls`]) of the members.
    pub endpoints: Vec<String>,
    /// The key prefix that isolates this tierkv cluster inside etcd.
    pub prefix: String,
    /// How long connecting to a member may take.
    pub dial_timeout: Duration,
    /// How long one etcd request may take before it fails as unavailable.
    pub request_timeout: Duration,
    /// TLS towards etcd.
    pub tls: Option<EtcdTls>,
    /// etcd user name and password (etcd authentication); never logged.
    pub user: Option<(String, String)>,
    /// The cluster's `--max-txn-ops`: the most operations one transaction may carry.
    pub max_txn_ops: usize,
    /// The cluster's `--max-request-bytes`: the largest request it accepts.
    pub max_request_bytes: usize,
    /// How many commits a change-feed subscriber may fall behind before it lags.
    pub change_feed_capacity: usize,
    /// Most bytes of change events held for subscribers that have not read them.
    pub change_feed_max_bytes: usize,
    /// The change history keeps at least the most recent this many events
    /// (0: no bound by count; etcd's own compaction still applies).
    pub history_max_events: u64,
    /// The change history drops batches older than this, by the engine's
    /// clock (0: no bound by age).
    pub history_max_age_millis: u64,
    /// The sweeper deletes a record only once it has been expired this long,
    /// so a clock stepped forward by less cannot destroy live data (reads
    /// hide expired records at once regardless).
    pub expiry_grace: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log; the user name may.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("max_txn_ops", &self.max_txn_ops)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "tierkv/".to_string(),
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            tls: None,
            user: None,
            max_txn_ops: ETCD_DEFAULT_MAX_TXN_OPS,
            max_request_bytes: ETCD_DEFAULT_MAX_REQUEST_BYTES,
            change_feed_capacity: 4096,
            change_feed_max_bytes: 64 * 1024 * 1024,
            history_max_events: 1_000_000,
            history_max_age_millis: 0,
            expiry_grace: Duration::from_secs(60 * 60),
        }
    }
}

/// What one etcd request may carry, as configured to match the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdLimits {
    /// Mutations one write batch may hold: the cluster's `--max-txn-ops`
    /// less the feed record's operation (a value longer than 1 KiB takes a
    /// second operation).
    pub max_batch_ops: usize,
    /// Bytes of keys, values and metadata one write batch may carry: the
    /// cluster's `--max-request-bytes` less room for the request's framing.
    pub max_request_bytes: usize,
}

/// The limits of `options`.
pub(super) fn limits(options: &EtcdOptions) -> EtcdLimits {
    EtcdLimits {
        max_batch_ops: options.max_txn_ops.saturating_sub(1).min(u16::MAX as usize),
        max_request_bytes: options.max_request_bytes.saturating_sub(4096),
    }
}
