//! The `tierkv` command line's options people reach for (issue 18), through
//! the real binary against a real server: `kv put`'s preconditions and value
//! sources, `kv get --output`, `kv get-many`, `kv list` paging and streaming,
//! the exit code table, error rendering with the `google.rpc` details,
//! completions and the order of `--help`.
//!
//! `TIERKV_TEST_BINARY` runs the tests against another build of the binary
//! (an older one, to see which of them it fails).

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::*;
use tierkv::auth::{hash_token, AuthConfig, Permission, TokenConfig};

fn binary() -> String {
    std::env::var("TIERKV_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tierkv").into())
}

struct Outcome {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `tierkv ARGS…` off the async runtime (which serves the in-process
/// server) with `stdin` as its input and `TIERKV_ENDPOINT=endpoint`.
async fn run(endpoint: &str, args: &[&str], stdin: &[u8]) -> Outcome {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let endpoint = endpoint.to_string();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .args(&args)
            .env("TIERKV_ENDPOINT", endpoint)
            .env_remove("TIERKV_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tierkv");
        let mut input = child.stdin.take().unwrap();
        // A command that does not read stdin may exit first: a broken pipe is fine.
        let _ = input.write_all(&stdin);
        drop(input);
        let output = child.wait_with_output().unwrap();
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `tierkv kv ARGS…` against `endpoint`, with nothing on stdin.
async fn kv(endpoint: &str, args: &[&str]) -> Outcome {
    let args: Vec<&str> = std::iter::once("kv").chain(args.iter().copied()).collect();
    run(endpoint, &args, b"").await
}

/// `--if-version` and `--if-absent` reach the server's compare-and-set: a
/// failed one exits 3 and prints one line with ABORTED and the ErrorInfo
/// reason with the key's current version.
#[tokio::test]
async fn put_if_version_and_if_absent() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();

    let created = kv(endpoint, &["put", "cas:a", "one", "--if-absent"]).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let again = kv(endpoint, &["put", "cas:a", "two", "--if-absent"]).await;
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert!(again.stderr.contains("[ABORTED]"), "{}", again.stderr);

    let stale = kv(endpoint, &["put", "cas:a", "two", "--if-version", "99"]).await;
    assert_eq!(stale.code, 3, "{}", stale.stderr);
    let first_line = stale.stderr.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with("error: ") && first_line.ends_with("[ABORTED]"),
        "{}",
        stale.stderr
    );
    assert!(
        stale.stderr.contains("reason: VERSION_MISMATCH")
            && stale.stderr.contains("current_version=1"),
        "{}",
        stale.stderr
    );
    assert_eq!(kv(endpoint, &["get", "cas:a"]).await.stdout(), "one");

    let matched = kv(endpoint, &["put", "cas:a", "two", "--if-version", "1"]).await;
    assert_eq!(matched.code, 0, "{}", matched.stderr);
    assert_eq!(kv(endpoint, &["get", "cas:a"]).await.stdout(), "two");

    let both = kv(
        endpoint,
        &["put", "cas:a", "x", "--if-version", "1", "--if-absent"],
    )
    .await;
    assert_eq!(both.code, 2, "{}", both.stderr);
    server.stop().await;
}

/// The value of `kv put` from `--path FILE` (binary, byte for byte), from
/// stdin (`-`, here JSON), and from base64 (`--base64`).
#[tokio::test]
async fn put_value_from_file_stdin_and_base64() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    let dir = tempfile::tempdir().unwrap();

    let binary_value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &binary_value).unwrap();
    let put = kv(
        endpoint,
        &["put", "file:bin", "--path", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    let got = kv(endpoint, &["get", "file:bin"]).await;
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(got.stdout == binary_value, "the bytes came back changed");

    let piped = run(
        endpoint,
        &["kv", "put", "stdin:json", "-", "--json"],
        br#"{"items": [1, 2, 3]}"#,
    )
    .await;
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    let got = kv(endpoint, &["get", "stdin:json"]).await;
    assert_eq!(got.stdout(), "{\"items\":[1,2,3]}\n");

    let encoded = kv(endpoint, &["put", "b64", "AAEC/w==", "--base64"]).await;
    assert_eq!(encoded.code, 0, "{}", encoded.stderr);
    assert_eq!(
        kv(endpoint, &["get", "b64"]).await.stdout,
        vec![0, 1, 2, 255]
    );

    let bad = kv(endpoint, &["put", "b64", "not base64!", "--base64"]).await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("base64"), "{}", bad.stderr);
    let missing = kv(endpoint, &["put", "k", "--path", "/nonexistent/file"]).await;
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("/nonexistent/file"),
        "{}",
        missing.stderr
    );
    server.stop().await;
}

