//! The embedded engine: RocksDB, one column family per namespace.
//!
//! Column families: RocksDB's `default` holds the default namespace, `kv/<prefix>`
//! holds each configured prefix, `tierkv/values` holds values too long to keep
//! inline with their record's head (see [`record`]), `tierkv/history` the
//! change history (`history`), and `tierkv/meta` holds the engine's own state
//! (the version counter, the change-feed sequence, the clock's high-water
//! mark, the page-token secret and the history's floor and ceiling).
//!
//! Point reads that the memtables and the block cache can answer run inline on
//! the calling async worker with RocksDB's non-blocking read tier; a read that
//! would need I/O (or copies a large value) moves to tokio's blocking pool.
//! Scans always run on the blocking pool. Writes are queued to a writer thread
//! that group-commits them and publishes the change feed (`writer`).
//!
//! Files: this one holds the engine's handle, its state and the column-family
//! helpers; `open` opens the store (options, counters, layout checks, the
//! repair of misplaced keys), `read` the point reads, `scan` the scans and
//! namespace ranges, `history` the change history, `traits` the [`super::Engine`] and [`super::LocalStorage`]
//! implementations, `writer` the write path, and `hooks` the test hooks (only
//! with the `test-hooks` feature).

mod history;
#[cfg(feature = "test-hooks")]
mod hooks;
mod open;
mod read;
mod scan;
mod traits;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{ColumnFamily, ErrorKind, ReadOptions, WriteBatch, WriteOptions, DB};
use tokio::sync::watch;

use super::changes::ChangeFeed;
use super::namespace::{NamespaceId, DEFAULT_NAMESPACE};
use super::record::{self, StoredRecord};
use super::{EngineError, Namespaces};
use crate::clock::MonotonicClock;
#[cfg(feature = "test-hooks")]
use hooks::{ReadFaults, WriterHooks};
use writer::Writer;

#[cfg(feature = "test-hooks")]
pub use hooks::{ReadFaultGuard, WriterPause};
pub(crate) use scan::namespace_ranges;

const META_CF: &str = "tierkv/meta";
/// Values longer than [`record::INLINE_VALUE_MAX`], keyed like their heads.
/// One column family for every namespace: keys are stored whole, so they never
/// collide, and moving a key between namespaces leaves its value in place.
const VALUES_CF: &str = "tierkv/values";
/// A read on an async worker copies at most this many bytes of values; a
/// larger one moves to the blocking pool so it cannot stall other requests.
const INLINE_READ_MAX_BYTES: u64 = 256 * 1024;
const NAMESPACE_CF_PREFIX: &str = "kv/";
const VERSION_COUNTER_KEY: &[u8] = b"version_counter";
const SECRET_KEY: &[u8] = b"page_token_secret";
/// The sequence the next change-feed event gets, written with every commit.
const CHANGE_SEQUENCE_KEY: &[u8] = b"change_sequence";
/// The clock's high-water mark: no read after a restart uses an earlier time.
const CLOCK_MARK_KEY: &[u8] = b"clock_high_water";
/// Prefix of named server state ([`Engine::get_state`]) in the meta column family.
const STATE_KEY_PREFIX: &str = "state/";
/// Above every key: keys are UTF-8, which never contains the byte 0xFF.
const ABOVE_ALL_KEYS: &[u8] = b"\xff";
/// A leftover namespace's keys are counted up to this many for the error
/// that refuses to open it.
const LEFTOVER_COUNT_LIMIT: u64 = 10_000_000;
/// How many misplaced keys move per atomic batch during the startup repair.
const REPAIR_BATCH: usize = 1000;

