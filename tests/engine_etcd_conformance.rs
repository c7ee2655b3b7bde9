//! The shared engine suite against the etcd engine, on a real three-member
//! etcd cluster (tests/common/etcd.rs), unchanged: every case the RocksDB
//! engine passes in tests/engine_conformance.rs.
//!
//! One cluster serves the whole binary; every harness has a key prefix of
//! its own, and the cases take turns (one suite case at a time), because a
//! case may count on no other commit coming between two of its own (the
//! suite's namespace case checks that the write after a clear is the next
//! sequence).

mod common;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use common::etcd::{self, TEST_MAX_REQUEST_BYTES, TEST_MAX_TXN_OPS};
use tierkv::clock::SharedClock;
use tierkv::engine::conformance::{
    self, Harness, SUITE_CHANGE_FEED_CAPACITY, SUITE_HISTORY_MAX_AGE_MILLIS,
    SUITE_HISTORY_MAX_EVENTS, SUITE_NAMESPACES,
};
use tierkv::engine::{Engine, EngineError, EtcdEngine, EtcdOptions, Namespaces};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The suite's cases run one at a time on the shared cluster.
fn turn() -> Arc<Mutex<()>> {
    static TURN: OnceLock<Arc<Mutex<()>>> = OnceLock::new();
    Arc::clone(TURN.get_or_init(|| Arc::new(Mutex::new(()))))
}

/// The options a harness opens the engine with, under `prefix`.
pub fn suite_options(prefix: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: etcd::shared().endpoints(),
        prefix: prefix.to_string(),
        max_txn_ops: TEST_MAX_TXN_OPS,
        max_request_bytes: TEST_MAX_REQUEST_BYTES,
        change_feed_capacity: SUITE_CHANGE_FEED_CAPACITY,
        history_max_events: SUITE_HISTORY_MAX_EVENTS,
        history_max_age_millis: SUITE_HISTORY_MAX_AGE_MILLIS,
        ..EtcdOptions::default()
    }
}

struct EtcdHarness {
    prefix: String,
    turn: Option<OwnedMutexGuard<()>>,
    /// The clock of the last open, for the engine that trims.
    clock: Option<SharedClock>,
}

impl EtcdHarness {
    fn new(name: &str) -> Self {
        Self {
            prefix: etcd::unique_prefix(name),
            turn: None,
            clock: None,
        }
    }
}

#[async_trait]
impl Harness for EtcdHarness {
    async fn open(&mut self, clock: SharedClock) -> Result<Arc<dyn Engine>, EngineError> {
        if self.turn.is_none() {
            self.turn = Some(turn().lock_owned().await);
        }
        self.clock = Some(clock.clone());
        Ok(Arc::new(self.open_etcd(clock).await?))
    }

    /// Trims as every replica's background pass does, from an engine of its
    /// own over the same prefix (the suite's handle is a `dyn Engine`).
    async fn trim_history(&mut self, _engine: &Arc<dyn Engine>) -> Result<(), EngineError> {
        let clock = self.clock.clone().expect("opened before");
        self.open_etcd(clock).await?.trim_history().await.map(drop)
    }
}

impl EtcdHarness {
    async fn open_etcd(&self, clock: SharedClock) -> Result<EtcdEngine, EngineError> {
        EtcdEngine::open(
            suite_options(&self.prefix),
            Namespaces::new(SUITE_NAMESPACES.iter().copied()),
            clock,
        )
        .await
    }
}

macro_rules! suite_case {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        async fn $name() {
            conformance::$name(EtcdHarness::new(stringify!($name))).await;
        }
    };
}

