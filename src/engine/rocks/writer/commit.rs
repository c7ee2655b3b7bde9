//! What the writer thread does with a group: reads the versions its
//! preconditions need, stages each request against the store and the
//! requests before it, commits the group as one `WriteBatch` with the
//! engine's counters, publishes it to the change feed and answers the
//! callers; and the commit of a namespace clear, which goes alone.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::WriteBatch;

use super::super::history::{encode_batch, HistoryEvent};
use super::super::{
    storage_error, CfHandle, Inner, CHANGE_SEQUENCE_KEY, CLOCK_MARK_KEY, VERSION_COUNTER_KEY,
};
use super::{PreparedOp, WriteRequest, WriterState};
use crate::clock::Clock;
use crate::engine::changes::{Change, ChangeEvent};
use crate::engine::namespace::NamespaceId;
use crate::engine::record;
use crate::engine::{EngineError, Precondition, WriteOutcome, WriteReceipt};

/// A key's live version as the store holds it before the group.
type CurrentVersion = Result<Option<u64>, EngineError>;

/// A request that passed its preconditions, with its outcomes.
struct Accepted {
    request: WriteRequest,
    outcomes: Vec<WriteOutcome>,
}

impl Inner {
    /// The live version of each key the group's preconditions need, one slot
    /// per op of the group in order (`None` where the op needs no read), read
    /// from the store with one multi-get per namespace touched. Blind puts
    /// need nothing, so a group of them reads nothing.
    fn read_current_versions(
        &self,
        group: &[WriteRequest],
        handles: &[CfHandle<'_>],
        now: u64,
    ) -> Vec<Option<CurrentVersion>> {
        let ops = || group.iter().flat_map(|request| &request.ops);
        // Each key is read once, however many ops of the group need it.
        let mut first_slot: HashMap<&str, usize> = HashMap::new();
        let mut wanted: Vec<Vec<(usize, &str)>> = vec![Vec::new(); handles.len()];
        let mut slots: Vec<Option<usize>> = Vec::new();
        for (slot, op) in ops().enumerate() {
            if op.is_blind_put() {
                slots.push(None);
                continue;
            }
            let first = *first_slot.entry(op.key.as_str()).or_insert_with(|| {
                wanted[op.namespace].push((slot, op.key.as_str()));
                slot
            });
            slots.push(Some(first));
        }
        let mut read: Vec<Option<CurrentVersion>> = (0..slots.len()).map(|_| None).collect();
        for (namespace, keys) in wanted.iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let results = self.db.batched_multi_get_cf(
                handles[namespace],
                keys.iter().map(|(_, key)| *key),
                false,
            );
            for ((slot, key), result) in keys.iter().zip(results) {
                read[*slot] = Some(match result {
                    Err(error) => Err(storage_error(error)),
                    Ok(None) => Ok(None),
                    Ok(Some(bytes)) => live_version_of(key, &bytes, now).inspect_err(|_| {
                        self.corrupt_records.found.fetch_add(1, Ordering::Relaxed);
                    }),
                });
            }
        }
        slots
            .iter()
            .map(|first| {
                first.and_then(|first| match &read[first] {
                    Some(Ok(version)) => Some(Ok(*version)),
                    Some(Err(error)) => Some(Err(error.duplicate())),
                    None => None,
                })
            })
            .collect()
    }

