//! The engine test suite every [`Engine`] implementation must pass.
//!
//! A backend provides a [`Harness`] that opens the engine over one isolated
//! store (fresh the first time, the same store on later opens, so restarts can
//! be tested) with [`SUITE_NAMESPACES`] and a change feed that holds
//! [`SUITE_CHANGE_FEED_CAPACITY`] unread commits per subscriber, then calls
//! each case. The RocksDB
//! engine runs it from `tests/engine_conformance.rs`; a distributed engine runs
//! the same cases.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Change, ChangeEvent, ChangeSubscription, DeleteOp, Engine, EngineError, Precondition, PutOp,
    RecvError, ScanPage, ScanRequest, ValueKind, WriteOp, WriteOutcome,
};
use crate::clock::{ManualClock, SharedClock};

/// The namespaces a harness must configure.
pub const SUITE_NAMESPACES: &[&str] = &["user:", "user:admin:", "cache:"];

/// How many unread commits a harness's change feed holds per subscriber
/// before the subscriber lags.
pub const SUITE_CHANGE_FEED_CAPACITY: usize = 256;

/// Opens the engine under test.
#[async_trait]
pub trait Harness: Send {
    /// Opens the engine over this harness's store. Every engine opened before
    /// has been dropped.
    async fn open(&mut self, clock: SharedClock) -> Result<Arc<dyn Engine>, EngineError>;
}

const T0: u64 = 1_800_000_000_000;

/// A put with no metadata, expiry or precondition.
pub fn put(key: &str, value: &str) -> WriteOp {
    put_with(key, value, |_| {})
}

fn put_with(key: &str, value: &str, configure: impl FnOnce(&mut PutOp)) -> WriteOp {
    let mut op = PutOp {
        key: key.to_string(),
        kind: ValueKind::Text,
        value: value.as_bytes().to_vec(),
        metadata: None,
        expire_at_millis: None,
        schema_version: 1,
        precondition: Precondition::None,
    };
    configure(&mut op);
    WriteOp::Put(op)
}

fn delete(key: &str, precondition: Precondition) -> WriteOp {
    WriteOp::Delete(DeleteOp {
        key: key.to_string(),
        precondition,
    })
}

fn version_of(outcome: &WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Put { version } => *version,
        WriteOutcome::Delete { .. } => panic!("expected a put outcome, got {outcome:?}"),
    }
}

