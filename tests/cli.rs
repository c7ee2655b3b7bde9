//! The `tierkv kv` command line against a real server: get, put, delete,
//! list and wrangler-style bulk files.

mod common;

use std::process::Command;

use common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_tierkv");

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tierkv ARGS…` off the async runtime (which serves the in-process
/// server), with `TIERKV_ENDPOINT` set to `endpoint_env` or removed.
async fn tierkv(args: Vec<String>, endpoint_env: Option<String>) -> Outcome {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BINARY);
        command.args(&args);
        match endpoint_env {
            Some(endpoint) => command.env("TIERKV_ENDPOINT", endpoint),
            None => command.env_remove("TIERKV_ENDPOINT"),
        };
        let output = command.output().expect("run tierkv");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// Runs `tierkv kv ARGS…` against `endpoint`, given through `TIERKV_ENDPOINT`.
async fn kv(endpoint: &str, args: &[&str]) -> Outcome {
    let args = std::iter::once("kv")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    tierkv(args, Some(endpoint.to_string())).await
}

/// put / get / get --with-metadata / delete, and exit code 1 on a miss.
#[tokio::test]
async fn get_put_delete() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();

    let put = kv(
        endpoint,
        &[
            "put",
            "user:1",
            "hello",
            "--metadata",
            r#"{"a":1}"#,
            "--ttl",
            "3600",
        ],
    )
    .await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    let got = kv(endpoint, &["get", "user:1"]).await;
    assert_eq!((got.code, got.stdout.as_str()), (0, "hello"));

    let detailed = kv(endpoint, &["get", "user:1", "--with-metadata"]).await;
    let json: serde_json::Value = serde_json::from_str(&detailed.stdout).unwrap();
    assert_eq!(json["value"], "hello");
    assert_eq!(json["metadata"], serde_json::json!({"a": 1}));
    assert!(json["expiration"].as_i64().unwrap() > 1_700_000_000);
    assert!(json["version"].as_u64().unwrap() > 0);

    let json_put = kv(
        endpoint,
        &[
            "put",
            "config:app",
            r#"{"theme":"light","maxItems":10}"#,
            "--json",
        ],
    )
    .await;
    assert_eq!(json_put.code, 0, "{}", json_put.stderr);
    let json_get = kv(endpoint, &["get", "config:app"]).await;
    let value: serde_json::Value = serde_json::from_str(&json_get.stdout).unwrap();
    assert_eq!(value, serde_json::json!({"theme": "light", "maxItems": 10}));

    let missing = kv(endpoint, &["get", "nope"]).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stdout.is_empty());

    let deleted = kv(endpoint, &["delete", "user:1"]).await;
    assert_eq!(deleted.code, 0);
    assert_eq!(kv(endpoint, &["get", "user:1"]).await.code, 1);

    let invalid = kv(endpoint, &["put", "", "x"]).await;
    assert_eq!(invalid.code, 2);
    assert!(
        invalid.stderr.contains("key must not be empty"),
        "{}",
        invalid.stderr
    );

    let flag = tierkv(
        ["kv", "--endpoint", endpoint, "get", "config:app"]
            .map(String::from)
            .to_vec(),
        None,
    )
    .await;
    assert_eq!(
        (flag.code, flag.stdout.as_str()),
        (0, "{\"maxItems\":10,\"theme\":\"light\"}\n"),
        "--endpoint works like TIERKV_ENDPOINT"
    );
    server.stop().await;
}

/// Bulk put and delete accept wrangler's JSON formats; list pages through
/// everything and prints wrangler's shape.
#[tokio::test]
async fn bulk_and_list() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    let dir = tempfile::tempdir().unwrap();

    let mut entries = vec![
        serde_json::json!({"key": "bulk:a", "value": "1", "metadata": {"m": true}}),
        serde_json::json!({"key": "bulk:b", "value": "aGVsbG8=", "base64": true}),
        serde_json::json!({"key": "bulk:c", "value": "3", "expiration_ttl": 600}),
    ];
    // Enough keys to need more than one List page.
    entries.extend(
        (0..1500).map(|i| serde_json::json!({"key": format!("many:{i:04}"), "value": "v"})),
    );
    let put_file = dir.path().join("put.json");
    std::fs::write(&put_file, serde_json::to_string(&entries).unwrap()).unwrap();
    let bulk = kv(endpoint, &["bulk", "put", put_file.to_str().unwrap()]).await;
    assert_eq!(bulk.code, 0, "{}", bulk.stderr);

    let decoded = kv(endpoint, &["get", "bulk:b"]).await;
    assert_eq!(decoded.stdout, "hello");

    let listed = kv(endpoint, &["list", "--prefix", "bulk:"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        listed[0],
        serde_json::json!({"name": "bulk:a", "metadata": {"m": true}})
    );
    assert_eq!(listed[1], serde_json::json!({"name": "bulk:b"}));
    assert_eq!(listed[2]["name"], "bulk:c");
    assert!(listed[2]["expiration"].as_i64().is_some());

    let all = kv(endpoint, &["list"]).await;
    let all: Vec<serde_json::Value> = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(all.len(), 1503);

    let delete_file = dir.path().join("delete.json");
    std::fs::write(&delete_file, r#"["bulk:a", {"name": "bulk:b"}]"#).unwrap();
    let deleted = kv(endpoint, &["bulk", "delete", delete_file.to_str().unwrap()]).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let remaining = kv(endpoint, &["list", "--prefix", "bulk:"]).await;
    let remaining: serde_json::Value = serde_json::from_str(&remaining.stdout).unwrap();
    assert_eq!(remaining.as_array().unwrap().len(), 1);
    assert_eq!(remaining[0]["name"], "bulk:c");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"[{"key": "x"}]"#).unwrap();
    let refused = kv(endpoint, &["bulk", "put", broken.to_str().unwrap()]).await;
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("value"), "{}", refused.stderr);
    server.stop().await;
}
