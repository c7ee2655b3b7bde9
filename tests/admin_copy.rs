//! `tierkv admin copy` through the real binary: a RocksDB server holds KV
//! records (with TTLs, metadata, schema versions), a session and cache
//! entries; it stops; the copy moves everything into a fresh prefix of the
//! shared test etcd cluster; `tierkv serve` over etcd then answers every
//! record through the client, the session validates, and what had expired
//! was not copied. Also: a source held by a running server is refused, a
//! target holding other data is refused, and a copy killed half-way resumes
//! from its checkpoint and ends complete.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::etcd;
use common::process::{server_command, spawn_server, ServerProcess, BINARY};
use common::{connect, connect_sessions, get, list_all};
use tierkv::proto::v1 as pb;
use tonic::Code;

use pb::cache_service_client::CacheServiceClient;

/// The server-state name the copy keeps its checkpoint under.
const CHECKPOINT_NAME: &str = "admin_copy_checkpoint";

fn stop(mut server: ServerProcess) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGTERM);
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", server.logs());
}

/// A configuration file of the RocksDB store in `data_dir`.
fn rocks_config(dir: &Path, data_dir: &Path) -> PathBuf {
    let path = dir.join("from.toml");
    std::fs::write(
        &path,
        format!("data_dir = {:?}\n", data_dir.to_str().unwrap()),
    )
    .unwrap();
    path
}

/// A configuration file of the shared etcd cluster under `prefix`, with the
/// test cluster's limits.
fn etcd_config(dir: &Path, prefix: &str) -> PathBuf {
    let endpoints: Vec<String> = etcd::shared()
        .endpoints()
        .iter()
        .map(|endpoint| format!("{endpoint:?}"))
        .collect();
    let path = dir.join(format!("to-{}.toml", prefix.replace('/', "_")));
    std::fs::write(
        &path,
        format!(
            "[engine]\nkind = \"etcd\"\n\n[engine.etcd]\nendpoints = [{}]\nprefix = {prefix:?}\n\
             max_txn_ops = {}\nmax_request_bytes = {}\n",
            endpoints.join(", "),
            etcd::TEST_MAX_TXN_OPS,
            etcd::TEST_MAX_REQUEST_BYTES
        ),
    )
    .unwrap();
    path
}

fn copy_command(from: &Path, to: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["admin", "copy", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(extra)
        .stdin(Stdio::null());
    command
}

fn run_copy(from: &Path, to: &Path, extra: &[&str]) -> (Output, String, String) {
    let output = copy_command(from, to, extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output, stdout, stderr)
}

/// Starts the real binary over `data_dir`, writes `key` = `text`, and stops
/// it: a stopped embedded store to copy from.
async fn stopped_store_with(data_dir: &Path, key: &str, text: &str) {
    let server = spawn_server(server_command(data_dir));
    connect(&server.endpoint())
        .await
        .put(text_put(key, text))
        .await
        .unwrap();
    stop(server);
}

/// `tierkv serve` over the shared etcd cluster under `prefix`, with the
/// temporary directory it needs (kept alive by the caller).
fn serve_over_etcd(prefix: &str) -> (etcd::Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let served = etcd::spawn(etcd::server_command(
        &etcd::shared().endpoints(),
        prefix,
        dir.path(),
    ));
    (served, dir)
}

fn summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

fn text_put(key: &str, text: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: Some(pb::put_request::Value::Text(text.into())),
        ..Default::default()
    }
}

fn duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn json_value(value: serde_json::Value) -> prost_types::Value {
    tierkv_client::convert::json_to_proto(value)
}

