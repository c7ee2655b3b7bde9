//! Reads: point reads, ordered scans and namespace counts, all linearizable
//! (etcd's default; serializable reads are never used, so a read that
//! starts after a write returned sees it, on any replica).
//!
//! A read that needs several etcd requests (many keys, out-of-line values,
//! several pages) pins the revision of its first, so it sees one snapshot.
//!
//! Point reads are coalesced: the keys of concurrent reads that arrive
//! while [`MAX_READS_IN_FLIGHT`] read transactions are under way go
//! together in the next one (up to `--max-txn-ops` ranges), one etcd
//! request for many. Each read still starts after its caller asked, so it
//! stays linearizable, and each caller gets its own keys at the shared
//! transaction's revision.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::keys::version;
use super::EtcdEngine;
use crate::engine::namespace::NamespaceId;
use crate::engine::record::{decode_head, peek_payload_len, value_of_entry, ValuePlace};
use crate::engine::{EngineError, Record, ScanPage, ScanRequest};

/// Most heads one scan request asks etcd for.
pub(super) const SCAN_PAGE: usize = 1000;
/// Coalesced read transactions in flight at once.
const MAX_READS_IN_FLIGHT: usize = 2;

/// Keys and their revision, as one read found them.
type Found = (i64, Vec<Option<KeyValue>>);

/// A point read waiting for a shared read transaction.
pub(super) struct PendingRead {
    keys: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Found, EngineError>>,
}

/// Sends the point reads `queue` receives in shared transactions until the
/// engine is dropped, [`MAX_READS_IN_FLIGHT`] at a time. Its queue holds at
/// most one read per caller waiting on it.
pub(super) async fn coalesce_reads(
    engine: std::sync::Weak<super::Inner>,
    mut queue: mpsc::UnboundedReceiver<PendingRead>,
) {
    let slots = Arc::new(Semaphore::new(MAX_READS_IN_FLIGHT));
    let mut waiting: VecDeque<PendingRead> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(read) => waiting.push_back(read),
                None => return,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        while let Ok(read) = queue.try_recv() {
            waiting.push_back(read);
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = EtcdEngine { inner };
        let max = engine.inner.options.max_txn_ops.max(1);
        let mut group = Vec::new();
        let mut keys = 0;
        while let Some(read) = waiting.front() {
            if !group.is_empty() && keys + read.keys.len() > max {
                break;
            }
            keys += read.keys.len();
            group.extend(waiting.pop_front());
        }
        tokio::spawn(async move {
            engine.read_group(group).await;
            drop(slot);
        });
    }
}

/// A decoded head: the record (its value empty when out of line), where
/// its value is, and the head's `mod_revision`.
pub(super) struct Head {
    pub(super) record: Record,
    pub(super) place: ValuePlace,
    pub(super) mod_revision: i64,
    /// Bytes of metadata and value, from the header alone.
    pub(super) payload_len: u64,
    /// The index stored in the header (the version's low bits).
    pub(super) index: u64,
}

/// Decodes a stored head; the version comes from the commit's revision.
pub(super) fn decode(key: &str, kv: &KeyValue) -> Result<Head, EngineError> {
    let bytes = kv.value();
    let corrupt = |reason: String| EngineError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let (mut record, place) = decode_head(bytes).map_err(|error| corrupt(error.to_string()))?;
    let payload_len = peek_payload_len(bytes).map_err(|error| corrupt(error.to_string()))?;
    let index = record.version;
    record.version = version(kv.mod_revision(), index);
    if let ValuePlace::Inline { start } = place {
        record.value = bytes[start..].to_vec();
    }
    Ok(Head {
        record,
        place,
        mod_revision: kv.mod_revision(),
        payload_len,
        index,
    })
}

impl EtcdEngine {
    /// Reads the keys of every read of `group` in one transaction (or alone,
    /// one read of more keys than a transaction takes) and answers each.
    async fn read_group(&self, group: Vec<PendingRead>) {
        if group.len() == 1 {
            let read = group.into_iter().next().expect("one read");
            let _ = read.reply.send(self.get_keys_now(&read.keys, None).await);
            return;
        }
        let all: Vec<Vec<u8>> = group.iter().flat_map(|read| read.keys.clone()).collect();
        match self.get_keys_now(&all, None).await {
            Ok((revision, mut found)) => {
                for read in group.into_iter().rev() {
                    let own = found.split_off(found.len() - read.keys.len());
                    let _ = read.reply.send(Ok((revision, own)));
                }
            }
            Err(error) => {
                for read in group {
                    let _ = read.reply.send(Err(error.duplicate()));
                }
            }
        }
    }

