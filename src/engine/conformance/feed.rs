//! Cases of the change feed: what it publishes and in which order, commit
//! sequences, `catch_up_to`, subscribing before reading, and lags.

use std::time::Instant;

use super::*;
use crate::clock::ManualClock;
use crate::engine::{CatchUpError, Change, PutPayload};

/// The payload of a text put without metadata.
fn text_payload(value: &str) -> Arc<PutPayload> {
    Arc::new(PutPayload {
        kind: ValueKind::Text,
        value: value.as_bytes().to_vec(),
        metadata: None,
    })
}

/// The change feed publishes every committed mutation, with its key, version
/// or deletion, in commit order and with increasing sequences; a
/// batch that fails a precondition publishes nothing; each subscriber gets
/// every event.
pub async fn change_feed_publishes_commits_in_order<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut first = engine.subscribe();
    let mut second = engine.subscribe();
    let v1 = version_of(&engine.write(vec![put("user:1", "a")]).await.unwrap()[0]);
    let failed = engine
        .write(vec![
            put("user:2", "b"),
            put_with("user:1", "c", |op| op.precondition = Precondition::IfAbsent),
        ])
        .await;
    assert!(matches!(
        failed,
        Err(EngineError::PreconditionFailed { .. })
    ));
    let outcomes = engine
        .write(vec![
            put_with("cache:x", "d", |op| op.expire_at_millis = Some(T0 + 5_000)),
            delete("user:1", Precondition::IfVersion(v1)),
            delete("never-there", Precondition::None),
        ])
        .await
        .unwrap();
    let v2 = version_of(&outcomes[0]);

    for changes in [&mut first, &mut second] {
        let events = [
            next_event(changes).await.expect("event"),
            next_event(changes).await.expect("event"),
            next_event(changes).await.expect("event"),
            next_event(changes).await.expect("event"),
        ];
        let seen: Vec<(&str, Change)> = events
            .iter()
            .map(|event| (&*event.key, event.change.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "user:1",
                    Change::Put {
                        version: v1,
                        expire_at_millis: None,
                        schema_version: 1,
                        payload: Some(text_payload("a")),
                    }
                ),
                (
                    "cache:x",
                    Change::Put {
                        version: v2,
                        expire_at_millis: Some(T0 + 5_000),
                        schema_version: 1,
                        payload: Some(text_payload("d")),
                    }
                ),
                ("user:1", Change::Delete),
                ("never-there", Change::Delete),
            ]
        );
        // Strictly increasing from commit to commit; within the second
        // commit (events 1 to 3) they may also be shared.
        assert!(events[1].sequence > events[0].sequence);
        for pair in events[1..].windows(2) {
            assert!(pair[1].sequence >= pair[0].sequence);
        }
        let nothing = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
        assert!(nothing.is_err(), "no further event: {nothing:?}");
    }

    // A subscription sees only what commits after it returns.
    let mut late = engine.subscribe();
    engine.write(vec![put("user:3", "e")]).await.unwrap();
    assert_eq!(&*next_event(&mut late).await.unwrap().key, "user:3");
}

/// Subscribing and then reading never misses a write: whatever version the
/// read saw, every later write of the key arrives on the subscription, while
/// a writer keeps writing concurrently.
pub async fn subscribe_then_read_misses_no_write<H: Harness>(mut harness: H) {
    const WRITES: usize = 100;
    const SUBSCRIBERS: usize = 10;
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let writer_engine = Arc::clone(&engine);
    let writer = tokio::spawn(async move {
        let mut versions = Vec::with_capacity(WRITES);
        for n in 0..WRITES {
            let outcomes = writer_engine
                .write(vec![put("feed:k", &n.to_string())])
                .await
                .expect("write");
            versions.push(version_of(&outcomes[0]));
            tokio::task::yield_now().await;
        }
        versions
    });
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let changes = engine.subscribe();
        let seen = engine
            .get("feed:k".into())
            .await
            .expect("get")
            .map_or(0, |record| record.version);
        subscribers.push((changes, seen));
        tokio::task::yield_now().await;
    }
    let written = writer.await.expect("writer task");
    let last = *written.last().expect("writes");
    for (mut changes, seen) in subscribers {
        let expected: Vec<u64> = written.iter().copied().filter(|v| *v > seen).collect();
        let mut received = Vec::new();
        while received.last().is_none_or(|version| *version < last) {
            let event = next_event(&mut changes).await.expect("no lag");
            if let Change::Put { version, .. } = event.change {
                // Events of writes the read already saw may arrive too.
                if version > seen {
                    received.push(version);
                }
            }
        }
        assert_eq!(received, expected, "read saw version {seen}");
    }
}

/// A subscriber that falls more than the feed's capacity behind is told how
/// many events it missed, then continues with the newest ones in order.
pub async fn lagging_subscriber_learns_how_much_it_missed<H: Harness>(mut harness: H) {
    let writes = 3 * SUITE_CHANGE_FEED_CAPACITY;
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut changes = engine.subscribe();
    for n in 0..writes {
        engine
            .write(vec![put(&format!("lag:{n:04}"), "v")])
            .await
            .expect("write");
    }
    let missed = match next_event(&mut changes).await {
        Err(RecvError::Lagged { missed }) => missed as usize,
        other => panic!("expected a lag, got {other:?}"),
    };
    assert!(missed > 0 && missed < writes, "missed {missed} of {writes}");
    let mut previous: Option<u64> = None;
    for n in missed..writes {
        let event = next_event(&mut changes).await.expect("event after the lag");
        assert_eq!(&*event.key, format!("lag:{n:04}").as_str());
        if let Some(previous) = previous {
            assert!(
                event.sequence > previous,
                "one write per commit: increasing"
            );
        }
        previous = Some(event.sequence);
    }
}

