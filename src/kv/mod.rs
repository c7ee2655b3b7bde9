//! The key-value service's domain logic: validation, value representations,
//! expiry, compare-and-set and paging. No transport types live here; the gRPC
//! adapter in `crate::api::kv` converts to and from these.

pub mod fallback;
pub mod limits;
mod page_token;
pub mod patch;

use std::sync::Arc;

use thiserror::Error;

use crate::engine::{
    ChangeSubscription, DeleteOp, Engine, EngineError, Precondition, PutOp, Record, ScanRequest,
    ValueKind, WriteOp, WriteOutcome,
};
use crate::migrate::LazyMigrator;
pub use fallback::{FallbackCounts, FallbackReason};
use limits::*;
pub use page_token::PageTokenError;
pub use patch::{PatchCommand, PatchResult, PatchTtl};

/// A value as clients write it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A UTF-8 string.
    Text(String),
    /// A JSON value.
    Json(serde_json::Value),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// A value as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadValue {
    /// A UTF-8 string.
    Text(String),
    /// Serialized JSON, still to be parsed. It stays serialized so that the
    /// transport builds its own representation in one pass, within its
    /// nesting limit ([`MAX_JSON_DEPTH`]) and response budget, instead of
    /// holding a parsed tree and a converted one at once. Text read as JSON
    /// may turn out not to be JSON then ([`KvError::NotConvertible`]).
    Json(Vec<u8>),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// The representation a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueType {
    /// The representation the value was written in.
    #[default]
    AsStored,
    /// Text.
    Text,
    /// JSON.
    Json,
    /// Bytes.
    Bytes,
}

/// When a written key expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiration {
    /// Never.
    #[default]
    Never,
    /// After this many nanoseconds (at least [`MIN_TTL`]). Signed, so that
    /// a negative time to live is refused with its value like any other.
    TtlNanos(i128),
    /// At this instant, in nanoseconds since the Unix epoch (at least
    /// [`MIN_TTL`] after now). Kept in nanoseconds so that the check against
    /// the minimum is exact; the stored expiry is rounded up to the
    /// millisecond, so it never comes early.
    AtNanos(i128),
}

/// Writes one key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PutCommand {
    /// The key.
    pub key: String,
    /// The value; required.
    pub value: Option<Value>,
    /// Metadata to store with the value.
    pub metadata: Option<serde_json::Value>,
    /// When the key expires.
    pub expiration: Expiration,
    /// A condition checked atomically with the write.
    pub precondition: Precondition,
    /// The schema version of the value's format; 0 means 1.
    pub schema_version: u32,
}

/// Deletes one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteCommand {
    /// The key.
    pub key: String,
    /// Delete only if the key's version equals this.
    pub if_version: Option<u64>,
}

/// One mutation of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// A put.
    Put(PutCommand),
    /// A delete.
    Delete(DeleteCommand),
}

/// A live key with its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The value, in the requested representation.
    pub value: ReadValue,
    /// The metadata, if any.
    pub metadata: Option<serde_json::Value>,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// The key's version.
    pub version: u64,
    /// The record's schema version.
    pub schema_version: u32,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    /// The key's new version.
    pub version: u64,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
}

/// What one mutation of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationResult {
    /// A put.
    Put(PutResult),
    /// A delete, and whether the key existed.
    Delete {
        /// Whether a live key was deleted.
        existed: bool,
    },
}

/// A key in a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedKey {
    /// The key.
    pub name: String,
    /// Expiry in milliseconds since the Unix epoch.
    pub expire_at_millis: Option<u64>,
    /// The metadata, if any.
    pub metadata: Option<serde_json::Value>,
    /// The key's version.
    pub version: u64,
    /// The record's schema version as stored.
    pub schema_version: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListPage {
    /// Keys in byte order.
    pub keys: Vec<ListedKey>,
    /// The token for the next page; empty when the listing is complete.
    pub next_page_token: String,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, e.g. `mutations[3].put.key`.
    pub field: String,
    /// What is wrong, with the limit and the actual size where there is one.
    pub description: String,
}

