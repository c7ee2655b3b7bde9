//! Cases of the engine's own state: a clock that never goes back,
//! namespaces counted and cleared, and named state.

use super::*;
use crate::clock::ManualClock;
use crate::engine::Change;

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
        (&*event.key, event.change.clone()),
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
