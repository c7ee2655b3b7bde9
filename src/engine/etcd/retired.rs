//! Namespaces removed from the configuration. Over etcd a namespace is only
//! a key range, so nothing would stop a server from starting without one
//! that still holds records: its keys would fall into another namespace
//! (the default one, or the one it was nested in), listed and served as
//! that namespace's, and an owned namespace's (`session:`) records would
//! become readable through KvService. So the engine keeps the configured
//! prefixes under `<root>meta/namespaces` and, like the RocksDB engine with
//! its column families, refuses to open while a namespace that was
//! configured before and is not now still holds live records.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::stats::{own_ranges, STATS_MAX_EXAMINED};
use super::EtcdEngine;
use crate::clock::Clock;
use crate::engine::{EngineError, Namespaces};

impl EtcdEngine {
    /// Fails with [`EngineError::Layout`] when a namespace configured at
    /// an earlier open is no longer configured but holds live records;
    /// otherwise records the configured namespaces for the next open.
    pub(super) async fn refuse_removed_namespaces(&self) -> Result<(), EngineError> {
        let key = self.inner.keys.namespaces();
        let configured: Vec<String> = self
            .inner
            .namespaces
            .configured_prefixes()
            .map(str::to_string)
            .collect();
        // Again when another replica opening at the same moment with other
        // namespaces wrote the list between this one's read and write.
        loop {
            let response = self.send_get(key.clone(), None).await?;
            let stored_kv = response.kvs().first();
            let stored: Vec<String> = match stored_kv {
                Some(kv) => serde_json::from_slice(kv.value()).map_err(|error| {
                    EngineError::Storage(format!(
                        "the namespace list in etcd is unreadable: {error}"
                    ))
                })?,
                None => Vec::new(),
            };
            self.refuse_if_removed_hold_records(&stored, &configured)
                .await?;
            if stored == configured {
                return Ok(());
            }
            let list = serde_json::to_vec(&configured)
                .map_err(|error| EngineError::Storage(error.to_string()))?;
            let unchanged = match stored_kv {
                Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([unchanged])
                .and_then([TxnOp::put(key.clone(), list, None)]);
            if self.send_txn(txn, false).await?.succeeded() {
                return Ok(());
            }
        }
    }

    /// The refusal for the first of the `stored` namespaces that is not
    /// `configured` and holds live records in its own key ranges.
    async fn refuse_if_removed_hold_records(
        &self,
        stored: &[String],
        configured: &[String],
    ) -> Result<(), EngineError> {
        let before = Namespaces::new(stored.iter().cloned());
        let now = self.inner.clock.now_millis();
        for prefix in stored.iter().filter(|prefix| !configured.contains(prefix)) {
            let ranges = own_ranges(&before, &self.inner.keys, before.route(prefix));
            let walked = self
                .walk_ranges(ranges, now, &mut None, STATS_MAX_EXAMINED)
                .await?;
            if walked.live == 0 {
                continue;
            }
            let count = if walked.examined < walked.stored {
                format!("at least {}", walked.live)
            } else {
                walked.live.to_string()
            };
            return Err(EngineError::Layout(format!(
                "etcd prefix {:?} holds namespace {prefix:?} with {count} live keys, but \
                 {prefix:?} is not in the configured namespaces; to keep serving its keys, add \
                 it back to `namespaces`; to retire it, add it back, run `tierkv admin \
                 drop-namespace {prefix} --expected-keys {}` against a running server, then \
                 remove it (tierkv never drops a namespace's data silently)",
                self.inner.options.prefix, walked.live
            )));
        }
        Ok(())
    }
}
