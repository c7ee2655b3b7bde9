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
    let engine: Arc<dyn Engine> = Arc::new(
        RocksEngine::open(
            dir.path().join("data"),
            Namespaces::new(Vec::<String>::new()),
            RocksOptions {
                change_feed_max_bytes: 0,
                ..RocksOptions::default()
            },
            ManualClock::starting_now(),
        )
        .unwrap(),
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