/// Tuning of the RocksDB engine.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// fsync the write-ahead log before acknowledging each write.
    pub sync_writes: bool,
    /// Size of the block cache shared by all column families, in bytes.
    pub block_cache_bytes: usize,
    /// Recompact every SST file at least this often, so the expiry compaction
    /// filter reaches cold files too.
    pub periodic_compaction_seconds: u64,
    /// Compaction removes a record only once it has been expired for longer
    /// than this, so a clock stepped forward by less cannot destroy live data.
    pub expiry_grace: Duration,
    /// Most bytes of encoded writes queued for the writer or being committed;
    /// writers wait beyond that.
    pub write_queue_bytes: usize,
    /// How many commits a change-feed subscriber may fall behind before it
    /// is told it lagged.
    pub change_feed_capacity: usize,
    /// Most bytes of change events held for subscribers that have not read
    /// them; a commit beyond is published as a lag instead.
    pub change_feed_max_bytes: usize,
    /// Retention of the change history: the most recent this many sequences
    /// (one per event) are kept; 0 keeps them all.
    pub history_max_events: u64,
    /// Retention of the change history: batches committed longer ago than
    /// this are trimmed; 0 keeps them whatever their age.
    pub history_max_age_millis: u64,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            sync_writes: false,
            block_cache_bytes: 128 * 1024 * 1024,
            periodic_compaction_seconds: 24 * 60 * 60,
            expiry_grace: Duration::from_secs(60 * 60),
            write_queue_bytes: 256 * 1024 * 1024,
            change_feed_capacity: 4096,
            change_feed_max_bytes: 64 * 1024 * 1024,
            history_max_events: 1_000_000,
            history_max_age_millis: 0,
        }
    }
}

/// The RocksDB engine: a cheap-to-clone handle.
///
/// Reads run on tokio's blocking pool. Writes go to one writer thread that
/// commits whatever requests are queued as a single `WriteBatch` (group
/// commit): preconditions are checked and versions assigned in queue order,
/// concurrent writers share one WAL write and, with `sync_writes`, one fsync,
/// and each commit is published to the change feed before its callers are
/// answered.
#[derive(Clone)]
pub struct RocksEngine {
    inner: Arc<Inner>,
    writer: Arc<Writer>,
}

struct Inner {
    db: DB,
    path: PathBuf,
    namespaces: Namespaces,
    column_families: Vec<String>,
    /// The source clock, never going back below the persisted high-water mark.
    clock: Arc<MonotonicClock>,
    write_options: WriteOptions,
    /// Reads that never wait for I/O ([`Tier::Memory`]).
    memory_reads: ReadOptions,
    /// Reads that may ([`Tier::Any`]).
    any_reads: ReadOptions,
    secret: Vec<u8>,
    feed: ChangeFeed,
    /// Set once, when the writer stops for good.
    failure: watch::Sender<Option<String>>,
    #[cfg(feature = "test-hooks")]
    hooks: Arc<WriterHooks>,
    groups_committed: AtomicU64,
    #[cfg(feature = "test-hooks")]
    read_faults: ReadFaults,
    corrupt_records: CorruptRecordCounts,
    history: history::HistoryState,
}

/// Undecodable records met by this engine since it opened.
#[derive(Debug, Default)]
struct CorruptRecordCounts {
    /// Times a read or a write's precondition check met one.
    found: AtomicU64,
    /// Removed by a committed unconditional delete.
    removed: AtomicU64,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.inner.path)
            .field("namespaces", &self.inner.namespaces)
            .finish()
    }
}

fn column_family_name(namespaces: &Namespaces, id: NamespaceId) -> String {
    if id == DEFAULT_NAMESPACE {
        rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_string()
    } else {
        format!("{NAMESPACE_CF_PREFIX}{}", namespaces.prefix(id))
    }
}

fn storage_error(error: rocksdb::Error) -> EngineError {
    match error.kind() {
        ErrorKind::Busy | ErrorKind::TryAgain | ErrorKind::TimedOut | ErrorKind::Incomplete => {
            EngineError::Unavailable(error.into_string())
        }
        _ => EngineError::Storage(error.into_string()),
    }
}

