//! The memory tier against a real engine, and against a feed that arrives
//! after its writes were acknowledged.

use super::*;
use crate::clock::ManualClock;
use crate::engine::{
    DeleteOp, Engine, Namespaces, Precondition, PutOp, RocksEngine, RocksOptions, ValueKind,
    WriteOp, WriteOutcome,
};

/// A real engine over `dir` with a `cache:` namespace, and a 1 MiB tier
/// following its feed.
fn engine_and_tier(dir: &tempfile::TempDir) -> (RocksEngine, Arc<MemoryTier>) {
    let engine = RocksEngine::open(
        dir.path().join("data"),
        Namespaces::new(["cache:"]),
        RocksOptions::default(),
        ManualClock::starting_now(),
    )
    .unwrap();
    let tier = MemoryTier::start(1 << 20, || engine.subscribe(), || {});
    (engine, tier)
}

async fn put(engine: &RocksEngine, key: &str, value: &str) -> u64 {
    let outcomes = engine
        .write(vec![WriteOp::Put(PutOp {
            key: key.into(),
            kind: ValueKind::Text,
            value: value.as_bytes().to_vec(),
            metadata: None,
            expire_at_millis: None,
            schema_version: 1,
            precondition: Precondition::None,
        })])
        .await
        .unwrap();
    match outcomes[0] {
        WriteOutcome::Put { version } => version,
        other => panic!("{other:?}"),
    }
}

fn entry(version: u64) -> MemoryEntry {
    MemoryEntry {
        kind: ValueKind::Text,
        value: Arc::from(&b"v"[..]),
        content_type: None,
        version,
        fetched_at_ms: 0,
        memory_until_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        expire_at_ms: None,
        negative: None,
    }
}

/// Each interleaving of a fill with a newer commit, replayed step by
/// step against a real engine: the older value never stays in memory.
#[tokio::test]
async fn fills_that_raced_newer_commits_never_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, tier) = engine_and_tier(&dir);
    let key = "cache:k";
    let v1 = put(&engine, key, "1").await;

    // The newer commit's event is applied between the read and the fill:
    // the fill's own check removes the entry.
    let ticket = tier.ticket(key);
    assert_eq!(engine.get(key.into()).await.unwrap().unwrap().version, v1);
    let v2 = put(&engine, key, "2").await;
    tier.catch_up_to(engine.acknowledged_sequence(), None).await;
    assert!(!tier.fill(key, entry(v1), ticket));
    assert!(tier
        .get(key, engine.acknowledged_sequence(), None)
        .await
        .is_none());

    // The event is applied after the fill (unless the background task
    // was quicker, which the fill's check covers): the next read drops it.
    let ticket = tier.ticket(key);
    let _ = put(&engine, key, "3").await;
    let _ = tier.fill(key, entry(v2), ticket);
    assert!(
        tier.get(key, engine.acknowledged_sequence(), None)
            .await
            .is_none(),
        "the v3 event drops v2 before the read looks"
    );

    // A filler's own write (same version) stays, through its own event.
    let ticket = tier.ticket(key);
    let v4 = put(&engine, key, "4").await;
    assert!(tier.fill(key, entry(v4), ticket));
    assert_eq!(
        tier.get(key, engine.acknowledged_sequence(), None)
            .await
            .unwrap()
            .version,
        v4
    );

    // A delete between read and fill removes the fill, in both orders.
    let ticket = tier.ticket(key);
    let delete = || {
        WriteOp::Delete(DeleteOp {
            key: key.into(),
            precondition: Precondition::None,
        })
    };
    engine.write(vec![delete()]).await.unwrap();
    tier.catch_up_to(engine.acknowledged_sequence(), None).await;
    assert!(!tier.fill(key, entry(v4), ticket));
    assert!(tier
        .get(key, engine.acknowledged_sequence(), None)
        .await
        .is_none());
    let v5 = put(&engine, key, "5").await;
    let ticket = tier.ticket(key);
    engine.write(vec![delete()]).await.unwrap();
    let _ = tier.fill(key, entry(v5), ticket);
    assert!(tier
        .get(key, engine.acknowledged_sequence(), None)
        .await
        .is_none());

    // A remembered 404 (version 0) does not survive a put of its key.
    let ticket = tier.ticket(key);
    let _ = put(&engine, key, "6").await;
    tier.catch_up_to(engine.acknowledged_sequence(), None).await;
    let mut negative = entry(0);
    negative.negative = Some(404);
    assert!(!tier.fill(key, negative, ticket));
}

