//! The real `tierkv` binary as an operator runs it: `kill -9` under a write
//! load loses no acknowledged write and never reuses a version, SIGTERM
//! drains and exits 0 with data kept, a storage failure the writer cannot
//! recover from exits non-zero, bad configuration is refused at start
//! with a clear message, so is serving the network without authentication,
//! and the store and its backups are private to the server's user.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::*;
use common::*;
use tierkv::proto::v1 as pb;

/// `kill -9` while writers are busy: every write the server acknowledged,
/// single puts and atomic batches alike, is there after a restart, and the
/// versions handed out after the restart are higher than every version
/// acknowledged before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(server_command(dir.path()));
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = connect(&server.endpoint()).await;
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if writer == 0 {
                    // One writer uses atomic batches of 10 keys.
                    let keys: Vec<String> =
                        (0..10).map(|i| format!("load:batch:{n}:{i}")).collect();
                    let mutations = keys
                        .iter()
                        .map(|key| pb::Mutation {
                            operation: Some(pb::mutation::Operation::Put(put_text(key, "v"))),
                        })
                        .collect();
                    match client
                        .batch_write(pb::BatchWriteRequest { mutations })
                        .await
                    {
                        Ok(response) => {
                            let results = response.into_inner().results;
                            let mut acked = acknowledged.lock().unwrap();
                            for (key, result) in keys.into_iter().zip(results) {
                                acked.push((key, result.version));
                            }
                        }
                        Err(_) => break,
                    }
                } else {
                    let key = format!("load:{writer}:{n}");
                    match client.put(put_text(&key, &n.to_string())).await {
                        Ok(response) => acknowledged
                            .lock()
                            .unwrap()
                            .push((key, response.into_inner().version)),
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    // Wait for a real load to build up, then kill without warning.
    while acknowledged.lock().unwrap().len() < 3000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 3000);

    let mut restarted = spawn_server(server_command(dir.path()));
    let mut client = connect(&restarted.endpoint()).await;
    for chunk in acknowledged.chunks(100) {
        let response = client
            .batch_get(pb::BatchGetRequest {
                keys: chunk.iter().map(|(key, _)| key.clone()).collect(),
                r#type: 0,
                fallback: None,
            })
            .await
            .unwrap()
            .into_inner();
        for ((key, version), result) in chunk.iter().zip(response.results) {
            assert!(result.found, "acknowledged write of {key} was lost");
            assert_eq!(result.version, *version, "{key}");
        }
    }
    let highest = acknowledged
        .iter()
        .map(|(_, version)| *version)
        .max()
        .unwrap();
    for key in ["after:new", "load:1:0"] {
        let version = client
            .put(put_text(key, "after the crash"))
            .await
            .unwrap()
            .into_inner()
            .version;
        assert!(
            version > highest,
            "version {version} after the restart is not above {highest}, acknowledged before"
        );
    }
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// SIGTERM drains, flushes and exits 0; the data is there on the next start.
#[tokio::test]
async fn sigterm_exits_zero_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(server_command(dir.path()));
    let mut client = connect(&server.endpoint()).await;
    client.put(put_text("user:kept", "yes")).await.unwrap();
    drop(client);

    // SAFETY: kill(2) with a pid we own and a valid signal number.
    let result = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(result, 0);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let logs = server.logs();
    // The drain runs in order: NOT_SERVING, then refusing new calls, then the flush.
    let position = |needle: &str| {
        logs.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {logs}"))
    };
    assert!(position("health is NOT_SERVING") < position("refusing new calls"));
    assert!(position("refusing new calls") < position("\"stopped\""));

    let mut restarted = spawn_server(server_command(dir.path()));
    let mut client = connect(&restarted.endpoint()).await;
    let response = client.get(get("user:kept")).await.unwrap().into_inner();
    assert!(response.found);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// A storage failure the writer cannot recover from stops the server with a
/// non-zero exit code (so an orchestrator restarts it) and a log line saying
/// why, instead of answering UNAVAILABLE forever while reporting SERVING. The
/// failure is real: the process's file-size limit makes the write-ahead log
/// write fail with EFBIG once it outgrows the limit.
#[tokio::test]
async fn fatal_storage_error_exits_non_zero() {
    use std::os::unix::process::CommandExt;
    const FILE_SIZE_LIMIT: libc::rlim_t = 8 * 1024 * 1024;

    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Without this, exceeding the limit kills the process with SIGXFSZ;
            // ignored, the write fails with EFBIG, as a full disk would fail it.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: FILE_SIZE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = spawn_server(command);
    let mut client = connect(&server.endpoint()).await;
    let value = vec![7u8; 1024 * 1024];
    let mut failed = None;
    for n in 0..32 {
        let request = pb::PutRequest {
            key: format!("big:{n}"),
            value: Some(pb::put_request::Value::Bytes(value.clone())),
            ..Default::default()
        };
        if let Err(status) = client.put(request).await {
            failed = Some(status);
            break;
        }
    }
    let status = failed.expect("a write fails once the log outgrows the file-size limit");
    assert_ne!(status.code(), tonic::Code::Ok);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept running after its writer failed: {:?}",
            server.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let logs = server.stderr.lock().unwrap().join("\n");
    assert_eq!(exit.code(), Some(1), "{exit:?}\n{logs}");
    assert!(logs.contains("the storage engine failed"), "{logs}");
}

fn run_to_exit(mut command: Command) -> (i32, String) {
    let output = command.output().expect("run tierkv");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Unknown keys, unknown TIERKV_* variables and invalid values stop the
/// server at start with a message naming them.
#[test]
fn bad_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tierkv.toml");

    std::fs::write(&config, "listn = \"127.0.0.1:0\"\n").unwrap();
    let mut command = server_command(&dir.path().join("data"));
    command.arg("--config").arg(&config);
    let (code, stderr) = run_to_exit(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("listn"), "{stderr}");

    std::fs::write(&config, "sync_writes = \"maybe\"\n").unwrap();
    let mut command = server_command(&dir.path().join("data"));
    command.arg("--config").arg(&config);
    let (code, stderr) = run_to_exit(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("sync_writes") || stderr.contains("boolean"),
        "{stderr}"
    );

    let mut command = server_command(&dir.path().join("data"));
    command.env("TIERKV_LISTEN_ADDR", "127.0.0.1:1");
    let (code, stderr) = run_to_exit(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("TIERKV_LISTEN_ADDR"), "{stderr}");

    let mut command = server_command(&dir.path().join("data"));
    command.env("TIERKV_NAMESPACES", "user:,user:");
    let (code, stderr) = run_to_exit(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("twice"), "{stderr}");
}

/// Removing a namespace that holds data is refused at start, naming it.
#[tokio::test]
async fn dropping_a_namespace_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    command.env("TIERKV_NAMESPACES", "user:,orders:,session:");
    let mut server = spawn_server(command);
    let mut client = connect(&server.endpoint()).await;
    client.put(put_text("orders:1", "v")).await.unwrap();
    drop(client);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut command = server_command(dir.path());
    command.env("TIERKV_NAMESPACES", "user:,session:");
    let (code, stderr) = run_to_exit(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("\\\"orders:\\\"") || stderr.contains("\"orders:\""),
        "{stderr}"
    );
}

