//! The change feed later tiers (the cache's in-memory L1) use to invalidate
//! entries when KV writes land.

use std::sync::Arc;

use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::{Namespaces, Precondition, RocksEngine, RocksOptions};
use tierkv::kv::{DeleteCommand, KvService, Mutation, PutCommand, Value};

fn put(key: &str) -> PutCommand {
    PutCommand {
        key: key.to_string(),
        value: Some(Value::Text("v".into())),
        ..Default::default()
    }
}

/// Every successful write publishes the keys it changed; a rejected one publishes nothing.
#[tokio::test]
async fn successful_writes_publish_changed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::starting_now();
    let engine = RocksEngine::open(
        dir.path(),
        Namespaces::new(Namespaces::default_prefixes()),
        RocksOptions::default(),
        clock.clone(),
    )
    .unwrap();
    let service = KvService::new(Arc::new(engine), clock);
    let mut changes = service.subscribe_changes();

    service.put(put("cache:a")).await.unwrap();
    assert_eq!(&*changes.recv().await.unwrap(), ["cache:a".to_string()]);

    let mut guarded = put("cache:a");
    guarded.precondition = Precondition::IfAbsent;
    assert!(service.put(guarded).await.is_err());

    service
        .batch_write(vec![
            Mutation::Put(put("cache:b")),
            Mutation::Delete(DeleteCommand {
                key: "cache:a".into(),
                if_version: None,
            }),
        ])
        .await
        .unwrap();
    assert_eq!(
        &*changes.recv().await.unwrap(),
        ["cache:b".to_string(), "cache:a".to_string()],
        "the failed put published nothing"
    );
    assert!(changes.try_recv().is_err());
}
