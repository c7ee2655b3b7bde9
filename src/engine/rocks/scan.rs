//! Ordered prefix scans merged across namespaces, the key ranges of a
//! namespace, and counting live records.

use rocksdb::{ReadOptions, DB};

use super::*;
use crate::clock::Clock;
use crate::engine::namespace::NamespaceId;
use crate::engine::record::{self, ValuePlace};
use crate::engine::{ScanPage, ScanRequest};

impl Inner {
    pub(super) fn scan(&self, request: &ScanRequest) -> Result<ScanPage, EngineError> {
        let mut page = ScanPage::default();
        let now = self.clock.now_millis();
        let prefix = request.prefix.as_bytes();
        let start: Vec<u8> = match &request.start_after {
            Some(after) if after.as_bytes() >= prefix => {
                let mut start = after.as_bytes().to_vec();
                start.push(0);
                start
            }
            _ => prefix.to_vec(),
        };
        let upper_bound = prefix_successor(prefix);
        // One snapshot for every namespace, so a page is a consistent cut;
        // its position is the change sequence the writer stored with the
        // last commit the snapshot holds.
        let snapshot = self.db.snapshot();
        page.position = self.snapshot_position(&snapshot)?;
        if request.limit == 0 {
            return Ok(page);
        }
        let handles = self
            .namespaces
            .spanning(&request.prefix)
            .into_iter()
            .map(|id| self.handle(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut iterators: Vec<_> = handles
            .iter()
            .map(|cf| {
                let mut read_options = ReadOptions::default();
                read_options.set_snapshot(&snapshot);
                if let Some(upper) = &upper_bound {
                    read_options.set_iterate_upper_bound(upper.clone());
                }
                let mut iterator = self.db.raw_iterator_cf_opt(*cf, read_options);
                iterator.seek(&start);
                iterator
            })
            .collect();
        let values = self.values_handle()?;

        let mut examined = 0usize;
        // Namespaces hold disjoint keys; merge them by always taking the
        // smallest current key. There are only a handful of namespaces, so a
        // linear pick beats a heap.
        loop {
            let mut smallest: Option<usize> = None;
            for (index, iterator) in iterators.iter().enumerate() {
                let Some(key) = iterator.key() else { continue };
                if smallest.is_none_or(|best| Some(key) < iterators[best].key()) {
                    smallest = Some(index);
                }
            }
            let Some(index) = smallest else { break };
            let iterator = &mut iterators[index];
            if let (Some(key), Some(head)) = (iterator.key(), iterator.value()) {
                examined += 1;
                let live = record::peek_expire_at_millis(head).is_none_or(|at| at > now);
                if live {
                    // Heads only: an out-of-line value is read only when asked for.
                    let (mut record, place) =
                        record::decode_head(head).map_err(|error| self.corrupt(key, error))?;
                    if request.include_values {
                        record.value = match place {
                            ValuePlace::Inline { start } => head[start..].to_vec(),
                            ValuePlace::OutOfLine { .. } => {
                                let mut read_options = ReadOptions::default();
                                read_options.set_snapshot(&snapshot);
                                let entry = self
                                    .db
                                    .get_pinned_cf_opt(values, key, &read_options)
                                    .map_err(storage_error)?;
                                entry
                                    .as_deref()
                                    .map(|entry| record::value_of_entry(entry, record.version))
                                    .transpose()
                                    .map_err(|error| self.corrupt(key, error))?
                                    .flatten()
                                    .ok_or_else(|| EngineError::Corrupt {
                                        key: String::from_utf8_lossy(key).into_owned(),
                                        reason: "the out-of-line value of this version is missing"
                                            .into(),
                                    })?
                                    .to_vec()
                            }
                        };
                    }
                    let name =
                        String::from_utf8(key.to_vec()).map_err(|_| EngineError::Corrupt {
                            key: String::from_utf8_lossy(key).into_owned(),
                            reason: "key is not UTF-8".into(),
                        })?;
                    page.entries.push((name, record));
                    if page.entries.len() == request.limit {
                        break;
                    }
                }
                if request.max_examined > 0 && examined >= request.max_examined {
                    // Bounded work: the caller resumes after this key.
                    page.resume_after = Some(String::from_utf8_lossy(key).into_owned());
                    break;
                }
            }
            iterator.next();
        }
        for iterator in &iterators {
            iterator.status().map_err(storage_error)?;
        }
        Ok(page)
    }
}

impl Inner {
    /// The last change sequence committed in `snapshot`: the meta column
    /// family's next sequence, read through it, less one.
    fn snapshot_position(&self, snapshot: &rocksdb::Snapshot<'_>) -> Result<u64, EngineError> {
        let mut read_options = ReadOptions::default();
        read_options.set_snapshot(snapshot);
        let next = self
            .db
            .get_pinned_cf_opt(self.meta_handle()?, CHANGE_SEQUENCE_KEY, &read_options)
            .map_err(storage_error)?;
        Ok(match next.as_deref().map(<[u8; 8]>::try_from) {
            Some(Ok(bytes)) => u64::from_le_bytes(bytes).saturating_sub(1),
            Some(Err(_)) => {
                return Err(EngineError::Corrupt {
                    key: "change_sequence".into(),
                    reason: "not 8 bytes".into(),
                })
            }
            None => 0,
        })
    }
}

/// The smallest byte string greater than every string starting with `prefix`;
/// `None` when there is none (empty prefix or all 0xFF).
pub(super) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last != u8::MAX {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// The key ranges `[start, end)` that hold exactly the keys routed to
/// namespace `id`: its prefix's range minus the ranges of the namespaces
/// nested under it.
pub(crate) fn namespace_ranges(
    namespaces: &Namespaces,
    id: NamespaceId,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let prefix = namespaces.prefix(id).as_bytes();
    let end = prefix_successor(prefix).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
    // Configured prefixes inside this one, outermost only (sorted, so an
    // inner one follows the one containing it).
    let mut holes: Vec<&[u8]> = Vec::new();
    for other in namespaces.configured_prefixes() {
        let other = other.as_bytes();
        if other.len() > prefix.len()
            && other.starts_with(prefix)
            && !holes.last().is_some_and(|hole| other.starts_with(hole))
        {
            holes.push(other);
        }
    }
    let mut ranges = Vec::new();
    let mut start = prefix.to_vec();
    for hole in holes {
        if start.as_slice() < hole {
            ranges.push((start, hole.to_vec()));
        }
        start = prefix_successor(hole).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
    }
    if start < end {
        ranges.push((start, end));
    }
    ranges
}

/// Counts live record heads in `cf` (within `range` if given), stopping at `limit`.
pub(super) fn count_live(
    db: &DB,
    cf: CfHandle<'_>,
    range: Option<(&[u8], &[u8])>,
    now: u64,
    limit: u64,
) -> Result<u64, EngineError> {
    let mut read_options = ReadOptions::default();
    // A one-off pass over everything should not evict the working set.
    read_options.fill_cache(false);
    if let Some((_, end)) = range {
        read_options.set_iterate_upper_bound(end.to_vec());
    }
    let mut iterator = db.raw_iterator_cf_opt(cf, read_options);
    match range {
        Some((start, _)) => iterator.seek(start),
        None => iterator.seek_to_first(),
    }
    let mut live = 0;
    while let Some(head) = iterator.value() {
        if record::peek_expire_at_millis(head).is_none_or(|at| at > now) {
            live += 1;
            if live >= limit {
                break;
            }
        }
        iterator.next();
    }
    iterator.status().map_err(storage_error)?;
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::{namespace_ranges, prefix_successor};
    use crate::engine::Namespaces;

    /// A namespace's ranges leave out the namespaces nested in it; the
    /// default namespace's leave out every configured prefix.
    #[test]
    fn namespace_ranges_leave_out_nested_namespaces() {
        let namespaces = Namespaces::new(["user:", "user:admin:", "user:admin:x:", "cache:"]);
        let ranges = |prefix: &str| {
            let id = namespaces.route(prefix);
            namespace_ranges(&namespaces, id)
                .into_iter()
                .map(|(start, end)| {
                    (
                        String::from_utf8_lossy(&start).into_owned(),
                        String::from_utf8_lossy(&end).into_owned(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            ranges("user:"),
            vec![pair("user:", "user:admin:"), pair("user:admin;", "user;")]
        );
        assert_eq!(
            ranges("user:admin:"),
            vec![
                pair("user:admin:", "user:admin:x:"),
                pair("user:admin:x;", "user:admin;")
            ]
        );
        assert_eq!(ranges("cache:"), vec![pair("cache:", "cache;")]);
        let default = ranges("other");
        assert_eq!(default.first().unwrap(), &pair("", "cache:"));
        assert_eq!(default[1], pair("cache;", "user:"));
        assert_eq!(default[2].0, "user;");
    }

    /// The upper bound of a prefix range is the next byte string past it.
    #[test]
    fn prefix_successor_bounds_ranges() {
        assert_eq!(prefix_successor(b"user:"), Some(b"user;".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
