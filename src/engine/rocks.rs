//! The embedded engine: RocksDB, one column family per namespace.
//!
//! Column families: RocksDB's `default` holds the default namespace, `kv/<prefix>`
//! holds each configured prefix, and `tierkv/meta` holds the engine's own state
//! (the version counter and the page-token secret).
//!
//! Every RocksDB call blocks, so each [`Engine`] method runs on tokio's blocking
//! pool (`spawn_blocking`) and the async workers never wait on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::Rng;
use rocksdb::{
    compaction_filter::Decision, BlockBasedOptions, BoundColumnFamily, Cache,
    ColumnFamilyDescriptor, DBCompressionType, ErrorKind, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use super::namespace::{NamespaceId, DEFAULT_NAMESPACE};
use super::record::{self, Record};
use super::{Engine, EngineError, Namespaces, Precondition, ScanRequest, WriteOp, WriteOutcome};
use crate::clock::SharedClock;

const META_CF: &str = "tierkv/meta";
const NAMESPACE_CF_PREFIX: &str = "kv/";
const VERSION_COUNTER_KEY: &[u8] = b"version_counter";
const SECRET_KEY: &[u8] = b"page_token_secret";
const VERSION_OFFSET: usize = 4;
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
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            sync_writes: false,
            block_cache_bytes: 128 * 1024 * 1024,
            periodic_compaction_seconds: 24 * 60 * 60,
        }
    }
}

/// The RocksDB engine: a cheap-to-clone handle.
#[derive(Clone)]
pub struct RocksEngine {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    path: PathBuf,
    namespaces: Namespaces,
    column_families: Vec<String>,
    clock: SharedClock,
    write_options: WriteOptions,
    secret: Vec<u8>,
    /// Serializes batches: preconditions are checked and versions assigned
    /// against the state the previous batch left. Guards the last version
    /// handed out. A std mutex is right: it is held only on blocking-pool
    /// threads, never across an await.
    last_version: Mutex<u64>,
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
        std::fs::create_dir_all(&path).map_err(|error| {
            EngineError::Storage(format!(
                "cannot create data dir {}: {error}",
                path.display()
            ))
        })?;

