//! The embedded engine: RocksDB, one column family per namespace.
//!
//! Column families: RocksDB's `default` holds the default namespace, `kv/<prefix>`
//! holds each configured prefix, `tierkv/values` holds values too long to keep
//! inline with their record's head (see [`record`]), and `tierkv/meta` holds
//! the engine's own state (the version counter, the change-feed sequence, the
//! clock's high-water mark and the page-token secret).
//!
//! Point reads that the memtables and the block cache can answer run inline on
//! the calling async worker with RocksDB's non-blocking read tier; a read that
//! would need I/O (or copies a large value) moves to tokio's blocking pool.
//! Scans always run on the blocking pool. Writes are queued to a writer thread
//! that group-commits them and publishes the change feed (`writer`).

mod writer;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rocksdb::{
    compaction_filter::Decision, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, DBPinnableSlice, ErrorKind, Options, ReadOptions, ReadTier, WriteBatch,
    WriteOptions, DB,
};

use super::changes::{ChangeFeed, ChangeSubscription};
use super::namespace::{NamespaceId, DEFAULT_NAMESPACE};
use super::record::{self, Record, StoredRecord, ValuePlace};
use super::{
    BackupInfo, Engine, EngineError, NamespaceStats, Namespaces, ScanPage, ScanRequest,
    StorageSummary, WriteOp, WriteOutcome,
};
use crate::clock::{Clock, MonotonicClock, SharedClock};
use tokio::sync::watch;
use writer::{Writer, WriterHooks, WriterState};

pub use writer::WriterPause;

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
    hooks: Arc<WriterHooks>,
    groups_committed: AtomicU64,
    read_faults: ReadFaults,
    corrupt_records: CorruptRecordCounts,
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

/// The smallest byte string greater than every string starting with `prefix`;
/// `None` when there is none (empty prefix or all 0xFF).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last != u8::MAX {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// The key ranges `[start, end)` that hold exactly the keys routed to
/// namespace `id`: its prefix's range minus the ranges of the namespaces
/// nested under it.
pub(crate) fn namespace_ranges(
    namespaces: &Namespaces,
    id: NamespaceId,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let prefix = namespaces.prefix(id).as_bytes();
    let end = prefix_successor(prefix).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
    // Configured prefixes inside this one, outermost only (sorted, so an
    // inner one follows the one containing it).
    let mut holes: Vec<&[u8]> = Vec::new();
    for other in namespaces.configured_prefixes() {
        let other = other.as_bytes();
        if other.len() > prefix.len()
            && other.starts_with(prefix)
            && !holes.last().is_some_and(|hole| other.starts_with(hole))
        {
            holes.push(other);
        }
    }
    let mut ranges = Vec::new();
    let mut start = prefix.to_vec();
    for hole in holes {
        if start.as_slice() < hole {
            ranges.push((start, hole.to_vec()));
        }
        start = prefix_successor(hole).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
    }
    if start < end {
        ranges.push((start, end));
    }
    ranges
}

/// Creates `path` and its missing parents readable by this user only
/// (0700): the store's files are every record in clear. A directory that
/// already exists keeps its mode (the operator may have reasons, and may not
/// own it), with a warning when group or others can enter it.
fn create_private_dir(path: &Path, setting: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "{setting} is open to group or others; `chmod 700` it so only this user reads the store"
        );
    }
    Ok(())
}

impl RocksEngine {
    /// Opens (or creates) the store at `path` with the given namespaces.
    ///
    /// Fails without touching data when the directory holds a namespace that is
    /// no longer configured: its keys would silently become invisible. Keys
    /// that a newly configured namespace now owns are moved into it.
    pub fn open(
        path: impl AsRef<Path>,
        namespaces: Namespaces,
        options: RocksOptions,
        clock: SharedClock,
    ) -> Result<Self, EngineError> {
        let path = path.as_ref().to_path_buf();
        create_private_dir(&path, "data_dir").map_err(|error| {
            EngineError::Storage(format!(
                "cannot create data dir {}: {error}",
                path.display()
            ))
        })?;

        let column_families: Vec<String> = (0..namespaces.len())
            .map(|id| column_family_name(&namespaces, id))
            .collect();
        let leftovers = check_existing_column_families(&path, &column_families)?;

        let clock = Arc::new(MonotonicClock::new(clock, 0));
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut descriptors: Vec<ColumnFamilyDescriptor> = column_families
            .iter()
            .map(|name| {
                ColumnFamilyDescriptor::new(name, namespace_options(&cache, &options, &clock))
            })
            .collect();
        descriptors.push(ColumnFamilyDescriptor::new(
            VALUES_CF,
            namespace_options(&cache, &options, &clock),
        ));
        descriptors.push(ColumnFamilyDescriptor::new(META_CF, Options::default()));
        // Namespaces no longer configured are opened only to see whether they
        // still hold data.
        for name in &leftovers {
            descriptors.push(ColumnFamilyDescriptor::new(
                name,
                namespace_options(&cache, &options, &clock),
            ));
        }

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        let parallelism = std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(2);
        db_options.increase_parallelism(parallelism);
        db_options.set_max_background_jobs(parallelism.max(2));
        let mut db =
            DB::open_cf_descriptors(&db_options, &path, descriptors).map_err(storage_error)?;

        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.sync_writes);

