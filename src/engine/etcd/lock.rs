//! Locks shared by every replica: an etcd key created under a lease
//! (`create_revision == 0`), kept alive while it is held, deleted with the
//! lease when it is released, and by etcd if its holder dies (the lease
//! then expires after [`LOCK_TTL_SECS`]).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::task::JoinHandle;

use super::{etcd_error, EtcdEngine};
use crate::engine::{EngineError, LockAttempt};

/// How long a lock outlives a holder that stopped renewing it.
const LOCK_TTL_SECS: i64 = 10;

/// A held lock: renews its lease until dropped, then revokes it.
struct Held {
    client: etcd_client::Client,
    lease: i64,
    keepalive: JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keepalive.abort();
        let mut client = self.client.clone();
        let lease = self.lease;
        // Best effort: an unrevoked lease expires by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
    }
}

/// Who this process is, for the refusals other replicas give.
pub(super) fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string());
    format!("{host} (pid {})", std::process::id())
}

impl EtcdEngine {
    /// See [`crate::engine::Engine::try_lock`].
    pub(super) async fn lock(&self, name: &str) -> Result<LockAttempt, EngineError> {
        let mut client = self.inner.client.clone();
        let lease = client
            .lease_grant(LOCK_TTL_SECS, None)
            .await
            .map_err(etcd_error)?
            .id();
        let key = self.inner.keys.lock(name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.inner.identity.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = match self.kv().txn(txn).await {
            Ok(response) => response,
            Err(error) => {
                let _ = client.lease_revoke(lease).await;
                return Err(etcd_error(error));
            }
        };
        if !response.succeeded() {
            let _ = client.lease_revoke(lease).await;
            let holder = response
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    _ => None,
                })
                .unwrap_or_else(|| "another replica".to_string());
            return Ok(LockAttempt::Held { holder });
        }
        let (mut keeper, mut responses) =
            client.lease_keep_alive(lease).await.map_err(etcd_error)?;
        let keepalive = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(LOCK_TTL_SECS as u64 / 3));
            loop {
                tick.tick().await;
                if keeper.keep_alive().await.is_err() || responses.message().await.is_err() {
                    tracing::warn!("renewing an etcd lock's lease failed; retrying");
                }
            }
        });
        Ok(LockAttempt::Acquired(Box::new(Held {
            client,
            lease,
            keepalive,
        })))
    }
}