suite_case!(
    /// Suite: a put reads back whole.
    #[tokio::test]
    put_then_get_round_trips
);
suite_case!(
    /// Suite: versions never repeat, across deletes and restarts.
    #[tokio::test]
    versions_increase_across_deletes_and_restarts
);
suite_case!(
    /// Suite: preconditions gate writes.
    #[tokio::test]
    preconditions_gate_writes
);
suite_case!(
    /// Suite: batches are atomic and see their own earlier mutations.
    #[tokio::test]
    batches_are_atomic_and_ordered
);
suite_case!(
    /// Suite: expiry hides records at once.
    #[tokio::test]
    expiry_hides_records
);
suite_case!(
    /// Suite: values of every size round-trip, are replaced and deleted.
    #[tokio::test]
    large_values_round_trip
);
suite_case!(
    /// Suite: reads within a byte budget refuse what does not fit.
    #[tokio::test]
    reads_within_a_byte_budget
);
suite_case!(
    /// Suite: a commit's versions are above every earlier commit's, whatever the keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    versions_are_ordered_store_wide
);
suite_case!(
    /// Suite: a read that starts after a write returned sees it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_read_after_a_write_sees_it
);
suite_case!(
    /// Suite: scans bound the records they examine and resume after them.
    #[tokio::test]
    scans_bound_the_records_they_examine
);
suite_case!(
    /// Suite: scans merge namespaces in byte order.
    #[tokio::test]
    scans_merge_namespaces_in_byte_order
);
suite_case!(
    /// Suite: concurrent compare-and-set loses no update.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    concurrent_compare_and_set_loses_no_update
);
suite_case!(
    /// Suite: the change feed publishes every commit in order.
    #[tokio::test]
    change_feed_publishes_commits_in_order
);
suite_case!(
    /// Suite: subscribe-then-read misses no concurrent write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    subscribe_then_read_misses_no_write
);
suite_case!(
    /// Suite: a lagging subscriber learns how much it missed.
    #[tokio::test]
    lagging_subscriber_learns_how_much_it_missed
);
suite_case!(
    /// Suite: `write` returns the sequence its commit's events carry.
    #[tokio::test]
    write_returns_its_commit_sequence
);
suite_case!(
    /// Suite: sequences strictly increase across writers and restarts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sequences_strictly_increase
);
suite_case!(
    /// Suite: `catch_up_to` returns after a write, fails at its deadline and on close.
    #[tokio::test]
    catch_up_to_waits_for_the_feed
);
suite_case!(
    /// Suite: the clock never goes back, even across a restart.
    #[tokio::test]
    clock_never_goes_back
);
suite_case!(
    /// Suite: namespaces are counted exactly and cleared in one commit.
    #[tokio::test]
    namespaces_are_counted_and_cleared
);
suite_case!(
    /// Suite: history keeps whole batches, paged, once each.
    #[tokio::test]
    history_keeps_whole_batches
);
suite_case!(
    /// Suite: live events carry their payload and their request's sequence.
    #[tokio::test]
    live_events_carry_payload_and_batch
);
suite_case!(
    /// Suite: a namespace clear is one batch of one event in history.
    #[tokio::test]
    namespace_cleared_is_in_history
);
suite_case!(
    /// Suite: another history's, ahead and trimmed positions are refused.
    #[tokio::test]
    unresumable_positions_are_refused
);
suite_case!(
    /// Suite: a scan's position is a cut of history under concurrent writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    scan_position_is_a_cut_of_history
);
suite_case!(
    /// Suite: following the history to each page's latest misses no write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    history_followed_to_latest_misses_no_write
);

/// etcd-only: the sweeper deletes records expired for longer than the
/// grace from etcd itself (and only them, values out of line included),
/// with no change event; reads hid them already.
#[tokio::test]
async fn the_sweeper_reclaims_expired_records() {
    use std::time::Duration;
    use tierkv::clock::ManualClock;
    use tierkv::engine::{Precondition, PutOp, ValueKind, WriteOp};

    let mut harness = EtcdHarness::new("sweeper");
    // The suite's turn: the sweeper takes a lock no other case holds, but
    // its own writes must not race a case that counts sequences.
    harness.turn = Some(turn().lock_owned().await);
    let clock = ManualClock::new(1_800_000_000_000);
    let mut options = suite_options(&harness.prefix);
    options.expiry_grace = Duration::from_secs(10);
    let engine = EtcdEngine::open(
        options,
        Namespaces::new(SUITE_NAMESPACES.iter().copied()),
        clock.clone(),
    )
    .await
    .unwrap();
    let put = |key: &str, value: Vec<u8>, expire_at_millis: Option<u64>| {
        WriteOp::Put(PutOp {
            key: key.into(),
            kind: ValueKind::Bytes,
            value,
            metadata: None,
            expire_at_millis,
            schema_version: 1,
            precondition: Precondition::None,
        })
    };
    engine
        .write(vec![
            put("user:short", b"s".to_vec(), Some(1_800_000_001_000)),
            put("user:big", vec![9; 4096], Some(1_800_000_001_000)),
            put("user:forever", b"f".to_vec(), None),
        ])
        .await
        .unwrap();
    let mut raw = etcd_client::Client::connect(etcd::shared().endpoints(), None)
        .await
        .unwrap();
    let present = |raw: &mut etcd_client::Client, key: String| {
        let mut raw = raw.clone();
        async move { !raw.get(key, None).await.unwrap().kvs().is_empty() }
    };
    let head = |key: &str| format!("{}k/{key}", harness.prefix);
    let value = |key: &str| format!("{}v/{key}", harness.prefix);

    // Expired, but within the grace: hidden, not deleted.
    clock.advance(Duration::from_secs(5));
    assert!(engine.get("user:short".into()).await.unwrap().is_none());
    assert_eq!(engine.sweep_expired().await.unwrap(), 0);
    assert!(present(&mut raw, head("user:short")).await);

    let mut changes = engine.subscribe();
    clock.advance(Duration::from_secs(10));
    assert_eq!(engine.sweep_expired().await.unwrap(), 2);
    assert!(!present(&mut raw, head("user:short")).await);
    assert!(!present(&mut raw, head("user:big")).await);
    assert!(!present(&mut raw, value("user:big")).await);
    assert!(present(&mut raw, head("user:forever")).await);
    assert!(engine.get("user:forever".into()).await.unwrap().is_some());
    assert!(
        changes.try_recv().unwrap().is_none(),
        "expiry makes no change event"
    );
}