    /// Ranges of single keys at one revision (`revision`, or the current
    /// one): current reads go through the coalescer, so that concurrent
    /// reads share etcd requests.
    pub(super) async fn get_keys(
        &self,
        keys: &[Vec<u8>],
        revision: Option<i64>,
    ) -> Result<Found, EngineError> {
        if revision.is_some() || keys.is_empty() {
            return self.get_keys_now(keys, revision).await;
        }
        let (reply, answer) = oneshot::channel();
        let read = PendingRead {
            keys: keys.to_vec(),
            reply,
        };
        if self.inner.reader.send(read).is_err() {
            return Err(EngineError::Unavailable(
                "the etcd engine is closing".into(),
            ));
        }
        answer
            .await
            .map_err(|_| EngineError::Unavailable("the etcd engine is closing".into()))?
    }

    /// Ranges of single keys, in as few transactions as the cluster's
    /// `--max-txn-ops` allows, at one revision (`revision`, or the first
    /// transaction's); returns that revision and the key-values in order.
    async fn get_keys_now(
        &self,
        keys: &[Vec<u8>],
        mut revision: Option<i64>,
    ) -> Result<Found, EngineError> {
        let mut found = Vec::with_capacity(keys.len());
        let chunk = self.inner.options.max_txn_ops.max(1);
        for keys in keys.chunks(chunk) {
            let options = || revision.map(|revision| GetOptions::new().with_revision(revision));
            let (header_revision, kvs) = if keys.len() == 1 {
                let mut response = self.send_get(keys[0].clone(), options()).await?;
                let header = response.header().map_or(0, |header| header.revision());
                (header, vec![response.take_kvs().into_iter().next()])
            } else {
                let ops: Vec<TxnOp> = keys
                    .iter()
                    .map(|key| TxnOp::get(key.clone(), options()))
                    .collect();
                let response = self.send_txn(Txn::new().and_then(ops), true).await?;
                let header = response.header().map_or(0, |header| header.revision());
                let kvs = response
                    .op_responses()
                    .into_iter()
                    .map(|op| match op {
                        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                        _ => None,
                    })
                    .collect();
                (header, kvs)
            };
            revision.get_or_insert(header_revision);
            found.extend(kvs);
        }
        Ok((revision.unwrap_or(0), found))
    }

    /// Fills in the out-of-line values of `heads` from their value entries
    /// at `revision`; an entry that is not the head's is corrupt data.
    async fn fill_values(
        &self,
        heads: &mut [(&str, &mut Head)],
        revision: i64,
    ) -> Result<(), EngineError> {
        let wanted: Vec<usize> = (0..heads.len())
            .filter(|at| matches!(heads[*at].1.place, ValuePlace::OutOfLine { .. }))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = wanted
            .iter()
            .map(|at| self.inner.keys.value(heads[*at].0))
            .collect();
        let (_, entries) = self.get_keys(&keys, Some(revision)).await?;
        for (at, entry) in wanted.into_iter().zip(entries) {
            let (key, head) = &mut heads[at];
            let corrupt = |reason: &str| EngineError::Corrupt {
                key: key.to_string(),
                reason: reason.to_string(),
            };
            let entry = entry.ok_or_else(|| corrupt("the out-of-line value is missing"))?;
            if entry.mod_revision() != head.mod_revision {
                return Err(corrupt("the out-of-line value belongs to another write"));
            }
            let value = value_of_entry(entry.value(), head.index)
                .map_err(|error| corrupt(&error.to_string()))?
                .ok_or_else(|| corrupt("the out-of-line value belongs to another write"))?;
            head.record.value = value.to_vec();
        }
        Ok(())
    }

    /// Reads live records (duplicates included), refusing with
    /// [`EngineError::TooLarge`] before reading any out-of-line value when
    /// they exceed `max_bytes`.
    pub(super) async fn read_records(
        &self,
        keys: &[String],
        max_bytes: Option<usize>,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        let now = self.ensure_clock_persisted().await?;
        let mut distinct: Vec<&str> = keys.iter().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let etcd_keys: Vec<Vec<u8>> = distinct
            .iter()
            .map(|key| self.inner.keys.head(key))
            .collect();
        let (revision, kvs) = self.get_keys(&etcd_keys, None).await?;
        let mut heads: HashMap<&str, Head> = HashMap::new();
        for (key, kv) in distinct.iter().zip(kvs) {
            if let Some(kv) = kv {
                let head = decode(key, &kv)?;
                if !head.record.is_expired_at(now) {
                    heads.insert(key, head);
                }
            }
        }
        if let Some(limit) = max_bytes {
            let actual: u64 = keys
                .iter()
                .filter_map(|key| heads.get(key.as_str()))
                .map(|head| head.payload_len)
                .sum();
            if actual > limit as u64 {
                return Err(EngineError::TooLarge { limit, actual });
            }
        }
        let mut filled: Vec<(&str, &mut Head)> =
            heads.iter_mut().map(|(key, head)| (*key, head)).collect();
        self.fill_values(&mut filled, revision).await?;
        Ok(keys
            .iter()
            .map(|key| heads.get(key.as_str()).map(|head| head.record.clone()))
            .collect())
    }

