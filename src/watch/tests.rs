//! The watcher against a real engine whose change feed drops everything
//! (no byte room): every commit reaches the watcher as a lag, which it must
//! turn into a replay from the history, never into a gap or a failure.

use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::engine::{
    Engine, Namespaces, Precondition, PutOp, RocksEngine, RocksOptions, ValueKind, WriteOp,
};
use crate::kv::{ReadValue, RecordStore};

/// A RocksDB engine in `dir` with no configured namespaces.
fn open_engine(dir: &tempfile::TempDir, options: RocksOptions) -> Arc<dyn Engine> {
    Arc::new(
        RocksEngine::open(
            dir.path().join("data"),
            Namespaces::new(Vec::<String>::new()),
            options,
            ManualClock::starting_now(),
        )
        .unwrap(),
    )
}

fn put(key: &str) -> WriteOp {
    WriteOp::Put(PutOp {
        key: key.into(),
        kind: ValueKind::Text,
        value: key.as_bytes().to_vec(),
        metadata: None,
        expire_at_millis: None,
        schema_version: 1,
        precondition: Precondition::None,
    })
}

/// A feed that lags on every commit: the watcher replays each from the
/// history and delivers every event once, in order, with its value; the
/// events of a two-key commit stay together.
#[tokio::test]
async fn a_lagging_feed_falls_back_to_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(
        &dir,
        RocksOptions {
            change_feed_max_bytes: 0,
            ..RocksOptions::default()
        },
    );
    let service = WatchService::new(
        RecordStore::new(Arc::clone(&engine)),
        WatchConfig::default(),
    );
    let mut watcher = service
        .watch(WatchRequest {
            prefix: "k:".into(),
            include_values: true,
            ..WatchRequest::default()
        })
        .await
        .unwrap();
    let mut expected = Vec::new();
    for index in 0..200 {
        let key = format!("k:{index:03}");
        if index % 50 == 0 {
            let pair = format!("{key}-pair");
            engine.write(vec![put(&key), put(&pair)]).await.unwrap();
            expected.push(key);
            expected.push(pair);
        } else {
            engine.write(vec![put(&key)]).await.unwrap();
            expected.push(key);
        }
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let item = tokio::time::timeout(std::time::Duration::from_secs(30), watcher.next())
            .await
            .expect("events in time")
            .expect("open")
            .expect("no error: a lag replays instead of failing");
        let WatchItem::Events { batches, .. } = item else {
            continue;
        };
        for event in batches
            .iter()
            .flat_map(|batch| batch.events.iter().cloned())
        {
            assert!(!event.value_superseded);
            let value = event
                .value
                .expect("a replayed value of the current version");
            assert_eq!(value.value, ReadValue::Text(event.key.to_string()));
            seen.push(event.key.to_string());
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(service.counts().watchers, 1);
}

/// What a watcher received: (key, version) per event, in order, up to and
/// including the event of `last_key`.
async fn receive_until(watcher: &mut Watcher, last_key: &str) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    loop {
        let item = tokio::time::timeout(std::time::Duration::from_secs(60), watcher.next())
            .await
            .expect("events in time")
            .expect("open")
            .expect("no error");
        let WatchItem::Events { batches, .. } = item else {
            continue;
        };
        for event in batches.iter().flat_map(|batch| batch.events.iter()) {
            seen.push((event.key.to_string(), event.version));
            if &*event.key == last_key {
                return seen;
            }
        }
    }
}

/// Watchers started at different moments while writes go on (live from
/// the start, or replaying the history first) end up in their fan-out
/// group — one per (prefix, include_values) — and each receives every
/// event once, in commit order: the hand-over from a watcher's own replay
/// and feed to the group, at a batch boundary, neither loses nor repeats
/// one. Watchers that go away leave their group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_join_their_group_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(&dir, RocksOptions::default());
    let service = WatchService::new(
        RecordStore::new(Arc::clone(&engine)),
        WatchConfig::default(),
    );
    let request = |include_values: bool, start_after: Option<String>| WatchRequest {
        prefix: "k:".into(),
        include_values,
        start_after,
        ..WatchRequest::default()
    };
    let mut first = service.watch(request(false, None)).await.unwrap();
    let start = first.position().to_string();
    // Live from now: opened before the writer starts, or it could miss the
    // first writes (they would be committed before it was).
    let mut watchers = vec![service.watch(request(true, None)).await.unwrap()];
    let writer = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move {
            for index in 0..3000 {
                let key = format!("k:{index:05}");
                if index % 7 == 0 {
                    let pair = format!("{key}-pair");
                    engine.write(vec![put(&key), put(&pair)]).await.unwrap();
                } else {
                    engine.write(vec![put(&key)]).await.unwrap();
                }
                // Other keys in between: batches with nothing for the group.
                if index % 5 == 0 {
                    engine.write(vec![put("other")]).await.unwrap();
                }
                if index % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            engine.write(vec![put("k:~end")]).await.unwrap();
        }
    });
    // Started one by one while the writes go on, replaying from the start.
    for round in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        watchers.push(
            service
                .watch(request(round % 2 == 0, Some(start.clone())))
                .await
                .unwrap(),
        );
    }
    let reference = receive_until(&mut first, "k:~end").await;
    writer.await.unwrap();
    assert_eq!(reference.len(), 3000 + 3000 / 7 + 1 + 1);
    let unique: std::collections::HashSet<_> = reference.iter().collect();
    assert_eq!(unique.len(), reference.len(), "no duplicate");
    for (index, watcher) in watchers.iter_mut().enumerate() {
        let seen = receive_until(watcher, "k:~end").await;
        if index == 0 {
            // Started after `first`, before the writes: the same events.
            assert_eq!(seen, reference, "watcher {index}");
        } else {
            assert_eq!(seen, reference, "watcher {index} (replayed from the start)");
        }
    }
    // Every watcher joined its group: one without values, one with.
    let groups = service.groups();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while groups.members() < 1 + watchers.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} members",
            groups.members()
        );
        engine.write(vec![put("nudge")]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(groups.open(), 2);
    // Those that go away leave (seen at the group's next batch).
    watchers.truncate(2);
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while groups.members() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} members",
            groups.members()
        );
        engine.write(vec![put("k:later")]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let later = receive_until(&mut watchers[0], "k:later").await;
    assert_eq!(later.last().map(|(key, _)| key.as_str()), Some("k:later"));
}

