//! The real `tierkv` binary as an operator runs it: `kill -9` under a write
//! load loses no acknowledged write, SIGTERM drains and exits 0 with data
//! kept, and bad configuration is refused at start with a clear message.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::*;
use common::*;
use tierkv::proto::v1 as pb;

/// `kill -9` while writers are busy: every write the server acknowledged,
/// single puts and atomic batches alike, is there after a restart.
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
            })
            .await
            .unwrap()
            .into_inner();
        for ((key, version), result) in chunk.iter().zip(response.results) {
            assert!(result.found, "acknowledged write of {key} was lost");
            assert_eq!(result.version, *version, "{key}");
        }
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
    command.env("TIERKV_NAMESPACES", "user:,orders:");
    let mut server = spawn_server(command);
    let mut client = connect(&server.endpoint()).await;
    client.put(put_text("orders:1", "v")).await.unwrap();
    drop(client);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut command = server_command(dir.path());
    command.env("TIERKV_NAMESPACES", "user:");
    let (code, stderr) = run_to_exit(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("\\\"orders:\\\"") || stderr.contains("\"orders:\""),
        "{stderr}"
    );
}