impl FieldViolation {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A failure of a KV operation.
#[derive(Debug, Error)]
pub enum KvError {
    /// The request is malformed; nothing was done.
    #[error("{}", describe_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A compare-and-set precondition did not hold; nothing was written.
    #[error("precondition failed for key {key:?}: {}", describe_precondition(*.precondition, *.current_version))]
    PreconditionFailed {
        /// The key.
        key: String,
        /// The mutation's index within a batch.
        index: Option<usize>,
        /// The condition that failed.
        precondition: Precondition,
        /// The key's current version, `None` when absent.
        current_version: Option<u64>,
    },
    /// The stored value cannot be returned in the requested representation.
    #[error("value of key {key:?} cannot be read as {requested}: {reason}")]
    NotConvertible {
        /// The key.
        key: String,
        /// The representation asked for.
        requested: &'static str,
        /// Why not.
        reason: String,
    },
    /// A value read as JSON would not fit in the response as
    /// `google.protobuf.Value`, whose encoding can be several times larger
    /// than the stored JSON (a number of 2 bytes becomes 11).
    #[error("key {key:?} read as JSON does not fit in the response: as google.protobuf.Value it needs more than the {available} bytes left of the {limit}-byte response limit (stored, it is {stored} bytes); read it with type TEXT or BYTES, which cost its stored size")]
    JsonResponseTooLarge {
        /// The key.
        key: String,
        /// The stored size of the value.
        stored: usize,
        /// The bytes that were left for it in the response.
        available: usize,
        /// The response limit.
        limit: usize,
    },
    /// Stored metadata nests deeper than [`MAX_JSON_DEPTH`]; it was written
    /// before the limit existed and cannot be sent to standard clients.
    #[error("metadata of key {key:?} nests more than {MAX_JSON_DEPTH} levels deep, the limit for JSON; rewrite the key with shallower metadata")]
    MetadataTooDeep {
        /// The key.
        key: String,
    },
    /// The response would exceed a size limit.
    #[error("{what} would be {actual} bytes; the limit is {limit} bytes")]
    ResponseTooLarge {
        /// What is too large.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The size it would have.
        actual: usize,
    },
    /// The key or prefix lies in a namespace another service owns.
    #[error("{field}: keys starting with {namespace:?} belong to {owner}; use that service")]
    PermissionDenied {
        /// The request field naming the key.
        field: String,
        /// The owned namespace's prefix.
        namespace: String,
        /// The owning service.
        owner: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(EngineError),
    /// The key does not exist (or has expired), and the operation needs it.
    #[error("key {key:?} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The operation needs a JSON value (a JSON object, for an object merge
    /// patch) and the key holds something else.
    #[error("key {key:?} cannot be patched: {reason}")]
    NotJson {
        /// The key.
        key: String,
        /// What the key holds instead.
        reason: String,
    },
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_precondition(precondition: Precondition, current: Option<u64>) -> String {
    let current = match current {
        Some(version) => format!("current version is {version}"),
        None => "the key does not exist".to_string(),
    };
    match precondition {
        Precondition::IfVersion(expected) => format!("expected version {expected}, {current}"),
        Precondition::IfAbsent => format!("expected the key to be absent, {current}"),
        Precondition::None => current,
    }
}

impl From<EngineError> for KvError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::PreconditionFailed {
                index,
                key,
                precondition,
                current_version,
            } => KvError::PreconditionFailed {
                key,
                index: Some(index),
                precondition,
                current_version,
            },
            other => KvError::Engine(other),
        }
    }
}

fn invalid(field: impl Into<String>, description: impl Into<String>) -> KvError {
    KvError::InvalidArgument(vec![FieldViolation::new(field, description)])
}

/// The key-value service.
#[derive(Clone)]
pub struct KvService {
    engine: Arc<dyn Engine>,
    /// Migrates records older than their prefix's target as they are read.
    lazy_migration: Option<Arc<LazyMigrator>>,
    fallbacks: Arc<fallback::FallbackCounters>,
}

