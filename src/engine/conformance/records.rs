//! Cases of records: reads, writes, versions (per key and store-wide),
//! preconditions, atomic batches, expiry, large values, read budgets and
//! strong reads.

use super::*;
use crate::clock::ManualClock;

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

/// Versions are ordered store-wide: a version assigned by a commit is
/// greater than every version assigned by any earlier commit, whatever the
/// keys and namespaces, across concurrent writers (ordered by their commit
/// sequences) and across a restart.
pub async fn versions_are_ordered_store_wide<H: Harness>(mut harness: H) {
    const TASKS: usize = 4;
    const WRITES: usize = 20;
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let engine = Arc::clone(&engine);
        tasks.push(tokio::spawn(async move {
            let mut commits = Vec::with_capacity(WRITES);
            for n in 0..WRITES {
                let prefix = ["user:", "user:admin:", "cache:", "plain:"][(task + n) % 4];
                let receipt = engine
                    .write(vec![
                        put(&format!("{prefix}{task}:{n}:a"), "v"),
                        put(&format!("{prefix}{task}:{n}:b"), "v"),
                    ])
                    .await
                    .expect("write");
                let versions: Vec<u64> = receipt.outcomes.iter().map(version_of).collect();
                commits.push((receipt.sequence, versions));
            }
            commits
        }));
    }
    let mut commits = Vec::new();
    for task in tasks {
        commits.extend(task.await.expect("writer task"));
    }
    commits.sort_unstable();
    for pair in commits.windows(2) {
        let earlier_max = pair[0].1.iter().max().expect("versions");
        let later_min = pair[1].1.iter().min().expect("versions");
        assert!(
            later_min > earlier_max,
            "commit {:?} has a version not above commit {:?}",
            pair[1],
            pair[0]
        );
    }
    let highest = commits
        .iter()
        .flat_map(|(_, versions)| versions)
        .max()
        .copied();
    drop(engine);
    let engine = harness.open(ManualClock::new(T0)).await.expect("reopen");
    let after = engine.write(vec![put("cache:after", "v")]).await.unwrap();
    assert!(Some(version_of(&after.outcomes[0])) > highest);
}

/// Reads are strong: a get, a multi-get or a scan that starts after a write
/// returned sees that write (or something newer), while other writers run.
/// Compare-and-set loops (session touch, lazy migration) rely on this.
pub async fn a_read_after_a_write_sees_it<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let noise = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            for n in 0..200 {
                let key = format!("cache:noise:{}", n % 7);
                engine.write(vec![put(&key, "x")]).await.expect("noise");
            }
        })
    };
    for n in 0..50 {
        let key = format!("user:rw:{}", n % 3);
        let receipt = engine.write(vec![put(&key, &n.to_string())]).await.unwrap();
        let written = version_of(&receipt.outcomes[0]);
        let got = engine
            .get(key.clone())
            .await
            .unwrap()
            .expect("the write is seen");
        assert!(got.version >= written && got.value == n.to_string().into_bytes());
        let many = engine.get_many(vec![key.clone()]).await.unwrap();
        assert_eq!(
            many[0].as_ref().map(|record| record.version),
            Some(got.version)
        );
        let scanned = engine
            .scan(ScanRequest {
                prefix: key.clone(),
                start_after: None,
                limit: 1,
                include_values: false,
                max_examined: 0,
            })
            .await
            .unwrap();
        assert_eq!(scanned.entries[0].1.version, got.version);
        let deleted = engine
            .write(vec![delete(&key, Precondition::IfVersion(written))])
            .await
            .unwrap();
        assert_eq!(
            deleted.outcomes,
            vec![WriteOutcome::Delete { existed: true }]
        );
        assert_eq!(engine.get(key).await.unwrap(), None, "the delete is seen");
    }
    noise.await.unwrap();
}
