//! Writes: read, decide, commit conditionally.
//!
//! etcd compares cannot see expiry (an expired record not yet reclaimed
//! still exists for etcd) and a transaction may name a key only once, so a
//! batch is written in three steps:
//! 1. **read** the heads of every key a mutation must check (a precondition,
//!    or a delete's `existed`), with their `mod_revision`s;
//! 2. **decide**: replay the batch in order against that state by the
//!    engine's clock: a failed precondition answers
//!    [`EngineError::PreconditionFailed`] naming its mutation, and otherwise
//!    each key ends with one final operation;
//! 3. **commit** one `Txn`: compares that every key read still has the
//!    `mod_revision` it had (0 when absent), the final operations and the
//!    feed record. When a compare fails, a concurrent write changed what
//!    the decision read: back to step 1, up to [`MAX_ATTEMPTS`] times, then
//!    UNAVAILABLE (retryable).
//!
//! Blind batches (puts without preconditions) skip step 1.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::feed::{self, Entry};
use super::keys::version;
use super::read::decode;
use super::EtcdEngine;
use crate::engine::record::{encode_stored, RecordParts};
use crate::engine::{EngineError, Precondition, WriteOp, WriteOutcome, WriteReceipt};

/// Tries of one batch against concurrent writers of the keys it read.
const MAX_ATTEMPTS: usize = 32;

/// What a key holds while the batch is replayed.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// No live record.
    Absent,
    /// A live record of this version.
    Live(u64),
    /// Written by an earlier mutation of the batch.
    Pending,
}

impl Slot {
    fn version(self) -> Option<u64> {
        match self {
            Slot::Live(version) => Some(version),
            Slot::Absent | Slot::Pending => None,
        }
    }

    fn holds(self, precondition: Precondition) -> bool {
        match (precondition, self) {
            (Precondition::None, _) => true,
            (Precondition::IfAbsent, slot) => matches!(slot, Slot::Absent),
            // A version this batch assigns is not known before it commits.
            (Precondition::IfVersion(expected), slot) => slot.version() == Some(expected),
        }
    }
}