    /// One page of an ordered prefix scan (see [`ScanRequest`]).
    pub(super) async fn scan_records(&self, request: ScanRequest) -> Result<ScanPage, EngineError> {
        let now = self.ensure_clock_persisted().await?;
        let keys = &self.inner.keys;
        let (mut from, end) = keys.head_range(&request.prefix);
        if let Some(after) = &request.start_after {
            let mut next = keys.head(after);
            next.push(0);
            from = from.max(next);
        }
        // A prefix spanning owned namespaces (the empty one) leaves them out,
        // as RocksDB does by reading only the spanned column families: a
        // listing of everything never shows another service's records.
        let namespaces = &self.inner.namespaces;
        let spanned = namespaces
            .has_owners()
            .then(|| namespaces.spanning(&request.prefix));
        let mut revision: Option<i64> = None;
        let mut heads: Vec<(String, Head)> = Vec::new();
        let mut examined = 0usize;
        let mut resume_after = None;
        while heads.len() < request.limit {
            let mut want = (request.limit - heads.len()).min(SCAN_PAGE);
            if request.max_examined > 0 {
                want = want.min(request.max_examined - examined);
            }
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(want as i64);
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let mut response = self.send_get(from.clone(), Some(options)).await?;
            revision.get_or_insert(response.header().map_or(0, |header| header.revision()));
            let more = response.more();
            let mut last = None;
            for kv in response.take_kvs() {
                examined += 1;
                last = Some(kv.key().to_vec());
                let Some(key) = keys.record_key(kv.key()) else {
                    continue;
                };
                if spanned
                    .as_ref()
                    .is_some_and(|spanned| !spanned.contains(&namespaces.route(key)))
                {
                    continue;
                }
                let head = decode(key, &kv)?;
                if !head.record.is_expired_at(now) {
                    heads.push((key.to_string(), head));
                }
            }
            let Some(mut last) = last else { break };
            if !more {
                break;
            }
            if request.max_examined > 0
                && examined >= request.max_examined
                && heads.len() < request.limit
            {
                resume_after = keys.record_key(&last).map(String::from);
                break;
            }
            last.push(0);
            from = last;
        }
        // The position: the last write request of this store at the scan's
        // snapshot (other clusters' revisions in the same etcd are not ours).
        let position = match revision {
            Some(revision) => self
                .send_get(
                    keys.feed(),
                    Some(GetOptions::new().with_revision(revision).with_keys_only()),
                )
                .await?
                .kvs()
                .first()
                .map_or(0, |kv| super::feed::revision_end(kv.mod_revision())),
            None => 0,
        };
        if request.include_values {
            let mut filled: Vec<(&str, &mut Head)> = heads
                .iter_mut()
                .map(|(key, head)| (key.as_str(), head))
                .collect();
            self.fill_values(&mut filled, revision.unwrap_or(0)).await?;
        }
        Ok(ScanPage {
            entries: heads
                .into_iter()
                .map(|(key, mut head)| {
                    if !request.include_values {
                        head.record.value = Vec::new();
                    }
                    (key, head.record)
                })
                .collect(),
            resume_after,
            position,
        })
    }

    /// The namespace whose prefix is `prefix`.
    pub(super) fn namespace_id(&self, prefix: &str) -> Result<NamespaceId, EngineError> {
        let namespaces = &self.inner.namespaces;
        (0..namespaces.len())
            .find(|id| namespaces.prefix(*id) == prefix)
            .ok_or_else(|| EngineError::Layout(format!("{prefix:?} is not a configured namespace")))
    }

    /// Live records of namespace `prefix`, nested namespaces left out: every
    /// head is read, because etcd's count-only ranges count expired records
    /// too.
    pub(super) async fn count_live(&self, prefix: &str) -> Result<u64, EngineError> {
        let id = self.namespace_id(prefix)?;
        let now = self.ensure_clock_persisted().await?;
        let keys = &self.inner.keys;
        let (mut from, end) = keys.head_range(prefix);
        let mut revision: Option<i64> = None;
        let mut count = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SCAN_PAGE as i64);
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let mut response = self.send_get(from.clone(), Some(options)).await?;
            revision.get_or_insert(response.header().map_or(0, |header| header.revision()));
            let more = response.more();
            let kvs = response.take_kvs();
            for kv in &kvs {
                let Some(key) = keys.record_key(kv.key()) else {
                    continue;
                };
                if self.inner.namespaces.route(key) == id
                    && !decode(key, kv)?.record.is_expired_at(now)
                {
                    count += 1;
                }
            }
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(count),
            }
        }
    }
}