    /// Commits a group of requests in one `WriteBatch` (one WAL write, one
    /// fsync with `sync_writes`). Each request stays all-or-nothing: one whose
    /// precondition fails is answered with the failure and left out, and the
    /// rest are checked against the state the earlier ones leave. An empty
    /// group only persists the clock's high-water mark if it moved.
    ///
    /// Returns an error only when the store can no longer be written.
    pub(super) fn commit_group(
        &self,
        mut group: Vec<WriteRequest>,
        state: &mut WriterState,
    ) -> Result<(), String> {
        let prepared = (0..self.namespaces.len())
            .map(|id| self.handle(id))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|handles| Ok((handles, self.values_handle()?, self.meta_handle()?)));
        let (handles, values, meta) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                for request in &mut group {
                    request.answer(Err(error.duplicate()));
                }
                return Err(format!("column families unavailable: {error}"));
            }
        };

        let now = self.clock.now_millis();
        // Only an op that is not a blind put looks at what earlier ops of the
        // group left; a group of blind puts (the common case) keeps no map.
        let track_pending = group
            .iter()
            .flat_map(|request| &request.ops)
            .any(|op| !op.is_blind_put());
        let current = self.read_current_versions(&group, &handles, now);
        let mut current_slots = current.into_iter();
        let mut next_version = state.last_version;
        let mut group_pending: HashMap<String, Option<u64>> = HashMap::new();
        let mut accepted: Vec<Accepted> = Vec::with_capacity(group.len());
        let mut batch_bytes = 0;
        let mut events = 0;
        let mut corrupt_removed = 0;
        for mut request in group {
            if request.ops.is_empty() {
                continue;
            }
            let request_current: Vec<Option<CurrentVersion>> =
                current_slots.by_ref().take(request.ops.len()).collect();
            match stage(
                &mut request.ops,
                &request_current,
                &group_pending,
                now,
                next_version,
                track_pending,
            ) {
                Ok(staged) => {
                    next_version = staged.last_version;
                    corrupt_removed += staged.corrupt_removed;
                    group_pending.extend(staged.pending);
                    // Room for the keys of values-column-family deletes, and framing.
                    batch_bytes += request.bytes
                        + request
                            .ops
                            .iter()
                            .map(|op| op.key.len() + 32)
                            .sum::<usize>();
                    events += request.ops.len();
                    accepted.push(Accepted {
                        request,
                        outcomes: staged.outcomes,
                    });
                }
                Err(error) => request.answer(Err(error)),
            }
        }
        let advance_clock = now > state.persisted_clock;
        if accepted.is_empty() && !advance_clock {
            return Ok(());
        }

        // RocksDB's sequences are consecutive (one per event); nothing
        // outside this engine may count on that.
        let first_sequence = state.last_sequence + 1;
        let last_sequence = state.last_sequence + events as u64;
        if let Err(error) = self.ensure_ceiling(&mut state.ceiling, last_sequence) {
            for mut entry in accepted {
                entry.request.answer(Err(error.duplicate()));
            }
            return Err(format!("cannot raise the sequence ceiling: {error}"));
        }
        // One history entry per request: encoded before the batch is
        // sized, so the batch never grows by copying what it holds.
        let mut request_sequence = first_sequence - 1;
        let history: Vec<(u64, Vec<u8>)> = accepted
            .iter()
            .map(|entry| {
                request_sequence += entry.outcomes.len() as u64;
                (request_sequence, history_entry(entry, now))
            })
            .collect();
        batch_bytes += history
            .iter()
            .map(|(_, entry)| entry.len() + 32)
            .sum::<usize>();
        let mut batch = WriteBatch::with_capacity_bytes(batch_bytes + 256);
        for entry in &accepted {
            for op in &entry.request.ops {
                let cf = handles[op.namespace];
                let key = op.key.as_bytes();
                match &op.record {
                    Some(record) => Inner::batch_put(&mut batch, cf, values, key, record),
                    None => Inner::batch_delete(&mut batch, cf, values, key),
                }
            }
        }
        for (sequence, entry) in &history {
            if let Err(error) = self.batch_history(&mut batch, *sequence, entry) {
                for mut entry in accepted {
                    entry.request.answer(Err(error.duplicate()));
                }
                return Err(format!("history column family unavailable: {error}"));
            }
        }
        drop(history);
        if next_version != state.last_version {
            batch.put_cf(meta, VERSION_COUNTER_KEY, next_version.to_le_bytes());
        }
        if events > 0 {
            batch.put_cf(meta, CHANGE_SEQUENCE_KEY, (last_sequence + 1).to_le_bytes());
        }
        if advance_clock {
            batch.put_cf(meta, CLOCK_MARK_KEY, now.to_le_bytes());
        }

        match self.db.write_opt(batch, &self.write_options) {
            Ok(()) => {
                state.last_version = next_version;
                state.last_sequence = last_sequence;
                state.persisted_clock = state.persisted_clock.max(now);
                self.groups_committed.fetch_add(1, Ordering::Relaxed);
                if corrupt_removed > 0 {
                    self.corrupt_records
                        .removed
                        .fetch_add(corrupt_removed, Ordering::Relaxed);
                }
                // Published before anyone is answered: every commit is
                // published whatever happened to its caller, and a
                // `catch_up_to` of a returned sequence ends at once. That is
                // this engine's property; the `Engine` contract lets a feed
                // arrive later, and consumers wait for it (see `changes`).
                self.feed.publish(
                    last_sequence,
                    events,
                    || change_key_bytes(&accepted),
                    || change_events(&accepted, first_sequence),
                );
                let mut sequence = first_sequence - 1;
                for mut entry in accepted {
                    // A request's sequence is that of its last event.
                    sequence += entry.outcomes.len() as u64;
                    entry.request.answer(Ok(WriteReceipt {
                        outcomes: entry.outcomes,
                        sequence,
                    }));
                }
                Ok(())
            }
            Err(error) => {
                let error = storage_error(error);
                for mut entry in accepted {
                    entry.request.answer(Err(error.duplicate()));
                }
                if error.is_retryable() {
                    Ok(())
                } else {
                    Err(format!("a write to the store failed: {error}"))
                }
            }
        }
    }
}

