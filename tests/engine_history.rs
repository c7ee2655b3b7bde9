//! The RocksDB engine's change history beyond the shared suite: it survives
//! a crashed writer without breaking exactly-once resume, a clean restart
//! leaves no gap, a rewound store (a power loss with `sync_writes = false`,
//! simulated by doctoring the store) refuses the lost positions, a restored
//! backup and a store without a history get a new history, and the history
//! column family is never a namespace.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::conformance;
use tierkv::engine::{
    Engine, EngineError, HistoryError, HistoryPosition, LocalStorage, Namespaces, RocksEngine,
    RocksOptions, ScanRequest, WriteOp,
};

const T0: u64 = 1_800_000_000_000;
const HISTORY_CF: &str = "tierkv/history";

fn open(dir: &Path) -> RocksEngine {
    let clock: SharedClock = ManualClock::new(T0);
    RocksEngine::open(
        dir,
        Namespaces::new(["user:"]),
        RocksOptions::default(),
        clock,
    )
    .expect("open")
}

fn puts(keys: &[&str]) -> Vec<WriteOp> {
    keys.iter().map(|key| conformance::put(key, "v")).collect()
}

fn at(engine: &RocksEngine, sequence: u64) -> HistoryPosition {
    HistoryPosition {
        history_id: engine.history_id(),
        sequence,
    }
}

/// The sequences of the batches after `after`, read to the end.
async fn batches_after(engine: &RocksEngine, after: u64) -> Vec<u64> {
    let page = engine
        .read_history(at(engine, after), 100_000)
        .await
        .expect("read history");
    page.batches.iter().map(|batch| batch.sequence).collect()
}

/// Opens the store with RocksDB directly, every column family included,
/// to doctor it as a crash or an older release would have left it.
fn raw(dir: &Path) -> rocksdb::DB {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).unwrap()
}

/// A writer that dies (as a kill -9 would stop it: no clean close) loses
/// nothing acknowledged: after reopening, the history id is the same, every
/// batch is there, a client at the last position it processed gets exactly
/// the later writes, and the sequences skipped above the old ceiling are
/// refused as possibly lost (no event was ever issued there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_crashed_writer() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let id = engine.history_id();
    let mut receipts = Vec::new();
    for n in 0..20 {
        let key = format!("user:{n}");
        receipts.push(
            engine
                .write(puts(&[&key, "user:x"]))
                .await
                .unwrap()
                .sequence,
        );
    }
    let failed = {
        let engine = engine.clone();
        tokio::spawn(async move { LocalStorage::failed(&engine).await })
    };
    engine.crash_writer();
    tokio::time::timeout(Duration::from_secs(10), failed)
        .await
        .expect("the writer's death is reported")
        .unwrap();
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(engine.history_id(), id, "a crash keeps the history");
    assert_eq!(batches_after(&engine, 0).await, receipts);
    let last = *receipts.last().unwrap();
    let next = engine.write(puts(&["user:after"])).await.unwrap().sequence;
    assert!(next > last + 1, "sequences continue above the old ceiling");
    assert_eq!(
        batches_after(&engine, last).await,
        vec![next],
        "exactly once after the last position processed"
    );
    match engine.read_history(at(&engine, last + 1), 10).await {
        Err(HistoryError::Rewound {
            lost_after,
            lost_to,
        }) => {
            assert_eq!(lost_after, last);
            assert!(lost_to < next);
        }
        other => panic!("Rewound expected, got {other:?}"),
    }
    // Whatever position this open hands out is resumable.
    let (_, latest) = engine.history_bounds().await.unwrap();
    assert!(engine.read_history(at(&engine, latest), 10).await.is_ok());
}