async fn keys(
    engine: &dyn Engine,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    engine
        .scan(ScanRequest {
            prefix: prefix.to_string(),
            start_after: start_after.map(String::from),
            limit,
            include_values: false,
            max_examined: 0,
        })
        .await
        .expect("scan")
        .entries
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// A put is readable with everything it stored; an absent key reads as none.
pub async fn put_then_get_round_trips<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let outcomes = engine
        .write(vec![put_with("user:1", "v", |op| {
            op.kind = ValueKind::Json;
            op.value = br#"{"a":1}"#.to_vec();
            op.metadata = Some(br#"{"m":[1,2]}"#.to_vec());
            op.expire_at_millis = Some(T0 + 60_000);
            op.schema_version = 2;
        })])
        .await
        .expect("write");
    let record = engine
        .get("user:1".into())
        .await
        .expect("get")
        .expect("found");
    assert_eq!(record.kind, ValueKind::Json);
    assert_eq!(record.value, br#"{"a":1}"#);
    assert_eq!(record.metadata.as_deref(), Some(&br#"{"m":[1,2]}"#[..]));
    assert_eq!(record.expire_at_millis, Some(T0 + 60_000));
    assert_eq!(record.schema_version, 2);
    assert_eq!(record.version, version_of(&outcomes[0]));
    assert!(engine.get("user:2".into()).await.expect("get").is_none());
}

/// Versions increase on every write of a key, never repeat after a delete, and
/// keep increasing across a restart.
pub async fn versions_increase_across_deletes_and_restarts<H: Harness>(mut harness: H) {
    let clock: SharedClock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.expect("open");
    let first = version_of(&engine.write(vec![put("k", "1")]).await.unwrap()[0]);
    let second = version_of(&engine.write(vec![put("k", "2")]).await.unwrap()[0]);
    assert!(second > first);
    engine
        .write(vec![delete("k", Precondition::None)])
        .await
        .unwrap();
    let third = version_of(&engine.write(vec![put("k", "3")]).await.unwrap()[0]);
    assert!(third > second, "a recreated key must not reuse a version");
    drop(engine);
    let engine = harness.open(clock).await.expect("reopen");
    assert_eq!(engine.get("k".into()).await.unwrap().unwrap().value, b"3");
    let fourth = version_of(&engine.write(vec![put("other", "x")]).await.unwrap()[0]);
    assert!(fourth > third, "versions must survive a restart");
}

/// `IfVersion` and `IfAbsent` gate writes and deletes; a failure reports the
/// current version and writes nothing.
pub async fn preconditions_gate_writes<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let v1 = version_of(&engine.write(vec![put("k", "1")]).await.unwrap()[0]);

    let error = engine
        .write(vec![put_with("k", "2", |op| {
            op.precondition = Precondition::IfAbsent
        })])
        .await
        .unwrap_err();
    match error {
        EngineError::PreconditionFailed {
            index,
            current_version,
            ..
        } => {
            assert_eq!(index, 0);
            assert_eq!(current_version, Some(v1));
        }
        other => panic!("expected a precondition failure, got {other:?}"),
    }

    let stale = engine
        .write(vec![put_with("k", "2", |op| {
            op.precondition = Precondition::IfVersion(v1 + 1000)
        })])
        .await;
    assert!(matches!(stale, Err(EngineError::PreconditionFailed { .. })));
    assert_eq!(engine.get("k".into()).await.unwrap().unwrap().value, b"1");

    let v2 = version_of(
        &engine
            .write(vec![put_with("k", "2", |op| {
                op.precondition = Precondition::IfVersion(v1)
            })])
            .await
            .unwrap()[0],
    );
    assert!(v2 > v1);

    let wrong_delete = engine
        .write(vec![delete("k", Precondition::IfVersion(v1))])
        .await;
    assert!(matches!(
        wrong_delete,
        Err(EngineError::PreconditionFailed { .. })
    ));
    let deleted = engine
        .write(vec![delete("k", Precondition::IfVersion(v2))])
        .await
        .unwrap();
    assert_eq!(
        deleted.outcomes,
        vec![WriteOutcome::Delete { existed: true }]
    );
    let again = engine
        .write(vec![delete("k", Precondition::None)])
        .await
        .unwrap();
    assert_eq!(
        again.outcomes,
        vec![WriteOutcome::Delete { existed: false }]
    );
    engine
        .write(vec![put_with("k", "3", |op| {
            op.precondition = Precondition::IfAbsent
        })])
        .await
        .expect("if_absent on a deleted key");
}

/// A batch whose later mutation fails writes none of its earlier ones; later
/// mutations see earlier ones of the same batch.
pub async fn batches_are_atomic_and_ordered<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let result = engine
        .write(vec![
            put("user:a", "1"),
            put("cache:b", "1"),
            put_with("k", "x", |op| {
                op.precondition = Precondition::IfVersion(12345)
            }),
        ])
        .await;
    match result {
        Err(EngineError::PreconditionFailed { index, .. }) => assert_eq!(index, 2),
        other => panic!("expected a precondition failure, got {other:?}"),
    }
    assert!(engine.get("user:a".into()).await.unwrap().is_none());
    assert!(engine.get("cache:b".into()).await.unwrap().is_none());

    let outcomes = engine
        .write(vec![
            put_with("k", "1", |op| op.precondition = Precondition::IfAbsent),
            put("k", "2"),
            delete("k", Precondition::None),
            put_with("k", "3", |op| op.precondition = Precondition::IfAbsent),
        ])
        .await
        .expect("batch");
    let first = version_of(&outcomes[0]);
    let second = version_of(&outcomes[1]);
    assert!(second > first);
    assert_eq!(outcomes[2], WriteOutcome::Delete { existed: true });
    let last = version_of(&outcomes[3]);
    let record = engine.get("k".into()).await.unwrap().unwrap();
    assert_eq!((record.value.as_slice(), record.version), (&b"3"[..], last));
}

/// Expired records vanish from reads, scans and preconditions the moment the
/// clock passes their expiry.
pub async fn expiry_hides_records<H: Harness>(mut harness: H) {
    let clock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.expect("open");
    engine
        .write(vec![
            put_with("user:short", "s", |op| {
                op.expire_at_millis = Some(T0 + 1_000)
            }),
            put_with("user:long", "l", |op| {
                op.expire_at_millis = Some(T0 + 10_000)
            }),
            put("user:forever", "f"),
        ])
        .await
        .unwrap();
    clock.advance(Duration::from_millis(999));
    assert!(engine.get("user:short".into()).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert!(engine.get("user:short".into()).await.unwrap().is_none());
    assert_eq!(
        keys(engine.as_ref(), "user:", None, 10).await,
        vec!["user:forever", "user:long"]
    );
    engine
        .write(vec![put_with("user:short", "again", |op| {
            op.precondition = Precondition::IfAbsent
        })])
        .await
        .expect("an expired key counts as absent");
    let deleted = engine
        .write(vec![delete("user:long", Precondition::None)])
        .await
        .unwrap();
    assert_eq!(
        deleted.outcomes,
        vec![WriteOutcome::Delete { existed: true }]
    );
    clock.advance(Duration::from_secs(3600));
    let results = engine
        .get_many(vec!["user:short".into(), "user:forever".into()])
        .await
        .unwrap();
    assert!(results[0].is_some(), "the rewritten key has no expiry");
    assert!(results[1].is_some());
}

/// Scans merge namespaces in byte order, respect prefix bounds and resume
/// strictly after a key.
pub async fn scans_merge_namespaces_in_byte_order<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let all = [
        "a",
        "cache:x",
        "u",
        "user:1",
        "user:2",
        "user:admin:1",
        "user:admin:2",
        "user;",
        "user",
        "v",
        "\u{00e9}",
        "!",
        ",",
    ];
    engine
        .write(all.iter().map(|key| put(key, "v")).collect())
        .await
        .unwrap();
    let mut expected: Vec<&str> = all.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(keys(engine.as_ref(), "", None, 100).await, expected);
    assert_eq!(
        keys(engine.as_ref(), "u", None, 100).await,
        vec![
            "u",
            "user",
            "user:1",
            "user:2",
            "user:admin:1",
            "user:admin:2",
            "user;"
        ]
    );
    assert_eq!(
        keys(engine.as_ref(), "user:", None, 100).await,
        vec!["user:1", "user:2", "user:admin:1", "user:admin:2"]
    );
    assert_eq!(
        keys(engine.as_ref(), "user:a", None, 100).await,
        vec!["user:admin:1", "user:admin:2"]
    );
    assert_eq!(
        keys(engine.as_ref(), "user:", Some("user:2"), 2).await,
        vec!["user:admin:1", "user:admin:2"]
    );
    assert_eq!(
        keys(engine.as_ref(), "", Some("user;"), 100).await,
        vec!["v", "\u{00e9}"]
    );
    assert_eq!(keys(engine.as_ref(), "", None, 2).await, vec!["!", ","]);
    assert!(keys(engine.as_ref(), "zzz", None, 10).await.is_empty());
    let with_values = engine
        .scan(ScanRequest {
            prefix: "user:1".into(),
            start_after: None,
            limit: 1,
            include_values: true,
            max_examined: 0,
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(with_values[0].1.value, b"v");
}

/// Concurrent read-modify-write loops with `IfVersion` never lose an update,
/// and every version handed out is unique, while other writers run alongside.
pub async fn concurrent_compare_and_set_loses_no_update<H: Harness>(mut harness: H) {
    const WRITERS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    engine.write(vec![put("counter", "0")]).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let engine = Arc::clone(&engine);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for increment in 0..INCREMENTS {
                // Unconditional writes of other keys share groups with the CAS loop.
                let blind = engine
                    .write(vec![put(&format!("noise:{writer}:{increment}"), "x")])
                    .await
                    .expect("blind put");
                versions.push(version_of(&blind[0]));
                loop {
                    let current = engine
                        .get("counter".into())
                        .await
                        .unwrap()
                        .expect("counter");
                    let value: u64 = String::from_utf8(current.value).unwrap().parse().unwrap();
                    let attempt = engine
                        .write(vec![put_with("counter", &(value + 1).to_string(), |op| {
                            op.precondition = Precondition::IfVersion(current.version)
                        })])
                        .await;
                    match attempt {
                        Ok(outcomes) => {
                            versions.push(version_of(&outcomes[0]));
                            break;
                        }
                        Err(EngineError::PreconditionFailed { .. }) => continue,
                        Err(other) => panic!("unexpected failure: {other:?}"),
                    }
                }
            }
            versions
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.expect("writer task"));
    }
    let counter = engine.get("counter".into()).await.unwrap().unwrap();
    assert_eq!(
        counter.value,
        (WRITERS * INCREMENTS).to_string().into_bytes()
    );
    let total = versions.len();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), total, "every write gets its own version");
}