        let meta = db
            .cf_handle(META_CF)
            .ok_or_else(|| EngineError::Storage("meta column family missing".into()))?;
        let read_counter = |key: &[u8]| -> Result<u64, EngineError> {
            match db.get_cf(&meta, key).map_err(storage_error)? {
                Some(bytes) => bytes
                    .as_slice()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| EngineError::Corrupt {
                        key: String::from_utf8_lossy(key).into_owned(),
                        reason: "not 8 bytes".into(),
                    }),
                None => Ok(0),
            }
        };
        let last_version = read_counter(VERSION_COUNTER_KEY)?;
        let next_sequence = read_counter(CHANGE_SEQUENCE_KEY)?.max(1);
        let clock_mark = read_counter(CLOCK_MARK_KEY)?;
        clock.raise_floor(clock_mark);
        // The time at open counts as seen: it is what the writer persists first.
        clock.now_millis();
        let source_now = clock.source_millis();
        if source_now < clock_mark {
            tracing::warn!(
                behind_ms = clock_mark - source_now,
                "the system clock is behind the time this store has already seen; \
                 expiry keeps using the store's time until the clock catches up"
            );
        }
        drop_empty_leftovers(&mut db, &path, &leftovers, clock.now_millis())?;
        let meta = db
            .cf_handle(META_CF)
            .ok_or_else(|| EngineError::Storage("meta column family missing".into()))?;
        let secret = match db.get_cf(&meta, SECRET_KEY).map_err(storage_error)? {
            Some(secret) => secret,
            None => {
                let mut secret = vec![0u8; 32];
                rand::rng().fill(secret.as_mut_slice());
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                db.put_cf_opt(&meta, SECRET_KEY, &secret, &sync)
                    .map_err(storage_error)?;
                secret
            }
        };

        let inner = Arc::new(Inner {
            db,
            path,
            namespaces,
            column_families,
            clock,
            write_options,
            memory_reads: Tier::Memory.read_options(),
            any_reads: Tier::Any.read_options(),
            secret,
            feed: ChangeFeed::new(
                options.change_feed_capacity,
                options.change_feed_max_bytes,
                next_sequence,
            ),
            failure: watch::Sender::new(None),
            hooks: Arc::default(),
            groups_committed: AtomicU64::new(0),
            corrupt_records: CorruptRecordCounts::default(),
            read_faults: ReadFaults::default(),
        });
        // Before the writer starts, so the repair is the only writer.
        inner.repair_misplaced_keys()?;
        let state = WriterState {
            last_version,
            persisted_clock: clock_mark,
        };
        let writer = Writer::start(Arc::clone(&inner), state, options.write_queue_bytes)?;
        Ok(Self {
            inner,
            writer: Arc::new(writer),
        })
    }

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

    /// Reads records inline when memory holds them, else on the blocking pool.
    async fn read(
        &self,
        keys: &[String],
        max_bytes: Option<usize>,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        self.inner.read_faults.apply().await?;
        match self.inner.get_many(keys, max_bytes, Tier::Memory) {
            Ok(records) => Ok(records),
            Err(ReadFailure::Engine(error)) => Err(error),
            Err(ReadFailure::WouldBlock) => {
                let keys = keys.to_vec();
                self.blocking(move |inner| {
                    inner
                        .get_many(&keys, max_bytes, Tier::Any)
                        .map_err(ReadFailure::into_engine)
                })
                .await
            }
        }
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

    /// How many groups the writer has committed since the engine opened.
    pub fn groups_committed(&self) -> u64 {
        self.inner.groups_committed.load(Ordering::Relaxed)
    }

    /// Test hook: holds the writer thread before its next group until the
    /// returned guard is dropped. Writes queue up meanwhile (and commit as one
    /// group afterwards), which lets tests build a group deterministically or
    /// let a caller's deadline fire while its write is queued. Not for
    /// production use: writes stall while it is held.
    pub fn pause_writer(&self) -> WriterPause {
        self.writer.pause()
    }

    /// Test hook: makes the writer thread panic before its next group, as a
    /// bug would, so tests can check that the failure is reported. The
    /// engine can no longer write afterwards.
    pub fn crash_writer(&self) {
        self.writer.crash();
    }

    /// Test hook: until the returned guard is dropped, every point read
    /// (`get`, `get_many`, `get_many_within`) fails with a storage error, or
    /// with `Some(delay)` first waits that long and then reads, so tests can
    /// exercise what callers do when reads fail or run out of time. Not for
    /// production use.
    pub fn inject_read_fault(&self, delay: Option<Duration>) -> ReadFaultGuard {
        self.inner.read_faults.set(Some(match delay {
            Some(delay) => ReadFault::Delay(delay),
            None => ReadFault::Fail,
        }));
        ReadFaultGuard {
            inner: Arc::clone(&self.inner),
        }
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

/// What an injected read fault does ([`RocksEngine::inject_read_fault`]).
#[derive(Debug, Clone, Copy)]
enum ReadFault {
    Fail,
    Delay(Duration),
}

/// The injected read fault, if any; reads check one atomic to learn there is
/// none.
#[derive(Default)]
struct ReadFaults {
    active: std::sync::atomic::AtomicBool,
    fault: std::sync::Mutex<Option<ReadFault>>,
}

impl ReadFaults {
    fn set(&self, fault: Option<ReadFault>) {
        let mut current = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        *current = fault;
        self.active.store(fault.is_some(), Ordering::SeqCst);
    }

    async fn apply(&self) -> Result<(), EngineError> {
        if !self.active.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fault = *self.fault.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            None => Ok(()),
            Some(ReadFault::Fail) => Err(EngineError::Storage(
                "read failed: injected by a test hook".into(),
            )),
            Some(ReadFault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

/// Ends an injected read fault when dropped (a test hook: see
/// [`RocksEngine::inject_read_fault`]).
#[must_use = "the fault ends when this is dropped"]
pub struct ReadFaultGuard {
    inner: Arc<Inner>,
}

impl Drop for ReadFaultGuard {
    fn drop(&mut self) {
        self.inner.read_faults.set(None);
    }
}

impl std::fmt::Debug for ReadFaultGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFaultGuard").finish()
    }
}

/// Refuses to open a directory holding column families this build does not
/// know; returns the namespaces the configuration no longer has, which
/// [`drop_empty_leftovers`] checks once the store is open.
fn check_existing_column_families(
    path: &Path,
    configured: &[String],
) -> Result<Vec<String>, EngineError> {
    if !path.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    let existing = DB::list_cf(&Options::default(), path).map_err(storage_error)?;
    let mut leftovers = Vec::new();
    for name in existing {
        if configured.contains(&name) || name == META_CF || name == VALUES_CF {
            continue;
        }
        if name.starts_with(NAMESPACE_CF_PREFIX) {
            leftovers.push(name);
            continue;
        }
        return Err(EngineError::Layout(format!(
            "data dir {} holds an unknown column family {name:?}; is it a tierkv data dir?",
            path.display()
        )));
    }
    Ok(leftovers)
}

/// Refuses to serve when a namespace removed from the configuration still
/// holds live keys (they would silently become invisible); drops the column
/// family of one that holds none, so retiring a namespace ends with its
/// removal from the configuration.
fn drop_empty_leftovers(
    db: &mut DB,
    path: &Path,
    leftovers: &[String],
    now: u64,
) -> Result<(), EngineError> {
    for name in leftovers {
        let prefix = name.strip_prefix(NAMESPACE_CF_PREFIX).unwrap_or(name);
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| EngineError::Storage(format!("column family {name:?} is not open")))?;
        let live = count_live(db, cf, None, now, LEFTOVER_COUNT_LIMIT)?;
        if live > 0 {
            let count = if live >= LEFTOVER_COUNT_LIMIT {
                format!("at least {live}")
            } else {
                live.to_string()
            };
            return Err(EngineError::Layout(format!(
                "data dir {} holds namespace {prefix:?} with {count} live keys, but {prefix:?} \
                 is not in the configured namespaces; to keep serving its keys, add it back to \
                 `namespaces`; to retire it, add it back, run `tierkv admin drop-namespace \
                 {prefix} --expected-keys {live}` against the running server, then remove it \
                 (tierkv never drops a namespace's data silently)",
                path.display()
            )));
        }
        db.drop_cf(name).map_err(storage_error)?;
        tracing::info!(
            column_family = name.as_str(),
            "dropped the empty column family of a namespace no longer configured"
        );
    }
    Ok(())
}

/// Counts live record heads in `cf` (within `range` if given), stopping at `limit`.
fn count_live(
    db: &DB,
    cf: CfHandle<'_>,
    range: Option<(&[u8], &[u8])>,
    now: u64,
    limit: u64,
) -> Result<u64, EngineError> {
    let mut read_options = ReadOptions::default();
    // A one-off pass over everything should not evict the working set.
    read_options.fill_cache(false);
    if let Some((_, end)) = range {
        read_options.set_iterate_upper_bound(end.to_vec());
    }
    let mut iterator = db.raw_iterator_cf_opt(cf, read_options);
    match range {
        Some((start, _)) => iterator.seek(start),
        None => iterator.seek_to_first(),
    }
    let mut live = 0;
    while let Some(head) = iterator.value() {
        if record::peek_expire_at_millis(head).is_none_or(|at| at > now) {
            live += 1;
            if live >= limit {
                break;
            }
        }
        iterator.next();
    }
    iterator.status().map_err(storage_error)?;
    Ok(live)
}

fn namespace_options(
    cache: &Cache,
    options: &RocksOptions,
    clock: &Arc<MonotonicClock>,
) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Whole-key bloom filters make point reads of absent keys skip SST files.
    // A prefix extractor would not help: every key of a column family shares
    // the namespace prefix, and listing prefixes below it vary in length.
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);

    let mut cf_options = Options::default();
    cf_options.set_block_based_table_factory(&table);
    cf_options.set_compression_type(DBCompressionType::Lz4);
    cf_options.set_bottommost_compression_type(DBCompressionType::Zstd);
    cf_options.set_periodic_compaction_seconds(options.periodic_compaction_seconds);
    // Deletion markers are skipped inside RocksDB's iterators, where a scan
    // cannot bound or resume the work; files dense with them are compacted
    // soon, which drops them, instead of waiting for the periodic compaction.
    cf_options.add_compact_on_deletion_collector_factory(10_000, 5_000, 0.5);

    // The filter reads the same never-going-back clock as reads, and keeps a
    // record until it has been expired for longer than the grace margin: a
    // clock stepped forward by less than that hides records for a while but
    // destroys nothing. `Remove` turns the record into a deletion marker
    // (RocksDB's compaction iterator rewrites it as a `Delete`), so an older
    // version of the key in a lower level stays hidden too.
    let clock = Arc::clone(clock);
    let grace_millis = u64::try_from(options.expiry_grace.as_millis()).unwrap_or(u64::MAX);
    cf_options.set_compaction_filter(
        "tierkv-expiry",
        move |_level: u32, _key: &[u8], value: &[u8]| match record::peek_expire_at_millis(value) {
            Some(expire_at) if clock.now_millis() > expire_at.saturating_add(grace_millis) => {
                Decision::Remove
            }
            _ => Decision::Keep,
        },
    );
    cf_options
}

