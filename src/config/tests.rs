//! The configuration's parsing, environment overrides and validation.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// No file and no variables gives the documented defaults.
#[test]
fn defaults_need_no_file() {
    let config = Config::load(None, &env(&[("PATH", "/bin")])).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    config.validate().unwrap();
}

/// Variables override the file, and lists split on commas.
#[test]
fn environment_overrides_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:7000\"\nsync_writes = false\n").unwrap();
    let config = Config::load(
        Some(&path),
        &env(&[
            ("TIERKV_SYNC_WRITES", "true"),
            ("TIERKV_NAMESPACES", "a:, b:"),
            ("TIERKV_ENDPOINT", "http://x"),
        ]),
    )
    .unwrap();
    assert_eq!(config.listen.port(), 7000);
    assert!(config.sync_writes);
    assert_eq!(config.namespaces, vec!["a:", "b:"]);
}

/// The variables Kubernetes injects for Services named `tierkv` and `tierkv-metrics` are
/// ignored; misspellings of our own settings, even ones ending in `_PORT`, are not.
#[test]
fn ignores_kubernetes_service_links_only() {
    let links = [
        ("TIERKV_PORT", "tcp://10.0.0.1:50051"),
        ("TIERKV_SERVICE_HOST", "10.0.0.1"),
        ("TIERKV_SERVICE_PORT", "50051"),
        ("TIERKV_SERVICE_PORT_GRPC", "50051"),
        ("TIERKV_PORT_50051_TCP", "tcp://10.0.0.1:50051"),
        ("TIERKV_PORT_50051_TCP_ADDR", "10.0.0.1"),
        ("TIERKV_PORT_50051_TCP_PORT", "50051"),
        ("TIERKV_PORT_50051_TCP_PROTO", "tcp"),
        ("TIERKV_METRICS_PORT", "tcp://10.0.0.2:9090"),
        ("TIERKV_METRICS_SERVICE_HOST", "10.0.0.2"),
        ("TIERKV_METRICS_PORT_9090_TCP_ADDR", "10.0.0.2"),
    ];
    let config = Config::load(None, &env(&links)).unwrap();
    assert_eq!(config, Config::default());

    for (name, value) in [
        ("TIERKV_PORT", "50051"),
        ("TIERKV_LISTEN_PORT", "50051"),
        ("TIERKV_PORT_50051_TCP_HOST", "10.0.0.1"),
        ("TIERKV_PORT_X_TCP", "tcp://10.0.0.1:1"),
        ("TIERKV_SYNC_WRITE", "true"),
    ] {
        let error = Config::load(None, &env(&[(name, value)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains(name), "{name}: {error}");
        assert!(error.contains("unknown variable"), "{name}: {error}");
    }
}

/// Unknown keys and bad values are named in the error.
#[test]
fn rejects_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(&path, "listn = \"127.0.0.1:7000\"\n").unwrap();
    let error = Config::load(Some(&path), &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(error.contains("listn"), "{error}");

    let error = Config::load(None, &env(&[("TIERKV_LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("TIERKV_LISTEN"), "{error}");

    let error = Config::load(None, &env(&[("TIERKV_SYNC_WRITE", "true")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("TIERKV_SYNC_WRITE"), "{error}");

    let error = Config::load(None, &env(&[("TIERKV_BLOCK_CACHE_MB", "-1")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("non-negative integer"), "{error}");

    let config = Config {
        namespaces: vec!["a:".into(), "a:".into()],
        ..Config::default()
    };
    assert!(config.validate().unwrap_err().to_string().contains("twice"));

    let config = Config {
        write_queue_mb: 10,
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("write_queue_mb is 10"), "{error}");
    let config = Config::load(None, &env(&[("TIERKV_EXPIRY_GRACE_SECS", "60")])).unwrap();
    assert_eq!(config.expiry_grace_secs, 60);
}

/// The session section reads from the file and from `TIERKV_SESSION_*`,
/// and its prefix must be a configured namespace.
#[test]
fn session_section_and_its_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(
        &path,
        "namespaces = [\"sess:\"]\n[session]\nprefix = \"sess:\"\nmax_data_bytes = 100\n",
    )
    .unwrap();
    let config = Config::load(
        Some(&path),
        &env(&[("TIERKV_SESSION_TOUCH_INTERVAL_SECS", "5")]),
    )
    .unwrap();
    assert_eq!(config.session.prefix, "sess:");
    assert_eq!(config.session.max_data_bytes, 100);
    assert_eq!(config.session.touch_interval_secs, 5);
    config.validate().unwrap();
    let namespaces = config.namespaces().unwrap();
    assert_eq!(
        namespaces.owner_of("sess:s/x"),
        Some(("sess:", crate::session::OWNER))
    );

    let config = Config {
        namespaces: vec!["user:".into()],
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.contains("session.prefix") && error.contains("add it to namespaces"),
        "{error}"
    );
    let config = Config {
        session: SessionConfig {
            default_ttl_secs: 0,
            ..SessionConfig::default()
        },
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("session.default_ttl_secs"), "{error}");
}

/// The `[cache]` section reads from the file, its memory bound from
/// `TIERKV_CACHE_MEMORY_MB`, and its errors name the origin and setting.
#[test]
fn cache_section_from_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(
        &path,
        "[cache]\nmemory_mb = 16\n\n[[cache.origins]]\nprefix = \"cache:api:\"\nurl = \"https://api.example.com/{key}\"\nstore_ttl = \"5m\"\n\n[[cache.origins]]\nprefix = \"cache:img:\"\nurl = \"http://img.example.com/{key}\"\n",
    )
    .unwrap();
    let config = Config::load(Some(&path), &HashMap::new()).unwrap();
    config.validate().unwrap();
    assert_eq!(config.cache.memory_mb, 16);
    assert_eq!(config.cache.origins.len(), 2);
    assert_eq!(config.cache.origins[0].store_ttl, Duration::from_secs(300));

    let config = Config::load(
        Some(&path),
        &env(&[
            ("TIERKV_CACHE_MEMORY_MB", "32"),
            ("TIERKV_CACHE_MAX_CONCURRENT_FETCHES", "12"),
        ]),
    )
    .unwrap();
    assert_eq!(config.cache.memory_mb, 32);
    assert_eq!(config.cache.max_concurrent_fetches, 12);
    assert_eq!(config.cache.origins.len(), 2, "the file's origins stay");
    let config = Config::load(None, &env(&[("TIERKV_CACHE_MEMORY_MB", "0")])).unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("cache.memory_mb is 0"), "{error}");

    std::fs::write(
        &path,
        "[[cache.origins]]\nprefix = \"cache:a:\"\nurl = \"http://a/{key}\"\n\n[[cache.origins]]\nprefix = \"cache:b:\"\nurl = \"http://b/x?k={key}\"\n",
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new())
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("invalid configuration: cache.origins[1].url: "),
        "{error}"
    );

    std::fs::write(&path, "[cache]\nmemory = 1\n").unwrap();
    let error = Config::load(Some(&path), &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(error.contains("memory"), "{error}");
}

/// The namespace count has a ceiling, so listings of namespaces stay small.
#[test]
fn namespace_count_is_bounded() {
    let config = Config {
        namespaces: (0..=MAX_NAMESPACES).map(|i| format!("ns{i}:")).collect(),
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("257 prefixes"), "{error}");
    assert!(error.contains("limit is 256"), "{error}");
}

/// A listen address other hosts can reach needs authentication (tokens or
/// mutual TLS) or an explicit `allow_unauthenticated`; loopback needs neither.
#[test]
fn refuses_the_network_without_authentication() {
    for listen in ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"] {
        let config = Config::load(None, &env(&[("TIERKV_LISTEN", listen)])).unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains(listen) && error.contains("allow_unauthenticated = true"),
            "{error}"
        );
        let config = Config::load(
            None,
            &env(&[
                ("TIERKV_LISTEN", listen),
                ("TIERKV_ALLOW_UNAUTHENTICATED", "true"),
            ]),
        )
        .unwrap();
        assert!(config.allow_unauthenticated);
        config.validate().unwrap();
    }
    for listen in [
        "127.0.0.1:50051",
        "127.3.2.1:0",
        "[::1]:50051",
        "[::ffff:127.0.0.1]:50051",
    ] {
        let config = Config::load(None, &env(&[("TIERKV_LISTEN", listen)])).unwrap();
        config.validate().unwrap();
    }

    let exposed = Config {
        listen: "0.0.0.0:50051".parse().unwrap(),
        ..Config::default()
    };
    let with_token = Config {
        auth: AuthConfig {
            tokens: vec![crate::auth::TokenConfig {
                name: "app".into(),
                token_sha256: crate::auth::hash_token("a long random token"),
                token_sha256_file: None,
                prefixes: vec![String::new()],
                permissions: vec![crate::auth::Permission::Read],
            }],
        },
        ..exposed.clone()
    };
    assert!(with_token.check_exposure().is_ok());
    let with_mutual_tls = Config {
        tls: TlsSettings {
            client_ca_file: Some("ca.pem".into()),
            ..TlsSettings::default()
        },
        ..exposed.clone()
    };
    assert!(with_mutual_tls.check_exposure().is_ok());
    assert!(exposed.check_exposure().is_err());
}

/// The request memory budget has a floor.
#[test]
fn request_memory_floor() {
    let config = Config {
        request_memory_mb: 10,
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("request_memory_mb is 10"), "{error}");
    assert!(error.contains("at least 104"), "{error}");
}

/// The response memory budget has the same floor, the send timeout is
/// at least 1 ms, and both are read from TIERKV_* variables.
#[test]
fn response_memory_bounds() {
    let config = Config {
        response_memory_mb: 100,
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("response_memory_mb is 100"), "{error}");
    assert!(error.contains("at least 104"), "{error}");
    let config = Config {
        response_send_timeout_ms: 0,
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("response_send_timeout_ms"), "{error}");

    let config = Config::load(
        None,
        &env(&[
            ("TIERKV_RESPONSE_MEMORY_MB", "200"),
            ("TIERKV_RESPONSE_SEND_TIMEOUT_MS", "1500"),
        ]),
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.response_memory_bytes(), 200 * 1024 * 1024);
    assert_eq!(config.response_send_timeout(), Duration::from_millis(1500));
}

/// The transport bounds are read from TIERKV_* variables too.
#[test]
fn transport_bounds_from_environment() {
    let config = Config::load(
        None,
        &env(&[
            ("TIERKV_MAX_CONNECTIONS", "7"),
            ("TIERKV_MAX_CONCURRENT_STREAMS", "9"),
            ("TIERKV_HANDSHAKE_TIMEOUT_MS", "250"),
            ("TIERKV_REQUEST_MEMORY_MB", "200"),
            ("TIERKV_REQUEST_MEMORY_WAIT_MS", "30"),
            ("TIERKV_SHUTDOWN_DELAY_MS", "0"),
        ]),
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.max_connections, 7);
    assert_eq!(config.max_concurrent_streams, 9);
    assert_eq!(config.handshake_timeout(), Duration::from_millis(250));
    assert_eq!(config.request_memory_bytes(), 200 * 1024 * 1024);
    assert_eq!(config.request_memory_wait(), Duration::from_millis(30));
    assert_eq!(config.shutdown_delay(), Duration::ZERO);
}

/// `[engine.etcd]` comes from the file and the environment (endpoints as a
/// comma-separated list); the password never shows in the configuration's
/// debug form; TLS files with a plain http endpoint are refused.
#[test]
fn etcd_engine_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(
        &path,
        "[engine]\nkind = \"etcd\"\n[engine.etcd]\nprefix = \"prod/\"\nuser = \"tierkv\"\n",
    )
    .unwrap();
    let config = Config::load(
        Some(&path),
        &env(&[
            (
                "TIERKV_ENGINE_ETCD_ENDPOINTS",
                "http://a:2379, http://b:2379",
            ),
            ("TIERKV_ENGINE_ETCD_PASSWORD", "s3cret-pass"),
            ("TIERKV_ENGINE_ETCD_MAX_TXN_OPS", "10240"),
        ]),
    )
    .unwrap();
    assert_eq!(config.engine.kind, EngineKind::Etcd);
    assert_eq!(
        config.engine.etcd.endpoints,
        vec!["http://a:2379", "http://b:2379"]
    );
    assert_eq!(config.engine.etcd.prefix, "prod/");
    assert_eq!(config.engine.etcd.max_txn_ops, 10240);
    config.validate().unwrap();
    assert!(!format!("{config:?}").contains("s3cret-pass"));
    assert_eq!(Config::default().engine.kind, EngineKind::Rocksdb);

    let mut tls = config.clone();
    tls.engine.etcd.ca_file = Some(dir.path().join("ca.pem"));
    let error = tls.validate().unwrap_err().to_string();
    assert!(error.contains("https://"), "{error}");
    let unknown = Config::load(None, &env(&[("TIERKV_ENGINE_KIND", "redis")])).unwrap_err();
    assert!(unknown.to_string().contains("redis"), "{unknown}");
}