/// Values of every size read back whole through gets and scans, and
/// survive being replaced by values of another size and deleted.
pub async fn large_values_round_trip<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let big: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let with_big = |key: &str, value: &[u8]| {
        let value = value.to_vec();
        put_with(key, "", move |op| {
            op.kind = ValueKind::Bytes;
            op.value = value;
            op.metadata = Some(br#"{"big":true}"#.to_vec());
        })
    };
    engine
        .write(vec![
            with_big("user:big", &big),
            with_big("cache:big", &big),
        ])
        .await
        .unwrap();
    let record = engine.get("user:big".into()).await.unwrap().unwrap();
    assert_eq!(record.value, big);
    assert_eq!(record.metadata.as_deref(), Some(&br#"{"big":true}"#[..]));
    let listed = scan(engine.as_ref(), "user:", 10, false, 0).await;
    assert_eq!(listed.entries.len(), 1);
    assert!(
        listed.entries[0].1.value.is_empty(),
        "a listing without values"
    );
    assert_eq!(listed.entries[0].1.metadata, record.metadata);
    let with_values = scan(engine.as_ref(), "user:", 10, true, 0).await;
    assert_eq!(with_values.entries[0].1.value, big);

    // Big to small, small to big, big to a different big, then deleted.
    engine.write(vec![put("user:big", "small")]).await.unwrap();
    let record = engine.get("user:big".into()).await.unwrap().unwrap();
    assert_eq!(record.value, b"small");
    let bigger: Vec<u8> = big.iter().rev().copied().collect();
    engine
        .write(vec![with_big("user:big", &bigger)])
        .await
        .unwrap();
    let records = engine
        .get_many(vec!["user:big".into(), "cache:big".into()])
        .await
        .unwrap();
    assert_eq!(records[0].as_ref().unwrap().value, bigger);
    assert_eq!(records[1].as_ref().unwrap().value, big);
    engine
        .write(vec![delete("user:big", Precondition::None)])
        .await
        .unwrap();
    assert!(engine.get("user:big".into()).await.unwrap().is_none());
    engine.write(vec![put("user:big", "again")]).await.unwrap();
    let record = engine.get("user:big".into()).await.unwrap().unwrap();
    assert_eq!(record.value, b"again");
}

/// `get_many_within` refuses a read whose values and metadata exceed the
/// budget, counting a key asked for twice twice, and allows one that fits.
pub async fn reads_within_a_byte_budget<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let value = "x".repeat(3000);
    engine
        .write(vec![
            put_with("user:1", &value, |op| op.metadata = Some(b"[1]".to_vec())),
            put("user:small", "s"),
        ])
        .await
        .unwrap();
    let keys = |n: usize| vec!["user:1".to_string(); n];
    let fits = engine.get_many_within(&keys(3), 3 * 3003).await.unwrap();
    assert_eq!(fits.len(), 3);
    assert!(fits
        .iter()
        .all(|record| record.as_ref().unwrap().value.len() == 3000));
    match engine.get_many_within(&keys(3), 3 * 3003 - 1).await {
        Err(EngineError::TooLarge { limit, actual }) => {
            assert_eq!((limit, actual), (3 * 3003 - 1, 3 * 3003));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mixed = engine
        .get_many_within(&["user:small".into(), "user:none".into()], 1)
        .await
        .unwrap();
    assert!(mixed[0].is_some() && mixed[1].is_none());
}

/// A scan examines at most `max_examined` stored records: a run of expired
/// ones ends it early with `resume_after`, and resuming finds what follows.
pub async fn scans_bound_the_records_they_examine<H: Harness>(mut harness: H) {
    let clock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.expect("open");
    let mut ops: Vec<WriteOp> = (0..10)
        .map(|i| {
            put_with(&format!("user:{i:02}"), "dead", |op| {
                op.expire_at_millis = Some(T0 + 1_000)
            })
        })
        .collect();
    ops.push(put("user:99", "live"));
    engine.write(ops).await.unwrap();
    clock.advance(Duration::from_secs(2));

    let mut after: Option<String> = None;
    let mut found = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 10, "the scan does not make progress");
        let page = engine
            .scan(ScanRequest {
                prefix: "user:".into(),
                start_after: after.clone(),
                limit: 5,
                include_values: false,
                max_examined: 4,
            })
            .await
            .unwrap();
        found.extend(page.entries.into_iter().map(|(key, _)| key));
        match page.resume_after {
            Some(key) => {
                assert!(after.as_ref().is_none_or(|after| key > *after), "progress");
                after = Some(key);
            }
            None => break,
        }
    }
    assert_eq!(found, vec!["user:99"]);
    assert_eq!(calls, 3, "11 records examined 4 at a time");
    let unbounded = scan(engine.as_ref(), "user:", 5, false, 0).await;
    assert_eq!(unbounded.entries.len(), 1);
    assert_eq!(unbounded.resume_after, None);
}

async fn scan(
    engine: &dyn Engine,
    prefix: &str,
    limit: usize,
    include_values: bool,
    max_examined: usize,
) -> ScanPage {
    engine
        .scan(ScanRequest {
            prefix: prefix.to_string(),
            start_after: None,
            limit,
            include_values,
            max_examined,
        })
        .await
        .expect("scan")
}

async fn next_event(changes: &mut ChangeSubscription) -> Result<ChangeEvent, RecvError> {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a change event within 10 s")
}

/// The change feed publishes every committed mutation, with its key, version
/// or deletion, in commit order and with consecutive sequence numbers; a
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
            .map(|event| (&*event.key, event.change))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "user:1",
                    Change::Put {
                        version: v1,
                        expire_at_millis: None
                    }
                ),
                (
                    "cache:x",
                    Change::Put {
                        version: v2,
                        expire_at_millis: Some(T0 + 5_000)
                    }
                ),
                ("user:1", Change::Delete),
                ("never-there", Change::Delete),
            ]
        );
        for pair in events.windows(2) {
            assert_eq!(pair[1].sequence, pair[0].sequence + 1);
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
            assert_eq!(event.sequence, previous + 1);
        }
        previous = Some(event.sequence);
    }
}