/// Which data a read may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Memtables and the block cache only: never waits for I/O, so it can run
    /// on an async worker.
    Memory,
    /// Anything, including files; only on the blocking pool.
    Any,
}

impl Tier {
    fn read_options(self) -> ReadOptions {
        let mut options = ReadOptions::default();
        if self == Tier::Memory {
            options.set_read_tier(ReadTier::BlockCache);
        }
        options
    }
}

/// Why a read gave up.
#[derive(Debug)]
enum ReadFailure {
    /// A [`Tier::Memory`] read needs I/O, or would copy too much for an async
    /// worker; run it again with [`Tier::Any`] on the blocking pool.
    WouldBlock,
    /// The read failed.
    Engine(EngineError),
}

impl From<EngineError> for ReadFailure {
    fn from(error: EngineError) -> Self {
        ReadFailure::Engine(error)
    }
}

impl ReadFailure {
    fn from_rocksdb(error: rocksdb::Error, tier: Tier) -> Self {
        if tier == Tier::Memory && error.kind() == ErrorKind::Incomplete {
            ReadFailure::WouldBlock
        } else {
            ReadFailure::Engine(storage_error(error))
        }
    }

    fn into_engine(self) -> EngineError {
        match self {
            ReadFailure::Engine(error) => error,
            ReadFailure::WouldBlock => EngineError::Storage("a blocking read gave up".into()),
        }
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

    fn repair_misplaced_keys(&self) -> Result<(), EngineError> {
        for parent in 0..self.namespaces.len() {
            for child in self.namespaces.nested_in(parent) {
                let moved = self.move_prefix(parent, child)?;
                if moved > 0 {
                    tracing::info!(
                        moved,
                        from = self.column_families[parent].as_str(),
                        to = self.column_families[child].as_str(),
                        "moved keys into their newly configured namespace"
                    );
                }
            }
        }
        Ok(())
    }

    fn move_prefix(&self, from: NamespaceId, to: NamespaceId) -> Result<usize, EngineError> {
        let from_cf = self.handle(from)?;
        let to_cf = self.handle(to)?;
        let prefix = self.namespaces.prefix(to).as_bytes().to_vec();
        let mut moved = 0;
        loop {
            let mut read_options = ReadOptions::default();
            if let Some(upper) = prefix_successor(&prefix) {
                read_options.set_iterate_upper_bound(upper);
            }
            let mut iterator = self.db.raw_iterator_cf_opt(&from_cf, read_options);
            iterator.seek(&prefix);
            let mut batch = WriteBatch::default();
            let mut chunk = 0;
            while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                batch.put_cf(&to_cf, key, value);
                batch.delete_cf(&from_cf, key);
                chunk += 1;
                if chunk == REPAIR_BATCH {
                    break;
                }
                iterator.next();
            }
            iterator.status().map_err(storage_error)?;
            drop(iterator);
            if chunk == 0 {
                return Ok(moved);
            }
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            self.db.write_opt(batch, &sync).map_err(storage_error)?;
            moved += chunk;
        }
    }

