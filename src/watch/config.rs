//! The `[watch]` section of the configuration: how many watchers, how much
//! each may hold for its client, and how much history the store keeps for
//! resuming.

use std::time::Duration;

use serde::Deserialize;

/// Settings of `KvService.Watch` (`[watch]` in the file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Most Watch streams open at once on this server; more are refused with
    /// RESOURCE_EXHAUSTED. Each holds a task and up to `buffer_bytes`.
    pub max_watchers: usize,
    /// Most bytes of events one watcher holds for a client that does not read
    /// them; a live watcher past it is ended with RESOURCE_EXHAUSTED and the
    /// last position it sent (the client resumes from history).
    pub buffer_bytes: usize,
    /// Most events (changes) the history keeps for resuming; older ones are
    /// trimmed in the background. 0: no bound by count.
    pub history_events: u64,
    /// Longest the history keeps an event, in seconds; 0: no bound by age.
    pub history_age_secs: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            max_watchers: 1024,
            buffer_bytes: 4 * 1024 * 1024,
            history_events: 1_000_000,
            history_age_secs: 24 * 3600,
        }
    }
}

/// Smallest `buffer_bytes`: one response of a few events must fit.
pub const MIN_BUFFER_BYTES: usize = 64 * 1024;

impl WatchConfig {
    /// Checks the ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_watchers == 0 {
            return Err("watch.max_watchers must be at least 1".into());
        }
        if self.buffer_bytes < MIN_BUFFER_BYTES {
            return Err(format!(
                "watch.buffer_bytes is {}; it must be at least {MIN_BUFFER_BYTES}",
                self.buffer_bytes
            ));
        }
        if self.history_events == 0 && self.history_age_secs == 0 {
            return Err(
                "watch.history_events and watch.history_age_secs are both 0: the history \
                 would grow without bound; set at least one"
                    .into(),
            );
        }
        Ok(())
    }

    /// The history's age bound, if any.
    pub fn history_age(&self) -> Option<Duration> {
        (self.history_age_secs > 0).then(|| Duration::from_secs(self.history_age_secs))
    }
}
