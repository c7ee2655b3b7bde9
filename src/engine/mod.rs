//! The storage engine: the [`Engine`] trait every backend implements, and the
//! embedded RocksDB backend.
//!
//! The trait is deliberately small — point reads, ordered prefix scans and an
//! atomic batch with preconditions — and speaks in whole [`Record`]s, so that a
//! distributed backend can implement it and pass the same suite
//! ([`conformance`]). Expiry is the engine's job: an expired record is invisible
//! to every read as soon as the engine's clock passes its `expire_at`, and the
//! engine's clock never goes back. Every commit is published on the engine's
//! change feed ([`changes`]).
//!
//! The trait is split in two: [`Engine`] holds what every backend offers (a
//! remote one too), and [`LocalStorage`] what only a store on local disk has
//! (backups into a local directory, table-file and memtable figures, a
//! writer thread that can fail); [`Engine::local`] hands it out.

pub mod changes;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod etcd;
pub mod history;
mod local;
pub mod namespace;
pub mod record;
pub mod rocks;

use async_trait::async_trait;
use thiserror::Error;

pub use changes::{
    CatchUpError, Change, ChangeEvent, ChangeFeed, ChangeSubscription, FeedPosition, PutPayload,
    RecvError,
};
pub use etcd::{EtcdEngine, EtcdLimits, EtcdOptions, EtcdTls};
pub use history::{HistoryBatch, HistoryError, HistoryPage, HistoryPosition};
pub use local::{BackupInfo, LocalNamespaceStats, LocalStorage, StorageSummary};
pub use namespace::Namespaces;
pub use record::{Record, ValueKind};
#[cfg(feature = "test-hooks")]
pub use rocks::{ReadFaultGuard, WriterPause};
pub use rocks::{RocksEngine, RocksOptions};

/// A lock held across every server over one store ([`Engine::try_lock`]);
/// dropping it releases it.
pub type EngineLock = Box<dyn std::any::Any + Send + Sync>;

/// What [`Engine::try_lock`] got.
pub enum LockAttempt {
    /// The lock is this caller's until the guard is dropped.
    Acquired(EngineLock),
    /// Another server holds it.
    Held {
        /// Who: the holder's own description (host and process).
        holder: String,
    },
}

/// A condition a write needs to hold, checked atomically with the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Write unconditionally.
    #[default]
    None,
    /// The key's live version must equal this.
    IfVersion(u64),
    /// The key must not exist (expired keys count as absent).
    IfAbsent,
}

impl Precondition {
    /// Whether the condition holds for a key whose live version is `current`.
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::IfVersion(expected) => current == Some(expected),
            Precondition::IfAbsent => current.is_none(),
        }
    }
}

/// Writes one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOp {
    /// The key.
    pub key: String,
    /// How the value was written.
    pub kind: ValueKind,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Serialized JSON metadata.
    pub metadata: Option<Vec<u8>>,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// Schema version to store (1 for new records).
    pub schema_version: u32,
    /// Checked before writing.
    pub precondition: Precondition,
}

/// Deletes one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOp {
    /// The key.
    pub key: String,
    /// Checked before deleting.
    pub precondition: Precondition,
}

/// One mutation of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Write a key.
    Put(PutOp),
    /// Delete a key.
    Delete(DeleteOp),
}

impl WriteOp {
    /// The key the mutation touches.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put(put) => &put.key,
            WriteOp::Delete(delete) => &delete.key,
        }
    }
}

/// What one mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A put stored a record with this version.
    Put {
        /// The version assigned.
        version: u64,
    },
    /// A delete ran.
    Delete {
        /// Whether a live record was there.
        existed: bool,
    },
}

/// What a committed `write` did: one outcome per mutation, and the
/// commit's position on the change feed.
///
/// It dereferences to its outcomes, so callers that only need those read it
/// like the slice of outcomes it carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReceipt {
    /// One outcome per mutation, in order.
    pub outcomes: Vec<WriteOutcome>,
    /// The commit's sequence: every change event of this commit has a
    /// sequence at most this (its last event exactly this) and above every
    /// earlier commit's; every event of a later commit has a greater one.
    /// [`ChangeSubscription::catch_up_to`] this sequence to see the commit's
    /// events. A write of no mutations commits nothing and carries the
    /// engine's [`Engine::acknowledged_sequence`].
    pub sequence: u64,
}