    /// Reads live records. Every head is read (pinned, not copied) and the
    /// sizes of their metadata and values are summed before any value is
    /// copied, so a request over `max_bytes` costs no more than its heads.
    fn get_many(
        &self,
        keys: &[String],
        max_bytes: Option<usize>,
        tier: Tier,
    ) -> Result<Vec<Option<Record>>, ReadFailure> {
        let now = self.clock.now_millis();
        // Read options are created once per engine: building them is an FFI
        // allocation, a measurable share of a memtable hit.
        let read_options = match tier {
            Tier::Memory => &self.memory_reads,
            Tier::Any => &self.any_reads,
        };
        let mut heads: Vec<Option<DBPinnableSlice<'_>>> = Vec::with_capacity(keys.len());
        let mut total: u64 = 0;
        for key in keys {
            let cf = self.handle(self.namespaces.route(key))?;
            let head = self
                .db
                .get_pinned_cf_opt(cf, key.as_bytes(), read_options)
                .map_err(|error| ReadFailure::from_rocksdb(error, tier))?
                .filter(|bytes| record::peek_expire_at_millis(bytes).is_none_or(|at| at > now));
            if let Some(bytes) = &head {
                total += record::peek_payload_len(bytes)
                    .map_err(|error| self.corrupt(key.as_bytes(), error))?;
            }
            heads.push(head);
        }
        if let Some(limit) = max_bytes {
            if total > limit as u64 {
                return Err(EngineError::TooLarge {
                    limit,
                    actual: total,
                }
                .into());
            }
        }
        if tier == Tier::Memory && total > INLINE_READ_MAX_BYTES {
            return Err(ReadFailure::WouldBlock);
        }
        heads
            .iter()
            .zip(keys)
            .map(|(head, key)| match head {
                None => Ok(None),
                Some(head) => self.materialize(key, head, read_options, tier, now),
            })
            .collect()
    }

