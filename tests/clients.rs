//! Clients we did not write. Python stubs are generated from `proto/` with
//! grpcio-tools, exactly as a Python user would, and `tests/python/` runs
//! against the real binary: KV, Session and Cache calls, error codes and
//! `google.rpc` details as the official gRPC Python runtime sees them.

mod common;

use std::path::Path;
use std::process::Command;

use common::process::*;
use common::tools;

/// Generates the Python stubs for every proto file into `out`.
fn generate_python_stubs(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut protos: Vec<_> = std::fs::read_dir(root.join("proto/tierkv/v1"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    assert!(!protos.is_empty());
    let output = Command::new(tools::python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .output()
        .expect("the test environment's Python runs");
    assert!(
        output.status.success(),
        "grpc_tools.protoc failed (run `make setup-test`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python suite passes against the real server, and really ran: every
/// test class reported, none skipped.
#[test]
fn python_client_suite_passes() {
    let data = tempfile::tempdir().unwrap();
    let stubs = tempfile::tempdir().unwrap();
    generate_python_stubs(stubs.path());
    let mut server = spawn_server(server_command(data.path()));
    let output = Command::new(tools::python())
        .args(["-m", "unittest", "-v", "test_clients"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python"))
        .env("PYTHONPATH", stubs.path())
        .env("TIERKV_ENDPOINT", server.addr.to_string())
        .output()
        .expect("the test environment's Python runs");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Python client suite failed:\n{report}"
    );
    let ran: usize = report
        .lines()
        .find_map(|line| line.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .expect("unittest summary");
    assert!(ran >= 14, "only {ran} Python tests ran:\n{report}");
    assert!(!report.contains("skipped"), "{report}");
    for class in ["KvTest", "SessionTest", "CacheTest", "ServiceConfigTest"] {
        assert!(
            report.contains(&format!("test_clients.{class}.")),
            "{class} did not run:\n{report}"
        );
    }
}