/// The sweeper deletes on behalf of expiry, never over a client's write: a
/// put that lands between the sweeper's read of an expired record and its
/// delete wins (the delete compares the `mod_revision` it read). Raced many
/// times, with the put started beside each sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_write_racing_the_sweeper_wins() {
    use std::time::Duration;
    use tierkv::clock::{Clock, ManualClock};
    use tierkv::engine::{Precondition, PutOp, ValueKind, WriteOp};

    let mut harness = EtcdHarness::new("sweeper-race");
    harness.turn = Some(turn().lock_owned().await);
    let clock = ManualClock::new(1_800_000_000_000);
    let mut options = suite_options(&harness.prefix);
    options.expiry_grace = Duration::from_secs(10);
    let engine = EtcdEngine::open(
        options,
        Namespaces::new(SUITE_NAMESPACES.iter().copied()),
        clock.clone(),
    )
    .await
    .unwrap();
    let put = |value: String, expire_at_millis: Option<u64>| {
        WriteOp::Put(PutOp {
            key: "user:race".into(),
            kind: ValueKind::Text,
            value: value.into_bytes(),
            metadata: None,
            expire_at_millis,
            schema_version: 1,
            precondition: Precondition::None,
        })
    };
    for round in 0..100 {
        // Expired past the grace once the clock moves on.
        let expire_at = clock.now_millis() + 1_000;
        engine
            .write(vec![put(format!("old-{round}"), Some(expire_at))])
            .await
            .unwrap();
        clock.advance(Duration::from_secs(20));
        let sweeper = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.sweep_expired().await })
        };
        let fresh = format!("fresh-{round}");
        engine.write(vec![put(fresh.clone(), None)]).await.unwrap();
        sweeper.await.unwrap().unwrap();
        let record = engine
            .get("user:race".into())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: the sweeper deleted the client's write"));
        assert_eq!(record.value, fresh.as_bytes(), "round {round}");
    }
}

/// The feed checks that the feed key's etcd version grows by one per record
/// from the version it read at open: an engine opened over a store that
/// already holds feed records (here another replica's), then following
/// writes of both replicas, gets every event and no lag (a wrong starting
/// version or a miscounted step would report one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_opened_over_earlier_writes_follows_the_feed_without_a_lag() {
    use std::time::Duration;
    use tierkv::clock::ManualClock;
    let mut harness = EtcdHarness::new("feed-continuity");
    harness.turn = Some(turn().lock_owned().await);
    let clock = ManualClock::new(1_800_000_000_000);
    let open = || {
        EtcdEngine::open(
            suite_options(&harness.prefix),
            Namespaces::new(SUITE_NAMESPACES.iter().copied()),
            clock.clone(),
        )
    };
    let put = |key: &str| vec![conformance::put(key, "v")];
    let first = open().await.unwrap();
    for i in 0..5 {
        first.write(put(&format!("user:before-{i}"))).await.unwrap();
    }
    let second = open().await.unwrap();
    let mut changes = second.subscribe();
    let mut expected = Vec::new();
    for i in 0..20 {
        let key = format!("user:after-{i}");
        let writer = if i % 2 == 0 { &first } else { &second };
        writer.write(put(&key)).await.unwrap();
        expected.push(key);
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("an event within 10 s")
            .expect("no lag: the feed followed every record");
        seen.push(event.key.to_string());
    }
    assert_eq!(seen, expected);
}