    /// A whole record from its head, fetching an out-of-line value.
    fn materialize(
        &self,
        key: &str,
        head: &[u8],
        read_options: &ReadOptions,
        tier: Tier,
        now: u64,
    ) -> Result<Option<Record>, ReadFailure> {
        let (mut record, place) =
            record::decode_head(head).map_err(|error| self.corrupt(key.as_bytes(), error))?;
        match place {
            ValuePlace::Inline { start } => record.value = head[start..].to_vec(),
            ValuePlace::OutOfLine { .. } => {
                let entry = self
                    .db
                    .get_pinned_cf_opt(self.values_handle()?, key.as_bytes(), read_options)
                    .map_err(|error| ReadFailure::from_rocksdb(error, tier))?;
                let value = match &entry {
                    Some(entry) => record::value_of_entry(entry, record.version)
                        .map_err(|error| self.corrupt(key.as_bytes(), error))?,
                    None => None,
                };
                match value {
                    Some(value) => record.value = value.to_vec(),
                    // A write replaced the key between the two reads.
                    None => return self.read_consistent(key, tier, now),
                }
            }
        }
        Ok(Some(record))
    }

    /// Reads one record, head and value, from one snapshot.
    fn read_consistent(
        &self,
        key: &str,
        tier: Tier,
        now: u64,
    ) -> Result<Option<Record>, ReadFailure> {
        let snapshot = self.db.snapshot();
        let cf = self.handle(self.namespaces.route(key))?;
        let Some(head) = snapshot
            .get_pinned_cf_opt(cf, key.as_bytes(), tier.read_options())
            .map_err(|error| ReadFailure::from_rocksdb(error, tier))?
            .filter(|bytes| record::peek_expire_at_millis(bytes).is_none_or(|at| at > now))
        else {
            return Ok(None);
        };
        let (mut record, place) =
            record::decode_head(&head).map_err(|error| self.corrupt(key.as_bytes(), error))?;
        match place {
            ValuePlace::Inline { start } => record.value = head[start..].to_vec(),
            ValuePlace::OutOfLine { .. } => {
                let entry = snapshot
                    .get_pinned_cf_opt(self.values_handle()?, key.as_bytes(), tier.read_options())
                    .map_err(|error| ReadFailure::from_rocksdb(error, tier))?;
                let value = match &entry {
                    Some(entry) => record::value_of_entry(entry, record.version)
                        .map_err(|error| self.corrupt(key.as_bytes(), error))?,
                    None => None,
                };
                let value = value.ok_or_else(|| EngineError::Corrupt {
                    key: key.to_string(),
                    reason: "the out-of-line value of this version is missing".into(),
                })?;
                record.value = value.to_vec();
            }
        }
        Ok(Some(record))
    }