/// The engine's clock never goes back: once a record has expired it stays
/// hidden when the injected clock steps back, even across a restart.
pub async fn clock_never_goes_back<H: Harness>(mut harness: H) {
    let clock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.expect("open");
    engine
        .write(vec![
            put_with("user:ttl", "v", |op| {
                op.expire_at_millis = Some(T0 + 10_000)
            }),
            put("user:kept", "v"),
        ])
        .await
        .unwrap();
    clock.set_millis(T0 + 10_000);
    assert!(engine.get("user:ttl".into()).await.unwrap().is_none());
    assert!(engine.now_millis() >= T0 + 10_000);

    clock.set_millis(T0);
    assert!(
        engine.get("user:ttl".into()).await.unwrap().is_none(),
        "a clock stepped back must not bring an expired record back"
    );
    assert!(engine.now_millis() >= T0 + 10_000);
    drop(engine);

    let engine = harness.open(clock.clone()).await.expect("reopen");
    assert!(
        engine.get("user:ttl".into()).await.unwrap().is_none(),
        "nor across a restart"
    );
    assert_eq!(
        keys(engine.as_ref(), "user:", None, 10).await,
        vec!["user:kept"]
    );
    assert!(engine.now_millis() >= T0 + 10_000);
    engine
        .write(vec![put_with("user:ttl", "again", |op| {
            op.precondition = Precondition::IfAbsent
        })])
        .await
        .expect("the expired key counts as absent");

    clock.set_millis(T0 + 20_000);
    assert_eq!(
        engine.now_millis(),
        T0 + 20_000,
        "forward moves are followed"
    );
}

