//! What only an engine over local disk has: backups into a local directory,
//! figures of its table files, memtables, caches and write queue, and a
//! writer that can fail for good. A remote engine has none of these, so they
//! live outside the core [`crate::engine::Engine`] trait; the server asks
//! [`crate::engine::Engine::local`] for them and goes without when it is `None`.

use std::path::Path;

use async_trait::async_trait;

use super::EngineError;

/// Storage figures of one namespace that only a local store has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNamespaceStats {
    /// The namespace's prefix (empty for the default namespace).
    pub prefix: String,
    /// Bytes of table files on disk.
    pub table_files_bytes: u64,
    /// Bytes held in write buffers (memtables) not yet flushed.
    pub memtable_bytes: u64,
    /// Estimated bytes compaction still has to rewrite to reach its target
    /// shape (a backlog that keeps growing means writes outpace compaction).
    pub pending_compaction_bytes: u64,
}

/// Engine-wide storage figures, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageSummary {
    /// Bytes of the read cache in use.
    pub cache_used_bytes: u64,
    /// The read cache's capacity in bytes.
    pub cache_capacity_bytes: u64,
    /// Bytes of writes queued for commit (the write queue's budget in use).
    pub queued_write_bytes: u64,
    /// Times a read or a precondition check met a record that could not be
    /// decoded, since the engine opened.
    pub corrupt_records_found: u64,
    /// Undecodable records removed by an unconditional delete since the
    /// engine opened.
    pub corrupt_records_removed: u64,
}

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// Files in the backup.
    pub files: u64,
    /// Their total size in bytes (files shared with the live store by hard
    /// links count in full).
    pub bytes: u64,
}

/// The optional part of an engine: what a store on local disk offers.
#[async_trait]
pub trait LocalStorage: Send + Sync {
    /// Resolves, with the reason, once the engine can no longer serve writes
    /// (its writer died or the storage failed for good). Never resolves for a
    /// healthy engine. A server watches it to turn NOT_SERVING and exit, so an
    /// orchestrator restarts it.
    async fn failed(&self) -> String;

    /// Writes a consistent, point-in-time copy of every namespace and of the
    /// engine's own state into `dir` (which must not exist; its parent is
    /// created), while serving. Every write acknowledged before the call is
    /// in it. The copy is a data directory a server opens as it is.
    async fn backup(&self, dir: &Path) -> Result<BackupInfo, EngineError>;

    /// Engine-wide figures for metrics: read cache and write queue use,
    /// corrupt records met.
    async fn storage_summary(&self) -> Result<StorageSummary, EngineError>;

    /// Table-file, memtable and compaction figures of every namespace, in
    /// the order of [`crate::engine::Engine::namespace_stats`].
    async fn local_namespace_stats(&self) -> Result<Vec<LocalNamespaceStats>, EngineError>;

    /// Trims the change history to its retention now (a background pass
    /// does it every few seconds), returning the oldest resumable sequence.
    async fn trim_history(&self) -> Result<u64, EngineError>;
}