impl KvService {
    /// A service over `engine`, taking time from its clock.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            lazy_migration: None,
            fallbacks: Arc::default(),
        }
    }

    /// The same service, migrating records as they are read (see
    /// [`crate::migrate::lazy`]).
    pub fn with_lazy_migration(mut self, migrator: Arc<LazyMigrator>) -> Self {
        self.lazy_migration = migrator.is_active().then_some(migrator);
        self
    }

    /// A record as a read returns it: migrated when a configured migration
    /// says it is out of date.
    async fn migrate_on_read(&self, key: &str, record: Record) -> Result<Record, KvError> {
        match &self.lazy_migration {
            Some(migrator) => Ok(migrator.on_read_async(key, record).await?),
            None => Ok(record),
        }
    }

    /// The engine the service runs on.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Subscribes to the engine's change feed: every committed mutation, in
    /// commit order, e.g. to invalidate an in-memory cache. A subscriber that
    /// lags behind must treat `RecvError::Lagged` as "anything may have
    /// changed". See [`crate::engine::changes`].
    pub fn subscribe_changes(&self) -> ChangeSubscription {
        self.engine.subscribe()
    }

    /// The time TTLs count from: the engine's now, which never goes back
    /// (the engine's clock is the one clock for expiry).
    fn now_millis(&self) -> u64 {
        self.engine.now_millis()
    }

    /// Refuses a key (or listing prefix) inside a namespace another service
    /// owns: those records are that service's internals.
    fn check_owner(&self, field: &str, key: &str) -> Result<(), KvError> {
        self.check_owner_with(key, || field.to_string())
    }

    /// [`KvService::check_owner`] naming the field only when it refuses, so
    /// per-key checks of a batch build no field name on the hot path.
    fn check_owner_with(&self, key: &str, field: impl FnOnce() -> String) -> Result<(), KvError> {
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

    /// Reads one key; `None` when it is absent or expired.
    pub async fn get(&self, key: &str, value_type: ValueType) -> Result<Option<Entry>, KvError> {
        validate_key("key", key).map_err(|violation| KvError::InvalidArgument(vec![violation]))?;
        self.check_owner("key", key)?;
        let Some(record) = self.engine.get(key.to_string()).await? else {
            return Ok(None);
        };
        let record = self.migrate_on_read(key, record).await?;
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
            self.check_owner_with(key, || format!("keys[{index}]"))?;
        }
        // The engine sums the sizes before it copies any value, so a small
        // request naming one huge key many times costs no more than the limit.
        let records = self
            .engine
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
                Some(record) => {
                    let record = self.migrate_on_read(key, record).await?;
                    Some(entry_from_record(key, record, value_type)?)
                }
                None => None,
            });
        }
        Ok(entries)
    }

    /// Writes one key.
    pub async fn put(&self, command: PutCommand) -> Result<PutResult, KvError> {
        let op = self.prepare_put("", command)?;
        let expire_at_millis = op.expire_at_millis;
        let outcomes = self
            .write(vec![WriteOp::Put(op)])
            .await
            .map_err(single_op)?;
        match outcomes.first() {
            Some(WriteOutcome::Put { version }) => Ok(PutResult {
                version: *version,
                expire_at_millis,
            }),
            _ => Err(KvError::Engine(EngineError::Storage(
                "engine returned no outcome for a put".into(),
            ))),
        }
    }

    /// Deletes one key, returning whether it existed.
    pub async fn delete(&self, command: DeleteCommand) -> Result<bool, KvError> {
        let op = prepare_delete("", command)?;
        self.check_owner("key", &op.key)?;
        let outcomes = self
            .write(vec![WriteOp::Delete(op)])
            .await
            .map_err(single_op)?;
        Ok(matches!(
            outcomes.first(),
            Some(WriteOutcome::Delete { existed: true })
        ))
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
                    .prepare_put(&format!("mutations[{index}].put."), put)
                    .map(WriteOp::Put),
                Mutation::Delete(delete) => {
                    let field_prefix = format!("mutations[{index}].delete.");
                    prepare_delete(&field_prefix, delete).and_then(|op| {
                        self.check_owner_with(&op.key, || format!("{field_prefix}key"))?;
                        Ok(WriteOp::Delete(op))
                    })
                }
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
        let outcomes = self.write(ops).await?;
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
        self.check_owner("prefix", prefix)?;
        let page_size =
            crate::kv::limits::resolve_page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
                .map_err(|description| invalid("page_size", description))?;
        let secret = self.engine.instance_secret();
        let start_after = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token::decode(secret, prefix, page_token)
                    .map_err(|error| invalid("page_token", error.to_string()))?,
            )
        };
        // One extra record tells whether another page exists. A call examines
        // at most MAX_LIST_EXAMINED stored records; when dead ones (expired,
        // not yet compacted away) use that up, the page comes back short, even
        // empty, with a token that resumes after the last record examined.
        let page = self
            .engine
            .scan(ScanRequest {
                prefix: prefix.to_string(),
                start_after,
                limit: page_size + 1,
                include_values: false,
                max_examined: MAX_LIST_EXAMINED.max(page_size + 1),
            })
            .await?;
        let mut records = page.entries;
        let more = records.len() > page_size;
        records.truncate(page_size);
        let next_page_token = match (more, records.last(), page.resume_after) {
            (true, Some((last, _)), _) => page_token::encode(secret, prefix, last),
            (false, _, Some(resume_after)) => page_token::encode(secret, prefix, &resume_after),
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
        })
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, KvError> {
        Ok(self.engine.write(ops).await?.outcomes)
    }

    fn prepare_put(&self, field_prefix: &str, command: PutCommand) -> Result<PutOp, KvError> {
        let mut violations = Vec::new();
        if let Err(violation) = validate_key(&format!("{field_prefix}key"), &command.key) {
            violations.push(violation);
        }
        let (kind, value) = match command.value {
            None => {
                violations.push(FieldViolation::new(
                    format!("{field_prefix}value"),
                    "a value is required: set text, json or bytes",
                ));
                (ValueKind::Bytes, Vec::new())
            }
            Some(Value::Text(text)) => (ValueKind::Text, text.into_bytes()),
            Some(Value::Bytes(bytes)) => (ValueKind::Bytes, bytes),
            Some(Value::Json(json)) => {
                let depth = json_depth(&json);
                if depth > MAX_JSON_DEPTH {
                    violations.push(FieldViolation::new(
                        format!("{field_prefix}json"),
                        too_deep(depth),
                    ));
                }
                (ValueKind::Json, serialize_json(&json))
            }
        };
        if value.len() > MAX_VALUE_BYTES {
            violations.push(FieldViolation::new(
                format!("{field_prefix}value"),
                format!(
                    "value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (25 MiB)",
                    value.len()
                ),
            ));
        }
        if let Some(metadata) = &command.metadata {
            let depth = json_depth(metadata);
            if depth > MAX_JSON_DEPTH {
                violations.push(FieldViolation::new(
                    format!("{field_prefix}metadata"),
                    too_deep(depth),
                ));
            }
        }
        let metadata = command.metadata.as_ref().map(serialize_json);
        if let Some(metadata) = &metadata {
            if metadata.len() > MAX_METADATA_BYTES {
                violations.push(FieldViolation::new(
                    format!("{field_prefix}metadata"),
                    format!(
                        "metadata is {} bytes serialized; the limit is {MAX_METADATA_BYTES} bytes",
                        metadata.len()
                    ),
                ));
            }
        }
        // A TTL counts from the engine's now, which never goes back: with a
        // clock stepped back, the service's clock alone would make a fresh
        // write expire early (or be born expired).
        let expire_at_millis =
            match resolve_expiration(field_prefix, command.expiration, self.now_millis()) {
                Ok(expire_at) => expire_at,
                Err(violation) => {
                    violations.push(violation);
                    None
                }
            };
        if !violations.is_empty() {
            return Err(KvError::InvalidArgument(violations));
        }
        let schema_version = resolve_schema_version(field_prefix, command.schema_version)?;
        self.check_owner_with(&command.key, || format!("{field_prefix}key"))?;
        Ok(PutOp {
            key: command.key,
            kind,
            value,
            metadata,
            expire_at_millis,
            schema_version,
            precondition: command.precondition,
        })
    }
}

