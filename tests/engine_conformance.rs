//! The shared engine suite against the RocksDB engine, plus RocksDB-only
//! behaviour: the expiry compaction filter, namespace layout checks and the
//! repair of keys a newly configured namespace owns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::conformance::{self, Harness, SUITE_CHANGE_FEED_CAPACITY, SUITE_NAMESPACES};
use tierkv::engine::record::INLINE_VALUE_MAX;
use tierkv::engine::{
    Change, DeleteOp, Engine, EngineError, LocalStorage, Namespaces, Precondition, Record,
    RocksEngine, RocksOptions, ScanRequest, ValueKind, WriteOp, WriteOutcome,
};

struct RocksHarness {
    dir: TempDir,
}

impl RocksHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait]
impl Harness for RocksHarness {
    async fn open(&mut self, clock: SharedClock) -> Result<Arc<dyn Engine>, EngineError> {
        let engine = RocksEngine::open(
            self.dir.path(),
            Namespaces::new(SUITE_NAMESPACES.iter().copied()),
            RocksOptions {
                change_feed_capacity: SUITE_CHANGE_FEED_CAPACITY,
                history_max_events: conformance::SUITE_HISTORY_MAX_EVENTS,
                history_max_age_millis: conformance::SUITE_HISTORY_MAX_AGE_MILLIS,
                ..RocksOptions::default()
            },
            clock,
        )?;
        Ok(Arc::new(engine))
    }
}

/// Suite: a put reads back whole.
#[tokio::test]
async fn put_then_get_round_trips() {
    conformance::put_then_get_round_trips(RocksHarness::new()).await;
}

/// Suite: versions never repeat, across deletes and restarts.
#[tokio::test]
async fn versions_increase_across_deletes_and_restarts() {
    conformance::versions_increase_across_deletes_and_restarts(RocksHarness::new()).await;
}

/// Suite: preconditions gate writes.
#[tokio::test]
async fn preconditions_gate_writes() {
    conformance::preconditions_gate_writes(RocksHarness::new()).await;
}

/// Suite: batches are atomic and see their own earlier mutations.
#[tokio::test]
async fn batches_are_atomic_and_ordered() {
    conformance::batches_are_atomic_and_ordered(RocksHarness::new()).await;
}

/// Suite: expiry hides records at once.
#[tokio::test]
async fn expiry_hides_records() {
    conformance::expiry_hides_records(RocksHarness::new()).await;
}

/// Suite: values of every size round-trip, are replaced and deleted.
#[tokio::test]
async fn large_values_round_trip() {
    conformance::large_values_round_trip(RocksHarness::new()).await;
}

/// Suite: reads within a byte budget refuse what does not fit.
#[tokio::test]
async fn reads_within_a_byte_budget() {
    conformance::reads_within_a_byte_budget(RocksHarness::new()).await;
}

/// Suite: a commit's versions are above every earlier commit's, whatever the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_ordered_store_wide() {
    conformance::versions_are_ordered_store_wide(RocksHarness::new()).await;
}

/// Suite: a read that starts after a write returned sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_sees_it() {
    conformance::a_read_after_a_write_sees_it(RocksHarness::new()).await;
}

/// Suite: scans bound the records they examine and resume after them.
#[tokio::test]
async fn scans_bound_the_records_they_examine() {
    conformance::scans_bound_the_records_they_examine(RocksHarness::new()).await;
}

/// Suite: scans merge namespaces in byte order.
#[tokio::test]
async fn scans_merge_namespaces_in_byte_order() {
    conformance::scans_merge_namespaces_in_byte_order(RocksHarness::new()).await;
}

/// Suite: concurrent compare-and-set loses no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_loses_no_update() {
    conformance::concurrent_compare_and_set_loses_no_update(RocksHarness::new()).await;
}

/// Suite: the change feed publishes every commit in order.
#[tokio::test]
async fn change_feed_publishes_commits_in_order() {
    conformance::change_feed_publishes_commits_in_order(RocksHarness::new()).await;
}

/// Suite: subscribe-then-read misses no concurrent write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_then_read_misses_no_write() {
    conformance::subscribe_then_read_misses_no_write(RocksHarness::new()).await;
}

