//! The KV service: reads, writes, batches and listings of a client's keys,
//! over the [`RecordStore`] that applies the rules every such access obeys.

use std::sync::Arc;

use crate::engine::{ChangeSubscription, Engine, EngineError, ScanRequest, WriteOp, WriteOutcome};
use crate::migrate::LazyMigrator;

use super::fallback;
use super::limits::*;
use super::page_token;
use super::validate::{op_size, validate_key, validate_prefix};
use super::value::{entry_from_record, parse_metadata};
use super::{
    invalid, DeleteCommand, Entry, FieldViolation, KvError, ListPage, ListedKey, Mutation,
    MutationResult, PutCommand, PutResult, RecordStore, ValueType,
};

/// The key-value service.
#[derive(Clone)]
pub struct KvService {
    /// The one path to records (owner checks, lazy migration, writes).
    pub(super) store: RecordStore,
    pub(super) fallbacks: Arc<fallback::FallbackCounters>,
}

impl KvService {
    /// A service over `engine`, taking time from its clock.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self::over(RecordStore::new(engine))
    }

    /// A service over `store`.
    pub fn over(store: RecordStore) -> Self {
        Self {
            store,
            fallbacks: Arc::default(),
        }
    }

    /// The same service, migrating records as they are read (see
    /// [`crate::migrate::lazy`]).
    pub fn with_lazy_migration(mut self, migrator: Arc<LazyMigrator>) -> Self {
        self.store = self.store.with_lazy_migration(migrator);
        self
    }

    /// The path to records the service reads and writes through.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// The engine the service runs on.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        self.store.engine()
    }

    /// Subscribes to the engine's change feed: every committed mutation, in
    /// commit order, e.g. to invalidate an in-memory cache. A subscriber that
    /// lags behind must treat `RecvError::Lagged` as "anything may have
    /// changed". See [`crate::engine::changes`].
    pub fn subscribe_changes(&self) -> ChangeSubscription {
        self.store.subscribe_changes()
    }

    /// Reads one key; `None` when it is absent or expired.
    pub async fn get(&self, key: &str, value_type: ValueType) -> Result<Option<Entry>, KvError> {
        validate_key("key", key).map_err(|violation| KvError::InvalidArgument(vec![violation]))?;
        self.store.check_owner("key", key)?;
        let Some(record) = self.store.get(key).await? else {
            return Ok(None);
        };
        entry_from_record(key, record, value_type).map(Some)
    }

    /// Reads up to [`MAX_BATCH_GET_KEYS`] keys, one result per key in order.
    pub async fn batch_get(
        &self,
        keys: &[String],
        value_type: ValueType,
    ) -> Result<Vec<Option<Entry>>, KvError> {
        if keys.is_empty() || keys.len() > MAX_BATCH_GET_KEYS {
            return Err(invalid(
                "keys",
                format!(
                    "{} keys requested; a batch reads 1 to {MAX_BATCH_GET_KEYS} keys",
                    keys.len()
                ),
            ));
        }
        let violations: Vec<FieldViolation> = keys
            .iter()
            .enumerate()
            .filter_map(|(index, key)| validate_key(&format!("keys[{index}]"), key).err())
            .collect();
        if !violations.is_empty() {
            return Err(KvError::InvalidArgument(violations));
        }
        for (index, key) in keys.iter().enumerate() {
            self.store
                .check_owner_with(key, || format!("keys[{index}]"))?;
        }
        // The engine sums the sizes before it copies any value, so a small
        // request naming one huge key many times costs no more than the limit.
        let records = self
            .store
            .get_many_within(keys, MAX_RESPONSE_BYTES)
            .await
            .map_err(|error| match error {
                EngineError::TooLarge { limit, actual } => KvError::ResponseTooLarge {
                    what: "the batch response",
                    limit,
                    actual: usize::try_from(actual).unwrap_or(usize::MAX),
                },
                other => other.into(),
            })?;
        let mut entries = Vec::with_capacity(records.len());
        for (record, key) in records.into_iter().zip(keys) {
            entries.push(match record {
                Some(record) => Some(entry_from_record(key, record, value_type)?),
                None => None,
            });
        }
        Ok(entries)
    }

    /// Writes one key.
    pub async fn put(&self, command: PutCommand) -> Result<PutResult, KvError> {
        let op = self.store.prepare_put("", command)?;
        let expire_at_millis = op.expire_at_millis;
        let version = self.store.put(op).await?;
        Ok(PutResult {
            version,
            expire_at_millis,
        })
    }

    /// Deletes one key, returning whether it existed.
    pub async fn delete(&self, command: DeleteCommand) -> Result<bool, KvError> {
        let op = self.store.prepare_delete("", command)?;
        self.store.delete(op).await
    }

    /// Applies up to [`MAX_BATCH_WRITE_MUTATIONS`] mutations atomically.
    pub async fn batch_write(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<Vec<MutationResult>, KvError> {
        if mutations.is_empty() || mutations.len() > MAX_BATCH_WRITE_MUTATIONS {
            return Err(invalid(
                "mutations",
                format!(
                    "{} mutations; a batch holds 1 to {MAX_BATCH_WRITE_MUTATIONS}",
                    mutations.len()
                ),
            ));
        }
        let mut ops = Vec::with_capacity(mutations.len());
        let mut violations = Vec::new();
        let mut total_bytes = 0usize;
        for (index, mutation) in mutations.into_iter().enumerate() {
            let prepared = match mutation {
                Mutation::Put(put) => self
                    .store
                    .prepare_put(&format!("mutations[{index}].put."), put)
                    .map(WriteOp::Put),
                Mutation::Delete(delete) => self
                    .store
                    .prepare_delete(&format!("mutations[{index}].delete."), delete)
                    .map(WriteOp::Delete),
            };
            match prepared {
                Ok(op) => {
                    total_bytes += op_size(&op);
                    ops.push(op);
                }
                Err(KvError::InvalidArgument(mut found)) => violations.append(&mut found),
                Err(other) => return Err(other),
            }
        }
        if !violations.is_empty() {
            return Err(KvError::InvalidArgument(violations));
        }
        if total_bytes > MAX_BATCH_WRITE_BYTES {
            return Err(invalid(
                "mutations",
                format!("batch is {total_bytes} bytes; the limit is {MAX_BATCH_WRITE_BYTES} bytes"),
            ));
        }
        let expiries: Vec<Option<u64>> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put(put) => put.expire_at_millis,
                WriteOp::Delete(_) => None,
            })
            .collect();
        let outcomes = self.store.write(ops).await?;
        Ok(outcomes
            .into_iter()
            .zip(expiries)
            .map(|(outcome, expire_at_millis)| match outcome {
                WriteOutcome::Put { version } => MutationResult::Put(PutResult {
                    version,
                    expire_at_millis,
                }),
                WriteOutcome::Delete { existed } => MutationResult::Delete { existed },
            })
            .collect())
    }

    /// Lists one page of live keys starting with `prefix`.
    pub async fn list(
        &self,
        prefix: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListPage, KvError> {
        validate_prefix("prefix", prefix)
            .map_err(|violation| KvError::InvalidArgument(vec![violation]))?;
        // A prefix inside an owned namespace is refused; one that spans owned
        // namespaces (the empty prefix) is answered without them by the engine.
        self.store.check_owner("prefix", prefix)?;
        let page_size = resolve_page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|description| invalid("page_size", description))?;
        let secret = self.store.engine().instance_secret();
        let token = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token::decode(secret, prefix, page_token)
                    .map_err(|error| invalid("page_token", error.to_string()))?,
            )
        };
        let (start_after, listing_position) = match token {
            None => (None, None),
            Some(token) => (Some(token.last_key), token.position),
        };
        // One extra record tells whether another page exists. A call examines
        // at most MAX_LIST_EXAMINED stored records; when dead ones (expired,
        // not yet compacted away) use that up, the page comes back short, even
        // empty, with a token that resumes after the last record examined.
        let page = self
            .store
            .engine()
            .scan(ScanRequest {
                prefix: prefix.to_string(),
                start_after,
                limit: page_size + 1,
                include_values: false,
                max_examined: MAX_LIST_EXAMINED.max(page_size + 1),
            })
            .await?;
        // Every page reports the first page's snapshot: "List every page,
        // then Watch after it" then misses nothing (later pages may show
        // newer changes too, which the Watch repeats).
        let position = listing_position.unwrap_or(page.position);
        let mut records = page.entries;
        let more = records.len() > page_size;
        records.truncate(page_size);
        let next_page_token = match (more, records.last(), page.resume_after) {
            (true, Some((last, _)), _) => page_token::encode(secret, prefix, last, position),
            (false, _, Some(resume_after)) => {
                page_token::encode(secret, prefix, &resume_after, position)
            }
            _ => String::new(),
        };
        let keys = records
            .into_iter()
            .map(|(name, record)| {
                let metadata = parse_metadata(&name, record.metadata.as_deref())?;
                Ok(ListedKey {
                    name,
                    expire_at_millis: record.expire_at_millis,
                    metadata,
                    version: record.version,
                    schema_version: record.schema_version,
                })
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        Ok(ListPage {
            keys,
            next_page_token,
            position,
        })
    }
}
