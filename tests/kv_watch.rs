//! `KvService.Watch` through the real server over TCP: events typed like
//! Get, atomic batches in one response, NAMESPACE_CLEARED, heartbeats with
//! positions, access (grants and owned namespaces), limits (watchers, slow
//! consumers), drain, malformed positions and metrics.

mod common;

use std::time::Duration;

use common::*;
use tierkv::auth::{hash_token, AuthConfig, Permission, TokenConfig};
use tierkv::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

/// Generous: the machine running the tests may be loaded.
const WAIT: Duration = Duration::from_secs(30);

fn watch(prefix: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        prefix: prefix.into(),
        ..Default::default()
    }
}

async fn open(
    client: &mut KvServiceClient<Channel>,
    request: pb::WatchRequest,
) -> Streaming<pb::WatchResponse> {
    client
        .watch(request)
        .await
        .expect("watch starts")
        .into_inner()
}

/// The next response, within [`WAIT`].
async fn next(
    stream: &mut Streaming<pb::WatchResponse>,
) -> Result<pb::WatchResponse, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .map(|response| response.expect("the stream goes on"))
}

fn events(response: &pb::WatchResponse) -> &[pb::WatchEvent] {
    match &response.kind {
        Some(pb::watch_response::Kind::Events(events)) => &events.events,
        _ => &[],
    }
}

/// Events until `count` have arrived (heartbeats skipped), with the position
/// of each response.
async fn collect(
    stream: &mut Streaming<pb::WatchResponse>,
    count: usize,
) -> Vec<(pb::WatchEvent, String)> {
    let mut out = Vec::new();
    while out.len() < count {
        let response = next(stream).await.expect("no error");
        for event in events(&response) {
            out.push((event.clone(), response.position.clone()));
        }
    }
    out
}

fn reason(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    match status.get_error_details().error_info() {
        Some(info) => (info.reason.clone(), info.metadata.clone()),
        None => (String::new(), Default::default()),
    }
}