/// `write` returns its commit's sequence: the commit's events carry
/// sequences above every earlier commit's and at most it, its last event
/// exactly it; a later commit's events are above it. The engine's
/// acknowledged sequence covers every returned one.
pub async fn write_returns_its_commit_sequence<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut changes = engine.subscribe();
    let first = engine.write(vec![put("user:1", "a")]).await.unwrap();
    assert!(engine.acknowledged_sequence() >= first.sequence);
    let second = engine
        .write(vec![
            put("user:2", "b"),
            delete("user:1", Precondition::None),
            put("cache:3", "c"),
        ])
        .await
        .unwrap();
    assert!(second.sequence > first.sequence);
    assert!(engine.acknowledged_sequence() >= second.sequence);

    let event = next_event(&mut changes).await.unwrap();
    assert_eq!((&*event.key, event.sequence), ("user:1", first.sequence));
    let events = [
        next_event(&mut changes).await.unwrap(),
        next_event(&mut changes).await.unwrap(),
        next_event(&mut changes).await.unwrap(),
    ];
    let keys: Vec<&str> = events.iter().map(|event| &*event.key).collect();
    assert_eq!(keys, ["user:2", "user:1", "cache:3"]);
    for event in &events {
        assert!(
            event.sequence > first.sequence && event.sequence <= second.sequence,
            "{event:?} is not within ({}, {}]",
            first.sequence,
            second.sequence
        );
    }
    assert_eq!(
        events[2].sequence, second.sequence,
        "the last event carries it"
    );
    for pair in events.windows(2) {
        assert!(pair[1].sequence >= pair[0].sequence);
    }

    // A write of nothing commits nothing and waits for nothing new.
    let nothing = engine.write(Vec::new()).await.unwrap();
    assert!(nothing.outcomes.is_empty());
    assert!(nothing.sequence <= engine.acknowledged_sequence());
}

/// Sequences strictly increase in commit order across the store: writes
/// from concurrent tasks get distinct sequences, each task's increase, the
/// feed delivers them in increasing order, and a restart continues above.
pub async fn sequences_strictly_increase<H: Harness>(mut harness: H) {
    const TASKS: usize = 4;
    const WRITES: usize = 25;
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut changes = engine.subscribe();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let engine = Arc::clone(&engine);
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::with_capacity(WRITES);
            for n in 0..WRITES {
                let key = format!("user:{task}:{n}");
                let receipt = engine.write(vec![put(&key, "v")]).await.expect("write");
                sequences.push(receipt.sequence);
            }
            sequences
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let sequences = task.await.expect("writer task");
        assert!(
            sequences.windows(2).all(|pair| pair[1] > pair[0]),
            "one task's sequences increase: {sequences:?}"
        );
        all.extend(sequences);
    }
    let mut delivered = Vec::with_capacity(all.len());
    for _ in 0..all.len() {
        delivered.push(next_event(&mut changes).await.expect("no lag").sequence);
    }
    assert!(
        delivered.windows(2).all(|pair| pair[1] > pair[0]),
        "the feed delivers one-event commits in increasing order: {delivered:?}"
    );
    all.sort_unstable();
    assert_eq!(all, delivered, "every write's sequence is its event's");

    let last = *delivered.last().expect("events");
    drop(changes);
    drop(engine);
    let engine = harness.open(ManualClock::new(T0)).await.expect("reopen");
    let after = engine.write(vec![put("user:after", "v")]).await.unwrap();
    assert!(
        after.sequence > last,
        "{} after a restart, {last} before",
        after.sequence
    );
}

/// `catch_up_to` a returned sequence returns, and the commit's events are
/// then there for `try_recv` without waiting; a sequence never written
/// fails at the deadline with its own error; a closed feed fails with
/// `Closed`.
pub async fn catch_up_to_waits_for_the_feed<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut changes = engine.subscribe();
    let deadline = || Instant::now() + Duration::from_secs(10);
    changes
        .catch_up_to(engine.acknowledged_sequence(), deadline())
        .await
        .expect("caught up with what was acknowledged before");

    let receipt = engine
        .write(vec![put("user:1", "a"), put("cache:2", "b")])
        .await
        .unwrap();
    changes
        .catch_up_to(receipt.sequence, deadline())
        .await
        .expect("caught up with the write");
    let held: Vec<String> = [changes.try_recv(), changes.try_recv()]
        .into_iter()
        .map(|event| event.expect("no lag").expect("held").key.to_string())
        .collect();
    assert_eq!(held, ["user:1", "cache:2"]);

    // A commit made by another task, waited for with its receipt.
    let writer = Arc::clone(&engine);
    let third = tokio::spawn(async move { writer.write(vec![put("user:3", "c")]).await })
        .await
        .unwrap()
        .unwrap();
    changes
        .catch_up_to(third.sequence, deadline())
        .await
        .unwrap();
    assert_eq!(&*changes.try_recv().unwrap().expect("held").key, "user:3");

    let soon = Instant::now() + Duration::from_millis(50);
    match changes.catch_up_to(u64::MAX, soon).await {
        Err(CatchUpError::DeadlineExceeded { wanted, .. }) => assert_eq!(wanted, u64::MAX),
        other => panic!("expected the deadline's error, got {other:?}"),
    }

    let waiting = tokio::spawn(async move { changes.catch_up_to(u64::MAX, deadline()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(engine);
    let closed = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends when the engine closes")
        .unwrap();
    assert!(
        matches!(closed, Err(CatchUpError::Closed { .. })),
        "{closed:?}"
    );
}