/// Suite: a lagging subscriber learns how much it missed.
#[tokio::test]
async fn lagging_subscriber_learns_how_much_it_missed() {
    conformance::lagging_subscriber_learns_how_much_it_missed(RocksHarness::new()).await;
}

/// Suite: `write` returns the sequence its commit's events carry.
#[tokio::test]
async fn write_returns_its_commit_sequence() {
    conformance::write_returns_its_commit_sequence(RocksHarness::new()).await;
}

/// Suite: sequences strictly increase across writers and restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_strictly_increase() {
    conformance::sequences_strictly_increase(RocksHarness::new()).await;
}

/// Suite: `catch_up_to` returns after a write, fails at its deadline and on close.
#[tokio::test]
async fn catch_up_to_waits_for_the_feed() {
    conformance::catch_up_to_waits_for_the_feed(RocksHarness::new()).await;
}

/// Suite: the clock never goes back, even across a restart.
#[tokio::test]
async fn clock_never_goes_back() {
    conformance::clock_never_goes_back(RocksHarness::new()).await;
}

/// See [`conformance::namespaces_are_counted_and_cleared`].
#[tokio::test]
async fn namespaces_are_counted_and_cleared() {
    conformance::namespaces_are_counted_and_cleared(RocksHarness::new()).await;
}

/// Suite: the history keeps one whole batch per request, paged exactly once.
#[tokio::test]
async fn history_keeps_whole_batches() {
    conformance::history_keeps_whole_batches(RocksHarness::new()).await;
}

/// Suite: live events carry their payload and their request's sequence.
#[tokio::test]
async fn live_events_carry_payload_and_batch() {
    conformance::live_events_carry_payload_and_batch(RocksHarness::new()).await;
}

/// Suite: a namespace clear is a batch of its own in history.
#[tokio::test]
async fn namespace_cleared_is_in_history() {
    conformance::namespace_cleared_is_in_history(RocksHarness::new()).await;
}

/// Suite: other-history, ahead and trimmed positions are refused.
#[tokio::test]
async fn unresumable_positions_are_refused() {
    conformance::unresumable_positions_are_refused(RocksHarness::new()).await;
}

/// Suite: a scan's position is a cut of history under concurrent writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_position_is_a_cut_of_history() {
    conformance::scan_position_is_a_cut_of_history(RocksHarness::new()).await;
}

/// Suite: following the history to each page's latest misses no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_followed_to_latest_misses_no_write() {
    conformance::history_followed_to_latest_misses_no_write(RocksHarness::new()).await;
}

fn open(dir: &TempDir, prefixes: &[&str], clock: SharedClock) -> Result<RocksEngine, EngineError> {
    open_with(dir, prefixes, clock, RocksOptions::default())
}

fn open_with(
    dir: &TempDir,
    prefixes: &[&str],
    clock: SharedClock,
    options: RocksOptions,
) -> Result<RocksEngine, EngineError> {
    RocksEngine::open(
        dir.path(),
        Namespaces::new(prefixes.iter().copied()),
        options,
        clock,
    )
}

fn no_grace() -> RocksOptions {
    RocksOptions {
        expiry_grace: Duration::ZERO,
        ..RocksOptions::default()
    }
}

fn put_expiring(key: &str, value: &str, expire_at_millis: u64) -> WriteOp {
    let mut op = conformance::put(key, value);
    if let WriteOp::Put(put) = &mut op {
        put.expire_at_millis = Some(expire_at_millis);
    }
    op
}

fn put_if(key: &str, value: &str, precondition: Precondition) -> WriteOp {
    let mut op = conformance::put(key, value);
    if let WriteOp::Put(put) = &mut op {
        put.precondition = precondition;
    }
    op
}

/// The compaction filter physically removes expired records (and only them).
#[tokio::test]
async fn compaction_filter_drops_expired_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let engine = open_with(&dir, &["user:"], clock.clone(), no_grace()).unwrap();
    let mut ops = Vec::new();
    for key in ["user:short", "short-default"] {
        ops.push(put_expiring(key, "v", 1_800_000_001_000));
    }
    ops.push(conformance::put("user:forever", "v"));
    engine.write(ops).await.unwrap();
    engine.flush().await.unwrap();

    engine.compact_all();
    assert!(
        engine.physically_present("user:short").unwrap(),
        "not expired yet: kept"
    );

    clock.advance(Duration::from_millis(1001));
    assert!(
        engine.physically_present("user:short").unwrap(),
        "expired but not yet compacted"
    );
    engine.compact_all();
    assert!(!engine.physically_present("user:short").unwrap());
    assert!(!engine.physically_present("short-default").unwrap());
    assert!(engine.physically_present("user:forever").unwrap());
}

