//! The metrics and probes listener, scraped over real HTTP: per-RPC counts by
//! status code and latency histograms in the Prometheus text format, server
//! figures, a label set that random paths cannot grow, and `/readyz` turning
//! 503 as soon as a drain starts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::raw_unary_status;
use common::*;
use tierkv::proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.0 GET; returns the status code, headers and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// The value of the sample `name{labels}` in a scrape, if present.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn rpc_counts_latencies_and_server_figures_are_scraped() {
    let mut server = start().await;
    let metrics = server.server.metrics_addr.expect("metrics listener");
    for i in 0..3 {
        server
            .client
            .put(put_text(&format!("user:m{i}"), "v"))
            .await
            .unwrap();
    }
    server.client.get(get("user:m0")).await.unwrap();
    let mut stale = put_text("user:m0", "w");
    stale.precondition = Some(pb::put_request::Precondition::IfVersion(999));
    assert!(server.client.put(stale).await.is_err());
    assert!(server.client.get(get(&"k".repeat(600))).await.is_err());
    // Answered by the deadline layer, not a handler: still counted.
    let late = raw_unary_status(
        server.server.addr,
        "/tierkv.v1.KvService/Get",
        &get("user:m1"),
        "1n",
    )
    .await;
    assert_eq!(late, "4");

    let (status, head, scrape) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let kv = |method: &str, code: &str| {
        sample(
            &scrape,
            &format!(
                "tierkv_rpc_requests_total{{service=\"tierkv.v1.KvService\",method=\"{method}\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(kv("Put", "OK"), Some(3.0), "{scrape}");
    assert_eq!(kv("Get", "OK"), Some(1.0));
    assert_eq!(kv("Put", "ABORTED"), Some(1.0));
    assert_eq!(kv("Get", "INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(kv("Get", "DEADLINE_EXCEEDED"), Some(1.0));
    assert_eq!(
        sample(
            &scrape,
            "tierkv_rpc_duration_seconds_count{service=\"tierkv.v1.KvService\",method=\"Put\"}"
        ),
        Some(4.0)
    );
    assert!(scrape.contains("# TYPE tierkv_rpc_duration_seconds histogram"));
    assert_eq!(
        sample(
            &scrape,
            "tierkv_rpc_duration_seconds_bucket{service=\"tierkv.v1.KvService\",method=\"Put\",le=\"+Inf\"}"
        ),
        Some(4.0)
    );
    // The test's client is connected; the bare connection of the late call
    // may or may not have been noticed closing yet.
    let open = sample(&scrape, "tierkv_connections_open").unwrap();
    assert!((1.0..=2.0).contains(&open), "{scrape}");
    assert!(sample(&scrape, "tierkv_connections_accepted_total").unwrap() >= 2.0);
    assert!(sample(&scrape, "tierkv_request_memory_capacity_bytes").unwrap() > 0.0);
    server.stop().await;
}

/// Calls to paths no service serves share one `unknown` label, so random
/// paths cannot make the scrape grow.
#[tokio::test]
async fn unknown_paths_share_one_label() {
    let server = start().await;
    let metrics = server.server.metrics_addr.unwrap();
    for i in 0..50 {
        let status = raw_unary_status(
            server.server.addr,
            &format!("/tierkv.v1.KvService/Bogus{i}"),
            &get("x"),
            "10S",
        )
        .await;
        assert_eq!(status, "12");
    }
    let (_, _, scrape) = http_get(metrics, "/metrics").await;
    assert!(!scrape.contains("Bogus"), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            "tierkv_rpc_requests_total{service=\"unknown\",method=\"unknown\",code=\"UNIMPLEMENTED\"}"
        ),
        Some(50.0),
        "{scrape}"
    );
    server.stop().await;
}

/// `/healthz` answers while the process runs; `/readyz` is 200 while serving
/// and 503 from the first moment of a drain, while calls are still served.
#[tokio::test]
async fn readyz_turns_unavailable_when_the_drain_starts() {
    let server = start_with(|config| config.shutdown_delay_ms = 1_500).await;
    let metrics = server.server.metrics_addr.unwrap();
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    assert_eq!(http_get(metrics, "/nope").await.0, 404);

    let TestServer {
        server: running,
        mut client,
        dir,
        ..
    } = server;
    let stopping = tokio::spawn(running.stop());
    let started = tokio::time::Instant::now();
    loop {
        if http_get(metrics, "/readyz").await.0 == 503 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "never 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    // Still serving calls during the delay.
    client.put(put_text("user:during", "v")).await.unwrap();
    stopping.await.unwrap().unwrap();
    drop(dir);
}

/// `metrics_listen = "off"` starts no listener; a bad address is refused at start.
#[tokio::test]
async fn metrics_listener_can_be_turned_off_and_bad_addresses_are_refused() {
    let server = start_with(|config| config.metrics_listen = "off".into()).await;
    assert_eq!(server.server.metrics_addr, None);
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.metrics_listen = "nowhere:99999".into();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("metrics_listen"), "{error}");
}

/// Storage figures per namespace and engine-wide are scraped, and
/// `AdminService.Stats` serves the same figures as samples.
#[tokio::test]
async fn storage_figures_and_admin_stats() {
    let mut server = start().await;
    for i in 0..20 {
        server
            .client
            .put(put_text(&format!("user:s{i}"), "v"))
            .await
            .unwrap();
    }
    let metrics = server.server.metrics_addr.unwrap();
    let (_, _, scrape) = http_get(metrics, "/metrics").await;
    let memtable = sample(
        &scrape,
        "tierkv_namespace_memtable_bytes{namespace=\"user:\",column_family=\"kv/user:\"}",
    );
    assert!(memtable.unwrap_or(0.0) > 0.0, "{scrape}");
    assert!(sample(&scrape, "tierkv_block_cache_capacity_bytes").unwrap() > 0.0);
    assert!(scrape.contains("tierkv_namespace_pending_compaction_bytes{"));

    let mut admin = pb::admin_service_client::AdminServiceClient::connect(server.server.endpoint())
        .await
        .unwrap();
    let stats = admin
        .stats(pb::StatsRequest {
            name_prefix: "tierkv_rpc_requests".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.samples.is_empty());
    assert!(stats
        .samples
        .iter()
        .all(|sample| sample.name.starts_with("tierkv_rpc_requests")));
    let puts = stats
        .samples
        .iter()
        .find(|sample| {
            sample.labels.get("method").map(String::as_str) == Some("Put")
                && sample.labels.get("code").map(String::as_str) == Some("OK")
        })
        .expect("Put OK sample");
    assert_eq!(puts.value, 20.0);
    assert!(stats.text.contains("tierkv_block_cache_capacity_bytes"));
    server.stop().await;
}

/// Sessions created and revoked are counted.
#[tokio::test]
async fn session_counts_are_scraped() {
    let server = start().await;
    let mut sessions = connect_sessions(&server.server.endpoint()).await;
    let mut tokens = Vec::new();
    for user in ["ann", "bob"] {
        let created = sessions
            .create(pb::CreateSessionRequest {
                user_id: user.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(created.token);
    }
    sessions
        .revoke(pb::RevokeSessionRequest {
            session: Some(pb::revoke_session_request::Session::Token(
                tokens[0].clone(),
            )),
        })
        .await
        .unwrap();
    let (_, _, scrape) = http_get(server.server.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        sample(&scrape, "tierkv_sessions_created_total"),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "tierkv_sessions_revoked_total"), Some(1.0));
    assert_eq!(sample(&scrape, "tierkv_sessions_rotated_total"), Some(0.0));
    server.stop().await;
}

/// Fallback reads are counted by reason in the scrape.
#[tokio::test]
async fn fallbacks_are_counted_by_reason() {
    let mut server = start().await;
    let metrics = server.server.metrics_addr.unwrap();
    let fallback = Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::BoolValue(false)),
    });
    for _ in 0..2 {
        let mut request = get("flags:missing");
        request.fallback = fallback.clone();
        let response = server.client.get(request).await.unwrap().into_inner();
        assert!(response.from_fallback);
    }
    let fault = server.rocks().inject_read_fault(None);
    let mut request = get("flags:missing");
    request.fallback = fallback;
    assert!(
        server
            .client
            .get(request)
            .await
            .unwrap()
            .into_inner()
            .from_fallback
    );
    drop(fault);

    let (_, _, scrape) = http_get(metrics, "/metrics").await;
    let fallbacks = |reason: &str| {
        sample(
            &scrape,
            &format!("tierkv_kv_fallbacks_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(fallbacks("absent"), Some(2.0), "{scrape}");
    assert_eq!(fallbacks("failed"), Some(1.0));
    assert_eq!(fallbacks("timed_out"), Some(0.0));
    server.stop().await;
}

/// Overwrites `key`'s stored record, in whichever column family holds it, with
/// bytes no record header decodes from, as a torn or foreign write would leave.
fn corrupt_on_disk(data_dir: &std::path::Path, key: &str) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), data_dir).expect("list cfs");
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), data_dir, &names).expect("open");
    let holder = names
        .iter()
        .find(|name| {
            let cf = db.cf_handle(name).unwrap();
            db.get_cf(&cf, key).unwrap().is_some()
        })
        .expect("some column family holds the key")
        .clone();
    let cf = db.cf_handle(&holder).unwrap();
    db.put_cf(&cf, key, [0xff]).expect("overwrite");
    db.flush_cf(&cf).expect("flush");
}