impl Inner {
    /// Empties one namespace in one `WriteBatch`: a range deletion over its
    /// column family, and over the out-of-line values of its key ranges
    /// (nested namespaces' ranges left out), with one change event. Alone in
    /// its commit, so the preconditions of every later write see the
    /// namespace empty.
    pub(super) fn commit_clear(
        &self,
        mut request: WriteRequest,
        namespace: NamespaceId,
        state: &mut WriterState,
    ) -> Result<(), String> {
        let handles = self
            .handle(namespace)
            .and_then(|cf| Ok((cf, self.values_handle()?, self.meta_handle()?)));
        let (cf, values, meta) = match handles {
            Ok(handles) => handles,
            Err(error) => {
                request.answer(Err(error.duplicate()));
                return Err(format!("column families unavailable: {error}"));
            }
        };
        let now = self.clock.now_millis();
        let prefix = self.namespaces.prefix(namespace).to_string();
        let mut batch = WriteBatch::default();
        for (start, end) in super::super::namespace_ranges(&self.namespaces, namespace) {
            batch.delete_range_cf(cf, &start, &end);
            batch.delete_range_cf(values, &start, &end);
        }
        let sequence = state.last_sequence + 1;
        let recorded = self
            .ensure_ceiling(&mut state.ceiling, sequence)
            .and_then(|()| {
                let entry = encode_batch(
                    now,
                    std::iter::once(HistoryEvent::NamespaceCleared { prefix: &prefix }),
                );
                self.batch_history(&mut batch, sequence, &entry)
            });
        if let Err(error) = recorded {
            request.answer(Err(error.duplicate()));
            return Err(format!("cannot record the history: {error}"));
        }
        batch.put_cf(meta, CHANGE_SEQUENCE_KEY, (sequence + 1).to_le_bytes());
        let advance_clock = now > state.persisted_clock;
        if advance_clock {
            batch.put_cf(meta, CLOCK_MARK_KEY, now.to_le_bytes());
        }
        match self.db.write_opt(batch, &self.write_options) {
            Ok(()) => {
                state.persisted_clock = state.persisted_clock.max(now);
                state.last_sequence = sequence;
                self.groups_committed.fetch_add(1, Ordering::Relaxed);
                self.feed.publish(
                    sequence,
                    1,
                    || prefix.len(),
                    || {
                        vec![ChangeEvent {
                            sequence,
                            batch_sequence: sequence,
                            key: Arc::from(prefix.as_str()),
                            change: Change::NamespaceCleared,
                        }]
                    },
                );
                request.answer(Ok(WriteReceipt {
                    outcomes: Vec::new(),
                    sequence,
                }));
                Ok(())
            }
            Err(error) => {
                let error = storage_error(error);
                request.answer(Err(error.duplicate()));
                if error.is_retryable() {
                    Ok(())
                } else {
                    Err(format!("a write to the store failed: {error}"))
                }
            }
        }
    }
}

impl Inner {
    /// Marks a clean stop for a flush before shutdown: the clock's mark
    /// persisted and the sequence ceiling lowered to the last sequence used.
    pub(super) fn commit_seal(
        &self,
        mut request: WriteRequest,
        state: &mut WriterState,
    ) -> Result<(), String> {
        self.commit_group(Vec::new(), state)?;
        match self.close_ceiling(state) {
            Ok(()) => {
                request.answer(Ok(WriteReceipt {
                    outcomes: Vec::new(),
                    sequence: state.last_sequence,
                }));
                Ok(())
            }
            Err(error) => {
                request.answer(Err(error.duplicate()));
                if error.is_retryable() {
                    Ok(())
                } else {
                    Err(format!("cannot record a clean stop: {error}"))
                }
            }
        }
    }
}

/// One request's preconditions checked and versions assigned.
struct Staged {
    /// The live version each touched key is left with.
    pending: HashMap<String, Option<u64>>,
    outcomes: Vec<WriteOutcome>,
    /// The last version the request assigned.
    last_version: u64,
    /// Undecodable records its unconditional deletes remove.
    corrupt_removed: u64,
}

/// The version an undecodable record is taken to have: none, since versions
/// start at 1. Only an unconditional delete ever sees it.
const CORRUPT_RECORD_VERSION: u64 = 0;

