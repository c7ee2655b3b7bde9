//! What `deploy/` ships holds up offline: the Kubernetes manifests validate
//! (strictly, so a misspelled field fails) against the Kubernetes schemas, the
//! Dockerfile passes hadolint, the configuration in the ConfigMap is one the
//! server accepts, the pod's termination grace covers the server's drain, the
//! real binary starts with the variables Kubernetes injects for a Service
//! named `tierkv`, and every way of deploying is closed by default (tokens
//! from a Secret, a NetworkPolicy, an Istio AuthorizationPolicy, a private
//! umask). The etcd overlay (`deploy/k8s/etcd`) is built with kustomize and
//! held to the same: strict schemas, a configuration the loader accepts, and
//! its own checks (stateless replicas, a quorum budget, probes that survive
//! an etcd outage, TLS and a NetworkPolicy around etcd). No container engine
//! runs here, so the image itself is not built by the tests.

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

// ---------------------------------------------------------------------------
// The etcd overlay (deploy/k8s/etcd): several stateless replicas over a
// three-member etcd StatefulSet.

/// The overlay's directory.
fn etcd_overlay() -> PathBuf {
    deploy_dir().join("k8s/etcd")
}

/// `kubectl kustomize` of the overlay (kubectl from the test tools'
/// environment, kustomize built in): the manifests exactly as `kubectl apply
/// -k` would send them.
fn etcd_overlay_built() -> String {
    let (ok, output) = run_tool("kubectl", &["kustomize", etcd_overlay().to_str().unwrap()]);
    assert!(ok, "kubectl kustomize deploy/k8s/etcd failed:\n{output}");
    output
}

