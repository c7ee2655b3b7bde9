//! The one path to records of the services that serve a client's keys (KV
//! and the cache): the rules every read and write of such a key obeys, in one
//! place.
//!
//! - **Owner checks**: a key (or listing prefix) inside a namespace another
//!   service owns (`session:`) is refused; those records are its internals.
//! - **Lazy migration**: a record older than its prefix's target is migrated
//!   as it is read, and written back (see [`crate::migrate::lazy`]), whoever
//!   reads it.
//! - **Version preconditions**: every write goes to the engine with its
//!   precondition, and a failed one comes back as
//!   [`KvError::PreconditionFailed`].
//! - **The engine's write result** is read here only ([`RecordStore::write`]),
//!   so a change of its shape is adapted in one spot.

use std::sync::Arc;

use crate::engine::{
    ChangeSubscription, DeleteOp, Engine, EngineError, PutOp, Record, WriteOp, WriteOutcome,
    WriteReceipt,
};
use crate::migrate::LazyMigrator;

use super::validate::{prepare_delete, put_op};
use super::{DeleteCommand, KvError, PutCommand};

/// Records of the client-facing services, read and written under the KV
/// rules; cheap to clone.
#[derive(Clone)]
pub struct RecordStore {
    engine: Arc<dyn Engine>,
    /// Migrates records older than their prefix's target as they are read.
    lazy_migration: Option<Arc<LazyMigrator>>,
}

impl RecordStore {
    /// Records of `engine`, with TTLs counted on the engine's clock, not
    /// migrated on read.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            lazy_migration: None,
        }
    }

    /// The same store, migrating records as they are read (see
    /// [`crate::migrate::lazy`]).
    pub fn with_lazy_migration(mut self, migrator: Arc<LazyMigrator>) -> Self {
        self.lazy_migration = migrator.is_active().then_some(migrator);
        self
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Subscribes to the engine's change feed (see [`crate::engine::changes`]).
    pub fn subscribe_changes(&self) -> ChangeSubscription {
        self.engine.subscribe()
    }

    /// The time TTLs count from: the engine's now, which never goes back
    /// (the engine's clock is the one clock for expiry).
    pub fn now_millis(&self) -> u64 {
        self.engine.now_millis()
    }

    /// Refuses a key (or listing prefix) inside a namespace another service
    /// owns: those records are that service's internals.
    pub fn check_owner(&self, field: &str, key: &str) -> Result<(), KvError> {
        self.check_owner_with(key, || field.to_string())
    }

    /// [`RecordStore::check_owner`] naming the field only when it refuses,
    /// so per-key checks of a batch build no field name on the hot path.
    pub fn check_owner_with(
        &self,
        key: &str,
        field: impl FnOnce() -> String,
    ) -> Result<(), KvError> {
        let namespaces = self.engine.namespaces();
        if !namespaces.has_owners() {
            return Ok(());
        }
        match namespaces.owner_of(key) {
            None => Ok(()),
            Some((namespace, owner)) => Err(KvError::PermissionDenied {
                field: field(),
                namespace: namespace.to_string(),
                owner: owner.to_string(),
            }),
        }
    }

    /// Reads one live record, migrated when it is out of date. The key is
    /// the caller's to have validated and owner-checked.
    pub async fn get(&self, key: &str) -> Result<Option<Record>, KvError> {
        match self.engine.get(key.to_string()).await? {
            Some(record) => Ok(Some(self.migrate_on_read(key, record).await?)),
            None => Ok(None),
        }
    }

    /// Reads live records, one result per key in order, each migrated when
    /// out of date. The engine sums the sizes before it copies any value, so
    /// more than `max_bytes` in all is refused without reading them.
    pub async fn get_many_within(
        &self,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        let records = self.engine.get_many_within(keys, max_bytes).await?;
        let mut migrated = Vec::with_capacity(records.len());
        for (record, key) in records.into_iter().zip(keys) {
            migrated.push(match record {
                Some(record) => Some(self.migrate_record(key, record).await?),
                None => None,
            });
        }
        Ok(migrated)
    }

    /// A record as a read returns it: migrated when a configured migration
    /// says it is out of date.
    pub async fn migrate_on_read(&self, key: &str, record: Record) -> Result<Record, KvError> {
        Ok(self.migrate_record(key, record).await?)
    }

    async fn migrate_record(&self, key: &str, record: Record) -> Result<Record, EngineError> {
        match &self.lazy_migration {
            Some(migrator) => migrator.on_read_async(key, record).await,
            None => Ok(record),
        }
    }

    /// Checks a put against the limits and the namespace owners, its expiry
    /// counted from now, and turns it into its write operation.
    pub fn prepare_put(&self, field_prefix: &str, command: PutCommand) -> Result<PutOp, KvError> {
        // A TTL counts from the engine's now, which never goes back: a clock
        // stepped back cannot make a fresh write expire early.
        let op = put_op(field_prefix, command, self.now_millis())?;
        self.check_owner_with(&op.key, || format!("{field_prefix}key"))?;
        Ok(op)
    }

    /// Checks a delete and the namespace owners, and turns it into its write
    /// operation.
    pub fn prepare_delete(
        &self,
        field_prefix: &str,
        command: DeleteCommand,
    ) -> Result<DeleteOp, KvError> {
        let op = prepare_delete(field_prefix, command)?;
        self.check_owner_with(&op.key, || format!("{field_prefix}key"))?;
        Ok(op)
    }

    /// Applies `ops` atomically, one outcome per op, with the commit's
    /// sequence on the change feed; a failed precondition names the op's
    /// index. The one reader of the engine's write result.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<WriteReceipt, KvError> {
        Ok(self.engine.write(ops).await?)
    }

    /// Stores one put, returning the key's new version. A failed
    /// precondition carries no batch index.
    pub async fn put(&self, op: PutOp) -> Result<u64, KvError> {
        let receipt = self
            .write(vec![WriteOp::Put(op)])
            .await
            .map_err(super::error::single_op)?;
        Ok(receipt.put_version(0)?)
    }

    /// Applies one delete, returning whether a live key was deleted. A failed
    /// precondition carries no batch index.
    pub async fn delete(&self, op: DeleteOp) -> Result<bool, KvError> {
        let outcomes = self
            .write(vec![WriteOp::Delete(op)])
            .await
            .map_err(super::error::single_op)?;
        Ok(matches!(
            outcomes.first(),
            Some(WriteOutcome::Delete { existed: true })
        ))
    }
}
