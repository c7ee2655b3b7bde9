//! Point reads: inline on the async worker when memory holds the records,
//! on the blocking pool when they need I/O or copy much; heads first, so a
//! read over its byte budget copies no value.

use rocksdb::{DBPinnableSlice, ErrorKind, ReadOptions, ReadTier};

use super::*;
use crate::clock::Clock;
use crate::engine::record::{self, Record, ValuePlace};

impl RocksEngine {
    /// Reads records inline when memory holds them, else on the blocking pool.
    pub(super) async fn read(
        &self,
        keys: &[String],
        max_bytes: Option<usize>,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        #[cfg(feature = "test-hooks")]
        self.inner.read_faults.apply().await?;
        match self.inner.get_many(keys, max_bytes, Tier::Memory) {
            Ok(records) => Ok(records),
            Err(ReadFailure::Engine(error)) => Err(error),
            Err(ReadFailure::WouldBlock) => {
                let keys = keys.to_vec();
                self.blocking(move |inner| {
                    inner
                        .get_many(&keys, max_bytes, Tier::Any)
                        .map_err(ReadFailure::into_engine)
                })
                .await
            }
        }
    }
}

impl Inner {
    /// Reads live records. Every head is read (pinned, not copied) and the
    /// sizes of their metadata and values are summed before any value is
    /// copied, so a request over `max_bytes` costs no more than its heads.
    pub(super) fn get_many(
        &self,
        keys: &[String],
        max_bytes: Option<usize>,
        tier: Tier,
    ) -> Result<Vec<Option<Record>>, ReadFailure> {
        let now = self.clock.now_millis();
        // Read options are created once per engine: building them is an FFI
        // allocation, a measurable share of a memtable hit.
        let read_options = match tier {
            Tier::Memory => &self.memory_reads,
            Tier::Any => &self.any_reads,
        };
        let mut heads: Vec<Option<DBPinnableSlice<'_>>> = Vec::with_capacity(keys.len());
        let mut total: u64 = 0;
        for key in keys {
            let cf = self.handle(self.namespaces.route(key))?;
            let head = self
                .db
                .get_pinned_cf_opt(cf, key.as_bytes(), read_options)
                .map_err(|error| ReadFailure::from_rocksdb(error, tier))?
                .filter(|bytes| record::peek_expire_at_millis(bytes).is_none_or(|at| at > now));
            if let Some(bytes) = &head {
                total += record::peek_payload_len(bytes)
                    .map_err(|error| self.corrupt(key.as_bytes(), error))?;
            }
            heads.push(head);
        }
        if let Some(limit) = max_bytes {
            if total > limit as u64 {
                return Err(EngineError::TooLarge {
                    limit,
                    actual: total,
                }
                .into());
            }
        }
        if tier == Tier::Memory && total > INLINE_READ_MAX_BYTES {
            return Err(ReadFailure::WouldBlock);
        }
        heads
            .iter()
            .zip(keys)
            .map(|(head, key)| match head {
                None => Ok(None),
                Some(head) => self.materialize(key, head, read_options, tier, now),
            })
            .collect()
    }

    /// A whole record from its head, fetching an out-of-line value.
    fn materialize(
        &self,
        key: &str,
        head: &[u8],
        read_options: &ReadOptions,
        tier: Tier,
        now: u64,
    ) -> Result<Option<Record>, ReadFailure> {
        let (mut record, place) =
            record::decode_head(head).map_err(|error| self.corrupt(key.as_bytes(), error))?;
        match place {
            ValuePlace::Inline { start } => record.value = head[start..].to_vec(),
            ValuePlace::OutOfLine { .. } => {
                let entry = self
                    .db
                    .get_pinned_cf_opt(self.values_handle()?, key.as_bytes(), read_options)
                    .map_err(|error| ReadFailure::from_rocksdb(error, tier))?;
                let value = match &entry {
                    Some(entry) => record::value_of_entry(entry, record.version)
                        .map_err(|error| self.corrupt(key.as_bytes(), error))?,
                    None => None,
                };
                match value {
                    Some(value) => record.value = value.to_vec(),
                    // A write replaced the key between the two reads.
                    None => return self.read_consistent(key, tier, now),
                }
            }
        }
        Ok(Some(record))
    }

    /// Reads one record, head and value, from one snapshot.
    fn read_consistent(
        &self,
        key: &str,
        tier: Tier,
        now: u64,
    ) -> Result<Option<Record>, ReadFailure> {
        let snapshot = self.db.snapshot();
        let cf = self.handle(self.namespaces.route(key))?;
        let Some(head) = snapshot
            .get_pinned_cf_opt(cf, key.as_bytes(), tier.read_options())
            .map_err(|error| ReadFailure::from_rocksdb(error, tier))?
            .filter(|bytes| record::peek_expire_at_millis(bytes).is_none_or(|at| at > now))
        else {
            return Ok(None);
        };
        let (mut record, place) =
            record::decode_head(&head).map_err(|error| self.corrupt(key.as_bytes(), error))?;
        match place {
            ValuePlace::Inline { start } => record.value = head[start..].to_vec(),
            ValuePlace::OutOfLine { .. } => {
                let entry = snapshot
                    .get_pinned_cf_opt(self.values_handle()?, key.as_bytes(), tier.read_options())
                    .map_err(|error| ReadFailure::from_rocksdb(error, tier))?;
                let value = match &entry {
                    Some(entry) => record::value_of_entry(entry, record.version)
                        .map_err(|error| self.corrupt(key.as_bytes(), error))?,
                    None => None,
                };
                let value = value.ok_or_else(|| EngineError::Corrupt {
                    key: key.to_string(),
                    reason: "the out-of-line value of this version is missing".into(),
                })?;
                record.value = value.to_vec();
            }
        }
        Ok(Some(record))
    }
}

/// Which data a read may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tier {
    /// Memtables and the block cache only: never waits for I/O, so it can run
    /// on an async worker.
    Memory,
    /// Anything, including files; only on the blocking pool.
    Any,
}

impl Tier {
    pub(super) fn read_options(self) -> ReadOptions {
        let mut options = ReadOptions::default();
        if self == Tier::Memory {
            options.set_read_tier(ReadTier::BlockCache);
        }
        options
    }
}

/// Why a read gave up.
#[derive(Debug)]
pub(super) enum ReadFailure {
    /// A [`Tier::Memory`] read needs I/O, or would copy too much for an async
    /// worker; run it again with [`Tier::Any`] on the blocking pool.
    WouldBlock,
    /// The read failed.
    Engine(EngineError),
}

impl From<EngineError> for ReadFailure {
    fn from(error: EngineError) -> Self {
        ReadFailure::Engine(error)
    }
}

impl ReadFailure {
    fn from_rocksdb(error: rocksdb::Error, tier: Tier) -> Self {
        if tier == Tier::Memory && error.kind() == ErrorKind::Incomplete {
            ReadFailure::WouldBlock
        } else {
            ReadFailure::Engine(storage_error(error))
        }
    }

    pub(super) fn into_engine(self) -> EngineError {
        match self {
            ReadFailure::Engine(error) => error,
            ReadFailure::WouldBlock => EngineError::Storage("a blocking read gave up".into()),
        }
    }
}
