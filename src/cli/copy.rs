//! `tierkv admin copy`: copies every live record of one store into another,
//! offline, engine to engine, each opened from its own configuration file
//! (typically an embedded RocksDB `data_dir` into an etcd cluster's prefix,
//! to move a single server to several replicas; see docs/replicas.md).
//!
//! What is copied: every record of every namespace, owned ones included
//! (sessions, cache entries), with its value, kind, metadata, expiry and
//! schema version. Records already expired by the copy's clock are left
//! behind. Versions are the target's own: every copied record gets a new
//! one, so `if_version` values, page tokens and Watch positions taken from
//! the source do not carry over.
//!
//! Why offline: with the source closed, a namespace-by-namespace walk is a
//! consistent snapshot and nothing written meanwhile can be missed. RocksDB
//! locks its directory, so a source held by a running server is refused.
//!
//! Restartable: after every batch a checkpoint (the namespace and the last
//! key done, and the source's history id) is stored in the target as server
//! state. Running the same command again resumes after it; the batch that
//! was in flight is written again, with the same content (the puts are
//! unconditional). A target holding records but no checkpoint is refused, so
//! a copy never overwrites data it did not write. A finished copy is
//! recorded too: running it again changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;

use super::error::{EXIT_INVALID, EXIT_OTHER, EXIT_PRECONDITION, EXIT_UNAVAILABLE};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, EngineKind};
use crate::engine::record::INLINE_VALUE_MAX;
use crate::engine::{
    Engine, EngineError, EtcdEngine, LockAttempt, Namespaces, Precondition, PutOp, Record,
    ScanRequest, WriteOp,
};
use crate::server;

/// The server-state name of the copy's checkpoint in the target.
const CHECKPOINT: &str = "admin_copy_checkpoint";
/// The lock a copy holds on its target, so two copies never interleave.
const LOCK: &str = "admin_copy";
/// How long a held copy lock is waited for: longer than the etcd lease
/// (10 s) a killed copy leaves behind.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Most stored records one scan call of the source examines.
const MAX_EXAMINED: usize = 10_000;
/// Most bytes of values and metadata read from the source at once (a single
/// larger record is read alone), so memory stays bounded by this and the
/// largest record whatever the store holds.
const READ_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// Records per batch written to a RocksDB target.
const ROCKS_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Attempts of one batch while the target is unavailable (an etcd election).
const WRITE_ATTEMPTS: u32 = 8;
/// Bytes counted per record beyond its key, value and metadata: the
/// engine's header and the feed entry (conservative).
const RECORD_OVERHEAD: usize = 128;

/// Arguments of `tierkv admin copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Configuration file of the store to copy from (its `[engine]`,
    /// `data_dir` and `namespaces`). The server using it must be stopped.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Configuration file of the store to copy into (typically `[engine]
    /// kind = "etcd"` with its `[engine.etcd]`). It must hold no records,
    /// or an unfinished copy of the same source, which is resumed.
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Most records per write batch (the etcd engine's limits may make
    /// batches smaller).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
}

/// A failure of `tierkv admin copy`.
#[derive(Debug, Error)]
pub enum CopyError {
    /// A configuration file is unusable, or the two do not fit together.
    #[error("{0}")]
    Config(String),
    /// The source's directory is locked by another process.
    #[error(
        "the source store {0} is open in another process (a running tierkv server?): stop that server, then copy"
    )]
    SourceInUse(String),
    /// The target is not one this copy may write into.
    #[error("{0}")]
    Refused(String),
    /// A store stopped answering; the checkpoint allows resuming.
    #[error("{0}; run the same command again to resume from the last checkpoint")]
    Interrupted(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl CopyError {
    fn exit_code(&self) -> u8 {
        match self {
            CopyError::Config(_) => EXIT_INVALID,
            CopyError::SourceInUse(_) | CopyError::Refused(_) => EXIT_PRECONDITION,
            CopyError::Interrupted(_) => EXIT_UNAVAILABLE,
            CopyError::Failed(_) => EXIT_OTHER,
        }
    }

    fn from_engine(error: EngineError, doing: &str) -> Self {
        match error {
            EngineError::Unavailable(reason) => {
                CopyError::Interrupted(format!("{doing}: unavailable: {reason}"))
            }
            EngineError::Limit(reason) => CopyError::Refused(format!("{doing}: {reason}")),
            other => CopyError::Failed(format!("{doing}: {other}")),
        }
    }
}

/// Where a copy stands, stored in the target after every batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    /// The source's history id: a checkpoint of another store is not resumed.
    source_history_id: u64,
    /// The namespace being copied (its prefix; "" for the default one).
    namespace: String,
    /// The last key of that namespace done.
    after_key: Option<String>,
    /// Records written so far.
    copied: u64,
    /// Records left behind because they had expired.
    expired: u64,
    /// Whether every namespace is done.
    done: bool,
}

