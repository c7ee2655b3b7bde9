//! The etcd engine: the core [`Engine`] contract over an etcd v3 cluster, so
//! that several stateless tierkv servers can share one replicated store.
//!
//! The mapping (see `docs/design/etcd-engine.md`):
//! - records are `<root>k/<key>` heads (the RocksDB record format, the
//!   value inline up to [`INLINE_VALUE_MAX`](crate::engine::record::INLINE_VALUE_MAX),
//!   longer ones at `<root>v/<key>`), one ordered etcd range, so scans are
//!   native `Range`s in byte order;
//! - a write batch is read, decided and committed as one `Txn` whose
//!   compares are the `mod_revision`s the decision read ([`write`]);
//! - versions are `revision << 16 | index`, and so are sequences: a
//!   request's is its last mutation's, so requests that share a transaction
//!   (group commit) have sequences of their own;
//! - the change feed is a `Watch` on the feed record each write puts ([`feed`]);
//! - the clock's high-water mark, the instance secret and named state live
//!   under the root too.
//!
//! A remote store has no [`LocalStorage`](crate::engine::LocalStorage):
//! [`Engine::local`] answers `None`.

mod endpoints;
mod error;
mod feed;
mod follow;
mod group;
mod history;
mod keys;
mod lock;
mod options;
mod read;
mod retired;
mod stats;
mod sweep;
mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::task::JoinHandle;

pub(crate) use self::error::etcd_error;
use self::error::retry;
use self::keys::{clock_mark, parse_clock_mark, Keys};
use self::options::limits;
pub use self::options::{
    EtcdLimits, EtcdOptions, EtcdTls, ETCD_DEFAULT_MAX_REQUEST_BYTES, ETCD_DEFAULT_MAX_TXN_OPS,
};
use super::{
    ChangeFeed, ChangeSubscription, Engine, EngineError, FeedPosition, HistoryError, HistoryPage,
    HistoryPosition, LockAttempt, NamespaceStats, Namespaces, Record, ScanPage, ScanRequest,
    WriteOp, WriteReceipt,
};
use crate::clock::{Clock, MonotonicClock, SharedClock};

/// The clock mark is written by a read only when the clock ran this far
/// ahead of it (a step, or a test's clock); the background task keeps it
/// within this of the clock otherwise.
const CLOCK_MARK_INTERVAL: Duration = Duration::from_secs(1);

/// The etcd engine: a cheap-to-clone handle.
#[derive(Clone)]
pub struct EtcdEngine {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    namespaces: Namespaces,
    clock: Arc<MonotonicClock>,
    /// The clock mark as last written (or read) by this process.
    persisted_clock: Arc<AtomicU64>,
    secret: Vec<u8>,
    feed: Arc<ChangeFeed>,
    /// How far the feed has published, to wait on.
    position: FeedPosition,
    /// The highest sequence a write of this handle returned (or the end of
    /// the store's revision at open).
    acknowledged: AtomicU64,
    /// The change history's id ([`history`]).
    history_id: u64,
    /// Who this process is, written into the locks it holds.
    identity: String,
    options: EtcdOptions,
    /// Where decided write requests wait for a shared transaction
    /// ([`group::commit_groups`]).
    committer: tokio::sync::mpsc::UnboundedSender<group::Pending>,
    /// Where point reads wait for a shared read transaction
    /// ([`read::coalesce_reads`]).
    reader: tokio::sync::mpsc::UnboundedSender<read::PendingRead>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The watch task holds the feed: aborting it closes the feed, which
        // ends every `catch_up_to` wait.
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.iter() {
            task.abort();
        }
    }
}

