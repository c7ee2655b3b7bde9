//! The RocksDB engine behind the [`Engine`] and [`LocalStorage`] traits.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::open::create_private_dir;
use super::scan::{count_live, namespace_ranges};
use super::writer::Solo;
use super::*;
use crate::clock::Clock;
use crate::engine::changes::ChangeSubscription;
use crate::engine::{
    BackupInfo, Engine, HistoryError, HistoryPage, HistoryPosition, LocalNamespaceStats,
    LocalStorage, NamespaceStats, Record, ScanPage, ScanRequest, StorageSummary, WriteOp,
    WriteReceipt,
};

/// How long a scan waits for the writer to publish a commit its snapshot
/// already holds: the writer publishes right after writing, so this is
/// reached only when the writer has stopped.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Inner {
    pub(super) fn flush(&self) -> Result<(), EngineError> {
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
        let page = self.blocking(move |inner| inner.scan(&request)).await?;
        // The snapshot may hold a commit the writer has not published yet
        // (it publishes right after its write); wait for it, so that reading
        // history after the page's position never finds it ahead.
        let feed = self.inner.feed.position();
        if !feed.reached(page.position) {
            let deadline = std::time::Instant::now() + PUBLISH_WAIT;
            feed.wait_for(page.position, deadline)
                .await
                .map_err(|error| EngineError::Unavailable(error.to_string()))?;
        }
        Ok(page)
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<WriteReceipt, EngineError> {
        if ops.is_empty() {
            return Ok(WriteReceipt {
                outcomes: Vec::new(),
                sequence: self.acknowledged_sequence(),
            });
        }
        self.writer.submit(&self.inner, ops).await
    }

    fn subscribe(&self) -> ChangeSubscription {
        self.inner.feed.subscribe()
    }

    fn acknowledged_sequence(&self) -> u64 {
        // The writer publishes a commit before it answers any of its
        // callers, so the published sequence covers every returned one.
        self.inner.feed.published_sequence()
    }

    fn now_millis(&self) -> u64 {
        self.inner.clock.now_millis()
    }

    async fn flush(&self) -> Result<(), EngineError> {
        // A flush is for shutdown: mark the stop clean first, so the next
        // open continues its sequences without a gap even if this process
        // exits without dropping the engine.
        // Failing that (a dead writer) is safe: the next open treats the
        // stop as unclean and skips the unused sequences.
        if let Err(error) = self.writer.submit_solo(&self.inner, Solo::Seal).await {
            tracing::warn!(error = %error.log_summary(), "could not mark the stop clean");
        }
        self.blocking(|inner| inner.flush()).await
    }

    fn instance_secret(&self) -> &[u8] {
        &self.inner.secret
    }

    fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
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
                    })
                })
                .collect()
        })
        .await
    }

    fn history_id(&self) -> u64 {
        self.inner.history.id
    }

    async fn history_bounds(&self) -> Result<(u64, u64), EngineError> {
        Ok(self.inner.history_bounds())
    }

    async fn read_history(
        &self,
        after: HistoryPosition,
        max_events: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_history(after, max_events))
            .await
            .map_err(|error| EngineError::Storage(format!("history task failed: {error}")))?
    }

    fn local(&self) -> Option<&dyn LocalStorage> {
        Some(self)
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
        self.writer
            .submit_solo(&self.inner, Solo::Clear(id))
            .await?;
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

#[async_trait]
impl LocalStorage for RocksEngine {
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

    async fn trim_history(&self) -> Result<u64, EngineError> {
        self.blocking(|inner| inner.trim_history()).await
    }

    async fn local_namespace_stats(&self) -> Result<Vec<LocalNamespaceStats>, EngineError> {
        self.blocking(|inner| {
            (0..inner.namespaces.len())
                .map(|id| {
                    let property = |name: &str| inner.int_property(id, name);
                    Ok(LocalNamespaceStats {
                        prefix: inner.namespaces.prefix(id).to_string(),
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
}