    fn scan(&self, request: &ScanRequest) -> Result<ScanPage, EngineError> {
        let mut page = ScanPage::default();
        if request.limit == 0 {
            return Ok(page);
        }
        let now = self.clock.now_millis();
        let prefix = request.prefix.as_bytes();
        let start: Vec<u8> = match &request.start_after {
            Some(after) if after.as_bytes() >= prefix => {
                let mut start = after.as_bytes().to_vec();
                start.push(0);
                start
            }
            _ => prefix.to_vec(),
        };
        let upper_bound = prefix_successor(prefix);
        // One snapshot for every namespace, so a page is a consistent cut.
        let snapshot = self.db.snapshot();
        let handles = self
            .namespaces
            .spanning(&request.prefix)
            .into_iter()
            .map(|id| self.handle(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut iterators: Vec<_> = handles
            .iter()
            .map(|cf| {
                let mut read_options = ReadOptions::default();
                read_options.set_snapshot(&snapshot);
                if let Some(upper) = &upper_bound {
                    read_options.set_iterate_upper_bound(upper.clone());
                }
                let mut iterator = self.db.raw_iterator_cf_opt(*cf, read_options);
                iterator.seek(&start);
                iterator
            })
            .collect();
        let values = self.values_handle()?;

        let mut examined = 0usize;
        // Namespaces hold disjoint keys; merge them by always taking the
        // smallest current key. There are only a handful of namespaces, so a
        // linear pick beats a heap.
        loop {
            let mut smallest: Option<usize> = None;
            for (index, iterator) in iterators.iter().enumerate() {
                let Some(key) = iterator.key() else { continue };
                if smallest.is_none_or(|best| Some(key) < iterators[best].key()) {
                    smallest = Some(index);
                }
            }
            let Some(index) = smallest else { break };
            let iterator = &mut iterators[index];
            if let (Some(key), Some(head)) = (iterator.key(), iterator.value()) {
                examined += 1;
                let live = record::peek_expire_at_millis(head).is_none_or(|at| at > now);
                if live {
                    // Heads only: an out-of-line value is read only when asked for.
                    let (mut record, place) =
                        record::decode_head(head).map_err(|error| self.corrupt(key, error))?;
                    if request.include_values {
                        record.value = match place {
                            ValuePlace::Inline { start } => head[start..].to_vec(),
                            ValuePlace::OutOfLine { .. } => {
                                let mut read_options = ReadOptions::default();
                                read_options.set_snapshot(&snapshot);
                                let entry = self
                                    .db
                                    .get_pinned_cf_opt(values, key, &read_options)
                                    .map_err(storage_error)?;
                                entry
                                    .as_deref()
                                    .map(|entry| record::value_of_entry(entry, record.version))
                                    .transpose()
                                    .map_err(|error| self.corrupt(key, error))?
                                    .flatten()
                                    .ok_or_else(|| EngineError::Corrupt {
                                        key: String::from_utf8_lossy(key).into_owned(),
                                        reason: "the out-of-line value of this version is missing"
                                            .into(),
                                    })?
                                    .to_vec()
                            }
                        };
                    }
                    let name =
                        String::from_utf8(key.to_vec()).map_err(|_| EngineError::Corrupt {
                            key: String::from_utf8_lossy(key).into_owned(),
                            reason: "key is not UTF-8".into(),
                        })?;
                    page.entries.push((name, record));
                    if page.entries.len() == request.limit {
                        break;
                    }
                }
                if request.max_examined > 0 && examined >= request.max_examined {
                    // Bounded work: the caller resumes after this key.
                    page.resume_after = Some(String::from_utf8_lossy(key).into_owned());
                    break;
                }
            }
            iterator.next();
        }
        for iterator in &iterators {
            iterator.status().map_err(storage_error)?;
        }
        Ok(page)
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush_wal(true).map_err(storage_error)?;
        for id in 0..self.namespaces.len() {
            self.db.flush_cf(self.handle(id)?).map_err(storage_error)?;
        }
        self.db
            .flush_cf(self.values_handle()?)
            .map_err(storage_error)?;
        Ok(())
    }
}

#[async_trait]
impl Engine for RocksEngine {
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Record>>, EngineError> {
        self.read(&keys, None).await
    }

    async fn get_many_within(
        &self,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        self.read(keys, Some(max_bytes)).await
    }

    async fn scan(&self, request: ScanRequest) -> Result<ScanPage, EngineError> {
        self.blocking(move |inner| inner.scan(&request)).await
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, EngineError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.writer.submit(&self.inner, ops).await
    }

    fn subscribe(&self) -> ChangeSubscription {
        self.inner.feed.subscribe()
    }

    async fn failed(&self) -> String {
        let mut failure = self.inner.failure.subscribe();
        let reason = failure
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The sender lives as long as this engine; unreachable in practice.
            Err(_) => std::future::pending().await,
        }
    }

    fn now_millis(&self) -> u64 {
        self.inner.clock.now_millis()
    }

    async fn flush(&self) -> Result<(), EngineError> {
        self.blocking(|inner| inner.flush()).await
    }

    fn instance_secret(&self) -> &[u8] {
        &self.inner.secret
    }

    fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    async fn backup(&self, dir: &Path) -> Result<BackupInfo, EngineError> {
        let dir = dir.to_path_buf();
        self.blocking(move |inner| {
            if dir.exists() {
                return Err(EngineError::Storage(format!(
                    "backup directory {} already exists",
                    dir.display()
                )));
            }
            if let Some(parent) = dir.parent() {
                create_private_dir(parent, "backup_dir").map_err(|error| {
                    EngineError::Storage(format!("creating {}: {error}", parent.display()))
                })?;
            }
            // A RocksDB checkpoint flushes the memtables, then hard-links the
            // immutable table files (copying them across file systems) and
            // copies the manifest and write-ahead log, all at one sequence
            // number: every write acknowledged before it is in the copy.
            rocksdb::checkpoint::Checkpoint::new(&inner.db)
                .and_then(|checkpoint| checkpoint.create_checkpoint(&dir))
                .map_err(storage_error)?;
            // RocksDB creates it 0755 less the umask: a backup is the whole
            // store, for this user only whatever the process umask.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |error| EngineError::Storage(format!("restricting {}: {error}", dir.display())),
            )?;
            let mut info = BackupInfo { files: 0, bytes: 0 };
            let entries = std::fs::read_dir(&dir).map_err(|error| {
                EngineError::Storage(format!("reading {}: {error}", dir.display()))
            })?;
            for entry in entries.flatten() {
                if let Ok(meta) = entry.metadata() {
                    if meta.is_file() {
                        info.files += 1;
                        info.bytes += meta.len();
                    }
                }
            }
            Ok(info)
        })
        .await
    }