/// A namespace is counted exactly and cleared in one commit: its keys (large
/// values included) are gone, a nested namespace and the others keep theirs,
/// one [`Change::NamespaceCleared`] event carries the prefix, later writes
/// work and versions keep increasing. Named state survives a restart and is
/// invisible to reads and scans.
pub async fn namespaces_are_counted_and_cleared<H: Harness>(mut harness: H) {
    let clock: SharedClock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.unwrap();
    let big = "x".repeat(4096);
    let outcomes = engine
        .write(vec![
            put("user:1", "a"),
            put("user:2", &big),
            put_with("user:gone", "e", |op| op.expire_at_millis = Some(T0 + 10)),
            put("user:admin:1", "b"),
            put("cache:1", "c"),
            put("plain", "d"),
        ])
        .await
        .unwrap();
    let last_version = version_of(&outcomes[5]);
    assert_eq!(engine.count_namespace("user:").await.unwrap(), 3);
    assert_eq!(engine.count_namespace("").await.unwrap(), 1);
    assert!(matches!(
        engine.count_namespace("nope:").await,
        Err(EngineError::Layout(_))
    ));
    let stats = engine.namespace_stats().await.unwrap();
    let prefixes: Vec<&str> = stats.iter().map(|stats| stats.prefix.as_str()).collect();
    assert_eq!(prefixes, vec!["", "cache:", "user:", "user:admin:"]);

    let mut changes = engine.subscribe();
    engine.clear_namespace("user:").await.unwrap();
    let event = next_event(&mut changes).await.unwrap();
    assert_eq!(
        (&*event.key, event.change),
        ("user:", Change::NamespaceCleared)
    );
    assert_eq!(engine.count_namespace("user:").await.unwrap(), 0);
    let read = engine
        .get_many(vec![
            "user:1".into(),
            "user:2".into(),
            "user:admin:1".into(),
            "cache:1".into(),
            "plain".into(),
        ])
        .await
        .unwrap();
    let present: Vec<bool> = read.iter().map(Option::is_some).collect();
    assert_eq!(present, vec![false, false, true, true, true]);
    assert_eq!(
        keys(&*engine, "user:", None, 10).await,
        vec!["user:admin:1"]
    );
    let again = engine.write(vec![put("user:1", "new")]).await.unwrap();
    assert!(version_of(&again[0]) > last_version);
    let next = next_event(&mut changes).await.unwrap();
    assert_eq!(next.sequence, event.sequence + 1);

    assert_eq!(engine.get_state("checkpoint").await.unwrap(), None);
    engine
        .put_state("checkpoint", Some(b"user:5".to_vec()))
        .await
        .unwrap();
    assert!(keys(&*engine, "", None, 100)
        .await
        .iter()
        .all(|key| !key.contains("checkpoint")));
    drop(changes);
    drop(engine);
    let engine = harness.open(clock).await.unwrap();
    assert_eq!(
        engine.get_state("checkpoint").await.unwrap(),
        Some(b"user:5".to_vec())
    );
    engine.put_state("checkpoint", None).await.unwrap();
    assert_eq!(engine.get_state("checkpoint").await.unwrap(), None);
}

/// Every case, for backends that want one call.
pub async fn run_all<H: Harness>(mut make: impl FnMut() -> H) {
    put_then_get_round_trips(make()).await;
    versions_increase_across_deletes_and_restarts(make()).await;
    preconditions_gate_writes(make()).await;
    batches_are_atomic_and_ordered(make()).await;
    expiry_hides_records(make()).await;
    scans_merge_namespaces_in_byte_order(make()).await;
    concurrent_compare_and_set_loses_no_update(make()).await;
    large_values_round_trip(make()).await;
    reads_within_a_byte_budget(make()).await;
    scans_bound_the_records_they_examine(make()).await;
    change_feed_publishes_commits_in_order(make()).await;
    subscribe_then_read_misses_no_write(make()).await;
    lagging_subscriber_learns_how_much_it_missed(make()).await;
    clock_never_goes_back(make()).await;
    namespaces_are_counted_and_cleared(make()).await;
}
