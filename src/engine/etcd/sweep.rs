//! Reclaiming expired records: reads hide a record as soon as the engine's
//! clock passes its expiry, but etcd keeps it until it is deleted. One
//! replica at a time (the holder of the `sweeper` lock) walks the record
//! heads every [`SWEEP_INTERVAL`] and deletes those expired for longer
//! than the grace, each with a `mod_revision == observed` compare, so a
//! record rewritten since it looked is never deleted.
//!
//! Why a sweeper and not etcd leases: a lease expires by the etcd leader's
//! clock, not the engine's, and a lease per expiry bucket would add a lease
//! to every write. Deleting makes no change event: expiry has none (a
//! record hides itself when its time comes).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::read::decode;
use super::EtcdEngine;
use crate::clock::Clock;
use crate::engine::{EngineError, LockAttempt};

/// How often the sweeper runs.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Heads read per page.
const SWEEP_PAGE: i64 = 1000;

impl EtcdEngine {
    /// Deletes the records expired for longer than the engine's expiry grace,
    /// unless another replica is sweeping (then 0); returns how many it
    /// deleted.
    pub async fn sweep_expired(&self) -> Result<u64, EngineError> {
        let _lock = match self.lock("sweeper").await? {
            LockAttempt::Acquired(lock) => lock,
            LockAttempt::Held { .. } => return Ok(0),
        };
        let keys = &self.inner.keys;
        let grace = self.inner.options.expiry_grace.as_millis() as u64;
        let (mut from, end) = keys.head_range("");
        let mut deleted = 0;
        loop {
            let now = self.inner.clock.now_millis();
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SWEEP_PAGE);
            let mut page = self.send_get(from.clone(), Some(options)).await?;
            let more = page.more();
            let kvs = page.take_kvs();
            for kv in &kvs {
                let Some(key) = keys.record_key(kv.key()) else {
                    continue;
                };
                let Ok(head) = decode(key, kv) else { continue };
                let expired = head
                    .record
                    .expire_at_millis
                    .is_some_and(|expire_at| expire_at.saturating_add(grace) < now);
                if !expired {
                    continue;
                }
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        kv.key().to_vec(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([
                        TxnOp::delete(kv.key().to_vec(), None),
                        TxnOp::delete(keys.value(key), None),
                    ]);
                if self.send_txn(txn, false).await?.succeeded() {
                    deleted += 1;
                }
            }
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(deleted),
            }
        }
    }
}

/// Sweeps every [`SWEEP_INTERVAL`] while the engine lives.
pub(super) async fn keep_swept(engine: std::sync::Weak<super::Inner>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = EtcdEngine { inner };
        match engine.sweep_expired().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "swept expired records from etcd"),
            Err(error) => {
                tracing::warn!(error = %error.log_summary(), "sweeping expired records failed; retrying later")
            }
        }
    }
}
