//! Watch fan-out through the real server over TCP: watchers that start at
//! different moments (replaying the history first, then joining the shared
//! fan-out group of their prefix and `include_values`) and watchers that
//! leave and come back, all while writes go on, each receive every event
//! exactly once, in commit order — the same sequence a watcher reading the
//! whole history afterwards receives.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;

/// Generous: the machine running the tests may be loaded.
const WAIT: Duration = Duration::from_secs(60);
const PREFIX: &str = "f:";
/// Written after every other write: a watcher has everything once it has this.
const END: &str = "f:~end";

/// A position before any write under the prefix (a List's).
async fn position_now(client: &mut KvServiceClient<Channel>) -> String {
    client
        .list(pb::ListRequest {
            prefix: PREFIX.into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .position
}

/// Events (key, version) from `start_after` up to and including [`END`];
/// with `leave_every`, the stream is dropped after that many responses and
/// opened again after the last position received.
async fn receive(
    endpoint: String,
    start_after: Option<String>,
    include_values: bool,
    leave_every: Option<usize>,
) -> Vec<(String, u64)> {
    let mut client = connect(&endpoint).await;
    let mut position = start_after;
    let mut seen = Vec::new();
    loop {
        let mut stream = client
            .watch(pb::WatchRequest {
                prefix: PREFIX.into(),
                start_after: position.clone(),
                include_values,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut responses = 0;
        loop {
            let response = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("a response in time")
                .expect("no error")
                .expect("open");
            if let Some(pb::watch_response::Kind::Events(events)) = &response.kind {
                for event in &events.events {
                    if include_values && event.r#type == pb::EventType::Put as i32 {
                        assert_eq!(
                            event.value,
                            Some(pb::watch_event::Value::Text("v".into())),
                            "{event:?}"
                        );
                    }
                    seen.push((event.key.clone(), event.version));
                    if event.key == END {
                        return seen;
                    }
                }
            }
            position = Some(response.position);
            responses += 1;
            if leave_every.is_some_and(|every| responses >= every) {
                break;
            }
        }
    }
}

/// Watchers joining (after a replay) and leaving their fan-out groups while
/// four writers commit Puts and BatchWrites each get every event once, in
/// the order of a full replay of the history afterwards.
#[tokio::test]
async fn watchers_joining_and_leaving_groups_get_every_event_once() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let mut client = connect(&endpoint).await;
    let start = position_now(&mut client).await;
    let mut watchers = Vec::new();
    // Caught up before the writes (nothing to replay), one per group.
    for include_values in [false, true] {
        watchers.push(tokio::spawn(receive(
            endpoint.clone(),
            Some(start.clone()),
            include_values,
            None,
        )));
    }
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = connect(&endpoint).await;
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..150 {
                let key = format!("{PREFIX}{writer}-{n:04}");
                if n % 3 == 0 {
                    let keys: Vec<String> = (0..3).map(|k| format!("{key}-{k}")).collect();
                    let mutations = keys
                        .iter()
                        .map(|key| pb::Mutation {
                            operation: Some(pb::mutation::Operation::Put(put_text(key, "v"))),
                        })
                        .collect();
                    let results = client
                        .batch_write(pb::BatchWriteRequest { mutations })
                        .await
                        .unwrap()
                        .into_inner()
                        .results;
                    written.extend(keys.into_iter().zip(results.iter().map(|r| r.version)));
                } else {
                    let version = client
                        .put(put_text(&key, "v"))
                        .await
                        .unwrap()
                        .into_inner()
                        .version;
                    written.push((key, version));
                }
            }
            written
        }));
    }
    // Joiners while the writes go on: each replays from the start, then
    // joins its group; two of them leave every few responses and resume.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let leave_every = (round % 3 == 2).then_some(4);
        watchers.push(tokio::spawn(receive(
            endpoint.clone(),
            Some(start.clone()),
            round % 2 == 0,
            leave_every,
        )));
    }
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    let end = client.put(put_text(END, "v")).await.unwrap().into_inner();
    written.push((END.to_string(), end.version));
    // The reference: the whole history, read after the writes.
    let reference = receive(endpoint.clone(), Some(start.clone()), false, None).await;
    let unique: HashSet<&(String, u64)> = reference.iter().collect();
    assert_eq!(unique.len(), reference.len(), "the replay repeats nothing");
    assert_eq!(
        unique,
        written.iter().collect::<HashSet<_>>(),
        "the replay holds every acknowledged write"
    );
    for (index, watcher) in watchers.into_iter().enumerate() {
        let seen = watcher.await.unwrap();
        assert_eq!(seen.len(), reference.len(), "watcher {index}: count");
        assert!(
            seen == reference,
            "watcher {index}: order or content differs"
        );
    }
}