/// Live events carry key, type, version, expiry and schema version, and with
/// include_values the value and metadata in the form Get returns (text, JSON,
/// bytes), positions increasing; keys outside the prefix are not sent.
#[tokio::test]
async fn live_events_are_typed_like_get() {
    let mut server = start().await;
    let mut stream = open(
        &mut server.client,
        pb::WatchRequest {
            include_values: true,
            ..watch("w:")
        },
    )
    .await;
    let json = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("hello".into())),
    };
    let meta = prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(7.0)),
    };
    server.client.put(put_text("other", "x")).await.unwrap();
    let text = server
        .client
        .put(pb::PutRequest {
            metadata: Some(meta.clone()),
            expiration: Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            })),
            schema_version: 3,
            ..put_text("w:text", "v1")
        })
        .await
        .unwrap()
        .into_inner();
    server
        .client
        .put(pb::PutRequest {
            key: "w:json".into(),
            value: Some(pb::put_request::Value::Json(json.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    server
        .client
        .put(pb::PutRequest {
            key: "w:bytes".into(),
            value: Some(pb::put_request::Value::Bytes(vec![0, 255])),
            ..Default::default()
        })
        .await
        .unwrap();
    server
        .client
        .delete(pb::DeleteRequest {
            key: "w:text".into(),
            if_version: None,
        })
        .await
        .unwrap();
    let got = collect(&mut stream, 4).await;
    let keys: Vec<&str> = got.iter().map(|(event, _)| event.key.as_str()).collect();
    assert_eq!(keys, ["w:text", "w:json", "w:bytes", "w:text"]);
    let (put, _) = &got[0];
    assert_eq!(put.r#type, pb::EventType::Put as i32);
    assert_eq!(put.version, text.version);
    assert_eq!(put.expire_time, text.expire_time);
    assert_eq!(put.schema_version, 3);
    assert_eq!(put.value, Some(pb::watch_event::Value::Text("v1".into())));
    assert_eq!(put.metadata, Some(meta));
    assert_eq!(got[1].0.value, Some(pb::watch_event::Value::Json(json)));
    assert_eq!(
        got[2].0.value,
        Some(pb::watch_event::Value::Bytes(vec![0, 255]))
    );
    assert_eq!(got[3].0.r#type, pb::EventType::Delete as i32);
    assert_eq!(got[3].0.value, None);
    let sequences: Vec<u64> = got
        .iter()
        .map(|(_, position)| position.rsplit_once('-').unwrap().1.parse().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "{sequences:?}"
    );
}

/// The events of one BatchWrite arrive in one response, in order, never
/// split, whether live or replayed, while four writers commit concurrently
/// (so group commits mix their requests).
#[tokio::test]
async fn batch_writes_arrive_whole() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 25;
    // Not a divisor of the 1,000 events a response holds at most, so a
    // response cut by count rather than by batch would show.
    const PER_BATCH: usize = 30;
    let mut server = start().await;
    let start = server
        .client
        .list(pb::ListRequest {
            prefix: "b:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .position;
    let live = open(&mut server.client, watch("b:")).await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let endpoint = server.server.endpoint();
        writers.push(tokio::spawn(async move {
            let mut client = connect(&endpoint).await;
            for round in 0..ROUNDS {
                let mutations = (0..PER_BATCH)
                    .map(|index| pb::Mutation {
                        operation: Some(pb::mutation::Operation::Put(put_text(
                            &format!("b:{writer}:{round:02}:{index:03}"),
                            "v",
                        ))),
                    })
                    .collect();
                client
                    .batch_write(pb::BatchWriteRequest { mutations })
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let replayed = server
        .client
        .watch(pb::WatchRequest {
            start_after: Some(start),
            ..watch("b:")
        })
        .await
        .unwrap()
        .into_inner();
    for (name, mut stream) in [("live", live), ("replayed", replayed)] {
        let mut total = 0;
        while total < WRITERS * ROUNDS * PER_BATCH {
            let response = next(&mut stream).await.unwrap();
            let keys: Vec<&str> = events(&response).iter().map(|e| e.key.as_str()).collect();
            total += keys.len();
            // Whole batches, each in order: runs of PER_BATCH keys of one
            // request, index 0 to PER_BATCH - 1.
            assert_eq!(
                keys.len() % PER_BATCH,
                0,
                "{name}: a batch was split: {keys:?}"
            );
            for run in keys.chunks(PER_BATCH) {
                let request = &run[0][..run[0].len() - 3];
                for (index, key) in run.iter().enumerate() {
                    assert_eq!(*key, format!("{request}{index:03}"), "{name}: {keys:?}");
                }
            }
        }
        assert_eq!(total, WRITERS * ROUNDS * PER_BATCH, "{name}");
    }
}

/// DropNamespace reaches a watcher of a prefix inside the namespace as one
/// NAMESPACE_CLEARED event with the namespace's prefix.
#[tokio::test]
async fn drop_namespace_is_one_event() {
    let mut server =
        start_with(|config| config.namespaces = vec!["user:".into(), "session:".into()]).await;
    put_all(&mut server.client, &["user:1", "user:2"]).await;
    let mut stream = open(&mut server.client, watch("user:1")).await;
    let mut admin = connect_admin(&server.server.endpoint()).await;
    admin
        .drop_namespace(pb::DropNamespaceRequest {
            prefix: "user:".into(),
            expected_keys: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = collect(&mut stream, 1).await;
    assert_eq!(got[0].0.key, "user:");
    assert_eq!(got[0].0.r#type, pb::EventType::NamespaceCleared as i32);
}

/// With nothing to send, heartbeats carry the current position: after a
/// write outside the prefix it moves past that write's commit.
#[tokio::test]
async fn heartbeats_carry_the_position() {
    let mut server = start().await;
    let mut stream = open(
        &mut server.client,
        pb::WatchRequest {
            progress_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000, // raised to 100 ms
            }),
            ..watch("h:")
        },
    )
    .await;
    let first = next(&mut stream).await.unwrap();
    assert!(
        matches!(first.kind, Some(pb::watch_response::Kind::Progress(_))),
        "{first:?}"
    );
    let sequence =
        |position: &str| -> u64 { position.rsplit_once('-').unwrap().1.parse().unwrap() };
    let before = sequence(&first.position);
    server.client.put(put_text("elsewhere", "x")).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let beat = next(&mut stream).await.unwrap();
        assert!(events(&beat).is_empty(), "nothing under h: was written");
        if sequence(&beat.position) > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the position never moved"
        );
    }
}

/// A malformed start position is INVALID_ARGUMENT naming start_after; a
/// position of another history is OUT_OF_RANGE with HISTORY_MISMATCH.
#[tokio::test]
async fn bad_positions_are_refused() {
    let mut server = start().await;
    let status = server
        .client
        .watch(pb::WatchRequest {
            start_after: Some("not-a-position".into()),
            ..watch("")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "start_after"
    );
    let status = server
        .client
        .watch(pb::WatchRequest {
            start_after: Some("00000000deadbeef-1".into()),
            ..watch("")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(reason(&status).0, "HISTORY_MISMATCH");
}

/// The prefix is limited like List's: longer than a key can be, it is
/// refused with the limit in the message and the field named.
#[tokio::test]
async fn an_over_long_prefix_is_refused_with_the_limit() {
    let mut server = start().await;
    let limit = tierkv::records::limits::MAX_KEY_BYTES;
    let status = server
        .client
        .watch(watch(&"p".repeat(limit + 1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("the limit is {limit} bytes")),
        "{status:?}"
    );
    let details = status.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "prefix"
    );
    // At the limit it is a prefix like any other.
    server
        .client
        .watch(watch(&"p".repeat(limit)))
        .await
        .unwrap();
}

const READER: &str = "tkv_reader-secret-0123456789";

#[derive(Clone)]
struct Bearer(&'static str);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.0).parse().unwrap(),
        );
        Ok(request)
    }
}

/// A token without read access to the whole prefix is PERMISSION_DENIED
/// (`""` included); a prefix inside the session namespace is refused; and a
/// watch of every key never sends the session namespace's events.
#[tokio::test]
async fn access_is_checked_and_sessions_never_leak() {
    let server = start_with(|config| {
        config.auth = AuthConfig {
            tokens: vec![TokenConfig {
                name: "reader".into(),
                token_sha256: hash_token(READER),
                token_sha256_file: None,
                prefixes: vec!["orders:".into()],
                permissions: vec![Permission::Read],
            }],
        }
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reader = KvServiceClient::with_interceptor(channel, Bearer(READER));
    for prefix in ["", "ord", "users:"] {
        let status = reader.watch(watch(prefix)).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{prefix:?}: {status:?}"
        );
    }
    reader
        .watch(watch("orders:"))
        .await
        .expect("granted prefix");
    drop(server);

    // Without authentication: the session namespace is owned by the Session service.
    let mut server = start().await;
    let status = server.client.watch(watch("session:")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut all = open(&mut server.client, watch("")).await;
    let mut sessions = connect_sessions(&server.server.endpoint()).await;
    sessions
        .create(pb::CreateSessionRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A sentinel written after the session: everything before it was sent.
    server.client.put(put_text("sentinel", "x")).await.unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|key: &String| key == "sentinel") {
        let response = next(&mut all).await.unwrap();
        seen.extend(events(&response).iter().map(|event| event.key.clone()));
    }
    assert!(
        seen.iter().all(|key| !key.starts_with("session:")),
        "{seen:?}"
    );
}

/// Past `max_watchers` a watch is RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS);
/// ending one frees its place.
#[tokio::test]
async fn watchers_are_limited() {
    let mut server = start_with(|config| config.watch.max_watchers = 2).await;
    let first = open(&mut server.client, watch("a:")).await;
    let _second = open(&mut server.client, watch("b:")).await;
    let status = server.client.watch(watch("c:")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status).0, "TOO_MANY_WATCHERS");
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match server.client.watch(watch("c:")).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A client that stops reading while values pour in is ended with
/// RESOURCE_EXHAUSTED (WATCHER_FELL_BEHIND) carrying the position of the
/// last response it was sent; writers are not held up meanwhile.
#[tokio::test]
async fn a_slow_consumer_is_ended_with_its_last_position() {
    let mut server = start_with(|config| config.watch.buffer_bytes = 64 * 1024).await;
    let mut stream = open(
        &mut server.client,
        pb::WatchRequest {
            include_values: true,
            ..watch("s:")
        },
    )
    .await;
    // Tens of megabytes: far past what HTTP/2 windows and socket buffers hold.
    let value = "v".repeat(256 * 1024);
    let writes = async {
        for index in 0..160 {
            server
                .client
                .put(put_text(&format!("s:{index:04}"), &value))
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(WAIT, writes)
        .await
        .expect("writers are not held up");
    let mut last_position = String::new();
    let status = loop {
        match tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("in time")
        {
            Ok(Some(response)) => last_position = response.position,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (reason, metadata) = reason(&status);
    assert_eq!(reason, "WATCHER_FELL_BEHIND");
    assert!(!last_position.is_empty(), "some responses arrived first");
    assert_eq!(metadata["last_position"], last_position);
}

/// A drain (stop) ends open watches with UNAVAILABLE and the position to
/// resume from.
#[tokio::test]
async fn a_drain_ends_watches_with_unavailable() {
    let mut server = start().await;
    let mut stream = open(&mut server.client, watch("d:")).await;
    server.client.put(put_text("d:1", "x")).await.unwrap();
    let got = collect(&mut stream, 1).await;
    let stopping = tokio::spawn(server.server.stop());
    let status = loop {
        match tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (reason, metadata) = reason(&status);
    assert_eq!(reason, "SHUTTING_DOWN");
    assert_eq!(metadata["last_position"], got[0].1);
    stopping.await.unwrap().unwrap();
}

/// /metrics shows open watchers, events sent and streams ended by reason.
#[tokio::test]
async fn watch_metrics_are_scraped() {
    let mut server = start_with(|config| config.watch.max_watchers = 1).await;
    let metrics = server.server.metrics_addr.unwrap();
    let mut stream = open(&mut server.client, watch("m:")).await;
    server.client.put(put_text("m:1", "x")).await.unwrap();
    collect(&mut stream, 1).await;
    server.client.watch(watch("m:")).await.unwrap_err();
    let text = common::scrape_metrics(metrics).await;
    assert_eq!(
        common::metric_sample(&text, "tierkv_watchers"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        common::metric_sample(&text, "tierkv_watch_events_sent_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        common::metric_sample(
            &text,
            "tierkv_watch_streams_ended_total{reason=\"too_many_watchers\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        common::metric_sample(&text, "tierkv_watch_lag_max_sequences").is_some(),
        "{text}"
    );
}

/// Idle Watch streams (no events, no heartbeats) do not hold
/// `max_calls_in_flight`: with a limit of 2 and 4 watches open, calls still
/// go through; each still holds a place on its connection
/// (`max_watch_streams_per_connection`).
#[tokio::test]
async fn idle_watches_leave_calls_in_flight_but_count_per_connection() {
    let mut server = start_with(|config| {
        config.max_calls_in_flight = 2;
        config.max_watch_streams_per_connection = 4;
    })
    .await;
    let mut streams = Vec::new();
    for index in 0..4 {
        streams.push(open(&mut server.client, watch(&format!("idle{index}:"))).await);
    }
    for _ in 0..3 {
        server
            .client
            .put(put_text("calls", "go through"))
            .await
            .unwrap();
    }
    let status = server.client.watch(watch("fifth:")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status).0, "TOO_MANY_WATCH_STREAMS");
    let mut other = connect(&server.server.endpoint()).await;
    other
        .watch(watch("fifth:"))
        .await
        .expect("another connection has room");
}
