//! What a batch migration is asked, what it saves after every batch, and
//! what it reports.

use serde::{Deserialize, Serialize};

/// Records per batch when the request leaves it at 0.
pub const DEFAULT_BATCH_SIZE: u32 = 500;
/// Most records per batch.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// A request to migrate every record under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationRequest {
    /// Keys starting with this; a configured migration must cover it.
    pub prefix: String,
    /// Count and report, write nothing.
    pub dry_run: bool,
    /// Records per batch; 0 means [`DEFAULT_BATCH_SIZE`].
    pub batch_size: u32,
    /// Most records examined per second, if limited.
    pub max_records_per_second: Option<u32>,
}

/// The state of a migration of one prefix, saved after every batch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MigrationState {
    /// The prefix.
    pub prefix: String,
    /// Whether this is a dry run (never saved).
    pub dry_run: bool,
    /// Records examined.
    pub scanned: u64,
    /// Records migrated (for a dry run: that would be).
    pub migrated: u64,
    /// Records already at their target, or under no migration.
    pub already_current: u64,
    /// Records no patch could migrate, left untouched.
    pub failed: u64,
    /// Records newer than this server knows, left untouched.
    pub newer_than_known: u64,
    /// Records concurrent writers kept changing (or deleted) during the run.
    pub skipped: u64,
    /// The last key examined; the run resumes after it.
    pub checkpoint: Option<String>,
    /// When the run started, in milliseconds since the Unix epoch.
    pub started_at_millis: u64,
    /// When it finished, if it did.
    pub finished_at_millis: Option<u64>,
    /// Whether every key under the prefix has been examined.
    pub done: bool,
    /// Whether a run is in progress on this server (not saved).
    #[serde(skip)]
    pub running: bool,
    /// The migration targets the run works towards, to refuse resuming a
    /// checkpoint made under another configuration.
    pub fingerprint: String,
}

/// One progress report: the state after a batch, and the keys of the batch
/// that could not be migrated, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationProgress {
    /// The cumulative state.
    pub state: MigrationState,
    /// Keys of this batch no patch could migrate, with the reason, as many
    /// as fit in [`MAX_LISTED_FAILURE_BYTES`].
    pub failures: Vec<(String, String)>,
    /// Keys of this batch that could not be migrated beyond those listed
    /// (counted in the state's `failed` all the same).
    pub failures_not_listed: u64,
}

/// Most bytes of keys and reasons one progress report lists: a batch of
/// 10,000 failing 512-byte keys would otherwise make a message of several
/// MiB, over the 4 MiB that standard gRPC clients decode by default.
pub const MAX_LISTED_FAILURE_BYTES: usize = 1024 * 1024;

/// The failures of one batch: listed while they fit in
/// [`MAX_LISTED_FAILURE_BYTES`], counted beyond.
#[derive(Debug, Default)]
pub(super) struct Failures {
    /// Keys and reasons, as listed.
    pub(super) listed: Vec<(String, String)>,
    bytes: usize,
    /// Failures beyond the listing's bound.
    pub(super) not_listed: u64,
}

impl Failures {
    /// Lists (or counts) the failure of `key`.
    pub(super) fn push(&mut self, key: &str, reason: String) {
        let bytes = key.len() + reason.len();
        if self.not_listed > 0 || self.bytes + bytes > MAX_LISTED_FAILURE_BYTES {
            self.not_listed += 1;
            return;
        }
        self.bytes += bytes;
        self.listed.push((key.to_string(), reason));
    }
}
