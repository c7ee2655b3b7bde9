//! What `deploy/` ships holds up offline: the Kubernetes manifests validate
//! (strictly, so a misspelled field fails) against the Kubernetes schemas, the
//! Dockerfile passes hadolint, the configuration in the ConfigMap is one the
//! server accepts, the pod's termination grace covers the server's drain, the
//! real binary starts with the variables Kubernetes injects for a Service
//! named `tierkv`, and every way of deploying is closed by default (tokens
//! from a Secret, a NetworkPolicy, an Istio AuthorizationPolicy, a private
//! umask). No container engine runs here, so the image itself is not built by
//! the tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::*;
use tierkv::config::Config;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// The oldest Kubernetes the manifests support: native gRPC probes are GA in 1.27.
const OLDEST_KUBERNETES: &str = "1.29.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs a test tool that `make setup-test` installs into the project's Python
/// environment; a missing tool fails the test rather than skipping it.
fn run_tool(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(common::tools::tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} is needed ({error}); run `make setup-test`"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The `resources:` of the base kustomization, in order.
fn kustomization_resources() -> Vec<PathBuf> {
    let base = deploy_dir().join("k8s/base");
    let text = read(&base.join("kustomization.yaml"));
    let mut resources = Vec::new();
    let mut in_resources = false;
    for line in text.lines() {
        if line.starts_with("resources:") {
            in_resources = true;
        } else if in_resources {
            match line.trim().strip_prefix("- ") {
                Some(file) if line.starts_with("  ") => resources.push(base.join(file.trim())),
                _ => in_resources = false,
            }
        }
    }
    resources
}

/// Every resource of the base validates strictly against the Kubernetes
/// schemas of the oldest supported version and of the newest one bundled.
#[test]
fn kubernetes_manifests_validate_strictly() {
    let resources = kustomization_resources();
    assert!(resources.len() >= 3, "kustomization lists {resources:?}");
    for resource in &resources {
        assert!(resource.exists(), "{} is missing", resource.display());
    }
    let files: Vec<&str> = resources
        .iter()
        .map(|path| path.to_str().unwrap())
        .collect();
    for version in [OLDEST_KUBERNETES, ""] {
        let mut args = vec!["--strict"];
        if !version.is_empty() {
            args.extend(["-k", version]);
        }
        args.extend(&files);
        let (ok, output) = run_tool("kubernetes-validate", &args);
        assert!(ok, "kubernetes-validate {args:?} failed:\n{output}");
        for kind in [
            "statefulset/tierkv",
            "service/tierkv",
            "poddisruptionbudget/tierkv",
            "networkpolicy/tierkv",
        ] {
            assert!(
                output.contains(&format!("passed for resource {kind}")),
                "{kind} was not validated:\n{output}"
            );
        }
    }
}

/// The validator really rejects a misspelled field, so the test above can fail.
#[test]
fn kubernetes_validation_catches_a_misspelled_field() {
    let statefulset = read(&deploy_dir().join("k8s/base/statefulset.yaml"));
    let broken = statefulset.replace("terminationGracePeriodSeconds", "terminationGracePeriod");
    assert_ne!(broken, statefulset);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statefulset.yaml");
    std::fs::write(&path, broken).unwrap();
    let (ok, output) = run_tool("kubernetes-validate", &["--strict", path.to_str().unwrap()]);
    assert!(!ok, "a misspelled field passed:\n{output}");
    assert!(output.contains("terminationGracePeriod"), "{output}");
}

/// The Dockerfile passes hadolint at its strictest threshold.
#[test]
fn dockerfile_passes_hadolint() {
    let dockerfile = deploy_dir().join("Dockerfile");
    let (ok, output) = run_tool(
        "hadolint",
        &[
            "--no-color",
            "--failure-threshold",
            "style",
            dockerfile.to_str().unwrap(),
        ],
    );
    assert!(ok, "hadolint:\n{output}");
    let text = read(&dockerfile);
    assert!(
        text.contains("USER 10001"),
        "the image must not run as root"
    );
}

/// Where the StatefulSet mounts the Secret of token hashes.
const SECRETS_MOUNT: &str = "/etc/tierkv-secrets";

/// The ConfigMap's configuration, loaded by the real server's loader with its
/// Secret's files (named by `token_sha256_file`) under `secrets` instead of
/// [`SECRETS_MOUNT`]. Returns it and the files it reads there.
fn base_config_with_secrets_in(secrets: &Path) -> (Config, Vec<String>) {
    let text = read(&deploy_dir().join("k8s/base/tierkv.toml"));
    let mut files = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.trim().strip_prefix("token_sha256_file = ") {
            let path = value.trim_matches('"');
            let name = path
                .strip_prefix(&format!("{SECRETS_MOUNT}/"))
                .unwrap_or_else(|| panic!("{path} is not in the Secret's mount {SECRETS_MOUNT}"));
            files.push(name.to_string());
        }
    }
    let relocated = secrets.join("tierkv.toml");
    std::fs::write(
        &relocated,
        text.replace(SECRETS_MOUNT, secrets.to_str().unwrap()),
    )
    .unwrap();
    let config = Config::load(Some(&relocated), &Default::default())
        .unwrap_or_else(|error| panic!("the base tierkv.toml: {error}"));
    (config, files)
}

