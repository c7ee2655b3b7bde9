//! The shared engine suite against the RocksDB engine, plus RocksDB-only
//! behaviour: the expiry compaction filter, namespace layout checks and the
//! repair of keys a newly configured namespace owns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::conformance::{self, Harness, SUITE_NAMESPACES};
use tierkv::engine::record::INLINE_VALUE_MAX;
use tierkv::engine::{
    DeleteOp, Engine, EngineError, Namespaces, Precondition, Record, RocksEngine, RocksOptions,
    ScanRequest, ValueKind, WriteOp,
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
            RocksOptions::default(),
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

fn open(dir: &TempDir, prefixes: &[&str], clock: SharedClock) -> Result<RocksEngine, EngineError> {
    RocksEngine::open(
        dir.path(),
        Namespaces::new(prefixes.iter().copied()),
        RocksOptions::default(),
        clock,
    )
}

/// The compaction filter physically removes expired records (and only them).
#[tokio::test]
async fn compaction_filter_drops_expired_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let engine = open(&dir, &["user:"], clock.clone()).unwrap();
    let mut ops = Vec::new();
    for key in ["user:short", "short-default"] {
        let mut op = conformance::put(key, "v");
        if let tierkv::engine::WriteOp::Put(put) = &mut op {
            put.expire_at_millis = Some(1_800_000_001_000);
        }
        ops.push(op);
    }
    ops.push(conformance::put("user:forever", "v"));
    engine.write(ops).await.unwrap();
    engine.flush().await.unwrap();

    engine.compact_all();
    assert!(
        engine.physically_present("user:short").unwrap(),
        "not expired yet: kept"
    );

    clock.advance(Duration::from_secs(1));
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
    let engine = open(&dir, &["user:"], clock.clone()).unwrap();
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
    clock.advance(Duration::from_secs(1));
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
            vec!["user:old".into(); 2],
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
