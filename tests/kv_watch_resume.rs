//! Resuming `KvService.Watch` from the persisted history, through the real
//! server over TCP (and the real binary for kill -9): exactly once across
//! disconnects and crashes, OUT_OF_RANGE with the oldest position after
//! trimming and the List-then-Watch recovery, List-then-Watch under
//! concurrent writes, superseded values on replay, and a slow consumer
//! resuming from the position its error carried.

mod common;

// The etcd twin (`<this file>_etcd.rs`) declares its own `rocksdb_only`.
#[allow(unused_imports)]
use common::rocksdb_run::rocksdb_only;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::process::*;
use common::*;
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

/// Generous: the machine running the tests may be loaded.
const WAIT: Duration = Duration::from_secs(60);

fn watch_from(prefix: &str, start_after: Option<String>) -> pb::WatchRequest {
    pb::WatchRequest {
        prefix: prefix.into(),
        start_after,
        ..Default::default()
    }
}

fn events(response: &pb::WatchResponse) -> &[pb::WatchEvent] {
    match &response.kind {
        Some(pb::watch_response::Kind::Events(events)) => &events.events,
        _ => &[],
    }
}

async fn next(
    stream: &mut Streaming<pb::WatchResponse>,
) -> Result<Option<pb::WatchResponse>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
}

fn error_info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    match status.get_error_details().error_info() {
        Some(info) => (info.reason.clone(), info.metadata.clone()),
        None => (String::new(), Default::default()),
    }
}

/// `count` puts under `prefix` in BatchWrites of `per_batch`; the (key,
/// version) of every acknowledged put.
async fn write_batches(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
    first: usize,
    count: usize,
    per_batch: usize,
) -> Vec<(String, u64)> {
    let mut written = Vec::with_capacity(count);
    let mut index = first;
    while index < first + count {
        let keys: Vec<String> = (index..(index + per_batch).min(first + count))
            .map(|n| format!("{prefix}{n:06}"))
            .collect();
        index += keys.len();
        let mutations = keys
            .iter()
            .map(|key| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(put_text(key, "v"))),
            })
            .collect();
        let results = client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await
            .expect("batch written")
            .into_inner()
            .results;
        written.extend(
            keys.into_iter()
                .zip(results.iter().map(|result| result.version)),
        );
    }
    written
}

/// Checks that `seen` holds every acknowledged write exactly once, in order
/// of versions per key, and nothing else.
fn assert_exactly_once(seen: &[(String, u64)], written: &[(String, u64)]) {
    let mut unique = HashSet::new();
    for event in seen {
        assert!(unique.insert(event.clone()), "duplicate event {event:?}");
    }
    let expected: HashSet<(String, u64)> = written.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&unique).take(5).collect();
    assert!(missing.is_empty(), "missing events, e.g. {missing:?}");
    let extra: Vec<_> = unique.difference(&expected).take(5).collect();
    assert!(extra.is_empty(), "unexpected events, e.g. {extra:?}");
}

/// A reader that drops its stream every few responses and resumes from the
/// last position it processed gets each of 10,000 events exactly once,
/// while the writes go on.
#[tokio::test]
async fn resume_after_disconnects_is_exactly_once_over_10k_events() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let mut writer = connect(&endpoint).await;
    // Start from a position taken before any write.
    let start = list_state(&mut writer, "r:", 10).await.1;
    let reader = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            let mut client = connect(&endpoint).await;
            let mut position = Some(start);
            let mut seen: Vec<(String, u64)> = Vec::new();
            let mut reconnects = 0;
            while seen.len() < 10_000 {
                let mut stream = client
                    .watch(watch_from("r:", position.clone()))
                    .await
                    .expect("resume")
                    .into_inner();
                // 1 to 5 responses, then drop the stream.
                for _ in 0..(1 + reconnects % 5) {
                    let response = next(&mut stream).await.expect("no error").expect("open");
                    seen.extend(
                        events(&response)
                            .iter()
                            .map(|event| (event.key.clone(), event.version)),
                    );
                    position = Some(response.position);
                    if seen.len() >= 10_000 {
                        break;
                    }
                }
                reconnects += 1;
            }
            (seen, reconnects)
        }
    });
    let mut written = write_batches(&mut writer, "r:", 0, 5_000, 50).await;
    for index in 5_000..10_000 {
        let key = format!("r:{index:06}");
        let version = writer
            .put(put_text(&key, "v"))
            .await
            .unwrap()
            .into_inner()
            .version;
        written.push((key, version));
    }
    let (seen, reconnects) = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("the reader finishes")
        .unwrap();
    assert!(reconnects > 20, "it did reconnect: {reconnects}");
    assert_exactly_once(&seen, &written);
}

