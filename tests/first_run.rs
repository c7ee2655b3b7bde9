//! What a newcomer meets on the first `make run`, through the real binary: the
//! banner printed once serving (the address, where the data lives, commands
//! that work when pasted), and a metrics listener that neither sits on
//! Prometheus's port nor stops a second server on the same machine, while an
//! address someone chose must bind (docs/setup.md says why).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::process::*;
use common::tools;
use tierkv::config::Config;

/// The default metrics address is outside the ports Prometheus and its
/// exporters use (9090–9999), and when it is taken anyway (a second tierkv, a
/// `make run` in another checkout) the server still serves, saying in its log
/// that metrics are off and which setting moves them.
#[test]
fn a_taken_default_metrics_port_does_not_stop_the_server() {
    let default = Config::default()
        .metrics_addr()
        .unwrap()
        .expect("metrics are on by default");
    assert!(
        !(9090..=9999).contains(&default.port()),
        "the default metrics address {default} is in Prometheus's range"
    );
    // Hold the port, unless something on this machine already does.
    let _holder = TcpListener::bind(default).ok();
    assert!(
        TcpStream::connect(default).is_ok(),
        "{default} is not taken"
    );

    let data = tempfile::tempdir().unwrap();
    let mut command = server_command(data.path());
    command.env_remove("TIERKV_METRICS_LISTEN");
    let mut server = spawn_server(command);
    let logs = server.logs();
    let warning = logs
        .lines()
        .find(|line| line.contains("metrics are off"))
        .unwrap_or_else(|| panic!("no warning about the metrics port:\n{logs}"));
    for needle in [
        default.to_string().as_str(),
        "metrics_listen",
        "TIERKV_METRICS_LISTEN",
    ] {
        assert!(warning.contains(needle), "{needle} not in {warning}");
    }
    let serving = logs
        .lines()
        .find(|line| line.contains("\"serving\""))
        .unwrap();
    assert!(serving.contains("\"metrics_addr\":\"off\""), "{serving}");
    // It really serves: a put and a get through the CLI.
    let endpoint = server.endpoint();
    let cli = |args: &[&str]| {
        Command::new(BINARY)
            .args(args)
            .args(["--endpoint", &endpoint])
            .output()
            .unwrap()
    };
    assert!(cli(&["kv", "put", "greeting", "hi"]).status.success());
    let got = cli(&["kv", "get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hi");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A metrics address that was set (file, TIERKV_METRICS_LISTEN or
/// --metrics-listen) and is taken stops the start, and the error names the
/// setting, the variable and the flag that move it.
#[test]
fn a_taken_metrics_address_that_was_set_stops_the_start_and_names_the_setting() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let by_env = {
        let mut command = server_command(data.path());
        command.env("TIERKV_METRICS_LISTEN", &taken);
        command
    };
    let by_flag = {
        let mut command = server_command(data.path());
        command.args(["--metrics-listen", &taken]);
        command
    };
    for mut command in [by_env, by_flag] {
        let output = command.stderr(Stdio::piped()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let line = stderr
            .lines()
            .find(|line| line.starts_with("tierkv: "))
            .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
        for needle in [
            taken.as_str(),
            "metrics_listen",
            "TIERKV_METRICS_LISTEN",
            "--metrics-listen",
        ] {
            assert!(line.contains(needle), "{needle} not in {line}");
        }
    }
}

/// Reads the banner the server prints on stdout: every line up to the blank
/// line that ends it.
fn read_banner(stdout: std::process::ChildStdout) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.is_empty() && !banner.is_empty() {
                break;
            }
            banner.push(line);
        }
        let _ = tx.send(banner);
    });
    // A guard against waiting forever on a server that prints nothing.
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the server printed no banner on stdout")
}

/// `make run`'s banner, once serving: the address, the data directory (as an
/// absolute path), the metrics URL, and three commands that work when pasted
/// into a shell as printed.
#[test]
fn the_serving_banner_names_the_address_the_data_and_commands_that_work() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .current_dir(cwd.path())
        .env("TIERKV_METRICS_LISTEN", "127.0.0.1:0")
        .env("TIERKV_SHUTDOWN_DELAY_MS", "0")
        .env("TIERKV_LOG_FORMAT", "human")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner = read_banner(child.stdout.take().unwrap());
    let text = banner.join("\n");

    let addr: SocketAddr = banner[0]
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no address in the first line:\n{text}"));
    assert_ne!(addr.port(), 0, "{text}");
    let data = cwd.path().join("data").canonicalize().unwrap();
    assert!(text.contains(&data.display().to_string()), "{text}");
    assert!(text.contains("metrics:  http://127.0.0.1:"), "{text}");

    let commands: Vec<&str> = banner
        .iter()
        .skip_while(|line| !line.starts_with("Try"))
        .skip(1)
        .map(|line| line.trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(commands.len() >= 3, "{text}");
    // grpcurl from the test tools' environment, as `make setup-test` puts it.
    let path = format!(
        "{}:{}",
        tools::tool("grpcurl").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let outputs: Vec<String> = commands
        .iter()
        .map(|command| {
            let output = Command::new("bash")
                .args(["-c", command])
                .current_dir(cwd.path())
                .env("PATH", &path)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "`{command}` failed: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
        })
        .collect();
    let all = outputs.join("\n");
    assert!(
        outputs.iter().any(|out| out.trim() == "world"),
        "no command read back the value put:\n{all}"
    );
    assert!(all.contains("tierkv.v1.KvService"), "{all}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(Path::new(&data).is_dir());
}
