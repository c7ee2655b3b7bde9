//! Checks of values that parse but make no sense, and of exposure: a
//! server reachable from the network must authenticate its clients.

use super::{Config, ConfigError, MAX_NAMESPACES};
use crate::kv::limits::{MAX_KEY_BYTES, MAX_MESSAGE_BYTES};

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
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
        crate::cache::validate_config(&self.cache, &namespaces).map_err(ConfigError::Invalid)?;
        self.watch.validate().map_err(ConfigError::Invalid)?;
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
    pub(super) fn check_exposure(&self) -> Result<(), ConfigError> {
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
}
