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

    let absent = kv(endpoint, &["patch", "config:patch", r#"{"a":1}"#]).await;
    assert_ne!(absent.code, 0);
    assert!(
        absent.stderr.contains("does not exist"),
        "{}",
        absent.stderr
    );
    let created = kv(
        endpoint,
        &[
            "patch",
            "config:patch",
            r#"{"theme":"light","maxItems":10}"#,
            "--create",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(created.stderr.contains("created"), "{}", created.stderr);
    let patched = kv(
        endpoint,
        &["patch", "config:patch", r#"{"maxItems":20,"theme":null}"#],
    )
    .await;
    assert_eq!(patched.code, 0, "{}", patched.stderr);
    let value: serde_json::Value = serde_json::from_str(&patched.stdout).unwrap();
    assert_eq!(value, serde_json::json!({"maxItems": 20}));
    let stale = kv(
        endpoint,
        &["patch", "config:patch", r#"{"a":1}"#, "--if-version", "1"],
    )
    .await;
    assert_ne!(stale.code, 0, "{}", stale.stderr);

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

/// Runs `tierkv kv ARGS…` against `endpoint` and returns its exit code,
/// its peak resident memory in bytes and its stderr.
///
/// The peak is the child's `VmHWM`, read from `/proc` every 10 ms until it
/// exits (a high-water mark, so only growth in its last 10 ms could be
/// missed). `wait4`'s `ru_maxrss` would not do: after a vfork-style spawn it
/// starts from the parent's peak, which here holds the server and the file.
async fn kv_peak_memory(endpoint: &str, args: &[&str]) -> (i32, u64, String) {
    let args: Vec<String> = std::iter::once("kv")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let endpoint = endpoint.to_string();
    tokio::task::spawn_blocking(move || {
        let stderr_file = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(BINARY)
            .args(&args)
            .env("TIERKV_ENDPOINT", endpoint)
            // Measure what the client holds, not what jemalloc keeps cached:
            // freed pages go back to the system at once instead of after the
            // binary's one-second decay.
            .env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
            .stdout(std::process::Stdio::null())
            .stderr(stderr_file.reopen().unwrap())
            .spawn()
            .expect("run tierkv");
        let status_path = format!("/proc/{}/status", child.id());
        let mut peak_kib = 0u64;
        let status = loop {
            if let Ok(status) = std::fs::read_to_string(&status_path) {
                let hwm = status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmHWM:"))
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok());
                peak_kib = peak_kib.max(hwm.unwrap_or(0));
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let stderr = std::fs::read_to_string(stderr_file.path()).unwrap();
        assert!(peak_kib > 0, "VmHWM was read");
        (status.code().unwrap_or(-1), peak_kib * 1024, stderr)
    })
    .await
    .unwrap()
}

/// A wrangler bulk put file of `keys` entries of about 220 bytes, with
/// metadata; returns its size.
fn write_bulk_put_file(path: &std::path::Path, prefix: &str, keys: usize) -> u64 {
    let value = "v".repeat(160);
    let mut text = String::with_capacity(keys * 220);
    text.push('[');
    for index in 0..keys {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"key":"{prefix}{index:06}","value":"{value}","metadata":{{"n":{index}}}}}"#
        ));
    }
    text.push(']');
    std::fs::write(path, &text).unwrap();
    text.len() as u64
}

/// Bulk put and bulk delete stream their file: the client's peak memory does
/// not grow with the file (10,000 keys, then 600,000 keys in 131 MB), and
/// stays well under the size of the larger file. Reading the whole file took
/// about 20 times its size.
#[tokio::test]
async fn bulk_files_stream_in_bounded_memory() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let mut client = server.client.clone();

    // One batch's worth: the peak of a file that is a single batch.
    let small_file = dir.path().join("small.json");
    let small_size = write_bulk_put_file(&small_file, "one:", 10_000);
    let (code, one_batch_peak, stderr) =
        kv_peak_memory(&endpoint, &["bulk", "put", small_file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");

    let put_file = dir.path().join("put.json");
    let file_size = write_bulk_put_file(&put_file, "stream:", 600_000);
    let (code, peak, stderr) =
        kv_peak_memory(&endpoint, &["bulk", "put", put_file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "bulk put: {small_size}-byte file (one batch) peaked at {one_batch_peak} bytes; \
         {file_size}-byte file (60 batches) at {peak} bytes"
    );
    // Reading the whole file cost about 20 times its size; streaming keeps
    // 60 batches near one batch's peak (the child runs with jemalloc's
    // page caching off, so the peak is what the client holds).
    assert!(
        peak < one_batch_peak + one_batch_peak / 4,
        "60 batches peaked at {peak} bytes, one batch at {one_batch_peak}"
    );
    assert!(
        peak < file_size * 3 / 4,
        "a {file_size}-byte file peaked at {peak} bytes"
    );
    for key in ["stream:000000", "stream:123456", "stream:599999"] {
        assert!(exists(&mut client, key).await, "{key}");
    }

    let delete_file = dir.path().join("delete.json");
    let keys: Vec<String> = (0..600_000)
        .map(|index| format!("stream:{index:06}"))
        .collect();
    std::fs::write(&delete_file, serde_json::to_string(&keys).unwrap()).unwrap();
    let (code, delete_peak, stderr) = kv_peak_memory(
        &endpoint,
        &["bulk", "delete", delete_file.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    eprintln!("bulk delete: 600,000 keys peaked at {delete_peak} bytes");
    // Deleting holds less per batch than writing.
    assert!(
        delete_peak < one_batch_peak + one_batch_peak / 4,
        "deleting 600,000 keys peaked at {delete_peak} bytes, one put batch at {one_batch_peak}"
    );
    assert!(!exists(&mut client, "stream:123456").await);
    assert!(list_all(&mut client, "stream:", 1000).await.is_empty());
    server.stop().await;
}

/// Runs `tierkv cache ARGS…` against `endpoint`.
async fn cache(endpoint: &str, args: &[&str]) -> Outcome {
    let args = std::iter::once("cache")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    tierkv(args, Some(endpoint.to_string())).await
}

/// `tierkv cache put / get / invalidate / purge`: the value on stdout, the
/// tier on stderr, exit code 1 on a miss, 2 with the violation on bad input.
#[tokio::test]
async fn cache_commands() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();

    let miss = cache(endpoint, &["get", "cache:x"]).await;
    assert_eq!(miss.code, 1, "{}", miss.stderr);

    let put = cache(endpoint, &["put", "cache:x", "hello", "--ttl", "300"]).await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    let got = cache(endpoint, &["get", "cache:x"]).await;
    assert_eq!((got.code, got.stdout.as_str()), (0, "hello"));
    assert_eq!(got.stderr.trim(), "tier: MEMORY");

    let json = cache(endpoint, &["put", "cache:j", r#"{"a":[1]}"#, "--json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let got = cache(endpoint, &["get", "cache:j"]).await;
    assert_eq!(got.stdout, "{\"a\":[1]}\n");

    let invalidated = cache(endpoint, &["invalidate", "cache:x"]).await;
    assert_eq!(invalidated.stdout.trim(), r#"{"existed":true}"#);
    assert_eq!(cache(endpoint, &["get", "cache:x"]).await.code, 1);

    // Without --expected-keys: a dry run that says how many.
    let counted = cache(endpoint, &["purge", "cache:"]).await;
    assert_eq!(counted.code, 0, "{}", counted.stderr);
    assert_eq!(counted.stdout.trim(), r#"{"listed":1,"more":false}"#);
    assert!(
        counted.stderr.contains("--expected-keys 1"),
        "{}",
        counted.stderr
    );
    assert_eq!(cache(endpoint, &["get", "cache:j"]).await.code, 0);
    let wrong = cache(endpoint, &["purge", "cache:", "--expected-keys", "2"]).await;
    // FAILED_PRECONDITION: exit code 3, with the ErrorInfo reason rendered.
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("expected_keys = 1")
            && wrong.stderr.contains("[FAILED_PRECONDITION]")
            && wrong.stderr.contains("reason: EXPECTED_KEYS_MISMATCH"),
        "{}",
        wrong.stderr
    );
    let purged = cache(endpoint, &["purge", "cache:", "--expected-keys", "1"]).await;
    assert_eq!(
        purged.stdout.trim(),
        r#"{"more":false,"purged":1,"skipped":0}"#
    );
    assert_eq!(cache(endpoint, &["get", "cache:j"]).await.code, 1);

    let bad = cache(endpoint, &["put", "cache:x", "v", "--memory-ttl", "0"]).await;
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("memory_ttl is 0s; it must be positive"),
        "{}",
        bad.stderr
    );
    server.stop().await;
}

/// `tierkv cache get` of a key under an origin prefix: the origin's body on
/// stdout, `tier: ORIGIN` then `tier: MEMORY` on stderr; an origin's 404 is
/// exit code 1.
#[tokio::test]
async fn cache_get_reads_through_an_origin() {
    use common::origin::{Reply, TestOrigin};
    let origin = TestOrigin::start().await;
    origin.respond("/users", Reply::ok("[\"ada\"]").content_type("text/plain"));
    let server = start_with(|config| {
        config.cache.origins = vec![origin.origin_config("cache:api:", "/{key}")];
    })
    .await;
    let endpoint = server.server.endpoint();
    let first = cache(&endpoint, &["get", "cache:api:users"]).await;
    assert_eq!(
        (first.code, first.stdout.as_str()),
        (0, "[\"ada\"]"),
        "{}",
        first.stderr
    );
    assert_eq!(first.stderr.trim(), "tier: ORIGIN");
    let second = cache(&endpoint, &["get", "cache:api:users"]).await;
    assert_eq!(second.stderr.trim(), "tier: MEMORY");
    let missing = cache(&endpoint, &["get", "cache:api:nobody"]).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert_eq!(origin.count(), 2);
    server.stop().await;
}

/// Runs `tierkv auth ARGS…` with `stdin` as its standard input.
fn auth_command(args: &[&str], stdin: &str) -> Outcome {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .arg("auth")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tierkv");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `tierkv auth new-token` makes tokens of at least 128 random bits, which
/// `hash-token` accepts; short or low-entropy tokens (human-chosen ones) are
/// refused without `--allow-weak`, so their unsalted hash never reaches a
/// configuration by accident.
#[test]
fn hash_token_refuses_weak_tokens_unless_allowed() {
    use base64::Engine as _;
    let made = auth_command(&["new-token"], "");
    assert_eq!(made.code, 0, "{}", made.stderr);
    let field = |name: &str| {
        made.stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {}", made.stdout))
    };
    let token = field("token:");
    let hash = field("token_sha256:");
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.strip_prefix("tkv_").expect("tkv_ prefix"))
        .expect("base64url");
    assert!(random.len() * 8 >= 128, "{} random bits", random.len() * 8);
    let hashed = auth_command(&["hash-token"], &format!("{token}\n"));
    assert_eq!(hashed.code, 0, "{}", hashed.stderr);
    assert_eq!(hashed.stdout.trim(), hash);
    // 160 random bits in hex (`openssl rand -hex 20`) are strong too.
    let hex = "3f9a0c41d2e87b65a0f1c93e4d5b2a7786e1f0c9";
    assert_eq!(auth_command(&["hash-token"], hex).code, 0);

    for weak in [
        "hunter2",
        "correct horse battery staple",
        "Summer2026!Summer2026!",
        &"a".repeat(64),
        "abababababababababababababababababababab",
        "0123456789abcdef",
    ] {
        let refused = auth_command(&["hash-token"], &format!("{weak}\n"));
        assert_eq!(refused.code, 2, "{weak:?} was accepted");
        assert!(refused.stdout.is_empty(), "{weak:?}: {}", refused.stdout);
        assert!(
            refused.stderr.contains("--allow-weak") && refused.stderr.contains("new-token"),
            "{weak:?}: {}",
            refused.stderr
        );
        assert!(!refused.stderr.contains(weak), "the token is echoed");
    }
    let allowed = auth_command(&["hash-token", "--allow-weak"], "hunter2\n");
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert_eq!(
        allowed.stdout.trim(),
        "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
    );
}
