//! `scripts/setup.sh --with-test-tools` (what `make test` runs first) on a
//! machine like a stock Debian 12 or Ubuntu 24.04: the distribution's own
//! `/usr/bin/python3`, externally managed (PEP 668), and no pyenv on PATH. The
//! tools land in a project-local virtual environment and run from there; the
//! system Python is left as it was; a second run installs nothing; a broken
//! environment is made again. Needs PyPI (pip's cache makes reruns quick).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The distribution's Python when there is one, as a newcomer's machine has it.
fn system_python() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// PATH without pyenv (or any other per-user Python shims), so that `python3`,
/// `grpcurl` and the rest resolve as on a stock machine.
fn stock_path() -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|dir| !dir.contains("/.pyenv/") && !dir.contains("/.local/bin"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run_setup(venv: &Path) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh"))
        .arg("--with-test-tools")
        .env("PATH", stock_path())
        .env("PYTHON", system_python())
        .env("TEST_TOOLS_VENV", venv)
        .output()
        .expect("bash runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What the system Python has installed, to show the set-up leaves it alone.
fn system_packages() -> String {
    let output = Command::new(system_python())
        .args([
            "-c",
            "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))",
        ])
        .output()
        .expect("the system Python runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn test_tools_go_into_a_project_venv_made_from_the_system_python() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let before = system_packages();

    let first = run_setup(&venv);
    let log = text(&first);
    assert!(first.status.success(), "setup failed:\n{log}");
    assert!(!log.contains("break-system-packages"), "{log}");
    // Made from the system Python, not a shim's.
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    let python = system_python();
    if python.is_absolute() {
        let home = python.parent().unwrap().display().to_string();
        assert!(cfg.contains(&format!("home = {home}")), "{cfg}");
    }
    // Every tool runs from the environment.
    for (tool, args) in [
        ("grpcurl", &["-version"][..]),
        ("kubernetes-validate", &["--version"][..]),
        ("hadolint", &["--version"][..]),
        (
            "python",
            &["-c", "import grpc, grpc_tools.protoc, grpc_status"][..],
        ),
    ] {
        let output = Command::new(venv.join("bin").join(tool))
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("{tool}: {error}\n{log}"));
        assert!(output.status.success(), "{tool}: {}", text(&output));
    }
    assert_eq!(system_packages(), before, "the system Python changed");

    // Again: nothing to do.
    let second = run_setup(&venv);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(text(&second), "", "a second run installed something");

    // An environment whose interpreter is gone is made again.
    std::fs::remove_file(venv.join("bin/python")).unwrap();
    let third = run_setup(&venv);
    let log = text(&third);
    assert!(third.status.success(), "{log}");
    assert!(
        log.contains("created the test tools' Python environment"),
        "{log}"
    );
    assert!(venv.join("bin/grpcurl").exists(), "{log}");
}

/// Where `python3 -m venv` fails for want of ensurepip (Debian and Ubuntu
/// without `python3-venv`), the set-up installs `python3-venv` from apt and
/// tries again. apt-get and sudo are stand-ins that record their calls (and
/// the stand-in Python's venv works once "installed"): the real apt is not
/// run by a test.
#[test]
fn a_python_without_venv_gets_python3_venv_from_apt() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let installed = dir.path().join("installed");
    let calls = dir.path().join("apt-calls");
    let real = system_python();
    let script = |name: &str, body: String| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let python = script(
        "python3",
        format!(
            "if [ \"$1 $2\" = \"-m venv\" ] && [ ! -e {installed:?} ]; then\n\
             echo 'The virtual environment was not created successfully because ensurepip is not available.' >&2\n\
             exit 1\nfi\nexec {real:?} \"$@\"\n"
        ),
    );
    script(
        "apt-get",
        format!("echo \"$*\" >> {calls:?}\n[ \"$1\" = install ] && touch {installed:?}\nexit 0\n"),
    );
    script("sudo", "exec \"$@\"\n".to_string());

    let venv = dir.path().join("venv");
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh"))
        .arg("--with-test-tools")
        .env("PATH", format!("{}:{}", bin.display(), stock_path()))
        .env("PYTHON", &python)
        .env("TEST_TOOLS_VENV", &venv)
        .output()
        .unwrap();
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    let install = calls
        .lines()
        .find(|line| line.starts_with("install"))
        .unwrap_or_else(|| panic!("apt-get install was not called: {calls:?}\n{log}"));
    assert!(install.contains("python3-venv"), "{install}");
    assert!(log.contains("installing python3-venv"), "{log}");
    assert!(venv.join("bin/grpcurl").exists(), "{log}");
}
