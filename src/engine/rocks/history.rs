//! The RocksDB engine's change history: one entry per client request in a
//! column family of its own, written in the same `WriteBatch` as the data.
//!
//! Layout: `tierkv/history` (a name no namespace can take: namespaces are
//! `default` and `kv/<prefix>`) maps the request's sequence, 8 bytes
//! big-endian so the byte order is the commit order, to a compact encoding
//! of its events (see [`encode_batch`]) and its commit time. The events of a
//! request have consecutive sequences ending with the request's, so they
//! are not stored.
//!
//! Identity and durability (see `docs/design/watch-history.md`): the
//! history id lives in a file beside the store's own files and in the meta
//! column family; it is renewed when either is missing or they differ (a
//! restored backup carries no file), or when the history column family was
//! just created. A durable sequence ceiling, raised with an fsync in large
//! steps before any sequence above it is used, bounds what a crash can
//! lose: at an open after an unclean stop, sequences continue above the
//! ceiling and the range between the recovered latest sequence and the
//! ceiling is recorded as lost, so a position inside it gets
//! [`HistoryError::Rewound`] rather than events that were never its own.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::Rng;
use rocksdb::{ReadOptions, WriteBatch, WriteOptions, DB};

mod codec;

pub(super) use codec::{encode_batch, history_key, HistoryEvent};

use codec::decode_batch;

use super::writer::WriterState;
use super::{storage_error, Inner, CHANGE_SEQUENCE_KEY, META_CF};
use crate::clock::Clock;
use crate::engine::{EngineError, HistoryError, HistoryPage, HistoryPosition};

/// The column family of the history.
pub(super) const HISTORY_CF: &str = "tierkv/history";
/// The history id, beside the store's files (see the module doc).
const HISTORY_ID_FILE: &str = "HISTORY_ID";
/// The history id's copy in the meta column family.
const HISTORY_ID_KEY: &[u8] = b"history_id";
/// The oldest resumable sequence: every batch above it is kept.
const HISTORY_FLOOR_KEY: &[u8] = b"history_floor";
/// No sequence above this has been used; raised durably before one is.
const SEQUENCE_CEILING_KEY: &[u8] = b"sequence_ceiling";
/// Ranges of sequences `(after, to]` an unclean stop may have lost.
const LOST_RANGES_KEY: &[u8] = b"history_lost_ranges";
/// How far ahead of the sequences in use the ceiling is raised: one fsync
/// per this many events, and the size of the gap an unclean stop leaves.
pub(super) const CEILING_STEP: u64 = 100_000;
/// At most this many lost ranges are remembered (each unclean stop adds
/// one; older ones are long trimmed by retention).
const MAX_LOST_RANGES: usize = 64;
/// A history page holds at most about this many bytes of keys.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// A trim pass looks at most at this many batches for their age.
const TRIM_SCAN_LIMIT: usize = 100_000;

/// The history's state shared by readers, the writer and the trimmer.
pub(super) struct HistoryState {
    /// This history's id.
    pub(super) id: u64,
    /// The oldest resumable sequence; raised before the batches below it
    /// are deleted, so a reader that sees them gone sees it raised.
    pub(super) floor: AtomicU64,
    /// Ranges `(after, to]` lost by unclean stops.
    pub(super) lost: Vec<(u64, u64)>,
    /// Retention: most sequences kept (0: unbounded).
    pub(super) max_events: u64,
    /// Retention: oldest commit kept, in milliseconds (0: unbounded).
    pub(super) max_age_millis: u64,
    /// Serialises trims (the background pass and the test hook).
    pub(super) trimming: Mutex<()>,
}

/// What opening the history decided.
pub(super) struct OpenedHistory {
    pub(super) state: HistoryState,
    /// The sequence the writer continues after (above the old ceiling after
    /// an unclean stop).
    pub(super) last_sequence: u64,
    /// The durable ceiling now.
    pub(super) ceiling: u64,
}