impl WriteReceipt {
    /// The version the put at `index` of the batch was given; a storage
    /// error when the engine answered anything else there (a broken engine,
    /// never a client's doing).
    pub fn put_version(&self, index: usize) -> Result<u64, EngineError> {
        match self.outcomes.get(index) {
            Some(WriteOutcome::Put { version }) => Ok(*version),
            _ => Err(EngineError::Storage(format!(
                "engine returned no put outcome for mutation {index}"
            ))),
        }
    }
}

impl std::ops::Deref for WriteReceipt {
    type Target = [WriteOutcome];

    fn deref(&self) -> &[WriteOutcome] {
        &self.outcomes
    }
}

impl IntoIterator for WriteReceipt {
    type Item = WriteOutcome;
    type IntoIter = std::vec::IntoIter<WriteOutcome>;

    fn into_iter(self) -> Self::IntoIter {
        self.outcomes.into_iter()
    }
}

/// A request for one page of an ordered prefix scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanRequest {
    /// Only keys starting with this.
    pub prefix: String,
    /// Only keys strictly greater than this (the previous page's last key).
    pub start_after: Option<String>,
    /// At most this many records.
    pub limit: usize,
    /// Whether to read values too; listings need only metadata.
    pub include_values: bool,
    /// Most stored records one call examines, live or not (expired records
    /// count), so that a long run of dead entries cannot make one call
    /// unbounded; 0 for no bound.
    pub max_examined: usize,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Live records in ascending key order.
    pub entries: Vec<(String, Record)>,
    /// Set when the scan reached `max_examined` before filling the page: the
    /// last key it examined. The scan continues after it; keys up to it hold
    /// nothing more to return.
    pub resume_after: Option<String>,
    /// The change sequence of the snapshot the page was read at: every
    /// commit up to it is visible in the page, none after it. "Scan, then
    /// read history (or watch) after this position" misses nothing.
    pub position: u64,
}

/// Estimated size of one namespace, in terms every engine can give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceStats {
    /// The namespace's prefix (empty for the default namespace).
    pub prefix: String,
    /// The engine's own name for where it keeps the namespace, for operators
    /// (an engine-specific label: RocksDB names its column family, a remote
    /// engine its key range).
    pub storage: String,
    /// Estimated number of records, expired or deleted ones possibly
    /// included until the engine reclaims them.
    pub estimated_keys: u64,
    /// Estimated bytes of live data.
    pub estimated_live_bytes: u64,
}

/// A failure of the storage engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A mutation's precondition did not hold; nothing of the batch was written.
    #[error("precondition failed for key {key:?} (mutation {index}): current version is {current_version:?}")]
    PreconditionFailed {
        /// Index of the mutation in its batch.
        index: usize,
        /// The key.
        key: String,
        /// The precondition that failed.
        precondition: Precondition,
        /// The key's live version, `None` when absent.
        current_version: Option<u64>,
    },
    /// A transient failure; the same call may succeed later.
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record for key {key:?}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A read would return more than the bytes it was allowed; nothing was
    /// copied.
    #[error("the records would be {actual} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// The limit asked for.
        limit: usize,
        /// Bytes of values and metadata the read would return.
        actual: u64,
    },
    /// The data directory holds something this configuration would hide or lose.
    #[error("{0}")]
    Layout(String),
    /// A request over a limit of the store itself (an etcd cluster's
    /// operations or bytes per transaction); the message names the limit and
    /// the setting that raises it. A client's doing: INVALID_ARGUMENT.
    #[error("{0}")]
    Limit(String),
    /// Any other storage failure.
    #[error("storage error: {0}")]
    Storage(String),
}

