//! The shared engine suite against the RocksDB engine, plus RocksDB-only
//! behaviour: the expiry compaction filter, namespace layout checks and the
//! repair of keys a newly configured namespace owns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::conformance::{self, Harness, SUITE_NAMESPACES};
use tierkv::engine::{Engine, EngineError, Namespaces, RocksEngine, RocksOptions, ScanRequest};

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
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2501);
}
