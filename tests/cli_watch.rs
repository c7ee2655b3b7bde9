//! `tierkv kv watch` through the real binaries: one JSON line per event,
//! resuming by itself (exactly once) across a server killed with SIGKILL
//! and restarted on the same address, `--max-events`, and the exit code of
//! an error a retry cannot fix.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;

/// A free port on loopback (bound and released), so that a restarted server
/// can listen where the client keeps reconnecting.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_on(data: &std::path::Path, port: u16) -> ServerProcess {
    let mut command = Command::new(BINARY);
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("TIERKV_LOG_FORMAT", "json")
        .env("TIERKV_SHUTDOWN_DELAY_MS", "0")
        .env("TIERKV_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn_server(command)
}

/// The metrics address a server process announced.
fn metrics_addr(server: &ServerProcess) -> std::net::SocketAddr {
    server
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|json| json["message"] == "serving")
        .and_then(|json| json["metrics_addr"].as_str()?.parse().ok())
        .expect("the serving line names the metrics address")
}

/// Open watchers, from the server's /metrics.
async fn watchers(metrics: std::net::SocketAddr) -> f64 {
    let scrape = common::scrape_metrics(metrics).await;
    common::metric_sample(&scrape, "tierkv_watchers").unwrap_or(0.0)
}

fn watch_command(endpoint: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("kv")
        .arg("watch")
        .args(args)
        .env("TIERKV_ENDPOINT", endpoint)
        .env_remove("TIERKV_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a child with a generous deadline; its exit code, stdout and stderr.
fn finish(mut child: std::process::Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = String::new();
            let mut stderr = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code().unwrap_or(-1), stdout, stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "kv watch did not finish: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kv watch` prints each event once as a JSON line (values with
/// `--values`), keeps going across a SIGKILL and restart of the server on
/// the same address (resuming from the last position it printed), and
/// exits 0 at `--max-events`.
#[tokio::test]
async fn watch_prints_json_lines_and_resumes_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut server = server_on(&data, port);
    let endpoint = server.endpoint();
    let watcher = watch_command(&endpoint, &["w:", "--values", "--max-events", "4"])
        .spawn()
        .unwrap();
    // Write only once it is watching (it takes its start position first).
    let metrics = metrics_addr(&server);
    let deadline = Instant::now() + Duration::from_secs(60);
    while watchers(metrics).await < 1.0 {
        assert!(Instant::now() < deadline, "kv watch never started watching");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = connect(&endpoint).await;
    client.put(put_text("w:1", "one")).await.unwrap();
    client.put(put_text("w:2", "two")).await.unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut restarted = server_on(&data, port);
    let mut client = connect(&endpoint).await;
    client.put(put_text("w:3", "three")).await.unwrap();
    client
        .delete(tierkv::proto::v1::DeleteRequest {
            key: "w:1".into(),
            if_version: None,
        })
        .await
        .unwrap();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || finish(watcher))
        .await
        .unwrap();
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary: Vec<(String, String)> = lines
        .iter()
        .map(|line| {
            (
                line["key"].as_str().unwrap().to_string(),
                line["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("w:1".into(), "put".into()),
            ("w:2".into(), "put".into()),
            ("w:3".into(), "put".into()),
            ("w:1".into(), "delete".into()),
        ],
        "{stdout}\n{stderr}"
    );
    assert_eq!(lines[2]["value"], "three");
    assert!(
        lines.last().unwrap()["position"].is_string(),
        "the last line of a response carries its position: {stdout}"
    );
}

/// A position of another history cannot be fixed by retrying: exit 2 with
/// the OUT_OF_RANGE error, no retry loop.
#[tokio::test]
async fn watch_exits_on_a_foreign_position() {
    let server = start().await;
    let endpoint = server.server.endpoint();
    let child = watch_command(&endpoint, &["x:", "--from", "00000000deadbeef-1"])
        .spawn()
        .unwrap();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("OUT_OF_RANGE"), "{stderr}");
    assert!(stderr.contains("HISTORY_MISMATCH"), "{stderr}");
}