    async fn storage_summary(&self) -> Result<StorageSummary, EngineError> {
        let queued_write_bytes = self.queued_write_bytes() as u64;
        self.blocking(move |inner| {
            // Every column family shares one block cache: any of them reports it.
            let property = |name: &str| inner.int_property(0, name);
            Ok(StorageSummary {
                cache_used_bytes: property("rocksdb.block-cache-usage")?,
                cache_capacity_bytes: property("rocksdb.block-cache-capacity")?,
                queued_write_bytes,
                corrupt_records_found: inner.corrupt_records.found.load(Ordering::Relaxed),
                corrupt_records_removed: inner.corrupt_records.removed.load(Ordering::Relaxed),
            })
        })
        .await
    }

    async fn namespace_stats(&self) -> Result<Vec<NamespaceStats>, EngineError> {
        self.blocking(|inner| {
            (0..inner.namespaces.len())
                .map(|id| {
                    let property = |name: &str| inner.int_property(id, name);
                    Ok(NamespaceStats {
                        prefix: inner.namespaces.prefix(id).to_string(),
                        storage: inner.column_families[id].clone(),
                        estimated_keys: property("rocksdb.estimate-num-keys")?,
                        estimated_live_bytes: property("rocksdb.estimate-live-data-size")?,
                        table_files_bytes: property("rocksdb.total-sst-files-size")?,
                        memtable_bytes: property("rocksdb.cur-size-all-mem-tables")?,
                        pending_compaction_bytes: property(
                            "rocksdb.estimate-pending-compaction-bytes",
                        )?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn count_namespace(&self, prefix: &str) -> Result<u64, EngineError> {
        let id = self.namespace_id(prefix)?;
        self.blocking(move |inner| {
            let cf = inner.handle(id)?;
            count_live(&inner.db, cf, None, inner.clock.now_millis(), u64::MAX)
        })
        .await
    }

    async fn clear_namespace(&self, prefix: &str) -> Result<(), EngineError> {
        let id = self.namespace_id(prefix)?;
        self.writer.submit_clear(&self.inner, id).await?;
        // Compact the emptied ranges now, so the space comes back and the
        // estimates drop, instead of whenever compaction gets there. Not
        // `DeleteFilesInRange`: it ignores sequence numbers, so a file holding
        // a write made after the drop (compacted down meanwhile) would go too.
        self.blocking(move |inner| {
            let cf = inner.handle(id)?;
            let values = inner.values_handle()?;
            for (start, end) in namespace_ranges(&inner.namespaces, id) {
                for family in [cf, values] {
                    inner.db.compact_range_cf(family, Some(&start), Some(&end));
                }
            }
            Ok(())
        })
        .await
    }

    async fn get_state(&self, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let key = format!("{STATE_KEY_PREFIX}{name}");
        self.blocking(move |inner| {
            inner
                .db
                .get_cf(inner.meta_handle()?, key.as_bytes())
                .map_err(storage_error)
        })
        .await
    }

    async fn put_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), EngineError> {
        let key = format!("{STATE_KEY_PREFIX}{name}");
        self.blocking(move |inner| {
            let meta = inner.meta_handle()?;
            match value {
                Some(value) => {
                    inner
                        .db
                        .put_cf_opt(meta, key.as_bytes(), value, &inner.write_options)
                }
                None => inner
                    .db
                    .delete_cf_opt(meta, key.as_bytes(), &inner.write_options),
            }
            .map_err(storage_error)
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::{namespace_ranges, prefix_successor};
    use crate::engine::Namespaces;

    /// A namespace's ranges leave out the namespaces nested in it; the
    /// default namespace's leave out every configured prefix.
    #[test]
    fn namespace_ranges_leave_out_nested_namespaces() {
        let namespaces = Namespaces::new(["user:", "user:admin:", "user:admin:x:", "cache:"]);
        let ranges = |prefix: &str| {
            let id = namespaces.route(prefix);
            namespace_ranges(&namespaces, id)
                .into_iter()
                .map(|(start, end)| {
                    (
                        String::from_utf8_lossy(&start).into_owned(),
                        String::from_utf8_lossy(&end).into_owned(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            ranges("user:"),
            vec![pair("user:", "user:admin:"), pair("user:admin;", "user;")]
        );
        assert_eq!(
            ranges("user:admin:"),
            vec![
                pair("user:admin:", "user:admin:x:"),
                pair("user:admin:x;", "user:admin;")
            ]
        );
        assert_eq!(ranges("cache:"), vec![pair("cache:", "cache;")]);
        let default = ranges("other");
        assert_eq!(default.first().unwrap(), &pair("", "cache:"));
        assert_eq!(default[1], pair("cache;", "user:"));
        assert_eq!(default[2].0, "user;");
    }

    /// The upper bound of a prefix range is the next byte string past it.
    #[test]
    fn prefix_successor_bounds_ranges() {
        assert_eq!(prefix_successor(b"user:"), Some(b"user;".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
