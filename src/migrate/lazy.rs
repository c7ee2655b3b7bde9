//! Lazy migration: a read of a record older than its prefix's target returns
//! the migrated record and writes it back in the background.
//!
//! The write-back is a compare-and-set on the version the read saw, keeping
//! the expiry and the metadata (plus `migratedAt`), so a writer that got there
//! first wins and nothing is lost; the lost write-back is dropped silently. It
//! goes through the engine like any write, so the change feed (and every cache
//! fed by it) sees it.
//!
//! Why in the background: a read must not wait for the writer thread (a
//! group commit, an fsync with `sync_writes`), and many readers of one
//! unmigrated key at once must not queue as many doomed compare-and-sets. So
//! the read answers at once with the migrated value and the version it read;
//! one write-back per key is in flight at a time, and at most
//! [`MAX_WRITE_BACKS_IN_FLIGHT`] in all. A read that finds no room skips the
//! write-back: the record stays old on disk and the next read (or a batch
//! migration) tries again. A caller that follows the read with a
//! compare-and-set on the returned version may therefore get ABORTED once,
//! because the write-back moved the version on; reading again gives the new
//! one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{Migrations, Plan};
use crate::engine::{Engine, EngineError, Precondition, PutOp, Record, WriteOp};

/// Records larger than this are migrated on the blocking pool.
pub const INLINE_MIGRATE_BYTES: usize = 64 * 1024;
/// Most write-backs queued or running at once; reads beyond skip theirs.
pub const MAX_WRITE_BACKS_IN_FLIGHT: usize = 256;

/// What lazy migration has done since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyCounts {
    /// Reads answered with a migrated record.
    pub migrated_reads: u64,
    /// Write-backs committed.
    pub written_back: u64,
    /// Write-backs dropped because a writer changed the key first.
    pub lost_to_writers: u64,
    /// Write-backs skipped: one for the key was in flight, or no room.
    pub skipped: u64,
    /// Write-backs that failed in the engine.
    pub write_errors: u64,
    /// Reads of records no patch could migrate (returned as is).
    pub failed: u64,
    /// Reads of records newer than this server knows (returned as is).
    pub newer_than_known: u64,
}

#[derive(Default)]
struct Counters {
    migrated_reads: AtomicU64,
    written_back: AtomicU64,
    lost_to_writers: AtomicU64,
    skipped: AtomicU64,
    write_errors: AtomicU64,
    failed: AtomicU64,
    newer_than_known: AtomicU64,
}

/// Migrates records as they are read and writes them back.
pub struct LazyMigrator {
    migrations: Arc<Migrations>,
    engine: Arc<dyn Engine>,
    /// Keys with a write-back in flight. A std mutex: held for a hash lookup.
    in_flight: Arc<Mutex<HashSet<String>>>,
    room: Arc<Semaphore>,
    counters: Arc<Counters>,
    /// When a failed migration was last logged, in milliseconds.
    last_failure_log: AtomicU64,
}

impl std::fmt::Debug for LazyMigrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMigrator")
            .field("migrations", &self.migrations.fingerprint())
            .finish()
    }
}

impl LazyMigrator {
    /// A lazy migrator applying `migrations` to records of `engine`.
    pub fn new(migrations: Arc<Migrations>, engine: Arc<dyn Engine>) -> Self {
        Self {
            migrations,
            engine,
            in_flight: Arc::default(),
            room: Arc::new(Semaphore::new(MAX_WRITE_BACKS_IN_FLIGHT)),
            counters: Arc::default(),
            last_failure_log: AtomicU64::new(0),
        }
    }

    /// Whether any migration is configured; reads skip the rest when none is.
    pub fn is_active(&self) -> bool {
        !self.migrations.is_empty()
    }