impl RocksEngine {
    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Compacts every namespace fully, running the expiry filter over all data.
    /// Blocking; for operators and tests.
    pub fn compact_all(&self) {
        let handles = (0..self.inner.namespaces.len())
            .map(|id| self.inner.handle(id))
            .chain([self.inner.values_handle()]);
        for cf in handles.flatten() {
            self.inner
                .db
                .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Whether a record for `key` is physically stored, expired or not.
    /// Blocking; for operators and tests of the compaction filter.
    pub fn physically_present(&self, key: &str) -> Result<bool, EngineError> {
        let cf = self.inner.handle(self.inner.namespaces.route(key))?;
        Ok(self
            .inner
            .db
            .get_pinned_cf(cf, key.as_bytes())
            .map_err(storage_error)?
            .is_some())
    }

    /// Whether an out-of-line value entry for `key` is physically stored.
    /// Blocking; for tests of the value layout and the compaction filter.
    pub fn value_entry_present(&self, key: &str) -> Result<bool, EngineError> {
        let values = self.inner.values_handle()?;
        Ok(self
            .inner
            .db
            .get_pinned_cf(values, key.as_bytes())
            .map_err(storage_error)?
            .is_some())
    }

    /// Bytes of the write queue's budget (`write_queue_bytes`) taken by writes
    /// queued, being committed, or waiting for room.
    pub fn queued_write_bytes(&self) -> usize {
        self.writer.queued_bytes()
    }

    /// Write requests waiting in the queue that the writer has not taken yet.
    pub fn queued_write_requests(&self) -> usize {
        self.writer.queued_requests()
    }

    /// Trims the change history to its retention now (a background pass
    /// does it every few seconds), returning the oldest resumable sequence.
    /// Blocking; for operators and tests.
    pub fn trim_history_now(&self) -> Result<u64, EngineError> {
        self.inner.trim_history()
    }

    /// How many groups the writer has committed since the engine opened.
    pub fn groups_committed(&self) -> u64 {
        self.inner.groups_committed.load(Ordering::Relaxed)
    }

    /// Runs blocking work against the store on the blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, EngineError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|error| EngineError::Storage(format!("storage task failed: {error}")))?
    }
}

/// A column family handle; with RocksDB's single-threaded column family mode
/// (the set is fixed at open) it is a plain reference, looked up without a lock.
type CfHandle<'a> = &'a ColumnFamily;

impl Inner {
    /// A record that cannot be decoded, counted where it is found so that an
    /// operator sees corruption in metrics before a client reports it.
    fn corrupt(&self, key: &[u8], error: record::RecordError) -> EngineError {
        self.corrupt_records.found.fetch_add(1, Ordering::Relaxed);
        EngineError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: error.to_string(),
        }
    }

    fn meta_handle(&self) -> Result<CfHandle<'_>, EngineError> {
        self.db
            .cf_handle(META_CF)
            .ok_or_else(|| EngineError::Storage("meta column family missing".into()))
    }

    fn handle(&self, id: NamespaceId) -> Result<CfHandle<'_>, EngineError> {
        self.db.cf_handle(&self.column_families[id]).ok_or_else(|| {
            EngineError::Storage(format!(
                "column family {:?} is not open",
                self.column_families[id]
            ))
        })
    }

    /// An integer property of namespace `id`'s column family (0 when RocksDB
    /// has none).
    fn int_property(&self, id: NamespaceId, name: &str) -> Result<u64, EngineError> {
        Ok(self
            .db
            .property_int_value_cf(self.handle(id)?, name)
            .map_err(storage_error)?
            .unwrap_or(0))
    }

    fn values_handle(&self) -> Result<CfHandle<'_>, EngineError> {
        self.db
            .cf_handle(VALUES_CF)
            .ok_or_else(|| EngineError::Storage("values column family missing".into()))
    }

    /// Adds a record's head, and its value entry or the deletion of a stale
    /// one, to a write batch.
    fn batch_put(
        batch: &mut WriteBatch,
        cf: CfHandle<'_>,
        values: CfHandle<'_>,
        key: &[u8],
        stored: &StoredRecord,
    ) {
        batch.put_cf(cf, key, &stored.head);
        match &stored.value_entry {
            Some(entry) => batch.put_cf(values, key, entry),
            None => batch.delete_cf(values, key),
        }
    }

    /// Adds the deletion of a record, head and value entry, to a write batch.
    fn batch_delete(batch: &mut WriteBatch, cf: CfHandle<'_>, values: CfHandle<'_>, key: &[u8]) {
        batch.delete_cf(cf, key);
        batch.delete_cf(values, key);
    }
}

impl RocksEngine {
    /// The id of the configured namespace with exactly this prefix.
    fn namespace_id(&self, prefix: &str) -> Result<NamespaceId, EngineError> {
        let namespaces = &self.inner.namespaces;
        (0..namespaces.len())
            .find(|id| namespaces.prefix(*id) == prefix)
            .ok_or_else(|| EngineError::Layout(format!("{prefix:?} is not a configured namespace")))
    }
}