/// Each row of the exit code table: not found 1, invalid input 2 (with the
/// field violation rendered under the one line), precondition 3,
/// unavailable 4, permission 5.
#[tokio::test]
async fn exit_codes_and_error_rendering() {
    let server = start_with(|config| {
        config.auth = AuthConfig {
            tokens: vec![TokenConfig {
                name: "reader".into(),
                token_sha256: hash_token("tkv_reader-secret-0123456789"),
                token_sha256_file: None,
                prefixes: vec!["orders:".into()],
                permissions: vec![Permission::Read],
            }],
        };
    })
    .await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    let token = ["--token", "tkv_reader-secret-0123456789"];

    let missing = kv(endpoint, &["get", "orders:none", token[0], token[1]]).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);

    let long_key = format!("orders:{}", "k".repeat(600));
    let invalid = kv(endpoint, &["get", &long_key, token[0], token[1]]).await;
    assert_eq!(invalid.code, 2, "{}", invalid.stderr);
    let mut lines = invalid.stderr.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.ends_with("[INVALID_ARGUMENT]"), "{}", invalid.stderr);
    assert!(
        lines.any(|line| line.starts_with("  key: ") && line.contains("512")),
        "the field violation with its limit: {}",
        invalid.stderr
    );

    let denied = kv(endpoint, &["put", "orders:1", "v", token[0], token[1]]).await;
    assert_eq!(denied.code, 5, "{}", denied.stderr);
    assert!(
        denied.stderr.contains("[PERMISSION_DENIED]"),
        "{}",
        denied.stderr
    );
    let unauthenticated = kv(endpoint, &["get", "orders:1"]).await;
    assert_eq!(unauthenticated.code, 5, "{}", unauthenticated.stderr);

    // Nothing listens on port 1.
    let unreachable = kv("http://127.0.0.1:1", &["get", "k"]).await;
    assert_eq!(unreachable.code, 4, "{}", unreachable.stderr);
    server.stop().await;
}

/// `kv get-many` reads several keys in one call: JSON by default (missing
/// keys with `found: false`, exit code 1), or a table; `kv get --output json`
/// prints the value with its metadata and version.
#[tokio::test]
async fn get_many_and_get_output() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    assert_eq!(kv(endpoint, &["put", "m:a", "alpha"]).await.code, 0);
    assert_eq!(
        kv(endpoint, &["put", "m:b", r#"{"n":2}"#, "--json"])
            .await
            .code,
        0
    );

    let all = kv(endpoint, &["get-many", "m:a", "m:b"]).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    let json: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(json[0]["key"], "m:a");
    assert_eq!(json[0]["value"], "alpha");
    assert_eq!(json[1]["value"], serde_json::json!({"n": 2}));
    assert!(json[1]["version"].as_u64().unwrap() > 0, "{json}");

    let some = kv(endpoint, &["get-many", "m:a", "m:none"]).await;
    assert_eq!(some.code, 1, "{}", some.stderr);
    let json: serde_json::Value = serde_json::from_slice(&some.stdout).unwrap();
    assert_eq!(json[1]["found"], false);
    assert_eq!(json[1]["key"], "m:none");

    let table = kv(endpoint, &["get-many", "m:a", "m:b", "--output", "table"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<String> = table.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout());
    assert!(lines[0].starts_with("KEY"), "{}", lines[0]);
    assert!(
        lines[1].starts_with("m:a ") && lines[1].ends_with("alpha"),
        "{}",
        lines[1]
    );

    let json_get = kv(endpoint, &["get", "m:a", "--output", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&json_get.stdout).unwrap();
    assert_eq!(json["value"], "alpha");
    assert_eq!(json["version"], json_get_version(&all));
    let raw = kv(endpoint, &["get", "m:a", "--output", "raw"]).await;
    assert_eq!(raw.stdout(), "alpha");
    server.stop().await;
}

/// The version `kv get-many`'s first result printed.
fn json_get_version(outcome: &Outcome) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_slice(&outcome.stdout).unwrap();
    json[0]["version"].clone()
}

/// `kv list --limit N` prints one page and its next cursor, `--cursor`
/// continues from it, `--keys-only` prints names one per line.
#[tokio::test]
async fn list_pages_with_limit_and_cursor() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    for index in 0..5 {
        let key = format!("page:{index}");
        assert_eq!(kv(endpoint, &["put", &key, "v"]).await.code, 0);
    }
    let first = kv(endpoint, &["list", "--prefix", "page:", "--limit", "2"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["name"], "page:1");
    let cursor = first
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("next cursor: "))
        .unwrap_or_else(|| panic!("no cursor: {}", first.stderr))
        .to_string();

    let second = kv(
        endpoint,
        &[
            "list",
            "--prefix",
            "page:",
            "--limit",
            "2",
            "--cursor",
            &cursor,
            "--keys-only",
        ],
    )
    .await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stdout(), "page:2\npage:3\n");
    assert!(second.stderr.contains("next cursor: "), "{}", second.stderr);

    let all = kv(endpoint, &["list", "--prefix", "page:", "--keys-only"]).await;
    assert_eq!(all.stdout(), "page:0\npage:1\npage:2\npage:3\npage:4\n");
    assert!(!all.stderr.contains("cursor"), "{}", all.stderr);
    for limit in ["0", "1001"] {
        let refused = kv(endpoint, &["list", "--limit", limit]).await;
        assert_eq!(refused.code, 2, "--limit {limit}: {}", refused.stderr);
    }
    let none = kv(endpoint, &["list", "--prefix", "nothing:"]).await;
    let none: Vec<serde_json::Value> = serde_json::from_slice(&none.stdout).unwrap();
    assert!(none.is_empty());
    server.stop().await;
}