crate::rocksdb_only! {
    "kill -9 of a tierkv binary over its embedded store";
    /// The real binary killed with SIGKILL mid-stream: after a restart over the
    /// same data, the watcher resumes from its last position and gets every
    /// acknowledged write exactly once (10,000 events in all).
    #[tokio::test]
    async fn resume_after_kill_9_is_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut process = spawn_server(server_command(&data));
        let mut client = connect(&process.endpoint()).await;
        let start = client
            .list(pb::ListRequest {
                prefix: "k:".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .position;
        let mut written = write_batches(&mut client, "k:", 0, 6_000, 100).await;
        let mut stream = client
            .watch(watch_from("k:", Some(start)))
            .await
            .unwrap()
            .into_inner();
        let mut seen: Vec<(String, u64)> = Vec::new();
        let mut position = String::new();
        while seen.len() < 3_000 {
            let response = next(&mut stream).await.unwrap().unwrap();
            seen.extend(events(&response).iter().map(|e| (e.key.clone(), e.version)));
            position = response.position;
        }
        process.child.kill().unwrap();
        process.child.wait().unwrap();
        drop(stream);

        let mut process = spawn_server(server_command(&data));
        let mut client = connect(&process.endpoint()).await;
        written.extend(write_batches(&mut client, "k:", 6_000, 4_000, 100).await);
        let mut stream = client
            .watch(watch_from("k:", Some(position)))
            .await
            .expect("the position survives the crash")
            .into_inner();
        while seen.len() < 10_000 {
            let response = next(&mut stream).await.unwrap().unwrap();
            seen.extend(events(&response).iter().map(|e| (e.key.clone(), e.version)));
        }
        process.child.kill().unwrap();
        process.child.wait().unwrap();
        assert_exactly_once(&seen, &written);
    }
}

/// Every key and version under `prefix`, and the listing's position.
async fn list_state(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
    page_size: i32,
) -> (BTreeMap<String, u64>, String) {
    let mut state = BTreeMap::new();
    let mut token = String::new();
    let mut position = None;
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.into(),
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        match &position {
            None => position = Some(page.position.clone()),
            Some(first) => assert_eq!(first, &page.position, "every page reports the first's"),
        }
        for key in page.keys {
            state.insert(key.name, key.version);
        }
        if page.next_page_token.is_empty() {
            return (state, position.unwrap());
        }
        token = page.next_page_token;
    }
}

/// Applies events to a listed state until the event of `sentinel` arrives.
async fn apply_until(
    stream: &mut Streaming<pb::WatchResponse>,
    state: &mut BTreeMap<String, u64>,
    sentinel: &str,
) {
    loop {
        let response = next(stream).await.expect("no error").expect("open");
        for event in events(&response) {
            if event.r#type == pb::EventType::Put as i32 {
                let current = state.entry(event.key.clone()).or_insert(0);
                // A later page may already show a newer version.
                *current = (*current).max(event.version);
            } else {
                state.remove(&event.key);
            }
            if event.key == sentinel {
                return;
            }
        }
    }
}