/// Removing a namespace from the configuration refuses to open, rather than
/// hiding its keys; adding it back opens again with the keys intact.
#[tokio::test]
async fn dropped_namespace_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:", "cache:"], clock.clone()).unwrap();
    engine
        .write(vec![conformance::put("cache:x", "v")])
        .await
        .unwrap();
    drop(engine);

    let error = open(&dir, &["user:"], clock.clone()).unwrap_err();
    assert!(matches!(error, EngineError::Layout(_)), "{error:?}");
    assert!(error.to_string().contains("\"cache:\""), "{error}");

    let engine = open(&dir, &["user:", "cache:"], clock).unwrap();
    assert!(engine.get("cache:x".into()).await.unwrap().is_some());
}

/// A newly configured namespace takes over the keys with its prefix that
/// were stored before it existed, so none become invisible.
#[tokio::test]
async fn new_namespace_adopts_existing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:"], clock.clone()).unwrap();
    let keys: Vec<String> = (0..2500).map(|i| format!("user:admin:{i:04}")).collect();
    engine
        .write(keys.iter().map(|key| conformance::put(key, "v")).collect())
        .await
        .unwrap();
    engine
        .write(vec![
            conformance::put("orders:1", "v"),
            conformance::put("user:1", "v"),
        ])
        .await
        .unwrap();
    drop(engine);

    let engine = open(&dir, &["user:", "user:admin:", "orders:"], clock).unwrap();
    assert!(engine
        .get("user:admin:0042".into())
        .await
        .unwrap()
        .is_some());
    assert!(engine.get("orders:1".into()).await.unwrap().is_some());
    let listed = engine
        .scan(ScanRequest {
            prefix: "user:".into(),
            start_after: None,
            limit: 10_000,
            include_values: false,
            max_examined: 0,
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(listed.len(), 2501);
}

fn big_put(key: &str, len: usize, expire_at_millis: Option<u64>) -> WriteOp {
    let mut op = conformance::put(key, "");
    if let WriteOp::Put(put) = &mut op {
        put.kind = ValueKind::Bytes;
        put.value = vec![0xA5; len];
        put.expire_at_millis = expire_at_millis;
    }
    op
}

/// A value longer than the inline threshold lives in the values column
/// family; replacing it with a short value, deleting the key, or its expiry
/// (through the compaction filter) removes it together with its head.
#[tokio::test]
async fn out_of_line_values_go_with_their_head() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let engine = open_with(&dir, &["user:"], clock.clone(), no_grace()).unwrap();
    let big = INLINE_VALUE_MAX + 1;

    engine
        .write(vec![big_put("user:a", big, None)])
        .await
        .unwrap();
    assert!(engine.value_entry_present("user:a").unwrap());
    engine
        .write(vec![conformance::put("user:a", "short")])
        .await
        .unwrap();
    assert!(!engine.value_entry_present("user:a").unwrap(), "replaced");
    assert_eq!(
        engine.get("user:a".into()).await.unwrap().unwrap().value,
        b"short"
    );

    engine
        .write(vec![big_put("user:b", big, None)])
        .await
        .unwrap();
    engine
        .write(vec![WriteOp::Delete(DeleteOp {
            key: "user:b".into(),
            precondition: Precondition::None,
        })])
        .await
        .unwrap();
    assert!(!engine.value_entry_present("user:b").unwrap(), "deleted");

    let expire_at = 1_800_000_001_000;
    engine
        .write(vec![
            big_put("user:c", big, Some(expire_at)),
            big_put("plain", big, None),
        ])
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.compact_all();
    assert!(
        engine.value_entry_present("user:c").unwrap(),
        "not expired yet"
    );
    clock.advance(Duration::from_millis(1001));
    engine.compact_all();
    assert!(!engine.physically_present("user:c").unwrap());
    assert!(!engine.value_entry_present("user:c").unwrap());
    assert!(engine.value_entry_present("plain").unwrap());
    assert_eq!(
        engine
            .get("plain".into())
            .await
            .unwrap()
            .unwrap()
            .value
            .len(),
        big
    );
}