impl EtcdEngine {
    /// Commits a non-empty batch (see the module docs).
    pub(super) async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<WriteReceipt, EngineError> {
        let limits = self.limits();
        if ops.len() > limits.max_batch_ops {
            return Err(EngineError::Limit(format!(
                "a write batch of {} mutations is over the etcd engine's limit of {} per batch \
                 (etcd's --max-txn-ops {} less one); raise --max-txn-ops on every etcd member \
                 and [engine.etcd] max_txn_ops, or write fewer mutations per batch",
                ops.len(),
                limits.max_batch_ops,
                self.inner.options.max_txn_ops
            )));
        }
        // Keys whose state the decision needs, in first-seen order.
        let mut checked: Vec<&str> = Vec::new();
        for op in &ops {
            let needs_state = match op {
                WriteOp::Put(put) => put.precondition != Precondition::None,
                WriteOp::Delete(_) => true,
            };
            if needs_state && !checked.contains(&op.key()) {
                checked.push(op.key());
            }
        }
        // The last mutation of each key, in first-seen order.
        let mut last_of: HashMap<&str, usize> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            if last_of.insert(op.key(), index).is_none() {
                order.push(op.key());
            }
        }
        let (commit_ops, bytes) = self.final_ops(&ops, &order, &last_of)?;
        for _ in 0..MAX_ATTEMPTS {
            let now = self.ensure_clock_persisted().await?;
            let head_keys: Vec<Vec<u8>> = checked
                .iter()
                .map(|key| self.inner.keys.head(key))
                .collect();
            let observed = if head_keys.is_empty() {
                Vec::new()
            } else {
                self.get_keys(&head_keys, None).await?.1
            };
            let mut state: HashMap<&str, Slot> = HashMap::new();
            let mut compares = Vec::with_capacity(checked.len());
            for ((key, etcd_key), kv) in checked.iter().zip(head_keys).zip(observed) {
                let (slot, mod_revision) = match kv {
                    Some(kv) => {
                        let head = decode(key, &kv)?;
                        let slot = if head.record.is_expired_at(now) {
                            Slot::Absent
                        } else {
                            Slot::Live(head.record.version)
                        };
                        (slot, head.mod_revision)
                    }
                    None => (Slot::Absent, 0),
                };
                state.insert(key, slot);
                compares.push(Compare::mod_revision(
                    etcd_key,
                    CompareOp::Equal,
                    mod_revision,
                ));
            }
            let mut outcomes = Vec::with_capacity(ops.len());
            for (index, op) in ops.iter().enumerate() {
                let (key, precondition) = match op {
                    WriteOp::Put(put) => (put.key.as_str(), put.precondition),
                    WriteOp::Delete(delete) => (delete.key.as_str(), delete.precondition),
                };
                let slot = state.get(key).copied();
                if precondition != Precondition::None {
                    let slot = slot.unwrap_or(Slot::Absent);
                    if !slot.holds(precondition) {
                        return Err(EngineError::PreconditionFailed {
                            index,
                            key: key.to_string(),
                            precondition,
                            current_version: slot.version(),
                        });
                    }
                }
                match op {
                    WriteOp::Put(_) => {
                        state.insert(key, Slot::Pending);
                        outcomes.push(WriteOutcome::Put {
                            version: index as u64,
                        });
                    }
                    WriteOp::Delete(_) => {
                        let existed = matches!(slot, Some(Slot::Live(_) | Slot::Pending));
                        state.insert(key, Slot::Absent);
                        outcomes.push(WriteOutcome::Delete { existed });
                    }
                }
            }
            let entries: Vec<Entry> = ops
                .iter()
                .enumerate()
                .map(|(index, op)| match op {
                    WriteOp::Put(put) => Entry::Put {
                        key: put.key.clone(),
                        index: index as u16,
                        expire_at_millis: put.expire_at_millis,
                        schema_version: put.schema_version,
                    },
                    WriteOp::Delete(delete) => Entry::Delete {
                        key: delete.key.clone(),
                    },
                })
                .collect();
            let feed_record = feed::encode(now, &entries);
            if bytes + feed_record.len() > limits.max_request_bytes {
                return Err(EngineError::Limit(format!(
                    "a write batch of {} bytes is over the etcd engine's limit of {} bytes per request \
                     (etcd's --max-request-bytes {} less framing); raise --max-request-bytes on every \
                     etcd member and [engine.etcd] max_request_bytes, or write smaller batches",
                    bytes + feed_record.len(),
                    limits.max_request_bytes,
                    self.inner.options.max_request_bytes
                )));
            }
            let mut success = commit_ops.clone();
            success.push(TxnOp::put(self.inner.keys.feed(), feed_record, None));
            let txn = Txn::new().when(compares).and_then(success);
            let response = self.send_txn(txn, false).await?;
            if !response.succeeded() {
                continue;
            }
            let revision = response.header().map_or(0, |header| header.revision());
            for outcome in &mut outcomes {
                if let WriteOutcome::Put { version: index } = outcome {
                    *index = version(revision, *index);
                }
            }
            return Ok(WriteReceipt {
                outcomes,
                sequence: revision as u64,
            });
        }
        Err(EngineError::Unavailable(format!(
            "the batch's keys kept changing under it ({MAX_ATTEMPTS} tries); retry"
        )))
    }

    /// The final operation of every key, and the bytes they carry. A put of
    /// an inline value also deletes an out-of-line value an older write may
    /// have left, while the transaction has room for it (a read checks that
    /// a value entry belongs to its head, so one left behind is never read).
    fn final_ops(
        &self,
        ops: &[WriteOp],
        order: &[&str],
        last_of: &HashMap<&str, usize>,
    ) -> Result<(Vec<TxnOp>, usize), EngineError> {
        let keys = &self.inner.keys;
        let mut required = Vec::with_capacity(order.len() + 1);
        let mut optional = Vec::new();
        let mut bytes = 0usize;
        for key in order {
            let index = last_of[key];
            match &ops[index] {
                WriteOp::Put(put) => {
                    let stored = encode_stored(RecordParts {
                        kind: put.kind,
                        value: &put.value,
                        metadata: put.metadata.as_deref(),
                        expire_at_millis: put.expire_at_millis,
                        version: index as u64,
                        schema_version: put.schema_version,
                    });
                    bytes += 2 * key.len() + stored.len() + 32;
                    required.push(TxnOp::put(keys.head(key), stored.head, None));
                    match stored.value_entry {
                        Some(entry) => required.push(TxnOp::put(keys.value(key), entry, None)),
                        None => optional.push(TxnOp::delete(keys.value(key), None)),
                    }
                }
                WriteOp::Delete(_) => {
                    bytes += 2 * key.len() + 32;
                    required.push(TxnOp::delete(keys.head(key), None));
                    required.push(TxnOp::delete(keys.value(key), None));
                }
            }
        }
        let max_ops = self.inner.options.max_txn_ops.saturating_sub(1);
        if required.len() > max_ops {
            return Err(EngineError::Limit(format!(
                "the write batch needs {} etcd operations (a value over 1 KiB and a delete take two); \
                 the cluster allows {} per transaction (etcd's --max-txn-ops {} less the feed record); \
                 raise --max-txn-ops on every etcd member and [engine.etcd] max_txn_ops, or write \
                 fewer mutations per batch",
                required.len(),
                max_ops,
                self.inner.options.max_txn_ops
            )));
        }
        let room = max_ops - required.len();
        required.extend(optional.into_iter().take(room));
        Ok((required, bytes))
    }

    /// Deletes every record of namespace `prefix` but those of namespaces
    /// nested in it, in one transaction with a feed record of one
    /// `NamespaceCleared` entry; returns its revision.
    pub(super) async fn clear(&self, prefix: &str) -> Result<u64, EngineError> {
        let id = self.namespace_id(prefix)?;
        let namespaces = &self.inner.namespaces;
        let mut nested: Vec<&str> = namespaces
            .nested_in(id)
            .into_iter()
            .map(|child| namespaces.prefix(child))
            .collect();
        nested.sort_unstable();
        let keys = &self.inner.keys;
        let mut ops = Vec::new();
        for range in [keys.head_range(prefix), keys.value_range(prefix)] {
            let value_space = range.0.starts_with(&keys.value(""));
            let mut cursor = range.0;
            for child in &nested {
                let (start, end) = if value_space {
                    keys.value_range(child)
                } else {
                    keys.head_range(child)
                };
                if start > cursor {
                    ops.push(TxnOp::delete(
                        cursor.clone(),
                        Some(DeleteOptions::new().with_range(start)),
                    ));
                }
                cursor = cursor.max(end);
            }
            if cursor < range.1 {
                ops.push(TxnOp::delete(
                    cursor,
                    Some(DeleteOptions::new().with_range(range.1)),
                ));
            }
        }
        if ops.len() >= self.inner.options.max_txn_ops {
            return Err(EngineError::Limit(format!(
                "clearing namespace {prefix:?} takes {} etcd operations (two per range between nested \
                 namespaces); raise etcd's --max-txn-ops and [engine.etcd] max_txn_ops",
                ops.len() + 1
            )));
        }
        let entries = [Entry::Cleared {
            prefix: prefix.to_string(),
        }];
        let now = self.ensure_clock_persisted().await?;
        ops.push(TxnOp::put(keys.feed(), feed::encode(now, &entries), None));
        let response = self.send_txn(Txn::new().and_then(ops), false).await?;
        Ok(response.header().map_or(0, |header| header.revision()) as u64)
    }
}