/// The ConfigMap's configuration loads and validates in the real server's
/// loader, and the pod's termination grace covers the drain it configures.
#[test]
fn kubernetes_configuration_is_accepted_and_drain_fits_the_grace_period() {
    let secrets = tempfile::tempdir().unwrap();
    let (config, files) = base_config_with_secrets_in(secrets.path());
    for file in &files {
        std::fs::write(
            secrets.path().join(file),
            tierkv::auth::hash_token("tkv_a-token-for-the-test-only-0123456789"),
        )
        .unwrap();
    }
    config.validate().unwrap();
    assert_eq!(config.listen.port(), 50051);
    assert!(
        config.sync_writes,
        "a pod on a PVC should fsync its commits"
    );

    let statefulset = read(&deploy_dir().join("k8s/base/statefulset.yaml"));
    let grace_secs: u64 = statefulset
        .lines()
        .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    let drain_ms = config.shutdown_delay_ms + config.shutdown_grace_ms;
    // Leave at least 5 s for RocksDB's flush after the drain.
    assert!(
        grace_secs * 1000 >= drain_ms + 5000,
        "terminationGracePeriodSeconds {grace_secs} s does not cover a {drain_ms} ms drain plus flush"
    );
    assert!(statefulset.contains("enableServiceLinks: false"));
    assert!(statefulset.contains("containerPort: 50051"));
    let metrics = config
        .metrics_addr()
        .unwrap()
        .expect("metrics on in the pod");
    assert!(statefulset.contains(&format!("containerPort: {}", metrics.port())));
    assert!(
        metrics.ip().is_unspecified(),
        "metrics must be reachable from Prometheus"
    );
}