/// A clean stop lowers the ceiling to the last sequence used: the next open
/// continues right after it, with no range refused.
#[tokio::test]
async fn a_clean_restart_leaves_no_gap() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let id = engine.history_id();
    let last = engine.write(puts(&["user:a"])).await.unwrap().sequence;
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine.history_id(), id);
    assert_eq!(engine.history_bounds().await.unwrap().1, last);
    let next = engine.write(puts(&["user:b"])).await.unwrap().sequence;
    assert_eq!(next, last + 1);
    assert_eq!(batches_after(&engine, 0).await, vec![last, next]);
}

/// A flush (what the server does at shutdown) marks the stop clean even if
/// the process then exits without closing the engine: the next open continues
/// without a gap. Writes after the flush raise the ceiling again, so a crash
/// after them is still detected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_marks_the_stop_clean() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let first = engine.write(puts(&["user:a"])).await.unwrap().sequence;
    engine.flush().await.unwrap();
    let second = engine.write(puts(&["user:b"])).await.unwrap().sequence;
    assert_eq!(second, first + 1);
    engine.flush().await.unwrap();
    // An exit without a clean close: the writer dies, nothing else runs.
    let failed = {
        let engine = engine.clone();
        tokio::spawn(async move { LocalStorage::failed(&engine).await })
    };
    engine.crash_writer();
    tokio::time::timeout(Duration::from_secs(10), failed)
        .await
        .expect("the writer's death is reported")
        .unwrap();
    drop(engine);
    let engine = open(dir.path());
    let third = engine.write(puts(&["user:c"])).await.unwrap().sequence;
    assert_eq!(third, second + 1, "no gap after a flushed stop");
    assert_eq!(batches_after(&engine, 0).await, vec![first, second, third]);
}

/// A power loss with `sync_writes = false` can drop the tail of the log:
/// the store comes back at an earlier sequence than clients have seen. The
/// durable ceiling (raised before any sequence above it was used) marks the
/// range; a client holding a lost position is refused with `Rewound`, never
/// handed the new writes that reuse nothing of it, and a client at a
/// surviving position resumes exactly.
#[tokio::test]
async fn a_rewound_store_refuses_lost_positions() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let kept = engine.write(puts(&["user:kept"])).await.unwrap().sequence;
    let lost = engine.write(puts(&["user:lost"])).await.unwrap().sequence;
    drop(engine);
    {
        // What the power loss leaves: the last commit gone, data and history
        // together (one WriteBatch), and the synced ceiling above it.
        let db = raw(dir.path());
        let meta = db.cf_handle("tierkv/meta").unwrap();
        let history = db.cf_handle(HISTORY_CF).unwrap();
        let ceiling = lost + 1000;
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(history, lost.to_be_bytes());
        batch.delete_cf(db.cf_handle("kv/user:").unwrap(), b"user:lost");
        batch.put_cf(meta, b"change_sequence", (kept + 1).to_le_bytes());
        batch.put_cf(meta, b"sequence_ceiling", ceiling.to_le_bytes());
        db.write(batch).unwrap();
    }
    let engine = open(dir.path());
    match engine.read_history(at(&engine, lost), 10).await {
        Err(HistoryError::Rewound {
            lost_after,
            lost_to,
        }) => {
            assert_eq!((lost_after, lost_to), (kept, lost + 1000));
        }
        other => panic!("Rewound expected, got {other:?}"),
    }
    let next = engine.write(puts(&["user:new"])).await.unwrap().sequence;
    assert!(next > lost + 1000, "no lost sequence is reissued: {next}");
    assert_eq!(batches_after(&engine, kept).await, vec![next]);
    // Still refused after another (clean) restart.
    drop(engine);
    let engine = open(dir.path());
    assert!(matches!(
        engine.read_history(at(&engine, lost), 10).await,
        Err(HistoryError::Rewound { .. })
    ));
}