/// One opened store and what one write batch into it may carry.
struct Store {
    engine: Arc<dyn Engine>,
    max_batch_ops: usize,
    max_batch_bytes: usize,
    describe: String,
}

/// Runs `tierkv admin copy`; exit codes as in [`super::EXIT_CODES`].
pub async fn run(args: CopyArgs) -> ExitCode {
    match copy(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn load(path: &Path, role: &str) -> Result<Config, CopyError> {
    // The files alone: TIERKV_* variables would apply to both stores alike.
    let config = Config::load(Some(path), &HashMap::new())
        .map_err(|error| CopyError::Config(format!("--{role} {}: {error}", path.display())))?;
    config
        .engine
        .validate()
        .map_err(|error| CopyError::Config(format!("--{role} {}: {error}", path.display())))?;
    Ok(config)
}

async fn open(config: &Config, role: &str, clock: SharedClock) -> Result<Store, CopyError> {
    let namespaces = config
        .namespaces()
        .map_err(|error| CopyError::Config(format!("--{role}: namespaces: {error}")))?;
    match config.engine.kind {
        EngineKind::Rocksdb => {
            let dir = config.data_dir.display().to_string();
            if role == "from" && !config.data_dir.join("CURRENT").exists() {
                return Err(CopyError::Config(format!(
                    "--from: {dir} holds no tierkv store (no RocksDB CURRENT file)"
                )));
            }
            let engine = server::open_engine(config, clock).await.map_err(|error| {
                let text = error.to_string();
                if text.to_ascii_lowercase().contains("lock") {
                    if role == "from" {
                        CopyError::SourceInUse(dir.clone())
                    } else {
                        CopyError::Refused(format!(
                            "the target store {dir} is open in another process (a running tierkv server?): stop it first"
                        ))
                    }
                } else {
                    CopyError::Failed(format!("--{role}: opening {dir}: {text}"))
                }
            })?;
            Ok(Store {
                engine: Arc::new(engine),
                max_batch_ops: 10_000,
                max_batch_bytes: ROCKS_BATCH_BYTES,
                describe: format!("rocksdb {dir}"),
            })
        }
        EngineKind::Etcd => {
            let options = server::store::etcd_options(config)
                .map_err(|error| CopyError::Config(format!("--{role}: {error}")))?;
            let describe = format!(
                "etcd {} prefix {:?}",
                options.endpoints.join(","),
                options.prefix
            );
            let engine = EtcdEngine::open(options, namespaces, clock)
                .await
                .map_err(|error| CopyError::from_engine(error, &format!("opening {describe}")))?;
            let limits = engine.limits();
            Ok(Store {
                engine: Arc::new(engine),
                max_batch_ops: limits.max_batch_ops,
                // Room for the estimate's error; a batch refused anyway is split.
                max_batch_bytes: limits.max_request_bytes / 4 * 3,
                describe,
            })
        }
    }
}

fn same_store(from: &Config, to: &Config) -> bool {
    match (from.engine.kind, to.engine.kind) {
        (EngineKind::Rocksdb, EngineKind::Rocksdb) => from.data_dir == to.data_dir,
        (EngineKind::Etcd, EngineKind::Etcd) => {
            from.engine.etcd.prefix == to.engine.etcd.prefix
                && from
                    .engine
                    .etcd
                    .endpoints
                    .iter()
                    .any(|endpoint| to.engine.etcd.endpoints.contains(endpoint))
        }
        _ => false,
    }
}

async fn copy(args: CopyArgs) -> Result<(), CopyError> {
    if args.batch_size == 0 {
        return Err(CopyError::Config("--batch-size must be at least 1".into()));
    }
    let from_config = load(&args.from, "from")?;
    let to_config = load(&args.to, "to")?;
    if same_store(&from_config, &to_config) {
        return Err(CopyError::Config(
            "--from and --to name the same store".into(),
        ));
    }
    let from_namespaces: Vec<String> = namespace_prefixes(&from_config)?;
    let to_namespaces: Vec<String> = namespace_prefixes(&to_config)?;
    if from_namespaces != to_namespaces {
        return Err(CopyError::Config(format!(
            "the two configurations list different namespaces ({from_namespaces:?} and {to_namespaces:?}); \
             give the target the source's namespaces, so every record keeps its namespace"
        )));
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let source = open(&from_config, "from", Arc::clone(&clock)).await?;
    let target = open(&to_config, "to", clock).await?;
    let _lock = lock(&target).await?;
    let started = Instant::now();
    let checkpoint = start_point(&source, &target).await?;
    if checkpoint.done {
        eprintln!(
            "the copy from {} into {} was already complete; nothing to do",
            source.describe, target.describe
        );
        print_summary(&source, &target, &checkpoint, started);
        return Ok(());
    }
    let resuming = checkpoint.copied > 0 || checkpoint.after_key.is_some();
    let total = count_live(source.engine.as_ref()).await?;
    let bar = ProgressBar::new(total.max(1)).with_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records {msg} [{elapsed_precise}, {per_sec}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));
    if resuming {
        bar.suspend(|| {
            eprintln!(
                "resuming after {} records (namespace {:?}, after key {})",
                checkpoint.copied,
                checkpoint.namespace,
                checkpoint.after_key.as_deref().map_or_else(
                    || "none".to_string(),
                    |key| shown(source.engine.namespaces(), key)
                )
            )
        });
    }
    bar.set_position(checkpoint.copied + checkpoint.expired);
    let result = Copier {
        source: &source,
        target: &target,
        batch_size: args.batch_size,
        checkpoint,
        bar: &bar,
    }
    .run()
    .await;
    match result {
        Ok(done) => {
            bar.finish_and_clear();
            target
                .engine
                .flush()
                .await
                .map_err(|error| CopyError::from_engine(error, "flushing the target"))?;
            eprintln!(
                "copied {} records from {} into {}; {} had expired and were left behind. \
                 Every copied record has a new version: if_version values, page tokens and Watch \
                 positions from the source do not carry over.",
                done.copied, source.describe, target.describe, done.expired
            );
            print_summary(&source, &target, &done, started);
            Ok(())
        }
        Err(error) => {
            bar.abandon();
            Err(error)
        }
    }
}

/// Takes the target's copy lock. A copy that was killed holds it until its
/// etcd lease runs out (10 s), so a held lock is waited for a while before
/// the copy is refused as running elsewhere.
async fn lock(target: &Store) -> Result<crate::engine::EngineLock, CopyError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut told = false;
    loop {
        let attempt = target
            .engine
            .try_lock(LOCK)
            .await
            .map_err(|error| CopyError::from_engine(error, "locking the target"))?;
        match attempt {
            LockAttempt::Acquired(guard) => return Ok(guard),
            LockAttempt::Held { holder } if Instant::now() >= deadline => {
                return Err(CopyError::Refused(format!(
                    "another copy into {} is running ({holder})",
                    target.describe
                )))
            }
            LockAttempt::Held { holder } => {
                if !told {
                    eprintln!(
                        "waiting for the copy lock of {} held by {holder} (a copy that was \
                         stopped holds it until its lease runs out)",
                        target.describe
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn namespace_prefixes(config: &Config) -> Result<Vec<String>, CopyError> {
    let namespaces = config.namespaces().map_err(CopyError::Config)?;
    Ok(namespaces.configured_prefixes().map(String::from).collect())
}

fn print_summary(source: &Store, target: &Store, checkpoint: &Checkpoint, started: Instant) {
    let summary = json!({
        "from": source.describe,
        "to": target.describe,
        "copied": checkpoint.copied,
        "expired_left_behind": checkpoint.expired,
        "done": checkpoint.done,
        "took_ms": started.elapsed().as_millis() as u64,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_else(|_| summary.to_string())
    );
}

/// Where to start: the target's checkpoint of this source, or the beginning
/// when the target holds nothing at all.
async fn start_point(source: &Store, target: &Store) -> Result<Checkpoint, CopyError> {
    let source_history_id = source.engine.history_id();
    let stored = target
        .engine
        .get_state(CHECKPOINT)
        .await
        .map_err(|error| CopyError::from_engine(error, "reading the target's checkpoint"))?;
    if let Some(bytes) = stored {
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|error| {
            CopyError::Failed(format!(
                "the target's copy checkpoint is unreadable: {error}"
            ))
        })?;
        if checkpoint.source_history_id != source_history_id {
            return Err(CopyError::Refused(format!(
                "{} holds a copy of another store (history id {:x}, the source's is {:x}); \
                 copy into an empty target (another [engine.etcd] prefix)",
                target.describe, checkpoint.source_history_id, source_history_id
            )));
        }
        return Ok(checkpoint);
    }
    let namespaces = target.engine.namespaces().clone();
    for id in 0..namespaces.len() {
        let prefix = namespaces.prefix(id).to_string();
        let page = target
            .engine
            .scan(ScanRequest {
                prefix: prefix.clone(),
                limit: 1,
                max_examined: 0,
                ..ScanRequest::default()
            })
            .await
            .map_err(|error| CopyError::from_engine(error, "checking the target is empty"))?;
        if let Some((key, _)) = page.entries.first() {
            let key = shown(&namespaces, key);
            return Err(CopyError::Refused(format!(
                "{} already holds records (namespace {prefix:?}: {key}) and no copy of this \
                 source; copy into an empty target (another [engine.etcd] prefix), so that nothing \
                 of it is overwritten",
                target.describe
            )));
        }
    }
    Ok(Checkpoint {
        source_history_id,
        namespace: String::new(),
        after_key: None,
        copied: 0,
        expired: 0,
        done: false,
    })
}

/// Live records of every namespace of `engine`, for the progress bar.
async fn count_live(engine: &dyn Engine) -> Result<u64, CopyError> {
    let namespaces = engine.namespaces().clone();
    let mut total = 0;
    for id in 0..namespaces.len() {
        total += engine
            .count_namespace(namespaces.prefix(id))
            .await
            .map_err(|error| CopyError::from_engine(error, "counting the source's records"))?;
    }
    Ok(total)
}

/// One run of the copy from a checkpoint.
struct Copier<'a> {
    source: &'a Store,
    target: &'a Store,
    batch_size: usize,
    checkpoint: Checkpoint,
    bar: &'a ProgressBar,
}

impl Copier<'_> {
    async fn run(mut self) -> Result<Checkpoint, CopyError> {
        let namespaces: Namespaces = self.source.engine.namespaces().clone();
        // Namespaces in id order; a resumed copy skips those done before.
        let first = (0..namespaces.len())
            .position(|id| namespaces.prefix(id) == self.checkpoint.namespace)
            .unwrap_or(0);
        for id in first..namespaces.len() {
            let prefix = namespaces.prefix(id).to_string();
            if prefix != self.checkpoint.namespace {
                self.checkpoint.namespace = prefix.clone();
                self.checkpoint.after_key = None;
            }
            self.bar.set_message(format!("namespace {prefix:?}"));
            loop {
                // Heads only: values are read below within a byte budget.
                let page = self
                    .source
                    .engine
                    .scan(ScanRequest {
                        prefix: prefix.clone(),
                        start_after: self.checkpoint.after_key.clone(),
                        limit: self.batch_size,
                        include_values: false,
                        max_examined: MAX_EXAMINED,
                    })
                    .await
                    .map_err(|error| CopyError::from_engine(error, "reading the source"))?;
                let next = page
                    .resume_after
                    .clone()
                    .or_else(|| page.entries.last().map(|(key, _)| key.clone()));
                let finished = page.resume_after.is_none() && page.entries.len() < self.batch_size;
                // A scan of a namespace also reads the namespaces nested in
                // it; each record is copied with its own namespace only.
                let keys: Vec<String> = page
                    .entries
                    .into_iter()
                    .map(|(key, _)| key)
                    .filter(|key| namespaces.route(key) == id)
                    .collect();
                self.copy_keys(keys).await?;
                self.checkpoint.after_key = next;
                self.save().await?;
                if finished || self.checkpoint.after_key.is_none() {
                    break;
                }
            }
        }
        self.checkpoint.done = true;
        self.save().await?;
        Ok(self.checkpoint)
    }

    async fn save(&self) -> Result<(), CopyError> {
        let bytes = serde_json::to_vec(&self.checkpoint)
            .map_err(|error| CopyError::Failed(format!("encoding the checkpoint: {error}")))?;
        self.target
            .engine
            .put_state(CHECKPOINT, Some(bytes))
            .await
            .map_err(|error| CopyError::from_engine(error, "storing the checkpoint"))
    }

    /// Reads `keys` from the source within [`READ_BUDGET_BYTES`] at a time and
    /// writes them to the target in batches that fit its limits.
    async fn copy_keys(&mut self, keys: Vec<String>) -> Result<(), CopyError> {
        let mut pending: &[String] = &keys;
        let mut group = pending.len();
        while !pending.is_empty() {
            let take = group.min(pending.len());
            let chunk = &pending[..take];
            let records = if take == 1 {
                // One record is read whatever its size.
                self.source
                    .engine
                    .get(chunk[0].clone())
                    .await
                    .map(|record| vec![record])
            } else {
                self.source
                    .engine
                    .get_many_within(chunk, READ_BUDGET_BYTES)
                    .await
            };
            let records = match records {
                Ok(records) => records,
                Err(EngineError::TooLarge { .. }) => {
                    group = take.div_ceil(2);
                    continue;
                }
                Err(error) => return Err(CopyError::from_engine(error, "reading the source")),
            };
            let now = self.target.engine.now_millis();
            let mut live = Vec::with_capacity(records.len());
            for (key, record) in chunk.iter().zip(records) {
                match record {
                    Some(record) if !record.is_expired_at(now) => live.push((key.clone(), record)),
                    // Expired since the scan (or by the target's clock).
                    _ => self.checkpoint.expired += 1,
                }
            }
            self.bar.inc((take - live.len()) as u64);
            self.write_fitting(live).await?;
            pending = &pending[take..];
            group = keys.len();
        }
        Ok(())
    }

    /// Writes `records` in batches within the target's limits.
    async fn write_fitting(&mut self, records: Vec<(String, Record)>) -> Result<(), CopyError> {
        let mut batch: Vec<WriteOp> = Vec::new();
        let (mut ops, mut bytes) = (0usize, 0usize);
        for (key, record) in records {
            let (record_ops, record_bytes) = cost(&key, &record);
            let full = !batch.is_empty()
                && (ops + record_ops > self.target.max_batch_ops
                    || bytes + record_bytes > self.target.max_batch_bytes
                    || batch.len() >= self.batch_size);
            if full {
                self.write(std::mem::take(&mut batch)).await?;
                (ops, bytes) = (0, 0);
            }
            ops += record_ops;
            bytes += record_bytes;
            batch.push(WriteOp::Put(PutOp {
                key,
                kind: record.kind,
                value: record.value,
                metadata: record.metadata,
                expire_at_millis: record.expire_at_millis,
                schema_version: record.schema_version,
                precondition: Precondition::None,
            }));
        }
        if !batch.is_empty() {
            self.write(batch).await?;
        }
        Ok(())
    }

    /// Writes one batch, retrying while the target is unavailable, and
    /// splitting it in two when the target refuses it as over a limit.
    async fn write(&mut self, batch: Vec<WriteOp>) -> Result<(), CopyError> {
        let mut stack = vec![batch];
        while let Some(batch) = stack.pop() {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.target.engine.write(batch.clone()).await {
                    Ok(_) => {
                        self.checkpoint.copied += batch.len() as u64;
                        self.bar.inc(batch.len() as u64);
                        break;
                    }
                    Err(EngineError::Limit(_)) if batch.len() > 1 => {
                        let mut first = batch;
                        let second = first.split_off(first.len() / 2);
                        // Popped last first: keep key order.
                        stack.push(second);
                        stack.push(first);
                        break;
                    }
                    Err(EngineError::Limit(reason)) => {
                        return Err(CopyError::Refused(format!(
                            "record {} does not fit in one write of the target: {reason}",
                            shown(self.source.engine.namespaces(), batch[0].key())
                        )));
                    }
                    Err(EngineError::Unavailable(reason)) if attempt < WRITE_ATTEMPTS => {
                        self.bar.suspend(|| {
                            eprintln!("the target is unavailable ({reason}); retrying")
                        });
                        tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
                    }
                    Err(error) => {
                        return Err(CopyError::from_engine(error, "writing to the target"))
                    }
                }
            }
        }
        Ok(())
    }
}

/// A key as messages may show it: keys of a namespace a service owns
/// (session ids) are secrets, so only their namespace is shown.
fn shown(namespaces: &Namespaces, key: &str) -> String {
    match namespaces.owner_of(key) {
        Some((prefix, _)) => format!("{prefix:?}…"),
        None => format!("{key:?}"),
    }
}

/// The etcd operations and request bytes a record takes in a batch.
fn cost(key: &str, record: &Record) -> (usize, usize) {
    let ops = if record.value.len() > INLINE_VALUE_MAX {
        2
    } else {
        1
    };
    let bytes = 3 * key.len()
        + record.value.len()
        + record.metadata.as_ref().map_or(0, Vec::len)
        + RECORD_OVERHEAD;
    (ops, bytes)
}
