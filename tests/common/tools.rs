//! The test tools `scripts/setup.sh --with-test-tools` installs into the
//! project-local Python environment (`make setup-test`): grpcurl,
//! kubernetes-validate, hadolint and the Python with grpcio-tools. Tests run
//! them from there, never from PATH, so what they test with is what the set-up
//! installed, whatever Python (pyenv, the system's) PATH happens to offer.

use std::path::PathBuf;

/// The environment: `TEST_TOOLS_VENV` (the Makefile's `VENV`), else `.venv` in the
/// repository.
pub fn venv() -> PathBuf {
    match std::env::var_os("TEST_TOOLS_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"),
    }
}

/// The path of `name` in the environment's `bin/`. A missing tool fails the
/// test with the command that installs it; it is never skipped.
pub fn tool(name: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make setup-test` (it installs the test tools into {})",
        path.display(),
        venv().display()
    );
    path
}

/// The environment's Python, which has grpcio, grpcio-tools and grpcio-status.
pub fn python() -> PathBuf {
    tool("python")
}
