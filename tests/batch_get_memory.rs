//! A `BatchGet` costs no more memory than its response limit, whatever it
//! names. Alone in its test binary, so the process's peak memory (`VmHWM` in
//! `/proc/self/status`) is this test's: the server runs in-process, and the
//! growth of the peak over a baseline taken just before the request is what
//! the request cost.

mod common;

use common::*;
use tierkv::kv::limits::{MAX_BATCH_GET_KEYS, MAX_RESPONSE_BYTES, MAX_VALUE_BYTES};
use tierkv::proto::v1 as pb;
use tonic::Code;

/// Peak resident memory of this process, in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

/// A `BatchGet` naming one 25 MiB key 100 times (a request of about 1 KB)
/// is refused with RESOURCE_EXHAUSTED before any value is copied: peak memory
/// grows by less than the 100 MiB response limit, where copying every value
/// first takes 2.5 GB.
#[tokio::test]
async fn oversized_batch_get_is_refused_before_materialising() {
    let mut server = start().await;
    server
        .client
        .put(pb::PutRequest {
            key: "huge".into(),
            value: Some(pb::put_request::Value::Bytes(vec![7; MAX_VALUE_BYTES])),
            ..Default::default()
        })
        .await
        .unwrap();
    // A read of the key first, so its cost is in the baseline.
    let found = server.client.get(get("huge")).await.unwrap().into_inner();
    assert!(found.found);
    drop(found);
    let baseline = peak_rss_bytes();

    let request = pb::BatchGetRequest {
        keys: vec!["huge".to_string(); MAX_BATCH_GET_KEYS],
        ..Default::default()
    };
    let status = server.client.batch_get(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let total = MAX_BATCH_GET_KEYS as u64 * MAX_VALUE_BYTES as u64;
    assert!(
        status.message().contains(&total.to_string()),
        "names the size: {}",
        status.message()
    );
    let growth = peak_rss_bytes().saturating_sub(baseline);
    assert!(
        growth < MAX_RESPONSE_BYTES as u64,
        "peak memory grew by {} MiB for a refused request",
        growth >> 20
    );

    // Within the limit, the same key several times is answered whole.
    let fits = MAX_RESPONSE_BYTES / MAX_VALUE_BYTES;
    let response = server
        .client
        .batch_get(pb::BatchGetRequest {
            keys: vec!["huge".to_string(); fits],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), fits);
    assert!(response.results.iter().all(|result| result.found));
    server.stop().await;
}
