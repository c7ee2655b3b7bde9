//! Opening the store: the column families, their options (with the expiry
//! compaction filter), the engine's persisted counters and secret, the
//! refusal of namespaces that would hide data, and the repair that moves keys
//! into a newly configured namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use rand::Rng;
use rocksdb::{
    compaction_filter::Decision, BlockBasedOptions, Cache, ColumnFamilyDescriptor,
    DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use tokio::sync::watch;

use super::read::Tier;
use super::scan::{count_live, prefix_successor};
use super::writer::{Writer, WriterState};
use super::*;
use crate::clock::{Clock, MonotonicClock, SharedClock};
use crate::engine::changes::ChangeFeed;

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
        let history_created = !existing_history_cf(&path)?;
        descriptors.push(ColumnFamilyDescriptor::new(
            history::HISTORY_CF,
            history_options(&cache),
        ));
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
        // The key holds the sequence the next event gets.
        let recovered_sequence = read_counter(CHANGE_SEQUENCE_KEY)?.max(1) - 1;
        let opened_history = history::open_history(
            &db,
            &path,
            history_created,
            recovered_sequence,
            options.history_max_events,
            options.history_max_age_millis,
        )?;
        let last_sequence = opened_history.last_sequence;
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
                last_sequence,
            ),
            failure: watch::Sender::new(None),
            #[cfg(feature = "test-hooks")]
            hooks: Arc::default(),
            groups_committed: AtomicU64::new(0),
            corrupt_records: CorruptRecordCounts::default(),
            history: opened_history.state,
            #[cfg(feature = "test-hooks")]
            read_faults: super::hooks::ReadFaults::default(),
        });
        // Before the writer starts, so the repair is the only writer.
        inner.repair_misplaced_keys()?;
        let state = WriterState {
            last_version,
            last_sequence,
            persisted_clock: clock_mark,
            ceiling: opened_history.ceiling,
        };
        let writer = Writer::start(Arc::clone(&inner), state, options.write_queue_bytes)?;
        Ok(Self {
            inner,
            writer: Arc::new(writer),
        })
    }
}

impl Inner {
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
}

/// Creates `path` and its missing parents readable by this user only
/// (0700): the store's files are every record in clear. A directory that
/// already exists keeps its mode (the operator may have reasons, and may not
/// own it), with a warning when group or others can enter it.
pub(super) fn create_private_dir(path: &Path, setting: &str) -> std::io::Result<()> {
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
        if configured.contains(&name)
            || name == META_CF
            || name == VALUES_CF
            || name == history::HISTORY_CF
        {
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

/// Whether the store at `path` already has a history column family.
fn existing_history_cf(path: &Path) -> Result<bool, EngineError> {
    if !path.join("CURRENT").exists() {
        return Ok(false);
    }
    let existing = DB::list_cf(&Options::default(), path).map_err(storage_error)?;
    Ok(existing.iter().any(|name| name == history::HISTORY_CF))
}

/// The history's column family: written in sequence order and read in
/// ranges, trimmed from its start by range deletions; no expiry filter (its
/// entries are not records).
fn history_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    let mut cf_options = Options::default();
    cf_options.set_block_based_table_factory(&table);
    cf_options.set_compression_type(DBCompressionType::Lz4);
    cf_options.set_bottommost_compression_type(DBCompressionType::Zstd);
    cf_options
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
