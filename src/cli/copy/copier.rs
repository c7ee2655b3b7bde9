//! The walk of a copy: namespace by namespace through the source, in
//! batches that fit the target, checkpointed after each.

use std::time::Duration;

use indicatif::ProgressBar;

use super::store::{shown, Checkpoint, CopyError, Store, CHECKPOINT};
use crate::engine::record::INLINE_VALUE_MAX;
use crate::engine::{EngineError, Namespaces, Precondition, PutOp, Record, ScanRequest, WriteOp};

/// Most stored records one scan call of the source examines.
const MAX_EXAMINED: usize = 10_000;

/// Most bytes of values and metadata read from the source at once (a single
/// larger record is read alone), so memory stays bounded by this and the
/// largest record whatever the store holds.
const READ_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// Attempts of one batch while the target is unavailable (an etcd election).
const WRITE_ATTEMPTS: u32 = 8;

/// Bytes counted per record beyond its key, value and metadata: the
/// engine's header and the feed entry (conservative).
const RECORD_OVERHEAD: usize = 128;

/// One run of the copy from a checkpoint.
pub(super) struct Copier<'a> {
    pub(super) source: &'a Store,
    pub(super) target: &'a Store,
    pub(super) batch_size: usize,
    pub(super) checkpoint: Checkpoint,
    pub(super) bar: &'a ProgressBar,
}

impl Copier<'_> {
    pub(super) async fn run(mut self) -> Result<Checkpoint, CopyError> {
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
                // An empty last page keeps the key before it: a copy
                // interrupted now resumes there, not at the namespace's start.
                let ended = finished || next.is_none();
                if next.is_some() {
                    self.checkpoint.after_key = next;
                }
                self.save().await?;
                if ended {
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