/// Writes `count` keys `{prefix}{index:05}` with 200 bytes of metadata each.
async fn write_padded_keys(server: &TestServer, prefix: &str, count: usize) {
    let metadata: serde_json::Value =
        serde_json::from_str(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(200))).unwrap();
    let mut client = server.client.clone();
    let keys: Vec<usize> = (0..count).collect();
    for chunk in keys.chunks(100) {
        let mutations = chunk
            .iter()
            .map(|index| {
                let mut request = put_text(&format!("{prefix}{index:05}"), "v");
                request.metadata = Some(tierkv::api::convert::json_to_proto(metadata.clone()));
                tierkv::proto::v1::Mutation {
                    operation: Some(tierkv::proto::v1::mutation::Operation::Put(request)),
                }
            })
            .collect();
        client
            .batch_write(tierkv::proto::v1::BatchWriteRequest { mutations })
            .await
            .unwrap();
    }
}

/// `kv list | head`: when the reader closes the pipe, the listing stops with
/// exit code 6 and no error message (the reader stopped on purpose).
#[tokio::test]
async fn list_into_a_closed_pipe_stops_quietly() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    write_padded_keys(&server, "head:", 2_500).await;
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .args(["kv", "list", "--prefix", "head:"])
            .env("TIERKV_ENDPOINT", &endpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tierkv");
        let mut stdout = child.stdout.take().unwrap();
        let mut start = [0u8; 64];
        stdout.read_exact(&mut start).unwrap();
        drop(stdout);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (child.wait().unwrap().code(), stderr)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    server.stop().await;
}

/// `kv list` prints each page as it arrives: with its stdout unread (the pipe
/// full of the first page), the server stops; the listing then ends with
/// exit code 4, and the keys of the first page were printed. A listing
/// collected before printing would have read every page first and exited 0.
#[tokio::test]
async fn list_streams_page_by_page() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    // 2,500 keys with 200 bytes of metadata each: a page (1,000 keys) prints
    // about 250 KB, more than a pipe holds.
    write_padded_keys(&server, "stream:", 2_500).await;
    let mut child = Command::new(binary())
        .args(["kv", "list", "--prefix", "stream:"])
        .env("TIERKV_ENDPOINT", &endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tierkv");
    let mut stdout = child.stdout.take().unwrap();
    // The first bytes of the listing: the command is now printing.
    let mut start = [0u8; 64];
    let read = tokio::task::spawn_blocking(move || {
        stdout.read_exact(&mut start).unwrap();
        stdout
    });
    let mut stdout = read.await.unwrap();
    server.stop().await;
    let output = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (child.wait().unwrap().code(), rest, stderr)
    })
    .await
    .unwrap();
    let (code, rest, stderr) = output;
    assert_eq!(code, Some(4), "{stderr}");
    let printed = String::from_utf8_lossy(&rest);
    assert!(
        printed.contains("stream:00999"),
        "the first page was printed"
    );
    assert!(
        !printed.contains("stream:02499"),
        "the last page cannot have been read"
    );
}

