//! The `[session]` section of the server configuration.

use serde::Deserialize;

/// Settings of the Session service: where its records live, lifetimes and
/// size limits. Durations are in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Key prefix of the session namespace; it must be one of `namespaces`,
    /// and the Session service owns it (the KV service refuses its keys).
    pub prefix: String,
    /// Absolute lifetime of a session created without a `ttl`.
    pub default_ttl_secs: u64,
    /// Longest `ttl` or `idle_timeout` a session may ask for.
    pub max_ttl_secs: u64,
    /// Idle timeout of a session created without one; 0 means none.
    pub default_idle_timeout_secs: u64,
    /// A touch writes at most once per this interval (and at least once per
    /// half idle timeout, so active sessions never idle out).
    pub touch_interval_secs: u64,
    /// Longest `user_id`, in UTF-8 bytes.
    pub max_user_id_bytes: usize,
    /// Largest `data`, serialized as JSON.
    pub max_data_bytes: usize,
    /// Largest `metadata`, serialized as JSON.
    pub max_metadata_bytes: usize,
}

/// Largest `max_user_id_bytes` accepted: user ids are part of index keys.
pub const USER_ID_BYTES_CEILING: usize = 256;
/// Largest `max_data_bytes` accepted: a session is read on every request of
/// its user, and requests stay under tonic's default 4 MiB message limit.
pub const DATA_BYTES_CEILING: usize = 1024 * 1024;
/// Largest SessionService `Create` or `Update` request in bytes: `data` may
/// be configured up to [`DATA_BYTES_CEILING`] of JSON, which a
/// `google.protobuf.Struct` can encode in several times that. Kept beside
/// the ceiling it derives from; the server's other request sizes are in
/// `server::message_limits`.
pub const MAX_SESSION_WRITE_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest `max_metadata_bytes` accepted: metadata is returned on every read.
pub const METADATA_BYTES_CEILING: usize = 64 * 1024;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            prefix: "session:".to_string(),
            default_ttl_secs: 24 * 60 * 60,
            max_ttl_secs: 30 * 24 * 60 * 60,
            default_idle_timeout_secs: 0,
            touch_interval_secs: 60,
            max_user_id_bytes: 128,
            max_data_bytes: 64 * 1024,
            max_metadata_bytes: 4 * 1024,
        }
    }
}

impl SessionConfig {
    /// Checks values that parse but make no sense; the message names the key.
    /// (That the prefix is a configured namespace is checked with the
    /// namespaces, in `Config::validate`.)
    pub fn validate(&self) -> Result<(), String> {
        if self.prefix.is_empty() {
            return Err("session.prefix must not be empty".into());
        }
        if self.max_ttl_secs == 0 {
            return Err("session.max_ttl_secs must be at least 1".into());
        }
        if self.default_ttl_secs == 0 || self.default_ttl_secs > self.max_ttl_secs {
            return Err(format!(
                "session.default_ttl_secs is {}; it must be between 1 and session.max_ttl_secs ({})",
                self.default_ttl_secs, self.max_ttl_secs
            ));
        }
        if self.default_idle_timeout_secs > self.max_ttl_secs {
            return Err(format!(
                "session.default_idle_timeout_secs is {}; it must be at most session.max_ttl_secs ({})",
                self.default_idle_timeout_secs, self.max_ttl_secs
            ));
        }
        if self.max_user_id_bytes == 0 || self.max_user_id_bytes > USER_ID_BYTES_CEILING {
            return Err(format!(
                "session.max_user_id_bytes is {}; it must be between 1 and {USER_ID_BYTES_CEILING}",
                self.max_user_id_bytes
            ));
        }
        if self.max_data_bytes > DATA_BYTES_CEILING {
            return Err(format!(
                "session.max_data_bytes is {}; it must be at most {DATA_BYTES_CEILING}",
                self.max_data_bytes
            ));
        }
        if self.max_metadata_bytes > METADATA_BYTES_CEILING {
            return Err(format!(
                "session.max_metadata_bytes is {}; it must be at most {METADATA_BYTES_CEILING}",
                self.max_metadata_bytes
            ));
        }
        Ok(())
    }
}