/// The sequences of the batches queued in `shared`, waiting (with a
/// generous deadline) until there are `count`.
async fn queued(shared: &super::queue::Shared, count: usize) -> Vec<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sequences: Vec<u64> = shared.lock().items.iter().map(|b| b.sequence).collect();
        if sequences.len() >= count {
            return sequences;
        }
        assert!(std::time::Instant::now() < deadline, "queued {sequences:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The three ways a caught-up watcher meets its group, step by step: a
/// group not past the watcher's cursor takes it as it is and skips what it
/// holds; a group ahead queues its recent batches after the cursor first
/// (nothing missed, nothing twice, nothing in between); a group that
/// started after the cursor refuses it for now.
#[tokio::test]
async fn a_group_takes_over_at_the_watchers_cursor() {
    use super::convert::{Converter, Filter};
    use super::fanout::{Groups, Joined};
    use super::queue::Shared;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(&dir, RocksOptions::default());
    let groups = Arc::new(Groups::default());
    let converter = Converter {
        engine: Arc::clone(&engine),
        filter: Filter {
            prefix: "k:".into(),
        },
        include_values: false,
    };
    let buffer = WatchConfig::default().buffer_bytes;
    // A member stays while its handback receiver (the watcher's task) lives.
    let mut held = Vec::new();
    let mut join = |shared: &Arc<Shared>, cursor: u64| match groups
        .join(&converter, shared, cursor, buffer, 7)
        .unwrap()
    {
        Joined::Yes(handback) => {
            held.push(handback);
            true
        }
        Joined::No => false,
    };
    let before = engine.write(vec![put("other")]).await.unwrap().sequence;
    // The first member starts the group at the feed's position.
    let first = Arc::new(Shared::default());
    assert!(join(&first, before));
    let mut sequences = Vec::new();
    for key in ["k:1", "k:2", "k:3"] {
        sequences.push(engine.write(vec![put(key)]).await.unwrap().sequence);
        // A batch with nothing under the prefix: only the cursor moves.
        engine.write(vec![put("other")]).await.unwrap();
    }
    assert_eq!(queued(&first, 3).await, sequences);
    // Ahead of a watcher that holds k:1: k:2 and k:3 come from the group's
    // recent batches, then what follows.
    let second = Arc::new(Shared::default());
    assert!(join(&second, sequences[0]));
    assert_eq!(queued(&second, 2).await, sequences[1..]);
    // A watcher ahead of the group (it holds more than the group handed
    // out): the group skips what it holds.
    let ahead = engine.write(vec![put("k:4")]).await.unwrap().sequence;
    let third = Arc::new(Shared::default());
    third.lock().cursor = ahead;
    assert!(join(&third, ahead));
    sequences.push(ahead);
    let fifth = engine.write(vec![put("k:5")]).await.unwrap().sequence;
    sequences.push(fifth);
    assert_eq!(queued(&first, 5).await, sequences);
    assert_eq!(queued(&second, 4).await, sequences[1..]);
    assert_eq!(queued(&third, 1).await, vec![fifth]);
    assert_eq!(groups.members(), 3);
    // A group that started after a watcher's cursor (another prefix: a new
    // group, with no recent batches) cannot take it over yet.
    let other = Converter {
        filter: Filter {
            prefix: "j:".into(),
        },
        ..converter.clone()
    };
    let late = Arc::new(Shared::default());
    let joined = groups.join(&other, &late, before, buffer, 7).unwrap();
    assert!(matches!(joined, Joined::No));
    assert_eq!(groups.open(), 2);
    assert_eq!(held.len(), 3);
}
