//! `ListNamespaces` figures over etcd: live keys and live bytes of each
//! namespace, read from one snapshot.
//!
//! etcd keeps no per-range sizes, and count-only ranges count expired
//! records the sweeper has not reclaimed yet. So each namespace's own key
//! ranges (its prefix less the namespaces nested in it) are counted with
//! count-only ranges and then walked head by head, up to
//! [`STATS_MAX_EXAMINED`] heads per namespace: a head carries its record's
//! expiry and the length of its value and metadata, so out-of-line values
//! are never read. A namespace walked to its end gets exact figures; a
//! larger one gets its count scaled by the live share of the heads walked,
//! and its bytes by their mean size.
//!
//! Every request is pinned to the revision of the first, so concurrent
//! writers cannot make a record count twice or not at all between a count
//! and a walk, and nothing is written: per-namespace counters kept in every
//! write's `Txn` would make all writers of a namespace conflict on one key.

use etcd_client::GetOptions;

use super::keys::Keys;
use super::read::{decode, SCAN_PAGE};
use super::EtcdEngine;
use crate::engine::namespace::NamespaceId;
use crate::engine::{EngineError, NamespaceStats, Namespaces};

/// Most heads one namespace's walk reads (a head is at most about 2.5 KiB:
/// a bounded read however large the namespace is).
pub(super) const STATS_MAX_EXAMINED: u64 = 10_000;

/// What the walk of one namespace found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Walked {
    /// Heads stored in the namespace's own ranges (expired ones included).
    pub(super) stored: u64,
    /// Heads walked.
    pub(super) examined: u64,
    /// Of those, live ones.
    pub(super) live: u64,
    /// Bytes of the live ones: key, value and metadata.
    pub(super) live_bytes: u64,
}

impl Walked {
    /// The namespace's figures: exact when the walk saw every head,
    /// scaled from the heads walked otherwise.
    fn estimate(self) -> (u64, u64) {
        if self.examined >= self.stored || self.examined == 0 {
            return (self.live, self.live_bytes);
        }
        let scale = |part: u64| (part as u128 * self.stored as u128 / self.examined as u128) as u64;
        (scale(self.live), scale(self.live_bytes))
    }
}

impl EtcdEngine {
    /// Live keys and bytes of every namespace (nested namespaces counted in
    /// their own), the default namespace first, the others by prefix.
    pub(super) async fn stats(&self) -> Result<Vec<NamespaceStats>, EngineError> {
        let namespaces = &self.inner.namespaces;
        let now = self.ensure_clock_persisted().await?;
        let mut revision = None;
        let mut stats = Vec::with_capacity(namespaces.len());
        for id in 0..namespaces.len() {
            let walked = self.walk_namespace(id, now, &mut revision).await?;
            let (estimated_keys, estimated_live_bytes) = walked.estimate();
            stats.push(NamespaceStats {
                prefix: namespaces.prefix(id).to_string(),
                storage: format!(
                    "etcd range {}k/{}",
                    self.inner.options.prefix,
                    namespaces.prefix(id)
                ),
                estimated_keys,
                estimated_live_bytes,
            });
        }
        stats[1..].sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(stats)
    }

    /// Counts and walks namespace `id`'s own ranges at `revision` (set by
    /// the first request of the whole listing when still `None`).
    async fn walk_namespace(
        &self,
        id: NamespaceId,
        now: u64,
        revision: &mut Option<i64>,
    ) -> Result<Walked, EngineError> {
        let ranges = own_ranges(&self.inner.namespaces, &self.inner.keys, id);
        self.walk_ranges(ranges, now, revision, STATS_MAX_EXAMINED)
            .await
    }

    /// Counts the heads of `ranges`, then walks up to `max_examined` of them
    /// at `revision` (set by the first request when still `None`).
    pub(super) async fn walk_ranges(
        &self,
        ranges: Vec<(Vec<u8>, Vec<u8>)>,
        now: u64,
        revision: &mut Option<i64>,
        max_examined: u64,
    ) -> Result<Walked, EngineError> {
        let keys = &self.inner.keys;
        let mut walked = Walked::default();
        for (start, end) in &ranges {
            let mut options = GetOptions::new().with_range(end.clone()).with_count_only();
            if let Some(revision) = *revision {
                options = options.with_revision(revision);
            }
            let response = self.send_get(start.clone(), Some(options)).await?;
            revision.get_or_insert(response.header().map_or(0, |header| header.revision()));
            walked.stored += response.count().max(0) as u64;
        }
        for (start, end) in ranges {
            let mut from = start;
            while walked.examined < max_examined {
                let want = (max_examined - walked.examined).min(SCAN_PAGE as u64);
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(want as i64);
                if let Some(revision) = *revision {
                    options = options.with_revision(revision);
                }
                let mut response = self.send_get(from.clone(), Some(options)).await?;
                let more = response.more();
                let kvs = response.take_kvs();
                for kv in &kvs {
                    walked.examined += 1;
                    let Some(key) = keys.record_key(kv.key()) else {
                        continue;
                    };
                    let head = decode(key, kv)?;
                    if !head.record.is_expired_at(now) {
                        walked.live += 1;
                        walked.live_bytes += key.len() as u64 + head.payload_len;
                    }
                }
                match kvs.last() {
                    Some(last) if more => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
        }
        Ok(walked)
    }
}

/// The head ranges holding namespace `id`'s own records: its prefix's
/// range less those of the namespaces nested directly in it (which are
/// disjoint: one nested in another is not directly nested), in order.
pub(super) fn own_ranges(
    namespaces: &Namespaces,
    keys: &Keys,
    id: NamespaceId,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (mut from, end) = keys.head_range(namespaces.prefix(id));
    let mut nested: Vec<(Vec<u8>, Vec<u8>)> = namespaces
        .nested_in(id)
        .into_iter()
        .map(|child| keys.head_range(namespaces.prefix(child)))
        .collect();
    nested.sort();
    let mut ranges = Vec::with_capacity(nested.len() + 1);
    for (start, stop) in nested {
        if start > from {
            ranges.push((from, start));
        }
        from = stop;
    }
    if from < end {
        ranges.push((from, end));
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace walked to its end is exact; a larger one scales the
    /// walked heads' live share and mean size to its stored count.
    #[test]
    fn estimates_scale_only_a_partial_walk() {
        let whole = Walked {
            stored: 10,
            examined: 10,
            live: 7,
            live_bytes: 700,
        };
        assert_eq!(whole.estimate(), (7, 700));
        let partial = Walked {
            stored: 40_000,
            examined: 10_000,
            live: 5_000,
            live_bytes: 1_000_000,
        };
        assert_eq!(partial.estimate(), (20_000, 4_000_000));
        assert_eq!(Walked::default().estimate(), (0, 0));
    }
}