/// The schema version a put stores: 0 (unset) means 1; more than
/// [`MAX_SCHEMA_VERSION`] is refused.
fn resolve_schema_version(field_prefix: &str, requested: u32) -> Result<u32, KvError> {
    match requested {
        0 => Ok(1),
        version if version > MAX_SCHEMA_VERSION => Err(invalid(
            format!("{field_prefix}schema_version"),
            format!("schema_version is {version}; the limit is {MAX_SCHEMA_VERSION}"),
        )),
        version => Ok(version),
    }
}

fn prepare_delete(field_prefix: &str, command: DeleteCommand) -> Result<DeleteOp, KvError> {
    validate_key(&format!("{field_prefix}key"), &command.key)
        .map_err(|violation| KvError::InvalidArgument(vec![violation]))?;
    Ok(DeleteOp {
        key: command.key,
        precondition: command
            .if_version
            .map_or(Precondition::None, Precondition::IfVersion),
    })
}

/// A single-key call reports no batch index.
fn single_op(error: KvError) -> KvError {
    match error {
        KvError::PreconditionFailed {
            key,
            precondition,
            current_version,
            ..
        } => KvError::PreconditionFailed {
            key,
            index: None,
            precondition,
            current_version,
        },
        other => other,
    }
}

fn op_size(op: &WriteOp) -> usize {
    match op {
        WriteOp::Put(put) => {
            put.key.len() + put.value.len() + put.metadata.as_ref().map_or(0, Vec::len)
        }
        WriteOp::Delete(delete) => delete.key.len(),
    }
}