/// Records written before values went out of line (format 1, any value size
/// inline) still read, list and count against read budgets.
#[tokio::test]
async fn inline_records_of_any_size_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    drop(open(&dir, &["user:"], clock.clone()).unwrap());

    let old = Record {
        kind: ValueKind::Text,
        value: vec![b'o'; 3 * INLINE_VALUE_MAX],
        metadata: Some(br#"{"old":1}"#.to_vec()),
        expire_at_millis: None,
        version: 7,
        schema_version: 1,
    };
    {
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &names).unwrap();
        let cf = db.cf_handle("kv/user:").unwrap();
        db.put_cf(cf, "user:old", old.encode()).unwrap();
    }

    let engine = open(&dir, &["user:"], clock).unwrap();
    assert_eq!(
        engine.get("user:old".into()).await.unwrap(),
        Some(old.clone())
    );
    let listed = engine
        .scan(ScanRequest {
            prefix: "user:".into(),
            start_after: None,
            limit: 10,
            include_values: false,
            max_examined: 0,
        })
        .await
        .unwrap();
    assert_eq!(listed.entries[0].1.metadata, old.metadata);
    let within = engine
        .get_many_within(
            &["user:old".to_string(), "user:old".to_string()],
            2 * (3 * INLINE_VALUE_MAX + 9) - 1,
        )
        .await;
    assert!(
        matches!(within, Err(EngineError::TooLarge { .. })),
        "{within:?}"
    );
}

/// A listing reads heads only: the namespace's column family holds no byte
/// of a long value, so a page costs the same whatever the values' size.
#[tokio::test]
async fn listings_read_heads_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:"], clock).unwrap();
    let ops: Vec<WriteOp> = (0..20)
        .map(|i| big_put(&format!("user:{i:02}"), 1024 * 1024, None))
        .collect();
    engine.write(ops).await.unwrap();
    engine.flush().await.unwrap();
    drop(engine);

    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    let db =
        rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), dir.path(), &names, false)
            .unwrap();
    let cf = db.cf_handle("kv/user:").unwrap();
    let heads: Vec<usize> = db
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|entry| entry.unwrap().1.len())
        .collect();
    assert_eq!(heads.len(), 20);
    assert!(
        heads.iter().all(|len| *len <= 64),
        "heads are small: {heads:?}"
    );
}

/// The compaction filter keeps a record until it has been expired for longer
/// than the grace margin, so a clock stepped forward by less than the margin
/// hides records but destroys none: when the clock comes back, they are
/// still on disk (and stay hidden, as the engine's clock never goes back).
#[tokio::test]
async fn compaction_keeps_records_within_the_grace_margin() {
    const T0: u64 = 1_800_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let options = RocksOptions {
        expiry_grace: Duration::from_secs(3600),
        ..RocksOptions::default()
    };
    let engine = open_with(&dir, &["user:"], clock.clone(), options).unwrap();
    engine
        .write(vec![put_expiring("user:s", "v", T0 + 60_000)])
        .await
        .unwrap();
    engine.flush().await.unwrap();

    // A step forward of 30 minutes past the expiry: hidden, not destroyed.
    clock.set_millis(T0 + 60_000 + 30 * 60_000);
    engine.compact_all();
    assert!(engine.get("user:s".into()).await.unwrap().is_none());
    assert!(engine.physically_present("user:s").unwrap());

    // The clock is corrected: the record stays hidden and on disk.
    clock.set_millis(T0);
    engine.compact_all();
    assert!(engine.get("user:s".into()).await.unwrap().is_none());
    assert!(engine.physically_present("user:s").unwrap());

    // Past the grace margin, compaction removes it.
    clock.set_millis(T0 + 60_000 + 3_600_000 + 1);
    engine.compact_all();
    assert!(!engine.physically_present("user:s").unwrap());
}

