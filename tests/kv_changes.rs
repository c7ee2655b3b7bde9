//! The change feed later tiers (the cache's in-memory L1, the migrator,
//! Watch) use to see every committed write: published by the engine at the
//! commit point, in commit order, whatever happened to the write's caller.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::time::Duration;

use common::*;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::{
    Change, ChangeEvent, ChangeSubscription, Engine, Namespaces, Precondition, RocksEngine,
    RocksOptions,
};
use tierkv::kv::{DeleteCommand, KvService, Mutation, PutCommand, Value};
use tonic::Code;

fn put(key: &str) -> PutCommand {
    PutCommand {
        key: key.to_string(),
        value: Some(Value::Text("v".into())),
        ..Default::default()
    }
}

async fn next(changes: &mut ChangeSubscription) -> ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("an event within 10 s")
        .expect("an event")
}

/// Every committed mutation is published with its key, version or deletion
/// and increasing sequences; a rejected write publishes nothing.
#[tokio::test]
async fn committed_writes_publish_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::starting_now();
    let service = KvService::new(common::open_engine(&dir, clock).await);
    let mut changes = service.subscribe_changes();

    let first = service.put(put("cache:a")).await.unwrap();
    let event = next(&mut changes).await;
    assert_eq!(&*event.key, "cache:a");
    assert!(
        matches!(
            event.change,
            Change::Put { version, expire_at_millis: None, .. } if version == first.version
        ),
        "{event:?}"
    );

    let mut guarded = put("cache:a");
    guarded.precondition = Precondition::IfAbsent;
    assert!(service.put(guarded).await.is_err());

    let results = service
        .batch_write(vec![
            Mutation::Put(put("cache:b")),
            Mutation::Delete(DeleteCommand {
                key: "cache:a".into(),
                if_version: None,
            }),
        ])
        .await
        .unwrap();
    let put_b = next(&mut changes).await;
    let delete_a = next(&mut changes).await;
    // The failed put published nothing: the next event is the batch's.
    assert!(put_b.sequence > event.sequence);
    // One commit: its events' sequences do not go back.
    assert!(delete_a.sequence >= put_b.sequence);
    assert_eq!(&*put_b.key, "cache:b");
    match (put_b.change, results[0]) {
        (Change::Put { version, .. }, tierkv::kv::MutationResult::Put(result)) => {
            assert_eq!(version, result.version)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        (&*delete_a.key, delete_a.change),
        ("cache:a", Change::Delete)
    );
    assert_eq!(changes.try_recv(), Ok(None));
}

crate::rocksdb_only! {
    "pauses the RocksDB writer thread to queue a write (a local-only test hook)";
    /// A write whose client deadline fires while it waits in the writer's queue
    /// still commits, and is still published: the feed does not depend on the
    /// caller. The writer is held with the engine's test hook so the deadline
    /// fires deterministically while the write is queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_whose_deadline_fired_while_queued_is_published() {
        let mut server = start().await;
        let engine = server.rocks().clone();
        let mut changes = server.server.engine.subscribe();

        let pause = engine.pause_writer();
        let mut request = tonic::Request::new(put_text("user:late", "v"));
        request.set_timeout(Duration::from_millis(300));
        let mut client = server.client.clone();
        let call = tokio::spawn(async move { client.put(request).await });
        // Wait until the write is queued (it holds bytes of the queue's budget).
        while engine.queued_write_bytes() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let status = call.await.unwrap().unwrap_err();
        // The server answers DEADLINE_EXCEEDED just before the deadline; the
        // client's own timer, racing it, reports CANCELLED. Either way the caller
        // gave up while its write was queued.
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert_eq!(changes.try_recv(), Ok(None), "not committed yet");
        drop(pause);

        let event = next(&mut changes).await;
        assert_eq!(&*event.key, "user:late");
        let Change::Put { version, .. } = event.change else {
            panic!("expected a put, got {event:?}");
        };
        let stored = server
            .client
            .get(get("user:late"))
            .await
            .unwrap()
            .into_inner();
        assert!(stored.found, "the write committed after its caller gave up");
        assert_eq!(stored.version, version);
    }
}

/// Events arrive in commit order: with many concurrent writers, sequences
/// and versions increase along the feed, and every
/// acknowledged write is in it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_matches_versions_under_concurrency() {
    const WRITERS: usize = 8;
    const WRITES: usize = 50;
    let server = start().await;
    let mut changes = server.server.engine.subscribe();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..WRITES {
                let key = format!("user:{writer}:{}", n % 5);
                let response = client.put(put_text(&key, "v")).await.unwrap();
                acknowledged.push((key, response.into_inner().version));
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged.sort_by_key(|(_, version)| *version);

    let mut published = Vec::new();
    let mut previous: Option<ChangeEvent> = None;
    while published.len() < acknowledged.len() {
        let event = next(&mut changes).await;
        if let Some(previous) = &previous {
            assert!(event.sequence > previous.sequence, "one put per commit");
        }
        let Change::Put { version, .. } = event.change else {
            panic!("only puts were made: {event:?}");
        };
        published.push((event.key.to_string(), version));
        previous = Some(event);
    }
    assert!(
        published.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "versions increase along the feed"
    );
    assert_eq!(published, acknowledged);
}

crate::rocksdb_only! {
    "opens a RocksEngine in-process to fill its feed with its options (the etcd feed has its own tests in tests/engine_etcd_conformance.rs)";
    /// The feed keeps at most `change_feed_max_bytes` (64 MiB by default) of
    /// events for a subscriber that does not read: 16 commits of 10,000 puts with
    /// 500-byte keys (about 93 MB of events) reach a subscriber that reads only
    /// afterwards as what fits plus a lag for the rest. Bounded only in commits
    /// (4,096 of them), the feed kept every one.
    #[tokio::test]
    async fn a_lagging_subscriber_holds_a_bounded_number_of_bytes() {
        use tierkv::engine::{PutOp, ValueKind, WriteOp};
        const COMMITS: usize = 16;
        const OPS: usize = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = ManualClock::starting_now();
        let engine = RocksEngine::open(
            dir.path(),
            Namespaces::new(Namespaces::default_prefixes()),
            RocksOptions::default(),
            clock,
        )
        .unwrap();
        let mut changes = engine.subscribe();
        let padding = "k".repeat(490);
        for commit in 0..COMMITS {
            let ops = (0..OPS)
                .map(|op| {
                    WriteOp::Put(PutOp {
                        key: format!("user:{padding}{commit:02}{op:05}"),
                        kind: ValueKind::Text,
                        value: b"v".to_vec(),
                        metadata: None,
                        expire_at_millis: None,
                        schema_version: 1,
                        precondition: Precondition::None,
                    })
                })
                .collect();
            engine.write(ops).await.unwrap();
        }
        let total = (COMMITS * OPS) as u64;
        let (mut received, mut missed) = (0u64, 0u64);
        while received + missed < total {
            match changes.try_recv() {
                Ok(Some(_)) => received += 1,
                Ok(None) => panic!("{received} received and {missed} missed of {total}"),
                Err(tierkv::engine::RecvError::Lagged { missed: lag }) => missed += lag,
                Err(error) => panic!("{error}"),
            }
        }
        assert!(
            missed > 0,
            "all {received} events were held for the subscriber"
        );
        let held = received * 500;
        assert!(
            held <= 64 << 20,
            "{received} events held, {held} bytes of keys"
        );
        assert_eq!(received + missed, total);
    }
}