impl EtcdEngine {
    /// Connects to the cluster, reads (or creates) the clock mark and the
    /// instance secret under the prefix, and starts the change feed's watch
    /// at the store's current revision. Fails with
    /// [`EngineError::Unavailable`] when etcd cannot be reached, and with
    /// [`EngineError::Layout`] when a namespace configured before is not now
    /// but still holds live records ([`retired`]).
    pub async fn open(
        options: EtcdOptions,
        namespaces: Namespaces,
        clock: SharedClock,
    ) -> Result<Self, EngineError> {
        if options.endpoints.is_empty() {
            return Err(EngineError::Storage("no etcd endpoints configured".into()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.dial_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((name, password)) = &options.user {
            connect = connect.with_user(name.clone(), password.clone());
        }
        if let Some(tls) = &options.tls {
            let mut config = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                config = config.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity_pem {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(etcd_error)?;
        let keys = Keys::new(&options.prefix);
        let clock = Arc::new(MonotonicClock::new(clock, 0));

        // The mark and the secret are created once (create_revision == 0),
        // whichever replica comes first; every later open reads them.
        let mut kv = client.kv_client();
        let secret: Vec<u8> = {
            use rand::RngCore;
            let mut bytes = vec![0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes
        };
        let txn = Txn::new()
            .when([Compare::create_revision(keys.secret(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(keys.secret(), secret, None)]);
        kv.txn(txn).await.map_err(etcd_error)?;
        let txn = Txn::new()
            .when([Compare::create_revision(keys.clock(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(keys.clock(), clock_mark(0), None)]);
        kv.txn(txn).await.map_err(etcd_error)?;
        let history_id = format!("{:016x}", rand::random::<u64>());
        let txn = Txn::new()
            .when([Compare::create_revision(
                keys.history_id(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(keys.history_id(), history_id, None)]);
        kv.txn(txn).await.map_err(etcd_error)?;
        let read = Txn::new().and_then([
            TxnOp::get(keys.secret(), None),
            TxnOp::get(keys.clock(), None),
            TxnOp::get(keys.history_id(), None),
        ]);
        let response = kv.txn(read).await.map_err(etcd_error)?;
        let mut values = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let secret = values
            .next()
            .flatten()
            .ok_or_else(|| EngineError::Storage("the instance secret is missing in etcd".into()))?;
        let mark = parse_clock_mark(&values.next().flatten().unwrap_or_default());
        let history_id = values
            .next()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| u64::from_str_radix(&text, 16).ok())
            .ok_or_else(|| {
                EngineError::Storage("the history id in etcd is missing or unreadable".into())
            })?;
        clock.raise_floor(mark);
        let persisted_clock = Arc::new(AtomicU64::new(mark));
        let mut revision = response.header().map_or(0, |header| header.revision());
        let now = clock.now_millis();
        if now > mark {
            if let Some(written) = persist_clock(&client, &keys, now).await? {
                revision = revision.max(written);
            }
            persisted_clock.fetch_max(now, Ordering::AcqRel);
        }

        // The feed key's version where the watch starts, so that the feed
        // can tell whether it skips a record from its very first one.
        let continuity = {
            let at = GetOptions::new().with_revision(revision).with_keys_only();
            let response = kv.get(keys.feed(), Some(at)).await.map_err(etcd_error)?;
            follow::Continuity::from_version(response.kvs().first().map_or(0, |kv| kv.version()))
        };
        let feed = Arc::new(ChangeFeed::new(
            options.change_feed_capacity,
            options.change_feed_max_bytes,
            feed::revision_end(revision),
        ));
        let mut tasks = vec![tokio::spawn(follow::run(
            client.clone(),
            keys.clone(),
            Arc::clone(&feed),
            revision,
            continuity,
        ))];
        tasks.push(tokio::spawn(endpoints::keep_balanced(
            client.clone(),
            options.endpoints.clone(),
        )));
        tasks.push(tokio::spawn(keep_clock_mark(
            client.clone(),
            keys.clone(),
            Arc::clone(&clock),
            Arc::clone(&persisted_clock),
        )));
        let (committer, committer_queue) = tokio::sync::mpsc::unbounded_channel();
        let (reader, reader_queue) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            client,
            keys,
            namespaces,
            clock,
            persisted_clock,
            secret,
            position: feed.position(),
            feed,
            acknowledged: AtomicU64::new(feed::revision_end(revision)),
            history_id,
            identity: lock::identity(),
            options,
            committer,
            reader,
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        tasks.push(tokio::spawn(history::keep_trimmed(Arc::downgrade(&inner))));
        tasks.push(tokio::spawn(sweep::keep_swept(Arc::downgrade(&inner))));
        tasks.push(tokio::spawn(read::coalesce_reads(
            Arc::downgrade(&inner),
            reader_queue,
        )));
        tasks.push(tokio::spawn(group::commit_groups(
            Arc::downgrade(&inner),
            committer_queue,
        )));
        *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        let engine = Self { inner };
        engine.refuse_removed_namespaces().await?;
        Ok(engine)
    }

    /// What one write request may carry, so that services can refuse a
    /// larger batch with INVALID_ARGUMENT before sending it.
    pub fn limits(&self) -> EtcdLimits {
        limits(&self.inner.options)
    }

    /// Writes the clock mark before a read decides expiry by a time far
    /// ahead of it, so that no restart can make the read's result undone.
    async fn ensure_clock_persisted(&self) -> Result<u64, EngineError> {
        let now = self.inner.clock.now_millis();
        let persisted = self.inner.persisted_clock.load(Ordering::Acquire);
        if now > persisted.saturating_add(CLOCK_MARK_INTERVAL.as_millis() as u64) {
            persist_clock(&self.inner.client, &self.inner.keys, now).await?;
            self.inner.persisted_clock.fetch_max(now, Ordering::AcqRel);
        }
        Ok(now)
    }

    /// Records a committed revision as acknowledged, and waits (up to the
    /// request timeout) until the watch has published it, as the RocksDB
    /// engine publishes before it answers: a subscription made after a write
    /// returned then never receives that write's events. The write committed
    /// either way: past the wait it is acknowledged all the same, and
    /// `catch_up_to` keeps the contract for consumers that need the events.
    async fn acknowledge(&self, revision: u64) {
        self.inner
            .acknowledged
            .fetch_max(revision, Ordering::AcqRel);
        let position = &self.inner.position;
        let deadline = std::time::Instant::now() + self.inner.options.request_timeout;
        if position.wait_for(revision, deadline).await.is_err() {
            tracing::warn!(
                revision,
                "the etcd change feed had not published a committed write by the request timeout"
            );
        }
    }

    /// Sends `txn`; again (a few times) when it failed before reaching etcd
    /// (the client's balancer may still pick a stopped member, whose
    /// connection is refused) or, when `idempotent`, on any retryable
    /// failure. A write is never sent twice once it may have reached etcd.
    pub(crate) async fn send_txn(
        &self,
        txn: Txn,
        idempotent: bool,
    ) -> Result<etcd_client::TxnResponse, EngineError> {
        let mut attempt = 0;
        loop {
            match self.kv().txn(txn.clone()).await {
                Ok(response) => return Ok(response),
                Err(error) if retry(&error, idempotent, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 * attempt.min(10) as u64)).await;
                }
                Err(error) => return Err(etcd_error(error)),
            }
        }
    }

    /// A linearizable range read, retried like an idempotent [`EtcdEngine::send_txn`].
    pub(crate) async fn send_get(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, EngineError> {
        let mut attempt = 0;
        loop {
            match self.kv().get(key.clone(), options.clone()).await {
                Ok(response) => return Ok(response),
                Err(error) if retry(&error, true, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 * attempt.min(10) as u64)).await;
                }
                Err(error) => return Err(etcd_error(error)),
            }
        }
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.inner
            .client
            .kv_client()
            .max_decoding_message_size(usize::MAX)
    }
}

/// Raises the stored clock mark to `now` unless it is already there (another
/// replica's clock may be ahead); the revision written, if any.
async fn persist_clock(client: &Client, keys: &Keys, now: u64) -> Result<Option<i64>, EngineError> {
    let mark = clock_mark(now);
    let txn = Txn::new()
        .when([Compare::value(keys.clock(), CompareOp::Less, mark.clone())])
        .and_then([TxnOp::put(keys.clock(), mark, None)]);
    let response = client.kv_client().txn(txn).await.map_err(etcd_error)?;
    Ok(response
        .succeeded()
        .then(|| response.header().map_or(0, |header| header.revision())))
}

/// Keeps the stored clock mark within [`CLOCK_MARK_INTERVAL`] of the clock.
async fn keep_clock_mark(
    client: Client,
    keys: Keys,
    clock: Arc<MonotonicClock>,
    persisted: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(CLOCK_MARK_INTERVAL);
    loop {
        tick.tick().await;
        let now = clock.now_millis();
        if now > persisted.load(Ordering::Acquire)
            && persist_clock(&client, &keys, now).await.is_ok()
        {
            persisted.fetch_max(now, Ordering::AcqRel);
        }
    }
}

#[async_trait]
impl Engine for EtcdEngine {
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Record>>, EngineError> {
        self.read_records(&keys, None).await
    }

    async fn get_many_within(
        &self,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Record>>, EngineError> {
        self.read_records(keys, Some(max_bytes)).await
    }

    async fn scan(&self, request: ScanRequest) -> Result<ScanPage, EngineError> {
        self.scan_records(request).await
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<WriteReceipt, EngineError> {
        if ops.is_empty() {
            return Ok(WriteReceipt {
                outcomes: Vec::new(),
                sequence: self.acknowledged_sequence(),
            });
        }
        let receipt = self.write_batch(ops).await?;
        self.acknowledge(receipt.sequence).await;
        Ok(receipt)
    }

    fn subscribe(&self) -> ChangeSubscription {
        self.inner.feed.subscribe()
    }

    fn acknowledged_sequence(&self) -> u64 {
        self.inner.acknowledged.load(Ordering::Acquire)
    }

    fn now_millis(&self) -> u64 {
        self.inner.clock.now_millis()
    }

    async fn flush(&self) -> Result<(), EngineError> {
        // etcd made every acknowledged write durable on a quorum; what is
        // left is the clock mark.
        let now = self.inner.clock.now_millis();
        if now > self.inner.persisted_clock.load(Ordering::Acquire) {
            persist_clock(&self.inner.client, &self.inner.keys, now).await?;
            self.inner.persisted_clock.fetch_max(now, Ordering::AcqRel);
        }
        Ok(())
    }

    fn instance_secret(&self) -> &[u8] {
        &self.inner.secret
    }

    fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    async fn namespace_stats(&self) -> Result<Vec<NamespaceStats>, EngineError> {
        self.stats().await
    }

    async fn count_namespace(&self, prefix: &str) -> Result<u64, EngineError> {
        self.count_live(prefix).await
    }

    async fn clear_namespace(&self, prefix: &str) -> Result<(), EngineError> {
        let revision = self.clear(prefix).await?;
        self.acknowledge(revision).await;
        Ok(())
    }

    async fn get_state(&self, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let response = self.send_get(self.inner.keys.state(name), None).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// A linearizable count-only read: it answers only while a quorum of
    /// the cluster does.
    async fn probe(&self) -> Result<(), EngineError> {
        self.kv()
            .get(
                self.inner.keys.clock(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map(drop)
            .map_err(etcd_error)
    }

    async fn try_lock(&self, name: &str) -> Result<LockAttempt, EngineError> {
        self.lock(name).await
    }

    fn history_id(&self) -> u64 {
        self.inner.history_id
    }

    async fn history_bounds(&self) -> Result<(u64, u64), EngineError> {
        self.history_state().await
    }

    async fn read_history(
        &self,
        after: HistoryPosition,
        max_events: usize,
    ) -> Result<HistoryPage, HistoryError> {
        self.history_page(after, max_events).await
    }

    async fn put_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), EngineError> {
        let key = self.inner.keys.state(name);
        let op = match value {
            Some(value) => TxnOp::put(key, value, None),
            None => TxnOp::delete(key, None),
        };
        // Writing the same state twice leaves the same state: idempotent.
        self.send_txn(Txn::new().and_then([op]), true)
            .await
            .map(drop)
    }
}