/// With `tierkv::rpc=debug`, every call logs one line carrying its method,
/// status code, latency and the caller's W3C trace context, in JSON.
#[tokio::test]
async fn rpc_log_lines_carry_code_latency_and_trace_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    command.env("RUST_LOG", "info,tierkv::rpc=debug");
    let mut server = spawn_server(command);
    let mut client = connect(&server.endpoint()).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(get("user:traced"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    assert!(!client.get(request).await.unwrap().into_inner().found);
    let mut bad = put_text("user:x", "v");
    bad.key = String::new();
    assert!(client.put(bad).await.is_err());

    // The log is read asynchronously; wait until both lines are in.
    let finished = |logs: &str| {
        logs.lines()
            .filter(|line| line.contains("rpc finished"))
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .collect::<Vec<_>>()
    };
    let started = std::time::Instant::now();
    let lines = loop {
        let lines = finished(&server.logs());
        if lines.len() >= 2 || started.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{}", server.logs());
    let get_line = &lines[0];
    assert_eq!(get_line["code"], "OK", "{get_line}");
    assert_eq!(get_line["span"]["method"], "/tierkv.v1.KvService/Get");
    assert_eq!(get_line["span"]["trace_id"], trace_id);
    assert_eq!(get_line["span"]["parent_span_id"], "00f067aa0ba902b7");
    assert!(get_line["latency_us"].as_u64().is_some());
    let put_line = &lines[1];
    assert_eq!(put_line["code"], "INVALID_ARGUMENT", "{put_line}");
    assert!(put_line["span"].get("trace_id").is_none(), "{put_line}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Runs `command` until it exits, which a server refusing its configuration
/// does at once; one still running after 30 s is killed and fails the test.
fn refused_at_start(mut command: Command) -> (i32, String) {
    use std::io::Read;
    let mut child = command.spawn().expect("spawn tierkv");
    let mut stderr = String::new();
    for _ in 0..3000 {
        if let Some(status) = child.try_wait().unwrap() {
            if let Some(mut pipe) = child.stderr.take() {
                pipe.read_to_string(&mut stderr).unwrap();
            }
            return (status.code().unwrap_or(-1), stderr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("the server started instead of refusing its configuration");
}

/// `tierkv serve` on `listen` over `data_dir`, otherwise as [`server_command`].
fn serve_on(listen: &str, data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env("TIERKV_LOG_FORMAT", "json")
        .env("TIERKV_SHUTDOWN_DELAY_MS", "0")
        .env("TIERKV_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// A client whose calls carry `token`.
async fn kv_with_token(
    addr: std::net::SocketAddr,
    token: &'static str,
) -> pb::kv_service_client::KvServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::kv_service_client::KvServiceClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(request)
        },
    )
}

/// Listening where other hosts can reach it, the binary refuses to serve
/// without authentication, before touching the data directory, and names
/// `allow_unauthenticated`; with that set it serves, warning; with a token
/// (its hash read from a file, as from a mounted Secret) it serves and
/// requires the token. Loopback needs neither.
#[tokio::test]
async fn serving_the_network_needs_authentication_or_an_explicit_opt_out() {
    const TOKEN: &str = "tkv_process-test-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    for listen in ["0.0.0.0:0", "[::]:0"] {
        let (code, stderr) = refused_at_start(serve_on(listen, &data));
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("allow_unauthenticated = true") && stderr.contains(listen),
            "{stderr}"
        );
        assert!(!data.exists(), "refused before creating the data directory");
    }

    let mut command = serve_on("0.0.0.0:0", &data);
    command.env("TIERKV_ALLOW_UNAUTHENTICATED", "true");
    let mut open = spawn_server(command);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], open.addr.port()));
    assert!(open.addr.ip().is_unspecified(), "{}", open.addr);
    let mut client = connect(&format!("http://{addr}")).await;
    client.put(put_text("user:1", "open")).await.unwrap();
    assert!(
        open.logs().contains("serving without authentication"),
        "{}",
        open.logs()
    );
    drop(client);
    open.child.kill().unwrap();
    open.child.wait().unwrap();

    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(
        secrets.join("app.sha256"),
        format!("{}\n", tierkv::auth::hash_token(TOKEN)),
    )
    .unwrap();
    let config = dir.path().join("tierkv.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"app\"\ntoken_sha256_file = \"{}\"\nprefixes = [\"user:\"]\npermissions = [\"read\", \"write\"]\n",
            secrets.join("app.sha256").display()
        ),
    )
    .unwrap();
    let mut command = serve_on("0.0.0.0:0", &data);
    command.arg("--config").arg(&config);
    let mut guarded = spawn_server(command);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], guarded.addr.port()));
    let mut anonymous = connect(&format!("http://{addr}")).await;
    let refused = anonymous.get(get("user:1")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut client = kv_with_token(addr, TOKEN).await;
    let found = client.get(get("user:1")).await.unwrap().into_inner();
    assert!(found.found);
    assert!(!guarded.logs().contains("serving without authentication"));
    drop((anonymous, client));
    guarded.child.kill().unwrap();
    guarded.child.wait().unwrap();

    // Loopback: no authentication needed, no warning.
    let mut local = spawn_server(server_command(&data));
    let mut client = connect(&local.endpoint()).await;
    assert!(exists(&mut client, "user:1").await);
    assert!(!local.logs().contains("serving without authentication"));
    drop(client);
    local.child.kill().unwrap();
    local.child.wait().unwrap();
}