/// Kubernetes injects `TIERKV_PORT=tcp://…`, `TIERKV_SERVICE_HOST` and friends
/// into every pod of a namespace with a Service named `tierkv`; the real binary
/// starts with them and serves, and still refuses a misspelled setting.
#[tokio::test]
async fn server_starts_with_kubernetes_service_link_variables() {
    let links = [
        ("TIERKV_PORT", "tcp://10.96.0.15:50051"),
        ("TIERKV_PORT_50051_TCP", "tcp://10.96.0.15:50051"),
        ("TIERKV_PORT_50051_TCP_ADDR", "10.96.0.15"),
        ("TIERKV_PORT_50051_TCP_PORT", "50051"),
        ("TIERKV_PORT_50051_TCP_PROTO", "tcp"),
        ("TIERKV_SERVICE_HOST", "10.96.0.15"),
        ("TIERKV_SERVICE_PORT", "50051"),
        ("TIERKV_SERVICE_PORT_GRPC", "50051"),
        ("TIERKV_HEADLESS_PORT", "tcp://10.96.0.16:50051"),
        ("TIERKV_HEADLESS_SERVICE_PORT_GRPC", "50051"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut command = server_command(dir.path());
    command.envs(links);
    let mut server = spawn_server(command);
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "tierkv.v1.KvService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(links)
        .env("TIERKV_SYNC_WRTES", "true")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TIERKV_SYNC_WRTES") && stderr.contains("unknown variable"),
        "{stderr}"
    );
}

/// Every way of deploying is closed by default. The base's configuration
/// listens on the pod IP and so needs authentication: its tokens' hashes come
/// from a Secret the StatefulSet mounts, not from the ConfigMap, and without
/// that Secret's files the server refuses to start; `allow_unauthenticated` is
/// not set. A NetworkPolicy admits only clients to the gRPC port; the Istio
/// example allows AdminService to one identity only; the systemd unit and the
/// image keep the store private.
#[test]
fn deployments_are_closed_by_default() {
    let secrets = tempfile::tempdir().unwrap();
    let (config, files) = base_config_with_secrets_in(secrets.path());
    assert!(!files.is_empty(), "the base configures no token");
    assert!(!config.listens_on_loopback_only());
    assert!(!config.allow_unauthenticated);
    assert!(config.authenticates_clients());
    assert!(
        config
            .auth
            .tokens
            .iter()
            .all(|token| token.token_sha256.is_empty()),
        "a token hash is in the ConfigMap"
    );
    // The Secret's files are missing: the server must not start.
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains(&files[0]), "{error}");

    let statefulset = read(&deploy_dir().join("k8s/base/statefulset.yaml"));
    assert!(statefulset.contains(&format!("mountPath: {SECRETS_MOUNT}")));
    assert!(statefulset.contains("secretName: tierkv-tokens"));

    let policy = read(&deploy_dir().join("k8s/base/networkpolicy.yaml"));
    assert!(kustomization_resources()
        .iter()
        .any(|path| path.ends_with("networkpolicy.yaml")));
    for needed in [
        "kind: NetworkPolicy",
        "- Ingress",
        "key: tierkv-client",
        "port: grpc",
        "port: metrics",
    ] {
        assert!(
            policy.contains(needed),
            "networkpolicy.yaml lacks {needed:?}"
        );
    }
    // Kustomize adds its labels to every podSelector's matchLabels: a client
    // selector written that way would admit only tierkv's own pods.
    let ingress = policy.split("ingress:").nth(1).unwrap();
    assert!(!ingress.contains("matchLabels"), "{ingress}");

    let authorization = read(&deploy_dir().join("k8s/mesh/istio/authorization-policy.yaml"));
    for needed in [
        "kind: AuthorizationPolicy",
        "action: ALLOW",
        "app.kubernetes.io/name: tierkv",
        "principals:",
    ] {
        assert!(
            authorization.contains(needed),
            "authorization-policy.yaml lacks {needed:?}"
        );
    }
    // AdminService appears in exactly one rule, and that rule names its caller.
    let rules: Vec<&str> = authorization.split("\n    - ").skip(1).collect();
    let admin: Vec<&&str> = rules
        .iter()
        .filter(|rule| rule.contains("/tierkv.v1.AdminService/"))
        .collect();
    assert_eq!(admin.len(), 1, "{rules:?}");
    assert!(admin[0].contains("principals:"), "{}", admin[0]);

    let unit = read(&deploy_dir().join("tierkv.service"));
    assert!(unit.lines().any(|line| line == "UMask=0077"), "{unit}");
    assert!(
        unit.lines().any(|line| line == "StateDirectoryMode=0700"),
        "{unit}"
    );
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    assert!(
        dockerfile.contains("chmod 0700 /var/lib/tierkv"),
        "{dockerfile}"
    );
}