impl EngineError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Unavailable(_))
    }

    /// The same failure again, for every caller of a group that failed together.
    pub fn duplicate(&self) -> EngineError {
        match self {
            EngineError::Unavailable(message) => EngineError::Unavailable(message.clone()),
            // Kept apart from other storage failures: a corrupt record is a
            // fact about one key (DATA_LOSS), which a delete can clear.
            EngineError::Corrupt { key, reason } => EngineError::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
            EngineError::Limit(message) => EngineError::Limit(message.clone()),
            other => EngineError::Storage(other.to_string()),
        }
    }

    /// A description safe for logs: keys are left out, because a key can be a
    /// secret (a session id used as a bearer token, for instance).
    pub fn log_summary(&self) -> String {
        match self {
            EngineError::PreconditionFailed { index, .. } => {
                format!("precondition failed (mutation {index})")
            }
            EngineError::Corrupt { reason, .. } => format!("corrupt record: {reason}"),
            other => other.to_string(),
        }
    }
}

/// A key-value storage backend: the operations every engine offers, local
/// or remote.
///
/// Implementations must:
/// - hide records whose `expire_at` is at or before their clock's now from every read;
/// - keep a clock that never goes back, not even across restarts: now is the
///   greater of the injected clock and the latest time the store has seen.
///   It is the one clock services decide expiry by;
/// - apply a `write` batch atomically: every mutation or none, preconditions
///   checked against the state left by the batch's earlier mutations;
/// - assign versions that increase on every write of a key and never repeat
///   across the store, even across restarts and deletes;
/// - order versions store-wide: a version assigned by a commit is greater
///   than every version assigned by any earlier commit, whatever the keys
///   (the memory tier compares versions of different keys; etcd's
///   `mod_revision` has this order too);
/// - make reads strong: a read (get, get_many, scan) that starts after a
///   `write` returned sees that write or something newer. Compare-and-set
///   loops (session touch, the lazy migrator's write-back) rely on this
///   alone, not on the change feed;
/// - give every commit a sequence, strictly increasing in commit order
///   across the store but not necessarily consecutive, returned by `write`
///   and carried by the commit's change events;
/// - publish every committed mutation on the change feed ([`Engine::subscribe`]),
///   in commit order, whatever happened to the caller of the write. The
///   events may arrive after `write` returns: a consumer that needs them
///   waits with [`ChangeSubscription::catch_up_to`];
/// - return scans in ascending byte order of keys.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Reads live records, one result per key in order.
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Record>>, EngineError>;

    /// Reads one live record.
    async fn get(&self, key: String) -> Result<Option<Record>, EngineError> {
        let mut results = self.get_many(vec![key]).await?;
        Ok(results.pop().flatten())
    }

    /// Reads live records like [`Engine::get_many`], but fails with
    /// [`EngineError::TooLarge`] when their values and metadata together
    /// exceed `max_bytes` (a key asked for twice counts twice). An
    /// implementation should check sizes before it copies values, so that a
    /// small request cannot cost more memory than the limit; this default
    /// checks after reading and exists for engines that cannot do better.
    /// Takes the keys by reference: an engine that answers from memory
    /// needs no copy of them.
    async fn get_many_within(
        &self,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        let records = self.get_many(keys.to_vec()).await?;
        let actual: u64 = records
            .iter()
            .flatten()
            .map(|record| {
                (record.value.len() + record.metadata.as_ref().map_or(0, Vec::len)) as u64
            })
            .sum();
        if actual > max_bytes as u64 {
            return Err(EngineError::TooLarge {
                limit: max_bytes,
                actual,
            });
        }
        Ok(records)
    }

    /// Reads up to `limit` live records with a prefix, in key order, examining
    /// at most `max_examined` stored records.
    async fn scan(&self, request: ScanRequest) -> Result<ScanPage, EngineError>;

    /// Applies mutations atomically, returning one outcome per mutation and
    /// the commit's sequence.
    async fn write(&self, ops: Vec<WriteOp>) -> Result<WriteReceipt, EngineError>;

    /// Subscribes to the change feed: every mutation committed after this
    /// returns, in commit order, with strictly increasing sequences. See
    /// [`changes`] for the guarantees. Returns only once a publication under
    /// way has finished, so that a commit a subscriber heard of (as events or
    /// as a lag) is visible to [`Engine::read_history`]; engines get this by
    /// publishing through [`ChangeFeed`].
    fn subscribe(&self) -> ChangeSubscription;

    /// The highest sequence this engine handle has returned from a write (or
    /// the latest commit it knows of, which is at least that). A reader that
    /// must see every write acknowledged before it started (the memory tier)
    /// catches its subscription up to this with
    /// [`ChangeSubscription::catch_up_to`] before it looks.
    fn acknowledged_sequence(&self) -> u64;

    /// The engine's now, in milliseconds since the Unix epoch: the time its
    /// reads decide expiry by. Never goes back, not even across restarts.
    fn now_millis(&self) -> u64;

    /// Makes every acknowledged write durable and flushes buffers, for shutdown.
    async fn flush(&self) -> Result<(), EngineError>;

    /// A secret persisted with the data and shared by every server over it;
    /// used to sign page tokens so they survive restarts and work on any replica.
    fn instance_secret(&self) -> &[u8];

    /// The namespaces keys are routed to.
    fn namespaces(&self) -> &Namespaces;

    /// Estimated key count and size of every namespace, the default one
    /// first, then by prefix. Cheap: read from storage statistics.
    async fn namespace_stats(&self) -> Result<Vec<NamespaceStats>, EngineError>;

    /// The exact number of live records stored in namespace `prefix` (keys of
    /// namespaces nested under it not included). Reads every record head, so
    /// it costs time in proportion to the namespace. Fails with
    /// [`EngineError::Layout`] when `prefix` is not a configured namespace.
    async fn count_namespace(&self, prefix: &str) -> Result<u64, EngineError>;

    /// Deletes every record of namespace `prefix` (nested namespaces keep
    /// theirs) atomically, ordered with other writes, and publishes one
    /// [`Change::NamespaceCleared`] event with the prefix as its key. Fails
    /// with [`EngineError::Layout`] when `prefix` is not a configured
    /// namespace.
    async fn clear_namespace(&self, prefix: &str) -> Result<(), EngineError>;

    /// Reads a named piece of server state kept with the data but outside
    /// every namespace (no read, scan or change event of keys sees it), such
    /// as a migration's checkpoint.
    async fn get_state(&self, name: &str) -> Result<Option<Vec<u8>>, EngineError>;

    /// Writes (or with `None` removes) a named piece of server state, durably
    /// as configured for writes. See [`Engine::get_state`].
    async fn put_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), EngineError>;

    /// The id of this store's history ([`history`]); positions of another
    /// id are refused with [`HistoryError::OtherHistory`]. Random, and new
    /// whenever the history is lost or restored.
    fn history_id(&self) -> u64;

    /// The oldest resumable sequence (a position with `sequence` at or
    /// above it can be read after) and the latest committed sequence.
    async fn history_bounds(&self) -> Result<(u64, u64), EngineError>;

    /// Committed batches with a sequence above `after.sequence`, in commit
    /// order, whole (never split), at most about `max_events` events (at
    /// least one batch when any exists, however large), up to the latest
    /// commit published on the change feed. Fails with
    /// [`HistoryError::OtherHistory`], [`HistoryError::Compacted`],
    /// [`HistoryError::Rewound`] or [`HistoryError::Ahead`] when the
    /// position cannot be resumed.
    async fn read_history(
        &self,
        after: HistoryPosition,
        max_events: usize,
    ) -> Result<HistoryPage, HistoryError>;

    /// Takes the lock `name`, shared by every server over the store, for
    /// work only one of them may do at a time (a batch migration of a
    /// prefix); dropping the returned guard releases it. A store only one
    /// server opens has nothing to share: the default always acquires.
    async fn try_lock(&self, name: &str) -> Result<LockAttempt, EngineError> {
        let _ = name;
        Ok(LockAttempt::Acquired(Box::new(())))
    }

    /// Whether the store answers now; the server turns its health
    /// NOT_SERVING while it does not (a remote store's outage) and SERVING
    /// again when it does. A local store always answers.
    async fn probe(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// What only a store on local disk offers (backups into a local
    /// directory, storage figures, failure of its writer); `None` for an
    /// engine without one.
    fn local(&self) -> Option<&dyn LocalStorage> {
        None
    }
}