    /// The record a read of `key` returns: migrated when it is older than its
    /// target (and then written back in the background), else as read.
    pub fn on_read(&self, key: &str, record: Record) -> Record {
        // Keys outside every migration prefix (most reads) stop here,
        // without reading the clock.
        let Some(chain) = self.migrations.chain_for(key) else {
            return record;
        };
        // The engine's clock is the one clock for expiry; it never goes back.
        let now = self.engine.now_millis();
        match chain.plan(&record, now) {
            Plan::Uncovered | Plan::Current => record,
            Plan::NewerThanKnown => {
                self.counters
                    .newer_than_known
                    .fetch_add(1, Ordering::Relaxed);
                record
            }
            Plan::Failed(reason) => {
                let failed = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                // At most one line a second: a hot unmigratable key must not
                // flood the log. The key stays out of it: keys can be secrets.
                let last = self.last_failure_log.load(Ordering::Relaxed);
                if now >= last.saturating_add(1000)
                    && self
                        .last_failure_log
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        prefix = chain.prefix.as_str(),
                        %reason,
                        failed_reads_so_far = failed,
                        "a record read could not be migrated; returned as stored"
                    );
                }
                record
            }
            Plan::Migrated(migrated) => {
                self.counters.migrated_reads.fetch_add(1, Ordering::Relaxed);
                self.write_back(key, &migrated);
                migrated
            }
        }
    }

    /// Like [`LazyMigrator::on_read`], but a large record that needs a
    /// migration is migrated on the blocking pool: parsing, patching and
    /// serializing megabytes of JSON would stall the async worker.
    pub async fn on_read_async(
        self: &Arc<Self>,
        key: &str,
        record: Record,
    ) -> Result<Record, EngineError> {
        let needs_work = record.value.len() > INLINE_MIGRATE_BYTES
            && self
                .migrations
                .chain_for(key)
                .is_some_and(|chain| record.schema_version.max(1) < chain.target);
        if !needs_work {
            return Ok(self.on_read(key, record));
        }
        let migrator = Arc::clone(self);
        let key = key.to_string();
        tokio::task::spawn_blocking(move || migrator.on_read(&key, record))
            .await
            .map_err(|error| EngineError::Storage(format!("a migration task failed: {error}")))
    }

    /// Counts since the server started.
    pub fn counts(&self) -> LazyCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        LazyCounts {
            migrated_reads: load(&counters.migrated_reads),
            written_back: load(&counters.written_back),
            lost_to_writers: load(&counters.lost_to_writers),
            skipped: load(&counters.skipped),
            write_errors: load(&counters.write_errors),
            failed: load(&counters.failed),
            newer_than_known: load(&counters.newer_than_known),
        }
    }

    /// Starts the write-back of `migrated` unless one for the key is in
    /// flight or there is no room.
    fn write_back(&self, key: &str, migrated: &Record) {
        let Ok(permit) = Arc::clone(&self.room).try_acquire_owned() else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !in_flight.insert(key.to_string()) {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // Relies on the engine's strong reads plus `IfVersion`, not on the change feed.
        let op = write_back_op(key, migrated.clone());
        let engine = Arc::clone(&self.engine);
        let in_flight = Arc::clone(&self.in_flight);
        let counters = Arc::clone(&self.counters);
        let key = key.to_string();
        tokio::spawn(async move {
            let result = engine.write(vec![WriteOp::Put(op)]).await;
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            drop(permit);
            match result {
                Ok(_) => counters.written_back.fetch_add(1, Ordering::Relaxed),
                // A writer got there first: its value stands, ours is moot.
                Err(EngineError::PreconditionFailed { .. }) => {
                    counters.lost_to_writers.fetch_add(1, Ordering::Relaxed)
                }
                Err(error) => {
                    tracing::warn!(error = %error.log_summary(), "a lazy migration write-back failed; the next read retries");
                    counters.write_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
}

/// The compare-and-set that stores a migrated record over the version it was
/// read at, keeping its expiry.
pub fn write_back_op(key: &str, migrated: Record) -> PutOp {
    PutOp {
        key: key.to_string(),
        kind: migrated.kind,
        value: migrated.value,
        metadata: migrated.metadata,
        expire_at_millis: migrated.expire_at_millis,
        schema_version: migrated.schema_version,
        precondition: Precondition::IfVersion(migrated.version),
    }
}