/// `--help` lists a command's own options first, the connection options
/// after them under their own heading; `tierkv --help` ends with the exit
/// code table, the same as docs/cli.md's.
#[tokio::test]
async fn help_order_and_exit_code_table() {
    let help = run("http://127.0.0.1:1", &["kv", "put", "--help"], b"").await;
    assert_eq!(help.code, 0, "{}", help.stderr);
    let text = help.stdout();
    let own = text.find("--if-version").expect("--if-version in help");
    let metadata = text.find("--metadata").expect("--metadata in help");
    let heading = text.find("Connection options:").expect("a heading");
    let endpoint = text.find("--endpoint").expect("--endpoint in help");
    assert!(
        own < heading && metadata < heading && heading < endpoint,
        "{text}"
    );

    let top = run("http://127.0.0.1:1", &["--help"], b"").await;
    assert!(
        top.stdout().contains(tierkv::cli::EXIT_CODES),
        "{}",
        top.stdout()
    );
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    assert!(
        docs.contains(tierkv::cli::EXIT_CODES),
        "docs/cli.md has the table of `tierkv --help`"
    );
}

/// `tierkv completions bash|zsh|fish` prints a script that knows the
/// commands and their options.
#[tokio::test]
async fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = run("http://127.0.0.1:1", &["completions", shell], b"").await;
        assert_eq!(script.code, 0, "{shell}: {}", script.stderr);
        let text = script.stdout();
        assert!(
            text.contains("get-many") && text.contains("if-version"),
            "{shell}: {text}"
        );
    }
    let unknown = run("http://127.0.0.1:1", &["completions", "tcsh"], b"").await;
    assert_eq!(unknown.code, 2);
}

/// `--output table` where a person reads a list: `admin namespaces`,
/// `session list` and `admin stats` print a header and one aligned line per
/// item; JSON stays the default.
#[tokio::test]
async fn lists_print_as_tables() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();

    let namespaces = run(endpoint, &["admin", "namespaces", "--output", "table"], b"").await;
    assert_eq!(namespaces.code, 0, "{}", namespaces.stderr);
    let text = namespaces.stdout();
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("PREFIX") && header.contains("ESTIMATED_KEYS"),
        "{text}"
    );
    let json = run(endpoint, &["admin", "namespaces"], b"").await;
    let json: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(text.lines().count(), json.len() + 1, "{text}");

    for _ in 0..2 {
        let created = run(endpoint, &["session", "create", "ada"], b"").await;
        assert_eq!(created.code, 0, "{}", created.stderr);
    }
    let sessions = run(
        endpoint,
        &["session", "list", "ada", "--output", "table"],
        b"",
    )
    .await;
    assert_eq!(sessions.code, 0, "{}", sessions.stderr);
    let lines: Vec<String> = sessions.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{}", sessions.stdout());
    assert!(lines[0].starts_with("SESSION_ID"), "{}", lines[0]);
    assert!(!sessions.stdout().contains("tkv"), "no token in a listing");

    let stats = run(
        endpoint,
        &["admin", "stats", "--prefix", "tierkv_", "--output", "table"],
        b"",
    )
    .await;
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let text = stats.stdout();
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.lines().count() > 1, "{text}");
    assert!(
        text.lines().skip(1).all(|line| line.starts_with("tierkv_")),
        "{text}"
    );
    server.stop().await;
}

/// `admin backup` waits with a spinner on a terminal (here a pseudo-terminal
/// made by `script`), and prints nothing but its JSON result when stderr is
/// a pipe.
#[tokio::test]
async fn progress_only_on_a_terminal() {
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().to_path_buf();
    let server = start_with(|config| config.backup_dir = Some(backup_dir)).await;
    let endpoint = server.server.endpoint();
    let endpoint = endpoint.as_str();
    // Enough data that the backup takes a moment.
    let mut client = server.client.clone();
    for chunk in 0..20 {
        let mutations = (0..500)
            .map(|index| tierkv::proto::v1::Mutation {
                operation: Some(tierkv::proto::v1::mutation::Operation::Put(put_text(
                    &format!("bk:{chunk}:{index}"),
                    &"v".repeat(1000),
                ))),
            })
            .collect();
        client
            .batch_write(tierkv::proto::v1::BatchWriteRequest { mutations })
            .await
            .unwrap();
    }

    let piped = run(endpoint, &["admin", "backup", "piped"], b"").await;
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert!(
        piped.stderr.is_empty(),
        "no progress in a pipe: {:?}",
        piped.stderr
    );
    let json: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(json["name"], "piped");

    let command = format!("{} admin backup on-a-terminal", binary());
    let endpoint = endpoint.to_string();
    let terminal = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("TIERKV_ENDPOINT", endpoint)
            .stdin(Stdio::null())
            .output()
            .expect("run script")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&terminal.stdout);
    assert!(terminal.status.success(), "{text}");
    assert!(text.contains("backing up the store"), "{text:?}");
    assert!(text.contains("\"on-a-terminal\""), "{text:?}");
    server.stop().await;
}
