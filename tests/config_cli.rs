//! `tierkv config example|check|reference` through the real binary: the
//! example is a valid file of the defaults, a broken file gets every problem
//! with its line and exit code 2, and examples/dev.toml is valid.

mod common;

use std::process::{Command, Output};

use common::process::BINARY;

fn tierkv(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("TIERKV_CONFIG")
        .output()
        .expect("tierkv runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The printed example passes `config check` and configures the defaults.
#[test]
fn the_example_checks_and_is_the_defaults() {
    let example = tierkv(&["config", "example"]);
    assert!(example.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(&path, &example.stdout).unwrap();
    let checked = tierkv(&["config", "check", path.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(text(&checked.stdout).contains("valid"));
    let loaded = tierkv::config::Config::load(Some(&path), &Default::default()).unwrap();
    assert_eq!(loaded, tierkv::config::Config::default());
}

/// Every unknown or wrong key is named with its line, then exit code 2 (invalid input).
#[test]
fn a_broken_file_gets_each_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:50051\"\nsync_write = true\nblock_cache_mb = \"big\"\n\n[session]\ndefault_ttl_secs = -5\n",
    )
    .unwrap();
    let checked = tierkv(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(2));
    let stderr = text(&checked.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:2: sync_write: unknown key (did you mean `sync_writes`?)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:3: block_cache_mb: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:6: default_ttl_secs: ")),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

/// Checks that need the whole configuration (here a namespace listed twice)
/// are reported too, at the line of the key they name.
#[test]
fn whole_configuration_checks_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.toml");
    std::fs::write(
        &path,
        "data_dir = \"/tmp/x\"\nnamespaces = [\"user:\", \"user:\"]\n",
    )
    .unwrap();
    let checked = tierkv(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(2));
    let stderr = text(&checked.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2: namespaces: prefix \"user:\" is listed twice",
            path.display()
        )),
        "{stderr}"
    );
}

/// The shipped development configuration is valid.
#[test]
fn examples_dev_toml_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/dev.toml");
    let checked = tierkv(&["config", "check", path]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
}

/// `config reference` prints the table docs/configuration.md holds.
#[test]
fn reference_is_in_the_docs() {
    let reference = tierkv(&["config", "reference"]);
    assert!(reference.status.success());
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    assert!(docs.contains(text(&reference.stdout).trim()));
}