/// A store restored from a backup gets a new history: positions of the
/// original are refused with `OtherHistory` (the original may have gone on
/// to issue them to other events), and the new history starts at the
/// restored store's latest sequence.
#[tokio::test]
async fn a_restored_backup_gets_a_new_history() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let before = engine.write(puts(&["user:a"])).await.unwrap().sequence;
    let backup = dir.path().join("backup");
    LocalStorage::backup(&engine, &backup).await.unwrap();
    let original = engine.history_id();
    drop(engine);

    let restored = open(&backup);
    assert_ne!(restored.history_id(), original);
    match restored
        .read_history(
            HistoryPosition {
                history_id: original,
                sequence: before,
            },
            10,
        )
        .await
    {
        Err(HistoryError::OtherHistory { current }) => assert_eq!(current, restored.history_id()),
        other => panic!("OtherHistory expected, got {other:?}"),
    }
    // A backup of a running store is taken like a crash (its ceiling is
    // above its sequence), so the new history may start above `before`.
    let (floor, latest) = restored.history_bounds().await.unwrap();
    assert_eq!(floor, latest);
    assert!(floor >= before);
    let next = restored.write(puts(&["user:b"])).await.unwrap().sequence;
    assert_eq!(batches_after(&restored, floor).await, vec![next]);
    drop(restored);
    let reopened = open(&backup);
    assert_eq!(
        batches_after(&reopened, floor).await,
        vec![next],
        "the new history is kept from then on"
    );
}

/// A data directory from before the history (no history column family, no
/// id) opens with a history that starts at its current sequence: older
/// positions are `Compacted`, and everything from there on is recorded.
#[tokio::test]
async fn a_store_without_history_starts_one_at_its_sequence() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let last = engine
        .write(puts(&["user:a", "user:b"]))
        .await
        .unwrap()
        .sequence;
    drop(engine);
    {
        let mut db = raw(dir.path());
        db.drop_cf(HISTORY_CF).unwrap();
        let meta = db.cf_handle("tierkv/meta").unwrap();
        for key in [&b"history_id"[..], b"history_floor", b"sequence_ceiling"] {
            db.delete_cf(meta, key).unwrap();
        }
    }
    std::fs::remove_file(dir.path().join("HISTORY_ID")).unwrap();
    let engine = open(dir.path());
    assert_eq!(engine.history_bounds().await.unwrap(), (last, last));
    match engine.read_history(at(&engine, last - 1), 10).await {
        Err(HistoryError::Compacted { oldest }) => assert_eq!(oldest, last),
        other => panic!("Compacted expected, got {other:?}"),
    }
    let next = engine.write(puts(&["user:c"])).await.unwrap().sequence;
    assert_eq!(batches_after(&engine, last).await, vec![next]);
}

/// The history column family is no namespace: listings, namespace stats and
/// clearing the default namespace never see or touch it, and a store
/// reopened with other namespaces does not take it for a leftover one.
#[tokio::test]
async fn the_history_is_not_a_namespace() {
    let dir = TempDir::new().unwrap();
    let engine = open(dir.path());
    let first = engine.write(puts(&["a", "user:b"])).await.unwrap().sequence;
    let page = engine
        .scan(ScanRequest {
            prefix: String::new(),
            limit: 100,
            ..ScanRequest::default()
        })
        .await
        .unwrap();
    let keys: Vec<&str> = page.entries.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, vec!["a", "user:b"]);
    assert_eq!(page.position, first);
    let stats = engine.namespace_stats().await.unwrap();
    assert!(stats.iter().all(|stats| stats.storage != HISTORY_CF));
    assert_eq!(stats.len(), 2);
    assert!(matches!(
        engine.count_namespace(HISTORY_CF).await,
        Err(EngineError::Layout(_))
    ));
    engine.clear_namespace("").await.unwrap();
    assert_eq!(batches_after(&engine, 0).await.len(), 2, "put, then clear");
    drop(engine);
    let clock: SharedClock = ManualClock::new(T0);
    let engine = RocksEngine::open(
        dir.path(),
        Namespaces::new(["user:", "other:"]),
        RocksOptions::default(),
        clock,
    )
    .expect("the history column family is not a leftover namespace");
    assert_eq!(batches_after(&engine, 0).await.len(), 2);
    let _: Arc<dyn Engine> = Arc::new(engine);
}