/// The resurrection case: v1 lies in an older SST file, v2 with a TTL is
/// written over it, expires and is compacted away. v1 must not come back,
/// whatever ends up in the same compaction, not after a restart, and not
/// with the clock stepped back.
#[tokio::test]
async fn expired_overwrite_does_not_resurrect_older_version() {
    const T0: u64 = 1_800_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let engine = open_with(&dir, &["user:"], clock.clone(), no_grace()).unwrap();
    engine
        .write(vec![conformance::put("user:r", "v1")])
        .await
        .unwrap();
    engine.flush().await.unwrap();
    // v1 goes to the bottom level, so v2's compaction can run without it.
    engine.compact_all();
    engine
        .write(vec![put_expiring("user:r", "v2", T0 + 2_000)])
        .await
        .unwrap();
    engine.flush().await.unwrap();
    assert_eq!(
        engine.get("user:r".into()).await.unwrap().unwrap().value,
        b"v2"
    );

    clock.set_millis(T0 + 5_000);
    assert!(engine.get("user:r".into()).await.unwrap().is_none());
    engine.compact_all();
    assert!(!engine.physically_present("user:r").unwrap());
    assert!(
        engine.get("user:r".into()).await.unwrap().is_none(),
        "v1 resurrected"
    );
    let listed = engine
        .scan(ScanRequest {
            prefix: "user:".into(),
            start_after: None,
            limit: 10,
            include_values: false,
            max_examined: 0,
        })
        .await
        .unwrap();
    assert!(listed.entries.is_empty(), "{listed:?}");
    engine.compact_all();
    drop(engine);

    clock.set_millis(T0);
    let engine = open_with(&dir, &["user:"], clock.clone(), no_grace()).unwrap();
    assert!(engine.get("user:r".into()).await.unwrap().is_none());
    assert!(!engine.physically_present("user:r").unwrap());
}

/// A deterministic group commit: with the writer held, three requests queue
/// up and then commit as one group. The first if_absent succeeds, the second
/// if_absent on the same key fails alone, the unrelated write commits, and
/// the group's versions are contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_isolates_a_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:"], clock).unwrap();
    let before = engine
        .write(vec![conformance::put("warm-up", "v")])
        .await
        .unwrap();
    let WriteOutcome::Put { version: last } = before[0] else {
        panic!("{before:?}")
    };
    let mut changes = engine.subscribe();
    let groups_before = engine.groups_committed();

    let results = write_in_one_group(
        &engine,
        vec![
            vec![put_if("user:lock", "a", Precondition::IfAbsent)],
            vec![put_if("user:lock", "b", Precondition::IfAbsent)],
            vec![conformance::put("user:other", "c")],
        ],
    )
    .await;

    assert_eq!(engine.groups_committed(), groups_before + 1, "one group");
    let first = results[0].as_ref().expect("the first if_absent wins");
    assert_eq!(first, &vec![WriteOutcome::Put { version: last + 1 }]);
    match &results[1] {
        Err(EngineError::PreconditionFailed {
            current_version, ..
        }) => assert_eq!(*current_version, Some(last + 1)),
        other => panic!("the second if_absent must fail alone: {other:?}"),
    }
    let other = results[2].as_ref().expect("the unrelated write commits");
    assert_eq!(other, &vec![WriteOutcome::Put { version: last + 2 }]);
    assert_eq!(
        engine.get("user:lock".into()).await.unwrap().unwrap().value,
        b"a"
    );
    let published: Vec<(String, Change)> =
        vec![changes.recv().await.unwrap(), changes.recv().await.unwrap()]
            .into_iter()
            .map(|event| {
                // The payload is checked by the conformance suite.
                let change = match event.change {
                    Change::Put {
                        version,
                        expire_at_millis,
                        schema_version,
                        ..
                    } => Change::Put {
                        version,
                        expire_at_millis,
                        schema_version,
                        payload: None,
                    },
                    other => other,
                };
                (event.key.to_string(), change)
            })
            .collect();
    assert_eq!(
        published,
        vec![
            (
                "user:lock".to_string(),
                Change::Put {
                    version: last + 1,
                    expire_at_millis: None,
                    schema_version: 1,
                    payload: None,
                }
            ),
            (
                "user:other".to_string(),
                Change::Put {
                    version: last + 2,
                    expire_at_millis: None,
                    schema_version: 1,
                    payload: None,
                }
            ),
        ]
    );
}

