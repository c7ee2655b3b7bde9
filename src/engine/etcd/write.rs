//! Writes: read, decide, commit conditionally, in transactions shared by
//! concurrent requests (group commit).
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
//! 3. **commit** ([`super::group`]): the decided request (compares that every key read still
//!    has the `mod_revision` it had, 0 when absent; its final operations;
//!    its feed entries) goes to the engine's group committer, which puts
//!    the requests queued meanwhile whose keys are disjoint into one `Txn`
//!    (within etcd's `--max-txn-ops` and `--max-request-bytes`), with one
//!    feed record listing each request as its own batch. Each request keeps
//!    its own outcomes, versions and sequence (its mutations get indices of
//!    their own in the shared transaction). When the compares fail, the
//!    transaction's failure branch tells whose failed (one nested
//!    compare-only `Txn` per request): those go back to step 1, up to
//!    [`MAX_ATTEMPTS`] times, then UNAVAILABLE (retryable); the others are
//!    committed again as decided, their compares still guarding them.
//!
//! Blind batches (puts without preconditions) skip step 1 and never fail a
//! group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};
use tokio::sync::oneshot;

use super::feed::{self, Entry};
use super::group::{GroupAnswer, Pending};
use super::keys::version;
use super::read::decode;
use super::EtcdEngine;
use crate::engine::record::{encode_stored, RecordParts};
use crate::engine::{EngineError, Precondition, WriteOp, WriteOutcome, WriteReceipt};

/// Tries of one batch against concurrent writers of the keys it read.
const MAX_ATTEMPTS: usize = 32;
/// Most times one batch goes to the group committer (a request whose
/// compares held is sent again when another request's failed its group).
const MAX_SUBMITS: usize = 4 * MAX_ATTEMPTS;

fn closing() -> EngineError {
    EngineError::Unavailable("the etcd engine is closing".into())
}

fn unavailable_after_tries() -> EngineError {
    EngineError::Unavailable(format!(
        "the batch's keys kept changing under it ({MAX_ATTEMPTS} tries); retry"
    ))
}