        let column_families: Vec<String> = (0..namespaces.len())
            .map(|id| column_family_name(&namespaces, id))
            .collect();
        check_existing_column_families(&path, &column_families)?;

        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut descriptors: Vec<ColumnFamilyDescriptor> = column_families
            .iter()
            .map(|name| {
                ColumnFamilyDescriptor::new(name, namespace_options(&cache, &options, &clock))
            })
            .collect();
        descriptors.push(ColumnFamilyDescriptor::new(META_CF, Options::default()));

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        let parallelism = std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(2);
        db_options.increase_parallelism(parallelism);
        db_options.set_max_background_jobs(parallelism.max(2));
        let db = DB::open_cf_descriptors(&db_options, &path, descriptors).map_err(storage_error)?;

        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.sync_writes);

        let meta = db
            .cf_handle(META_CF)
            .ok_or_else(|| EngineError::Storage("meta column family missing".into()))?;
        let last_version = match db
            .get_cf(&meta, VERSION_COUNTER_KEY)
            .map_err(storage_error)?
        {
            Some(bytes) if bytes.len() == 8 => {
                u64::from_le_bytes(bytes.as_slice().try_into().unwrap_or_default())
            }
            Some(_) => {
                return Err(EngineError::Corrupt {
                    key: "version_counter".into(),
                    reason: "not 8 bytes".into(),
                })
            }
            None => 0,
        };
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
        drop(meta);

        let engine = Self {
            inner: Arc::new(Inner {
                db,
                path,
                namespaces,
                column_families,
                clock,
                write_options,
                secret,
                last_version: Mutex::new(last_version),
            }),
        };
        engine.inner.repair_misplaced_keys()?;
        Ok(engine)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Compacts every namespace fully, running the expiry filter over all data.
    /// Blocking; for operators and tests.
    pub fn compact_all(&self) {
        for id in 0..self.inner.namespaces.len() {
            if let Ok(cf) = self.inner.handle(id) {
                self.inner
                    .db
                    .compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
            }
        }
    }

    /// Whether a record for `key` is physically stored, expired or not.
    /// Blocking; for operators and tests of the compaction filter.
    pub fn physically_present(&self, key: &str) -> Result<bool, EngineError> {
        let cf = self.inner.handle(self.inner.namespaces.route(key))?;
        Ok(self
            .inner
            .db
            .get_pinned_cf(&cf, key.as_bytes())
            .map_err(storage_error)?
            .is_some())
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

/// Refuses to open a directory holding namespaces the configuration dropped,
/// or column families this build does not know.
fn check_existing_column_families(path: &Path, configured: &[String]) -> Result<(), EngineError> {
    if !path.join("CURRENT").exists() {
        return Ok(());
    }
    let existing = DB::list_cf(&Options::default(), path).map_err(storage_error)?;
    for name in existing {
        if configured.contains(&name) || name == META_CF {
            continue;
        }
        return Err(match name.strip_prefix(NAMESPACE_CF_PREFIX) {
            Some(prefix) => EngineError::Layout(format!(
                "data dir {} holds namespace {prefix:?}, which is not in the configured \
                 namespaces; add it back to `namespaces` to keep serving its keys \
                 (tierkv never drops a namespace's data silently)",
                path.display()
            )),
            None => EngineError::Layout(format!(
                "data dir {} holds an unknown column family {name:?}; is it a tierkv data dir?",
                path.display()
            )),
        });
    }
    Ok(())
}

fn namespace_options(cache: &Cache, options: &RocksOptions, clock: &SharedClock) -> Options {
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

    let clock = Arc::clone(clock);
    cf_options.set_compaction_filter(
        "tierkv-expiry",
        move |_level: u32, _key: &[u8], value: &[u8]| match record::peek_expire_at_millis(value) {
            Some(expire_at) if expire_at <= clock.now_millis() => Decision::Remove,
            _ => Decision::Keep,
        },
    );
    cf_options
}

impl Inner {
    fn handle(&self, id: NamespaceId) -> Result<Arc<BoundColumnFamily<'_>>, EngineError> {
        self.db.cf_handle(&self.column_families[id]).ok_or_else(|| {
            EngineError::Storage(format!(
                "column family {:?} is not open",
                self.column_families[id]
            ))
        })
    }

    /// Moves keys that a nested namespace owns out of its parent, where they
    /// were written before the nested namespace was configured. Idempotent and
    /// crash-safe: each chunk moves atomically, and the next start finishes.
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

    fn decode(key: &[u8], value: &[u8], include_value: bool) -> Result<Record, EngineError> {
        Record::decode(value, include_value).map_err(|error| EngineError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: error.to_string(),
        })
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, EngineError> {
        let now = self.clock.now_millis();
        let handles = (0..self.namespaces.len())
            .map(|id| self.handle(id))
            .collect::<Result<Vec<_>, _>>()?;
        let lookups = keys
            .iter()
            .map(|key| (&handles[self.namespaces.route(key)], key.as_bytes()));
        self.db
            .multi_get_cf(lookups)
            .into_iter()
            .zip(keys)
            .map(|(result, key)| match result.map_err(storage_error)? {
                None => Ok(None),
                Some(bytes) => {
                    let record = Self::decode(key.as_bytes(), &bytes, true)?;
                    Ok((!record.is_expired_at(now)).then_some(record))
                }
            })
            .collect()
    }

    fn scan(&self, request: &ScanRequest) -> Result<Vec<(String, Record)>, EngineError> {
        if request.limit == 0 {
            return Ok(Vec::new());
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
                let mut iterator = self.db.raw_iterator_cf_opt(cf, read_options);
                iterator.seek(&start);
                iterator
            })
            .collect();

        let mut page = Vec::new();
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
            if let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                let live = record::peek_expire_at_millis(value).is_none_or(|at| at > now);
                if live {
                    let record = Self::decode(key, value, request.include_values)?;
                    let name =
                        String::from_utf8(key.to_vec()).map_err(|_| EngineError::Corrupt {
                            key: String::from_utf8_lossy(key).into_owned(),
                            reason: "key is not UTF-8".into(),
                        })?;
                    page.push((name, record));
                    if page.len() == request.limit {
                        break;
                    }
                }
            }
            iterator.next();
        }
        for iterator in &iterators {
            iterator.status().map_err(storage_error)?;
        }
        Ok(page)
    }

    fn live_version(
        &self,
        cf: &Arc<BoundColumnFamily<'_>>,
        key: &str,
        now: u64,
    ) -> Result<Option<u64>, EngineError> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(cf, key.as_bytes())
            .map_err(storage_error)?
        else {
            return Ok(None);
        };
        if record::peek_expire_at_millis(&bytes).is_some_and(|at| at <= now) {
            return Ok(None);
        }
        record::peek_version(&bytes)
            .map(Some)
            .ok_or_else(|| EngineError::Corrupt {
                key: key.to_string(),
                reason: "unreadable record header".into(),
            })
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, EngineError> {
        // Encode outside the lock; only the version bytes are patched inside it.
        let encoded: Vec<Option<Vec<u8>>> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put(put) => Some(
                    Record {
                        kind: put.kind,
                        value: put.value.clone(),
                        metadata: put.metadata.clone(),
                        expire_at_millis: put.expire_at_millis,
                        version: 0,
                        schema_version: put.schema_version,
                    }
                    .encode(),
                ),
                WriteOp::Delete(_) => None,
            })
            .collect();
        let handles = (0..self.namespaces.len())
            .map(|id| self.handle(id))
            .collect::<Result<Vec<_>, _>>()?;
        let meta = self
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| EngineError::Storage("meta column family missing".into()))?;

        let mut last_version = self
            .last_version
            .lock()
            .map_err(|_| EngineError::Storage("write lock poisoned".into()))?;
        let now = self.clock.now_millis();
        let mut next_version = *last_version;
        // The live version of each key as left by the batch's earlier mutations.
        let mut pending: HashMap<&str, Option<u64>> = HashMap::new();
        let mut batch = WriteBatch::default();
        let mut outcomes = Vec::with_capacity(ops.len());
        for (index, (op, bytes)) in ops.iter().zip(encoded).enumerate() {
            let key = op.key();
            let cf = &handles[self.namespaces.route(key)];
            let precondition = match op {
                WriteOp::Put(put) => put.precondition,
                WriteOp::Delete(delete) => delete.precondition,
            };
            // An unconditional put needs nothing from the current record, so
            // it skips the read; deletes read to report whether the key existed.
            let blind_put = matches!(op, WriteOp::Put(_)) && precondition == Precondition::None;
            let current = match pending.get(key) {
                Some(version) => *version,
                None if blind_put => None,
                None => self.live_version(cf, key, now)?,
            };
            if !precondition.holds(current) {
                return Err(EngineError::PreconditionFailed {
                    index,
                    key: key.to_string(),
                    precondition,
                    current_version: current,
                });
            }
            match (op, bytes) {
                (WriteOp::Put(put), Some(mut bytes)) => {
                    next_version += 1;
                    bytes[VERSION_OFFSET..VERSION_OFFSET + 8]
                        .copy_from_slice(&next_version.to_le_bytes());
                    batch.put_cf(cf, key.as_bytes(), bytes);
                    let live = put.expire_at_millis.is_none_or(|at| at > now);
                    pending.insert(key, live.then_some(next_version));
                    outcomes.push(WriteOutcome::Put {
                        version: next_version,
                    });
                }
                _ => {
                    batch.delete_cf(cf, key.as_bytes());
                    pending.insert(key, None);
                    outcomes.push(WriteOutcome::Delete {
                        existed: current.is_some(),
                    });
                }
            }
        }
        if next_version != *last_version {
            batch.put_cf(&meta, VERSION_COUNTER_KEY, next_version.to_le_bytes());
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(storage_error)?;
        *last_version = next_version;
        Ok(outcomes)
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush_wal(true).map_err(storage_error)?;
        for id in 0..self.namespaces.len() {
            let cf = self.handle(id)?;
            self.db.flush_cf(&cf).map_err(storage_error)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Engine for RocksEngine {
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Record>>, EngineError> {
        self.blocking(move |inner| inner.get_many(&keys)).await
    }

    async fn scan(&self, request: ScanRequest) -> Result<Vec<(String, Record)>, EngineError> {
        self.blocking(move |inner| inner.scan(&request)).await
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, EngineError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |inner| inner.write(ops)).await
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
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    /// The upper bound of a prefix range is the next byte string past it.
    #[test]
    fn prefix_successor_bounds_ranges() {
        assert_eq!(prefix_successor(b"user:"), Some(b"user;".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