/// Everything a RocksDB store holds arrives in etcd: KV records of every
/// value kind with metadata, expiry and schema versions, a value over the
/// 1 KiB inline limit, a session (it validates on the etcd server) and
/// cache entries (answered from the store tier); a record that had expired
/// is left behind. Versions are new. Running the copy again changes nothing.
#[tokio::test]
async fn copy_moves_an_embedded_store_into_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = spawn_server(server_command(&data_dir));
    let mut kv = connect(&server.endpoint()).await;
    let big = "x".repeat(200_000);
    let mut with_ttl = text_put("user:ttl", "lives an hour");
    with_ttl.expiration = Some(pb::put_request::Expiration::Ttl(duration(3600)));
    let mut with_metadata = pb::PutRequest {
        key: "user:json".into(),
        value: Some(pb::put_request::Value::Json(json_value(
            serde_json::json!({"name": "ada", "n": [1, 2]}),
        ))),
        metadata: Some(json_value(serde_json::json!({"owner": "team-a"}))),
        schema_version: 3,
        ..Default::default()
    };
    with_metadata.expiration = Some(pb::put_request::Expiration::Ttl(duration(7200)));
    let puts = vec![
        text_put("user:plain", "hello"),
        with_ttl,
        with_metadata,
        pb::PutRequest {
            key: "feature:bytes".into(),
            value: Some(pb::put_request::Value::Bytes(vec![0, 1, 2, 255])),
            ..Default::default()
        },
        text_put("feature:big", &big),
        text_put("default-namespace-key", "in the default namespace"),
    ];
    let mut before = Vec::new();
    for put in puts {
        let key = put.key.clone();
        kv.put(put).await.unwrap();
        before.push(kv.get(get(&key)).await.unwrap().into_inner());
    }
    for n in 0..150 {
        kv.put(text_put(
            &format!("user:many:{n:04}"),
            &format!("value {n}"),
        ))
        .await
        .unwrap();
    }
    // Expires in a second; waited for below, before the copy.
    let mut short = text_put("user:short", "expires");
    short.expiration = Some(pb::put_request::Expiration::Ttl(duration(1)));
    kv.put(short).await.unwrap();

    let mut sessions = connect_sessions(&server.endpoint()).await;
    let session = sessions
        .create(pb::CreateSessionRequest {
            user_id: "ada".into(),
            ttl: Some(duration(3600)),
            data: Some(prost_types::Struct {
                fields: [("cart".to_string(), json_value(serde_json::json!(["book"])))].into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut cache = CacheServiceClient::connect(server.endpoint())
        .await
        .unwrap();
    for n in 0..3 {
        cache
            .put(pb::CachePutRequest {
                key: format!("cache:page:{n}"),
                value: Some(pb::cache_put_request::Value::Text(format!("page {n}"))),
                store_ttl: Some(duration(3600)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while kv.get(get("user:short")).await.unwrap().into_inner().found {
        assert!(Instant::now() < deadline, "user:short never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(server);

    let prefix = etcd::unique_prefix("copy");
    let from = rocks_config(dir.path(), &data_dir);
    let to = etcd_config(dir.path(), &prefix);
    let (output, stdout, stderr) = run_copy(&from, &to, &["--batch-size", "40"]);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report = summary(&stdout);
    // 6 records + 150 + the session (its record and its user index entry,
    // at least) + 3 cache entries.
    let copied = report["copied"].as_u64().unwrap();
    assert!(copied >= 6 + 150 + 1 + 3, "{report}");
    assert_eq!(report["done"], true, "{report}");
    assert!(stderr.contains("new version"), "{stderr}");

    let (served, _data_dir_2) = serve_over_etcd(&prefix);
    let mut kv = connect(&served.endpoint()).await;
    for old in &before {
        let new = kv.get(get(&old.key)).await.unwrap().into_inner();
        assert!(new.found, "{} was not copied", old.key);
        assert_eq!(new.value, old.value, "{}", old.key);
        assert_eq!(new.metadata, old.metadata, "{}", old.key);
        assert_eq!(new.expire_time, old.expire_time, "{}", old.key);
        assert_eq!(new.schema_version, old.schema_version, "{}", old.key);
    }
    let json = before
        .iter()
        .find(|reply| reply.key == "user:json")
        .unwrap();
    assert_eq!(json.schema_version, 3);
    assert!(json.metadata.is_some() && json.expire_time.is_some());
    for n in [0, 77, 149] {
        let reply = kv
            .get(get(&format!("user:many:{n:04}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.value,
            Some(pb::get_response::Value::Text(format!("value {n}")))
        );
    }
    assert!(
        !kv.get(get("user:short")).await.unwrap().into_inner().found,
        "an expired record was copied"
    );
    assert_eq!(list_all(&mut kv, "user:many:", 1000).await.len(), 150);

    let mut sessions = connect_sessions(&served.endpoint()).await;
    let found = sessions
        .get(pb::GetSessionRequest {
            token: session.token.clone(),
            touch: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.user_id, "ada");
    assert_eq!(found.data, session.data);
    assert_eq!(found.expire_time, session.expire_time);
    let last = if session.token.ends_with('A') {
        "B"
    } else {
        "A"
    };
    let wrong = format!("{}{last}", &session.token[..session.token.len() - 1]);
    let refused = sessions
        .get(pb::GetSessionRequest {
            token: wrong,
            touch: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused.code(), Code::NotFound | Code::Unauthenticated),
        "{refused:?}"
    );
    let mut cache = CacheServiceClient::connect(served.endpoint())
        .await
        .unwrap();
    let page = cache
        .get(pb::CacheGetRequest {
            key: "cache:page:1".into(),
            r#type: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.value,
        Some(pb::cache_get_response::Value::Text("page 1".into()))
    );
    assert_eq!(page.tier, pb::CacheTier::Store as i32);
    drop(served);

    // The copy is recorded complete: again, it writes nothing.
    let (output, stdout, stderr) = run_copy(&from, &to, &[]);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("already complete"), "{stderr}");
    assert_eq!(summary(&stdout)["copied"], copied);
}

/// A store a running server holds is refused with a message saying so (exit
/// 3), and nothing is written to the target.
#[tokio::test]
async fn copy_refuses_a_source_held_by_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = spawn_server(server_command(&data_dir));
    let mut kv = connect(&server.endpoint()).await;
    kv.put(text_put("user:a", "a")).await.unwrap();
    let prefix = etcd::unique_prefix("copy-held");
    let from = rocks_config(dir.path(), &data_dir);
    let to = etcd_config(dir.path(), &prefix);
    let (output, stdout, stderr) = run_copy(&from, &to, &[]);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("open in another process") && stderr.contains("stop that server"),
        "{stderr}"
    );
    assert_eq!(etcd_keys(&prefix).await.len(), 0);
    // The server was not disturbed.
    assert!(kv.get(get("user:a")).await.unwrap().into_inner().found);
    stop(server);
}

/// Every key etcd holds under `prefix` (keys only: values may be large).
async fn etcd_keys(prefix: &str) -> Vec<String> {
    let mut client = etcd_client::Client::connect(etcd::shared().endpoints(), None)
        .await
        .unwrap();
    let reply = client
        .get(
            prefix,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    reply
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).to_string())
        .collect()
}

/// The copy's checkpoint in the target, as JSON.
async fn checkpoint(prefix: &str) -> Option<serde_json::Value> {
    let key = etcd_keys(prefix)
        .await
        .into_iter()
        .find(|key| key.ends_with(CHECKPOINT_NAME))?;
    let mut client = etcd_client::Client::connect(etcd::shared().endpoints(), None)
        .await
        .unwrap();
    let reply = client.get(key, None).await.unwrap();
    let value = reply.kvs().first()?.value().to_vec();
    Some(serde_json::from_slice(&value).unwrap())
}

/// A copy killed (SIGKILL) half-way leaves a checkpoint that is not done;
/// the same command resumes after it and ends with every record copied. A
/// second source into the same target is refused (it holds a copy of
/// another store), and so is a target holding records of its own.
#[tokio::test]
async fn copy_killed_half_way_resumes_and_refuses_other_targets() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = spawn_server(server_command(&data_dir));
    let mut kv = connect(&server.endpoint()).await;
    const RECORDS: usize = 400;
    for n in 0..RECORDS {
        kv.put(text_put(&format!("user:{n:04}"), &format!("v{n}")))
            .await
            .unwrap();
    }
    stop(server);
    let prefix = etcd::unique_prefix("copy-resume");
    let from = rocks_config(dir.path(), &data_dir);
    let to = etcd_config(dir.path(), &prefix);

    // One record per batch, so that the copy takes a while to kill in.
    let mut child = copy_command(&from, &to, &["--batch-size", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(point) = checkpoint(&prefix).await {
            if point["copied"].as_u64().unwrap_or(0) >= 20 {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let interrupted = checkpoint(&prefix).await.unwrap();
    assert_eq!(interrupted["done"], false, "{interrupted}");
    let copied_before = interrupted["copied"].as_u64().unwrap();
    assert!(copied_before < RECORDS as u64, "{interrupted}");

    let (output, stdout, stderr) = run_copy(&from, &to, &[]);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("resuming after"), "{stderr}");
    // The batch in flight at the kill may be written twice, never skipped.
    let copied = summary(&stdout)["copied"].as_u64().unwrap();
    assert!(copied >= RECORDS as u64, "{stdout}");

    let (served, _data_dir_2) = serve_over_etcd(&prefix);
    let mut kv = connect(&served.endpoint()).await;
    let listed = list_all(&mut kv, "user:", 1000).await;
    let expected: Vec<String> = (0..RECORDS).map(|n| format!("user:{n:04}")).collect();
    assert_eq!(listed, expected);
    for n in [0, 19, 20, 21, 250, RECORDS - 1] {
        let reply = kv
            .get(get(&format!("user:{n:04}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.value,
            Some(pb::get_response::Value::Text(format!("v{n}"))),
            "user:{n:04}"
        );
    }
    // A target with records of its own (written through the etcd server)
    // and no copy is refused.
    let own_prefix = etcd::unique_prefix("copy-own");
    let (own, _data_dir_3) = serve_over_etcd(&own_prefix);
    connect(&own.endpoint())
        .await
        .put(text_put("user:mine", "mine"))
        .await
        .unwrap();
    drop(own);
    drop(served);
    let own_to = etcd_config(dir.path(), &own_prefix);
    let (output, _, stderr) = run_copy(&from, &own_to, &[]);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("already holds records") && stderr.contains("user:mine"),
        "{stderr}"
    );

    // Another source into the finished target is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other_data = other_dir.path().join("data");
    stopped_store_with(&other_data, "user:other", "x").await;
    let other_from = rocks_config(other_dir.path(), &other_data);
    let (output, _, stderr) = run_copy(&other_from, &to, &[]);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("copy of another store"), "{stderr}");
}

/// Batches fit the target's etcd limits: with etcd's defaults configured
/// (128 operations and 1.5 MiB per transaction), 300 small records and 30
/// records of 200 KB (out-of-line values, two operations each) arrive whole,
/// in batches the copy split to fit; a single record larger than one
/// request is refused naming it and the flag that raises the limit (exit
/// 3), and the copy resumes once the limit is raised.
#[tokio::test]
async fn copy_batches_fit_the_etcd_limits_and_refuse_a_record_over_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = spawn_server(server_command(&data_dir));
    let mut kv = connect(&server.endpoint()).await;
    for n in 0..300 {
        kv.put(text_put(&format!("feature:small:{n:03}"), &format!("s{n}")))
            .await
            .unwrap();
    }
    let large = |n: usize| format!("{n:03}").repeat(70_000);
    for n in 0..30 {
        kv.put(text_put(&format!("feature:large:{n:03}"), &large(n)))
            .await
            .unwrap();
    }
    // 2 MiB: over a 1.5 MiB request on its own.
    kv.put(text_put("user:huge", &"h".repeat(2 << 20)))
        .await
        .unwrap();
    stop(server);

    let prefix = etcd::unique_prefix("copy-limits");
    let from = rocks_config(dir.path(), &data_dir);
    let to = etcd_config(dir.path(), &prefix);
    let defaults = std::fs::read_to_string(&to)
        .unwrap()
        .replace(
            &format!("max_txn_ops = {}", etcd::TEST_MAX_TXN_OPS),
            "max_txn_ops = 128",
        )
        .replace(
            &format!("max_request_bytes = {}", etcd::TEST_MAX_REQUEST_BYTES),
            "max_request_bytes = 1572864",
        );
    std::fs::write(&to, defaults).unwrap();
    let (output, stdout, stderr) = run_copy(&from, &to, &["--batch-size", "1000"]);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("\"user:huge\"") && stderr.contains("--max-request-bytes"),
        "{stderr}"
    );
    // Namespaces go in order: "feature:" was done before "user:".
    let point = checkpoint(&prefix).await.unwrap();
    assert_eq!(point["copied"], 330, "{point}");

    let raised = std::fs::read_to_string(&to)
        .unwrap()
        .replace("max_request_bytes = 1572864", "max_request_bytes = 4194304");
    std::fs::write(&to, raised).unwrap();
    let (output, stdout, stderr) = run_copy(&from, &to, &[]);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(summary(&stdout)["copied"], 331, "{stdout}");

    let (served, _data_dir_2) = serve_over_etcd(&prefix);
    let mut kv = connect(&served.endpoint()).await;
    assert_eq!(list_all(&mut kv, "feature:small:", 1000).await.len(), 300);
    assert_eq!(list_all(&mut kv, "feature:large:", 1000).await.len(), 30);
    for n in [0, 17, 29] {
        let reply = kv
            .get(get(&format!("feature:large:{n:03}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.value, Some(pb::get_response::Value::Text(large(n))));
    }
    let huge = kv.get(get("user:huge")).await.unwrap().into_inner();
    assert_eq!(
        huge.value,
        Some(pb::get_response::Value::Text("h".repeat(2 << 20)))
    );
}

/// An etcd that cannot be reached fails the copy with exit 4 (unavailable),
/// saying that running it again resumes.
#[tokio::test]
async fn copy_into_an_unreachable_etcd_exits_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    stopped_store_with(&data_dir, "user:a", "a").await;
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = dir.path().join("unreachable.toml");
    std::fs::write(
        &to,
        format!(
            "[engine]\nkind = \"etcd\"\n\n[engine.etcd]\nendpoints = [\"http://127.0.0.1:{port}\"]\n\
             dial_timeout_ms = 500\nrequest_timeout_ms = 1000\n"
        ),
    )
    .unwrap();
    let from = rocks_config(dir.path(), &data_dir);
    let (output, stdout, stderr) = run_copy(&from, &to, &[]);
    assert_eq!(output.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
}