/// The built overlay's resources as JSON, converted by the test tools'
/// Python (PyYAML comes with kubernetes-validate).
fn etcd_overlay_resources() -> Vec<serde_json::Value> {
    use std::io::Write;
    let built = etcd_overlay_built();
    let mut child = Command::new(common::tools::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the test tools' python; run `make setup-test`");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(built.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The resource of `kind` named `name`.
fn resource<'a>(
    resources: &'a [serde_json::Value],
    kind: &str,
    name: &str,
) -> &'a serde_json::Value {
    resources
        .iter()
        .find(|resource| resource["kind"] == kind && resource["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the overlay has no {kind} {name}"))
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let selector = selector.as_object().expect("a selector's labels");
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// The etcd members' flag `name`'s value (`--name=value`).
fn etcd_flag(resources: &[serde_json::Value], name: &str) -> String {
    let args = resource(resources, "StatefulSet", "etcd")["spec"]["template"]["spec"]["containers"]
        [0]["args"]
        .as_array()
        .expect("etcd's args");
    args.iter()
        .filter_map(|arg| arg.as_str()?.strip_prefix(&format!("{name}=")))
        .next()
        .unwrap_or_else(|| panic!("etcd is not given {name}"))
        .to_string()
}

/// The overlay builds with kustomize, and every resource of the build
/// validates strictly against the oldest supported and the newest bundled
/// Kubernetes schemas.
#[test]
fn etcd_overlay_builds_and_validates_strictly() {
    let built = etcd_overlay_built();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd-overlay.yaml");
    std::fs::write(&path, &built).unwrap();
    for version in [OLDEST_KUBERNETES, ""] {
        let mut args = vec!["--strict"];
        if !version.is_empty() {
            args.extend(["-k", version]);
        }
        args.push(path.to_str().unwrap());
        let (ok, output) = run_tool("kubernetes-validate", &args);
        assert!(ok, "kubernetes-validate {args:?} failed:\n{output}");
        for kind in [
            "deployment/tierkv",
            "statefulset/etcd",
            "service/etcd",
            "service/tierkv",
            "poddisruptionbudget/tierkv",
            "poddisruptionbudget/etcd",
            "networkpolicy/tierkv",
            "networkpolicy/etcd",
            "configmap/tierkv-config-",
        ] {
            assert!(
                output.contains(&format!("passed for resource {kind}")),
                "{kind} was not validated:\n{output}"
            );
        }
    }
}

/// tierkv runs as a Deployment of several replicas without any volume of
/// its own (stateless: no PersistentVolumeClaim, the base's StatefulSet is
/// gone); its PodDisruptionBudget keeps a quorum of them; readiness is a
/// gRPC probe of KvService while startup and liveness do not use gRPC
/// health (which turns NOT_SERVING through an etcd outage, so a gRPC
/// liveness probe would restart every replica in a loop); the Services
/// select the replicas. etcd is a three-member StatefulSet on volumes behind
/// a headless Service, with a budget keeping its quorum and the flags
/// docs/replicas.md recommends.
#[test]
fn etcd_overlay_runs_stateless_replicas_over_a_three_member_etcd() {
    let resources = etcd_overlay_resources();
    assert!(
        !resources
            .iter()
            .any(|r| r["kind"] == "StatefulSet" && r["metadata"]["name"] == "tierkv"),
        "the base's StatefulSet is still there"
    );
    let deployment = resource(&resources, "Deployment", "tierkv");
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 3, "{replicas} replicas");
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    for volume in pod["spec"]["volumes"].as_array().unwrap() {
        assert!(
            volume.get("configMap").is_some()
                || volume.get("secret").is_some()
                || volume.get("emptyDir").is_some(),
            "a replica keeps state in {volume}"
        );
    }
    assert!(!resources
        .iter()
        .any(|r| r["kind"] == "PersistentVolumeClaim"));

    let budget = resource(&resources, "PodDisruptionBudget", "tierkv");
    assert_eq!(
        budget["spec"]["minAvailable"].as_u64(),
        Some(replicas / 2 + 1)
    );
    assert!(budget["spec"].get("maxUnavailable").is_none(), "{budget}");
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    for service in ["tierkv", "tierkv-headless", "tierkv-metrics"] {
        let service = resource(&resources, "Service", service);
        assert!(
            selects(&service["spec"]["selector"], pod_labels),
            "{service}"
        );
    }

    let container = &pod["spec"]["containers"][0];
    let readiness = &container["readinessProbe"]["grpc"];
    assert_eq!(readiness["port"], 50051, "{container}");
    assert_eq!(readiness["service"], "tierkv.v1.KvService");
    for probe in ["startupProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert!(probe.get("grpc").is_none(), "{probe}");
        assert_eq!(probe["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(probe["httpGet"]["port"], "metrics", "{probe}");
    }

    let etcd = resource(&resources, "StatefulSet", "etcd");
    assert_eq!(etcd["spec"]["replicas"], 3);
    assert_eq!(etcd["spec"]["serviceName"], "etcd");
    assert!(
        etcd["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .is_string()
    );
    let etcd_labels = &etcd["spec"]["template"]["metadata"]["labels"];
    let headless = resource(&resources, "Service", "etcd");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert!(selects(&headless["spec"]["selector"], etcd_labels));
    let ports: Vec<u64> = headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [2379, 2380]);
    let etcd_budget = resource(&resources, "PodDisruptionBudget", "etcd");
    assert_eq!(etcd_budget["spec"]["minAvailable"], 2);
    assert!(selects(
        &etcd_budget["spec"]["selector"]["matchLabels"],
        etcd_labels
    ));
    let quota: u64 = etcd_flag(&resources, "--quota-backend-bytes")
        .parse()
        .unwrap();
    assert!(quota <= 8 << 30, "etcd advises at most 8 GiB, not {quota}");
    assert!(!etcd_flag(&resources, "--auto-compaction-mode").is_empty());
    assert!(!etcd_flag(&resources, "--auto-compaction-retention").is_empty());
    let cluster = etcd_flag(&resources, "--initial-cluster");
    assert_eq!(cluster.split(',').count(), 3, "{cluster}");
}

/// The ConfigMap of the built overlay with its Secrets' files (the token
/// hash and etcd's client certificate) placed under `secrets`.
fn etcd_overlay_config(resources: &[serde_json::Value], secrets: &Path) -> (Config, Vec<PathBuf>) {
    let config_map = resources
        .iter()
        .find(|r| {
            r["kind"] == "ConfigMap"
                && r["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("tierkv-config-")
        })
        .expect("the generated ConfigMap");
    let text = config_map["data"]["tierkv.toml"].as_str().unwrap();
    let mut files = Vec::new();
    let mut relocated = text.to_string();
    for mount in [SECRETS_MOUNT, "/etc/tierkv-etcd"] {
        relocated = relocated.replace(mount, secrets.to_str().unwrap());
    }
    for line in text.lines() {
        for key in [
            "token_sha256_file = ",
            "ca_file = ",
            "cert_file = ",
            "key_file = ",
        ] {
            if let Some(value) = line.trim().strip_prefix(key) {
                let path = Path::new(value.trim_matches('"'));
                files.push(secrets.join(path.file_name().unwrap()));
            }
        }
    }
    let path = secrets.join("tierkv.toml");
    std::fs::write(&path, relocated).unwrap();
    let config = Config::load(Some(&path), &Default::default())
        .unwrap_or_else(|error| panic!("the overlay's tierkv.toml: {error}"));
    (config, files)
}

/// The overlay's ConfigMap is a configuration the real loader accepts, of
/// the etcd engine, whose endpoints are the StatefulSet's members and whose
/// limits are the members' flags; the engine options read its TLS files;
/// the Deployment's termination grace covers the drain it configures.
#[test]
fn etcd_overlay_configuration_is_accepted_and_matches_the_members() {
    let resources = etcd_overlay_resources();
    let secrets = tempfile::tempdir().unwrap();
    let (config, files) = etcd_overlay_config(&resources, secrets.path());
    assert_eq!(files.len(), 4, "{files:?}");
    for file in &files {
        let content = if file.extension().is_some_and(|ext| ext == "sha256") {
            tierkv::auth::hash_token("tkv_a-token-for-the-test-only-0123456789")
        } else {
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_string()
        };
        std::fs::write(file, content).unwrap();
    }
    config.validate().unwrap();
    assert_eq!(config.engine.kind, tierkv::config::EngineKind::Etcd);
    let options = tierkv::server::store::etcd_options(&config).unwrap();
    let tls = options.tls.expect("TLS towards etcd");
    assert!(tls.ca_pem.is_some() && tls.identity_pem.is_some());

    let etcd = resource(&resources, "StatefulSet", "etcd");
    let members = etcd["spec"]["replicas"].as_u64().unwrap();
    let service = etcd["spec"]["serviceName"].as_str().unwrap();
    let expected: Vec<String> = (0..members)
        .map(|n| format!("https://etcd-{n}.{service}:2379"))
        .collect();
    assert_eq!(config.engine.etcd.endpoints, expected);
    assert_eq!(
        config.engine.etcd.max_txn_ops.to_string(),
        etcd_flag(&resources, "--max-txn-ops")
    );
    assert_eq!(
        config.engine.etcd.max_request_bytes.to_string(),
        etcd_flag(&resources, "--max-request-bytes")
    );

    let deployment = resource(&resources, "Deployment", "tierkv");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(grace * 1000 >= config.shutdown_delay_ms + config.shutdown_grace_ms + 5000);
    let metrics = config.metrics_addr().unwrap().expect("metrics on");
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(ports
        .as_array()
        .unwrap()
        .iter()
        .any(|port| port["name"] == "metrics" && port["containerPort"] == metrics.port()));
    assert!(
        metrics.ip().is_unspecified(),
        "the probes need /healthz reachable"
    );
}

/// Nothing of the overlay is open by default. etcd speaks TLS to clients
/// and peers and requires their certificates; its client port admits only
/// pods labelled as its clients (the replicas are), its peer port only
/// members. tierkv reaches etcd over https with a client certificate from a
/// Secret, still requires bearer tokens whose hashes come from a Secret, and
/// refuses to start without those files.
#[test]
fn etcd_overlay_is_closed_by_default() {
    let resources = etcd_overlay_resources();
    assert_eq!(etcd_flag(&resources, "--client-cert-auth"), "true");
    assert_eq!(etcd_flag(&resources, "--peer-client-cert-auth"), "true");
    for flag in [
        "--listen-client-urls",
        "--listen-peer-urls",
        "--advertise-client-urls",
        "--initial-advertise-peer-urls",
    ] {
        assert!(
            etcd_flag(&resources, flag).starts_with("https://"),
            "{flag}"
        );
    }
    for member in etcd_flag(&resources, "--initial-cluster").split(',') {
        assert!(member.contains("=https://"), "{member}");
    }

    let policy = resource(&resources, "NetworkPolicy", "etcd");
    let etcd = resource(&resources, "StatefulSet", "etcd");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &etcd["spec"]["template"]["metadata"]["labels"]
    ));
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let replicas =
        &resource(&resources, "Deployment", "tierkv")["spec"]["template"]["metadata"]["labels"];
    let client_rule = rules
        .iter()
        .find(|rule| rule["ports"][0]["port"] == "client")
        .expect("a rule for etcd's client port");
    let clients = &client_rule["from"][0]["podSelector"]["matchLabels"];
    assert!(selects(clients, replicas), "{clients}");
    assert!(
        !selects(
            clients,
            &serde_json::json!({"app.kubernetes.io/name": "anything"})
        ),
        "{clients}"
    );
    let peer_rule = rules
        .iter()
        .find(|rule| rule["ports"][0]["port"] == "peer")
        .expect("a rule for etcd's peer port");
    assert!(selects(
        &peer_rule["from"][0]["podSelector"]["matchLabels"],
        &etcd["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(rules.len(), 3, "{rules:?}");
    let tierkv_policy = resource(&resources, "NetworkPolicy", "tierkv");
    assert!(selects(
        &tierkv_policy["spec"]["podSelector"]["matchLabels"],
        replicas
    ));

    let secrets = tempfile::tempdir().unwrap();
    let (config, files) = etcd_overlay_config(&resources, secrets.path());
    assert!(!config.allow_unauthenticated);
    assert!(config.authenticates_clients());
    assert!(config
        .auth
        .tokens
        .iter()
        .all(|token| token.token_sha256.is_empty()));
    assert!(
        config.engine.etcd.password.is_none(),
        "a password in the ConfigMap"
    );
    assert!(config
        .engine
        .etcd
        .endpoints
        .iter()
        .all(|endpoint| endpoint.starts_with("https://")));
    assert!(config.engine.etcd.cert_file.is_some() && config.engine.etcd.key_file.is_some());
    // Without the Secrets' files the server does not start.
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("app.sha256"), "{error}");
    for file in &files {
        if file.extension().is_some_and(|ext| ext == "sha256") {
            std::fs::write(
                file,
                tierkv::auth::hash_token("tkv_a-token-for-the-test-only-0123456789"),
            )
            .unwrap();
        }
    }
    let error = tierkv::server::store::etcd_options(&config)
        .unwrap_err()
        .to_string();
    assert!(error.contains("ca_file"), "{error}");
}
