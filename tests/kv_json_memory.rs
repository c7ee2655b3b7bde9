//! The memory a JSON read costs is bounded by the response limit, not by
//! the value: alone in its test binary, so that the process's peak resident
//! memory (`VmHWM`) is this test's.

mod common;

use common::*;
use tierkv::proto::v1 as pb;
use tonic::Code;

/// A field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kib * 1024
}

/// Resets the peak resident memory to the current one.
fn reset_peak_memory() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

type GetResult = Result<tonic::Response<pb::GetResponse>, tonic::Status>;

/// Peak memory growth of four concurrent reads of `key` as `value_type`,
/// and their results.
async fn peak_growth_of_reads(
    server: &TestServer,
    key: &str,
    value_type: pb::ValueType,
) -> (u64, Vec<GetResult>) {
    reset_peak_memory();
    let before = proc_status_bytes("VmRSS:");
    let reads = (0..4).map(|_| {
        let mut client = server.client.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            client
                .get(pb::GetRequest {
                    key,
                    r#type: value_type as i32,
                    fallback: None,
                })
                .await
        })
    });
    let results = futures_join(reads).await;
    let growth = proc_status_bytes("VmHWM:").saturating_sub(before);
    (growth, results)
}

/// Four concurrent reads as JSON of a 25 MiB value of small numbers (137 MiB
/// as google.protobuf.Value, over the limit) are refused without building
/// anything: each costs the engine's read of the value (under 4 copies of
/// it), where converting before checking cost about 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_json_reads_cost_no_conversion() {
    let server = start().await;
    let count = (25 * 1024 * 1024 - 2) / 2;
    let mut text = String::with_capacity(25 * 1024 * 1024);
    text.push('[');
    for index in 0..count {
        text.push_str(if index == 0 { "1" } else { ",1" });
    }
    text.push(']');
    server
        .client
        .clone()
        .put(put_text("numbers", &text))
        .await
        .unwrap();
    drop(text);

    // JSON first, on a cold allocator: its growth is not hidden by memory
    // that an earlier read freed.
    let (json_growth, results) =
        peak_growth_of_reads(&server, "numbers", pb::ValueType::Json).await;
    for result in results {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    let (bytes_growth, results) =
        peak_growth_of_reads(&server, "numbers", pb::ValueType::Bytes).await;
    for result in results {
        result.expect("bytes read");
    }
    eprintln!(
        "4 concurrent reads of a 25 MiB value: peak grew by {json_growth} bytes as JSON \
         (refused), {bytes_growth} bytes as bytes"
    );
    // Reading the stored value costs a few copies of it in the engine; a
    // conversion would cost 25 of them.
    assert!(
        json_growth < 4 * 4 * 25 * 1024 * 1024,
        "4 refused JSON reads grew the peak by {json_growth} bytes"
    );
    server.stop().await;
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.unwrap());
    }
    results
}