/// A read waits only for the events of its own key's shard: while the
/// events of another key are being applied (the lock they are applied
/// under is held), a memory read of this key still answers. With one
/// lock for the whole feed, a burst of writes to any keys stalled every
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_does_not_wait_for_other_keys_events() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, tier) = engine_and_tier(&dir);
    let key = "cache:read";
    let version = put(&engine, key, "1").await;
    assert!(tier.fill(key, entry(version), tier.ticket(key)));
    let other = (0..)
        .map(|i| format!("cache:written:{i}"))
        .find(|other| !tier.same_lock(key, other))
        .unwrap();

    let applying = tier.hold_events_of(&other);
    let (answered, answer) = std::sync::mpsc::channel();
    let reader = {
        let tier = Arc::clone(&tier);
        let runtime = tokio::runtime::Handle::current();
        let acknowledged = engine.acknowledged_sequence();
        std::thread::spawn(move || {
            let read = runtime.block_on(tier.get(key, acknowledged, None));
            let _ = answered.send(read.map(|entry| entry.version));
        })
    };
    // A deadlock guard, not a time limit: without sharding the read
    // never answers while the lock is held.
    let read = answer.recv_timeout(std::time::Duration::from_secs(5));
    drop(applying);
    reader.join().unwrap();
    assert_eq!(
        read,
        Ok(Some(version)),
        "the read of {key} waited for the lock {other}'s events are applied under"
    );
}

/// A fill refused by its check is never visible, not even for a moment:
/// a reader that caught up with the newer commit must not find the older
/// entry while the filler is between inserting and checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_fill_is_never_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, tier) = engine_and_tier(&dir);
    let key = "cache:k";
    let v1 = put(&engine, key, "1").await;
    let ticket = tier.ticket(key);
    put(&engine, key, "2").await;
    tier.catch_up_to(engine.acknowledged_sequence(), None).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (tier, done) = (Arc::clone(&tier), Arc::clone(&done));
        let runtime = tokio::runtime::Handle::current();
        let acknowledged = engine.acknowledged_sequence();
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !done.load(Ordering::SeqCst) {
                if runtime
                    .block_on(tier.get(key, acknowledged, None))
                    .is_some()
                {
                    seen += 1;
                }
            }
            seen
        })
    };
    for _ in 0..20_000 {
        assert!(!tier.fill(key, entry(v1), ticket));
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(reader.join().unwrap(), 0, "a refused fill was seen");
}

/// A read catches up with writes the engine acknowledged even when their
/// events reach the feed later, as a remote engine's do: the feed here is
/// the real one, published by hand after the write was acknowledged.
/// Before `catch_up_to`, a read returned the older entry from memory.
#[tokio::test]
async fn a_read_waits_for_acknowledged_events_still_to_come() {
    use crate::engine::ChangeFeed;
    let feed = Arc::new(ChangeFeed::new(16, usize::MAX, 0));
    let tier = {
        let feed = Arc::clone(&feed);
        MemoryTier::start(1 << 20, move || feed.subscribe(), || {})
    };
    let key = "cache:k";
    assert!(tier.fill(key, entry(1), tier.ticket(key)));
    assert_eq!(tier.get(key, 0, None).await.unwrap().version, 1);

    // A put of version 2 at sequence 30 is acknowledged; its event comes later.
    let publisher = Arc::clone(&feed);
    let late = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        publisher.publish(
            30,
            1,
            || key.len(),
            || {
                vec![ChangeEvent {
                    sequence: 30,
                    batch_sequence: 30,
                    key: Arc::from(key),
                    change: Change::Put {
                        version: 2,
                        expire_at_millis: None,
                        schema_version: 1,
                        payload: None,
                    },
                }]
            },
        );
    });
    let read = tier
        .get(
            key,
            30,
            Some(Instant::now() + std::time::Duration::from_secs(10)),
        )
        .await;
    assert!(
        read.is_none(),
        "the read returned {read:?} after version 2 was acknowledged"
    );
    late.await.unwrap();

    // A feed that never gets there: the read skips memory at its deadline.
    assert!(tier.fill(key, entry(2), tier.ticket(key)));
    let soon = Instant::now() + std::time::Duration::from_millis(20);
    assert!(tier.get(key, 40, Some(soon)).await.is_none());
    assert!(!tier.catch_up_to(40, Some(soon)).await);
}