/// Checks one request's preconditions against the store (`current`) plus what
/// earlier requests of the group wrote, and patches the versions into its
/// records.
fn stage(
    ops: &mut [PreparedOp],
    current: &[Option<CurrentVersion>],
    group_pending: &HashMap<String, Option<u64>>,
    now: u64,
    mut version: u64,
    track_pending: bool,
) -> Result<Staged, EngineError> {
    let mut pending: HashMap<String, Option<u64>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut corrupt_removed = 0;
    for (index, op) in ops.iter_mut().enumerate() {
        let key = op.key.as_str();
        let blind_put = op.is_blind_put();
        let live = match pending.get(key).or_else(|| group_pending.get(key)) {
            Some(version) => *version,
            None if blind_put => None,
            None => match current.get(index) {
                Some(Some(Ok(version))) => *version,
                // An unconditional delete needs no version, so an undecodable
                // record does not stop it: deleting is how it is cleared.
                Some(Some(Err(EngineError::Corrupt { .. })))
                    if op.record.is_none() && op.precondition == Precondition::None =>
                {
                    corrupt_removed += 1;
                    Some(CORRUPT_RECORD_VERSION)
                }
                Some(Some(Err(error))) => return Err(error.duplicate()),
                _ => {
                    return Err(EngineError::Storage(
                        "the writer did not read a key it needs".into(),
                    ))
                }
            },
        };
        if !op.precondition.holds(live) {
            return Err(EngineError::PreconditionFailed {
                index,
                key: key.to_string(),
                precondition: op.precondition,
                current_version: live,
            });
        }
        match &mut op.record {
            Some(record) => {
                version += 1;
                record.set_version(version);
                if track_pending {
                    let alive = op.expire_at_millis.is_none_or(|at| at > now);
                    pending.insert(key.to_string(), alive.then_some(version));
                }
                outcomes.push(WriteOutcome::Put { version });
            }
            None => {
                if track_pending {
                    pending.insert(key.to_string(), None);
                }
                outcomes.push(WriteOutcome::Delete {
                    existed: live.is_some(),
                });
            }
        }
    }
    Ok(Staged {
        pending,
        outcomes,
        last_version: version,
        corrupt_removed,
    })
}

/// The live version in an encoded record, `None` if it has expired.
fn live_version_of(key: &str, bytes: &[u8], now: u64) -> Result<Option<u64>, EngineError> {
    if record::peek_expire_at_millis(bytes).is_some_and(|at| at <= now) {
        return Ok(None);
    }
    record::peek_version(bytes)
        .map(Some)
        .ok_or_else(|| EngineError::Corrupt {
            key: key.to_string(),
            reason: "unreadable record header".into(),
        })
}

/// The length of the keys and payloads of a commit's change events together.
fn change_key_bytes(accepted: &[Accepted]) -> usize {
    accepted
        .iter()
        .flat_map(|entry| entry.request.ops.iter().take(entry.outcomes.len()))
        .map(|op| op.key.len() + op.payload.as_ref().map_or(0, |payload| payload.bytes()))
        .sum()
}

/// The change events of a committed group, numbered from `first`; each
/// request's events carry the sequence of its last as their batch's.
fn change_events(accepted: &[Accepted], first: u64) -> Vec<ChangeEvent> {
    let mut events = Vec::new();
    let mut sequence = first;
    for entry in accepted {
        let batch_sequence = sequence + entry.outcomes.len() as u64 - 1;
        for (op, outcome) in entry.request.ops.iter().zip(&entry.outcomes) {
            events.push(ChangeEvent {
                sequence,
                batch_sequence,
                key: Arc::from(op.key.as_str()),
                change: match outcome {
                    WriteOutcome::Put { version } => Change::Put {
                        version: *version,
                        expire_at_millis: op.expire_at_millis,
                        schema_version: op.schema_version,
                        payload: op.payload.clone(),
                    },
                    WriteOutcome::Delete { .. } => Change::Delete,
                },
            });
            sequence += 1;
        }
    }
    events
}

/// The history entry of one accepted request, committed at `now`.
fn history_entry(entry: &Accepted, now: u64) -> Vec<u8> {
    let events = entry
        .request
        .ops
        .iter()
        .zip(&entry.outcomes)
        .map(|(op, outcome)| match outcome {
            WriteOutcome::Put { version } => HistoryEvent::Put {
                key: &op.key,
                version: *version,
                expire_at_millis: op.expire_at_millis,
                schema_version: op.schema_version,
            },
            WriteOutcome::Delete { .. } => HistoryEvent::Delete { key: &op.key },
        });
    encode_batch(now, events)
}