/// The distinct keys of `ops`, in first-seen order.
fn distinct_keys(ops: &[WriteOp]) -> Vec<&str> {
    let mut seen = HashSet::new();
    ops.iter()
        .map(WriteOp::key)
        .filter(|key| seen.insert(*key))
        .collect()
}

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
        let ops = Arc::new(ops);
        // Keys whose state the decision needs, in first-seen order.
        let mut checked: Vec<&str> = Vec::new();
        for op in ops.iter() {
            let needs_state = match op {
                WriteOp::Put(put) => put.precondition != Precondition::None,
                WriteOp::Delete(_) => true,
            };
            if needs_state && !checked.contains(&op.key()) {
                checked.push(op.key());
            }
        }
        let keys: Vec<(String, bool)> = distinct_keys(&ops)
            .into_iter()
            .map(|key| (key.to_string(), checked.contains(&key)))
            .collect();
        let (required, _, bytes) = self.final_ops(&ops, 0);
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
        let required_ops = required.len();
        let mut submits = 0;
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
            let mut compare_bytes = 0;
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
                compare_bytes += etcd_key.len() + 16;
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
                        index: index as u16,
                    },
                })
                .collect();
            let feed_bytes = feed::encoded_len(ops.iter().map(WriteOp::key));
            if bytes + feed_bytes > limits.max_request_bytes {
                return Err(EngineError::Limit(format!(
                    "a write batch of {} bytes is over the etcd engine's limit of {} bytes per request \
                     (etcd's --max-request-bytes {} less framing); raise --max-request-bytes on every \
                     etcd member and [engine.etcd] max_request_bytes, or write smaller batches",
                    bytes + feed_bytes,
                    limits.max_request_bytes,
                    self.inner.options.max_request_bytes
                )));
            }
            loop {
                submits += 1;
                if submits > MAX_SUBMITS {
                    return Err(unavailable_after_tries());
                }
                let (reply, answer) = oneshot::channel();
                let pending = Pending {
                    ops: Arc::clone(&ops),
                    keys: keys.clone(),
                    compares: compares.clone(),
                    entries: entries.clone(),
                    now,
                    required_ops,
                    bytes: bytes + feed_bytes + compare_bytes,
                    reply,
                };
                if self.inner.committer.send(pending).is_err() {
                    return Err(closing());
                }
                match answer.await.map_err(|_| closing())?? {
                    GroupAnswer::Committed { revision, offset } => {
                        for outcome in &mut outcomes {
                            if let WriteOutcome::Put { version: index } = outcome {
                                *index = version(revision, *index + u64::from(offset));
                            }
                        }
                        let last = offset + (ops.len() - 1) as u16;
                        return Ok(WriteReceipt {
                            outcomes,
                            sequence: feed::sequence(revision, last),
                        });
                    }
                    GroupAnswer::CompareFailed => break,
                    GroupAnswer::Held => continue,
                }
            }
        }
        Err(unavailable_after_tries())
    }

    /// The final operation of every key of `ops` with their indices shifted
    /// by `offset` (required, and optional ones), each with its etcd key,
    /// and the bytes they carry. A put of an inline value also deletes an
    /// out-of-line value an older write may have left, while the transaction
    /// has room for it (a read checks that a value entry belongs to its head,
    /// so one left behind is never read).
    #[allow(clippy::type_complexity)]
    pub(super) fn final_ops(
        &self,
        ops: &[WriteOp],
        offset: u16,
    ) -> (Vec<(Vec<u8>, TxnOp)>, Vec<(Vec<u8>, TxnOp)>, usize) {
        let mut last_of: HashMap<&str, usize> = HashMap::new();
        for (index, op) in ops.iter().enumerate() {
            last_of.insert(op.key(), index);
        }
        let keys = &self.inner.keys;
        let mut required = Vec::with_capacity(last_of.len() + 1);
        let mut optional = Vec::new();
        let mut bytes = 0usize;
        for key in distinct_keys(ops) {
            let index = last_of[key];
            match &ops[index] {
                WriteOp::Put(put) => {
                    let stored = encode_stored(RecordParts {
                        kind: put.kind,
                        value: &put.value,
                        metadata: put.metadata.as_deref(),
                        expire_at_millis: put.expire_at_millis,
                        version: index as u64 + u64::from(offset),
                        schema_version: put.schema_version,
                    });
                    bytes += 2 * key.len() + stored.len() + 32;
                    let (head, value) = (keys.head(key), keys.value(key));
                    required.push((head.clone(), TxnOp::put(head, stored.head, None)));
                    match stored.value_entry {
                        Some(entry) => {
                            required.push((value.clone(), TxnOp::put(value, entry, None)))
                        }
                        None => optional.push((value.clone(), TxnOp::delete(value, None))),
                    }
                }
                WriteOp::Delete(_) => {
                    bytes += 2 * key.len() + 32;
                    let (head, value) = (keys.head(key), keys.value(key));
                    required.push((head.clone(), TxnOp::delete(head, None)));
                    required.push((value.clone(), TxnOp::delete(value, None)));
                }
            }
        }
        (required, optional, bytes)
    }

    /// Deletes every record of namespace `prefix` but those of namespaces
    /// nested in it, in one transaction with a feed record of one
    /// `NamespaceCleared` entry; returns its sequence.
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
        let entries = [vec![Entry::Cleared {
            prefix: prefix.to_string(),
        }]];
        let now = self.ensure_clock_persisted().await?;
        ops.push(TxnOp::put(keys.feed(), feed::encode(now, &entries), None));
        let response = self.send_txn(Txn::new().and_then(ops), false).await?;
        let revision = response.header().map_or(0, |header| header.revision());
        Ok(feed::revision_end(revision))
    }
}