#[tokio::test]
async fn a_corrupt_record_answers_data_loss_is_counted_and_an_unconditional_delete_clears_it() {
    let mut server = start().await;
    server.client.put(put_text("user:torn", "v")).await.unwrap();
    server
        .client
        .put(put_text("user:torn2", "v"))
        .await
        .unwrap();
    let data_dir = server.data_dir();
    let clock: tierkv::clock::SharedClock = server.clock.clone();
    server.server.stop().await.expect("clean stop");
    corrupt_on_disk(&data_dir, "user:torn");
    corrupt_on_disk(&data_dir, "user:torn2");

    let dir = server.dir.clone();
    let mut config = server.config.clone();
    config.data_dir = data_dir;
    let _keep = dir;
    let server = tierkv::server::RunningServer::start(config, clock)
        .await
        .expect("restarts");
    let mut client = connect(&server.endpoint()).await;

    let read = client.get(get("user:torn")).await.unwrap_err();
    assert_eq!(read.code(), tonic::Code::DataLoss, "{read:?}");
    // A conditional write cannot know the version, so it is refused too.
    let mut guarded = put_text("user:torn", "w");
    guarded.precondition = Some(pb::put_request::Precondition::IfVersion(1));
    assert_eq!(
        client.put(guarded).await.unwrap_err().code(),
        tonic::Code::DataLoss
    );

    // A plain Delete removes it, and says something was there.
    let deleted = client
        .delete(pb::DeleteRequest {
            key: "user:torn".into(),
            ..Default::default()
        })
        .await
        .expect("delete of a corrupt record")
        .into_inner();
    assert!(deleted.existed);
    assert!(
        !client
            .get(get("user:torn"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // So does a BatchWrite's unconditional delete.
    client
        .batch_write(pb::BatchWriteRequest {
            mutations: vec![pb::Mutation {
                operation: Some(pb::mutation::Operation::Delete(pb::DeleteRequest {
                    key: "user:torn2".into(),
                    ..Default::default()
                })),
            }],
        })
        .await
        .expect("batch delete of a corrupt record");
    assert!(
        !client
            .get(get("user:torn2"))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    let (_, _, scrape) = http_get(server.metrics_addr.unwrap(), "/metrics").await;
    let found = sample(&scrape, "tierkv_corrupt_records_found_total").expect(&scrape);
    let removed = sample(&scrape, "tierkv_corrupt_records_removed_total").expect(&scrape);
    assert!(found >= 3.0, "found {found}");
    assert_eq!(removed, 2.0);
    server.stop().await.unwrap();
}