/// Sends `requests` while the writer is paused, each queued before the next
/// is sent (every request, deletes included, adds bytes to the queue), so
/// the writer takes them as one group in this order; returns their results.
async fn write_in_one_group(
    engine: &RocksEngine,
    requests: Vec<Vec<WriteOp>>,
) -> Vec<Result<Vec<WriteOutcome>, EngineError>> {
    let pause = engine.pause_writer();
    let mut tasks = Vec::new();
    for ops in requests {
        let queued = engine.queued_write_bytes();
        let writer = engine.clone();
        tasks.push(tokio::spawn(async move {
            writer.write(ops).await.map(|receipt| receipt.outcomes)
        }));
        while engine.queued_write_bytes() == queued {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(pause);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// In one group, ops that read a key see what a blind put earlier in the
/// group left: an `if_version` on the blind put's version commits, and a
/// delete after it reports that the key existed. (A group of blind puts alone
/// keeps no record of what it wrote; one such op is enough to turn it on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_sees_earlier_blind_puts() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:"], clock).unwrap();
    let before = engine
        .write(vec![conformance::put("warm-up", "v")])
        .await
        .unwrap();
    let WriteOutcome::Put { version: last } = before[0] else {
        panic!("{before:?}")
    };
    let groups_before = engine.groups_committed();

    let delete = WriteOp::Delete(DeleteOp {
        key: "user:new".into(),
        precondition: Precondition::None,
    });
    let results = write_in_one_group(
        &engine,
        vec![
            vec![conformance::put("user:new", "a")],
            vec![put_if("user:new", "b", Precondition::IfVersion(last + 1))],
            vec![delete],
        ],
    )
    .await;

    assert_eq!(engine.groups_committed(), groups_before + 1, "one group");
    assert_eq!(
        results[0].as_ref().unwrap(),
        &vec![WriteOutcome::Put { version: last + 1 }]
    );
    assert_eq!(
        results[1].as_ref().expect("if_version sees the blind put"),
        &vec![WriteOutcome::Put { version: last + 2 }]
    );
    assert_eq!(
        results[2].as_ref().unwrap(),
        &vec![WriteOutcome::Delete { existed: true }]
    );
    assert!(engine.get("user:new".into()).await.unwrap().is_none());
}

/// The write queue is bounded in bytes: with the writer held, writes queue
/// only up to `write_queue_bytes`; the next one waits for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_queue_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_800_000_000_000);
    let options = RocksOptions {
        write_queue_bytes: 5 * 1024 * 1024,
        ..RocksOptions::default()
    };
    let engine = open_with(&dir, &["user:"], clock, options).unwrap();
    let value = "x".repeat(1024 * 1024);
    let pause = engine.pause_writer();
    let mut tasks = Vec::new();
    for n in 0..4 {
        let writer = engine.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            writer
                .write(vec![conformance::put(&format!("user:{n}"), &value)])
                .await
        }));
    }
    // A queued 1 MiB put holds about 2 MiB (its encoded record, and its
    // value kept for the change feed's payload): two fit in 5 MiB; a third
    // does not. The writer holds the first and the second waits in the queue (or,
    // if an idle clock tick reached the writer first, both wait there).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.queued_write_requests() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = engine.queued_write_requests();
    assert!(
        (1..=2).contains(&waiting),
        "only two writes admitted, {waiting} queued"
    );
    assert!(engine.queued_write_bytes() <= 5 * 1024 * 1024);
    drop(pause);
    for task in tasks {
        task.await
            .unwrap()
            .expect("every write commits once there is room");
    }
    assert_eq!(engine.queued_write_bytes(), 0);
}

/// If the writer thread dies, the engine reports it through `failed`, and
/// writes fail with UNAVAILABLE naming the cause instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_death_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:"], clock).unwrap();
    engine
        .write(vec![conformance::put("user:1", "v")])
        .await
        .unwrap();
    let failed = {
        let engine = engine.clone();
        tokio::spawn(async move { LocalStorage::failed(&engine).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!failed.is_finished(), "a healthy engine has not failed");

    engine.crash_writer();
    let reason = tokio::time::timeout(Duration::from_secs(10), failed)
        .await
        .expect("the failure is reported")
        .unwrap();
    assert!(reason.contains("panicked"), "{reason}");
    let error = engine
        .write(vec![conformance::put("user:2", "v")])
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains("panicked"), "{error}");
    // Reads still work.
    assert!(engine.get("user:1".into()).await.unwrap().is_some());
}