/// The modes of `dir` and of everything under it.
fn modes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut modes = vec![(
        dir.to_path_buf(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modes.extend(modes_under(&path));
        } else {
            modes.push((
                path.clone(),
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            ));
        }
    }
    modes
}

/// The store is every record in clear, and a backup is the whole store: the
/// binary creates the data and backup directories 0700 and every file in
/// them (RocksDB's tables, logs and manifests, and a backup's copies) 0600,
/// even when it inherits a permissive umask.
#[tokio::test]
async fn data_and_backups_are_private_to_the_server_user() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store/data");
    let backups = dir.path().join("store/backups");
    let mut command = server_command(&data);
    command.env("TIERKV_BACKUP_DIR", &backups);
    // SAFETY: umask(2) is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o002);
            Ok(())
        });
    }
    let mut server = spawn_server(command);
    let mut client = connect(&server.endpoint()).await;
    for n in 0..100 {
        client
            .put(put_text(&format!("user:{n}"), "private"))
            .await
            .unwrap();
    }
    let mut admin = connect_admin(&server.endpoint()).await;
    admin
        .backup(pb::BackupRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap();
    drop((client, admin));
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let store = modes_under(&dir.path().join("store"));
    assert!(store
        .iter()
        .any(|(path, _)| path.ends_with("nightly/CURRENT")));
    assert!(store
        .iter()
        .any(|(path, _)| path.extension().is_some_and(|ext| ext == "sst")));
    let open: Vec<String> = store
        .iter()
        .filter(|(path, mode)| *mode != if path.is_dir() { 0o700 } else { 0o600 })
        .map(|(path, mode)| format!("{} {mode:o}", path.display()))
        .collect();
    assert!(open.is_empty(), "not private: {open:#?}");
}