crate::rocksdb_only! {
    "trims the RocksDB history on demand (a local-only test hook)";
    /// Past the retained history a position is OUT_OF_RANGE with
    /// HISTORY_COMPACTED and the oldest position still available; watching
    /// from that oldest position works, and List-then-Watch recovers the full
    /// state.
    #[tokio::test]
    async fn trimmed_history_is_out_of_range_and_list_then_watch_recovers() {
        let mut server = start_with(|config| config.watch.history_events = 100).await;
        let start = list_state(&mut server.client, "t:", 10).await.1;
        write_batches(&mut server.client, "t:", 0, 500, 10).await;
        server.rocks().trim_history_now().unwrap();
        let status = server
            .client
            .watch(watch_from("t:", Some(start)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        let (reason, metadata) = error_info(&status);
        assert_eq!(reason, "HISTORY_COMPACTED");
        let oldest = metadata["oldest_position"].clone();
        server
            .client
            .watch(watch_from("t:", Some(oldest)))
            .await
            .expect("the oldest position is resumable");
        // Recovery: List, then Watch from the List's position.
        let (mut state, position) = list_state(&mut server.client, "t:", 37).await;
        assert_eq!(state.len(), 500);
        let mut stream = server
            .client
            .watch(watch_from("t:", Some(position)))
            .await
            .unwrap()
            .into_inner();
        server
            .client
            .delete(pb::DeleteRequest {
                key: "t:000001".into(),
                if_version: None,
            })
            .await
            .unwrap();
        write_batches(&mut server.client, "t:", 500, 20, 7).await;
        server
            .client
            .put(put_text("t:zz-sentinel", "x"))
            .await
            .unwrap();
        apply_until(&mut stream, &mut state, "t:zz-sentinel").await;
        assert_eq!(state, list_state(&mut server.client, "t:", 1000).await.0);
    }
}

/// List (in small pages) then Watch from the List's position, while a
/// writer keeps putting and deleting: the state rebuilt from the listing
/// and the events equals the final listing.
#[tokio::test]
async fn list_then_watch_under_concurrent_writes_misses_nothing() {
    let mut server = start().await;
    write_batches(&mut server.client, "c:", 0, 300, 30).await;
    let endpoint = server.server.endpoint();
    let writer = tokio::spawn(async move {
        let mut client = connect(&endpoint).await;
        for round in 0..600usize {
            let key = format!("c:{:06}", (round * 7) % 400);
            if round % 5 == 0 {
                client
                    .delete(pb::DeleteRequest {
                        key,
                        if_version: None,
                    })
                    .await
                    .unwrap();
            } else {
                client.put(put_text(&key, "w")).await.unwrap();
            }
        }
        client.put(put_text("c:zz-sentinel", "x")).await.unwrap();
    });
    let (mut state, position) = list_state(&mut server.client, "c:", 13).await;
    let mut stream = server
        .client
        .watch(watch_from("c:", Some(position)))
        .await
        .unwrap()
        .into_inner();
    apply_until(&mut stream, &mut state, "c:zz-sentinel").await;
    writer.await.unwrap();
    assert_eq!(state, list_state(&mut server.client, "c:", 1000).await.0);
}

/// Replayed puts carry their value only while the key still holds that
/// version; otherwise `value_superseded`, and the newer event has the value.
#[tokio::test]
async fn replay_marks_superseded_values() {
    let mut server = start().await;
    let start = list_state(&mut server.client, "s:", 10).await.1;
    server.client.put(put_text("s:a", "old")).await.unwrap();
    server.client.put(put_text("s:b", "kept")).await.unwrap();
    server.client.put(put_text("s:a", "new")).await.unwrap();
    let mut stream = server
        .client
        .watch(pb::WatchRequest {
            include_values: true,
            ..watch_from("s:", Some(start))
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 3 {
        let response = next(&mut stream).await.unwrap().unwrap();
        got.extend(events(&response).iter().cloned());
    }
    assert_eq!(got[0].key, "s:a");
    assert!(got[0].value_superseded);
    assert_eq!(got[0].value, None);
    assert_eq!(
        got[1].value,
        Some(pb::watch_event::Value::Text("kept".into()))
    );
    assert!(!got[1].value_superseded);
    assert_eq!(
        got[2].value,
        Some(pb::watch_event::Value::Text("new".into()))
    );
}

/// A slow consumer ended with RESOURCE_EXHAUSTED resumes from the position
/// in its error and gets the rest exactly once.
#[tokio::test]
async fn a_slow_consumer_resumes_from_its_last_position() {
    let mut server = start_with(|config| config.watch.buffer_bytes = 64 * 1024).await;
    let start = list_state(&mut server.client, "q:", 10).await.1;
    let mut stream = server
        .client
        .watch(pb::WatchRequest {
            include_values: true,
            ..watch_from("q:", Some(start))
        })
        .await
        .unwrap()
        .into_inner();
    // Wait until the watcher is live (caught up with the empty history).
    server.client.put(put_text("q:first", "x")).await.unwrap();
    let first = next(&mut stream).await.unwrap().unwrap();
    let mut seen: Vec<(String, u64)> = events(&first)
        .iter()
        .map(|e| (e.key.clone(), e.version))
        .collect();
    let mut written = vec![seen[0].clone()];
    let value = "v".repeat(256 * 1024);
    for index in 0..160 {
        let key = format!("q:{index:04}");
        let version = server
            .client
            .put(put_text(&key, &value))
            .await
            .unwrap()
            .into_inner()
            .version;
        written.push((key, version));
    }
    let status = loop {
        match next(&mut stream).await {
            Ok(Some(response)) => {
                seen.extend(events(&response).iter().map(|e| (e.key.clone(), e.version)))
            }
            Ok(None) => panic!("ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let position = error_info(&status).1["last_position"].clone();
    let mut stream = server
        .client
        .watch(watch_from("q:", Some(position)))
        .await
        .unwrap()
        .into_inner();
    while seen.len() < written.len() {
        let response = next(&mut stream).await.unwrap().unwrap();
        seen.extend(events(&response).iter().map(|e| (e.key.clone(), e.version)));
    }
    assert_exactly_once(&seen, &written);
}