fn read_u64(db: &DB, key: &[u8]) -> Result<Option<u64>, EngineError> {
    let meta = meta(db)?;
    match db.get_cf(meta, key).map_err(storage_error)? {
        None => Ok(None),
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(|bytes| Some(u64::from_le_bytes(bytes)))
            .map_err(|_| EngineError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: "not 8 bytes".into(),
            }),
    }
}

fn meta(db: &DB) -> Result<&rocksdb::ColumnFamily, EngineError> {
    db.cf_handle(META_CF)
        .ok_or_else(|| EngineError::Storage("meta column family missing".into()))
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// Opens the history of a store whose recovered last sequence is
/// `recovered`: its id, floor, lost ranges and ceiling. `created` tells
/// whether the history column family did not exist before this open.
pub(super) fn open_history(
    db: &DB,
    path: &Path,
    created: bool,
    recovered: u64,
    max_events: u64,
    max_age_millis: u64,
) -> Result<OpenedHistory, EngineError> {
    let meta_cf = meta(db)?;
    let mut batch = WriteBatch::default();

    // Sequences: continue above the ceiling when the last stop was unclean
    // (a clean stop lowers the ceiling to the last sequence).
    let ceiling = read_u64(db, SEQUENCE_CEILING_KEY)?.unwrap_or(0);
    let mut lost = match db.get_cf(meta_cf, LOST_RANGES_KEY).map_err(storage_error)? {
        Some(bytes) => bytes
            .chunks_exact(16)
            .map(|pair| {
                let (after, to) = pair.split_at(8);
                (
                    u64::from_le_bytes(after.try_into().unwrap_or_default()),
                    u64::from_le_bytes(to.try_into().unwrap_or_default()),
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let mut last_sequence = recovered;
    if ceiling > recovered {
        tracing::warn!(
            recovered,
            ceiling,
            "the store was not closed cleanly; sequences continue above the ceiling, and \
             watch positions after {recovered} up to {ceiling} are refused as possibly lost"
        );
        lost.push((recovered, ceiling));
        if lost.len() > MAX_LOST_RANGES {
            lost.remove(0);
        }
        let encoded: Vec<u8> = lost
            .iter()
            .flat_map(|(after, to)| after.to_le_bytes().into_iter().chain(to.to_le_bytes()))
            .collect();
        batch.put_cf(meta_cf, LOST_RANGES_KEY, encoded);
        // One past the ceiling: the ceiling itself may have been used before
        // the stop, and a position this open hands out (a heartbeat's, a
        // scan's) must lie outside the lost range. Stored as the next
        // sequence, so scans report it too.
        last_sequence = ceiling + 1;
        batch.put_cf(
            meta_cf,
            CHANGE_SEQUENCE_KEY,
            (last_sequence + 1).to_le_bytes(),
        );
    }

    // Identity: kept only when the file, the meta copy and the column
    // family all survived.
    let file = path.join(HISTORY_ID_FILE);
    let file_id = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| u64::from_str_radix(text.trim(), 16).ok());
    let meta_id = read_u64(db, HISTORY_ID_KEY)?;
    let stored_floor = read_u64(db, HISTORY_FLOOR_KEY)?;
    let kept = match (file_id, meta_id, stored_floor) {
        (Some(file_id), Some(meta_id), Some(_)) if !created && file_id == meta_id => Some(file_id),
        _ => None,
    };
    let (id, floor) = match kept {
        Some(id) => (id, stored_floor.unwrap_or(0)),
        None => {
            // A new history starts at the current sequence: no position of
            // it can be older.
            let id = loop {
                let id: u64 = rand::rng().random();
                if id != 0 && Some(id) != meta_id && Some(id) != file_id {
                    break id;
                }
            };
            if meta_id.is_some() || file_id.is_some() {
                tracing::warn!(
                    "the change history was lost or restored; it starts again under a new id, \
                     and watchers must List and watch again"
                );
            }
            batch.put_cf(meta_cf, HISTORY_ID_KEY, id.to_le_bytes());
            batch.put_cf(meta_cf, HISTORY_FLOOR_KEY, last_sequence.to_le_bytes());
            (id, last_sequence)
        }
    };
    let new_ceiling = last_sequence + CEILING_STEP;
    batch.put_cf(meta_cf, SEQUENCE_CEILING_KEY, new_ceiling.to_le_bytes());
    db.write_opt(batch, &synced()).map_err(storage_error)?;
    // The file after the meta copy: a crash between the two leaves them
    // different, which renews the id again (never keeps a wrong one).
    if file_id != Some(id) {
        write_id_file(&file, id).map_err(|error| {
            EngineError::Storage(format!("cannot write {}: {error}", file.display()))
        })?;
    }
    Ok(OpenedHistory {
        state: HistoryState {
            id,
            floor: AtomicU64::new(floor),
            lost,
            max_events,
            max_age_millis,
            trimming: Mutex::new(()),
        },
        last_sequence,
        ceiling: new_ceiling,
    })
}

/// Writes the id file durably (the file, then its directory).
fn write_id_file(file: &Path, id: u64) -> std::io::Result<()> {
    let temporary = file.with_extension("tmp");
    {
        let mut out = std::fs::File::create(&temporary)?;
        writeln!(out, "{id:016x}")?;
        out.sync_all()?;
    }
    std::fs::rename(&temporary, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Inner {
    fn history_handle(&self) -> Result<&rocksdb::ColumnFamily, EngineError> {
        self.db
            .cf_handle(HISTORY_CF)
            .ok_or_else(|| EngineError::Storage("history column family missing".into()))
    }

    /// An iterator over the history's batches up to sequence `latest`
    /// (nothing above it: a commit still being made visible waits for the
    /// next read), read once, so it does not fill the block cache.
    fn history_iterator(
        &self,
        latest: u64,
    ) -> Result<rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>, EngineError> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(history_key(latest.saturating_add(1)).to_vec());
        read_options.fill_cache(false);
        Ok(self
            .db
            .raw_iterator_cf_opt(self.history_handle()?, read_options))
    }

    /// Adds the durable raise of the sequence ceiling needed before
    /// sequences up to `last` are used: a separate synced write, before the
    /// commit that uses them, so no crash can keep a sequence above the
    /// recorded ceiling. Once per [`CEILING_STEP`] sequences.
    pub(super) fn ensure_ceiling(&self, ceiling: &mut u64, last: u64) -> Result<(), EngineError> {
        if last <= *ceiling {
            return Ok(());
        }
        let raised = last + CEILING_STEP;
        self.db
            .put_cf_opt(
                self.meta_handle()?,
                SEQUENCE_CEILING_KEY,
                raised.to_le_bytes(),
                &synced(),
            )
            .map_err(storage_error)?;
        *ceiling = raised;
        Ok(())
    }

    /// Lowers the ceiling to the last sequence used, durably: a clean stop,
    /// after which the next open continues without a gap.
    /// Writer thread only: the next write raises it again.
    pub(super) fn close_ceiling(&self, state: &mut WriterState) -> Result<(), EngineError> {
        if state.ceiling == state.last_sequence {
            return Ok(());
        }
        self.db
            .put_cf_opt(
                self.meta_handle()?,
                SEQUENCE_CEILING_KEY,
                state.last_sequence.to_le_bytes(),
                &synced(),
            )
            .map_err(storage_error)?;
        state.ceiling = state.last_sequence;
        Ok(())
    }

    /// Adds one request's history entry to a commit's batch.
    pub(super) fn batch_history(
        &self,
        batch: &mut WriteBatch,
        sequence: u64,
        entry: &[u8],
    ) -> Result<(), EngineError> {
        batch.put_cf(self.history_handle()?, history_key(sequence), entry);
        Ok(())
    }

    /// The oldest resumable and the latest published sequence.
    pub(super) fn history_bounds(&self) -> (u64, u64) {
        let latest = self.feed.published_sequence();
        (self.history.floor.load(Ordering::SeqCst), latest)
    }

    /// Reads whole batches after `after`, up to the latest published commit.
    pub(super) fn read_history(
        &self,
        after: HistoryPosition,
        max_events: usize,
    ) -> Result<HistoryPage, HistoryError> {
        if after.history_id != self.history.id {
            return Err(HistoryError::OtherHistory {
                current: self.history.id,
            });
        }
        // Everything published is in the store (the writer publishes after
        // its write), and nothing above it is read: a commit still being
        // made visible stays for the next read.
        let latest = self.feed.published_sequence();
        let mut iterator = self.history_iterator(latest)?;
        // The floor after the iterator's implicit snapshot: a trim raises it
        // before deleting, so batches missing from the snapshot show here.
        let floor = self.history.floor.load(Ordering::SeqCst);
        if after.sequence < floor {
            return Err(HistoryError::Compacted { oldest: floor });
        }
        if let Some((lost_after, lost_to)) =
            self.history.lost.iter().find(|(lost_after, lost_to)| {
                *lost_after < after.sequence && after.sequence <= *lost_to
            })
        {
            return Err(HistoryError::Rewound {
                lost_after: *lost_after,
                lost_to: *lost_to,
            });
        }
        if after.sequence > latest {
            return Err(HistoryError::Ahead { latest });
        }
        let mut page = HistoryPage {
            batches: Vec::new(),
            latest,
        };
        let (mut events, mut bytes) = (0usize, 0usize);
        iterator.seek(history_key(after.sequence.saturating_add(1)));
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            let sequence = key
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| EngineError::Storage("a history key is not 8 bytes".into()))?;
            let batch = decode_batch(sequence, value).map_err(EngineError::Storage)?;
            events += batch.events.len();
            bytes += value.len();
            page.batches.push(batch);
            if events >= max_events.max(1) || bytes >= PAGE_BYTES {
                break;
            }
            iterator.next();
        }
        iterator.status().map_err(storage_error)?;
        Ok(page)
    }

    /// Trims the history to its retention: by count, everything at or
    /// below `latest - max_events`; by age, every batch committed before
    /// `now - max_age`. One range deletion, with the floor moved in the same
    /// batch (and raised in memory before, see [`Inner::read_history`]).
    /// Returns the floor.
    pub(super) fn trim_history(&self) -> Result<u64, EngineError> {
        let _trimming = self
            .history
            .trimming
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let floor = self.history.floor.load(Ordering::SeqCst);
        let latest = self.feed.published_sequence();
        let mut target = floor;
        if self.history.max_events > 0 {
            target = target.max(latest.saturating_sub(self.history.max_events));
        }
        if self.history.max_age_millis > 0 {
            let cutoff = self
                .clock
                .now_millis()
                .saturating_sub(self.history.max_age_millis);
            let mut iterator = self.history_iterator(latest)?;
            iterator.seek(history_key(target.saturating_add(1)));
            let mut looked = 0;
            while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                let committed_at = value
                    .get(1..9)
                    .and_then(|time| time.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(u64::MAX);
                if committed_at >= cutoff || looked >= TRIM_SCAN_LIMIT {
                    break;
                }
                if let Ok(sequence) = key.try_into().map(u64::from_be_bytes) {
                    target = target.max(sequence);
                }
                looked += 1;
                iterator.next();
            }
            iterator.status().map_err(storage_error)?;
        }
        let target = target.min(latest);
        if target <= floor {
            return Ok(floor);
        }
        self.history.floor.fetch_max(target, Ordering::SeqCst);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.history_handle()?,
            history_key(0),
            history_key(target.saturating_add(1)),
        );
        batch.put_cf(self.meta_handle()?, HISTORY_FLOOR_KEY, target.to_le_bytes());
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(storage_error)?;
        Ok(target)
    }
}