/// Checks a listing or purge prefix against the key size limit (a prefix
/// longer than any key matches nothing, and is a mistake).
pub fn validate_prefix(field: &str, prefix: &str) -> Result<(), FieldViolation> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(FieldViolation::new(
            field,
            format!(
                "prefix is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                prefix.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a key against the limits.
pub fn validate_key(field: &str, key: &str) -> Result<(), FieldViolation> {
    if key.is_empty() {
        return Err(FieldViolation::new(field, "key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(FieldViolation::new(
            field,
            format!(
                "key is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        ));
    }
    if key == "." || key == ".." {
        return Err(FieldViolation::new(
            field,
            format!("key must not be {key:?} (reserved, as in Workers KV)"),
        ));
    }
    Ok(())
}

fn resolve_expiration(
    field_prefix: &str,
    expiration: Expiration,
    now_millis: u64,
) -> Result<Option<u64>, FieldViolation> {
    const NANOS_PER_MILLI: i128 = 1_000_000;
    let min_nanos = MIN_TTL.as_nanos() as i128;
    let min = format_seconds(min_nanos);
    match expiration {
        Expiration::Never => Ok(None),
        Expiration::TtlNanos(ttl_nanos) => {
            let field = format!("{field_prefix}ttl");
            if ttl_nanos < min_nanos {
                return Err(FieldViolation::new(
                    field,
                    format!("ttl is {}; the minimum is {min}", format_seconds(ttl_nanos)),
                ));
            }
            // Round up so that an expiry never comes early.
            // Positive here: at least a second.
            let ttl_millis =
                u64::try_from(ttl_nanos.saturating_add(NANOS_PER_MILLI - 1) / NANOS_PER_MILLI)
                    .unwrap_or(u64::MAX);
            let expire_at = now_millis.saturating_add(ttl_millis);
            if expire_at > MAX_EXPIRE_AT_MILLIS {
                return Err(FieldViolation::new(
                    field,
                    format!(
                        "ttl is {}; it reaches past 9999-12-31T23:59:59.999Z, the latest expire_time",
                        format_seconds(ttl_nanos)
                    ),
                ));
            }
            Ok(Some(expire_at))
        }
        Expiration::AtNanos(at) => {
            let field = format!("{field_prefix}expire_time");
            let ahead = at.saturating_sub(i128::from(now_millis) * NANOS_PER_MILLI);
            if ahead < min_nanos {
                let actual = if ahead < 0 {
                    format!("{} in the past", format_seconds(-ahead))
                } else {
                    format!("{} from now", format_seconds(ahead))
                };
                return Err(FieldViolation::new(
                    field,
                    format!("expire_time is {actual}; it must be at least {min} in the future"),
                ));
            }
            // `at` is positive here: at least a second after now.
            let at_millis = at.saturating_add(NANOS_PER_MILLI - 1) / NANOS_PER_MILLI;
            if at_millis > i128::from(MAX_EXPIRE_AT_MILLIS) {
                return Err(FieldViolation::new(
                    field,
                    format!(
                        "expire_time is {} after the Unix epoch; the latest is \
                         9999-12-31T23:59:59.999Z",
                        format_seconds(at)
                    ),
                ));
            }
            Ok(Some(at_millis as u64))
        }
    }
}

/// A signed duration in nanoseconds as exact seconds, e.g. `0.999999999s`,
/// `-5s`, `1.5s`: error messages must never round a value across a limit.
pub fn format_seconds(nanos: i128) -> String {
    const NANOS_PER_SECOND: u128 = 1_000_000_000;
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    let (seconds, fraction) = (magnitude / NANOS_PER_SECOND, magnitude % NANOS_PER_SECOND);
    if fraction == 0 {
        return format!("{sign}{seconds}s");
    }
    let fraction = format!("{fraction:09}");
    format!("{sign}{seconds}.{}s", fraction.trim_end_matches('0'))
}

/// How deeply arrays and objects nest in `value`: 0 for a scalar, 1 for
/// `[1]`, 2 for `{"a": [1]}`.
pub fn json_depth(value: &serde_json::Value) -> usize {
    // Recursion is bounded: values come from protobuf messages, which standard
    // decoders refuse beyond 100 levels, or from serde_json, which stops at 128.
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn too_deep(depth: usize) -> String {
    format!("JSON nests {depth} levels deep; the limit is {MAX_JSON_DEPTH} levels of arrays and objects")
}

fn serialize_json(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a serde_json::Value cannot fail: its keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse_metadata(
    key: &str,
    metadata: Option<&[u8]>,
) -> Result<Option<serde_json::Value>, KvError> {
    let Some(bytes) = metadata else {
        return Ok(None);
    };
    let metadata: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
        KvError::Engine(EngineError::Corrupt {
            key: key.to_string(),
            reason: format!("metadata is not JSON: {error}"),
        })
    })?;
    // Writes refuse deeper metadata; older records may still hold some, and
    // sending it would produce a response standard clients cannot decode.
    if json_depth(&metadata) > MAX_JSON_DEPTH {
        return Err(KvError::MetadataTooDeep {
            key: key.to_string(),
        });
    }
    Ok(Some(metadata))
}

fn entry_from_record(key: &str, record: Record, value_type: ValueType) -> Result<Entry, KvError> {
    let metadata = parse_metadata(key, record.metadata.as_deref())?;
    let value = convert_value(key, record.kind, record.value, value_type)?;
    Ok(Entry {
        value,
        metadata,
        expire_at_millis: record.expire_at_millis,
        version: record.version,
        schema_version: record.schema_version,
    })
}

/// Converts a stored value to the requested representation. JSON stays
/// serialized (see [`ReadValue::Json`]).
pub fn convert_value(
    key: &str,
    kind: ValueKind,
    bytes: Vec<u8>,
    value_type: ValueType,
) -> Result<ReadValue, KvError> {
    let target = match value_type {
        ValueType::AsStored => match kind {
            ValueKind::Text => ValueType::Text,
            ValueKind::Json => ValueType::Json,
            ValueKind::Bytes => ValueType::Bytes,
        },
        other => other,
    };
    match target {
        ValueType::Bytes | ValueType::AsStored => Ok(ReadValue::Bytes(bytes)),
        ValueType::Text => {
            String::from_utf8(bytes)
                .map(ReadValue::Text)
                .map_err(|_| KvError::NotConvertible {
                    key: key.to_string(),
                    requested: "text",
                    reason: "the bytes are not valid UTF-8".into(),
                })
        }
        ValueType::Json => Ok(ReadValue::Json(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds print exactly, never rounded across a limit.
    #[test]
    fn seconds_format_exactly() {
        assert_eq!(format_seconds(999_999_999), "0.999999999s");
        assert_eq!(format_seconds(1_000_000_000), "1s");
        assert_eq!(format_seconds(1_500_000_000), "1.5s");
        assert_eq!(format_seconds(0), "0s");
        assert_eq!(format_seconds(-5_000_000_000), "-5s");
        assert_eq!(format_seconds(-1), "-0.000000001s");
        assert_eq!(
            format_seconds(i128::MIN),
            "-170141183460469231731687303715.884105728s"
        );
    }

    /// Depth counts nested arrays and objects.
    #[test]
    fn json_depth_counts_containers() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!([])), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, [2]], "b": 3})), 3);
    }

    /// A ttl under the minimum by a nanosecond is refused with its exact
    /// value; an expire_time is measured from now to the nanosecond.
    #[test]
    fn expirations_resolve_exactly() {
        let ttl = |nanos| resolve_expiration("", Expiration::TtlNanos(nanos), 0);
        assert_eq!(
            ttl(999_999_999).unwrap_err().description,
            "ttl is 0.999999999s; the minimum is 1s"
        );
        assert_eq!(ttl(1_000_000_000).unwrap(), Some(1000));
        assert_eq!(ttl(1_000_000_001).unwrap(), Some(1001), "rounded up");
        assert_eq!(
            ttl(-1).unwrap_err().description,
            "ttl is -0.000000001s; the minimum is 1s"
        );
        assert_eq!(ttl(i128::MAX).unwrap_err().field, "ttl", "too far");
        let at = |nanos| resolve_expiration("p.", Expiration::AtNanos(nanos), 5_000);
        let error = at(5_999_999_999).unwrap_err();
        assert_eq!(error.field, "p.expire_time");
        assert_eq!(
            error.description,
            "expire_time is 0.999999999s from now; it must be at least 1s in the future"
        );
        assert_eq!(at(6_000_000_000).unwrap(), Some(6000));
        assert_eq!(at(6_000_000_001).unwrap(), Some(6001), "rounded up");
    }
}
